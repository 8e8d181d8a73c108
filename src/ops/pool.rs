//! Poolings and reductions over axes other than the channels: channel `c` of the output is a
//! summary of channel `c` of the input over positions.

use super::per_channel::{AxisMap, PerChannel, Same};
use super::{may_pad, Ctx, OpRule, Role};
use crate::analysis::reasons::{Opaque, Why};
use crate::analysis::{LayoutCx, ValueId};
use crate::ir::NodeExt;
use crate::onnx::proto::NodeProto;

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
        let axes = Box::new(Reduced { axes, keepdims: node.attr_i("keepdims", 1) != 0 });
        Role::Op(Box::new(match node.op_type() {
            // Summaries of a constant that are the constant.
            "ReduceMean" | "ReduceMax" | "ReduceMin" => PerChannel::identity(axes),
            // Sums, norms and products of a constant depend on how many entries they reduce.
            _ => PerChannel { axes, ..zero_only() },
        }))
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
