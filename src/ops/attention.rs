//! Products of two activations, as attention computes them:
//!
//! - **scores** `S = Q @ K^T`: Q's channel `d` (last axis) meets K^T's channel `d` (second to
//!   last); `S[i, j] = sum_d q_id k_jd`. Dimension `d` leaves from both when `q_d` is the
//!   constant 0 or `k_d` is (the term is 0), or, when `S` reaches a softmax over its last axis
//!   through scalings and additive masks only, when `k_d` is any constant: `q_id k_d` is then the
//!   same for every key `j`, and a softmax row does not change when a constant is added to it.
//!   The scale stays as written (the original `1 / sqrt(head_dim)`).
//! - **weighted values** `O = P @ V` with `P` a softmax over its last axis: O's channels are V's,
//!   and a constant `v_d` gives `o_d = v_d sum_j p_ij = v_d`, a constant the output projection
//!   folds.
//!
//! Both follow channels split into heads, so the Q/K and V/O head dimensions shrink with the
//! projections around them.

use super::{Activations, ChannelOp, Ctx, Role};
use crate::analysis::reasons::Why;
use crate::analysis::{CheckCx, ConstCx, LayoutCx, NeedCx, TieCx, ValueId};
use crate::ir::NodeExt;
use crate::onnx::proto::NodeProto;

/// The role of a MatMul of two activations.
pub(crate) fn role<'g>(node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
    if node.input.first().is_some_and(|p| softmax_rows(cx, p)) {
        Role::Op(Box::new(Weighted))
    } else {
        Role::Op(Box::new(Scores { shift_invariant: into_softmax(cx, &node.output[0]) }))
    }
}

/// The single reader of `value` (not a graph output), if it has exactly one.
fn sole_reader<'g>(cx: &Ctx<'g>, value: &str) -> Option<&'g NodeProto> {
    match cx.ir.readers(value) {
        [(n, _)] if !cx.ir.outputs.contains(value) => Some(&cx.graph.node[*n]),
        _ => None,
    }
}

/// A softmax over the last axis (opset 13 on, or `axis = -1` written out).
fn is_row_softmax(cx: &Ctx, node: &NodeProto) -> bool {
    node.op_type() == "Softmax"
        && match node.attr("axis") {
            Some(_) => node.attr_i("axis", 0) == -1,
            None => cx.ir.opset >= 13,
        }
}

/// Identities at inference: Identity, Dropout not asked to train, a Cast between float types.
fn is_pass_through(node: &NodeProto) -> bool {
    let float = |to: i64| {
        use crate::onnx::proto::tensor_proto::DataType as D;
        [D::Float, D::Double, D::Float16, D::Bfloat16].iter().any(|&d| d as i64 == to)
    };
    node.output.len() == 1
        && !node.input.is_empty()
        && match node.op_type() {
            "Identity" => true,
            // A `training_mode` input may turn it on: only the plain form is an identity.
            "Dropout" => node.input.get(2).is_none_or(|t| t.is_empty()),
            "Cast" => float(node.attr_i("to", 0)),
            _ => false,
        }
}

/// Whether `value` is a softmax over its last axis (through identities): its rows sum to 1.
fn softmax_rows(cx: &Ctx, value: &str) -> bool {
    let mut at = value;
    loop {
        let Some(&p) = cx.ir.producer.get(at) else { return false };
        let node = &cx.graph.node[p];
        if is_row_softmax(cx, node) {
            return true;
        }
        if !is_pass_through(node) {
            return false;
        }
        at = &node.input[0];
    }
}

/// Whether `scores` reach a softmax over the last axis through steps that keep a constant
/// added to a row a constant added to the row: scalings by a scalar constant, additions of
/// anything (masks), identities; each value read by the next step alone.
fn into_softmax(cx: &Ctx, scores: &str) -> bool {
    let scalar = |name: &str| cx.const_tensor(name).is_some_and(|t| t.dims.iter().product::<i64>() == 1);
    let mut at = scores;
    loop {
        let Some(node) = sole_reader(cx, at) else { return false };
        if is_row_softmax(cx, node) {
            return true;
        }
        let two = node.input.len() == 2;
        let keeps_shift = match node.op_type() {
            "Mul" => two && node.input.iter().any(|i| i != at && scalar(i)),
            "Div" => two && node.input[0] == at && scalar(&node.input[1]),
            "Add" => two,
            _ => is_pass_through(node),
        };
        match node.output.first() {
            Some(out) if keeps_shift => at = out,
            _ => return false,
        }
    }
}

/// Both operands of a product need two axes at least (a 1-D operand contracts its channels
/// away): other ranks, or unknown ones, keep their channels.
fn check_ranks(cx: &mut CheckCx, values: &[ValueId]) {
    if values.iter().any(|&v| cx.layout(v).rank.is_none_or(|r| r < 2)) {
        values.iter().for_each(|&v| cx.force(v, Why::UnknownRank));
    }
}

/// `S = Q @ K^T` over channels that Q holds on its last axis and K^T on its second to last.
struct Scores {
    shift_invariant: bool,
}

impl<'g> ChannelOp<'g> for Scores {
    fn activations(&self) -> Activations {
        Activations { slots: vec![0, 1], otherwise: "its operands are constants or missing" }
    }

    fn follows_heads(&self) -> bool {
        true
    }

    fn output_channels(&self) -> bool {
        false
    }

    fn layout(&self, cx: &mut LayoutCx<'_, 'g>) {
        let (q, kt) = (cx.input(0), cx.input(1));
        cx.set_axis(q, -1);
        cx.set_axis(kt, -2);
        cx.same_width(q, kt);
        for (a, b) in [(q, kt), (kt, q)] {
            if let Some(h) = cx.get(a).heads {
                cx.set_heads(b, h);
            }
        }
    }

    fn check(&self, cx: &mut CheckCx<'_, 'g>) {
        let values = [cx.input(0), cx.input(1)];
        check_ranks(cx, &values);
    }

    fn ties(&self, cx: &mut TieCx<'_, 'g>) {
        let (q, kt) = (cx.input(0), cx.input(1));
        if let (Some(w), true) = (cx.width(q), cx.width(q) == cx.width(kt)) {
            cx.tie(q, 0, kt, 0, w);
        }
    }

    fn needs(&self, cx: &mut NeedCx<'_, 'g>) {
        let (q, kt) = (cx.input(0), cx.input(1));
        let (qc, kc) = (cx.consts(q), cx.consts(kt));
        if qc.len() != kc.len() {
            cx.mark_all(q);
            cx.mark_all(kt);
            return;
        }
        for d in 0..qc.len() {
            let vanishes = qc[d] == Some(0.0) || kc[d] == Some(0.0) || (self.shift_invariant && kc[d].is_some());
            if !vanishes {
                cx.mark(q, d);
                cx.mark(kt, d);
            }
        }
    }
}

/// `O = P @ V` with the rows of `P` summing to 1: O's channels are V's.
struct Weighted;

impl<'g> ChannelOp<'g> for Weighted {
    fn activations(&self) -> Activations {
        Activations { slots: vec![0, 1], otherwise: "its operands are constants or missing" }
    }

    fn follows_heads(&self) -> bool {
        true
    }

    fn layout(&self, cx: &mut LayoutCx<'_, 'g>) {
        let (v, Some(o)) = (cx.input(1), cx.output(0)) else { return };
        cx.set_axis(v, -1);
        cx.copy(v, o);
        cx.copy(o, v);
        if let Some(r) = cx.get(v).rank.or(cx.get(o).rank) {
            cx.set_rank(v, r);
            cx.set_rank(o, r);
        }
    }

    fn check(&self, cx: &mut CheckCx<'_, 'g>) {
        let (v, Some(o)) = (cx.input(1), cx.output(0)) else { return };
        check_ranks(cx, &[v, o]);
    }

    fn ties(&self, cx: &mut TieCx<'_, 'g>) {
        let (v, Some(o)) = (cx.input(1), cx.output(0)) else { return };
        if let (Some(w), true) = (cx.width(v), cx.width(v) == cx.width(o)) {
            cx.tie(v, 0, o, 0, w);
        }
    }

    fn constants(&self, cx: &mut ConstCx<'_, 'g>) {
        let (v, Some(o)) = (cx.input(1), cx.output(0)) else { return };
        let r = cx.consts(v).to_vec();
        cx.set(o, r);
    }

    fn needs(&self, cx: &mut NeedCx<'_, 'g>) {
        let (p, v, Some(o)) = (cx.input(0), cx.input(1), cx.output(0)) else { return };
        cx.mark_all(p);
        let (needed, consts) = (cx.needed(o), cx.consts(v));
        if needed.len() != consts.len() {
            return cx.mark_all(v);
        }
        (0..needed.len()).filter(|&d| needed[d] && consts[d].is_none()).for_each(|d| cx.mark(v, d));
    }
}
