//! `QuantizeLinear` and `DequantizeLinear` of activations (ONNX Runtime's QDQ format), with one
//! scale and zero point for the whole tensor: elementwise, so channel `c` of the output reads
//! channel `c` alone, and a constant channel stays constant.
//!
//! The constant must be the runtime's, bit for bit: `saturate(round_half_even(x / s) + zp)` and
//! `(q - zp) * s` in float32. Runtimes quantize either by dividing by the scale (ONNX Runtime)
//! or by multiplying by its reciprocal (tract); where the two round to different integers the
//! channel is not treated as constant (it stays, since the value depends on the runtime).
//! Stored weights' `DequantizeLinear` never reaches these rules: `onnx/quant.rs` turns them into
//! float weights for the analysis. Per-axis quantization of an activation stays opaque.

use super::per_channel::PerChannel;
use super::{Ctx, OpRule, Role};
use crate::analysis::reasons::Opaque;
use crate::ir::NodeExt;
use crate::onnx::proto::NodeProto;
use crate::onnx::quant::{dequantized, quantize, scalar_zero_point, Int};
use crate::onnx::tensor::{FloatType, Values};

pub(crate) struct QuantDequant;

/// The float32 scale at input 1, where it is one constant.
fn scalar_scale(node: &NodeProto, cx: &Ctx) -> Option<f32> {
    let t = cx.const_tensor(node.input.get(1)?)?;
    let v = Values::of(t).ok().filter(|v| v.dtype == FloatType::F32 && v.len() == 1)?;
    Some(v.get(0) as f32)
}

impl OpRule for QuantDequant {
    fn op_types(&self) -> &'static [&'static str] {
        &["QuantizeLinear", "DequantizeLinear"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        if node.attr_i("block_size", 0) != 0 {
            return Role::Opaque(Opaque::Unsupported("it quantizes in blocks".into()));
        }
        let Some(scale) = scalar_scale(node, cx) else {
            return Role::Opaque(Opaque::Unsupported(
                "its scale is not one float32 constant (per-axis quantization of an activation)".into(),
            ));
        };
        let Some((ty, zero_point)) =
            scalar_zero_point(node, |name| cx.const_tensor(name)).filter(|(ty, _)| *ty != Int::I32)
        else {
            return Role::Opaque(Opaque::Unsupported("its zero point is not one 8- or 16-bit integer constant".into()));
        };
        let eval: super::per_channel::Eval = if node.op_type() == "QuantizeLinear" {
            Box::new(move |x| quantize(x[0] as f32, scale, zero_point, ty).map(|q| q as f64))
        } else {
            Box::new(move |x| Some(dequantized(x[0] as i64, zero_point, scale) as f64))
        };
        // The scale and zero point are scalars: the channel rule never slices them.
        Role::Op(Box::new(PerChannel::new(vec![0], vec![], eval)))
    }
}
