//! Channel shuffles. ShuffleNet's `channel_shuffle`, `x.view(N, A, B, H, W).transpose(1, 2)
//! .view(N, C, H, W)`, splits the channel axis in two, swaps the halves and merges them back:
//! a fixed permutation of x's channels, output channel `b * A + a` being input channel
//! `a * B + b`. The three nodes are one pattern (the Reshape that merges answers for it): each
//! output channel is tied to its input channel, so they leave together. Once channels leave,
//! the kept ones are in general no longer a product that a split and a swap could shuffle, so the
//! pattern becomes one `Gather` of the kept channels in their shuffled order (an index per kept
//! channel).

use super::shape::ShapeInput;
use super::{Activations, ChannelOp, Ctx};
use crate::analysis::reasons::Why;
use crate::analysis::{CheckCx, ConstCx, LayoutCx, NeedCx, NodeId, PlanCx, TieCx};
use crate::error::Result;
use crate::ir::NodeExt;
use crate::onnx::build::{attr_int, int64_tensor, node};
use crate::rewrite::Edit;

pub(crate) struct Shuffle<'g> {
    input: &'g str,
    /// The splitting Reshape, the Transpose, and what computes their targets from x's shape.
    pub inner: Vec<NodeId>,
    /// The channel axis of x, from the start; the target splits it into `parts` there.
    axis: usize,
    rank: usize,
    parts: (usize, usize),
    /// The merging target's entry at the channel axis, when written as a number.
    merged: Option<i64>,
}

/// Every channel shuffle in the graph, keyed by its merging Reshape.
pub(crate) fn shuffled_channels<'g>(cx: &Ctx<'g>) -> Vec<(NodeId, Shuffle<'g>)> {
    let (g, ir) = (cx.graph, cx.ir);
    let sole = |value: &str, op: &str| cx.sole_reader(value, op);
    let mut found = vec![];
    for (t, swap) in g.node.iter().enumerate().filter(|(_, n)| n.op_type() == "Transpose" && n.domain().is_empty()) {
        let matched = (|| {
            let split = *ir.producer.get(swap.input.first()?)?;
            (g.node[split].op_type() == "Reshape" && sole(&g.node[split].output[0], "Transpose") == Some(t))
                .then_some(())?;
            let merge = sole(swap.output.first()?, "Reshape")?;
            let x = g.node[split].input.first().filter(|x| !ir.is_const(x))?;
            let perm = swap.attr_ints("perm")?;
            let rank = perm.len().checked_sub(1)?;
            // One pair of neighbours swapped, every other axis in place.
            let moved: Vec<usize> = (0..=rank).filter(|&i| perm[i] != i as i64).collect();
            let [q, q1] = moved[..] else { return None };
            (q1 == q + 1 && perm[q] == q1 as i64 && perm[q1] == q as i64).then_some(())?;
            let targets = [ShapeInput::of(cx, &g.node[split], 1)?, ShapeInput::of(cx, &g.node[merge], 1)?];
            (targets[0].len() == rank + 1 && targets[1].len() == rank && ir.rank(x).is_none_or(|r| r == rank))
                .then_some(())?;
            let part = |k: usize| targets[0].get(cx, k).and_then(|v| usize::try_from(v).ok()).filter(|&v| v > 1);
            let parts = (part(q)?, part(q + 1)?);
            // Every other entry keeps x's own size: the number x declares, or x's dimension
            // read back; one -1 is that size too when everything else is fixed.
            let mut inner = vec![NodeId(split), NodeId(t)];
            let mut merged = None;
            for (which, shape) in targets.iter().enumerate() {
                let mut free = 0;
                for k in 0..shape.len() {
                    let from_x = match (which, k) {
                        (0, k) if k == q || k == q + 1 => continue,
                        (0, k) if k > q + 1 => k - 1,
                        (_, k) => k,
                    };
                    let read =
                        shape.read_back(cx, k).filter(|r| r.tensor == x.as_str() && r.axis == from_x && r.factor == 1);
                    match (shape.get(cx, k), read) {
                        (Some(v), _) if which == 1 && k == q && v != -1 => merged = Some(v),
                        (Some(-1), _) => free += 1,
                        (Some(v), _) => (ir.shape(x)?.get(from_x).copied()?? == u64::try_from(v).ok()?).then_some(())?,
                        (None, Some(r)) => {
                            inner.extend(r.steps);
                            inner.push(r.shape);
                        }
                        (None, None) => return None,
                    }
                }
                (free <= 1).then_some(())?;
                inner.extend(shape.assembly(cx, &g.node[if which == 0 { split } else { merge }], 1));
            }
            inner.sort_unstable_by_key(|n| n.0);
            inner.dedup();
            // The shapes computed for the pattern serve it alone.
            let outside = inner.iter().flat_map(|&n| &g.node[n.0].output).any(|v| {
                ir.outputs.contains(v) || ir.readers(v).iter().any(|&(r, _)| !inner.contains(&NodeId(r)) && r != merge)
            });
            (!outside).then_some(())?;
            Some((NodeId(merge), Shuffle { input: x.as_str(), inner, axis: q, rank, parts, merged }))
        })();
        found.extend(matched);
    }
    found
}

impl Shuffle<'_> {
    /// The input channel that output channel `o` is.
    fn source(&self, o: usize) -> usize {
        let (a, b) = self.parts;
        (o % a) * b + o / a
    }

    fn width(&self) -> usize {
        self.parts.0 * self.parts.1
    }

    /// Whether x's channels are where the pattern splits them, all of them, one entry each.
    fn fits(&self, l: crate::analysis::Layout) -> bool {
        l.position() == Some(self.axis)
            && l.rank == Some(self.rank)
            && l.width == Some(self.width())
            && l.block == Some(1)
            && l.heads.is_none()
            && l.groups.is_none()
            && self.merged.is_none_or(|m| m == self.width() as i64)
    }
}

impl<'g> ChannelOp<'g> for Shuffle<'g> {
    fn activations(&self) -> Activations {
        Activations::new(vec![0], "it shuffles constant channels")
    }

    fn layout(&self, cx: &mut LayoutCx<'_, 'g>) {
        let (Some(x), Some(o)) = (cx.value(self.input), cx.output(0)) else { return };
        let axis = self.axis as isize - self.rank as isize;
        for v in [x, o] {
            cx.set_axis(v, axis);
            cx.set_rank(v, self.rank);
            cx.set_width(v, self.width());
            cx.set_block(v, 1);
        }
    }

    fn check(&self, cx: &mut CheckCx<'_, 'g>) {
        let (Some(x), Some(o)) = (cx.value(self.input), cx.output(0)) else { return };
        if !self.fits(cx.layout(x)) || !self.fits(cx.layout(o)) {
            cx.force(x, Why::ReshapesChannelAxis);
            cx.force(o, Why::ReshapesChannelAxis);
        }
    }

    fn ties(&self, cx: &mut TieCx<'_, 'g>) {
        let (Some(x), Some(o)) = (cx.value(self.input), cx.output(0)) else { return };
        if cx.width(x) == Some(self.width()) && cx.width(o) == Some(self.width()) {
            (0..self.width()).for_each(|c| cx.tie(x, self.source(c), o, c, 1));
        }
    }

    fn constants(&self, cx: &mut ConstCx<'_, 'g>) {
        let (Some(x), Some(o)) = (cx.value(self.input), cx.output(0)) else { return };
        let xs = cx.consts(x).to_vec();
        let r = (0..cx.consts(o).len()).map(|c| xs.get(self.source(c)).copied().flatten()).collect();
        cx.set(o, r);
    }

    fn needs(&self, cx: &mut NeedCx<'_, 'g>) {
        let (Some(x), Some(o)) = (cx.value(self.input), cx.output(0)) else { return };
        let (needed, consts) = (cx.needed(o), cx.consts(x));
        if needed.len() != self.width() || consts.len() != self.width() {
            return cx.mark_all(x);
        }
        let marks: Vec<usize> =
            (0..needed.len()).filter(|&c| needed[c]).map(|c| self.source(c)).filter(|&s| consts[s].is_none()).collect();
        marks.into_iter().for_each(|s| cx.mark(x, s));
    }

    fn rewrite(&self, cx: &mut PlanCx<'_, 'g>) -> Result<()> {
        let (Some(x), Some(o)) = (cx.value(self.input), cx.output(0)) else { return Ok(()) };
        let keep = cx.kept(o, self.width());
        if keep.len() == self.width() {
            return Ok(());
        }
        let kept_x = cx.kept(x, self.width());
        let at = |c: usize| kept_x.binary_search(&c).expect("tied channels stay together") as i64;
        let indices: Vec<i64> = keep.iter().map(|&c| at(self.source(c))).collect();
        let out = cx.node_proto().output[0].clone();
        let gather =
            node("Gather", "$shuffle", &[self.input, "$order"], &[&out], vec![attr_int("axis", self.axis as i64)]);
        let node_id = cx.node.0;
        cx.push(Edit::Replace {
            node: node_id,
            nodes: vec![gather],
            initializers: vec![int64_tensor("$order", &indices)],
        });
        self.inner.iter().for_each(|&n| cx.push(Edit::Remove { node: n.0 }));
        Ok(())
    }
}
