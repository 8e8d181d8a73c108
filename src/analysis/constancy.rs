//! Forward constancy: a channel is constant when it is the same number for every input and
//! position. Linear layers start constants (a zero row reads nothing that varies); the other
//! operators push them through.

use std::collections::HashMap;

use super::ids::{IdVec, NodeId, ValueId};
use super::layout::{Layout, Layouts};
use super::operands::{Operands, Param};
use super::values::{at_node, At};
use super::Graph;
use crate::ops::{Linear, NonZero};

/// Per value: the constant of each channel (`None`: it varies); empty when the width is unknown.
pub(crate) type Consts = IdVec<ValueId, Vec<Option<f64>>>;

/// The non-zero pattern of each linear weight the forward pass read, for the backward pass.
pub(crate) type Patterns = HashMap<NodeId, NonZero>;

/// The pass that reads every weight: `progress` hears the bytes of weights read so far.
pub(crate) fn forward<'g>(
    g: &Graph<'g>,
    layouts: &Layouts,
    operands: &Operands<'g>,
    progress: &dyn Fn(crate::Progress),
) -> (Consts, Patterns) {
    let mut consts: Consts = layouts.values().map(|l| vec![None; l.width.unwrap_or(0)]).collect();
    let mut patterns = HashMap::new();
    let weight_bytes = |n: NodeId| -> u64 {
        (0..g.node(n).input.len())
            .filter_map(|s| g.const_input(n, s))
            .map(|t| t.raw_data.as_ref().map_or(0, |r| r.len() as u64))
            .sum()
    };
    let ops: Vec<_> = g.ops().map(|(n, op)| (n, op, weight_bytes(n))).collect();
    let total: u64 = ops.iter().map(|&(_, _, bytes)| bytes).sum();
    let of = ops.iter().filter(|&&(_, _, bytes)| bytes > 0).count();
    let (mut done, mut items) = (0, 0);
    for (node, op, bytes) in ops {
        let at = At { graph: g, node };
        op.constants(&mut ConstCx { at, layouts, operands, consts: &mut consts, patterns: &mut patterns });
        if bytes > 0 {
            (done, items) = (done + bytes, items + 1);
            progress(crate::Progress::Bytes { done, total, items, of, unit: "nodes with weights" });
        }
    }
    (consts, patterns)
}

pub(crate) struct ConstCx<'a, 'g> {
    at: At<'a, 'g>,
    layouts: &'a Layouts,
    operands: &'a Operands<'g>,
    consts: &'a mut Consts,
    patterns: &'a mut Patterns,
}

at_node!(ConstCx);

impl<'g> ConstCx<'_, 'g> {
    pub fn layout(&self, v: ValueId) -> Layout {
        self.layouts[v]
    }

    pub fn consts(&self, v: ValueId) -> &[Option<f64>] {
        &self.consts[v]
    }

    pub fn param(&self, slot: usize) -> Option<&Param<'g>> {
        self.operands.get(self.at.node, slot)
    }

    /// Sets the constants of `v`, when they cover its width.
    pub fn set(&mut self, v: ValueId, consts: Vec<Option<f64>>) {
        if consts.len() == self.consts[v].len() {
            self.consts[v] = consts;
        }
    }

    /// Keeps the node's weight pattern for its backward pass.
    pub fn record(&mut self, pattern: NonZero) {
        self.patterns.insert(self.at.node, pattern);
    }

    /// A linear layer's input constants per weight row (see [`linear_inputs`]).
    pub fn linear_inputs(&self, x: ValueId, l: &dyn Linear) -> Option<Vec<Option<f64>>> {
        linear_inputs(self.layouts[x], &self.consts[x], l)
    }
}

/// A linear layer's input constants per weight row, with `None` where the constant cannot be
/// folded exactly (a padded Conv reading a non-zero constant); `None` overall where the input's
/// channels do not divide the weight's rows into blocks.
pub(crate) fn linear_inputs(x: Layout, xc: &[Option<f64>], l: &dyn Linear) -> Option<Vec<Option<f64>>> {
    inputs_with(x, xc, l, l.folds_constants())
}

/// [`linear_inputs`] for what the layer needs: a constant a correction after the layer adds back
/// ([`Linear::border_correction`]) need not be read, though the outputs still vary with it.
pub(crate) fn foldable_inputs(x: Layout, xc: &[Option<f64>], l: &dyn Linear) -> Option<Vec<Option<f64>>> {
    inputs_with(x, xc, l, l.folds_constants() || l.corrects_borders())
}

/// [`linear_inputs`] for a layer that may take no constant at all (it has no bias to take it,
/// and none may be added): only zeros need not be read.
pub(crate) fn zero_inputs(x: Layout, xc: &[Option<f64>], l: &dyn Linear) -> Option<Vec<Option<f64>>> {
    inputs_with(x, xc, l, false)
}

fn inputs_with(x: Layout, xc: &[Option<f64>], l: &dyn Linear, exact: bool) -> Option<Vec<Option<f64>>> {
    let b = x.block?;
    let k = l.weight().k;
    if xc.len() * b != k {
        return None;
    }
    Some((0..k).map(|kc| xc[x.channel_of(kc, xc.len())].filter(|&v| exact || v == 0.0)).collect())
}
