//! MatMul with a constant 2-D operand: `Y[.., j] = sum_c X[.., c] W[c, j]` (weight on the
//! right, channels on the last axis), or `Y[.., j, :] = sum_c W[j, c] X[.., c, :]` (weight on the
//! left, channels on the second-to-last axis).
//!
//! Exporters emit the first for `nn.Linear` on inputs of rank other than 2, followed by an `Add`
//! of the bias, which the per-channel rules handle as a constant operand; the second where a
//! weight multiplies a transposed activation.

use super::linear::LinearOp;
use super::{Ctx, Linear, OpRule, Role, Weight};
use crate::analysis::reasons::Opaque;
use crate::onnx::proto::{NodeProto, TensorProto};
use crate::onnx::tensor::{encode, with_data, Values};
use crate::rewrite::Edit;

pub(crate) struct MatMul;
pub(crate) struct Einsum;

struct MatMulNode<'g> {
    weight: Weight<'g>,
    /// `W @ x`: the weight is the left operand.
    left: bool,
    /// The activation's input slot.
    input: usize,
}

impl OpRule for MatMul {
    fn op_types(&self) -> &'static [&'static str] {
        &["MatMul"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        let (Some(a), Some(b)) = (node.input.first(), node.input.get(1)) else {
            return Role::Opaque(Opaque::Malformed("it lacks an operand"));
        };
        let (slot, name) = match (cx.ir.is_const(a), cx.ir.is_const(b)) {
            (false, true) => (1, b),
            (true, false) => (0, a),
            (true, true) => return Role::Opaque(Opaque::ComputesConstant),
            (false, false) => return super::attention::role(node, cx),
        };
        let tensor = cx.const_tensor(name).expect("a constant");
        match Values::of(tensor) {
            Ok(values) if values.dims.len() == 2 => {
                let (d0, d1) = (values.dims[0] as usize, values.dims[1] as usize);
                let left = slot == 0;
                // On the left the weight is stored [N, K]: output rows, input columns.
                let (k, n) = if left { (d1, d0) } else { (d0, d1) };
                let weight = Weight { values, tensor, slot, k, n, transposed: left, spatial: 1, groups: 1 };
                Role::Op(Box::new(LinearOp(Box::new(MatMulNode { weight, left, input: 1 - slot }))))
            }
            Ok(_) => Role::Opaque(Opaque::Shape("its weight is not a 2-D matrix")),
            Err(e) => Role::Opaque(Opaque::Tensor(e.to_string())),
        }
    }
}

impl OpRule for Einsum {
    fn op_types(&self) -> &'static [&'static str] {
        &["Einsum"]
    }

    /// An Einsum that is a matrix product with a constant 2-D weight over the activation's last
    /// axis (`...i,ij->...j`, `bti,ji->btj`, either operand first): a linear layer whose
    /// outputs are the last axis. The equation stays as written; only sizes change.
    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        let equation = crate::ir::NodeExt::attr_s(node, "equation", "").replace(' ', "");
        let parsed = (|| {
            let (lhs, out) = equation.split_once("->")?;
            let (a, b) = lhs.split_once(',')?;
            let [first, second] = &node.input[..] else { return None };
            let (x_sub, w_sub, weight, slot) = match (cx.ir.is_const(first), cx.ir.is_const(second)) {
                (false, true) => (a, b, second, 1),
                (true, false) => (b, a, first, 0),
                _ => return None,
            };
            let w: Vec<char> = w_sub.chars().collect();
            let contracted = x_sub.chars().last()?;
            let [w0, w1] = w[..] else { return None };
            let (transposed, produced) = match (w0 == contracted, w1 == contracted) {
                (true, false) => (false, w1),
                (false, true) => (true, w0),
                _ => return None,
            };
            let expected = format!("{}{produced}", &x_sub[..x_sub.len() - contracted.len_utf8()]);
            let once = x_sub.matches(contracted).count() == 1;
            let fits = out == expected && !x_sub.contains(produced) && contracted.is_alphabetic() && once;
            fits.then_some((weight, slot, transposed))
        })();
        let Some((name, slot, transposed)) = parsed else {
            return Role::Opaque(Opaque::Unsupported(
                "it is not a product with a constant matrix over the last axis".into(),
            ));
        };
        let tensor = cx.const_tensor(name).expect("a constant");
        match Values::of(tensor) {
            Ok(values) if values.dims.len() == 2 => {
                let (d0, d1) = (values.dims[0] as usize, values.dims[1] as usize);
                let (k, n) = if transposed { (d1, d0) } else { (d0, d1) };
                let weight = Weight { values, tensor, slot, k, n, transposed, spatial: 1, groups: 1 };
                let input = 1 - slot;
                Role::Op(Box::new(LinearOp(Box::new(MatMulNode { weight, left: false, input }))))
            }
            Ok(_) => Role::Opaque(Opaque::Shape("its weight is not a 2-D matrix")),
            Err(e) => Role::Opaque(Opaque::Tensor(e.to_string())),
        }
    }
}

impl Linear for MatMulNode<'_> {
    fn input_slot(&self) -> usize {
        self.input
    }

    fn axes(&self) -> (isize, isize) {
        if self.left {
            (-2, -2)
        } else {
            (-1, -1)
        }
    }

    fn ranks(&self) -> (Option<usize>, Option<usize>) {
        (None, None)
    }

    fn min_rank(&self) -> usize {
        // A 1-D right operand would put the channels on the last axis instead.
        if self.left {
            2
        } else {
            1
        }
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

    fn has_bias(&self) -> bool {
        false
    }

    fn rewrite_bias(&self, node: usize, keep_out: &[usize], fold: &[f64], edits: &mut Vec<Edit>) {
        let w = &self.weight;
        if fold.iter().any(|&f| f != 0.0) {
            let dtype = w.values.dtype;
            // Broadcast along the channel axis: [N], or [N, 1] when the channels are rows.
            let dims = if self.left { vec![keep_out.len() as i64, 1] } else { vec![keep_out.len() as i64] };
            let tensor = with_data(&TensorProto::default(), dims, dtype, encode(dtype, fold));
            edits.push(Edit::AddBias { node, tensor });
        }
    }
}
