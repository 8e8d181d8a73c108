//! Non-finite constants: every other pass reasons as if numbers were finite (a zero weight reads
//! nothing, `0 * x = 0`), which Inf and NaN break: `0 * Inf` is NaN, so a channel that may hold
//! Inf is read even by a zero weight, and the zero row that reads it gives NaN rather than the
//! constant bias. Each value that may hold Inf or NaN for finite inputs (computed, through any
//! operator, from a constant holding one) therefore keeps every channel, and none of its
//! channels counts as constant; so do the inputs of the node holding the constant (a constant
//! zero it multiplies by Inf gives NaN, not nothing). The model around them shrinks as before, and
//! minimization stays exact, NaNs included, with no tracking of what each operator does to
//! infinities.
//!
//! Softmax ends the taint: its rows hold at least one finite score wherever an attention mask
//! (`Where(mask, scores, -inf)`, the usual source of infinities) leaves a position unmasked, and
//! then every output is finite. Infinities a model computes from finite weights (overflow) are
//! not tracked: verification compares NaN positions, so they cannot pass unnoticed.

use super::constancy::{Consts, Patterns};
use super::ids::{IdVec, NodeId, ValueId};
use super::reasons::{Forced, Why};
use super::Graph;
use crate::onnx::proto::TensorProto;
use crate::onnx::tensor::Values;

/// Forces every value that may hold Inf or NaN, and drops its constants; returns the nodes that
/// hold such a constant, for the report. Linear weights the forward pass read are known from
/// their `patterns`; every other float constant is read here.
pub(crate) fn taint(g: &Graph, patterns: &Patterns, forced: &mut Forced, consts: &mut Consts) -> Vec<NodeId> {
    let mut tainted: IdVec<ValueId, bool> = g.value_ids().map(|_| false).collect();
    let mut sources = vec![];
    for &n in &g.order {
        let node = g.node(n);
        let from_input = g.inputs(n).any(|v| tainted[v]);
        let source = holds_non_finite(g, patterns, n);
        if source {
            g.inputs(n).for_each(|v| forced.by_node(v, n, Why::NonFinite));
            sources.push(n);
        }
        if node.op_type() == "Softmax" || !(from_input || source) {
            continue;
        }
        for v in g.outputs(n) {
            tainted[v] = true;
            forced.by_node(v, n, Why::NonFinite);
            consts[v].iter_mut().for_each(|c| *c = None);
        }
    }
    sources
}

/// A constant the node reads (an input, or a tensor attribute: ConstantOfShape's value) holds
/// Inf or NaN.
fn holds_non_finite(g: &Graph, patterns: &Patterns, n: NodeId) -> bool {
    let scanned = patterns.get(&n);
    let inputs = (0..g.node(n).input.len()).filter_map(|slot| match scanned {
        Some(p) if p.slot == slot => None,
        _ => g.const_input(n, slot),
    });
    let attributes = g.node(n).attribute.iter().flat_map(|a| a.t.iter().chain(&a.tensors));
    scanned.is_some_and(|p| p.non_finite) || inputs.chain(attributes).any(non_finite)
}

fn non_finite(t: &TensorProto) -> bool {
    Values::of(t).is_ok_and(|v| v.any_non_finite())
}
