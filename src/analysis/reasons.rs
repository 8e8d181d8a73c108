//! Why a tensor keeps every channel, and why an operator is opaque: typed while the analysis
//! runs (compared, deduplicated and tested as values), rendered to prose and a stable code only
//! at the report's edge, as rust-analyzer's diagnostics are.

use std::fmt;

use super::ids::{IdVec, NodeId, ValueId};
use super::Graph;
use crate::report::Reason;

/// Why an operator has no channel rule here. Each variant names a class of cause (its code);
/// the phrase says which operand or form, in the words the report prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Opaque {
    /// Only constants come out (an Identity of a weight, a Constant): nothing to report.
    ComputesConstant,
    /// No rule for this operator (or domain).
    NoRule { domain: String, op: String },
    /// The node lacks what its operator needs (an output, an operand, an attribute).
    Malformed(&'static str),
    /// An operand that must be an activation is a constant or missing.
    ConstantOperand(&'static str),
    /// An operand that must be a constant (a weight, a bound) is computed.
    NotConstant(&'static str),
    /// A constant operand has a shape or type the rule does not cover.
    Shape(&'static str),
    /// An auxiliary output (a mask, indices, statistics) is used, or the node runs in training mode.
    AuxiliaryOutput(&'static str),
    /// A form of the operator the rule does not cover.
    Unsupported(String),
    /// A constant whose bytes cannot be read as floats.
    Tensor(String),
}

impl Opaque {
    pub fn code(&self) -> &'static str {
        match self {
            Opaque::ComputesConstant => "computes-constant",
            Opaque::NoRule { .. } => "no-rule",
            Opaque::Malformed(_) => "malformed",
            Opaque::ConstantOperand(_) => "constant-operand",
            Opaque::NotConstant(_) => "operand-not-constant",
            Opaque::Shape(_) => "operand-shape",
            Opaque::AuxiliaryOutput(_) => "auxiliary-output",
            Opaque::Unsupported(_) => "unsupported-form",
            Opaque::Tensor(_) => "unreadable-tensor",
        }
    }
}

impl fmt::Display for Opaque {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Opaque::ComputesConstant => f.write_str("it computes a constant"),
            Opaque::NoRule { domain, op } if domain.is_empty() || domain == "ai.onnx" => {
                write!(f, "operator {op} has no channel rule")
            }
            Opaque::NoRule { domain, op } => write!(f, "operator {domain}::{op} has no channel rule"),
            Opaque::Malformed(s)
            | Opaque::ConstantOperand(s)
            | Opaque::NotConstant(s)
            | Opaque::Shape(s)
            | Opaque::AuxiliaryOutput(s) => f.write_str(s),
            Opaque::Unsupported(s) | Opaque::Tensor(s) => f.write_str(s),
        }
    }
}

/// What an operator could not follow about the channels of the tensors it touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Why {
    Opaque(Opaque),
    /// An output beyond the first, which the rule does not account for.
    SecondaryOutput,
    /// Two operators give the tensor different layouts.
    LayoutConflict,
    WidthNotDividingWeight,
    NormOverOtherAxes,
    MovesFlattenedAxis,
    ReshapesChannelAxis,
    /// Concatenates along the axis of a channel space's heads, whose count it changes.
    ConcatenatesHeads,
    ReducesChannelAxis,
    FlattensChannelAxis,
    TargetShape(Vec<i64>),
    TargetShapeEnd(i64),
    NotAVector {
        constant: String,
        width: usize,
    },
    VariesBeyondChannels {
        constant: String,
        dims: Vec<i64>,
    },
    UnreadableConstant(String),
    Broadcasts,
    UnknownPartWidths,
    /// The tensor's channels span two axes (heads and head dimensions), which this operator
    /// does not follow.
    SplitsHeads,
    StridedChannelSlice,
    UnknownRank,
    ShapeRead,
    PadsChannelAxis,
    ResizesChannelAxis,
    /// It may hold Inf or NaN: a constant it is computed from does (see `analysis::finite`).
    NonFinite,
    /// A shape in the model would give its channel axis no entry, or more than 2^32.
    ImplausibleSize,
    /// Its rule reads constant channels whose values it cannot fold into what it computes.
    NeedsConstant,
    /// A product of two activations: its output's last axis indexes the second operand's
    /// columns (keys, or the rows of a computed weight), not channels it can drop.
    ProductOfActivations,
    /// It computes a tensor from constants alone, which no rule slices (a weight the graph
    /// transposes or reshapes at run time).
    ComputedConstant,
    /// Its output's channels could not be laid out, so it may read every channel.
    OutputNotLaidOut,
    /// It splits an axis other than the channels (not followed yet).
    SplitsOtherAxis,
}

impl Why {
    fn code(&self) -> &'static str {
        match self {
            Why::Opaque(o) => o.code(),
            Why::SecondaryOutput => "secondary-output",
            Why::LayoutConflict => "layout-conflict",
            Why::WidthNotDividingWeight => "width-mismatch",
            Why::NormOverOtherAxes => "norm-axes",
            Why::MovesFlattenedAxis => "moves-flattened-axis",
            Why::ReshapesChannelAxis => "reshapes-channel-axis",
            Why::ConcatenatesHeads => "concatenates-heads",
            Why::ReducesChannelAxis => "reduces-channel-axis",
            Why::FlattensChannelAxis => "flattens-channel-axis",
            Why::TargetShape(_) | Why::TargetShapeEnd(_) => "target-shape",
            Why::NotAVector { .. } => "constant-not-vector",
            Why::VariesBeyondChannels { .. } => "constant-varies",
            Why::UnreadableConstant(_) => "unreadable-tensor",
            Why::Broadcasts => "broadcasts",
            Why::UnknownPartWidths => "unknown-widths",
            Why::SplitsHeads => "splits-heads",
            Why::StridedChannelSlice => "strided-channel-slice",
            Why::UnknownRank => "unknown-rank",
            Why::ShapeRead => "shape-read",
            Why::PadsChannelAxis => "pads-channel-axis",
            Why::ResizesChannelAxis => "resizes-channel-axis",
            Why::NonFinite => "non-finite",
            Why::ImplausibleSize => "implausible-size",
            Why::NeedsConstant => "needs-constant",
            Why::ProductOfActivations => "product-of-activations",
            Why::ComputedConstant => "computed-constant",
            Why::OutputNotLaidOut => "output-not-laid-out",
            Why::SplitsOtherAxis => "splits-other-axis",
        }
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Why::Opaque(o) => o.fmt(f),
            Why::SecondaryOutput => f.write_str("a secondary output"),
            Why::LayoutConflict => f.write_str("disagrees with another operator on its channel layout"),
            Why::WidthNotDividingWeight => f.write_str("its input width does not divide its weight"),
            Why::NormOverOtherAxes => f.write_str("it normalizes over axes other than the channels alone"),
            Why::MovesFlattenedAxis => f.write_str("it moves a flattened feature axis"),
            Why::ReshapesChannelAxis => f.write_str("it reshapes the channel axis"),
            Why::ConcatenatesHeads => f.write_str("it concatenates along the heads axis"),
            Why::ReducesChannelAxis => f.write_str("it reduces over the channel axis"),
            Why::FlattensChannelAxis => f.write_str("it flattens the channel axis together with others"),
            Why::TargetShape(shape) => write!(f, "its target shape {shape:?} does not end in the channel entries"),
            Why::TargetShapeEnd(last) => write!(f, "its target shape ends in {last}, not the channel entries"),
            Why::NotAVector { constant, width } => write!(f, "its constant '{constant}' is not a vector of {width}"),
            Why::VariesBeyondChannels { constant, dims } => {
                write!(f, "its constant '{constant}' of shape {dims:?} varies along more than the channel axis")
            }
            Why::UnreadableConstant(e) => f.write_str(e),
            Why::Broadcasts => f.write_str("it broadcasts along the channel axis"),
            Why::UnknownPartWidths => f.write_str("the widths of its parts are unknown"),
            Why::SplitsHeads => f.write_str("it does not follow channels split over two axes (heads)"),
            Why::UnknownRank => f.write_str("the rank its channel axis needs is not known"),
            Why::ShapeRead => f.write_str("its channel count is read as a number (a Shape)"),
            Why::PadsChannelAxis => f.write_str("it pads the channel axis"),
            Why::ResizesChannelAxis => f.write_str("it resizes the channel axis"),
            Why::ImplausibleSize => {
                f.write_str("a shape in the model would give its channel axis no entry, or more than 2^32 (is it wrong?)")
            }
            Why::NeedsConstant => f.write_str(
                "it reads them as constants whose values its rule cannot fold into what it computes (or it does not follow their channels)",
            ),
            Why::NonFinite => f.write_str(
                "it may hold Inf or NaN, as a constant it is computed from does (0 * Inf is NaN: no channel can be proven removable)",
            ),
            Why::StridedChannelSlice => {
                f.write_str("it slices the channel axis with a step, or a flattened or split channel axis")
            }
            Why::SplitsOtherAxis => f.write_str("it splits an axis other than the channels (not followed yet)"),
            Why::OutputNotLaidOut => f.write_str(
                "the channels of its output could not be laid out (sizes the graph computes, or an operand no rule lays out), so it may read every channel",
            ),
            Why::ComputedConstant => {
                f.write_str("it computes a tensor from constants alone (a weight the graph computes), which no rule slices")
            }
            Why::ProductOfActivations => f.write_str(
                "it multiplies two computed tensors: its last axis indexes the second operand's columns (keys, or a weight the graph computes), which it cannot drop",
            ),
        }
    }
}

/// Why a value keeps every channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeepReason {
    GraphInput(ValueId),
    GraphOutput(ValueId),
    Node { node: NodeId, why: Why },
}

impl KeepReason {
    /// The report's form: a stable code, the node it names, and the message.
    pub fn render(&self, g: &Graph) -> Reason {
        match self {
            KeepReason::GraphInput(v) => {
                Reason { code: "graph-input".into(), node: None, message: format!("graph input '{}'", g.name(*v)) }
            }
            KeepReason::GraphOutput(v) => {
                Reason { code: "graph-output".into(), node: None, message: format!("graph output '{}'", g.name(*v)) }
            }
            KeepReason::Node { node, why } => Reason {
                code: why.code().into(),
                node: Some(g.node(*node).name().to_string()),
                message: match why {
                    Why::LayoutConflict => format!("{} {why}", g.label(*node)),
                    _ => format!("{}: {why}", g.label(*node)),
                },
            },
        }
    }
}

/// Per value, why it keeps every channel (empty: it need not). Forcing only grows (a
/// join-semilattice of sets), so each pass that finds something it cannot follow adds to it.
#[derive(Debug, Clone)]
pub(crate) struct Forced {
    reasons: IdVec<ValueId, Vec<KeepReason>>,
}

impl Forced {
    pub fn new(values: usize) -> Self {
        Forced { reasons: IdVec::filled(vec![], values) }
    }

    pub fn force(&mut self, v: ValueId, why: KeepReason) {
        if !self.reasons[v].contains(&why) {
            self.reasons[v].push(why);
        }
    }

    pub fn by_node(&mut self, v: ValueId, node: NodeId, why: Why) {
        self.force(v, KeepReason::Node { node, why });
    }

    pub fn is_forced(&self, v: ValueId) -> bool {
        !self.reasons[v].is_empty()
    }

    pub fn of(&self, v: ValueId) -> &[KeepReason] {
        &self.reasons[v]
    }
}
