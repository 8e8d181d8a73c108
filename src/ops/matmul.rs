//! MatMul with a constant 2-D right operand: `Y[.., j] = sum_c X[.., c] W[c, j]`.
//!
//! Exporters emit it for `nn.Linear` on inputs of rank other than 2, followed by an `Add` of the
//! bias, which the pointwise rules handle as a per-channel constant.

use super::linear::LinearOp;
use super::{Ctx, Linear, OpRule, Role, Weight};
use crate::analysis::reasons::Opaque;
use crate::onnx::proto::{NodeProto, TensorProto};
use crate::onnx::tensor::{encode, with_data, Values};
use crate::rewrite::Edit;

pub struct MatMul;

struct MatMulNode<'g> {
    weight: Weight<'g>,
}

impl OpRule for MatMul {
    fn op_types(&self) -> &'static [&'static str] {
        &["MatMul"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        let (Some(a), Some(b)) = (node.input.first(), node.input.get(1)) else {
            return Role::Opaque(Opaque::Malformed("it lacks an operand"));
        };
        if cx.ir.is_const(a) {
            return Role::Opaque(Opaque::Unsupported(
                "its left operand is a constant (W @ x is not supported yet)".into(),
            ));
        }
        let Some(tensor) = cx.const_tensor(b) else {
            return Role::Opaque(Opaque::NotConstant("its right operand is not a constant weight"));
        };
        match Values::of(tensor) {
            Ok(values) if values.dims.len() == 2 => {
                let (k, n) = (values.dims[0] as usize, values.dims[1] as usize);
                Role::Op(Box::new(LinearOp(Box::new(MatMulNode {
                    weight: Weight { values, tensor, k, n, transposed: false, spatial: 1 },
                }))))
            }
            Ok(_) => Role::Opaque(Opaque::Shape("its weight is not a 2-D matrix")),
            Err(e) => Role::Opaque(Opaque::Tensor(e.to_string())),
        }
    }
}

impl Linear for MatMulNode<'_> {
    fn input_slot(&self) -> usize {
        0
    }

    fn axes(&self) -> (isize, isize) {
        (-1, -1)
    }

    fn ranks(&self) -> (Option<usize>, Option<usize>) {
        (None, None)
    }

    fn weight(&self) -> &Weight<'_> {
        &self.weight
    }

    fn alpha(&self) -> f64 {
        1.0
    }

    fn holds_bias(&self) -> bool {
        false
    }

    fn bias(&self, _: usize) -> Option<f64> {
        Some(0.0)
    }

    fn rewrite_bias(&self, node: usize, keep_out: &[usize], fold: &[f64], edits: &mut Vec<Edit>) {
        let w = &self.weight;
        if fold.iter().any(|&f| f != 0.0) {
            let dtype = w.values.dtype;
            let tensor = with_data(&TensorProto::default(), vec![keep_out.len() as i64], dtype, encode(dtype, fold));
            edits.push(Edit::AddBias { node, tensor });
        }
    }
}
