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

use super::shape::ShapeInput;
use super::{Activations, ChannelOp, Ctx};
use crate::analysis::plan::heads_kept;
use crate::analysis::reasons::Why;
use crate::analysis::{CheckCx, ConstCx, Layout, LayoutCx, NeedCx, NodeId, PlanCx, TieCx};
use crate::error::Result;
use crate::ir::NodeExt;
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
        let heads_fit = l.heads.is_none_or(|h| h.axis < -1 && !h.ragged && !h.merged);
        l.axis == Some(-1)
            && (self.axis == -1 || l.rank.is_some_and(|r| self.axis == r as i64 - 1))
            && l.block == Some(1)
            && l.groups.is_none()
            && heads_fit
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
        Activations { slots: vec![0], otherwise: "it rotates a constant", none: false }
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
