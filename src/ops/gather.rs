//! Gathers with channel semantics:
//! - of a graph input's features by constant indices: how `--gather-inputs` reads an input, so
//!   that a model minimized with it can be minimized again (the indices shrink);
//! - of rows of a constant table by computed indices (token, position and type embeddings): the
//!   table's columns are the output's channels, a column constant over the rows is a constant
//!   channel, and removed channels are removed columns.

use super::per_channel::{AxisMap, PerChannel};
use super::{Activations, ChannelOp, Ctx, OpRule, Role};
use crate::analysis::plan::heads_kept;
use crate::analysis::reasons::{Opaque, Why};
use crate::analysis::{CheckCx, ConstCx, Layout, LayoutCx, NeedCx, PlanCx, TieCx, ValueId};
use crate::error::Result;
use crate::ir::{normalize, NodeExt};
use crate::onnx::proto::{tensor_proto::DataType, NodeProto, TensorProto};
use crate::onnx::tensor::{int64_vector_like, int64s, with_int64s, Values};
use crate::rewrite::Edit;

pub(crate) struct Select;
pub(crate) struct GatherNd;

impl OpRule for Select {
    fn op_types(&self) -> &'static [&'static str] {
        &["Gather"]
    }

    /// Gathers of anything but a graph input's last axis may index shapes or tokens: opaque.
    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        let data = node.input.first().map(String::as_str).unwrap_or_default();
        let last = match node.attr_i("axis", 0) {
            -1 => true,
            a => cx.ir.rank(data).is_some_and(|r| a == r as i64 - 1),
        };
        if let Some(table) = cx.const_tensor(data).filter(|_| node.attr_i("axis", 0) == 0) {
            return match Values::of(table) {
                Ok(values) if values.dims.len() == 2 => Role::Op(Box::new(Embedding { values, table })),
                _ => Role::Opaque(Opaque::Shape("its table is not a 2-D float matrix")),
            };
        }
        let indices = node.input.get(1).and_then(|i| cx.const_tensor(i));
        match indices {
            Some(t)
                if t.dims.len() == 1
                    && t.data_type() == DataType::Int64 as i32
                    && last
                    && cx.ir.inputs.iter().any(|i| i == data) =>
            {
                Role::Op(Box::new(Selected { indices: int64s(t) }))
            }
            // Channels of an activation picked along its last axis (`x[..., idx]`): a channel map.
            Some(t)
                if !cx.ir.is_const(data) && last && t.dims.len() == 1 && t.data_type() == DataType::Int64 as i32 =>
            {
                Role::Op(Box::new(Chosen { indices: int64s(t), other: None }))
            }
            // One index along an axis that may be the heads axis (a packed projection's `[3, E]`
            // parts, `nn.MultiheadAttention`'s `q, k, v = proj.unflatten(-1, (3, E))...`).
            Some(t)
                if !cx.ir.is_const(data) && !last && t.dims.is_empty() && t.data_type() == DataType::Int64 as i32 =>
            {
                let (axis, index) = (node.attr_i("axis", 0), int64s(t)[0]);
                let taken = PerChannel::identity(Box::new(Taken { axis, index_rank: 0 }));
                Role::Op(Box::new(TakenOne { axis, index, taken }))
            }
            // A vector of indices along another axis: channels picked where the axis is theirs
            // (`x[:, idx]` on a channels-first map), positions or tokens otherwise.
            Some(t) if !cx.ir.is_const(data) && t.dims.len() == 1 && t.data_type() == DataType::Int64 as i32 => {
                let axis = node.attr_i("axis", 0);
                let positions = PerChannel::identity(Box::new(Taken { axis, index_rank: 1 }));
                Role::Op(Box::new(Chosen { indices: int64s(t), other: Some((axis, positions)) }))
            }
            // Positions or tokens of an activation picked by constant indices (a ViT's class
            // token, `x[:, 0]`): the channels pass through, unless the axis is theirs.
            Some(t) if !cx.ir.is_const(data) && !last => {
                let axes = Box::new(Taken { axis: node.attr_i("axis", 0), index_rank: t.dims.len() });
                Role::Op(Box::new(PerChannel::identity(axes)))
            }
            _ => Role::Opaque(Opaque::Unsupported(
                "it is not a Gather of a graph input's features by constant indices".into(),
            )),
        }
    }
}

/// Output channel `k` is input channel `indices[k]` along the last axis: the output is a
/// channel space of its own, the input is read whole (the default need); the plan removes the
/// indices of removed output channels.
struct Selected {
    indices: Vec<i64>,
}

impl<'g> ChannelOp<'g> for Selected {
    fn activations(&self) -> Activations {
        Activations::new(vec![0], "it gathers from a constant")
    }

    fn layout(&self, cx: &mut LayoutCx<'_, 'g>) {
        let Some(o) = cx.output(0) else { return };
        cx.set_axis(o, -1);
        cx.set_width(o, self.indices.len());
    }

    fn selected(&self) -> Option<&[i64]> {
        Some(&self.indices)
    }
}

/// Output channel `k` is channel `indices[k]` of the activation: tied, so a pick leaves with its
/// channel and a channel nothing picks is not read. A channel picked twice is one class with
/// both picks, so an unread pick of a read channel stays (the picks could not otherwise be kept
/// for a graph output while their constant channel leaves). The plan renumbers the indices of
/// the kept picks among the kept channels.
///
/// Along the last axis the picks are channels by definition (that axis becomes the channel
/// axis). Along another axis they are channels only where the layout puts the channel axis
/// there (`x[:, idx]` on a channels-first map); elsewhere they pick positions or tokens, and
/// every pass asks the [`Taken`] rule instead.
struct Chosen {
    indices: Vec<i64>,
    /// Another axis than the last, as written, and the rule for positions picked along it.
    other: Option<(i64, PerChannel)>,
}

impl Chosen {
    /// The rule for positions picked, when the gather's axis is not `x`'s channel axis as laid
    /// out (or that is not known yet).
    fn positions(&self, lx: Layout) -> Option<&PerChannel> {
        let (axis, taken) = self.other.as_ref()?;
        let along = lx.rank.and_then(|r| normalize(*axis, r)).is_some_and(|a| lx.position() == Some(a));
        (!along).then_some(taken)
    }

    /// The input channel of each output channel, for an input of `width` channels; none when an
    /// index is out of range (a wrong model: both sides keep every channel).
    fn sources(&self, width: Option<usize>) -> Option<Vec<usize>> {
        let w = width? as i64;
        self.indices
            .iter()
            .map(|&i| usize::try_from(if i < 0 { i + w } else { i }).ok().filter(|&i| i < w as usize))
            .collect()
    }
}

impl<'g> ChannelOp<'g> for Chosen {
    fn activations(&self) -> Activations {
        Activations::new(vec![0], "it gathers from a constant")
    }

    fn layout(&self, cx: &mut LayoutCx<'_, 'g>) {
        let (x, Some(o)) = (cx.input(0), cx.output(0)) else { return };
        if let Some(taken) = self.positions(cx.get(x)) {
            return taken.layout(cx);
        }
        let axis = if self.other.is_some() { cx.get(x).axis.expect("laid out along the axis") } else { -1 };
        for v in [x, o] {
            cx.set_axis(v, axis);
            cx.set_block(v, 1);
        }
        cx.set_width(o, self.indices.len());
        cx.get(x).rank.inspect(|&r| cx.set_rank(o, r));
        cx.get(o).rank.inspect(|&r| cx.set_rank(x, r));
    }

    fn check(&self, cx: &mut CheckCx<'_, 'g>) {
        let (x, Some(o)) = (cx.input(0), cx.output(0)) else { return };
        if let Some(taken) = self.positions(cx.layout(x)) {
            return taken.check(cx);
        }
        if self.sources(cx.layout(x).width).is_none() {
            cx.force(x, Why::UnknownPartWidths);
            cx.force(o, Why::UnknownPartWidths);
        }
    }

    fn ties(&self, cx: &mut TieCx<'_, 'g>) {
        let (x, Some(o)) = (cx.input(0), cx.output(0)) else { return };
        if let Some(taken) = self.positions(cx.layout(x)) {
            return taken.ties(cx);
        }
        let Some(sources) = self.sources(cx.width(x)) else { return };
        sources.iter().enumerate().for_each(|(k, &c)| cx.tie(x, c, o, k, 1));
    }

    fn constants(&self, cx: &mut ConstCx<'_, 'g>) {
        let (x, Some(o)) = (cx.input(0), cx.output(0)) else { return };
        if let Some(taken) = self.positions(cx.layout(x)) {
            return taken.constants(cx);
        }
        let Some(sources) = self.sources(cx.layout(x).width) else { return };
        let xs = cx.consts(x).to_vec();
        let r = sources.iter().map(|&c| xs.get(c).copied().flatten()).collect();
        cx.set(o, r);
    }

    fn needs(&self, cx: &mut NeedCx<'_, 'g>) {
        let (x, Some(o)) = (cx.input(0), cx.output(0)) else { return };
        if let Some(taken) = self.positions(cx.layout(x)) {
            return taken.needs(cx);
        }
        let Some(sources) = self.sources(cx.layout(x).width) else { return cx.mark_all(x) };
        let (needed, out) = (cx.needed(o), cx.consts(o));
        if needed.len() != sources.len() || out.len() != sources.len() {
            return cx.mark_all(x);
        }
        let marks: Vec<usize> =
            (0..sources.len()).filter(|&k| needed[k] && out[k].is_none()).map(|k| sources[k]).collect();
        marks.into_iter().for_each(|c| cx.mark(x, c));
    }

    fn rewrite(&self, cx: &mut PlanCx<'_, 'g>) -> Result<()> {
        let (x, Some(o)) = (cx.input(0), cx.output(0)) else { return Ok(()) };
        if let Some(taken) = self.positions(cx.layout(x)) {
            return taken.rewrite(cx);
        }
        let (Some(w), Some(sources)) = (cx.layout(x).width, self.sources(cx.layout(x).width)) else { return Ok(()) };
        let (kept_x, keep) = (cx.kept(x, w), cx.kept(o, sources.len()));
        if kept_x.len() == w && keep.len() == sources.len() {
            return Ok(());
        }
        let at = |c: usize| kept_x.binary_search(&c).expect("a kept pick keeps its channel") as i64;
        let indices: Vec<i64> = keep.iter().map(|&k| at(sources[k])).collect();
        let like = cx.const_input(1).expect("constant indices");
        cx.push(Edit::Const { node: cx.node.0, slot: 1, tensor: int64_vector_like(like, &indices) });
        Ok(())
    }
}

/// `y[.., c] = table[ids[..], c]`: a writer of channels, like a linear layer's output.
struct Embedding<'g> {
    values: Values<'g>,
    table: &'g TensorProto,
}

impl Embedding<'_> {
    fn rows_cols(&self) -> (usize, usize) {
        (self.values.dims[0] as usize, self.values.dims[1] as usize)
    }
}

impl<'g> ChannelOp<'g> for Embedding<'g> {
    fn activations(&self) -> Activations {
        Activations::new(vec![1], "its indices are constants")
    }

    fn layout(&self, cx: &mut LayoutCx<'_, 'g>) {
        let Some(o) = cx.output(0) else { return };
        cx.set_axis(o, -1);
        cx.set_width(o, self.rows_cols().1);
        if let Some(r) = cx.get(cx.input(1)).rank {
            cx.set_rank(o, r + 1);
        }
    }

    fn constants(&self, cx: &mut ConstCx<'_, 'g>) {
        let Some(o) = cx.output(0) else { return };
        let (rows, cols) = self.rows_cols();
        // Column c is constant when every row holds its first row's value.
        let r = (0..cols)
            .map(|c| {
                let first = self.values.get(c);
                (rows > 0 && (1..rows).all(|row| self.values.get(row * cols + c) == first)).then_some(first)
            })
            .collect();
        self.values.release();
        cx.set(o, r);
    }

    fn rewrite(&self, cx: &mut PlanCx<'_, 'g>) -> Result<()> {
        let Some(o) = cx.output(0) else { return Ok(()) };
        let (rows, cols) = self.rows_cols();
        let keep = cx.kept(o, cols);
        if keep.len() < cols {
            let data = self.values.slice_rows(&(0..rows).collect::<Vec<_>>(), cols, &keep);
            let dims = vec![rows as i64, keep.len() as i64];
            cx.push(Edit::sliced(cx.node.0, 0, self.table, dims, self.values.dtype, data));
        }
        Ok(())
    }
}

impl OpRule for GatherNd {
    fn op_types(&self) -> &'static [&'static str] {
        &["GatherND"]
    }

    /// Positions picked by constant indices over the leading axes (the dynamo exporter's
    /// adaptive pooling): the trailing axes, the channels among them, pass through.
    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        let indices = node.input.get(1).and_then(|i| cx.const_tensor(i));
        match indices {
            Some(t) if t.data_type() == DataType::Int64 as i32 && node.attr_i("batch_dims", 0) == 0 => {
                let (Some(&k), rank) = (t.dims.last(), t.dims.len()) else {
                    return Role::Opaque(Opaque::Shape("its indices are a scalar"));
                };
                let axes = Box::new(Picked { indexed: k.max(0) as usize, index_rank: rank });
                Role::Op(Box::new(PerChannel::identity(axes)))
            }
            _ => Role::Opaque(Opaque::NotConstant("its indices are not constants, or it has batch dimensions")),
        }
    }
}

/// `Gather` along `axis`, other than the channels', by constant indices of rank `index_rank`:
/// that axis is replaced by the indices' axes, and the channel axis keeps its place from the end
/// (the gathered axis before it) or from the start (after it).
struct Taken {
    axis: i64,
    index_rank: usize,
}

impl AxisMap for Taken {
    fn layout(&self, cx: &mut LayoutCx, acts: &[ValueId], o: ValueId, _: &[usize]) {
        let x = acts[0];
        let lx = cx.get(x);
        let (Some(r), Some(p), Some(a)) = (lx.rank, lx.position(), lx.axis) else { return };
        let gathered = if self.axis < 0 { self.axis + r as i64 } else { self.axis };
        let out_rank = r - 1 + self.index_rank;
        let axis = match usize::try_from(gathered) {
            Ok(g) if g < p => a,
            Ok(g) if g > p && g < r => p as isize - out_rank as isize,
            _ => return cx.force_both(x, o, Why::ReshapesChannelAxis),
        };
        cx.set_axis(o, axis);
        cx.set_rank(o, out_rank);
        cx.same_width(x, o);
        cx.carry_block(x, o);
    }
}

/// `Gather` of one index: along the heads axis, the output is that head's channels (a part of a
/// packed projection); along any other axis, a [`Taken`].
struct TakenOne {
    axis: i64,
    index: i64,
    taken: PerChannel,
}

impl TakenOne {
    /// The head taken and the channels per head, when the axis is `l`'s heads axis.
    fn head(&self, l: Layout) -> Option<(usize, usize)> {
        let (h, r) = (l.heads?, l.rank?);
        let axis = normalize(self.axis, r)?;
        let taken = axis as isize == r as isize + h.axis && !h.merged && l.position()? > axis;
        normalize(self.index, h.count).filter(|_| taken).zip(l.per_head())
    }
}

impl<'g> ChannelOp<'g> for TakenOne {
    fn activations(&self) -> Activations {
        self.taken.activations()
    }

    fn follows_heads(&self) -> bool {
        true
    }

    fn layout(&self, cx: &mut LayoutCx<'_, 'g>) {
        let (x, Some(o)) = (cx.input(0), cx.output(0)) else { return };
        let lx = cx.get(x);
        match (self.head(lx), lx.heads) {
            (Some((_, per)), _) => {
                cx.set_axis(o, lx.axis.expect("a position"));
                cx.set_rank(o, lx.rank.expect("a rank") - 1);
                cx.set_width(o, per);
                cx.set_block(o, 1);
            }
            (None, Some(_)) => cx.force_both(x, o, Why::SplitsHeads),
            (None, None) => self.taken.layout(cx),
        }
    }

    fn check(&self, cx: &mut CheckCx<'_, 'g>) {
        self.taken.check(cx)
    }

    fn ties(&self, cx: &mut TieCx<'_, 'g>) {
        let (x, Some(o)) = (cx.input(0), cx.output(0)) else { return };
        match self.head(cx.layout(x)) {
            Some((h, per)) => cx.tie(o, 0, x, h * per, per),
            None => self.taken.ties(cx),
        }
    }

    fn constants(&self, cx: &mut ConstCx<'_, 'g>) {
        let (x, Some(o)) = (cx.input(0), cx.output(0)) else { return };
        match self.head(cx.layout(x)) {
            Some((h, per)) => {
                let part = cx.consts(x).get(h * per..(h + 1) * per).map(<[_]>::to_vec);
                cx.set(o, part.unwrap_or_else(|| vec![None; per]));
            }
            None => self.taken.constants(cx),
        }
    }

    fn needs(&self, cx: &mut NeedCx<'_, 'g>) {
        let (x, Some(o)) = (cx.input(0), cx.output(0)) else { return cx.need_all_inputs() };
        match self.head(cx.layout(x)) {
            Some((h, per)) => {
                let needed: Vec<usize> = (0..per).filter(|&c| cx.needed(o)[c]).collect();
                needed.into_iter().for_each(|c| cx.mark(x, h * per + c));
            }
            None => self.taken.needs(cx),
        }
    }

    fn rewrite(&self, cx: &mut PlanCx<'_, 'g>) -> Result<()> {
        let x = cx.input(0);
        let l = cx.layout(x);
        let Some((h, _)) = self.head(l) else { return self.taken.rewrite(cx) };
        // The kept heads before this one move it down.
        let (rows, _) = heads_kept(l, &cx.kept(x, l.width.expect("heads have a width")));
        let at = rows.iter().position(|&r| r == h).expect("a head taken keeps a channel") as i64;
        if at != self.index {
            let like = cx.const_of(cx.node, 1).expect("a constant index");
            cx.push(Edit::Const { node: cx.node.0, slot: 1, tensor: with_int64s(like, &[at]) });
        }
        Ok(())
    }
}

/// `GatherND` indexing the first `indexed` axes: the output is `indices.shape[:-1]` followed by
/// the data's remaining axes, so a channel axis among those keeps its place from the end.
struct Picked {
    indexed: usize,
    index_rank: usize,
}

impl AxisMap for Picked {
    fn layout(&self, cx: &mut LayoutCx, acts: &[ValueId], o: ValueId, _: &[usize]) {
        let x = acts[0];
        let lx = cx.get(x);
        let (Some(r), Some(p), Some(a)) = (lx.rank, lx.position(), lx.axis) else { return };
        if p < self.indexed || r < self.indexed {
            cx.force_both(x, o, Why::ReshapesChannelAxis);
            return;
        }
        cx.set_axis(o, a);
        cx.set_rank(o, self.index_rank - 1 + r - self.indexed);
        cx.same_width(x, o);
        cx.carry_block(x, o);
    }
}
