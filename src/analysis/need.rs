//! Backward need: a channel is needed when it is not constant (or its constant cannot be
//! folded exactly) and something needed reads it with a non-zero weight.

use std::collections::HashMap;

use super::constancy::{foldable_inputs, zero_inputs, Consts, Patterns};
use super::ids::{IdVec, NodeId, ValueId};
use super::layout::{Layout, Layouts};
use super::operands::{Operands, Param};
use super::reasons::{Forced, KeepReason};
use super::values::{at_node, At};
use super::{Additions, Graph};
use crate::ops::{Linear, NonZero, Role};

pub(crate) type Needed = IdVec<ValueId, Vec<bool>>;

/// For a constant channel that something needs, the node whose rule first needed it (the
/// graph's last reader of it that did): the report's answer when a constant channel stays
/// although nothing that varies needs its class. Channels needed because their value is kept
/// whole for another reason have no entry; that reason is reported with the value.
pub(crate) type NeededBy = HashMap<(ValueId, usize), NodeId>;

/// Which forced values the backward pass starts from needed whole: every one (what the
/// decision keeps), or those that a node keeping them reads (what the graph's readers demand:
/// the report's measure of channels kept only because their producer cannot drop them, an
/// opaque node's outputs or attention scores).
#[derive(Clone, Copy)]
pub(crate) enum Seeds<'a> {
    Forced(&'a Forced),
    Read(&'a Forced),
}

pub(crate) fn backward<'g>(
    g: &Graph<'g>,
    layouts: &Layouts,
    operands: &Operands<'g>,
    consts: &Consts,
    patterns: &Patterns,
    seeds: Seeds,
    additions: Additions,
) -> (Needed, NeededBy) {
    let mut by = NeededBy::new();
    let mut needed: Needed = consts.values().map(|c| vec![false; c.len()]).collect();
    // Graph outputs are needed, and so is everything kept whole for another reason (an opaque
    // producer, a layout the analysis cannot follow): whatever reads it may use every channel.
    // Graph inputs have nothing upstream; their unused features are the decision's business.
    for v in g.value_ids() {
        let seeded = match seeds {
            Seeds::Forced(forced) => forced.is_forced(v),
            Seeds::Read(forced) => forced.of(v).iter().any(|r| match r {
                KeepReason::Node { node, .. } => g.inputs(*node).any(|x| x == v),
                KeepReason::GraphOutput(_) | KeepReason::GraphInput(_) => false,
            }),
        };
        if seeded && !g.is_graph_input(v) {
            needed[v].iter_mut().for_each(|x| *x = true);
        }
    }
    for v in g.graph_outputs() {
        needed[v].iter_mut().for_each(|x| *x = true);
    }
    for &n in g.order.iter().rev() {
        let at = At { graph: g, node: n };
        let mut cx = NeedCx { at, layouts, operands, consts, patterns, needed: &needed, marks: vec![], additions };
        match g.role(n) {
            Role::Inner => {}
            Role::Opaque(_) => cx.need_all_inputs(),
            Role::Op(op) => {
                // (What an operator reads whose output the layout could not lay out is forced:
                // `forcing::unlaid_outputs`.)
                op.needs(&mut cx);
                if let Seeds::Read(_) = seeds {
                    // A computed operand (a size, indices) is read whole; in the forced run it
                    // is forced, and so needed whole, already.
                    let slots = op.activations().slots;
                    let operands = (0..g.node(n).input.len()).filter(|s| !slots.contains(s));
                    for v in operands.filter_map(|s| g.input(n, s)).collect::<Vec<_>>() {
                        cx.mark_all(v);
                    }
                }
            }
        }
        for (v, c) in cx.marks {
            if let Some(m) = needed[v].get_mut(c).filter(|m| !**m) {
                *m = true;
                if consts[v][c].is_some() {
                    by.insert((v, c), n);
                }
            }
        }
    }
    (needed, by)
}

/// What an operator's `needs` may read (the needs of its outputs, constants, layouts) and do:
/// mark the input channels that needed outputs read.
pub(crate) struct NeedCx<'a, 'g> {
    at: At<'a, 'g>,
    layouts: &'a Layouts,
    operands: &'a Operands<'g>,
    consts: &'a Consts,
    patterns: &'a Patterns,
    needed: &'a Needed,
    marks: Vec<(ValueId, usize)>,
    /// What layers may add to stop reading constants ([`foldable_inputs`], a new bias).
    additions: Additions,
}

at_node!(NeedCx);

impl<'a, 'g> NeedCx<'a, 'g> {
    pub fn layout(&self, v: ValueId) -> Layout {
        self.layouts[v]
    }

    pub fn consts(&self, v: ValueId) -> &'a [Option<f64>] {
        &self.consts[v]
    }

    pub fn needed(&self, v: ValueId) -> &'a [bool] {
        &self.needed[v]
    }

    pub fn param(&self, slot: usize) -> Option<&Param<'g>> {
        self.operands.get(self.at.node, slot)
    }

    /// The weight pattern the forward pass recorded for this node.
    pub fn pattern(&self) -> Option<&'a NonZero> {
        self.patterns.get(&self.at.node)
    }

    pub fn mark(&mut self, v: ValueId, c: usize) {
        self.marks.push((v, c));
    }

    pub fn mark_all(&mut self, v: ValueId) {
        let w = self.needed[v].len();
        self.marks.extend((0..w).map(|c| (v, c)));
    }

    /// Every channel of every activation the node reads.
    pub fn need_all_inputs(&mut self) {
        let inputs: Vec<ValueId> = self.at.graph.inputs(self.at.node).collect();
        inputs.into_iter().for_each(|v| self.mark_all(v));
    }

    /// A linear layer's input constants that it need not read (see [`foldable_inputs`]): none
    /// but zeros where taking them would add what `additions` forbids.
    pub fn linear_inputs(&self, x: ValueId, l: &dyn Linear) -> Option<Vec<Option<f64>>> {
        let (x, xc) = (self.layouts[x], &self.consts[x]);
        match (self.additions, l.has_bias()) {
            (Additions { biases: false, .. }, false) => zero_inputs(x, xc, l),
            (Additions { corrections: true, .. }, _) => foldable_inputs(x, xc, l),
            _ => super::constancy::linear_inputs(x, xc, l),
        }
    }
}
