//! Forcing seeds: values that keep every channel whatever the weights say, because something
//! outside the analysis reads or writes them. Graph inputs are left to the decision's policy.

use super::layout::Layouts;
use super::reasons::{Forced, KeepReason, Why};
use super::Graph;
use crate::ops::Role;

pub(crate) fn seed(g: &Graph) -> Forced {
    let mut forced = Forced::new(g.value_count());
    for v in g.graph_outputs() {
        forced.force(v, KeepReason::GraphOutput(v));
    }
    for &n in &g.order {
        let node = g.node(n);
        match g.role(n) {
            Role::Opaque(why) => {
                // Everything it touches, subgraph reads included.
                let mut names: Vec<&String> = node.input.iter().chain(&node.output).collect();
                for a in &node.attribute {
                    for sub in a.g.iter().chain(a.graphs.iter()) {
                        names.extend(sub.node.iter().flat_map(|sn| sn.input.iter()));
                    }
                }
                for v in names.into_iter().filter_map(|s| g.value(s)) {
                    forced.by_node(v, n, Why::Opaque(why.clone()));
                }
            }
            Role::Op(op) if op.covers_all_outputs() => {}
            Role::Op(_) | Role::Inner => {
                for o in node.output.iter().skip(1).filter_map(|o| g.value(o)) {
                    forced.by_node(o, n, Why::SecondaryOutput);
                }
            }
        }
    }
    forced
}

/// After the layout: an operator that carries channels to an output the layout could not give a
/// width (a rotary table computed from positions, a reshape to sizes the graph computes) may use
/// every channel of the activations it reads, so they stay; forced, so the report names it.
pub(crate) fn unlaid_outputs(g: &Graph, layouts: &Layouts, forced: &mut Forced) {
    for (n, op) in g.ops() {
        if op.output_channels() && g.outputs(n).any(|v| layouts[v].width.is_none()) {
            for v in op.activations().slots.into_iter().filter_map(|slot| g.input(n, slot)) {
                forced.by_node(v, n, Why::OutputNotLaidOut);
            }
        }
    }
}
