//! Channel analysis: which channels of which tensors are dead or constant, and which can leave.
//!
//! Small passes over one frozen view of the graph ([`Graph`]: nodes, their roles, numbered
//! values), each in its own module with a typed result, in the style of rustc's dataflow passes
//! and rust-analyzer's inference:
//!
//! | pass | module | result |
//! |---|---|---|
//! | value numbering, roles | [`values`] | [`Graph`] |
//! | forcing seeds: graph outputs, opaque nodes, secondary outputs | [`forcing`] | [`Forced`] |
//! | layout: channel axis, width, rank, block, heads, to a fixed point | [`layout`] | [`Layouts`] |
//! | operands: per-channel constants and target shapes checked | [`operands`] | [`Operands`] |
//! | classes: union-find over the channels the operators tie | [`classes`] | [`Classes`] |
//! | constancy, forward | [`constancy`] | [`Consts`] |
//! | non-finite constants: what they reach keeps every channel | [`finite`] | [`Forced`], [`Consts`] |
//! | need, backward | [`need`] | [`Needed`] |
//! | decision, under a policy for graph inputs | [`decide`] | [`Decision`] |
//! | plan: edits and the report | [`plan`] | [`Plan`] |
//!
//! Every operator-specific question goes to the node's [`crate::ops::ChannelOp`]; the passes
//! hold only the generic machinery (fixed points, union-find, dataflow). [`Facts`] do not depend
//! on the graph-input policy, so `--gather-inputs` decides and plans twice over one analysis.
//! In debug builds the facts are checked for their invariants between passes.

pub(crate) mod classes;
pub(crate) mod constancy;
pub(crate) mod decide;
pub(crate) mod finite;
pub(crate) mod forcing;
pub(crate) mod ids;
pub(crate) mod layout;
pub(crate) mod need;
pub(crate) mod operands;
pub(crate) mod plan;
pub(crate) mod reasons;
pub(crate) mod values;

#[cfg(test)]
mod tests;

pub(crate) use classes::{Classes, TieCx};
pub(crate) use constancy::{ConstCx, Consts};
pub(crate) use decide::InputPolicy;
pub(crate) use ids::{NodeId, ValueId};
pub(crate) use layout::{Layout, LayoutCx, Layouts};
pub(crate) use need::{NeedCx, Needed, NeededBy};
pub(crate) use operands::{CheckCx, Operands};
pub(crate) use plan::PlanCx;
pub(crate) use reasons::Forced;
pub(crate) use values::Graph;

/// Everything the analysis knows about the channels, before any decision.
pub(crate) struct Facts<'g> {
    pub graph: Graph<'g>,
    pub forced: Forced,
    pub layouts: Layouts,
    pub operands: Operands<'g>,
    pub classes: Classes,
    pub consts: Consts,
    pub needed: Needed,
    pub needed_by: NeededBy,
    /// What the readers need, forced values needed whole only where a node keeping them reads
    /// them: channels of a forced value that nothing demands stay only because their producer
    /// cannot drop them (the report says so).
    pub demanded: Needed,
    /// Nodes reading a constant that holds Inf or NaN (see [`finite`]).
    pub non_finite: Vec<NodeId>,
}

impl<'g> Facts<'g> {
    /// Runs every pass up to the decision, checking each result's invariants in debug builds
    /// before the next pass reads it (rustc's `validate_body` between passes).
    /// Every pass over `graph`; `progress` hears how much of the weights the one that reads
    /// them has read; `additions` says which nodes the rewrite may add so that a layer stops
    /// reading its constant inputs.
    pub fn of(graph: Graph<'g>, progress: &dyn Fn(crate::Progress), additions: Additions) -> Facts<'g> {
        let mut forced = forcing::seed(&graph);
        let layouts = layout::infer(&graph, &mut forced);
        debug_check(&graph, "layout", |v| {
            let l = layouts[v];
            let divides = |n: usize| n > 0 && l.width.is_some_and(|w| w.is_multiple_of(n));
            forced.is_forced(v) || l.heads.is_none_or(|h| divides(h.count)) && l.groups.is_none_or(divides)
        });
        let operands = operands::check(&graph, &layouts, &mut forced);
        let classes = classes::build(&graph, &layouts, &mut forced);
        forcing::unlaid_outputs(&graph, &layouts, &mut forced);
        let (mut consts, patterns) = constancy::forward(&graph, &layouts, &operands, progress);
        let non_finite = finite::taint(&graph, &patterns, &mut forced, &mut consts);
        debug_check(&graph, "constancy", |v| consts[v].len() == layouts[v].width.unwrap_or(0));
        let backward = |seeds| need::backward(&graph, &layouts, &operands, &consts, &patterns, seeds, additions);
        let (needed, needed_by) = backward(need::Seeds::Forced(&forced));
        let (demanded, _) = backward(need::Seeds::Read(&forced));
        debug_check(&graph, "need", |v| needed[v].len() == layouts[v].width.unwrap_or(0));
        Facts { graph, forced, layouts, operands, classes, consts, needed, needed_by, demanded, non_finite }
    }
}

/// What a rewrite may add to a model so that a layer stops reading constant input channels:
/// without them, such a layer reads every non-zero constant it is given, and the channel stays.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Additions {
    /// A padded Conv adds the constants back after itself, as the convolution of a map of ones.
    pub corrections: bool,
    /// A layer without a bias (a MatMul, a Gemm without C, a Conv without B) gets one.
    pub biases: bool,
}

/// The channel spaces alone (layouts and classes; no weight is read): what pruning couples
/// across.
pub(crate) fn spaces(graph: &Graph) -> (Layouts, Classes) {
    let mut forced = forcing::seed(graph);
    let layouts = layout::infer(graph, &mut forced);
    let classes = classes::build(graph, &layouts, &mut forced);
    (layouts, classes)
}

/// Asserts, in debug builds, that `holds` for every value after `pass`: per-channel facts have
/// the value's width, heads and groups divide it (or the value keeps every channel).
fn debug_check(g: &Graph, pass: &str, holds: impl Fn(ValueId) -> bool) {
    if cfg!(debug_assertions) {
        if let Some(v) = g.value_ids().find(|&v| !holds(v)) {
            panic!("after the {pass} pass, the facts of '{}' break an invariant", g.name(v));
        }
    }
}
