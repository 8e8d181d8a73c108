//! Channel-preserving operators: output channel `c` is a scalar function of channel `c` of each
//! activation and of per-channel constants. Activations, bias adds, layer scales, residual
//! adds and gating, BatchNorm, poolings, reductions over other axes, transposes and reshapes
//! all are; they differ only in where the output's channel axis goes ([`AxisMap`]).

use super::{Activations, ChannelOp};
use crate::analysis::plan::heads_kept;
use crate::analysis::reasons::Why;
use crate::analysis::{CheckCx, ConstCx, Graph, Layout, LayoutCx, Layouts, NeedCx, NodeId, PlanCx, TieCx, ValueId};
use crate::error::Result;
use crate::onnx::tensor::{encode, with_data, Values};
use crate::rewrite::Edit;

/// Scalar semantics on one channel: the values of all its operands, in slot order (activations
/// and per-channel constants alike), to its output; `None` when the output is not constant even
/// though the inputs are (an average pool that counts padding).
pub(crate) type Eval = Box<dyn Fn(&[f64]) -> Option<f64> + Sync>;

/// What a channel is, given only some of its operands' constants (see [`PerChannel::absorb`]).
pub(crate) type Absorb = fn(&[Option<f64>]) -> Option<f64>;

/// Where a channel-preserving operator puts the channel axis of its output.
pub(crate) trait AxisMap: Sync {
    /// Before the layout's fixed point.
    fn seed(&self, _cx: &mut LayoutCx, _o: ValueId) {}
    /// Carries the layout between the activations `acts` and the output `o`.
    fn layout(&self, cx: &mut LayoutCx, acts: &[ValueId], o: ValueId, params: &[usize]);
    /// Ties beyond the input's channels to the output's (a tensor whose size the target reads).
    fn ties(&self, _cx: &mut TieCx, _x: ValueId) {}
    /// Checks target shapes against the laid-out output.
    fn check(&self, _cx: &CheckCx, _o: ValueId) -> Result<(), Why> {
        Ok(())
    }
    /// Rewrites target shapes for the kept channels `keep` of `o`.
    fn rewrite(&self, _cx: &mut PlanCx, _o: ValueId, _keep: &[usize]) {}
    fn follows_heads(&self) -> bool {
        false
    }
    /// Whether every head must keep the same entries (see [`ChannelOp::same_entries_in_heads`]);
    /// maps that move or reshape whole heads say no.
    fn same_entries_in_heads(&self) -> bool {
        true
    }
    /// Whether the output's entries along the channel axis are the activations' (so a block a
    /// reader has yet to fix is the output's to fix too).
    fn keeps_block(&self) -> bool {
        false
    }
}

pub(crate) struct PerChannel {
    /// Input slots holding activations; their channels are the output's.
    pub acts: Vec<usize>,
    /// Input slots holding constants that broadcast along the channel axis (size 1 or the
    /// width); sliced with the channels.
    pub params: Vec<usize>,
    pub eval: Eval,
    /// The output when some operands vary (`None` in the slice) but the others fix it anyway:
    /// `x * 0 == 0`, a BatchNorm whose scale is 0 outputs its bias. The varying operand is then
    /// unused.
    pub absorb: Option<Absorb>,
    /// The constants are 1-D vectors indexed by channel whatever the axis (BatchNormalization),
    /// rather than tensors broadcast against the activation.
    pub channel_params: bool,
    pub axes: Box<dyn AxisMap>,
}

impl PerChannel {
    pub fn new(acts: Vec<usize>, params: Vec<usize>, eval: Eval) -> Self {
        PerChannel { acts, params, eval, absorb: None, channel_params: false, axes: Box::new(Same) }
    }

    /// An operator whose constant output is its constant input, laid out by `axes`.
    pub fn identity(axes: Box<dyn AxisMap>) -> Self {
        PerChannel { axes, ..PerChannel::new(vec![0], vec![], Box::new(|x| Some(x[0]))) }
    }

    /// The constant of operand `slot` at channel `c`, if it has one (an operand broadcast over
    /// the channels, `act` none, varies).
    fn operand(&self, slot: usize, c: usize, act: Option<&[Option<f64>]>, param: Option<f64>) -> Option<f64> {
        match act {
            Some(consts) if self.acts.contains(&slot) => consts.get(c).copied().flatten(),
            None if self.acts.contains(&slot) => None,
            _ => param,
        }
    }

    /// The activation slots read as [`Side`] operands, given the laid-out output.
    fn sides(&self, g: &Graph, node: NodeId, o: Layout) -> Vec<usize> {
        if self.acts.len() < 2 {
            return vec![];
        }
        let name = |s: usize| g.node(node).input[s].as_str();
        self.acts.iter().copied().filter(|&s| side(g, name(s), o) == Some(Side::Broadcast)).collect()
    }
}

/// How an activation of a two-activation elementwise operator relates to the output's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// It has the output's channels (and heads): they are one class.
    Same,
    /// It is broadcast over the heads (rotary embeddings' `cos`/`sin` tables, `[.., 1, T, D]`
    /// against `[.., H, T, D]`) or over the channel axis (a per-position scalar such as a norm's
    /// `1 / rms`): output channel `(h, d)` reads its entry `d`, or its only entry. It keeps its
    /// own channels; where entries leave, the operator reads a `Gather` of the kept ones.
    Broadcast,
}

/// Whether `a` (by its declared shape) is laid out as `o` or broadcast over its heads or
/// channels; `None` while its declared size on the channel axis matches neither (the heads
/// may not be known yet) or the output's layout is not known.
fn side(g: &Graph, a: &str, o: Layout) -> Option<Side> {
    let (axis, per) = (o.axis?, o.per_head()?);
    let dim = |axis: isize| g.ir.dim_from_end(g.proto, a, axis);
    if (g.ir.shape(a).is_none() && !g.ir.is_const(a)) || o.block != Some(1) {
        return Some(Side::Same);
    }
    let over_heads = o.heads.is_some_and(|h| dim(h.axis) == Some(1));
    match dim(axis) {
        Some(1) if per > 1 && (o.heads.is_none() || over_heads) => Some(Side::Broadcast),
        Some(n) if n as usize == per && over_heads => Some(Side::Broadcast),
        Some(n) if n as usize == per => Some(Side::Same),
        Some(_) => None,
        None => Some(Side::Same),
    }
}

/// Whether constant `a` has one entry per channel of `o` (per head dimension, size 1 on the
/// heads axis), or one for all, along `o`'s channel axis.
fn entrywise(g: &Graph, a: &str, o: Layout) -> bool {
    let (Some(axis), Some(per)) = (o.axis, o.per_head()) else { return false };
    let dim = |axis: isize| g.ir.dim_from_end(g.proto, a, axis);
    let along = dim(axis).is_some_and(|n| n == 1 || n as usize == per);
    along && o.block == Some(1) && o.heads.is_none_or(|h| dim(h.axis) == Some(1))
}

/// Per channel of `o`, the one value constant `t` holds in it, if it holds one: `t` has an
/// entry per channel along `o`'s channel axis and varies along others (none otherwise).
fn uniform_channels(t: &crate::onnx::proto::TensorProto, o: Layout) -> Option<Vec<Option<f64>>> {
    let (axis, width) = (o.axis?, o.width?);
    let values = crate::onnx::tensor::Values::of(t).ok()?;
    let pos = usize::try_from(values.dims.len() as isize + axis).ok()?;
    if o.block != Some(1) || o.heads.is_some() || values.dims.get(pos) != Some(&(width as i64)) {
        return None;
    }
    let inner: usize = values.dims[pos + 1..].iter().map(|&d| d as usize).product();
    let mut seen: Vec<Option<Option<f64>>> = vec![None; width];
    for i in 0..values.len() {
        let (c, v) = ((i / inner) % width, values.get(i));
        seen[c] = match seen[c] {
            None => Some(Some(v)),
            Some(Some(k)) if k == v => Some(Some(k)),
            _ => Some(None),
        };
    }
    Some(seen.into_iter().map(Option::flatten).collect())
}

/// Whether `a`'s declared shape has size 1 on an axis where `o`'s does not: before `o`'s layout
/// is known, such an operand tells nothing about it.
fn broadcast_into(g: &Graph, a: &str, o: &str) -> bool {
    let (Some(da), Some(doo)) = (g.ir.shape(a), g.ir.shape(o)) else { return false };
    (1..=da.len().min(doo.len())).any(|k| da[da.len() - k] == Some(1) && doo[doo.len() - k] != Some(1))
}

impl<'g> ChannelOp<'g> for PerChannel {
    fn activations(&self) -> Activations {
        // Only constants to broadcast with the channels (Expand of one): the readers lay them out.
        let none = self.acts.is_empty() && !self.params.is_empty();
        Activations { slots: self.acts.clone(), otherwise: "its operands are constants or missing", none }
    }

    fn follows_heads(&self) -> bool {
        self.axes.follows_heads()
    }

    /// A scalar operand (attention's scale) or another tensor with the same heads reads each
    /// head's entries where they are; anything else broadcast over the heads (a per-dimension
    /// table) is sliced alike in every head.
    fn same_entries_in_heads(&self, g: &Graph<'g>, node: NodeId, layouts: &Layouts) -> bool {
        let name = |s: usize| g.node(node).input.get(s).map(String::as_str).unwrap_or("");
        let one_entry = |s: usize| match g.ir.const_tensor(g.proto, name(s)) {
            Some(t) => t.dims.iter().product::<i64>() <= 1,
            None => g.ir.shape(name(s)).is_some_and(|d| d.iter().all(|&x| x == Some(1))),
        };
        let with_heads = |s: usize| g.value(name(s)).is_some_and(|v| layouts[v].heads.is_some());
        self.axes.same_entries_in_heads()
            || self.params.iter().any(|&s| !one_entry(s))
            || self.acts.len() > 1 && self.acts.iter().any(|&s| !with_heads(s) && !one_entry(s))
    }

    fn seed(&self, cx: &mut LayoutCx<'_, 'g>) {
        if let Some(o) = cx.output(0) {
            self.axes.seed(cx, o);
            // A flattened map's block waits for the layer that reads it; through an activation
            // or a quantizer in between, so does the output's.
            if self.axes.keeps_block() && self.acts.iter().any(|&s| cx.get(cx.input(s)).block.is_none()) {
                cx.unknown_block(o);
            }
        }
    }

    fn layout(&self, cx: &mut LayoutCx<'_, 'g>) {
        let Some(o) = cx.output(0) else { return };
        let acts: Vec<ValueId> = self.acts.iter().map(|&s| cx.input(s)).collect();
        self.axes.layout(cx, &acts, o, &self.params);
    }

    fn check(&self, cx: &mut CheckCx<'_, 'g>) {
        let Some(o) = cx.output(0) else { return };
        let l = cx.layout(o);
        if l.axis.is_none() || l.width.is_none() {
            return;
        }
        // A constant that is not per channel but has one entry per channel (or per head
        // dimension, broadcast over the heads) and varies along other axes (a rotary table
        // folded into a constant, `[T, D]`) is read as varying, and sliced with the channels.
        let side_const = |s: usize| !self.channel_params && entrywise(cx.graph, &cx.node_proto().input[s], l);
        let checked = self.axes.check(cx, o).and_then(|()| {
            self.params
                .iter()
                .filter_map(|&s| match cx.per_channel(s, l, self.channel_params) {
                    Err(_) if side_const(s) => None,
                    r => Some(r.map(|p| (s, p))),
                })
                .collect::<Result<Vec<_>, _>>()
        });
        match checked {
            Ok(params) => cx.accept(params),
            Err(why) => {
                let acts: Vec<ValueId> = self.acts.iter().map(|&s| cx.input(s)).collect();
                for v in acts.into_iter().chain([o]) {
                    cx.force(v, why.clone());
                }
            }
        }
    }

    fn ties(&self, cx: &mut TieCx<'_, 'g>) {
        let Some(o) = cx.output(0) else { return };
        if let Some(&x) = self.acts.first() {
            self.axes.ties(cx, cx.input(x));
        }
        let lo = cx.layout(o);
        let sides = self.sides(cx.graph, cx.node, lo);
        for &s in self.acts.iter().filter(|s| !sides.contains(s)) {
            let a = cx.input(s);
            if self.acts.len() > 1 && lo.axis.is_some() && side(cx.graph, cx.graph.name(a), lo).is_none() {
                cx.force(a, Why::Broadcasts);
                cx.force(o, Why::Broadcasts);
                continue;
            }
            match (cx.width(a), cx.width(o)) {
                (Some(wa), Some(wo)) if wa == wo => cx.tie(a, 0, o, 0, wa),
                (None, None) => {}
                _ => {
                    cx.force(a, Why::Broadcasts);
                    cx.force(o, Why::Broadcasts);
                }
            }
        }
    }

    fn constants(&self, cx: &mut ConstCx<'_, 'g>) {
        let Some(o) = cx.output(0) else { return };
        let slots: Vec<usize> =
            (0..cx.input_count()).filter(|s| self.acts.contains(s) || self.params.contains(s)).collect();
        let sides = self.sides(cx.graph, cx.node, cx.layout(o));
        let acts: Vec<Option<ValueId>> =
            slots.iter().map(|&s| (self.acts.contains(&s) && !sides.contains(&s)).then(|| cx.input(s))).collect();
        // Constants read as varying (they vary along other axes: a position table) are still
        // constant in the channels along which they do not.
        let lo = cx.layout(o);
        let uniform: Vec<(usize, Vec<Option<f64>>)> = (self.params.iter())
            .filter(|&&s| cx.param(s).is_none())
            .filter_map(|&s| Some((s, uniform_channels(cx.const_input(s)?, lo)?)))
            .collect();
        let side_const = |s: usize, c: usize| uniform.iter().find(|u| u.0 == s).and_then(|u| u.1[c]);
        let r = (0..cx.consts(o).len())
            .map(|c| {
                let args: Vec<Option<f64>> = slots
                    .iter()
                    .zip(&acts)
                    .map(|(&s, a)| {
                        let param = cx.param(s).map(|p| p.at(c)).or_else(|| side_const(s, c));
                        self.operand(s, c, a.map(|a| cx.consts(a)), param)
                    })
                    .collect();
                match args.iter().copied().collect::<Option<Vec<f64>>>() {
                    Some(all) => (self.eval)(&all),
                    None => self.absorb.and_then(|f| f(&args)),
                }
            })
            .collect();
        cx.set(o, r);
    }

    fn needs(&self, cx: &mut NeedCx<'_, 'g>) {
        let Some(o) = cx.output(0) else { return };
        let slots: Vec<usize> =
            (0..cx.input_count()).filter(|s| self.acts.contains(s) || self.params.contains(s)).collect();
        let sides = self.sides(cx.graph, cx.node, cx.layout(o));
        let operand = |cx: &NeedCx, s: usize, c: usize| {
            let act = (self.acts.contains(&s) && !sides.contains(&s)).then(|| cx.consts(cx.input(s)));
            self.operand(s, c, act, cx.param(s).map(|p| p.at(c)))
        };
        for &s in &sides {
            cx.mark_all(cx.input(s));
        }
        let needed = cx.needed(o);
        for c in (0..needed.len()).filter(|&c| needed[c]) {
            for &slot in self.acts.iter().filter(|s| !sides.contains(s)) {
                let a = cx.input(slot);
                // Unused when the other operands fix the output whatever this one is.
                let args: Vec<Option<f64>> =
                    slots.iter().map(|&s| if s == slot { None } else { operand(cx, s, c) }).collect();
                let absorbed = self.absorb.is_some_and(|f| f(&args).is_some());
                if c < cx.needed(a).len() && cx.consts(a)[c].is_none() && !absorbed {
                    cx.mark(a, c);
                }
            }
        }
    }

    fn rewrite(&self, cx: &mut PlanCx<'_, 'g>) -> Result<()> {
        let Some(o) = cx.output(0) else { return Ok(()) };
        let Some(w) = cx.layout(o).width else { return Ok(()) };
        let keep = cx.kept(o, w);
        let folded = self.params.iter().find_map(|&slot| cx.take_fold(slot).map(|f| (slot, f)));
        if keep.len() == w && folded.is_none() {
            return Ok(());
        }
        let lo = cx.layout(o);
        let (per, axis) = (lo.per_head().expect("laid out"), lo.axis.expect("laid out"));
        let entries = if lo.heads.is_some() { heads_kept(lo, &keep).1 } else { keep.clone() };
        let sides = self.sides(cx.graph, cx.node, lo);
        let side_params = self.params.iter().copied().filter(|&s| cx.param(s).is_none());
        for slot in sides.into_iter().chain(side_params.collect::<Vec<_>>()) {
            let input = &cx.node_proto().input[slot];
            // A broadcast operand with one entry per head dimension reads the kept ones: a
            // constant is sliced, an activation gathered.
            if cx.graph.ir.dim_from_end(cx.graph.proto, input, axis) != Some(per as u64) || entries.len() == per {
                continue;
            }
            take_entries(cx, slot, axis, &entries);
        }
        let node = cx.node_proto();
        for &slot in &self.params {
            // A constant broadcast over heads or varying beyond the channels (sliced above).
            let Some(prm) = cx.param(slot) else { continue };
            if let Some(dim) = prm.channel_dim {
                let t = cx.const_tensor(&node.input[slot]).expect("constant");
                let mut dims = t.dims.clone();
                dims[dim] = keep.len() as i64;
                let dtype = prm.values.dtype;
                let raw = match &folded {
                    Some((s, fold)) if *s == slot => {
                        encode(dtype, &keep.iter().map(|&c| prm.at(c) + fold[c]).collect::<Vec<_>>())
                    }
                    _ => prm.values.gather(keep.iter().copied()),
                };
                let n = cx.node.0;
                cx.push(Edit::Const { node: n, slot, tensor: with_data(t, dims, dtype, raw) });
            }
        }
        self.axes.rewrite(cx, o, &keep);
        Ok(())
    }
}

/// Input `slot` of the node reads only `entries` along `axis` (counted from the end): a constant
/// is sliced, an activation (or a constant of a type not read here) gathered.
pub(super) fn take_entries(cx: &mut PlanCx, slot: usize, axis: isize, entries: &[usize]) {
    let node = cx.node.0;
    match cx.const_input(slot).and_then(|t| Some((t, Values::of(t).ok()?))) {
        Some((t, values)) => {
            let pos = (t.dims.len() as isize + axis) as usize;
            let mut dims = t.dims.clone();
            dims[pos] = entries.len() as i64;
            let raw = values.gather_axis(pos, entries);
            cx.push(Edit::Const { node, slot, tensor: with_data(t, dims, values.dtype, raw) });
        }
        None => cx.push(Edit::GatherOperand { node, slot, axis, keep: entries.to_vec() }),
    }
}

/// The output has the activations' layout (broadcasting may add leading axes).
pub(crate) struct Same;

impl AxisMap for Same {
    fn layout(&self, cx: &mut LayoutCx, acts: &[ValueId], o: ValueId, params: &[usize]) {
        for &a in acts {
            if acts.len() > 1 {
                let (g, lo) = (cx.graph, cx.get(o));
                let known = lo.axis.is_some() && lo.width.is_some();
                let (an, on) = (g.name(a), g.name(o));
                // A broadcast operand keeps its own layout; one not yet placed waits.
                if known && side(g, an, lo) != Some(Side::Same) || !known && broadcast_into(g, an, on) {
                    continue;
                }
            }
            cx.copy(a, o);
            cx.copy(o, a);
        }
        let param_rank = params.iter().filter_map(|&s| cx.const_input(s)).map(|t| t.dims.len());
        let ranks: Option<Vec<usize>> = acts.iter().map(|&a| cx.get(a).rank).collect();
        if let Some(r) = ranks.and_then(|r| r.into_iter().chain(param_rank).max()) {
            cx.set_rank(o, r);
        }
    }

    fn same_entries_in_heads(&self) -> bool {
        false
    }
    fn follows_heads(&self) -> bool {
        true
    }

    fn keeps_block(&self) -> bool {
        true
    }
}
