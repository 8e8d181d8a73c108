//! Interleaved rotary embeddings. GPT-J's `rotate_every_two` (CodeGen's, and any RoPE written
//! with interleaved pairs) rotates entries `(2i, 2i + 1)` of each head together:
//! `stack((-x[.., 1::2], x[.., ::2]), -1).flatten(-2)`, which both exporters write as two
//! step-2 `Slice`s of x's last axis, a `Neg`, two `Unsqueeze`s to a new last axis, a `Concat`
//! along it and a `Reshape` back to x's shape. The nodes are one pattern (the Reshape answers
//! for it): output entry `2i + j` of a head is input entry `2i + s_j` (`s_j` the start of part
//! `j`'s slice), negated where the part is. A pair leaves only whole: the rule ties both entries
//! of a pair on both sides, so the step-2 slices still pair the kept entries after removal and
//! only the target's written sizes change (the rotary `Add` ties the pairs anyway).
//!
//! A constant key entry is not constant after the rotation (`k_d * cos_d(t)` varies with the
//! position), which the elementwise rules see by themselves: this rule only moves entries.

use super::per_channel::take_entries;
use super::shape::ShapeInput;
use super::{Activations, ChannelOp, Ctx, OpRule, Role};
use crate::analysis::plan::{first_head_entries, heads_kept};
use crate::analysis::reasons::{Opaque, Why};
use crate::analysis::{CheckCx, ConstCx, Layout, LayoutCx, NeedCx, NodeId, PlanCx, TieCx};
use crate::error::Result;
use crate::ir::NodeExt;
use crate::onnx::build::attr_int;
use crate::onnx::proto::NodeProto;
use crate::rewrite::Edit;

pub(crate) struct EveryTwo<'g> {
    input: &'g str,
    /// The slices, negations, unsqueezes and the concat (and what computes a read-back
    /// target), in graph order.
    pub inner: Vec<NodeId>,
    /// The axis the slices take, as written: the last, -1 or `rank - 1`.
    axis: i64,
    /// Per part of the concat: the start of its slice (0 or 1) and whether it is negated.
    parts: [(usize, bool); 2],
    /// The target as written when it is a constant; `None` for `flatten(-2)` read back from the
    /// concat's own shape, which follows any width by itself.
    target: Option<ShapeInput>,
    /// The values whose declared shapes hold half-width heads, and where: `[.., H, D/2]` (the
    /// slices, the negation) at -1, `[.., H, D/2, 1 | 2]` (after the new axis) at -2.
    halves: Vec<(&'g str, isize)>,
}

/// "To the end" as exporters write it (`i64::MAX`, or anything past any real axis).
const TO_THE_END: i64 = 1 << 31;

/// Every interleaved rotation in the graph, keyed by its Reshape.
pub(crate) fn interleaved_rotations<'g>(cx: &Ctx<'g>) -> Vec<(NodeId, EveryTwo<'g>)> {
    let (g, ir) = (cx.graph, cx.ir);
    let producer = |name: &str| ir.producer.get(name).copied();
    let op = |n: usize, t: &str| g.node[n].op_type() == t && g.node[n].default_domain();
    let sole = |value: &str, n: usize| matches!(ir.readers(value), [(r, _)] if *r == n) && !ir.outputs.contains(value);
    let mut found = vec![];
    for (c, concat) in g.node.iter().enumerate() {
        let matched = (|| {
            (op(c, "Concat") && concat.input.len() == 2).then_some(())?;
            let out = concat.output.first()?;
            let reshape = ir.readers(out).iter().find(|&&(r, slot)| slot == 0 && op(r, "Reshape"))?.0;
            let mut inner = vec![NodeId(c)];
            let mut halves = vec![(concat.output[0].as_str(), -2)];
            let mut x = None;
            let mut parts = [(0, false); 2];
            let mut axis = None;
            for (j, part) in concat.input.iter().enumerate() {
                let u = producer(part).filter(|&u| op(u, "Unsqueeze") && sole(part, c))?;
                let axes = cx.ints(&g.node[u], 1).or_else(|| g.node[u].attr_ints("axes"))?;
                let mut from = g.node[u].input.first()?;
                halves.push((part, -2));
                inner.push(NodeId(u));
                let negated = producer(from).filter(|&n| op(n, "Neg") && sole(from, u));
                if let Some(n) = negated {
                    inner.push(NodeId(n));
                    halves.push((from, -1));
                    from = g.node[n].input.first()?;
                }
                let s = producer(from).filter(|&s| op(s, "Slice") && sole(from, negated.unwrap_or(u)))?;
                let slice = &g.node[s];
                let one = |slot: usize| cx.ints(slice, slot).filter(|v| v.len() == 1).map(|v| v[0]);
                let (start, end, along, step) = (one(1)?, one(2)?, one(3)?, one(4)?);
                let input = slice.input.first()?.as_str();
                (step == 2 && (start == 0 || start == 1) && end >= TO_THE_END).then_some(())?;
                // Both slice one axis (the last, which the layout checks) and the new axis
                // comes after it.
                (*axis.get_or_insert(along) == along && after(along, &axes)).then_some(())?;
                (*x.get_or_insert(input) == input).then_some(())?;
                inner.push(NodeId(s));
                halves.push((from, -1));
                parts[j] = (start as usize, negated.is_some());
            }
            (parts[0].0 != parts[1].0).then_some(())?;
            let axis = axis?;
            after(axis, &[concat.attr_i("axis", 0)]).then_some(())?;
            let x = x.filter(|x| !ir.is_const(x))?;
            let target = match ShapeInput::of(cx, &g.node[reshape], 1) {
                Some(t @ ShapeInput::Constant(_)) => Some(same_shape(cx, t, x, &g.node[reshape])?),
                _ => {
                    inner.extend(flattened_last_two(cx, &g.node[reshape], &concat.output[0])?);
                    None
                }
            };
            inner.sort_unstable_by_key(|n| n.0);
            // The rotation is read as a whole: its parts, and the shape read back, serve it alone.
            let read_within = ir.readers(out).iter().all(|&(r, _)| r == reshape || inner.contains(&NodeId(r)));
            (read_within && !ir.outputs.contains(out)).then_some(())?;
            Some((NodeId(reshape), EveryTwo { input: x, inner, axis, parts, target, halves }))
        })();
        found.extend(matched);
    }
    found
}

/// Whether x's heads, if any, are on an axis of their own before the channels, the same entries
/// kept in each: where a rotation within every head keeps its pairs.
fn own_heads(l: Layout) -> bool {
    l.heads.is_none_or(|h| h.axis < -1 && !h.ragged && !h.merged)
}

/// Whether `axes` is one axis, the new last one after the `last` axis.
fn after(last: i64, axes: &[i64]) -> bool {
    matches!(axes, [a] if *a == -1 || last >= 0 && *a == last + 1)
}

/// A constant target that is x's own shape: x's declared sizes, copies (0), and one -1; the
/// last entry is checked against the layout.
fn same_shape(cx: &Ctx, target: ShapeInput, x: &str, reshape: &crate::onnx::proto::NodeProto) -> Option<ShapeInput> {
    let ShapeInput::Constant(v) = &target else { return None };
    let dims = cx.ir.shape(x)?;
    let copies = reshape.attr_i("allowzero", 0) == 0;
    let (last, leading) = v.split_last()?;
    let fits = v.len() == dims.len()
        && v.iter().filter(|&&e| e == -1).count() <= 1
        && (*last == -1 || *last > 0)
        && leading.iter().zip(dims).all(|(&e, &d)| e == -1 || (e == 0 && copies) || d == Some(e as u64));
    fits.then_some(target)
}

/// The nodes of TorchScript's `flatten(-2)` target for `value`: `Concat(Slice(Shape(value),
/// [0], [-2]), [-1])`, which reads every other size back.
fn flattened_last_two(cx: &Ctx, reshape: &crate::onnx::proto::NodeProto, value: &str) -> Option<Vec<NodeId>> {
    let (g, ir) = (cx.graph, cx.ir);
    let c = *ir.producer.get(reshape.input.get(1)?)?;
    let concat = &g.node[c];
    let [leading, minus_one] = &concat.input[..] else { return None };
    (concat.op_type() == "Concat" && cx.const_tensor(minus_one).map(crate::onnx::tensor::int64s)? == [-1])
        .then_some(())?;
    let s = *ir.producer.get(leading)?;
    let slice = &g.node[s];
    let bounds = (cx.ints(slice, 1)?, cx.ints(slice, 2)?);
    (slice.op_type() == "Slice" && bounds == (vec![0], vec![-2]) && cx.absent_or(slice, 3, &[0])).then_some(())?;
    let shape = *ir.producer.get(slice.input.first()?)?;
    let plain = g.node[shape].op_type() == "Shape" && g.node[shape].attribute.is_empty();
    (plain && g.node[shape].input.first().map(String::as_str) == Some(value)).then_some(())?;
    let private = [(leading, s), (&concat.output[0], c)].iter().all(|(v, _)| ir.readers(v).len() == 1);
    private.then_some(vec![NodeId(shape), NodeId(s), NodeId(c)])
}

impl EveryTwo<'_> {
    /// The input entry that output entry `d` of a head is, and whether it is negated.
    fn source(&self, d: usize) -> (usize, bool) {
        let (start, negated) = self.parts[d % 2];
        (d - d % 2 + start, negated)
    }

    /// Whether x's channels are where the pattern rotates them: the last axis, in heads of an
    /// even width, and no constraint that could keep one entry of a pair without the other.
    fn fits(&self, l: Layout) -> bool {
        l.axis == Some(-1)
            && (self.axis == -1 || l.rank.is_some_and(|r| self.axis == r as i64 - 1))
            && l.block == Some(1)
            && l.groups.is_none()
            && own_heads(l)
            && l.per_head().is_some_and(|d| d % 2 == 0 && d > 0)
            && match &self.target {
                Some(ShapeInput::Constant(v)) => v.last().is_some_and(|&e| e == -1 || Some(e as usize) == l.per_head()),
                _ => true,
            }
    }

    /// For each channel of the output, the input channel it is and whether negated.
    fn map(&self, l: Layout) -> Option<Vec<(usize, bool)>> {
        let (w, per) = (l.width?, l.per_head()?);
        Some((0..w).map(|c| self.source(c % per)).enumerate().map(|(c, (s, n))| (c - c % per + s, n)).collect())
    }
}

impl<'g> ChannelOp<'g> for EveryTwo<'g> {
    fn activations(&self) -> Activations {
        Activations::new(vec![0], "it rotates a constant")
    }

    fn follows_heads(&self) -> bool {
        true
    }

    fn layout(&self, cx: &mut LayoutCx<'_, 'g>) {
        let (Some(x), Some(o)) = (cx.value(self.input), cx.output(0)) else { return };
        cx.copy(x, o);
        cx.copy(o, x);
        let (lx, lo) = (cx.get(x), cx.get(o));
        lx.rank.inspect(|&r| cx.set_rank(o, r));
        lo.rank.inspect(|&r| cx.set_rank(x, r));
    }

    fn check(&self, cx: &mut CheckCx<'_, 'g>) {
        let (Some(x), Some(o)) = (cx.value(self.input), cx.output(0)) else { return };
        if !self.fits(cx.layout(x)) || cx.layout(x) != cx.layout(o) {
            cx.force(x, Why::ReshapesChannelAxis);
            cx.force(o, Why::ReshapesChannelAxis);
        }
    }

    fn ties(&self, cx: &mut TieCx<'_, 'g>) {
        let (Some(x), Some(o)) = (cx.value(self.input), cx.output(0)) else { return };
        let Some(map) = self.map(cx.layout(x)).filter(|_| cx.width(o) == cx.width(x)) else { return };
        // Each output entry is its source, and the pair is one class on both sides.
        for (c, &(s, _)) in map.iter().enumerate() {
            cx.tie(x, s, o, c, 1);
            cx.tie(x, c, o, c, 1);
        }
    }

    fn constants(&self, cx: &mut ConstCx<'_, 'g>) {
        let (Some(x), Some(o)) = (cx.value(self.input), cx.output(0)) else { return };
        let Some(map) = self.map(cx.layout(x)) else { return };
        let xs = cx.consts(x).to_vec();
        if xs.len() == map.len() && cx.consts(o).len() == map.len() {
            let r = map.iter().map(|&(s, negated)| xs[s].map(|v| if negated { -v } else { v })).collect();
            cx.set(o, r);
        }
    }

    fn needs(&self, cx: &mut NeedCx<'_, 'g>) {
        let (Some(x), Some(o)) = (cx.value(self.input), cx.output(0)) else { return };
        let (needed, consts) = (cx.needed(o), cx.consts(x));
        let Some(map) = self.map(cx.layout(x)).filter(|m| m.len() == needed.len() && m.len() == consts.len()) else {
            return cx.mark_all(x);
        };
        let marks: Vec<usize> =
            map.iter().zip(needed).filter(|&(&(s, _), &n)| n && consts[s].is_none()).map(|(&(s, _), _)| s).collect();
        marks.into_iter().for_each(|s| cx.mark(x, s));
    }

    fn rewrite(&self, cx: &mut PlanCx<'_, 'g>) -> Result<()> {
        let (Some(x), Some(o)) = (cx.value(self.input), cx.output(0)) else { return Ok(()) };
        let l = cx.layout(o);
        let (Some(w), Some(per)) = (l.width, l.per_head()) else { return Ok(()) };
        let keep = cx.kept(o, w);
        if keep.len() == w {
            return Ok(());
        }
        debug_assert_eq!(cx.kept(x, w), keep, "pairs leave whole, the same on both sides");
        let (rows, cols) = match l.heads {
            Some(_) => heads_kept(l, &keep),
            None => (vec![0], keep.clone()),
        };
        let count = l.heads.map_or(1, |h| h.count);
        if let Some(target @ ShapeInput::Constant(v)) = &self.target {
            let n = v.len();
            let mut changes = vec![];
            if v[n - 1] != -1 {
                changes.push((n - 1, cols.len() as i64));
            }
            // The target is x's own shape, so the layout's heads axis indexes it.
            if let Some(at) = l.heads.and_then(|h| n.checked_add_signed(h.axis)).filter(|&at| v.get(at) > Some(&0)) {
                changes.push((at, rows.len() as i64));
            }
            if !changes.is_empty() {
                let node = cx.node;
                target.rewrite(cx, node, 1, &changes);
            }
        }
        // The declared shapes between: half-width heads, with the pairs' axis after them or not.
        for &(value, axis) in &self.halves {
            cx.push(Edit::Width { value: value.into(), axis, from: per / 2, to: cols.len() / 2 });
            if let Some(h) = l.heads {
                let heads_axis = h.axis + axis + 1;
                cx.push(Edit::Width { value: value.into(), axis: heads_axis, from: count, to: rows.len() });
            }
        }
        Ok(())
    }
}

/// Opset 23's `RotaryEmbedding`: the rotation above (or rotate_half's, `interleaved = 0`) as one
/// operator, on the first `rotary_embedding_dim` entries of each head (all when 0), the rest
/// passed through. 4-D inputs `[B, H, S, D]` carry their heads on an axis of their own; 3-D
/// inputs `[B, S, H * D]` inside the last (`num_heads`), where every head stays and keeps the
/// same entries (a grouped layout), so that the operator can split them again.
pub(crate) struct RotaryEmbedding;

impl OpRule for RotaryEmbedding {
    fn op_types(&self) -> &'static [&'static str] {
        &["RotaryEmbedding"]
    }

    fn role<'g>(&self, node: &'g NodeProto, _cx: &Ctx<'g>) -> Role<'g> {
        let (heads, dim) = (node.attr_i("num_heads", 0), node.attr_i("rotary_embedding_dim", 0));
        let (Ok(heads), Ok(dim)) = (usize::try_from(heads), usize::try_from(dim)) else {
            return Role::Opaque(Opaque::Malformed("its num_heads or rotary_embedding_dim is negative"));
        };
        Role::Op(Box::new(Rotation { interleaved: node.attr_i("interleaved", 0) != 0, heads, dim }))
    }
}

pub(crate) struct Rotation {
    interleaved: bool,
    /// `num_heads` of a 3-D input; 0 for a 4-D one.
    heads: usize,
    /// Rotated entries per head; 0 for all of them.
    dim: usize,
}

/// What a rewrite of a `RotaryEmbedding` may write: the pass-through left when no pair rotates.
pub(crate) const EMITS: &[&str] = &["Identity"];

/// The cos and sin caches' slots: their last axis has one entry per rotated pair.
const CACHES: [usize; 2] = [1, 2];

impl Rotation {
    /// Entries per head and how many of them rotate, when x's layout is the operator's.
    fn sizes(&self, l: Layout) -> Option<(usize, usize)> {
        let per = if self.heads > 0 {
            let w = l.width?;
            (l.rank == Some(3) && l.heads.is_none() && w.is_multiple_of(self.heads)).then_some(w / self.heads)?
        } else {
            (l.rank == Some(4) && own_heads(l) && l.groups.is_none()).then_some(l.per_head()?)?
        };
        let rotated = if self.dim == 0 { per } else { self.dim };
        let fits = l.axis == Some(-1) && l.block == Some(1) && rotated <= per && rotated % 2 == 0 && rotated > 0;
        fits.then_some((per, rotated))
    }

    /// The entry of a head that entry `e` rotates with (none past the rotated ones).
    fn partner(&self, e: usize, rotated: usize) -> Option<usize> {
        (e < rotated).then(|| if self.interleaved { e ^ 1 } else { (e + rotated / 2) % rotated })
    }

    /// The pair (the caches' entry) that rotated entry `e` belongs to.
    fn pair(&self, e: usize, rotated: usize) -> usize {
        if self.interleaved {
            e / 2
        } else {
            e % (rotated / 2)
        }
    }
}

impl<'g> ChannelOp<'g> for Rotation {
    fn activations(&self) -> Activations {
        Activations::new(vec![0], "it rotates a constant")
    }

    fn follows_heads(&self) -> bool {
        true
    }

    fn layout(&self, cx: &mut LayoutCx<'_, 'g>) {
        let (x, Some(o)) = (cx.input(0), cx.output(0)) else { return };
        cx.copy(x, o);
        cx.copy(o, x);
        for v in [x, o] {
            cx.set_axis(v, -1);
            cx.set_block(v, 1);
            cx.set_rank(v, if self.heads > 0 { 3 } else { 4 });
            if self.heads > 0 {
                cx.set_groups(v, self.heads);
            }
        }
    }

    fn check(&self, cx: &mut CheckCx<'_, 'g>) {
        let (x, Some(o)) = (cx.input(0), cx.output(0)) else { return };
        let (g, node) = (cx.graph, cx.node_proto());
        // The caches' last axis must be the pairs the layout gives (a wrong model keeps all).
        let caches_fit = |rotated: usize| {
            CACHES.iter().all(|&s| {
                node.input.get(s).is_some_and(|c| g.ir.dim_from_end(g.proto, c, -1) == Some(rotated as u64 / 2))
            })
        };
        let fits = self.sizes(cx.layout(x)).is_some_and(|(_, r)| caches_fit(r));
        if !fits || cx.layout(x) != cx.layout(o) {
            cx.force(x, Why::UnknownPartWidths);
            cx.force(o, Why::UnknownPartWidths);
        }
    }

    fn ties(&self, cx: &mut TieCx<'_, 'g>) {
        let (x, Some(o)) = (cx.input(0), cx.output(0)) else { return };
        let Some((per, rotated)) = self.sizes(cx.layout(x)) else { return };
        let (Some(w), true) = (cx.width(x), cx.width(x) == cx.width(o)) else { return };
        for c in 0..w {
            cx.tie(x, c, o, c, 1);
            if let Some(p) = self.partner(c % per, rotated) {
                cx.tie(x, c - c % per + p, o, c, 1);
            }
        }
    }

    fn constants(&self, cx: &mut ConstCx<'_, 'g>) {
        let (x, Some(o)) = (cx.input(0), cx.output(0)) else { return };
        let Some((per, rotated)) = self.sizes(cx.layout(x)) else { return };
        let xs = cx.consts(x).to_vec();
        if cx.consts(o).len() != xs.len() {
            return;
        }
        // A pair of zeros rotates to zeros; any other constant turns with the position.
        let r = (0..xs.len())
            .map(|c| match self.partner(c % per, rotated) {
                None => xs[c],
                Some(p) => (xs[c] == Some(0.0) && xs[c - c % per + p] == Some(0.0)).then_some(0.0),
            })
            .collect();
        cx.set(o, r);
    }

    fn needs(&self, cx: &mut NeedCx<'_, 'g>) {
        let (x, Some(o)) = (cx.input(0), cx.output(0)) else { return };
        // The caches and the positions have no channels: read whole.
        let read: Vec<_> = [CACHES[0], CACHES[1], 3].iter().filter_map(|&s| cx.graph.input(cx.node, s)).collect();
        read.into_iter().for_each(|v| cx.mark_all(v));
        let Some((per, rotated)) = self.sizes(cx.layout(x)) else { return cx.mark_all(x) };
        let (needed, out) = (cx.needed(o), cx.consts(o));
        if needed.len() != out.len() || cx.needed(x).len() != needed.len() {
            return cx.mark_all(x);
        }
        for c in (0..needed.len()).filter(|&c| needed[c] && out[c].is_none()) {
            cx.mark(x, c);
            if let Some(p) = self.partner(c % per, rotated) {
                cx.mark(x, c - c % per + p);
            }
        }
    }

    fn rewrite(&self, cx: &mut PlanCx<'_, 'g>) -> Result<()> {
        let (x, Some(o)) = (cx.input(0), cx.output(0)) else { return Ok(()) };
        let l = cx.layout(x);
        let (Some(w), Some((per, rotated))) = (l.width, self.sizes(l)) else { return Ok(()) };
        let keep = cx.kept(o, w);
        if keep.len() == w {
            return Ok(());
        }
        let cols = first_head_entries(&keep, per);
        let mut pairs: Vec<usize> = cols.iter().filter(|&&e| e < rotated).map(|&e| self.pair(e, rotated)).collect();
        let kept_rotated = pairs.len();
        pairs.sort_unstable();
        pairs.dedup();
        let node = cx.node.0;
        if kept_rotated == 0 {
            // Nothing left rotates: the operator passes its input through.
            let (input, output) = (cx.node_proto().input[0].clone(), cx.node_proto().output[0].clone());
            let identity = crate::onnx::build::node("Identity", "$passed", &[&input], &[&output], vec![]);
            cx.push(Edit::Replace { node, nodes: vec![identity], initializers: vec![] });
            return Ok(());
        }
        if kept_rotated < rotated {
            for slot in CACHES {
                take_entries(cx, slot, -1, &pairs);
            }
            if self.dim != 0 {
                cx.push(Edit::Attr { node, attr: attr_int("rotary_embedding_dim", kept_rotated as i64) });
            }
        }
        Ok(())
    }
}
