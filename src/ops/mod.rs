//! Operator rules: what each ONNX operator means for channels, one file per family.
//!
//! A rule ([`OpRule`]) turns a node into a [`Role`]: usually a [`ChannelOp`], the node's own
//! answers to every question the analysis passes ask (how its output channels are laid out and
//! map to its input channels, which constants it propagates, what it needs backwards, and how it
//! rewrites itself). Every answer has a conservative default, as tract's `TypedOp` methods
//! default to "no relation": a method left out can cost removals, never exactness.
//!
//! Adding an operator means one rule in the file of its family and one line in [`RULES`];
//! docs/design.md walks through it.

mod attention;
mod concat;
mod conv;
mod elementwise;
mod gather;
mod gemm;
mod linear;
mod matmul;
mod norm;
mod per_channel;
mod pool;
mod quant;
mod recurrent;
mod rotary;
mod shape;
mod shape_of;
mod shuffle;
mod slice;
mod spatial;

pub(crate) use linear::{Linear, NonZero, Weight};
pub use norm::ClnForm;

use crate::analysis::reasons::Opaque;
use crate::analysis::{CheckCx, ConstCx, Graph, LayoutCx, Layouts, NeedCx, NodeId, PlanCx, TieCx, ValueId};
use crate::error::Result;
use crate::ir::{Ir, NodeExt};
use crate::onnx::proto::{GraphProto, NodeProto, TensorProto};
use crate::onnx::tensor::int64s;

/// What a rule sees of the model while classifying a node: the graph and its constants.
pub(crate) struct Ctx<'g> {
    pub graph: &'g GraphProto,
    pub ir: &'g Ir,
}

impl<'g> Ctx<'g> {
    pub fn const_tensor(&self, name: &str) -> Option<&'g TensorProto> {
        self.ir.const_tensor(self.graph, name)
    }

    /// The int64 values of the constant given at input `slot` of `node` (none when the input
    /// is absent or computed).
    pub fn ints(&self, node: &NodeProto, slot: usize) -> Option<Vec<i64>> {
        node.input.get(slot).filter(|s| !s.is_empty()).and_then(|s| self.const_tensor(s)).map(int64s)
    }

    /// The node that alone reads `value`, at its first input, when it is an `op` of the default
    /// domain and `value` is no graph output: the next step of a multi-node pattern.
    pub fn sole_reader(&self, value: &str, op: &str) -> Option<usize> {
        let (g, ir) = (self.graph, self.ir);
        match ir.readers(value) {
            [(n, 0)] if !ir.outputs.contains(value) && g.node[*n].op_type() == op && g.node[*n].domain().is_empty() => {
                Some(*n)
            }
            _ => None,
        }
    }

    /// Whether optional input `slot` of `node` is absent or the constant `default`: a computed
    /// one could be anything.
    pub fn absent_or(&self, node: &NodeProto, slot: usize, default: &[i64]) -> bool {
        match node.input.get(slot).filter(|s| !s.is_empty()) {
            None => true,
            Some(_) => self.ints(node, slot).is_some_and(|v| v == default),
        }
    }
}

/// The rule of a family of operators: parses a node (attributes, constant operands, opset
/// forms) once, into a [`Role`] that carries the parsed values.
pub(crate) trait OpRule: Sync {
    /// The operator types (default domain) the rule classifies.
    fn op_types(&self) -> &'static [&'static str];
    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g>;
}

pub(crate) enum Role<'g> {
    /// The node answers for its channels itself.
    Op(Box<dyn ChannelOp<'g> + 'g>),
    /// Part of a multi-node pattern (a decomposed LayerNorm) that its last node answers for.
    Inner,
    /// No rule: every tensor it touches keeps all channels, and the report says why.
    Opaque(Opaque),
}

/// Which input slots a [`ChannelOp`] reads as activations, and what to say when one is a
/// constant or missing (the node is then opaque rather than trusted).
pub(crate) struct Activations {
    pub slots: Vec<usize>,
    pub otherwise: &'static str,
    /// The node may read no activation with channels: a constant broadcast to a computed shape
    /// (Expand of a class token), whose channels its readers lay out.
    pub none: bool,
}

impl Activations {
    /// The usual case: the node reads activations at `slots` (`otherwise` says what it does
    /// when they are constants), and at least one of them.
    pub fn new(slots: Vec<usize>, otherwise: &'static str) -> Self {
        Activations { slots, otherwise, none: false }
    }
}

/// An operator's meaning for channels, one method per analysis pass. The passes call them in
/// this order; each gets a context that exposes the facts of the passes before it.
pub(crate) trait ChannelOp<'g> {
    fn activations(&self) -> Activations;

    /// Whether the rule accounts for every output; otherwise outputs after the first keep all
    /// their channels (a secondary output nothing here understands).
    fn covers_all_outputs(&self) -> bool {
        false
    }

    /// Whether the op follows a channel space that spans two axes (heads x head dimensions).
    /// Others keep such tensors whole.
    fn follows_heads(&self) -> bool {
        false
    }

    /// Before the layout's fixed point (a flattening marks its output's block unknown).
    fn seed(&self, _cx: &mut LayoutCx<'_, 'g>) {}

    /// Whether the outputs carry channels. A product of two activations (attention scores)
    /// does not: its inputs' needs come from the op alone, not from its outputs being unknown.
    fn output_channels(&self) -> bool {
        true
    }

    /// Layout: the channel axis, width, rank, block and heads of the values it touches, given
    /// what is known of them; called to a fixed point. Default: it says nothing, so its outputs'
    /// widths stay unknown and everything it reads is needed.
    fn layout(&self, _cx: &mut LayoutCx<'_, 'g>) {}

    /// Operands: validates per-channel constants and target shapes against the layout.
    fn check(&self, _cx: &mut CheckCx<'_, 'g>) {}

    /// Channel map: which output channels are which input channels (they leave together).
    fn ties(&self, _cx: &mut TieCx<'_, 'g>) {}

    /// Forward constancy: the constant of each output channel, from its inputs'.
    fn constants(&self, _cx: &mut ConstCx<'_, 'g>) {}

    /// Backward need: which input channels the needed output channels read.
    fn needs(&self, cx: &mut NeedCx<'_, 'g>) {
        cx.need_all_inputs()
    }

    /// Plan: the edits that keep only the decided channels.
    fn rewrite(&self, _cx: &mut PlanCx<'_, 'g>) -> Result<()> {
        Ok(())
    }

    /// Whether its rewrite needs every head of the values it touches to keep the same entries:
    /// it slices something broadcast over the heads (a rotary table, a per-dimension scale) or
    /// pairs entries within a head. Operators that only move, reshape or multiply whole heads
    /// answer no, so that each head may keep entries of its own (as many in each).
    fn same_entries_in_heads(&self, _g: &Graph<'g>, _node: NodeId, _layouts: &Layouts) -> bool {
        true
    }

    /// Pairs of values split into heads whose kept heads must be the same though no channel
    /// ties them (attention's queries and values: the scores' heads meet the values' heads);
    /// a value without a known partner keeps every head.
    fn head_links(&self, _g: &Graph<'g>, _node: NodeId) -> Vec<(ValueId, Option<ValueId>)> {
        vec![]
    }

    /// The weight matrix, for a linear layer (pruning reads it too).
    fn linear(&self) -> Option<&dyn Linear> {
        None
    }

    /// The indices of a Gather that selects a graph input's features.
    fn selected(&self) -> Option<&[i64]> {
        None
    }
}

static RULES: &[&dyn OpRule] = &[
    &gemm::Gemm,
    &matmul::MatMul,
    &matmul::Einsum,
    &attention::Attention,
    &conv::Conv,
    &recurrent::Recurrent,
    &elementwise::Unary,
    &elementwise::Binary,
    &elementwise::BatchNorm,
    &elementwise::InstanceNorm,
    &elementwise::PassThrough,
    &elementwise::Logical,
    &quant::QuantDequant,
    &norm::LayerNorm,
    &rotary::RotaryEmbedding,
    &pool::Pool,
    &pool::Reduce,
    &pool::Softmax,
    &shape::Reshape,
    &shape::Flatten,
    &shape::Transpose,
    &shape::Squeeze,
    &shape::Expand,
    &shape_of::Shape,
    &slice::Slice,
    &spatial::Pad,
    &spatial::Resize,
    &concat::Concat,
    &concat::Split,
    &gather::Select,
    &gather::GatherNd,
];

/// The role of a node; operators without a rule, or outside the default domain, are opaque.
fn role<'g>(node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
    match node.output.first() {
        None => return Role::Opaque(Opaque::Malformed("it has no output")),
        Some(o) if o.is_empty() => return Role::Opaque(Opaque::Malformed("its first output is unnamed")),
        // Identity of a weight, Constant: resolved as constants by the IR, no activation here.
        Some(o) if cx.ir.is_const(o) => return Role::Opaque(Opaque::ComputesConstant),
        _ => {}
    }
    let (domain, op) = (node.domain(), node.op_type());
    let rule = RULES.iter().find(|r| r.op_types().contains(&op)).filter(|_| node.default_domain());
    let Some(rule) = rule else {
        return Role::Opaque(Opaque::NoRule { domain: domain.into(), op: op.into() });
    };
    let role = rule.role(node, cx);
    // The passes rely on activation slots naming activations; malformed or constant-only nodes
    // are opaque rather than trusted.
    if let Role::Op(op) = &role {
        let acts = op.activations();
        let is_act = |slot: &usize| node.input.get(*slot).is_some_and(|s| !s.is_empty() && !cx.ir.is_const(s));
        if (acts.slots.is_empty() && !acts.none) || !acts.slots.iter().all(is_act) {
            return Role::Opaque(Opaque::ConstantOperand(acts.otherwise));
        }
    }
    role
}

/// The role of every node: each rule's, then the multi-node patterns over them.
pub(crate) fn roles<'g>(graph: &'g GraphProto, ir: &'g Ir) -> Vec<Role<'g>> {
    let cx = Ctx { graph, ir };
    let mut roles: Vec<Role<'g>> = graph.node.iter().map(|n| role(n, &cx)).collect();
    for (last, norm) in norm::decomposed(&cx) {
        norm.inner.iter().for_each(|&i| roles[i.0] = Role::Inner);
        roles[last.0] = Role::Op(Box::new(norm));
    }
    for (last, repeat) in attention::repeated_heads(&cx) {
        repeat.inner.iter().for_each(|&i| roles[i.0] = Role::Inner);
        roles[last.0] = Role::Op(Box::new(repeat));
    }
    for (last, swap) in attention::swapped_last_axes(&cx) {
        swap.inner.iter().for_each(|&i| roles[i.0] = Role::Inner);
        roles[last.0] = Role::Op(Box::new(swap));
    }
    for (last, rotation) in rotary::interleaved_rotations(&cx) {
        rotation.inner.iter().for_each(|&i| roles[i.0] = Role::Inner);
        roles[last.0] = Role::Op(Box::new(rotation));
    }
    for (last, shuffle) in shuffle::shuffled_channels(&cx) {
        shuffle.inner.iter().for_each(|&i| roles[i.0] = Role::Inner);
        roles[last.0] = Role::Op(Box::new(shuffle));
    }
    shape_of::size_arithmetic(&cx, &ir.order, &mut roles);
    roles
}

/// Every operator type with a rule, for `--help` and the README.
pub fn supported() -> Vec<&'static str> {
    let mut v: Vec<_> = RULES.iter().flat_map(|r| r.op_types().iter().copied()).collect();
    v.sort();
    v
}

/// Every operator type a rewrite can add to a model (bias adds, CompensatedLayerNorms in both
/// forms, input Gathers), so that executors of minimized models know what to cover.
pub fn emitted() -> Vec<&'static str> {
    let mut v: Vec<_> = [linear::EMITS, norm::EMITS, rotary::EMITS, crate::rewrite::EMITS].concat();
    v.sort();
    v.dedup();
    v
}

/// Whether a windowed operator (Conv, AveragePool) can read padding anywhere: explicit pads,
/// or an `auto_pad` other than none and VALID.
fn may_pad(node: &NodeProto) -> bool {
    let pads = node.attr_ints("pads").is_some_and(|p| p.iter().any(|&p| p != 0));
    pads || !matches!(node.attr_s("auto_pad", "NOTSET").as_str(), "NOTSET" | "VALID")
}
