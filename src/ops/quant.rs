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
use crate::onnx::proto::{tensor_proto::DataType, NodeProto};
use crate::onnx::tensor::{FloatType, Values};

pub(crate) struct QuantDequant;

/// The integer range of a quantized activation's type.
fn range(data_type: i32) -> Option<(f32, f32)> {
    Some(match DataType::try_from(data_type).ok()? {
        DataType::Int8 => (i8::MIN.into(), i8::MAX.into()),
        DataType::Uint8 => (0.0, u8::MAX.into()),
        DataType::Int16 => (i16::MIN.into(), i16::MAX.into()),
        DataType::Uint16 => (0.0, u16::MAX.into()),
        _ => return None,
    })
}

/// The scalar at input `slot`: a float32 scale, or an integer zero point and its type's range.
fn scalar(node: &NodeProto, cx: &Ctx, slot: usize) -> Option<(f64, i32)> {
    let t = cx.const_tensor(node.input.get(slot)?)?;
    if crate::onnx::tensor::numel(&t.dims)? != 1 {
        return None;
    }
    match Values::of(t) {
        Ok(v) if v.dtype == FloatType::F32 => Some((v.get(0), t.data_type())),
        Ok(_) => None,
        Err(_) => {
            let raw = t.raw_data.as_deref().filter(|r| !r.is_empty());
            let v = match DataType::try_from(t.data_type()).ok()? {
                DataType::Int8 => raw.map_or(t.int32_data.first().copied(), |r| Some(r[0] as i8 as i32))?,
                DataType::Uint8 => raw.map_or(t.int32_data.first().copied(), |r| Some(r[0] as i32))?,
                DataType::Int16 => {
                    raw.map_or(t.int32_data.first().copied(), |r| Some(i16::from_le_bytes([r[0], r[1]]) as i32))?
                }
                DataType::Uint16 => {
                    raw.map_or(t.int32_data.first().copied(), |r| Some(u16::from_le_bytes([r[0], r[1]]) as i32))?
                }
                _ => return None,
            };
            Some((v as f64, t.data_type()))
        }
    }
}

impl OpRule for QuantDequant {
    fn op_types(&self) -> &'static [&'static str] {
        &["QuantizeLinear", "DequantizeLinear"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        if node.attr_i("block_size", 0) != 0 {
            return Role::Opaque(Opaque::Unsupported("it quantizes in blocks".into()));
        }
        let Some((scale, _)) = scalar(node, cx, 1) else {
            return Role::Opaque(Opaque::Unsupported(
                "its scale is not one float32 constant (per-axis quantization of an activation)".into(),
            ));
        };
        let scale = scale as f32;
        let zero_point = match node.input.get(2).filter(|s| !s.is_empty()) {
            Some(_) => scalar(node, cx, 2),
            // No zero point: 0, of the type `output_dtype` names (uint8 by default).
            None if node.op_type() == "QuantizeLinear" => Some((0.0, node.attr_i("output_dtype", 0) as i32))
                .map(|(z, t)| (z, if t == 0 { DataType::Uint8 as i32 } else { t })),
            None => Some((0.0, DataType::Uint8 as i32)),
        };
        let Some((zero_point, (lo, hi))) = zero_point.and_then(|(z, t)| Some((z as f32, range(t)?))) else {
            return Role::Opaque(Opaque::Unsupported("its zero point is not one 8- or 16-bit integer constant".into()));
        };
        let eval: super::per_channel::Eval = if node.op_type() == "QuantizeLinear" {
            let reciprocal = 1.0 / scale;
            Box::new(move |x| {
                let x = x[0] as f32;
                let q = |y: f32| (y.round_ties_even() + zero_point).clamp(lo, hi);
                let (divided, multiplied) = (q(x / scale), q(x * reciprocal));
                (x.is_finite() && divided == multiplied).then_some(divided as f64)
            })
        } else {
            Box::new(move |x| Some(((x[0] as f32 - zero_point) * scale) as f64))
        };
        // The scale and zero point are scalars: the channel rule never slices them.
        Role::Op(Box::new(PerChannel::new(vec![0], vec![], eval)))
    }
}
