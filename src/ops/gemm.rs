//! Gemm: `Y = alpha * A' B' + beta * C`, with `A' = transA ? A^T : A` and likewise for B.

use super::linear::LinearOp;
use super::{Ctx, Linear, OpRule, Role, Weight};
use crate::analysis::reasons::Opaque;
use crate::ir::NodeExt;
use crate::onnx::build::attr_float;
use crate::onnx::proto::{NodeProto, TensorProto};
use crate::onnx::tensor::{encode, with_data, Values};
use crate::rewrite::Edit;

pub struct Gemm;

struct GemmNode<'g> {
    node: &'g NodeProto,
    weight: Weight<'g>,
    trans_a: bool,
    alpha: f64,
    beta: f64,
    c: Option<Values<'g>>,
    c_tensor: Option<&'g TensorProto>,
}

impl OpRule for Gemm {
    fn op_types(&self) -> &'static [&'static str] {
        &["Gemm"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        let input = |i: usize| node.input.get(i).filter(|s| !s.is_empty());
        let Some(b_tensor) = input(1).and_then(|b| cx.const_tensor(b)) else {
            return Role::Opaque(Opaque::NotConstant("its B operand is not a constant weight"));
        };
        match input(0) {
            None => return Role::Opaque(Opaque::Malformed("it has no A operand")),
            Some(a) if cx.ir.is_const(a) => {
                return Role::Opaque(Opaque::ConstantOperand("its A operand is a constant"))
            }
            _ => {}
        }
        let values = match Values::of(b_tensor) {
            Ok(v) if v.dims.len() == 2 => v,
            Ok(_) => return Role::Opaque(Opaque::Shape("its weight is not a matrix")),
            Err(e) => return Role::Opaque(Opaque::Tensor(e.to_string())),
        };
        let trans_b = node.attr_i("transB", 0) != 0;
        let (d0, d1) = (values.dims[0] as usize, values.dims[1] as usize);
        let (k, n) = if trans_b { (d1, d0) } else { (d0, d1) };
        let (c, c_tensor) = match input(2) {
            None => (None, None),
            Some(c) => match cx.const_tensor(c).map(|t| (Values::of(t), t)) {
                Some((Ok(v), t)) if v.dims.len() <= 2 && v.dims.last().is_none_or(|&d| d == 1 || d as usize == n) => {
                    (Some(v), Some(t))
                }
                _ => return Role::Opaque(Opaque::Shape("its C operand is not a constant broadcast over the output")),
            },
        };
        Role::Op(Box::new(LinearOp(Box::new(GemmNode {
            node,
            weight: Weight { values, tensor: b_tensor, slot: 1, k, n, transposed: trans_b, spatial: 1, groups: 1 },
            trans_a: node.attr_i("transA", 0) != 0,
            alpha: node.attr_f("alpha", 1.0) as f64,
            beta: node.attr_f("beta", 1.0) as f64,
            c,
            c_tensor,
        }))))
    }
}

impl Linear for GemmNode<'_> {
    fn input_slot(&self) -> usize {
        0
    }

    fn axes(&self) -> (isize, isize) {
        (if self.trans_a { -2 } else { -1 }, -1)
    }

    fn ranks(&self) -> (Option<usize>, Option<usize>) {
        (Some(2), Some(2))
    }

    fn weight(&self) -> &Weight<'_> {
        &self.weight
    }

    fn alpha(&self) -> f64 {
        self.alpha
    }

    fn bias(&self, j: usize) -> Option<f64> {
        let Some(c) = &self.c else { return Some(0.0) };
        let rows = if c.dims.len() == 2 { c.dims[0] } else { 1 };
        if rows != 1 {
            return None;
        }
        let per_channel = c.dims.last().is_some_and(|&d| d != 1);
        Some(self.beta * c.get(if per_channel { j } else { 0 }))
    }

    fn has_bias(&self) -> bool {
        self.c.is_some() && self.beta != 0.0
    }

    fn rewrite_bias(&self, node: usize, keep_out: &[usize], fold: &[f64], edits: &mut Vec<Edit>) {
        let w = &self.weight;
        let folds = fold.iter().any(|&f| f != 0.0);
        let dtype = w.values.dtype;
        match (&self.c, self.c_tensor) {
            (Some(c), Some(t)) if self.beta != 0.0 => {
                // C is [rows, cols] after broadcasting; rows > 1 only for a per-sample C.
                let rows = if c.dims.len() == 2 { c.dims[0] as usize } else { 1 };
                let cols = c.dims.last().copied().unwrap_or(1) as usize;
                if cols == 1 && !folds {
                    return; // a broadcast C needs no slicing
                }
                let vals: Vec<f64> = (0..rows)
                    .flat_map(|r| keep_out.iter().enumerate().map(move |(i, &j)| (r, i, j)))
                    .map(|(r, i, j)| c.get(r * cols + if cols == 1 { 0 } else { j }) + fold[i] / self.beta)
                    .collect();
                let dims = if c.dims.len() == 2 {
                    vec![rows as i64, keep_out.len() as i64]
                } else {
                    vec![keep_out.len() as i64]
                };
                edits.push(Edit::Const { node, slot: 2, tensor: with_data(t, dims, c.dtype, encode(c.dtype, &vals)) });
            }
            _ if folds => {
                // No C (or beta == 0, which ignores it): the folded constants become the new C.
                let tensor =
                    with_data(&TensorProto::default(), vec![keep_out.len() as i64], dtype, encode(dtype, fold));
                if self.node.input.len() > 2 && !self.node.input[2].is_empty() {
                    edits.push(Edit::Const { node, slot: 2, tensor });
                } else {
                    edits.push(Edit::SetInput { node, slot: 2, tensor });
                }
                edits.push(Edit::Attr { node, attr: attr_float("beta", 1.0) });
            }
            _ => {}
        }
    }
}
