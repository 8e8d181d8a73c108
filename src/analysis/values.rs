//! Value numbering: the frozen view of the graph every pass reads.

use std::collections::HashMap;

use super::ids::{IdVec, NodeId, ValueId};
use crate::ir::Ir;
use crate::onnx::proto::{GraphProto, NodeProto, TensorProto};
use crate::ops::{self, ChannelOp, Role};

/// The graph as the passes see it: nodes in topological order with their roles, and the
/// activations numbered (constants are not values: rules read them through the IR).
pub(crate) struct Graph<'g> {
    pub proto: &'g GraphProto,
    pub ir: &'g Ir,
    pub roles: IdVec<NodeId, Role<'g>>,
    pub order: Vec<NodeId>,
    ids: HashMap<&'g str, ValueId>,
    names: IdVec<ValueId, &'g str>,
}

impl<'g> Graph<'g> {
    pub fn new(proto: &'g GraphProto, ir: &'g Ir) -> Graph<'g> {
        let roles = IdVec::from_raw(ops::roles(proto, ir));
        let mut ids = HashMap::new();
        let mut names = vec![];
        let mut add = |name: &'g str| {
            if !name.is_empty() && !ir.is_const(name) && !ids.contains_key(name) {
                ids.insert(name, ValueId(names.len()));
                names.push(name);
            }
        };
        ir.inputs.iter().for_each(|i| add(i));
        for n in &proto.node {
            n.input.iter().chain(&n.output).for_each(|v| add(v));
        }
        let order = ir.order.iter().map(|&n| NodeId(n)).collect();
        Graph { proto, ir, roles, order, ids, names: IdVec::from_raw(names) }
    }

    pub fn value(&self, name: &str) -> Option<ValueId> {
        self.ids.get(name).copied()
    }

    pub fn name(&self, v: ValueId) -> &'g str {
        self.names[v]
    }

    pub fn value_count(&self) -> usize {
        self.names.len()
    }

    pub fn value_ids(&self) -> std::iter::Map<std::ops::Range<usize>, fn(usize) -> ValueId> {
        self.names.ids()
    }

    pub fn node(&self, n: NodeId) -> &'g NodeProto {
        &self.proto.node[n.0]
    }

    pub fn role(&self, n: NodeId) -> &Role<'g> {
        &self.roles[n]
    }

    /// The nodes with channel semantics, in topological order.
    pub fn ops(&self) -> impl Iterator<Item = (NodeId, &dyn ChannelOp<'g>)> + '_ {
        self.order.iter().filter_map(|&n| match self.role(n) {
            Role::Op(op) => Some((n, op.as_ref())),
            Role::Inner | Role::Opaque(_) => None,
        })
    }

    /// `node 'name' (Op)`, as the report names nodes.
    pub fn label(&self, n: NodeId) -> String {
        let node = self.node(n);
        format!("node '{}' ({})", node.name(), node.op_type())
    }

    /// The activation at input `slot` of `n`, if it is one.
    pub fn input(&self, n: NodeId, slot: usize) -> Option<ValueId> {
        self.node(n).input.get(slot).and_then(|s| self.value(s))
    }

    pub fn output(&self, n: NodeId, slot: usize) -> Option<ValueId> {
        self.node(n).output.get(slot).and_then(|s| self.value(s))
    }

    /// The activations `n` reads, in slot order (a value read twice appears twice).
    pub fn inputs(&self, n: NodeId) -> impl Iterator<Item = ValueId> + use<'_, 'g> {
        self.node(n).input.iter().filter_map(|s| self.value(s))
    }

    pub fn outputs(&self, n: NodeId) -> impl Iterator<Item = ValueId> + use<'_, 'g> {
        self.node(n).output.iter().filter_map(|s| self.value(s))
    }

    /// The constant at input `slot` of `n`.
    pub fn const_input(&self, n: NodeId, slot: usize) -> Option<&'g TensorProto> {
        self.node(n).input.get(slot).and_then(|s| self.ir.const_tensor(self.proto, s))
    }

    pub fn is_graph_input(&self, v: ValueId) -> bool {
        self.ir.inputs.iter().any(|i| i == self.name(v))
    }

    pub fn graph_outputs(&self) -> impl Iterator<Item = ValueId> + use<'_, 'g> {
        self.ir.outputs.iter().filter_map(|o| self.value(o))
    }
}

/// The node an operator's method is asked about, with its activations by slot: what every
/// pass's context shares (each dereferences to it).
#[derive(Clone, Copy)]
pub(crate) struct At<'a, 'g> {
    pub graph: &'a Graph<'g>,
    pub node: NodeId,
}

impl<'a, 'g> At<'a, 'g> {
    /// The activation at input `slot` (a slot the op declared as an activation).
    pub fn input(&self, slot: usize) -> ValueId {
        self.graph.input(self.node, slot).expect("activation slots are checked when roles are assigned")
    }

    pub fn output(&self, slot: usize) -> Option<ValueId> {
        self.graph.output(self.node, slot)
    }

    /// Its first `n` outputs, when every one is named (a Split's parts).
    pub fn outputs(&self, n: usize) -> Option<Vec<ValueId>> {
        (0..n).map(|s| self.output(s)).collect()
    }

    /// The activation named `name` (a multi-node pattern's input).
    pub fn value(&self, name: &str) -> Option<ValueId> {
        self.graph.value(name)
    }

    pub fn input_count(&self) -> usize {
        self.node_proto().input.len()
    }

    pub fn const_input(&self, slot: usize) -> Option<&'g TensorProto> {
        self.graph.const_input(self.node, slot)
    }

    /// The constant at input `slot` of another node (a computed shape's entry).
    pub fn const_of(&self, n: NodeId, slot: usize) -> Option<&'g TensorProto> {
        self.graph.const_input(n, slot)
    }

    pub fn node_proto(&self) -> &'g NodeProto {
        self.graph.node(self.node)
    }
}

/// A pass context dereferences to the node it asks about.
macro_rules! at_node {
    ($cx:ident) => {
        impl<'a, 'g> std::ops::Deref for $cx<'a, 'g> {
            type Target = $crate::analysis::values::At<'a, 'g>;
            fn deref(&self) -> &Self::Target {
                &self.at
            }
        }
    };
}
pub(crate) use at_node;
