//! Shapes the graph does not declare, inferred forward from those it does: rank always where
//! the operator fixes it, a dimension only where it is certain.
//!
//! Exports with dynamic axes often declare no intermediate shapes (the TorchScript exporter
//! writes none for a BERT's hidden states), and the channel rules need ranks to prove a
//! reshape's `-1` cannot absorb a leading axis. Declared shapes always win; an operator left
//! out here simply leaves its outputs unknown, which costs removals, never exactness.
//!
//! As ONNX's own shape inference does ("data propagation"), the values of small integer
//! tensors computed from known dimensions and constants are followed too, entry by entry:
//! `Shape`, `Concat`, `Gather`, `Slice`, `Unsqueeze`, `Reshape`, `Transpose`, `ConstantOfShape`,
//! integer casts and arithmetic. Traced exports build `expand` and `view` targets and pads that
//! way, and their ranks (and pads) follow from them.

use std::collections::HashMap;

use super::{Ir, NodeExt};
use crate::onnx::proto::{tensor_proto::DataType, GraphProto, NodeProto};
use crate::onnx::tensor::int64s;

type Shape = Vec<Option<u64>>;
/// Followed values of small int64 tensors, by name; an entry is `None` where it is not known
/// (a symbolic dimension read back), so that the others still are.
type Values = HashMap<String, Vec<Option<i64>>>;

/// Operators whose first output has the shape of their first input.
const SAME_AS_FIRST: &[&str] = &[
    "Abs",
    "Acos",
    "Asin",
    "Atan",
    "BatchNormalization",
    "Cast",
    "CastLike",
    "Ceil",
    "Celu",
    "Clip",
    "Cos",
    "Cosh",
    "CumSum",
    "DequantizeLinear",
    "Dropout",
    "Elu",
    "Erf",
    "Exp",
    "Floor",
    "Gelu",
    "HardSigmoid",
    "HardSwish",
    "Hardmax",
    "Identity",
    "InstanceNormalization",
    "IsInf",
    "IsNaN",
    "LayerNormalization",
    "LeakyRelu",
    "Log",
    "LogSoftmax",
    "LpNormalization",
    "Mish",
    "Neg",
    "Not",
    "QuantizeLinear",
    "Reciprocal",
    "Relu",
    "RotaryEmbedding",
    "Round",
    "Selu",
    "Shrink",
    "Sigmoid",
    "Sign",
    "Sin",
    "Sinh",
    "Softmax",
    "Softplus",
    "Softsign",
    "Sqrt",
    "Tan",
    "Tanh",
    "ThresholdedRelu",
    "Trilu",
    "RMSNormalization",
    "SimplifiedLayerNormalization",
];

/// Operators that broadcast their inputs against each other (numpy rules).
const BROADCASTING: &[&str] = &[
    "Add",
    "And",
    "BitShift",
    "Div",
    "Equal",
    "Greater",
    "GreaterOrEqual",
    "Less",
    "LessOrEqual",
    "Max",
    "Mean",
    "Min",
    "Mod",
    "Mul",
    "Or",
    "Pow",
    "PRelu",
    "Sub",
    "Sum",
    "Where",
    "Xor",
];

impl Ir {
    /// Fills in the shapes of values the graph leaves undeclared, in topological order.
    pub(super) fn infer_shapes(&mut self, g: &GraphProto) {
        let mut values = HashMap::new();
        for i in self.order.clone() {
            let node = &g.node[i];
            if !node.default_domain() {
                continue;
            }
            if let Some(v) = self.propagate(g, node, &values) {
                values.insert(node.output[0].clone(), v);
            }
            if node.op_type() == "Split" {
                self.split_shapes(g, node, &values);
                continue;
            }
            let Some(out) = node.output.first().filter(|o| !o.is_empty()) else { continue };
            let declared = self.shapes.get(out.as_str());
            if self.is_const(out) || declared.is_some_and(|d| d.iter().all(Option::is_some)) {
                continue;
            }
            // Entries declared as symbols (TorchScript's `unk__N`) take what inference knows; a
            // number declared stays, and a declared rank that differs keeps the declaration.
            match (self.infer(g, node, &values), self.shapes.get_mut(out.as_str())) {
                (Some(shape), None) => {
                    self.shapes.insert(out.clone(), shape);
                }
                (Some(shape), Some(known)) if known.len() == shape.len() => {
                    known.iter_mut().zip(shape).filter(|(k, _)| k.is_none()).for_each(|(k, s)| *k = s);
                }
                _ => {}
            }
        }
        values.retain(|_, v| v.iter().all(Option::is_some));
        self.computed = values.into_iter().map(|(k, v)| (k, v.into_iter().flatten().collect())).collect();
    }

    /// The value of a small int64 tensor that the graph computes from constants and known sizes
    /// (a `Pad`'s pads built with `ConstantOfShape`, `Reshape`, a reversed `Slice`), where every
    /// entry is known.
    pub fn computed_ints(&self, name: &str) -> Option<&[i64]> {
        self.computed.get(name).map(Vec::as_slice)
    }

    /// Every output of a Split: the input's shape, the split axis sized where the sizes are
    /// known (written, or an even split of a known dimension).
    fn split_shapes(&mut self, g: &GraphProto, node: &NodeProto, values: &Values) {
        let Some(x) = node.input.first().and_then(|s| self.known(g, s)) else { return };
        let Some(axis) = normalize(node.attr_i("axis", 0), x.len()) else { return };
        let n = node.output.len();
        let sizes = match node.input.get(1).filter(|s| !s.is_empty()) {
            Some(s) => self.ints(g, s, values),
            None => node.attr_ints("split"),
        };
        let even = x[axis].filter(|d| n > 0 && d % n as u64 == 0).map(|d| vec![(d / n as u64) as i64; n]);
        let sizes = sizes.filter(|s| s.len() == n).or(even);
        for (k, out) in node.output.iter().enumerate() {
            if out.is_empty() || self.shapes.contains_key(out) {
                continue;
            }
            let mut shape = x.clone();
            shape[axis] = sizes.as_ref().and_then(|s| u64::try_from(s[k]).ok());
            self.shapes.insert(out.clone(), shape);
        }
    }

    /// A value's shape: a constant's dims, or as declared or inferred so far.
    fn known(&self, g: &GraphProto, name: &str) -> Option<Shape> {
        if let Some(t) = self.const_tensor(g, name) {
            return Some(t.dims.iter().map(|&d| u64::try_from(d).ok()).collect());
        }
        self.shapes.get(name).cloned()
    }

    /// The value of a small int64 tensor, entry by entry: a constant, or one followed by
    /// [`Ir::propagate`].
    fn partial(&self, g: &GraphProto, name: &str, values: &Values) -> Option<Vec<Option<i64>>> {
        match self.const_tensor(g, name) {
            Some(t) => (t.data_type() == DataType::Int64 as i32 && t.external_data.is_empty() && t.dims.len() <= 1)
                .then(|| int64s(t).into_iter().map(Some).collect()),
            None => values.get(name).cloned(),
        }
    }

    /// The value of a small int64 tensor, where every entry is known.
    fn ints(&self, g: &GraphProto, name: &str, values: &Values) -> Option<Vec<i64>> {
        self.partial(g, name, values)?.into_iter().collect()
    }

    /// The value of a node's int64 output, where its inputs' values (or known dimensions) fix it.
    fn propagate(&self, g: &GraphProto, node: &NodeProto, values: &Values) -> Option<Vec<Option<i64>>> {
        let input = |slot: usize| node.input.get(slot).filter(|s| !s.is_empty());
        let value = |slot: usize| self.partial(g, input(slot)?, values);
        match node.op_type() {
            "Shape" => {
                let x = self.known(g, input(0)?)?;
                Some(x[shape_range(node, x.len())].iter().map(|d| d.and_then(|d| i64::try_from(d).ok())).collect())
            }
            "Concat" => {
                // A piece whose value is not followed still has a known length.
                let piece = |s: &String| {
                    self.partial(g, s, values).or_else(|| match self.known(g, s)?.as_slice() {
                        [Some(n)] => Some(vec![None; *n as usize]),
                        _ => None,
                    })
                };
                node.input.iter().map(piece).collect::<Option<Vec<_>>>().map(|v| v.concat())
            }
            "Unsqueeze" | "Squeeze" | "Identity" => value(0),
            "Cast" if [DataType::Int64 as i64, DataType::Int32 as i64].contains(&node.attr_i("to", 0)) => value(0),
            "Slice" if node.input.len() > 2 => {
                // One axis of a vector or a matrix (TorchScript's pads run through reversed rows).
                let data = value(0)?;
                let dims = match self.known(g, input(0)?) {
                    Some(d) => d.into_iter().map(|d| d.map(|d| d as usize)).collect::<Option<Vec<_>>>()?,
                    None => vec![data.len()],
                };
                let one = |slot: usize, default: i64| match input(slot) {
                    None => Some(default),
                    Some(s) => self.ints(g, s, values).filter(|b| b.len() == 1).map(|b| b[0]),
                };
                let axis = normalize(one(3, 0)?, dims.len())?;
                slice_rows(&data, &dims, axis, (one(1, 0)?, one(2, i64::MAX)?, one(4, 1)?))
            }
            "Reshape" => value(0),
            "Transpose" => {
                let data = value(0)?;
                let dims = self.known(g, input(0)?)?;
                let (&[Some(r), Some(c)], Some(&[1, 0])) = (&dims[..], node.attr_ints("perm").as_deref()) else {
                    return None;
                };
                let (r, c) = (r as usize, c as usize);
                (data.len() == r * c)
                    .then(|| (0..c).flat_map(|j| (0..r).map(move |i| (i, j))).map(|(i, j)| data[i * c + j]).collect())
            }
            "ConstantOfShape" => {
                let n = self
                    .ints(g, input(0)?, values)?
                    .iter()
                    .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))?;
                let fill = match node.attr("value").and_then(|a| a.t.as_ref()) {
                    None => 0,
                    Some(t) if t.data_type() == DataType::Int64 as i32 => *int64s(t).first()?,
                    Some(t) => crate::onnx::tensor::Values::of(t)
                        .ok()
                        .filter(|v| v.len() == 1)
                        .map(|v| v.get(0))
                        .filter(|v| v.fract() == 0.0 && v.abs() < 1e15)? as i64,
                };
                (n <= 1 << 16).then(|| vec![Some(fill); n])
            }
            "Add" | "Sub" | "Mul" | "Div" | "Mod" if node.attr_i("fmod", 0) == 0 => {
                let (a, b) = (value(0)?, value(1)?);
                let n = a.len().max(b.len());
                let at = |v: &[Option<i64>], i: usize| if v.len() == 1 { v[0] } else { v.get(i).copied().flatten() };
                (a.len() == b.len() || a.len() == 1 || b.len() == 1).then(|| {
                    (0..n)
                        .map(|i| {
                            let (x, y) = (at(&a, i)?, at(&b, i)?);
                            match node.op_type() {
                                "Add" => x.checked_add(y),
                                "Sub" => x.checked_sub(y),
                                "Mul" => x.checked_mul(y),
                                // The remainder takes the divisor's sign (TorchScript's `-1 % 3`).
                                "Mod" => x.checked_rem(y).map(|r| if r != 0 && (r < 0) != (y < 0) { r + y } else { r }),
                                _ => x.checked_div(y),
                            }
                        })
                        .collect()
                })
            }
            "Gather" if node.attr_i("axis", 0) == 0 => {
                let data = value(0)?;
                let at = |i: i64| data.get(normalize(i, data.len())?).copied();
                self.ints(g, input(1)?, values)?.into_iter().map(at).collect()
            }
            _ => None,
        }
    }

    fn infer(&self, g: &GraphProto, node: &NodeProto, values: &Values) -> Option<Shape> {
        let op = node.op_type();
        let ints_at = |slot: usize| self.ints(g, node.input.get(slot).filter(|s| !s.is_empty())?, values);
        let input = |slot: usize| node.input.get(slot).filter(|s| !s.is_empty()).and_then(|s| self.known(g, s));
        let x = input(0);
        // Axes, from an input since some opset, an attribute before.
        let axes = |slot: usize| ints_at(slot).or_else(|| node.attr_ints("axes"));
        let normalized =
            |axes: &[i64], rank: usize| -> Option<Vec<usize>> { axes.iter().map(|&a| normalize(a, rank)).collect() };
        if SAME_AS_FIRST.contains(&op) {
            return x;
        }
        if BROADCASTING.contains(&op) {
            let shapes: Option<Vec<Shape>> = node.input.iter().map(|s| self.known(g, s)).collect();
            return broadcast(&shapes?);
        }
        match op {
            "Shape" => Some(vec![Some(shape_range(node, x?.len()).len() as u64)]),
            "Size" => Some(vec![]),
            "ConstantOfShape" => match ints_at(0) {
                Some(dims) => Some(dims.into_iter().map(|d| u64::try_from(d).ok()).collect()),
                None => Some(vec![None; input(0)?.first().copied()?? as usize]),
            },
            "Range" => Some(vec![None]),
            "NonZero" => Some(vec![Some(x?.len() as u64), None]),
            "Gather" => {
                let (data, idx) = (x?, input(1)?);
                let axis = normalize(node.attr_i("axis", 0), data.len())?;
                Some([&data[..axis], &idx[..], &data[axis + 1..]].concat())
            }
            "GatherElements" => input(1),
            "Unsqueeze" => {
                let x = x?;
                let rank = x.len() + axes(1)?.len();
                let axes = normalized(&axes(1)?, rank)?;
                let mut rest = x.into_iter();
                (0..rank).map(|a| if axes.contains(&a) { Some(Some(1)) } else { rest.next() }).collect()
            }
            "Squeeze" => {
                let x = x?;
                let axes = normalized(&axes(1)?, x.len())?;
                Some(x.into_iter().enumerate().filter(|(a, _)| !axes.contains(a)).map(|(_, d)| d).collect())
            }
            "Transpose" => {
                let x = x?;
                let perm = node.attr_ints("perm").unwrap_or_else(|| (0..x.len() as i64).rev().collect());
                perm.iter().map(|&p| usize::try_from(p).ok().and_then(|p| x.get(p).copied())).collect()
            }
            "Reshape" => {
                let target = node.input.get(1).and_then(|s| self.partial(g, s, values));
                match target {
                    Some(t) => {
                        let copy = node.attr_i("allowzero", 0) == 0;
                        let mut dims: Shape = t
                            .iter()
                            .enumerate()
                            .map(|(i, &d)| match d? {
                                0 if copy => x.as_ref().and_then(|x| x.get(i).copied().flatten()),
                                d => u64::try_from(d).ok(),
                            })
                            .collect();
                        // The one -1 is what the others leave of the input's elements.
                        let total = x.as_ref().and_then(|x| x.iter().try_fold(1u64, |n, &d| n.checked_mul(d?)));
                        let others = dims
                            .iter()
                            .zip(&t)
                            .filter(|(_, &e)| e != Some(-1))
                            .try_fold(1u64, |n, (&d, _)| n.checked_mul(d?));
                        let free = t.iter().position(|&d| d == Some(-1));
                        if let (Some(free), Some(total), Some(others)) = (free, total, others) {
                            if others > 0 && total % others == 0 && t.iter().filter(|&&d| d == Some(-1)).count() == 1 {
                                dims[free] = Some(total / others);
                            }
                        }
                        // `flatten(k)` as TorchScript writes it: x's leading sizes read back, the
                        // rest merged into the -1, whatever the leading sizes are.
                        if let Some(k) = self.flattened_from(g, node) {
                            let x = x?;
                            let merged = x.get(k..).and_then(|r| r.iter().try_fold(1u64, |n, &d| n.checked_mul(d?)));
                            dims = x.get(..k)?.iter().copied().chain([merged]).collect();
                        }
                        Some(dims)
                    }
                    // A computed target of known length.
                    None => Some(vec![None; input(1)?.first().copied()?? as usize]),
                }
            }
            "Expand" => {
                let target = match node.input.get(1).and_then(|s| self.partial(g, s, values)) {
                    Some(t) => t.into_iter().map(|d| u64::try_from(d?).ok()).collect(),
                    None => vec![None; input(1)?.first().copied()?? as usize],
                };
                // An entry of 1 keeps the input's dimension: broadcasting, as for Add.
                broadcast(&[x?, target])
            }
            "Concat" => {
                let shapes: Option<Vec<Shape>> = node.input.iter().map(|s| self.known(g, s)).collect();
                let shapes = shapes?;
                let rank = shapes.first()?.len();
                if shapes.iter().any(|s| s.len() != rank) {
                    return None;
                }
                let axis = normalize(node.attr_i("axis", 0), rank)?;
                Some(
                    (0..rank)
                        .map(|a| {
                            if a == axis {
                                shapes.iter().try_fold(0u64, |n, s| n.checked_add(s[a]?))
                            } else {
                                shapes.iter().find_map(|s| s[a])
                            }
                        })
                        .collect(),
                )
            }
            "Slice" if values.contains_key(&node.output[0]) => {
                // A followed value: the sliced axis holds what the others leave of its entries.
                let x = x?;
                let axis = normalize(ints_at(3).and_then(|a| a.first().copied()).unwrap_or(0), x.len())?;
                let others =
                    x.iter().enumerate().filter(|&(a, _)| a != axis).try_fold(1u64, |n, (_, &d)| n.checked_mul(d?))?;
                let n = values[&node.output[0]].len() as u64;
                let mut dims = x;
                dims[axis] = (others > 0 && n.is_multiple_of(others)).then_some(n / others);
                Some(dims)
            }
            "Slice" => {
                let x = x?;
                // Computed bounds still keep the rank.
                let bounds = ints_at(1).zip(ints_at(2));
                let known = bounds.and_then(|(starts, ends)| sliced(&x, &starts, &ends, ints_at(3), ints_at(4)));
                Some(known.unwrap_or_else(|| vec![None; x.len()]))
            }
            "Tile" => {
                // Each axis repeated: sizes known where the input's and the repeat are.
                let x = x?;
                let repeats = ints_at(1).filter(|r| r.len() == x.len());
                let times = |a: usize| repeats.as_ref().and_then(|r| u64::try_from(r[a]).ok());
                Some(x.iter().enumerate().map(|(a, d)| d.zip(times(a)).and_then(|(d, t)| d.checked_mul(t))).collect())
            }
            "Pad" | "Resize" | "Upsample" | "ReverseSequence" => {
                // Same rank; the moved axes' sizes are not tracked.
                Some(vec![None; x?.len()])
            }
            "Flatten" => Some(vec![None, None]),
            "Gemm" => Some(vec![None, None]),
            "MatMul" => {
                let (a, b) = (x?, input(1)?);
                if a.len() < 2 || b.len() < 2 {
                    return None;
                }
                let batch = broadcast(&[a[..a.len() - 2].to_vec(), b[..b.len() - 2].to_vec()])?;
                Some([batch, vec![a[a.len() - 2], b[b.len() - 1]]].concat())
            }
            "Conv" | "MaxPool" | "AveragePool" | "LpPool" => {
                let x = x?;
                Some(windowed(node, &x, input(1).as_deref()).unwrap_or_else(|| vec![None; x.len()]))
            }
            "ConvTranspose" => Some(vec![None; x?.len()]),
            "GlobalAveragePool" | "GlobalMaxPool" => {
                let x = x?;
                let n = x.len().min(2);
                Some([&x[..n], &vec![Some(1); x.len() - n][..]].concat())
            }
            _ if op.starts_with("Reduce") || op == "ArgMax" || op == "ArgMin" => {
                let x = x?;
                let keep = node.attr_i("keepdims", 1) != 0;
                let axes = match op {
                    "ArgMax" | "ArgMin" => Some(vec![node.attr_i("axis", 0)]),
                    _ if node.input.get(1).is_none_or(|s| s.is_empty()) && node.attr("axes").is_none() => Some(vec![]),
                    _ => axes(1),
                };
                let Some(axes) = axes.and_then(|a| normalized(&a, x.len())) else {
                    return keep.then(|| vec![None; x.len()]);
                };
                // No axes: every axis, or none at all with `noop_with_empty_axes`.
                let axes = match (axes.is_empty(), node.attr_i("noop_with_empty_axes", 0) != 0) {
                    (true, true) => return Some(x),
                    (true, false) => (0..x.len()).collect(),
                    _ => axes,
                };
                let kept = x.iter().enumerate().filter(|(i, _)| keep || !axes.contains(i));
                Some(kept.map(|(i, &d)| if axes.contains(&i) { Some(1) } else { d }).collect())
            }
            _ => None,
        }
    }
}

impl Ir {
    /// `k` when `reshape`'s target is `Concat(Slice(Shape(x), [0], [e]), [-1])` of its own input
    /// `x`, `k` the leading sizes kept (`e` from the end if negative).
    fn flattened_from(&self, g: &GraphProto, reshape: &NodeProto) -> Option<usize> {
        let producer = |name: &str| self.producer.get(name).map(|&n| &g.node[n]);
        let ints = |name: &str| self.const_tensor(g, name).map(int64s);
        let concat = producer(reshape.input.get(1)?).filter(|c| c.op_type() == "Concat")?;
        let [leading, minus_one] = &concat.input[..] else { return None };
        let slice = producer(leading).filter(|s| s.op_type() == "Slice" && (3..=4).contains(&s.input.len()))?;
        let shape = producer(slice.input.first()?).filter(|s| s.op_type() == "Shape" && s.attribute.is_empty())?;
        let x = reshape.input.first()?;
        let along_0 = slice.input.get(3).is_none_or(|a| ints(a).is_some_and(|a| a == [0]));
        let plain =
            ints(minus_one)? == [-1] && ints(&slice.input[1])? == [0] && along_0 && shape.input.first() == Some(x);
        let end = *ints(&slice.input[2])?.first()?;
        let rank = self.known(g, x)?.len() as i64;
        let k = if end < 0 { end + rank } else { end.min(rank) };
        plain.then_some(()).and(usize::try_from(k).ok())
    }
}

/// `data` (row-major, `dims`) sliced along `axis` from `start` to `end` by `step`, as ONNX's
/// Slice clamps them.
fn slice_rows(
    data: &[Option<i64>],
    dims: &[usize],
    axis: usize,
    (start, end, step): (i64, i64, i64),
) -> Option<Vec<Option<i64>>> {
    let n = *dims.get(axis)? as i64;
    if step == 0 || dims.iter().product::<usize>() != data.len() {
        return None;
    }
    let wrap = |v: i64| if v < 0 { v.saturating_add(n) } else { v };
    let picked: Vec<i64> = if step > 0 {
        let (s, e) = (wrap(start).clamp(0, n), wrap(end).clamp(0, n));
        (s..e).step_by(step as usize).collect()
    } else {
        let (s, e) = (wrap(start).clamp(0, n - 1), wrap(end).clamp(-1, n - 1));
        (e + 1..=s).rev().step_by(step.unsigned_abs() as usize).collect()
    };
    let inner: usize = dims[axis + 1..].iter().product();
    let outer: usize = dims[..axis].iter().product();
    let mut out = Vec::with_capacity(outer * picked.len() * inner);
    for o in 0..outer {
        for &k in &picked {
            let at = (o * n as usize + k as usize) * inner;
            out.extend_from_slice(&data[at..at + inner]);
        }
    }
    Some(out)
}

/// The output of a `Slice` (opset 10 on: bounds as inputs) of constant bounds: each sliced axis
/// of known size clamped as ONNX says, the others as they were.
fn sliced(
    x: &[Option<u64>],
    starts: &[i64],
    ends: &[i64],
    axes: Option<Vec<i64>>,
    steps: Option<Vec<i64>>,
) -> Option<Shape> {
    let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return None;
    }
    let mut out = x.to_vec();
    for i in 0..starts.len() {
        let a = normalize(axes[i], x.len())?;
        let step = steps[i];
        let Some(n) = x[a].and_then(|n| i64::try_from(n).ok()) else {
            out[a] = None;
            continue;
        };
        if step == 0 {
            return None;
        }
        let at = |v: i64, lo: i64, hi: i64| (if v < 0 { v.saturating_add(n) } else { v }).clamp(lo, hi);
        let count = if step > 0 {
            let (b, e) = (at(starts[i], 0, n), at(ends[i], 0, n));
            ((e - b).max(0) as u64).div_ceil(step as u64)
        } else {
            let (b, e) = (at(starts[i], -1, n - 1), at(ends[i], -1, n - 1));
            ((b - e).max(0) as u64).div_ceil(step.unsigned_abs())
        };
        out[a] = Some(count);
    }
    Some(out)
}

/// The output of a convolution or pooling over `x` (`w`: a Conv's weight), by ONNX's formulas
/// where every size they need is known: the batch, the channels (the weight's count, or x's),
/// and each spatial size from its kernel, stride, dilation and padding. A ceil-mode pooling is
/// left unknown (its last window's rule varies between runtimes' versions).
fn windowed(node: &NodeProto, x: &[Option<u64>], w: Option<&[Option<u64>]>) -> Option<Shape> {
    let spatial = x.len().checked_sub(2).filter(|&n| n > 0)?;
    let conv = node.op_type() == "Conv";
    let kernel: Vec<u64> = match node.attr_ints("kernel_shape") {
        Some(k) => k.iter().map(|&k| u64::try_from(k).ok()).collect::<Option<_>>()?,
        None if conv => w?.get(2..)?.iter().copied().collect::<Option<_>>()?,
        None => return None,
    };
    let ints = |name: &str, n: usize, default: u64| -> Option<Vec<u64>> {
        match node.attr_ints(name) {
            Some(v) if v.len() == n => v.iter().map(|&v| u64::try_from(v).ok()).collect(),
            Some(_) => None,
            None => Some(vec![default; n]),
        }
    };
    let (strides, dilations, pads) =
        (ints("strides", spatial, 1)?, ints("dilations", spatial, 1)?, ints("pads", 2 * spatial, 0)?);
    if kernel.len() != spatial || node.attr_i("ceil_mode", 0) != 0 || strides.contains(&0) {
        return None;
    }
    let channels = if conv { w?.first().copied()? } else { x[1] };
    let auto_pad = node.attr_s("auto_pad", "NOTSET");
    let size = |i: usize| -> Option<u64> {
        let (input, s) = (x[2 + i]?, strides[i]);
        let window = (kernel[i].checked_sub(1)?).checked_mul(dilations[i])? + 1;
        match auto_pad.as_str() {
            "SAME_UPPER" | "SAME_LOWER" => Some(input.div_ceil(s)),
            "VALID" => Some(input.checked_sub(window)? / s + 1),
            "NOTSET" => Some((input + pads[i] + pads[spatial + i]).checked_sub(window)? / s + 1),
            _ => None,
        }
    };
    Some([vec![x[0], channels], (0..spatial).map(size).collect()].concat())
}

/// The dimensions a `Shape` node returns of a rank-`rank` value (its `start` and `end`, clamped).
fn shape_range(node: &NodeProto, rank: usize) -> std::ops::Range<usize> {
    let r = rank as i64;
    let clamp = |v: i64| if v < 0 { (v + r).max(0) } else { v.min(r) } as usize;
    let (start, end) = (clamp(node.attr_i("start", 0)), clamp(node.attr_i("end", r)));
    start..end.max(start)
}

/// Axis `a` of a rank-`rank` value, counted from the start.
pub(crate) fn normalize(a: i64, rank: usize) -> Option<usize> {
    usize::try_from(if a < 0 { a + rank as i64 } else { a }).ok().filter(|&a| a < rank)
}

/// Numpy broadcasting of declared shapes: the rank is the largest; a dimension is known when
/// some operand has it above 1 (the others must be 1 or the same), or when all are 1.
fn broadcast(shapes: &[Shape]) -> Option<Shape> {
    let rank = shapes.iter().map(Vec::len).max()?;
    let dim = |a: usize| {
        let dims: Vec<Option<u64>> =
            shapes.iter().filter_map(|s| (a + s.len()).checked_sub(rank).map(|i| s[i])).collect();
        dims.iter().flatten().copied().find(|&d| d != 1).or_else(|| dims.iter().all(|&d| d == Some(1)).then_some(1))
    };
    Some((0..rank).map(dim).collect())
}

#[cfg(test)]
mod tests {
    use super::super::Ir;
    use crate::onnx::build::{attr_int, attr_ints, f32_tensor, int64_tensor, node, value_info};
    use crate::onnx::proto::{tensor_proto::DataType, GraphProto};

    fn graph(nodes: Vec<crate::onnx::proto::NodeProto>, inits: Vec<crate::onnx::proto::TensorProto>) -> GraphProto {
        GraphProto {
            node: nodes,
            initializer: inits,
            input: vec![value_info("ids", DataType::Int64, &[None, None])],
            ..Default::default()
        }
    }

    fn scalar(name: &str, v: i64) -> crate::onnx::proto::TensorProto {
        crate::onnx::proto::TensorProto { dims: vec![], ..int64_tensor(name, &[v]) }
    }

    /// TorchScript's `buffer.expand(B, T)`: the target is `Where(Equal(s, -1), ones, s)` of a
    /// shape vector `s` built from dimensions. Its length, and so the rank, comes from the
    /// values of `Shape` followed through `Reshape(.., [-1])` and `ConstantOfShape`.
    #[test]
    fn a_traced_expand_target_gives_the_rank() {
        let g = graph(
            vec![
                node("Shape", "s", &["ids"], &["shape"], vec![]),
                node("Gather", "g", &["shape", "zero"], &["b"], vec![attr_int("axis", 0)]),
                node("Unsqueeze", "u", &["b", "axes"], &["b1"], vec![]),
                node("Concat", "c", &["b1", "minus1"], &["bt"], vec![attr_int("axis", 0)]),
                node("Reshape", "r", &["bt", "minus1"], &["s"], vec![]),
                node("Shape", "s2", &["s"], &["len"], vec![]),
                node("ConstantOfShape", "ones", &["len"], &["o"], vec![]),
                node("Equal", "e", &["s", "minus1"], &["eq"], vec![]),
                node("Where", "w", &["eq", "o", "s"], &["target"], vec![]),
                node("Expand", "x", &["buffer", "target"], &["tt"], vec![]),
                node("Gather", "emb", &["table", "tt"], &["y"], vec![]),
            ],
            vec![
                scalar("zero", 0),
                int64_tensor("axes", &[0]),
                int64_tensor("minus1", &[-1]),
                crate::onnx::proto::TensorProto { dims: vec![1, 16], ..int64_tensor("buffer", &[0; 16]) },
                f32_tensor("table", &[2, 12], &[0.0; 24]),
            ],
        );
        let ir = Ir::build(&g, 17).unwrap();
        assert_eq!(ir.shape("s"), Some(&[Some(2)][..]));
        assert_eq!(ir.shape("o"), Some(&[Some(2)][..]));
        assert_eq!(ir.shape("tt"), Some(&[None, Some(16)][..]));
        assert_eq!(ir.shape("y"), Some(&[None, Some(16), Some(12)][..]));
    }

    /// TorchScript's `F.pad(x, [1, 1, 1, 1])` on a 4-D map: pads as ONNX wants them, computed.
    #[test]
    fn torchscript_pads_are_computed_to_their_values() {
        let zeros = crate::onnx::proto::AttributeProto {
            name: Some("value".into()),
            r#type: Some(crate::onnx::proto::attribute_proto::AttributeType::Tensor as i32),
            t: Some(int64_tensor("", &[0])),
            ..Default::default()
        };
        let g = graph(
            vec![
                node("ConstantOfShape", "z", &["four"], &["zeros"], vec![zeros]),
                node("Concat", "c", &["ones", "zeros"], &["all"], vec![attr_int("axis", 0)]),
                node("Reshape", "r", &["all", "pairs"], &["rows"], vec![]),
                node("Slice", "s", &["rows", "minus1", "far", "zero", "minus1"], &["reversed"], vec![]),
                node("Transpose", "t", &["reversed"], &["columns"], vec![attr_ints("perm", &[1, 0])]),
                node("Reshape", "f", &["columns", "minus1"], &["flat"], vec![]),
                node("Cast", "k", &["flat"], &["pads"], vec![attr_int("to", DataType::Int64 as i64)]),
            ],
            vec![
                int64_tensor("four", &[4]),
                int64_tensor("ones", &[1, 2, 3, 4]),
                int64_tensor("pairs", &[-1, 2]),
                int64_tensor("minus1", &[-1]),
                int64_tensor("far", &[-i64::MAX]),
                int64_tensor("zero", &[0]),
            ],
        );
        let ir = Ir::build(&g, 17).unwrap();
        // Rows (1, 2), (3, 4), (0, 0), (0, 0) reversed, then columns: begins, then ends.
        assert_eq!(ir.computed_ints("pads"), Some(&[0, 0, 3, 1, 0, 0, 4, 2][..]));
        assert_eq!(ir.shape("rows"), Some(&[Some(4), Some(2)][..]));
    }

    /// A `Slice` of constant bounds has its sizes (negative starts, clamped ends, a negative step);
    /// one of computed bounds (ALBERT's `position_ids[:, :seq]`) still has its rank, which the
    /// `Shape` reads of other axes need.
    #[test]
    fn slices_keep_their_rank_and_constant_bounds_give_their_sizes() {
        let mut g = graph(
            vec![
                node("Slice", "a", &["x", "starts", "ends", "axes", "steps"], &["sliced"], vec![]),
                node("Shape", "s", &["x"], &["shape"], vec![]),
                node("Gather", "g", &["shape", "zero"], &["n"], vec![]),
                node("Unsqueeze", "u", &["n", "axes0"], &["end"], vec![]),
                node("Slice", "b", &["x", "start0", "end", "axes0"], &["computed"], vec![]),
            ],
            vec![
                int64_tensor("starts", &[-3, 9]),
                int64_tensor("ends", &[i64::MAX, -i64::MAX]),
                int64_tensor("axes", &[1, 2]),
                int64_tensor("steps", &[1, -2]),
                scalar("zero", 0),
                int64_tensor("axes0", &[0]),
                int64_tensor("start0", &[0]),
            ],
        );
        g.input = vec![value_info("x", DataType::Float, &[None, Some(5), Some(10)])];
        let ir = Ir::build(&g, 17).unwrap();
        assert_eq!(ir.shape("sliced"), Some(&[None, Some(3), Some(5)][..]));
        assert_eq!(ir.shape("computed"), Some(&[None, None, None][..]));
    }

    #[test]
    fn declared_shapes_win_and_unknown_operators_say_nothing() {
        let mut g = graph(
            vec![
                node("Relu", "a", &["ids"], &["r"], vec![]),
                node("NoSuchOp", "b", &["r"], &["n"], vec![]),
                node("Relu", "c", &["n"], &["m"], vec![]),
                node("Transpose", "t", &["r"], &["rt"], vec![attr_ints("perm", &[1, 0])]),
            ],
            vec![],
        );
        g.value_info.push(value_info("r", DataType::Int64, &[Some(3), None]));
        let ir = Ir::build(&g, 17).unwrap();
        assert_eq!(ir.shape("r"), Some(&[Some(3), None][..]));
        assert_eq!(ir.shape("n"), None);
        assert_eq!(ir.shape("m"), None);
        assert_eq!(ir.shape("rt"), Some(&[None, Some(3)][..]));
    }

    #[test]
    fn broadcasting_knows_a_dimension_only_when_an_operand_fixes_it() {
        let b = |shapes: &[&[Option<u64>]]| super::broadcast(&shapes.iter().map(|s| s.to_vec()).collect::<Vec<_>>());
        assert_eq!(b(&[&[None, Some(4)], &[Some(4)]]), Some(vec![None, Some(4)]));
        assert_eq!(b(&[&[Some(1), None], &[Some(3), Some(1)]]), Some(vec![Some(3), None]));
        assert_eq!(b(&[&[Some(1)], &[Some(1), Some(1)]]), Some(vec![Some(1), Some(1)]));
    }
}
