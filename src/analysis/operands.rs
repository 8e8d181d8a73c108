//! Operands: per-channel constants (biases, scales, BatchNorm statistics) and target shapes,
//! checked against the layout once it is known.

use std::collections::HashMap;

use super::ids::{NodeId, ValueId};
use super::layout::{Layout, Layouts};
use super::reasons::{Forced, Why};
use super::values::{at_node, At};
use super::Graph;
use crate::onnx::tensor::Values;

/// A per-channel constant operand of a node.
pub(crate) struct Param<'g> {
    pub values: Values<'g>,
    /// Position of the channel dimension in the constant's dims, when it is not broadcast.
    pub channel_dim: Option<usize>,
}

impl Param<'_> {
    pub fn at(&self, c: usize) -> f64 {
        self.values.get(if self.channel_dim.is_some() { c } else { 0 })
    }
}

/// The checked constant operands, by (node, input slot).
pub(crate) struct Operands<'g> {
    params: HashMap<(NodeId, usize), Param<'g>>,
}

impl<'g> Operands<'g> {
    pub fn get(&self, n: NodeId, slot: usize) -> Option<&Param<'g>> {
        self.params.get(&(n, slot))
    }
}

pub(crate) fn check<'g>(g: &Graph<'g>, layouts: &Layouts, forced: &mut Forced) -> Operands<'g> {
    let mut params = HashMap::new();
    for (node, op) in g.ops() {
        op.check(&mut CheckCx { at: At { graph: g, node }, layouts, forced, params: &mut params });
    }
    Operands { params }
}

pub(crate) struct CheckCx<'a, 'g> {
    at: At<'a, 'g>,
    layouts: &'a Layouts,
    forced: &'a mut Forced,
    params: &'a mut HashMap<(NodeId, usize), Param<'g>>,
}

at_node!(CheckCx);

impl<'g> CheckCx<'_, 'g> {
    pub fn layout(&self, v: ValueId) -> Layout {
        self.layouts[v]
    }

    pub fn const_name(&self, slot: usize) -> &'g str {
        &self.at.graph.node(self.at.node).input[slot]
    }

    pub fn force(&mut self, v: ValueId, why: Why) {
        self.forced.by_node(v, self.at.node, why);
    }

    /// Reads the constant at `slot` as one value per channel of a value laid out as `layout`:
    /// broadcast along every axis but the channel axis, or (`vector`) a plain vector of the
    /// width whatever the axis (BatchNormalization's statistics).
    pub fn per_channel(&self, slot: usize, layout: Layout, vector: bool) -> Result<Param<'g>, Why> {
        let (axis, width) = (layout.axis.unwrap_or(-1), layout.width.unwrap_or(0));
        let t = self.const_input(slot).expect("constant slots are checked when roles are assigned");
        let values = Values::of(t).map_err(|e| Why::UnreadableConstant(e.to_string()))?;
        let dims = values.dims;
        let constant = || self.const_name(slot).to_string();
        let channel_dim = if vector {
            if dims.len() != 1 || dims[0] != width as i64 {
                return Err(Why::NotAVector { constant: constant(), width });
            }
            Some(0)
        } else {
            let pos = dims.len() as isize + axis;
            let others_one = dims.iter().enumerate().all(|(i, &d)| d == 1 || i as isize == pos);
            let at = if pos >= 0 { dims[pos as usize] } else { 1 };
            // Over two axes (heads), only a constant broadcast over both is per channel.
            let over_heads = layout.heads.is_some() && at != 1;
            if !others_one || (at != 1 && at != width as i64) || over_heads {
                return Err(Why::VariesBeyondChannels { constant: constant(), dims: dims.to_vec() });
            }
            (at != 1).then_some(pos as usize)
        };
        Ok(Param { values, channel_dim })
    }

    /// Records the node's per-channel constants, by slot, for the passes after this one.
    pub fn accept(&mut self, params: Vec<(usize, Param<'g>)>) {
        self.params.extend(params.into_iter().map(|(slot, p)| ((self.at.node, slot), p)));
    }
}
