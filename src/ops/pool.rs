//! Poolings and reductions over axes other than the channels: channel `c` of the output is a
//! summary of channel `c` of the input over positions.

use super::per_channel::{AxisMap, PerChannel, Same};
use super::{may_pad, Activations, ChannelOp, Ctx, OpRule, Role};
use crate::analysis::reasons::{Opaque, Why};
use crate::analysis::{CheckCx, ConstCx, Layout, LayoutCx, NeedCx, PlanCx, TieCx, ValueId};
use crate::error::Result;
use crate::ir::{normalize, NodeExt};
use crate::onnx::proto::{NodeProto, TensorProto};
use crate::onnx::tensor::{encode, with_data, FloatType};
use crate::rewrite::Edit;

pub(crate) struct Pool;
pub(crate) struct Reduce;
pub(crate) struct Softmax;

impl OpRule for Pool {
    fn op_types(&self) -> &'static [&'static str] {
        &["MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"]
    }

    fn role<'g>(&self, node: &'g NodeProto, _: &Ctx<'g>) -> Role<'g> {
        if node.output.iter().skip(1).any(|o| !o.is_empty()) {
            return Role::Opaque(Opaque::AuxiliaryOutput("its indices output is used"));
        }
        match node.op_type() {
            // Lp norms of a constant depend on the window size: constant in, unknown out.
            "LpPool" | "GlobalLpPool" => Role::Op(Box::new(zero_only())),
            // Padding counted in the average turns a constant into a border effect (unless 0).
            "AveragePool" if node.attr_i("count_include_pad", 0) != 0 && may_pad(node) => {
                Role::Op(Box::new(zero_only()))
            }
            // Max ignores padding; averages of a constant are the constant.
            _ => Role::Op(Box::new(PerChannel::identity(Box::new(Same)))),
        }
    }
}

impl OpRule for Reduce {
    fn op_types(&self) -> &'static [&'static str] {
        &[
            "ReduceMean",
            "ReduceMax",
            "ReduceMin",
            "ReduceSum",
            "ReduceSumSquare",
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSumExp",
            "ReduceProd",
        ]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        // Axes are an attribute before opset 18 and an input after.
        let axes = match node.input.get(1).filter(|s| !s.is_empty()) {
            Some(a) => match cx.const_tensor(a) {
                Some(t) => crate::onnx::tensor::int64s(t),
                None => return Role::Opaque(Opaque::NotConstant("its axes are computed")),
            },
            None => node.attr_ints("axes").unwrap_or_default(),
        };
        if axes.is_empty() {
            return Role::Opaque(Opaque::Unsupported("it reduces over every axis, the channels too".into()));
        }
        let reduced = Box::new(Reduced { axes: axes.clone(), keepdims: node.attr_i("keepdims", 1) != 0 });
        let op = node.op_type();
        let per_channel = match op {
            // Summaries of a constant that are the constant.
            "ReduceMean" | "ReduceMax" | "ReduceMin" => PerChannel::identity(reduced),
            // Sums, norms and products of a constant depend on how many entries they reduce.
            _ => PerChannel { axes: reduced, ..zero_only() },
        };
        let across = match op {
            "ReduceSum" | "ReduceSumSquare" | "ReduceL1" | "ReduceL2" => Across::Sum,
            // The mean's new divisor is a constant of the activation's type.
            "ReduceMean" => match node.input.first().and_then(|x| cx.ir.float_type(cx.graph, x)) {
                Some(dtype) => Across::Mean(dtype),
                None => Across::No,
            },
            _ => Across::No,
        };
        Role::Op(Box::new(Reduction { per_channel, axes, across }))
    }
}

/// What a reduction over the channel axis lets go of.
enum Across {
    /// Sums of (squares, magnitudes of) the channels: a zero channel adds nothing.
    Sum,
    /// A mean: a zero channel adds nothing to the sum, whose divisor stays the original width
    /// (a `Mul` by kept / original after the mean of the kept channels): ConvNeXt V2's global
    /// response normalization divides by a mean over the channels.
    Mean(FloatType),
    /// The others (max, min, product, log-sum-exp) see every channel.
    No,
}

/// A reduction: over other axes than the channels it is per channel; over the channels, its
/// output has none, and what it reads is decided by [`Across`].
struct Reduction {
    per_channel: PerChannel,
    axes: Vec<i64>,
    across: Across,
}

impl Reduction {
    /// Whether the reduced axes include `x`'s channel axis (`None` until it is placed).
    fn over_channels(&self, x: Layout) -> Option<bool> {
        let (r, p) = (x.rank?, x.position()?);
        Some(self.axes.iter().any(|&a| normalize(a, r) == Some(p)))
    }

    /// A reduction over the channels that lets some go: the input's channels are on one axis.
    fn across(&self, x: Layout) -> bool {
        !matches!(self.across, Across::No)
            && self.over_channels(x) == Some(true)
            && x.heads.is_none()
            && x.groups.is_none_or(|g| g == 1)
    }
}

impl<'g> ChannelOp<'g> for Reduction {
    fn activations(&self) -> Activations {
        self.per_channel.activations()
    }

    fn follows_heads(&self) -> bool {
        self.per_channel.follows_heads()
    }

    /// Over the channels the output has none; otherwise [`ChannelOp::needs`] says what an
    /// output not laid out costs.
    fn output_channels(&self) -> bool {
        false
    }

    fn layout(&self, cx: &mut LayoutCx<'_, 'g>) {
        let (x, o) = (cx.input(0), cx.output(0));
        if !self.across(cx.get(x)) {
            return self.per_channel.layout(cx);
        }
        // Something laid out the output as if it had channels: it keeps them all.
        if let Some(o) = o.filter(|&o| cx.get(o).width.is_some()) {
            cx.force(o, Why::ReducesChannelAxis);
        }
    }

    fn check(&self, cx: &mut CheckCx<'_, 'g>) {
        if !self.across(cx.layout(cx.input(0))) {
            self.per_channel.check(cx)
        }
    }

    fn ties(&self, cx: &mut TieCx<'_, 'g>) {
        if !self.across(cx.layout(cx.input(0))) {
            self.per_channel.ties(cx)
        }
    }

    fn constants(&self, cx: &mut ConstCx<'_, 'g>) {
        if !self.across(cx.layout(cx.input(0))) {
            self.per_channel.constants(cx)
        }
    }

    fn needs(&self, cx: &mut NeedCx<'_, 'g>) {
        let x = cx.input(0);
        if self.across(cx.layout(x)) {
            let consts = cx.consts(x);
            (0..consts.len()).filter(|&c| consts[c] != Some(0.0)).for_each(|c| cx.mark(x, c));
            return;
        }
        if cx.graph.outputs(cx.node).any(|o| cx.layout(o).width.is_none()) {
            cx.need_all_inputs();
        }
        self.per_channel.needs(cx)
    }

    fn rewrite(&self, cx: &mut PlanCx<'_, 'g>) -> Result<()> {
        let x = cx.input(0);
        if !self.across(cx.layout(x)) {
            return self.per_channel.rewrite(cx);
        }
        let (Across::Mean(dtype), Some(w)) = (&self.across, cx.layout(x).width) else { return Ok(()) };
        let kept = cx.kept(x, w).len();
        if kept < w {
            let node = cx.node_proto();
            let mut mean = node.clone();
            mean.output = vec!["$mean".into()];
            mean.name = Some("$mean_node".into());
            let mut scale =
                with_data(&TensorProto::default(), vec![], *dtype, encode(*dtype, &[kept as f64 / w as f64]));
            scale.name = Some("$scale".into());
            let mul = NodeProto {
                name: Some("$scaled_node".into()),
                op_type: Some("Mul".into()),
                input: vec!["$mean".into(), "$scale".into()],
                output: vec![node.output[0].clone()],
                ..Default::default()
            };
            let node = cx.node.0;
            cx.push(Edit::Replace { node, nodes: vec![mean, mul], initializers: vec![scale] });
        }
        Ok(())
    }
}

impl OpRule for Softmax {
    fn op_types(&self) -> &'static [&'static str] {
        &["Softmax", "LogSoftmax"]
    }

    /// A normalization along other axes than the channels (attention scores, whose rows have no
    /// channels at all) keeps each channel to itself; along the channels it mixes them. Before
    /// opset 13 it normalizes every axis from `axis` on together.
    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        let modern = cx.ir.opset >= 13;
        let axis = node.attr_i("axis", if modern { -1 } else { 1 });
        let axes = match (modern, node.input.first().and_then(|x| cx.ir.rank(x))) {
            (true, _) => vec![axis],
            (false, Some(r)) => {
                let from = if axis < 0 { axis + r as i64 } else { axis };
                (from.max(0)..r as i64).collect()
            }
            (false, None) => return Role::Opaque(Opaque::Unsupported("its rank is not known (opset < 13)".into())),
        };
        let axes = Box::new(Reduced { axes, keepdims: true });
        // Its value depends on the length of the axis: a constant channel is not followed.
        Role::Op(Box::new(PerChannel { axes, ..PerChannel::new(vec![0], vec![], Box::new(|_| None)) }))
    }
}

/// Constant only where the input is zero: an Lp norm depends on the window size, and an
/// average that counts padding turns a constant into a border effect.
pub(super) fn zero_only() -> PerChannel {
    PerChannel::new(vec![0], vec![], Box::new(|x| (x[0] == 0.0).then_some(0.0)))
}

/// A reduction over `axes`, which must not include the channel axis.
struct Reduced {
    axes: Vec<i64>,
    keepdims: bool,
}

impl AxisMap for Reduced {
    fn layout(&self, cx: &mut LayoutCx, acts: &[ValueId], o: ValueId, _: &[usize]) {
        let x = cx.get(acts[0]);
        let (Some(r), Some(p)) = (x.rank, x.position()) else { return };
        let axes: Vec<usize> =
            self.axes.iter().map(|&a| if a < 0 { (a + r as i64) as usize } else { a as usize }).collect();
        if axes.contains(&p) {
            cx.force(acts[0], Why::ReducesChannelAxis);
            return;
        }
        let a = x.axis.expect("positioned");
        let (out_axis, out_rank) =
            if self.keepdims { (a, r) } else { (a + axes.iter().filter(|&&q| q > p).count() as isize, r - axes.len()) };
        cx.set_axis(o, out_axis);
        cx.set_rank(o, out_rank);
        if let Some(w) = x.width {
            cx.set_width(o, w);
        }
    }
}
