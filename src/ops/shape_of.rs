//! Shape: reads a tensor's dimensions, never its values. Its input's channels may leave when
//! every dimension read is one that does not change (another axis), or the channel axis read
//! back only to reshape the same tensor (`x.view(-1, x.size(-1))`), which must follow the new
//! width. Any other read (a scale computed from the head size, say) keeps the input whole.

use super::shape::{computed_last, whole_shape};
use super::{Activations, ChannelOp, Ctx, OpRule, Role};
use crate::analysis::reasons::{Opaque, Why};
use crate::analysis::{CheckCx, Graph, Layouts, NodeId};
use crate::ir::NodeExt;
use crate::onnx::proto::{tensor_proto::DataType, NodeProto};

pub(crate) struct Shape;

/// Which dimensions of the shape a reader picks: `[from, to)` of the shape vector (negative
/// entries count from the end), and whether the picked value only reaches reshapes of the
/// tensor itself as their last target entry.
struct Read {
    from: i64,
    to: i64,
    reshapes_itself: bool,
}

struct ShapeOf {
    reads: Vec<Read>,
}

impl OpRule for Shape {
    fn op_types(&self) -> &'static [&'static str] {
        &["Shape"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        let (Some(x), Some(out)) = (node.input.first(), node.output.first()) else {
            return Role::Opaque(Opaque::Malformed("it lacks an input or an output"));
        };
        let picked: Option<Vec<Read>> = whole_shape(node)
            .then(|| {
                let readers = cx.ir.readers(out).iter();
                readers.map(|&(n, slot)| (slot == 0).then(|| read(cx, &cx.graph.node[n], x)).flatten()).collect()
            })
            .flatten();
        // A range of the shape (opset 15, `start = 0` too), all of it read: no reshape rule
        // follows it, and only a read of the channel axis keeps the tensor whole.
        let range = (!node.attribute.is_empty()).then(|| {
            let (from, to) = (node.attr_i("start", 0), node.attr_i("end", i64::MAX));
            vec![Read { from, to, reshapes_itself: false }]
        });
        let reads = picked.or(range);
        match reads {
            Some(reads) if !cx.ir.outputs.contains(out) => Role::Op(Box::new(ShapeOf { reads })),
            _ => Role::Opaque(Opaque::Unsupported("its dimensions are read in a way not followed".into())),
        }
    }
}

/// The dimensions `reader` picks from `Shape(x)`, when it is a Gather of one constant index or
/// a Slice of constant bounds along the only axis.
fn read(cx: &Ctx, reader: &NodeProto, x: &str) -> Option<Read> {
    let ints = |slot: usize| cx.ints(reader, slot);
    let (from, to) = match reader.op_type() {
        "Gather" if reader.attribute.iter().all(|a| a.name() != "axis" || a.i() == 0) => {
            let i = ints(1).filter(|i| i.len() == 1)?[0];
            (i, if i == -1 { i64::MAX } else { i.saturating_add(1) })
        }
        "Slice" if cx.absent_or(reader, 3, &[0]) && cx.absent_or(reader, 4, &[1]) => {
            (ints(1).filter(|s| s.len() == 1)?[0], ints(2).filter(|e| e.len() == 1)?[0])
        }
        _ => return None,
    };
    Some(Read { from, to, reshapes_itself: reshapes_itself(cx, reader.output.first()?, x) })
}

/// Whether `value` reaches only places whose rules follow x's new size: Concats whose results
/// only reshape `x` (the Reshape's rule then follows the new shape), or, through a division by
/// a constant and Casts, the bounds of a Slice of `x` (the Slice's rule evaluates them on the
/// layout and writes the new ones); each through Squeeze/Unsqueeze steps.
fn reshapes_itself(cx: &Ctx, value: &str, x: &str) -> bool {
    follows_itself(cx, value, x, false, 0)
}

fn follows_itself(cx: &Ctx, value: &str, x: &str, divided: bool, depth: usize) -> bool {
    let readers = cx.ir.readers(value);
    if cx.ir.outputs.contains(value) || readers.is_empty() || depth > 8 {
        return false;
    }
    readers.iter().all(|&(n, slot)| {
        let node = &cx.graph.node[n];
        let out = node.output.first().map(String::as_str).unwrap_or("");
        let reads_x = node.input.first().map(String::as_str) == Some(x);
        match node.op_type() {
            "Squeeze" | "Unsqueeze" if slot == 0 => follows_itself(cx, out, x, divided, depth + 1),
            // Times another dimension, or reshaped to one entry: the reshape's rule says whether
            // the product is the channels (a dimension declared 1 times the channel count).
            "Mul" => follows_itself(cx, out, x, divided, depth + 1),
            "Reshape" if slot == 0 && cx.ints(node, 1).is_some_and(|t| t == [-1] || t == [1]) => {
                follows_itself(cx, out, x, divided, depth + 1)
            }
            "Cast" if node.attr_i("to", 0) == DataType::Int64 as i64 => follows_itself(cx, out, x, divided, depth + 1),
            "Div" if slot == 0 && cx.ints(node, 1).is_some_and(|c| c.len() == 1 && c[0] > 0) => {
                follows_itself(cx, out, x, true, depth + 1)
            }
            "Slice" => (slot == 1 || slot == 2) && reads_x,
            "Concat" if !divided => {
                let readers = cx.ir.readers(out);
                // The last entry (x's own last dimension read back), or leading entries kept
                // ahead of a final -1 (`x.flatten(k)`): the places the reshape rules prove.
                let last = slot + 1 == node.input.len();
                let leading = slot == 0 && node.input.len() == 2;
                (last || leading)
                    && !cx.ir.outputs.contains(out)
                    && !readers.is_empty()
                    && readers.iter().all(|&(r, s)| {
                        let reshape = &cx.graph.node[r];
                        let of = reshape.input.first().map(String::as_str);
                        // The last entry: the reshape ties the tensor it reshapes to x.
                        s == 1
                            && reshape.op_type() == "Reshape"
                            && (last && computed_last(reshape, cx) == Some(None) || of == Some(x))
                    })
            }
            _ => false,
        }
    })
}

impl<'g> ChannelOp<'g> for ShapeOf {
    fn activations(&self) -> Activations {
        Activations::new(vec![0], "it reads the shape of a constant")
    }

    fn follows_heads(&self) -> bool {
        true
    }

    /// Sizes are counts: which entries a head keeps is no matter to them.
    fn same_entries_in_heads(&self, _g: &Graph<'g>, _node: NodeId, _layouts: &Layouts) -> bool {
        false
    }

    fn output_channels(&self) -> bool {
        false
    }

    fn check(&self, cx: &mut CheckCx<'_, 'g>) {
        let x = cx.input(0);
        let l = cx.layout(x);
        let Some(p) = l.position() else {
            // Without the channel axis's place nothing says which reads stay the same.
            return cx.force(x, Why::ShapeRead);
        };
        let (r, p) = (l.rank.unwrap_or(0) as i64, p as i64);
        let at = |i: i64| if i < 0 { i + r } else { i.min(r) };
        let channel_read = |rd: &Read| (at(rd.from)..at(rd.to)).contains(&p);
        // Heads on two axes: a read of the heads axis changes too, unless every head stays.
        let heads_read = |rd: &Read| {
            l.heads.is_some_and(|h| !h.all_stay() && (at(rd.from)..at(rd.to)).contains(&(r + h.axis as i64)))
        };
        if self.reads.iter().any(|rd| heads_read(rd) || (channel_read(rd) && !rd.reshapes_itself)) {
            cx.force(x, Why::ShapeRead);
        }
    }

    /// It reads no values.
    fn needs(&self, _: &mut crate::analysis::NeedCx<'_, 'g>) {}
}

/// Arithmetic on sizes: a node that computes from sizes read with `Shape` and from constants
/// only (the Gathers, Concats, Casts and guards of traced reshape and expand targets, computed
/// pads, causal masks built with `Range` and `Trilu`). It reads no activation, so it is not
/// opaque: the rules of the nodes reading its result (Reshape, Expand, Slice, Pad) say what the
/// sizes mean, and `Shape` what reading them costs. A result that its readers give channels (a
/// tensor shaped like an activation, added to it) cannot follow a rewrite, so it keeps them.
struct SizeArithmetic {
    slots: Vec<usize>,
}

/// Operators that compute sizes from sizes.
const SIZE_STEPS: &[&str] = &[
    "Gather",
    "Unsqueeze",
    "Squeeze",
    "Concat",
    "Slice",
    "Cast",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Mod",
    "Max",
    "Min",
    "Neg",
    "Abs",
    "Equal",
    "Less",
    "Greater",
    "Not",
    "And",
    "Or",
    "Where",
    "Reshape",
    "Transpose",
    "Range",
    "Trilu",
    "LessOrEqual",
    "GreaterOrEqual",
    "Expand",
    "Tile",
    "Identity",
    "ConstantOfShape",
];

impl<'g> ChannelOp<'g> for SizeArithmetic {
    fn activations(&self) -> Activations {
        // No sizes among its operands: a constant computed from constants (TorchScript's pads).
        Activations {
            slots: self.slots.clone(),
            otherwise: "it computes sizes from constants",
            none: self.slots.is_empty(),
        }
    }

    fn output_channels(&self) -> bool {
        false
    }

    /// A result its readers give channels (a mask shaped like an activation, added to it)
    /// cannot follow a rewrite: it keeps them all.
    fn check(&self, cx: &mut CheckCx<'_, 'g>) {
        if let Some(o) = cx.output(0).filter(|&o| cx.layout(o).width.is_some()) {
            // From constants alone it is a tensor the graph computes (a transposed weight).
            cx.force(o, if self.slots.is_empty() { Why::ComputedConstant } else { Why::ShapeRead });
        }
    }

    /// It reads no channels.
    fn needs(&self, _: &mut crate::analysis::NeedCx<'_, 'g>) {}
}

/// Gives the size computations among the opaque nodes their role, in `order`: a node whose
/// operands are sizes (what a `Shape` or `Size` returns, or computes from those) or constants,
/// computes sizes too.
pub(crate) fn size_arithmetic<'g>(cx: &Ctx<'g>, order: &[usize], roles: &mut [Role<'g>]) {
    let mut sizes: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for &n in order {
        let node = &cx.graph.node[n];
        let default_domain = node.default_domain();
        let out = node.output.first().map(String::as_str).unwrap_or("");
        if !default_domain || out.is_empty() {
            continue;
        }
        if ["Shape", "Size"].contains(&node.op_type()) {
            sizes.insert(out);
            continue;
        }
        let operands: Vec<(usize, &str)> =
            node.input.iter().enumerate().filter(|(_, s)| !s.is_empty()).map(|(k, s)| (k, s.as_str())).collect();
        let slots: Vec<usize> = operands.iter().filter(|(_, s)| sizes.contains(s)).map(|&(k, _)| k).collect();
        let from_sizes = operands.iter().all(|(_, s)| sizes.contains(s) || cx.ir.is_const(s));
        let single = node.output.len() == 1;
        if !(from_sizes && single && SIZE_STEPS.contains(&node.op_type())) || cx.ir.outputs.contains(out) {
            continue;
        }
        sizes.insert(out);
        // Comparisons and `Where` over sizes are guards of shapes (TorchScript's `expand`), not
        // channels: size arithmetic, as any node whose rule found nothing to follow.
        let guard = super::elementwise::LOGICAL.contains(&node.op_type());
        if guard || matches!(roles[n], Role::Opaque(_)) {
            roles[n] = Role::Op(Box::new(SizeArithmetic { slots }));
        }
    }
}
