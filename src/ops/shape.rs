//! Operators that move data without mixing channels: identities, reshapes, concatenation and
//! splitting along the channel axis.

use super::{Ctx, Layout, OpRule, Pointwise, Role};
use crate::ir::NodeExt;
use crate::onnx::proto::{tensor_proto::DataType, NodeProto};
use crate::onnx::tensor::int64s;

pub struct PassThrough;
pub struct Reshape;
pub struct Flatten;
pub struct Concat;
pub struct Split;
pub struct Transpose;
pub struct Select;

impl OpRule for PassThrough {
    fn op_types(&self) -> &'static [&'static str] {
        &["Identity", "Dropout", "Cast"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        match node.op_type() {
            // Dropout is the identity at inference; its mask output is another matter.
            "Dropout"
                if node
                    .output
                    .get(1)
                    .is_some_and(|m| !m.is_empty() && (!cx.ir.readers(m).is_empty() || cx.ir.outputs.contains(m))) =>
            {
                Role::Opaque("its mask output is used".into())
            }
            "Cast" => {
                let to = node.attr_i("to", 0) as i32;
                let round: fn(f64) -> f64 = match DataType::try_from(to) {
                    Ok(DataType::Float) => |x| x as f32 as f64,
                    Ok(DataType::Double) => |x| x,
                    Ok(DataType::Float16) => |x| half::f16::from_f64(x).to_f64(),
                    Ok(DataType::Bfloat16) => |x| half::bf16::from_f64(x).to_f64(),
                    _ => return Role::Opaque("it casts to a non-float type".into()),
                };
                Role::Pointwise(Pointwise::new(vec![0], vec![], Box::new(move |x| Some(round(x[0])))))
            }
            _ => Role::Pointwise(Pointwise::identity()),
        }
    }
}

impl OpRule for Reshape {
    fn op_types(&self) -> &'static [&'static str] {
        &["Reshape"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        let Some(shape) = node.input.get(1).and_then(|s| cx.const_tensor(s)) else {
            return match computed_last(node, cx) {
                Some(last) => {
                    let mut p = Pointwise::identity();
                    p.layout = Layout::ReshapeLast { last };
                    Role::Pointwise(p)
                }
                None => Role::Opaque("its target shape is computed, and its last entry is not known".into()),
            };
        };
        if shape.data_type() != DataType::Int64 as i32 || shape.dims.len() != 1 {
            return Role::Opaque("its shape is not a 1-D int64 constant".into());
        }
        if node.attr_i("allowzero", 0) != 0 && int64s(shape).contains(&0) {
            return Role::Opaque("it has allowzero with a zero dimension".into());
        }
        let mut p = Pointwise::identity();
        p.layout = Layout::Reshape { slot: 1 };
        Role::Pointwise(p)
    }
}

/// For a shape built as `Concat(..., last)`: `Some(Some(loc))` when `last` is a one-element
/// constant (at node, slot), `Some(None)` when it is the reshaped tensor's own last dimension
/// read back with `Shape`, `None` otherwise.
fn computed_last(node: &NodeProto, cx: &Ctx) -> Option<Option<(usize, usize)>> {
    let g = cx.graph;
    let producer = |name: &str| cx.ir.producer.get(name).copied();
    let target = node.input.get(1)?;
    let concat = producer(target)?;
    let c = &g.node[concat];
    // A target shape shared by other reshapes (exporters compute one and reuse it) gets a copy
    // of its Concat for this reshape when rewritten.
    if c.op_type() != "Concat" || c.attr_i("axis", 0) != 0 {
        return None;
    }
    let slot = c.input.len().checked_sub(1)?;
    let last = &c.input[slot];
    if let Some(t) = cx.const_tensor(last) {
        return (t.data_type() == DataType::Int64 as i32 && int64s(t).len() == 1).then_some(Some((concat, slot)));
    }
    // The last dimension of x, the reshaped tensor, read back: Gather(Shape(x), -1) or
    // Slice(Shape(x), -1, end), through Unsqueeze/Squeeze (TorchScript adds both).
    let mut at = producer(last)?;
    while matches!(g.node[at].op_type(), "Unsqueeze" | "Squeeze") {
        at = producer(g.node[at].input.first()?)?;
    }
    let pick = &g.node[at];
    let ints =
        |slot: usize| pick.input.get(slot).filter(|s| !s.is_empty()).and_then(|i| cx.const_tensor(i)).map(int64s);
    let last_of_shape = match pick.op_type() {
        "Gather" => ints(1) == Some(vec![-1]),
        "Slice" => {
            ints(1) == Some(vec![-1])
                && ints(2).is_some_and(|e| e.len() == 1 && e[0] >= i32::MAX as i64)
                && ints(3).is_none_or(|a| a == [0])
                && ints(4).is_none_or(|s| s == [1])
        }
        _ => false,
    };
    let shape = &g.node[producer(pick.input.first()?)?];
    let follows = last_of_shape
        && shape.op_type() == "Shape"
        && shape.attribute.is_empty()
        && shape.input.first() == node.input.first();
    follows.then_some(None)
}

impl OpRule for Flatten {
    fn op_types(&self) -> &'static [&'static str] {
        &["Flatten"]
    }

    fn role<'g>(&self, node: &'g NodeProto, _: &Ctx<'g>) -> Role<'g> {
        let mut p = Pointwise::identity();
        p.layout = Layout::Flatten { from: node.attr_i("axis", 1) };
        Role::Pointwise(p)
    }
}

impl OpRule for Concat {
    fn op_types(&self) -> &'static [&'static str] {
        &["Concat"]
    }

    fn role<'g>(&self, node: &'g NodeProto, _: &Ctx<'g>) -> Role<'g> {
        if !node.has_attr("axis") {
            return Role::Opaque("it has no axis".into());
        }
        Role::Concat { axis: node.attr_i("axis", 0) }
    }
}

impl OpRule for Split {
    fn op_types(&self) -> &'static [&'static str] {
        &["Split"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        let axis = node.attr_i("axis", 0);
        // Sizes: an input from opset 13, an attribute before; absent means equal parts.
        let (sizes, slot) = match node.input.get(1).filter(|s| !s.is_empty()) {
            Some(s) => match cx.const_tensor(s) {
                Some(t) => (int64s(t), Some(1)),
                None => return Role::Opaque("its split sizes are computed".into()),
            },
            None => {
                (node.attribute.iter().find(|a| a.name() == "split").map(|a| a.ints.clone()).unwrap_or_default(), None)
            }
        };
        if sizes.iter().any(|&s| s < 0) {
            return Role::Opaque("its split sizes are negative".into());
        }
        Role::Split { axis, sizes: sizes.into_iter().map(|s| s as usize).collect(), sizes_slot: slot }
    }
}

impl OpRule for Transpose {
    fn op_types(&self) -> &'static [&'static str] {
        &["Transpose"]
    }

    fn role<'g>(&self, node: &'g NodeProto, _: &Ctx<'g>) -> Role<'g> {
        // Without `perm` the axes are reversed, which needs the rank: known only later.
        let Some(perm) = node.attribute.iter().find(|a| a.name() == "perm").map(|a| a.ints.clone()) else {
            return Role::Opaque("it has no perm attribute".into());
        };
        let mut p = Pointwise::identity();
        p.layout = Layout::Transpose { perm };
        Role::Pointwise(p)
    }
}

impl OpRule for Select {
    fn op_types(&self) -> &'static [&'static str] {
        &["Gather"]
    }

    /// A Gather of a graph input's features along the last axis by constant indices: how
    /// `--gather-inputs` reads an input, so a model minimized with it can be minimized again (the
    /// indices shrink). Gathers of anything else may index shapes or tokens: opaque.
    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        let data = node.input.first().map(String::as_str).unwrap_or_default();
        let last = match node.attr_i("axis", 0) {
            -1 => true,
            a => cx.ir.rank(data).is_some_and(|r| a == r as i64 - 1),
        };
        let indices = node.input.get(1).and_then(|i| cx.const_tensor(i));
        match indices {
            Some(t)
                if t.dims.len() == 1
                    && t.data_type() == DataType::Int64 as i32
                    && last
                    && cx.ir.inputs.iter().any(|i| i == data) =>
            {
                Role::Select { indices: int64s(t) }
            }
            _ => Role::Opaque("it is not a Gather of a graph input's features by constant indices".into()),
        }
    }
}
