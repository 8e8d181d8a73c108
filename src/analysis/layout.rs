//! Layout: where each value's channels are. Linear layers and convolutions fix the facts;
//! every other operator carries them along, forwards and backwards, to a fixed point.

use super::ids::{IdVec, ValueId};
use super::reasons::{Forced, Why};
use super::values::{at_node, At};
use super::Graph;

/// The outer axis of a channel space that spans two axes: channel `c` is head `c / (width /
/// count)`, entry `c % (width / count)` along the channel axis (attention's heads x head
/// dimensions). Removal keeps it a product (the same entries in every kept head), so the
/// tensor stays rectangular.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Heads {
    /// Counted from the end, like the channel axis.
    pub axis: isize,
    pub count: usize,
    /// The axis holds the batch too, heads innermost: entry `i` is head `i % count`
    /// (`nn.MultiheadAttention`'s `[T, B * H, D]`).
    pub merged: bool,
    /// The graph writes the merged axis's size as a number (`B * H` computed, as TorchScript does,
    /// or a constant): dropping a head would change it, so every head stays. Where the target
    /// says -1 (the dynamo exporter), heads may leave whole.
    pub counted: bool,
    /// Each head keeps entries of its own, as many in every head: the parts of a packed
    /// projection (`[.., 3, E]`), which only axis moves and Gathers of one part read, need no
    /// more to stay rectangular.
    pub ragged: bool,
    /// Every head stays while any entry does: the directions of a bidirectional recurrent layer,
    /// which share their units (`hidden_size`).
    pub whole: bool,
}

impl Heads {
    /// Heads on an axis of their own, the same entries kept in each.
    pub fn plain(axis: isize, count: usize) -> Heads {
        Heads { axis, count, merged: false, counted: false, ragged: false, whole: false }
    }

    /// Whether no head may leave on its own ([`Heads::whole`], or merged into a size the graph
    /// writes: [`Heads::counted`]).
    pub fn all_stay(&self) -> bool {
        self.whole || self.merged && self.counted
    }
}

/// What is known of one value's channels. Each fact is set once; a second, different answer is
/// a conflict that keeps the value whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// The channel axis, counted from the end (so broadcasting keeps it).
    pub axis: Option<isize>,
    /// Channels (all heads together).
    pub width: Option<usize>,
    pub rank: Option<usize>,
    /// Entries per channel along the axis: 1, or `H * W` once a feature map is flattened into
    /// a Gemm; `None` until a reader fixes it.
    pub block: Option<usize>,
    /// The block's entries are interleaved: entry `e` belongs to channel `e % width` (a
    /// channels-last feature map flattened, as NHWC exports do), not to `e / block`.
    pub interleaved: Option<bool>,
    pub heads: Option<Heads>,
    /// Groups of a grouped convolution that reads or writes the value: the channels, on one
    /// axis, are `groups` x per group, and leave as a product (the same entries in every group),
    /// so that every group keeps the same width.
    pub groups: Option<usize>,
}

impl Layout {
    /// The channel axis counted from the start, where the rank is known.
    pub fn position(&self) -> Option<usize> {
        usize::try_from(self.rank? as isize + self.axis?).ok()
    }

    /// Entries along the channel axis: each channel's block of them (a flattened feature map's
    /// positions) times the width. What a reshape target must name to keep the channels whole.
    pub fn entries(&self) -> Option<usize> {
        Some(self.width? * self.block?)
    }

    /// The entries, of `entries` along the axis, whose channel (of `width`) `keep` holds.
    pub fn entries_where(&self, width: usize, entries: usize, keep: impl Fn(usize) -> bool) -> Vec<usize> {
        (0..entries).filter(|&e| keep(self.channel_of(e, width))).collect()
    }

    /// The channel that entry `e` of the channel axis belongs to (`width` channels).
    pub fn channel_of(&self, e: usize, width: usize) -> usize {
        if self.interleaved == Some(true) {
            e % width
        } else {
            e / self.block.unwrap_or(1)
        }
    }

    /// Channels per head (the width itself without heads).
    pub fn per_head(&self) -> Option<usize> {
        Some(self.width? / self.heads.map_or(1, |h| h.count))
    }
}

pub(crate) type Layouts = IdVec<ValueId, Layout>;

pub(crate) fn infer(g: &Graph, forced: &mut Forced) -> Layouts {
    let mut facts: Layouts = g
        .value_ids()
        .map(|v| Layout {
            axis: None,
            width: None,
            rank: g.ir.rank(g.name(v)),
            block: Some(1),
            interleaved: None,
            heads: None,
            groups: None,
        })
        .collect();
    let ops: Vec<_> = g.ops().collect();
    for &(node, op) in &ops {
        let mut cx = LayoutCx { at: At { graph: g, node }, facts: &mut facts, forced, changed: false };
        op.seed(&mut cx);
    }
    for _pass in 0..ops.len().max(1) {
        let mut changed = false;
        for &(node, op) in ops.iter().chain(ops.iter().rev()) {
            let mut cx = LayoutCx { at: At { graph: g, node }, facts: &mut facts, forced, changed: false };
            op.layout(&mut cx);
            changed |= cx.changed;
        }
        if !changed {
            break;
        }
    }
    // Channels over two axes reach only operators that follow them, and heads or groups that
    // do not divide the width (two operators disagreeing) keep the value whole.
    for &(n, op) in &ops {
        let values: Vec<ValueId> = g.inputs(n).chain(g.outputs(n)).collect();
        for &v in &values {
            let l = facts[v];
            let divides = |c: usize| c > 0 && l.width.is_some_and(|w| w.is_multiple_of(c));
            if !l.heads.is_none_or(|h| divides(h.count)) || !l.groups.is_none_or(divides) {
                forced.by_node(v, n, Why::LayoutConflict);
            }
        }
        if !op.follows_heads() && values.iter().any(|&v| facts[v].heads.is_some()) {
            values.into_iter().for_each(|v| forced.by_node(v, n, Why::SplitsHeads));
        }
    }
    facts
}

/// What an operator's `layout` (and `seed`) may read and set: the facts of the values it
/// touches, through setters that turn contradictions into forcing.
pub(crate) struct LayoutCx<'a, 'g> {
    at: At<'a, 'g>,
    facts: &'a mut Layouts,
    forced: &'a mut Forced,
    changed: bool,
}

at_node!(LayoutCx);

impl<'g> LayoutCx<'_, 'g> {
    pub fn get(&self, v: ValueId) -> Layout {
        self.facts[v]
    }

    pub fn force(&mut self, v: ValueId, why: Why) {
        self.forced.by_node(v, self.at.node, why);
    }

    /// Both sides of an operator keep every channel, for the same reason.
    pub fn force_both(&mut self, x: ValueId, o: ValueId, why: Why) {
        self.force(x, why.clone());
        self.force(o, why);
    }

    fn set<T: PartialEq + Copy>(&mut self, v: ValueId, field: fn(&mut Layout) -> &mut Option<T>, x: T) {
        match *field(&mut self.facts[v]) {
            Some(old) if old == x => {}
            Some(_) => self.force(v, Why::LayoutConflict),
            None => {
                *field(&mut self.facts[v]) = Some(x);
                self.changed = true;
            }
        }
    }

    pub fn set_axis(&mut self, v: ValueId, axis: isize) {
        self.set(v, |l| &mut l.axis, axis)
    }

    pub fn set_width(&mut self, v: ValueId, width: usize) {
        if self.plausible(v, width, self.facts[v].block) {
            self.set(v, |l| &mut l.width, width)
        }
    }

    /// Whether `width` channels of `block` entries fit one axis of a real tensor. Shapes come
    /// from the model (reshape targets, declared dimensions), which may be wrong: an axis of
    /// more than 2^32 entries is taken for a wrong shape, and the value keeps its channels,
    /// rather than be walked entry by entry; so is an empty one (no pass divides by zero).
    fn plausible(&mut self, v: ValueId, width: usize, block: Option<usize>) -> bool {
        let entries = width.checked_mul(block.unwrap_or(1));
        let fits = entries.is_some_and(|e| e > 0 && e <= 1 << 32);
        if !fits {
            self.force(v, Why::ImplausibleSize);
        }
        fits
    }

    pub fn set_rank(&mut self, v: ValueId, rank: usize) {
        self.set(v, |l| &mut l.rank, rank)
    }

    pub fn set_block(&mut self, v: ValueId, block: usize) {
        if self.plausible(v, self.facts[v].width.unwrap_or(1), Some(block)) {
            self.set(v, |l| &mut l.block, block)
        }
    }

    pub fn set_heads(&mut self, v: ValueId, heads: Heads) {
        if self.plausible(v, heads.count, Some(1)) {
            self.set(v, |l| &mut l.heads, heads)
        }
    }

    pub fn set_groups(&mut self, v: ValueId, groups: usize) {
        self.set(v, |l| &mut l.groups, groups)
    }

    /// Whether the block of `v` is interleaved (see [`Layout::interleaved`]); two answers that
    /// differ keep the value whole.
    pub fn set_interleaved(&mut self, v: ValueId, interleaved: bool) {
        self.set(v, |l| &mut l.interleaved, interleaved)
    }

    /// `o` has the block of `x`, interleaved or not (the axes before the channel axis changed).
    pub fn carry_block(&mut self, x: ValueId, o: ValueId) {
        let l = self.facts[x];
        l.block.inspect(|&b| self.set_block(o, b));
        l.interleaved.inspect(|&i| self.set_interleaved(o, i));
    }

    /// Before the fixed point: the block of `v` is unknown until a reader fixes it (a flattened
    /// feature map).
    pub fn unknown_block(&mut self, v: ValueId) {
        self.facts[v].block = None;
    }

    /// `to` has the channels of `from` where they are: axis, width, block and heads.
    pub fn copy(&mut self, from: ValueId, to: ValueId) {
        let f = self.facts[from];
        f.axis.inspect(|&a| self.set_axis(to, a));
        f.width.inspect(|&w| self.set_width(to, w));
        f.block.inspect(|&b| self.set_block(to, b));
        f.interleaved.inspect(|&i| self.set_interleaved(to, i));
        f.heads.inspect(|&h| self.set_heads(to, h));
    }

    /// Both ways between `a` and `b`: the same width.
    pub fn same_width(&mut self, a: ValueId, b: ValueId) {
        for (x, y) in [(a, b), (b, a)] {
            if let Some(w) = self.facts[x].width {
                self.set_width(y, w);
            }
        }
    }

    /// Concat and Split: all `values` have their channels along `axis` (as written, possibly
    /// counted from the start), once some rank is known. Says whether it was.
    pub fn along(&mut self, values: &[ValueId], axis: i64) -> bool {
        let Some(r) = values.iter().find_map(|&v| self.facts[v].rank) else { return false };
        let a = if axis < 0 { axis as isize } else { axis as isize - r as isize };
        for &v in values {
            self.set_axis(v, a);
            self.set_rank(v, r);
        }
        true
    }

    /// `o = flatten(x)` from axis `from` (or a 2-D reshape when `None`): the channel axis either
    /// stays whole and last, or turns into blocks of the flat axis.
    pub fn flatten(&mut self, x: ValueId, o: ValueId, from: Option<i64>) {
        let fx = self.facts[x];
        let (Some(r), Some(p)) = (fx.rank, fx.position()) else { return };
        let from = from.map_or(1, |f| if f < 0 { f + r as i64 } else { f }) as usize;
        self.set_axis(o, -1);
        self.set_rank(o, 2);
        if let Some(w) = fx.width {
            self.set_width(o, w);
        }
        if p == r - 1 && from == r - 1 {
            self.carry_block(x, o);
        } else if p != from || fx.block != Some(1) {
            self.force_both(x, o, Why::FlattensChannelAxis);
        } else {
            // Channels first: each owns a contiguous block of the flat axis.
            self.set_interleaved(o, false);
        }
    }
}
