//! Concat and Split along the channel axis: channels laid end to end, each part a segment of
//! the whole.

use super::{Activations, ChannelOp, Ctx, OpRule, Role};
use crate::analysis::plan::heads_kept;
use crate::analysis::reasons::{Opaque, Why};
use crate::analysis::{ConstCx, Graph, LayoutCx, Layouts, NeedCx, NodeId, PlanCx, TieCx, ValueId};
use crate::error::Result;
use crate::ir::NodeExt;
use crate::onnx::build::{attr_ints, int64_tensor};
use crate::onnx::proto::NodeProto;
use crate::onnx::tensor::int64s;
use crate::rewrite::Edit;

pub(crate) struct Concat;
pub(crate) struct Split;

impl OpRule for Concat {
    fn op_types(&self) -> &'static [&'static str] {
        &["Concat"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        if !node.has_attr("axis") {
            return Role::Opaque(Opaque::Malformed("it has no axis"));
        }
        let axis = node.attr_i("axis", 0);
        // A part known to be empty along the axis adds nothing (TorchScript's pass-through
        // `x[.., rotary_dim:]` when the rotation takes every entry): it is not a part.
        let empty = |s: &String| {
            let shape = cx.ir.shape(s);
            let at = shape.and_then(|d| crate::ir::normalize(axis, d.len()));
            shape.zip(at).is_some_and(|(d, a)| d[a] == Some(0))
        };
        let slots: Vec<usize> = (0..node.input.len()).filter(|&s| !empty(&node.input[s])).collect();
        if slots.is_empty() {
            return Role::Opaque(Opaque::Malformed("every part is empty"));
        }
        Role::Op(Box::new(Concatenated { axis, slots }))
    }
}

/// Output channels are the inputs' channels in order, along `axis` (as in the attribute); or,
/// when the values are laid out along another axis, every part has the output's channels
/// (stacked: a class token before the patches, a key cache along the tokens).
struct Concatenated {
    axis: i64,
    /// The input slots of the parts that are not empty.
    slots: Vec<usize>,
}

impl Concatenated {
    /// Whether `l` puts the channels on an axis other than the concatenation's.
    fn stacked(&self, l: crate::analysis::Layout) -> bool {
        let (Some(a), Some(r)) = (l.axis, l.rank) else { return false };
        a != from_end(self.axis, r)
    }
}

/// An `axis` attribute of a node over values of rank `r`, counted from the end as layouts count.
fn from_end(axis: i64, r: usize) -> isize {
    if axis < 0 {
        axis as isize
    } else {
        axis as isize - r as isize
    }
}

/// Forces every value of the node when a part's width is unknown: its segments cannot be
/// followed. Says whether all are known.
fn widths_known(cx: &mut TieCx, values: Vec<ValueId>) -> bool {
    let known = values.iter().all(|&v| cx.width(v).is_some());
    if !known {
        values.into_iter().for_each(|v| cx.force(v, Why::UnknownPartWidths));
    }
    known
}

impl<'g> ChannelOp<'g> for Concatenated {
    fn activations(&self) -> Activations {
        Activations::new(self.slots.clone(), "it concatenates constants")
    }

    fn layout(&self, cx: &mut LayoutCx<'_, 'g>) {
        let Some(o) = cx.output(0) else { return };
        let ins: Vec<ValueId> = self.slots.iter().map(|&s| cx.input(s)).collect();
        let all: Vec<ValueId> = ins.iter().copied().chain([o]).collect();
        if let Some(l) = all.iter().map(|&v| cx.get(v)).find(|&l| self.stacked(l)) {
            // Along the heads' axis (a stack of recurrent layers' final states), the heads a
            // part holds are not the output's: the parts stay whole.
            let along =
                |l: crate::analysis::Layout| l.heads.zip(l.rank).is_some_and(|(h, r)| h.axis == from_end(self.axis, r));
            if all.iter().any(|&v| along(cx.get(v))) {
                return all.iter().for_each(|&v| cx.force(v, Why::ConcatenatesHeads));
            }
            for &v in &all {
                l.axis.inspect(|&a| cx.set_axis(v, a));
                l.rank.inspect(|&r| cx.set_rank(v, r));
                l.heads.inspect(|&h| cx.set_heads(v, h));
            }
            for &v in &ins {
                cx.same_width(v, o);
                cx.carry_block(v, o);
                cx.carry_block(o, v);
            }
        } else if all.iter().any(|&v| cx.get(v).axis.is_some()) && cx.along(&all, self.axis) {
            // A part (or the output) whose channel axis is the concatenation's: along the
            // channels. With no axis known anywhere yet this waits: a guess here would lay out
            // a concatenation of tokens (a class token before the patches) as channels.
            if let Some(total) = ins.iter().map(|&v| cx.get(v).width).sum::<Option<usize>>() {
                cx.set_width(o, total);
            }
            // Channels split into heads concatenate head by head (rotary embeddings put the
            // halves of every head back together): every part and the output share the heads.
            if let Some(h) = all.iter().find_map(|&v| cx.get(v).heads) {
                all.iter().for_each(|&v| cx.set_heads(v, h));
            }
        }
    }

    fn follows_heads(&self) -> bool {
        true
    }

    /// Stacked along another axis (a key/value cache's tokens), every part keeps the output's
    /// channels where they are; along the channels (rotate_half's halves) it pairs entries.
    fn same_entries_in_heads(&self, g: &Graph<'g>, node: NodeId, layouts: &Layouts) -> bool {
        g.output(node, 0).is_none_or(|o| !self.stacked(layouts[o]))
    }

    fn ties(&self, cx: &mut TieCx<'_, 'g>) {
        let Some(o) = cx.output(0) else { return };
        let parts: Vec<ValueId> = self.slots.iter().map(|&s| cx.input(s)).collect();
        if !widths_known(cx, parts.iter().copied().chain([o]).collect()) {
            return;
        }
        if self.stacked(cx.layout(o)) {
            for &x in &parts {
                match (cx.width(x), cx.width(o)) {
                    (Some(a), Some(b)) if a == b => cx.tie(x, 0, o, 0, a),
                    _ => [x, o].into_iter().for_each(|v| cx.force(v, Why::Broadcasts)),
                }
            }
            return;
        }
        let runs = segments(cx.layout(o), &parts.iter().map(|&x| cx.width(x)).collect::<Vec<_>>());
        for (s, from, to, count) in runs {
            cx.tie(parts[s], from, o, to, count);
        }
    }

    fn constants(&self, cx: &mut ConstCx<'_, 'g>) {
        let Some(o) = cx.output(0) else { return };
        if self.stacked(cx.layout(o)) {
            // A channel is constant when every part holds the same constant in it.
            let parts: Vec<&[Option<f64>]> = self.slots.iter().map(|&s| cx.consts(cx.input(s))).collect();
            let r = (0..cx.consts(o).len())
                .map(|c| {
                    let first = parts.first()?.get(c).copied().flatten()?;
                    parts.iter().all(|p| p.get(c).copied().flatten() == Some(first)).then_some(first)
                })
                .collect();
            return cx.set(o, r);
        }
        let widths: Vec<_> = self.slots.iter().map(|&s| Some(cx.consts(cx.input(s)).len())).collect();
        let mut r = vec![None; cx.consts(o).len()];
        for (s, from, to, count) in segments(cx.layout(o), &widths) {
            let xs = cx.consts(cx.input(self.slots[s]));
            r[to..to + count].copy_from_slice(&xs[from..from + count]);
        }
        cx.set(o, r);
    }

    fn needs(&self, cx: &mut NeedCx<'_, 'g>) {
        let Some(o) = cx.output(0) else { return };
        if self.stacked(cx.layout(o)) {
            let needed: Vec<usize> = (0..cx.needed(o).len()).filter(|&c| cx.needed(o)[c]).collect();
            for &s in &self.slots {
                let x = cx.input(s);
                if cx.needed(x).len() == cx.needed(o).len() {
                    needed.iter().for_each(|&c| cx.mark(x, c));
                } else {
                    cx.mark_all(x);
                }
            }
            return;
        }
        let widths: Vec<_> = self.slots.iter().map(|&s| Some(cx.needed(cx.input(s)).len())).collect();
        let needed = cx.needed(o);
        let runs = segments(cx.layout(o), &widths);
        if runs.is_empty() {
            return self.slots.iter().for_each(|&s| cx.mark_all(cx.input(s)));
        }
        let mut marks = vec![];
        for (s, from, to, count) in runs {
            let s = self.slots[s];
            marks.extend((0..count).filter(|&k| needed.get(to + k).copied().unwrap_or(true)).map(|k| (s, from + k)));
        }
        marks.into_iter().for_each(|(s, c)| cx.mark(cx.input(s), c));
    }
}

/// `(part, part channel, whole channel, count)`: channels `from..from + count` of part `s` are
/// channels `to..to + count` of the whole.
type Run = (usize, usize, usize, usize);

/// The parts' channels laid end to end in the whole, within every head when the whole is split
/// into heads (rotary halves, the per-head q/k/v of a packed projection). Empty when a width is
/// unknown or does not add up.
fn segments(whole: crate::analysis::Layout, widths: &[Option<usize>]) -> Vec<Run> {
    let Some(widths) = widths.iter().copied().collect::<Option<Vec<usize>>>() else { return vec![] };
    let heads = whole.heads.map_or(1, |h| h.count);
    if widths.iter().any(|w| w % heads != 0) || whole.width != Some(widths.iter().sum()) {
        return vec![];
    }
    let per_whole = widths.iter().sum::<usize>() / heads;
    let mut runs = vec![];
    for h in 0..heads {
        let mut at = 0;
        for (s, w) in widths.iter().enumerate() {
            let per = w / heads;
            runs.push((s, h * per, h * per_whole + at, per));
            at += per;
        }
    }
    runs
}

/// Each part's channels are the whole's along `runs`, one class each.
fn tie_runs(cx: &mut TieCx, whole: ValueId, parts: &[ValueId], runs: &[Run]) {
    for &(s, from, to, count) in runs {
        cx.tie(parts[s], from, whole, to, count);
    }
}

/// Each part holds the whole's constants along `runs` (unknown where no run reaches).
fn run_constants(cx: &mut ConstCx, whole: ValueId, parts: Vec<ValueId>, runs: &[Run]) {
    let mut consts: Vec<Vec<Option<f64>>> = parts.iter().map(|&o| vec![None; cx.consts(o).len()]).collect();
    let xs = cx.consts(whole);
    for &(s, from, to, count) in runs {
        if let Some(src) = xs.get(to..to + count) {
            consts[s][from..from + count].copy_from_slice(src);
        }
    }
    parts.into_iter().zip(consts).for_each(|(o, r)| cx.set(o, r));
}

/// The whole's channels that needed channels of the parts are, along `runs`.
fn run_needs(cx: &mut NeedCx, whole: ValueId, parts: &[ValueId], runs: &[Run]) {
    let mut marks = vec![];
    for &(s, from, to, count) in runs {
        let needed = cx.needed(parts[s]);
        marks.extend((0..count).filter(|&k| needed[from + k]).map(|k| to + k));
    }
    marks.into_iter().for_each(|c| cx.mark(whole, c));
}

impl OpRule for Split {
    fn op_types(&self) -> &'static [&'static str] {
        &["Split"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        let axis = node.attr_i("axis", 0);
        // Sizes: an input from opset 13, an attribute before; absent means equal parts.
        let (sizes, form) = match node.input.get(1).filter(|s| !s.is_empty()) {
            Some(s) => match cx.const_tensor(s) {
                Some(t) => (int64s(t), SizesIn::Input),
                None => return Role::Opaque(Opaque::NotConstant("its split sizes are computed")),
            },
            None => {
                let attr = node.attr_ints("split");
                // Without sizes, opsets before 13 write them as an attribute, later ones as an input.
                let form = if attr.is_some() || cx.ir.opset < 13 { SizesIn::Attribute } else { SizesIn::NewInput };
                (attr.unwrap_or_default(), form)
            }
        };
        if sizes.iter().any(|&s| s < 0) {
            return Role::Opaque(Opaque::Unsupported("its split sizes are negative".into()));
        }
        let sizes: Vec<usize> = sizes.into_iter().map(|s| s as usize).collect();
        if heads_axis_split(cx, node) && !sizes.is_empty() {
            return Role::Op(Box::new(HeadsSplit { sizes }));
        }
        Role::Op(Box::new(Splitted { axis, sizes, form, parts: node.output.len() }))
    }
}

/// Whether `node` splits the axis before the last of what a Reshape wrote: the heads axis of
/// `qkv.view(B, T, H + 2 * KV, D)` (Falcon's fused multi-query projection, split into query, key
/// and value heads along it).
pub(super) fn heads_axis_split(cx: &Ctx, node: &NodeProto) -> bool {
    let Some(x) = node.input.first() else { return false };
    let reshaped = cx.ir.producer.get(x).is_some_and(|&n| cx.graph.node[n].op_type() == "Reshape");
    let rank = cx.ir.rank(x).unwrap_or(0);
    reshaped && rank >= 3 && crate::ir::normalize(node.attr_i("axis", 0), rank) == Some(rank - 2)
}

/// A split of the heads axis into parts of `sizes[p]` heads, every head with all its entries:
/// part `p`'s channel `c` is channel `a_p * D + c` of the input (`a_p` the heads before it). The
/// input's heads are ragged (the Reshape sees only such splits read them, [`super::shape`]): each
/// part keeps entries of its own, as many as the others, and no head leaves (ragged heads are
/// padded even where they keep nothing), so no size here changes; a part of one head has no
/// heads axis left to follow.
struct HeadsSplit {
    sizes: Vec<usize>,
}

impl HeadsSplit {
    /// Output `p` whole is the run of its heads, when x's heads are the ragged heads this split
    /// needs and the outputs' widths agree.
    fn runs(&self, x: crate::analysis::Layout, widths: &[Option<usize>]) -> Option<Vec<Run>> {
        let h = x.heads.filter(|h| h.axis == -2 && h.ragged && h.count == self.sizes.iter().sum::<usize>())?;
        let per = x.width? / h.count;
        let starts = self.sizes.iter().scan(0, |a, &n| Some(std::mem::replace(a, *a + n)));
        let runs: Vec<Run> = starts.zip(&self.sizes).enumerate().map(|(p, (a, &n))| (p, 0, a * per, n * per)).collect();
        let agree = runs.len() == widths.len() && runs.iter().zip(widths).all(|(&(.., w), &o)| o == Some(w));
        agree.then_some(runs)
    }
}

impl<'g> ChannelOp<'g> for HeadsSplit {
    fn activations(&self) -> Activations {
        Activations::new(vec![0], "it splits a constant")
    }

    fn covers_all_outputs(&self) -> bool {
        true
    }

    fn follows_heads(&self) -> bool {
        true
    }

    fn layout(&self, cx: &mut LayoutCx<'_, 'g>) {
        let x = cx.input(0);
        let lx = cx.get(x);
        let Some(outs) = cx.outputs(self.sizes.len()) else { return };
        let (Some(h), Some(per)) = (lx.heads, lx.per_head()) else { return };
        if h.axis != -2 || !h.ragged || h.count != self.sizes.iter().sum::<usize>() {
            return [x].into_iter().chain(outs).for_each(|v| cx.force(v, Why::LayoutConflict));
        }
        for (&o, &n) in outs.iter().zip(&self.sizes) {
            cx.set_axis(o, -1);
            cx.set_block(o, 1);
            lx.rank.inspect(|&r| cx.set_rank(o, r));
            cx.set_width(o, n * per);
            if n > 1 {
                cx.set_heads(o, crate::analysis::layout::Heads::plain(-2, n));
            }
        }
    }

    fn ties(&self, cx: &mut TieCx<'_, 'g>) {
        let x = cx.input(0);
        let Some(outs) = cx.outputs(self.sizes.len()) else { return };
        let widths: Vec<_> = outs.iter().map(|&o| cx.width(o)).collect();
        if let Some(runs) = self.runs(cx.layout(x), &widths) {
            tie_runs(cx, x, &outs, &runs);
        }
    }

    fn constants(&self, cx: &mut ConstCx<'_, 'g>) {
        let x = cx.input(0);
        let Some(outs) = cx.outputs(self.sizes.len()) else { return };
        let widths: Vec<_> = outs.iter().map(|&o| Some(cx.consts(o).len())).collect();
        if let Some(runs) = self.runs(cx.layout(x), &widths) {
            run_constants(cx, x, outs, &runs);
        }
    }

    fn needs(&self, cx: &mut NeedCx<'_, 'g>) {
        let x = cx.input(0);
        let Some(outs) = cx.outputs(self.sizes.len()) else { return cx.mark_all(x) };
        let widths: Vec<_> = outs.iter().map(|&o| Some(cx.needed(o).len())).collect();
        match self.runs(cx.layout(x), &widths) {
            Some(runs) => run_needs(cx, x, &outs, &runs),
            None => cx.mark_all(x),
        }
    }
}

/// Where a rewritten Split writes its sizes.
enum SizesIn {
    /// Input 1, which it has.
    Input,
    /// The `split` attribute.
    Attribute,
    /// A new input 1, replacing `num_outputs`.
    NewInput,
}

/// Output `i` holds `sizes[i]` consecutive input channels along `axis`; no sizes: equal parts.
struct Splitted {
    axis: i64,
    sizes: Vec<usize>,
    form: SizesIn,
    parts: usize,
}

impl<'g> ChannelOp<'g> for Splitted {
    fn activations(&self) -> Activations {
        Activations::new(vec![0], "it splits a constant")
    }

    fn covers_all_outputs(&self) -> bool {
        true
    }

    fn layout(&self, cx: &mut LayoutCx<'_, 'g>) {
        let x = cx.input(0);
        let Some(outs) = cx.outputs(self.parts) else { return };
        let all: Vec<ValueId> = outs.iter().copied().chain([x]).collect();
        // Along the channels only where a known channel axis says so: with none known yet this
        // waits, and a split along another axis (a class token split off the patches) keeps
        // everything it touches, rather than lay out positions as channels.
        let known = all.iter().find_map(|&v| cx.get(v).axis.zip(cx.get(v).rank));
        match known {
            None => return,
            Some((a, r)) if a != from_end(self.axis, r) => {
                return all.iter().for_each(|&v| cx.force(v, Why::SplitsOtherAxis));
            }
            Some(_) => {
                cx.along(&all, self.axis);
            }
        }
        let sizes = if self.sizes.is_empty() {
            match cx.get(x).per_head() {
                Some(w) if w % outs.len() == 0 => vec![w / outs.len(); outs.len()],
                _ => return,
            }
        } else {
            self.sizes.clone()
        };
        // Split into heads, the sizes are per head: every part keeps the heads.
        let heads = cx.get(x).heads;
        let count = heads.map_or(1, |h| h.count);
        if sizes.len() == outs.len() {
            cx.set_width(x, count * sizes.iter().sum::<usize>());
            for (&o, &w) in outs.iter().zip(&sizes) {
                cx.set_width(o, count * w);
                heads.inspect(|&h| cx.set_heads(o, h));
            }
        }
    }

    fn follows_heads(&self) -> bool {
        true
    }

    fn ties(&self, cx: &mut TieCx<'_, 'g>) {
        let x = cx.input(0);
        if !widths_known(cx, cx.values()) {
            return;
        }
        let Some(outs) = cx.outputs(self.parts) else { return };
        let runs = segments(cx.layout(x), &outs.iter().map(|&o| cx.width(o)).collect::<Vec<_>>());
        tie_runs(cx, x, &outs, &runs);
    }

    fn constants(&self, cx: &mut ConstCx<'_, 'g>) {
        let x = cx.input(0);
        let Some(outs) = cx.outputs(self.parts) else { return };
        let widths: Vec<_> = outs.iter().map(|&o| Some(cx.consts(o).len())).collect();
        let runs = segments(cx.layout(x), &widths);
        run_constants(cx, x, outs, &runs);
    }

    fn needs(&self, cx: &mut NeedCx<'_, 'g>) {
        let x = cx.input(0);
        let Some(outs) = cx.outputs(self.parts) else { return cx.mark_all(x) };
        let widths: Vec<_> = outs.iter().map(|&o| Some(cx.needed(o).len())).collect();
        let runs = segments(cx.layout(x), &widths);
        if runs.is_empty() {
            return cx.mark_all(x);
        }
        run_needs(cx, x, &outs, &runs);
    }

    fn rewrite(&self, cx: &mut PlanCx<'_, 'g>) -> Result<()> {
        let x = cx.input(0);
        let outs: Vec<Option<ValueId>> = (0..self.parts).map(|s| cx.output(s)).collect();
        let width = |o: &Option<ValueId>| o.and_then(|o| cx.layout(o).width).unwrap_or(0);
        // Sizes per head when split into heads (every head keeps the same entries).
        let per_head =
            |o: &Option<ValueId>, kept: Vec<usize>| match o.map(|v| cx.layout(v)).filter(|l| l.heads.is_some()) {
                Some(l) => heads_kept(l, &kept).1.len(),
                None => kept.len(),
            };
        let new: Vec<i64> = outs.iter().map(|o| o.map_or(0, |v| per_head(o, cx.kept(v, width(o)))) as i64).collect();
        let old: Vec<i64> = outs.iter().map(|o| o.and_then(|v| cx.layout(v).per_head()).unwrap_or(0) as i64).collect();
        if new == old || cx.layout(x).width.is_none() {
            return Ok(());
        }
        let node = cx.node.0;
        let tensor = int64_tensor("", &new);
        match self.form {
            SizesIn::Input => cx.push(Edit::Const { node, slot: 1, tensor }),
            SizesIn::Attribute => cx.push(Edit::Attr { node, attr: attr_ints("split", &new) }),
            SizesIn::NewInput => {
                cx.push(Edit::RemoveAttr { node, name: "num_outputs".into() });
                cx.push(Edit::SetInput { node, slot: 1, tensor });
            }
        }
        Ok(())
    }
}
