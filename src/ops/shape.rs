//! Operators that move data without mixing channels: identities, and reshapes that keep the
//! channel axis last (merging or splitting the leading axes only).

use super::{Ctx, OpRule, Pointwise, Role};
use crate::ir::NodeExt;
use crate::onnx::proto::{tensor_proto::DataType, NodeProto};

pub struct PassThrough;
pub struct Reshape;
pub struct Flatten;

fn identity() -> Pointwise {
    Pointwise::new(vec![0], vec![], Box::new(|x| x[0]))
}

impl OpRule for PassThrough {
    fn op_types(&self) -> &'static [&'static str] {
        &["Identity", "Dropout", "Cast"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        match node.op_type() {
            // Dropout is the identity at inference; its mask output is another matter.
            "Dropout"
                if node
                    .output
                    .get(1)
                    .is_some_and(|m| !m.is_empty() && (!cx.ir.readers(m).is_empty() || cx.ir.outputs.contains(m))) =>
            {
                Role::Opaque("its mask output is used".into())
            }
            "Cast" => {
                let to = node.attr_i("to", 0) as i32;
                let round: fn(f64) -> f64 = match DataType::try_from(to) {
                    Ok(DataType::Float) => |x| x as f32 as f64,
                    Ok(DataType::Double) => |x| x,
                    Ok(DataType::Float16) => |x| half::f16::from_f64(x).to_f64(),
                    Ok(DataType::Bfloat16) => |x| half::bf16::from_f64(x).to_f64(),
                    _ => return Role::Opaque("it casts to a non-float type".into()),
                };
                Role::Pointwise(Pointwise::new(vec![0], vec![], Box::new(move |x| round(x[0]))))
            }
            _ => Role::Pointwise(identity()),
        }
    }
}

impl OpRule for Reshape {
    fn op_types(&self) -> &'static [&'static str] {
        &["Reshape"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        let Some(shape) = node.input.get(1).and_then(|s| cx.const_tensor(s)) else {
            return Role::Opaque("its target shape is computed, not constant".into());
        };
        if shape.data_type() != DataType::Int64 as i32 || shape.dims.len() != 1 {
            return Role::Opaque("its shape is not a 1-D int64 constant".into());
        }
        let mut p = identity();
        p.shape_slot = Some(1);
        p.requires_axis = Some(-1);
        Role::Pointwise(p)
    }
}

impl OpRule for Flatten {
    fn op_types(&self) -> &'static [&'static str] {
        &["Flatten"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        // Flatten to [prod(d[..axis]), prod(d[axis..])] keeps the last axis whole only when
        // axis is the last one.
        let Some(rank) = node.input.first().and_then(|i| cx.ir.rank(i)) else {
            return Role::Opaque("the rank of its input is not declared".into());
        };
        let axis = node.attr_i("axis", 1);
        let axis = if axis < 0 { axis + rank as i64 } else { axis };
        if axis != rank as i64 - 1 {
            return Role::Opaque(
                "it merges the channel axis with others (feature-map flattening is not supported yet)".into(),
            );
        }
        let mut p = identity();
        p.requires_axis = Some(-1);
        Role::Pointwise(p)
    }
}
