//! Resampling along axes other than the channels: Pad and Resize (Upsample). Channel `c` of the
//! output is channel `c` of the input, moved or interpolated over positions.

use super::per_channel::{AxisMap, PerChannel};
use super::pool::zero_only;
use super::{Ctx, OpRule, Role};
use crate::analysis::reasons::{Opaque, Why};
use crate::analysis::{CheckCx, LayoutCx, PlanCx, ValueId};
use crate::ir::NodeExt;
use crate::onnx::proto::{tensor_proto::DataType, NodeProto};
use crate::onnx::tensor::{int64s, with_int64s, Values};
use crate::rewrite::Edit;

pub(crate) struct Pad;
pub(crate) struct Resize;

/// The constant operand at `slot`: `Some(None)` when absent, `None` when it is computed.
fn operand<'g>(node: &NodeProto, cx: &Ctx<'g>, slot: usize) -> Option<Option<&'g crate::onnx::proto::TensorProto>> {
    match node.input.get(slot).filter(|s| !s.is_empty()) {
        None => Some(None),
        Some(s) => cx.const_tensor(s).map(Some),
    }
}

fn ints(t: &crate::onnx::proto::TensorProto) -> Option<Vec<i64>> {
    (t.data_type() == DataType::Int64 as i32 && t.dims.len() == 1).then(|| int64s(t))
}

impl OpRule for Pad {
    fn op_types(&self) -> &'static [&'static str] {
        &["Pad"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        // Pads, value and axes are inputs from opset 11 (axes from 18), attributes before. Pads
        // computed from constants and sizes (TorchScript's `F.pad`) are read as computed: they
        // are never rewritten, only checked to leave the channel axis alone.
        let computed = node.input.get(1).and_then(|s| cx.ir.computed_ints(s)).map(<[i64]>::to_vec);
        let parsed = (|| {
            let pads = match (computed, operand(node, cx, 1)) {
                (Some(p), _) => p,
                (None, Some(Some(t))) => ints(t)?,
                (None, Some(None)) => node.attr_ints("pads")?,
                (None, None) => return None,
            };
            let value = match operand(node, cx, 2)? {
                Some(t) => Values::of(t).ok().filter(|v| v.len() == 1)?.get(0),
                None => node.attr_f("value", 0.0) as f64,
            };
            let axes = match operand(node, cx, 3)? {
                Some(t) => Some(ints(t)?),
                None => None,
            };
            Some((pads, value, axes))
        })();
        let Some((pads, value, axes)) = parsed else {
            return Role::Opaque(Opaque::NotConstant("its pads, value or axes are not constants"));
        };
        if pads.len() % 2 != 0 || axes.as_ref().is_some_and(|a| a.len() * 2 != pads.len()) {
            return Role::Opaque(Opaque::Malformed("its pads do not match its axes"));
        }
        let padded = Box::new(Padded { pads, axes });
        Role::Op(Box::new(match node.attr_s("mode", "constant").as_str() {
            // Edges and reflections of a constant are the constant.
            "edge" | "reflect" | "wrap" => PerChannel::identity(padded),
            // The border holds `value`: a constant channel stays one only if it equals it.
            _ => PerChannel {
                axes: padded,
                ..PerChannel::new(vec![0], vec![], Box::new(move |x| (x[0] == value).then_some(x[0])))
            },
        }))
    }
}

/// The entry of a per-axis list (`axes` as written, or every axis) that is the channel axis.
fn channel_entry(axes: &Option<Vec<i64>>, rank: usize, position: usize) -> Option<usize> {
    match axes {
        Some(axes) => axes.iter().position(|&a| (if a < 0 { a + rank as i64 } else { a }) == position as i64),
        None => Some(position),
    }
}

/// The output keeps the input's channel axis, rank and width, when `keeps(entry)` says the
/// channel axis's own entry leaves it alone; otherwise both sides keep every channel.
fn along_other_axes(cx: &mut LayoutCx, x: ValueId, o: ValueId, keeps: impl Fn(usize, usize) -> bool, why: Why) {
    let lx = cx.get(x);
    let (Some(r), Some(p), Some(a)) = (lx.rank, lx.position(), lx.axis) else { return };
    if !keeps(p, r) {
        cx.force_both(x, o, why);
        return;
    }
    cx.set_axis(o, a);
    cx.set_rank(o, r);
    cx.same_width(x, o);
    cx.carry_block(x, o);
}

/// Pads per axis: `pads[i]` before and `pads[i + n]` after axis `axes[i]` (or axis `i`).
struct Padded {
    pads: Vec<i64>,
    axes: Option<Vec<i64>>,
}

impl AxisMap for Padded {
    fn layout(&self, cx: &mut LayoutCx, acts: &[ValueId], o: ValueId, _: &[usize]) {
        let n = self.pads.len() / 2;
        let keeps = |p: usize, r: usize| {
            channel_entry(&self.axes, r, p).is_none_or(|i| i >= n || (self.pads[i] == 0 && self.pads[i + n] == 0))
        };
        along_other_axes(cx, acts[0], o, keeps, Why::PadsChannelAxis);
    }
}

impl OpRule for Resize {
    fn op_types(&self) -> &'static [&'static str] {
        &["Resize", "Upsample"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        let floats = |t: &crate::onnx::proto::TensorProto| {
            Values::of(t).ok().map(|v| (0..v.len()).map(|i| v.get(i)).collect::<Vec<f64>>())
        };
        // Resize: X, roi, scales, sizes (scales empty when sizes are given). Upsample: X, scales
        // (an attribute before opset 9).
        let scales_slot = if node.op_type() == "Upsample" { 1 } else { 2 };
        let target = (|| {
            let scales = match operand(node, cx, scales_slot)? {
                Some(t) => floats(t)?,
                None => node
                    .attribute
                    .iter()
                    .find(|a| a.name() == "scales")
                    .map(|a| a.floats.iter().map(|&f| f as f64).collect())
                    .unwrap_or_default(),
            };
            if !scales.is_empty() {
                return Some(Target::Scales(scales));
            }
            Some(Target::Sizes(ints(operand(node, cx, 3)??)?))
        })();
        let Some(target) = target else {
            return Role::Opaque(Opaque::NotConstant("its scales or sizes are not constants"));
        };
        // Crop-and-resize reads a region (the channel axis's too) and fills the rest with a
        // constant; an aspect-ratio policy applies one scale to every axis in `axes`.
        if node.attr_s("coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize"
            || node.attr_s("keep_aspect_ratio_policy", "stretch") != "stretch"
        {
            return Role::Opaque(Opaque::Unsupported("it crops, or keeps an aspect ratio over its axes".into()));
        }
        let axes = node.attr_ints("axes");
        let sizes_slot = 3;
        let resized = Box::new(Resized { target, axes, sizes_slot });
        Role::Op(Box::new(match node.attr_s("mode", "nearest").as_str() {
            // Nearest samples and linear weights that sum to one give a constant back.
            "nearest" | "linear" | "bilinear" => PerChannel::identity(resized),
            _ => PerChannel { axes: resized, ..zero_only() },
        }))
    }
}

enum Target {
    Scales(Vec<f64>),
    Sizes(Vec<i64>),
}

/// Resampled along `axes` (or every axis) to `target`, which must leave the channel axis as is.
struct Resized {
    target: Target,
    axes: Option<Vec<i64>>,
    /// Where `sizes` is read, when the target is sizes.
    sizes_slot: usize,
}

impl AxisMap for Resized {
    fn layout(&self, cx: &mut LayoutCx, acts: &[ValueId], o: ValueId, _: &[usize]) {
        // Sizes are checked against the width once it is known.
        let keeps = |p: usize, r: usize| match (channel_entry(&self.axes, r, p), &self.target) {
            (Some(i), Target::Scales(s)) => s.get(i).is_none_or(|&s| s == 1.0),
            _ => true,
        };
        along_other_axes(cx, acts[0], o, keeps, Why::ResizesChannelAxis);
    }

    fn check(&self, cx: &CheckCx, o: ValueId) -> Result<(), Why> {
        let l = cx.layout(o);
        let (Target::Sizes(sizes), Some(r), Some(p), Some(w)) = (&self.target, l.rank, l.position(), l.width) else {
            return Ok(());
        };
        match channel_entry(&self.axes, r, p).and_then(|i| sizes.get(i)) {
            Some(&s) if s != (w * l.block.unwrap_or(1)) as i64 => Err(Why::ResizesChannelAxis),
            _ => Ok(()),
        }
    }

    /// Sizes name the channel axis's length: it becomes the kept width.
    fn rewrite(&self, cx: &mut PlanCx, o: ValueId, keep: &[usize]) {
        let l = cx.layout(o);
        let (Target::Sizes(sizes), Some(r), Some(p)) = (&self.target, l.rank, l.position()) else { return };
        let Some(i) = channel_entry(&self.axes, r, p).filter(|&i| i < sizes.len()) else { return };
        let mut new = sizes.clone();
        new[i] = (keep.len() * l.block.unwrap_or(1)) as i64;
        let t = cx.const_input(self.sizes_slot).expect("constant sizes");
        let node = cx.node.0;
        cx.push(Edit::Const { node, slot: self.sizes_slot, tensor: with_int64s(t, &new) });
    }
}
