//! Decision: a class leaves when none of its channels is needed and none belongs to a forced
//! value. The only pass that depends on what to do with graph inputs, so that both answers can
//! be planned from one analysis.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::ids::ValueId;
use super::Facts;

/// What unused features of graph inputs do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InputPolicy {
    /// Graph inputs keep every feature (their unused ones are reported).
    Keep,
    /// Unused features leave through a Gather in front of their readers.
    Gather,
}

pub(crate) struct Decision {
    pub policy: InputPolicy,
    kept_class: Vec<bool>,
}

impl Decision {
    /// The channels of `v` that stay (all of them when its width is unknown: `full`).
    pub fn kept(&self, facts: &Facts, v: ValueId, full: usize) -> Vec<usize> {
        match facts.layouts[v].width {
            Some(w) => (0..w).filter(|&c| self.kept_class[facts.classes.class(v, c)]).collect(),
            None => (0..full).collect(),
        }
    }

    /// Whether `v` keeps every channel whatever is needed.
    pub fn forced(&self, facts: &Facts, v: ValueId) -> bool {
        facts.forced.is_forced(v) || (self.policy == InputPolicy::Keep && facts.graph.is_graph_input(v))
    }
}

pub(crate) fn decide(facts: &Facts, policy: InputPolicy) -> Decision {
    let mut d = Decision { policy, kept_class: vec![false; facts.classes.len()] };
    for v in facts.graph.value_ids() {
        let forced = d.forced(facts, v);
        for c in 0..facts.layouts[v].width.unwrap_or(0) {
            if forced || facts.needed[v][c] {
                let k = facts.classes.class(v, c);
                d.kept_class[k] = true;
            }
        }
    }
    let links: Vec<(ValueId, Option<ValueId>)> =
        facts.graph.ops().flat_map(|(n, op)| op.head_links(&facts.graph, n)).collect();
    let own = own_entries(facts);
    // Ragged heads pad to the count of the fullest only once the products around them have settled
    // (padding one entry in a part that is later split into merged heads costs an entry per head).
    loop {
        while rectangular_heads(facts, &own, &mut d)
            | equal_heads(facts, &own, &mut d)
            | linked_heads(facts, &links, &mut d)
            | one_channel_each(facts, &mut d)
        {}
        if !ragged_heads(facts, &mut d) {
            return d;
        }
    }
}

/// Values linked by an operator keep the same heads: a head either keeps a channel in both or
/// in neither (a head some other reason keeps in one gets back its first kept entry, or its
/// first entry, in the other). Without a partner whose heads line up, every head stays. Says
/// whether it kept more.
fn linked_heads(facts: &Facts, links: &[(ValueId, Option<ValueId>)], d: &mut Decision) -> bool {
    let mut changed = false;
    let heads = |v: ValueId| facts.layouts[v].heads.zip(facts.layouts[v].per_head());
    let rows = |v: ValueId, d: &Decision| {
        let (h, per) = heads(v).expect("heads");
        let mut rows = vec![false; h.count];
        d.kept(facts, v, 0).iter().for_each(|&c| rows[c / per] = true);
        rows
    };
    for &(a, b) in links {
        let pair = [Some(a), b].into_iter().flatten().filter(|&v| heads(v).is_some()).collect::<Vec<_>>();
        let lined_up = pair.len() == 2 && heads(pair[0]).map(|h| h.0.count) == heads(pair[1]).map(|h| h.0.count);
        let union: Vec<bool> = match lined_up {
            true => rows(pair[0], d).iter().zip(rows(pair[1], d)).map(|(x, y)| *x || y).collect(),
            false => vec![],
        };
        for &v in &pair {
            let (h, per) = heads(v).expect("heads");
            let wanted = if lined_up { union.clone() } else { vec![true; h.count] };
            let mine = rows(v, d);
            let first = d.kept(facts, v, 0).first().map_or(0, |&c| c % per);
            for h in (0..wanted.len()).filter(|&h| wanted[h] && !mine[h]) {
                let k = facts.classes.class(v, h * per + first);
                if !d.kept_class[k] {
                    d.kept_class[k] = true;
                    changed = true;
                }
            }
        }
    }
    changed
}

/// Values whose channels span heads keep a product of heads and entries (the same entries in
/// every kept head), so they stay rectangular; values a grouped convolution reads or writes, or
/// a 3-D attention operator (heads inside the last axis), or whose heads are merged with the batch
/// into a size the graph writes, keep every group or head, each with the same entries.
/// Ragged heads are `ragged_heads`' (padded afterwards). Says whether it kept more.
fn rectangular_heads(facts: &Facts, own: &BTreeSet<ValueId>, d: &mut Decision) -> bool {
    let mut changed = false;
    // Values a grouped convolution reads or writes (other groups are heads inside one axis).
    let convolved: HashSet<ValueId> = facts
        .graph
        .ops()
        .filter(|(_, op)| op.linear().is_some_and(|l| l.weight().groups > 1))
        .flat_map(|(n, _)| facts.graph.inputs(n).chain(facts.graph.outputs(n)).collect::<Vec<_>>())
        .collect();
    for v in facts.graph.value_ids() {
        let l = facts.layouts[v];
        let Some(width) = l.width else { continue };
        let (count, whole_rows, grouped) = match (l.heads, l.groups) {
            (Some(h), _) if h.ragged => continue, // padded by `ragged_heads`
            _ if own.contains(&v) => continue,    // kept alike in count by `equal_heads`
            (Some(h), _) => (h.count, h.all_stay(), false),
            (None, Some(g)) => (g, true, true),
            (None, None) => continue,
        };
        if count == 0 || !width.is_multiple_of(count) {
            continue; // forced by the layout: every channel stays
        }
        let per = width / count;
        let keep = d.kept(facts, v, 0);
        let mut rows = vec![whole_rows && !keep.is_empty(); count];
        let mut cols = vec![false; per];
        keep.iter().for_each(|&c| (rows[c / per], cols[c % per]) = (true, true));
        // A grouped Conv left with one entry per group would read as depthwise next time, whose
        // rule removes channels one by one: keep two, so the next pass sees the same operator.
        if grouped && convolved.contains(&v) && per >= 2 && cols.iter().filter(|&&c| c).count() == 1 {
            let spare = cols.iter().position(|&c| !c).expect("per >= 2");
            cols[spare] = true;
        }
        for c in 0..count * per {
            let k = facts.classes.class(v, c);
            if rows[c / per] && cols[c % per] && !d.kept_class[k] {
                d.kept_class[k] = true;
                changed = true;
            }
        }
    }
    changed
}

/// Values with heads whose every head may keep entries of its own: no operator around them
/// needs the same entries in each head (see [`ChannelOp::same_entries_in_heads`]), through
/// any value sharing their classes. Attention's queries, keys and values scaled and
/// multiplied, not rotated or normalized per head dimension: each head then keeps what it needs,
/// padded to the fullest head's count, where a product keeps the union of every head's.
fn own_entries(facts: &Facts) -> BTreeSet<ValueId> {
    let g = &facts.graph;
    let with_heads = |v: &ValueId| facts.layouts[*v].heads.is_some() && facts.layouts[*v].width.is_some();
    let mut alike: HashSet<usize> = HashSet::new();
    for (n, op) in g.ops() {
        if op.follows_heads() && op.same_entries_in_heads(g, n, &facts.layouts) {
            for v in g.inputs(n).chain(g.outputs(n)).filter(with_heads) {
                let w = facts.layouts[v].width.expect("with heads");
                alike.extend((0..w).map(|c| facts.classes.class(v, c)));
            }
        }
    }
    g.value_ids()
        .filter(|v| {
            let l = facts.layouts[*v];
            let plain = l.heads.is_some_and(|h| !h.ragged && !h.merged && !h.whole) && l.groups.is_none();
            plain
                && with_heads(v)
                && (0..l.width.expect("with heads")).all(|c| !alike.contains(&facts.classes.class(*v, c)))
        })
        .collect()
}

/// Heads that keep entries of their own keep as many each: a head short of the fullest keeps
/// its first entries it dropped as well (their weights stay; the tensor stays rectangular).
/// A head that keeps nothing leaves whole. Says whether it kept more.
fn equal_heads(facts: &Facts, own: &BTreeSet<ValueId>, d: &mut Decision) -> bool {
    let mut changed = false;
    for &v in own {
        let l = facts.layouts[v];
        let (Some(h), Some(width)) = (l.heads, l.width) else { continue };
        if h.count == 0 || !width.is_multiple_of(h.count) {
            continue;
        }
        let per = width / h.count;
        let kept = |d: &Decision, c: usize| d.kept_class[facts.classes.class(v, c)];
        let count = |d: &Decision, r: usize| (0..per).filter(|&e| kept(d, r * per + e)).count();
        let n = (0..h.count).map(|r| count(d, r)).max().unwrap_or(0);
        // Counted as padding goes: heads may share classes (the query heads of one key/value
        // head), so padding one pads the others.
        for r in 0..h.count {
            let mut short = match count(d, r) {
                0 => continue,
                has => n - has,
            };
            for e in 0..per {
                if short == 0 {
                    break;
                }
                if !kept(d, r * per + e) {
                    d.kept_class[facts.classes.class(v, r * per + e)] = true;
                    short -= 1;
                    changed = true;
                }
            }
        }
    }
    changed
}

/// Pads every value with ragged heads; says whether it kept more.
fn ragged_heads(facts: &Facts, d: &mut Decision) -> bool {
    // The head size each channel is later split into (a part of a packed projection becomes
    // heads of `D`): padding in whole heads' worth keeps those heads a product.
    let mut head_size: HashMap<usize, usize> = HashMap::new();
    for v in facts.graph.value_ids() {
        let l = facts.layouts[v];
        let (Some(_), Some(per), Some(width)) = (l.heads.filter(|h| !h.ragged), l.per_head(), l.width) else {
            continue;
        };
        for c in 0..width {
            let size = head_size.entry(facts.classes.class(v, c)).or_insert(per);
            *size = (*size).min(per);
        }
    }
    let mut changed = false;
    for v in facts.graph.value_ids() {
        let l = facts.layouts[v];
        let (Some(h), Some(width)) = (l.heads.filter(|h| h.ragged), l.width) else { continue };
        if h.count == 0 || !width.is_multiple_of(h.count) {
            continue; // forced by the layout: every channel stays
        }
        let keep = d.kept(facts, v, 0);
        changed |= pad_ragged(facts, v, (h.count, width / h.count), &keep, &head_size, d);
    }
    changed
}

/// For each head of the ragged value `v`, the heads of `v` that a value with plain heads holds
/// together with it: its part once the parts are split apart (Falcon's query heads; queries and
/// keys are tied, so they count as one part).
fn parts_of(facts: &Facts, v: ValueId, count: usize, per: usize) -> Vec<Vec<usize>> {
    let mut heads_of: HashMap<usize, Vec<usize>> = HashMap::new();
    for c in 0..count * per {
        heads_of.entry(facts.classes.class(v, c)).or_default().push(c / per);
    }
    let mut parts = vec![vec![]; count];
    for w in facts.graph.value_ids().filter(|&w| w != v) {
        let l = facts.layouts[w];
        let (Some(h), Some(width)) = (l.heads.filter(|h| !h.ragged), l.width) else { continue };
        if h.count == 0 || !width.is_multiple_of(h.count) {
            continue;
        }
        let mut held: Vec<usize> =
            (0..width).filter_map(|c| heads_of.get(&facts.classes.class(w, c))).flatten().copied().collect();
        held.sort_unstable();
        held.dedup();
        held.iter().for_each(|&r| parts[r].extend(held.iter().copied()));
    }
    parts
}

/// Ragged heads keep as many entries in every head: the ones a head drops pad it, the
/// same entry of every later head of `D` at once (`head_size`; one by one where nothing splits
/// the part), so that the part stays a product there. Says whether it kept more.
fn pad_ragged(
    facts: &Facts,
    v: ValueId,
    (count, per): (usize, usize),
    keep: &[usize],
    head_size: &HashMap<usize, usize>,
    d: &mut Decision,
) -> bool {
    let mut rows = vec![vec![false; per]; count];
    keep.iter().for_each(|&c| rows[c / per][c % per] = true);
    let n = rows.iter().map(|r| r.iter().filter(|&&k| k).count()).max().unwrap_or(0);
    let full = |q: usize| rows[q].iter().filter(|&&k| k).count() == n;
    // Only a head that keeps nothing needs to know its part.
    let parts = rows.iter().any(|r| !r.contains(&true)).then(|| parts_of(facts, v, count, per));
    let mut changed = false;
    for (r, kept) in rows.iter().enumerate() {
        let has = kept.iter().filter(|&&k| k).count();
        if has == n {
            continue;
        }
        // A head that keeps nothing is padded too: ragged heads never leave (the parts of a
        // packed projection, Falcon's heads split into parts, are read by index and by count).
        // Entries the nearest full head of its part keeps come first (the part's other heads
        // keep them: they keep the part a product at no cost); where none of its part is full
        // yet, the nearest head of its part that keeps any (it is padded alike).
        let by_distance = (1..count).flat_map(|k| [r.checked_sub(k), Some(r + k)]).flatten().filter(|&q| q < count);
        let sibling = |q: &usize| parts.as_ref().is_none_or(|p| p[r].contains(q));
        let kept_any = |q: &usize| rows[*q].contains(&true);
        let nearest = by_distance
            .clone()
            .find(|q| full(*q) && sibling(q))
            .or_else(|| by_distance.clone().find(|q| kept_any(q) && sibling(q)))
            .or_else(|| by_distance.clone().find(|&q| full(q)));
        let split = (0..per).filter_map(|e| head_size.get(&facts.classes.class(v, r * per + e))).min();
        let period = split.copied().filter(|&s| s > 0 && per.is_multiple_of(s)).unwrap_or(per);
        let mut starts: Vec<usize> = (0..period).filter(|&s| !kept[s]).collect();
        starts.sort_by_key(|&s| !nearest.is_some_and(|q| rows[q][s]));
        let mut need = n - has;
        for start in starts {
            if need == 0 {
                break;
            }
            for e in (start..per).step_by(period) {
                d.kept_class[facts.classes.class(v, r * per + e)] = true;
            }
            need = need.saturating_sub(per / period);
            changed = true;
        }
    }
    changed
}

/// A zero-width tensor is legal ONNX but not every runtime takes it: keep one channel, which
/// costs nothing in exactness (unneeded channels only reach unneeded places). Says whether it
/// kept more.
fn one_channel_each(facts: &Facts, d: &mut Decision) -> bool {
    let mut changed = false;
    loop {
        let empty = facts.graph.value_ids().find(|&v| {
            let w = facts.layouts[v].width.unwrap_or(0);
            w > 0 && (0..w).all(|c| !d.kept_class[facts.classes.class(v, c)])
        });
        match empty {
            Some(v) => d.kept_class[facts.classes.class(v, 0)] = true,
            None => return changed,
        }
        changed = true;
    }
}
