//! Quantized weights (ONNX Runtime's QDQ format): `DequantizeLinear` of stored integers.
//!
//! The rules read float weights. ONNX Runtime's quantizer stores each weight as integers with a
//! scale and zero point and dequantizes it in the graph, `W = (Wq - zp) * s`, per tensor or per
//! output channel. Teaching every rule a second storage form would spread quantization over
//! every operator, so the storage form is undone around the analysis instead, as `fold.rs`
//! undoes weights computed from weights:
//!
//! - [`dequantize`]: every `DequantizeLinear` of stored constants becomes a float initializer
//!   named as its output, holding what the runtime computes (`(q - zp)` as float32, times the
//!   scale). The integers stay in the graph, unread, until [`requantize`].
//! - The model is planned and rewritten as a float model.
//! - [`requantize`]: every float tensor made from a dequantized one is stored quantized again.
//!   Unchanged or sliced (a [`RowSlice`] of the floats: rows and columns dropped), it becomes the
//!   same slice of the integers, with the scales and zero points of the kept entries where they
//!   are per axis: the same numbers, bit for bit. New values (a bias that absorbed the constants
//!   of removed channels) are quantized again only where every value has an exact integer form
//!   at one of the original scales (the round trip is checked); otherwise the tensor stays
//!   float, which is exact but larger per element, and the report names it.
//!
//! Activations' `QuantizeLinear`/`DequantizeLinear` pairs are operators like any other
//! (`ops/quant.rs`). Blocked quantization (opset 21's `block_size`), 4-bit and float8 integers
//! and 16-bit float scales are left as they are: the weights they make stay opaque.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use super::proto::{tensor_proto::DataType, GraphProto, NodeProto, TensorProto};
use super::tensor::{numel, FloatType, RowSlice, Values};
use crate::ir::NodeExt;
use crate::rewrite::{drop_unread, Applied, Names};

/// The integer types a weight is stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Int {
    I8,
    U8,
    I16,
    U16,
    I32,
}

impl Int {
    fn from_onnx(data_type: i32) -> Option<Int> {
        Some(match DataType::try_from(data_type).ok()? {
            DataType::Int8 => Int::I8,
            DataType::Uint8 => Int::U8,
            DataType::Int16 => Int::I16,
            DataType::Uint16 => Int::U16,
            DataType::Int32 => Int::I32,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Int::I8 | Int::U8 => 1,
            Int::I16 | Int::U16 => 2,
            Int::I32 => 4,
        }
    }

    fn range(self) -> (i64, i64) {
        match self {
            Int::I8 => (i8::MIN.into(), i8::MAX.into()),
            Int::U8 => (0, u8::MAX.into()),
            Int::I16 => (i16::MIN.into(), i16::MAX.into()),
            Int::U16 => (0, u16::MAX.into()),
            Int::I32 => (i32::MIN.into(), i32::MAX.into()),
        }
    }

    fn get(self, raw: &[u8], i: usize) -> i64 {
        let b = &raw[i * self.size()..];
        match self {
            Int::I8 => (b[0] as i8).into(),
            Int::U8 => b[0].into(),
            Int::I16 => i16::from_le_bytes([b[0], b[1]]).into(),
            Int::U16 => u16::from_le_bytes([b[0], b[1]]).into(),
            Int::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]).into(),
        }
    }

    /// Appends `v`, which is in range.
    fn put(self, v: i64, out: &mut Vec<u8>) {
        match self {
            Int::I8 | Int::U8 => out.push(v as u8),
            Int::I16 | Int::U16 => out.extend_from_slice(&(v as u16).to_le_bytes()),
            Int::I32 => out.extend_from_slice(&(v as i32).to_le_bytes()),
        }
    }
}

/// Bytes per element of the integer types weights are stored in.
pub(crate) fn int_size(data_type: i32) -> Option<u64> {
    Int::from_onnx(data_type).map(|t| t.size() as u64)
}

/// An integer tensor's elements as packed little-endian bytes (writers that use `int32_data`
/// for small tensors are packed here), or `None` where they do not fill its shape.
fn int_bytes(t: &TensorProto, ty: Int) -> Option<Bytes> {
    let n = usize::try_from(numel(&t.dims)?).ok()?;
    match t.raw_data.as_ref().filter(|r| !r.is_empty() || n == 0) {
        Some(raw) => (raw.len() == n * ty.size()).then(|| raw.clone()),
        None if t.int32_data.len() == n => {
            let mut out = Vec::with_capacity(n * ty.size());
            t.int32_data.iter().for_each(|&v| ty.put(v.into(), &mut out));
            Some(out.into())
        }
        None => None,
    }
}

/// How the runtime dequantizes one element: `(q - zp)` converted to float32, times the scale.
pub(crate) fn dequantized(q: i64, zp: i64, scale: f32) -> f32 {
    (q - zp) as f32 * scale
}

/// What a `QuantizeLinear` stores for `x`, `saturate(round_half_even(x / scale) + zp)` in float32,
/// where the runtimes agree on it: ONNX Runtime divides by the scale, tract multiplies by its
/// reciprocal, and the two can round to different integers. `None` there, and for a non-finite
/// `x` (or scale).
pub(crate) fn quantize(x: f32, scale: f32, zp: i64, ty: Int) -> Option<i64> {
    let (lo, hi) = ty.range();
    let q = |y: f32| (y.round_ties_even() + zp as f32).clamp(lo as f32, hi as f32);
    let divided = q(x / scale);
    (x.is_finite() && divided == q(x * (1.0 / scale))).then_some(divided as i64)
}

/// A quantizer's zero point where it is one stored integer: its type and value. Absent, it is 0
/// of the type `output_dtype` names (uint8 by default, and always for a `DequantizeLinear`, which
/// has no such attribute).
pub(crate) fn scalar_zero_point<'g>(
    node: &NodeProto,
    constant: impl Fn(&str) -> Option<&'g TensorProto>,
) -> Option<(Int, i64)> {
    match node.input.get(2).filter(|z| !z.is_empty()) {
        Some(z) => {
            let t = constant(z).filter(|t| numel(&t.dims) == Some(1))?;
            let ty = Int::from_onnx(t.data_type())?;
            Some((ty, ty.get(&int_bytes(t, ty)?, 0)))
        }
        None => match node.attr_i("output_dtype", 0) as i32 {
            0 => Some((Int::U8, 0)),
            t => Some((Int::from_onnx(t)?, 0)),
        },
    }
}

/// The integer that stores `v` at this scale and zero point, if one does: exactly (the round
/// trip gives `v` back, bit for bit), or for an int32 bias, up to float rounding.
///
/// A bias is stored at the scale `s_x * s_w` of the product it is added to. The constant of a
/// removed channel is a quantized activation `(q_c - zp_x) * s_x` and its weights are
/// `(q_w - zp_w) * s_w`, so what a bias absorbs is an integer multiple of that scale, which the integer
/// kernels (ONNX Runtime's fused QLinear operators) add exactly; the float fold only approximates
/// it, to a few units in the last place of its terms. Rounding it back to the integer is what
/// those kernels compute; a float bias would stop them fusing, and they would round differently.
fn quantized(v: f32, zp: i64, scale: f32, ty: Int) -> Option<i64> {
    if !v.is_finite() || !scale.is_finite() || scale == 0.0 {
        return None;
    }
    let steps = v as f64 / scale as f64;
    let q = steps.round_ties_even() as i64 + zp;
    let (lo, hi) = ty.range();
    let exact = match ty {
        Int::I32 => (steps - (q - zp) as f64).abs() <= BIAS_ROUNDING * (q - zp).abs().max(1 << 12) as f64,
        _ => dequantized(q, zp, scale) == v,
    };
    ((lo..=hi).contains(&q) && exact).then_some(q)
}

/// How far from an integer number of steps an int32 bias may be, relative to that number (and
/// at least 2^-8 steps): 2^-20, sixteen times the float32 rounding of the bias and of its scale,
/// and far below a step. A fold whose terms cancel to much less than their size can miss it; the
/// bias then stays float (exact, but unfused).
const BIAS_ROUNDING: f64 = 1.0 / 1_048_576.0;

/// Along axis `a` of a tensor of `dims`: the elements between two entries (the stride), and the
/// entries.
fn along(dims: &[i64], a: usize) -> (usize, usize) {
    (dims[a + 1..].iter().product::<i64>() as usize, dims[a] as usize)
}

/// A stored weight and how the graph dequantized it.
struct Quantized {
    /// The `DequantizeLinear` node (its name, domain and attributes are kept).
    node: NodeProto,
    ints: Bytes,
    ty: Int,
    dims: Vec<i64>,
    q: String,
    scale: String,
    zero_point: Option<String>,
    scales: Vec<f32>,
    zero_points: Vec<i64>,
    /// Per-axis quantization's axis (`None`: one scale for the whole tensor).
    axis: Option<usize>,
    /// The dequantized floats the analysis reads.
    floats: Bytes,
}

impl Quantized {
    /// Reads a `DequantizeLinear` whose operands are all stored, in a form this module writes
    /// back exactly.
    fn parse<'g>(node: &NodeProto, constant: impl Fn(&str) -> Option<&'g TensorProto>) -> Option<Quantized> {
        if node.attr_i("block_size", 0) != 0 || !(2..=3).contains(&node.input.len()) {
            return None;
        }
        let q_t = constant(&node.input[0])?;
        let ty = Int::from_onnx(q_t.data_type())?;
        let ints = int_bytes(q_t, ty)?;
        let scale_t = constant(&node.input[1])?;
        let scale_v = Values::of(scale_t).ok().filter(|v| v.dtype == FloatType::F32)?;
        let scales: Vec<f32> = (0..scale_v.len()).map(|i| scale_v.get(i) as f32).collect();
        let zero_point = node.input.get(2).filter(|s| !s.is_empty());
        let zero_points: Vec<i64> = match zero_point {
            None => vec![0; scales.len()],
            Some(zp) => {
                let t = constant(zp)?;
                if Int::from_onnx(t.data_type()) != Some(ty) {
                    return None;
                }
                let raw = int_bytes(t, ty)?;
                (0..raw.len() / ty.size()).map(|i| ty.get(&raw, i)).collect()
            }
        };
        if zero_points.len() != scales.len() || scales.is_empty() {
            return None;
        }
        let rank = q_t.dims.len() as i64;
        let axis = match scales.len() {
            1 => None,
            n => {
                let a = node.attr_i("axis", 1);
                let a = usize::try_from(if a < 0 { a + rank } else { a }).ok().filter(|&a| a < rank as usize)?;
                Some((scale_t.dims.len() == 1 && q_t.dims[a] as usize == n).then_some(a)?)
            }
        };
        let (stride, n) = axis.map_or((1, 1), |a| along(&q_t.dims, a));
        let count = ints.len() / ty.size();
        let mut floats = Vec::with_capacity(count * 4);
        for i in 0..count {
            let k = (i / stride) % n;
            floats.extend_from_slice(&dequantized(ty.get(&ints, i), zero_points[k], scales[k]).to_le_bytes());
        }
        Some(Quantized {
            node: node.clone(),
            ints,
            ty,
            dims: q_t.dims.clone(),
            q: node.input[0].clone(),
            scale: node.input[1].clone(),
            zero_point: zero_point.cloned(),
            scales,
            zero_points,
            axis,
            floats: floats.into(),
        })
    }

    /// Which original entry along the quantization axis each entry of a slice of the floats
    /// is, or `None` where the slice does not keep whole entries along it.
    fn entries_of(&self, slice: &RowSlice, dims: &[i64]) -> Option<Vec<usize>> {
        let Some(a) = self.axis else { return Some(vec![0]) };
        if dims.len() != self.dims.len() {
            return None;
        }
        let ((stride, n), (new_stride, m)) = (along(&self.dims, a), along(dims, a));
        let mut map = vec![None; m];
        for (i, old) in slice.source_indices().enumerate() {
            let (k, j) = ((i / new_stride) % m, (old / stride) % n);
            match map[k] {
                None => map[k] = Some(j),
                Some(seen) if seen == j => {}
                Some(_) => return None,
            }
        }
        map.into_iter().collect()
    }

    /// The integers that store `values` at the original scales and zero points, entry `k`
    /// along the quantization axis at the original entry `entries[k]`; `None` where a value has
    /// no integer form there.
    fn requantized(&self, values: &Values, dims: &[i64], entries: &[usize]) -> Option<Vec<u8>> {
        let (stride, m) = match self.axis {
            None => (values.len().max(1), 1),
            Some(a) if dims.len() == self.dims.len() => along(dims, a),
            Some(_) => return None,
        };
        if values.dtype != FloatType::F32 || entries.len() != m {
            return None;
        }
        let mut ints = Vec::with_capacity(values.len() * self.ty.size());
        for i in 0..values.len() {
            let j = entries[(i / stride) % m];
            let q = quantized(values.get(i) as f32, self.zero_points[j], self.scales[j], self.ty)?;
            self.ty.put(q, &mut ints);
        }
        Some(ints)
    }
}

/// The dequantized weights of a graph, by the name of the float tensor that replaced each.
#[derive(Default)]
pub(crate) struct Dequantized(HashMap<String, Quantized>);

impl Dequantized {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Replaces every `DequantizeLinear` of stored constants by a float initializer of its values.
pub(crate) fn dequantize(g: &mut GraphProto) -> Dequantized {
    let mut weights = HashMap::new();
    if !g.node.iter().any(|n| matches!(n.op_type(), "QuantizeLinear" | "DequantizeLinear")) {
        return Dequantized(weights);
    }
    // ONNX Runtime quantizes some weights twice over (a `QuantizeLinear` of a dequantized tensor
    // that an `Identity` shares): each round makes constant what the last one left computed.
    while quantize_constants(g) | dequantize_stored(g, &mut weights) {}
    Dequantized(weights)
}

/// One round of [`dequantize`]: says whether anything changed.
fn dequantize_stored(g: &mut GraphProto, weights: &mut HashMap<String, Quantized>) -> bool {
    let stored = constants(g);
    let outputs: HashSet<&str> = g.output.iter().filter_map(|o| o.name.as_deref()).collect();
    let mut found = vec![];
    for (n, node) in g.node.iter().enumerate() {
        if node.op_type() != "DequantizeLinear" || !node.domain().is_empty() || node.output.len() != 1 {
            continue;
        }
        if outputs.contains(node.output[0].as_str()) {
            continue;
        }
        if let Some(w) = Quantized::parse(node, |name| stored.get(name).copied()) {
            found.push((n, w));
        }
    }
    if found.is_empty() {
        return false;
    }
    super::fold::remove_nodes(g, &found.iter().map(|(n, _)| *n).collect());
    for (_, w) in found {
        let name = w.node.output[0].clone();
        g.initializer.push(TensorProto {
            name: Some(name.clone()),
            dims: w.dims.clone(),
            data_type: Some(DataType::Float as i32),
            raw_data: Some(w.floats.clone()),
            ..Default::default()
        });
        weights.insert(name, w);
    }
    true
}

/// The graph's constants by name: initializers that no graph input overrides, `Constant`
/// nodes, and the `Identity` chains exporters write to share one tensor under two names.
fn constants(g: &GraphProto) -> HashMap<&str, &TensorProto> {
    let shadowed: HashSet<&str> = g.input.iter().filter_map(|i| i.name.as_deref()).collect();
    let mut stored: HashMap<&str, &TensorProto> = g
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref().filter(|n| !shadowed.contains(n)).map(|n| (n, t)))
        .collect();
    // Nodes come in topological order: an alias's source is known before the alias.
    for node in g.node.iter().filter(|n| n.domain().is_empty() && n.output.len() == 1) {
        let source = match node.op_type() {
            "Constant" => node.attr("value").and_then(|a| a.t.as_ref()),
            "Identity" => node.input.first().and_then(|i| stored.get(i.as_str()).copied()),
            _ => None,
        };
        if let Some(t) = source {
            stored.insert(node.output[0].as_str(), t);
        }
    }
    stored
}

/// Stores the integers of every `QuantizeLinear` of a stored float tensor (ONNX Runtime's
/// quantizer writes biases and norm weights so, for a `DequantizeLinear` to read back), as the
/// runtime would compute them once: `dequantize` then sees the usual stored weight, and the
/// output stores integers where it stored floats and their quantizer.
///
/// Runtimes divide by the scale (ONNX Runtime) or multiply by its reciprocal (tract); a tensor
/// where the two round any element differently is left as it is.
fn quantize_constants(g: &mut GraphProto) -> bool {
    let outputs: HashSet<String> = g.output.iter().filter_map(|o| o.name.clone()).collect();
    let stored = constants(g);
    let scalar = |name: Option<&String>| -> Option<&TensorProto> {
        stored.get(name?.as_str()).copied().filter(|t| numel(&t.dims) == Some(1))
    };
    let mut folded = vec![];
    for (n, node) in g.node.iter().enumerate() {
        if node.op_type() != "QuantizeLinear" || !node.domain().is_empty() || node.output.len() != 1 {
            continue;
        }
        if node.attr_i("block_size", 0) != 0 || outputs.contains(node.output[0].as_str()) {
            continue;
        }
        let (Some(x), Some(scale)) =
            (node.input.first().and_then(|x| stored.get(x.as_str())), scalar(node.input.get(1)))
        else {
            continue;
        };
        let (Ok(x), Ok(scale)) = (Values::of(x), Values::of(scale)) else { continue };
        if x.dtype != FloatType::F32 || scale.dtype != FloatType::F32 {
            continue;
        }
        let Some((ty, zero_point)) = scalar_zero_point(node, |name| stored.get(name).copied()) else { continue };
        if ty == Int::I32 {
            continue;
        }
        let scale = scale.get(0) as f32;
        let mut ints = Vec::with_capacity(x.len() * ty.size());
        let agreed = (0..x.len())
            .all(|i| quantize(x.get(i) as f32, scale, zero_point, ty).map(|q| ty.put(q, &mut ints)).is_some());
        if agreed {
            let t = TensorProto {
                name: Some(node.output[0].clone()),
                dims: x.dims.to_vec(),
                data_type: Some(int_type(ty) as i32),
                raw_data: Some(ints.into()),
                ..Default::default()
            };
            folded.push((n, t, node.input[0].clone()));
        }
    }
    if folded.is_empty() {
        return false;
    }
    let floats: HashSet<String> = folded.iter().map(|(.., x)| x.clone()).collect();
    super::fold::remove_nodes(g, &folded.iter().map(|(n, ..)| *n).collect());
    g.initializer.extend(folded.into_iter().map(|(_, t, _)| t));
    // The floats quantized, and the aliases that led to them, where nothing else reads them.
    drop_unread(g, &floats);
    true
}

/// How a float tensor made from a quantized weight is stored again.
struct Stored {
    /// `None`: the original integers, whole.
    ints: Option<TensorProto>,
    pending: Option<RowSlice>,
    /// The original entries of the scales and zero points that the integers use.
    entries: Vec<usize>,
}

/// Stores every float tensor made from a dequantized weight quantized again, with its
/// `DequantizeLinear` in front of the nodes; says which tensors stay float (their new values
/// have no exact integer form at the original scales).
///
/// Slices of the stored floats come first, since they say which entries a layer kept: a bias
/// with new values and per-axis scales (one per output channel) takes the entries of the weight
/// its layer reads, never a guess from its values, as the integer kernels scale bias `j` by
/// weight `j`'s scale whatever the graph says.
pub(crate) fn requantize(g: &mut GraphProto, applied: &mut Applied, dequantized: &Dequantized) -> Vec<String> {
    if dequantized.0.is_empty() {
        return vec![];
    }
    let origin = |name: &str| dequantized.0.get(applied.copied_from.get(name).map_or(name, String::as_str));
    let mut read_by: HashMap<&str, Vec<usize>> = HashMap::new();
    for (n, node) in g.node.iter().enumerate() {
        node.input.iter().for_each(|i| read_by.entry(i.as_str()).or_default().push(n));
    }
    let readers = |name: &str| read_by.get(name).into_iter().flatten().copied();
    let mut stored: HashMap<String, Stored> = HashMap::new();
    // The entries each node's sliced per-axis weights keep, with their original count.
    let mut kept: HashMap<usize, Vec<(usize, Vec<usize>)>> = HashMap::new();
    for t in &g.initializer {
        let Some(w) = origin(t.name()) else { continue };
        if let Some(s) = sliced(w, t, applied.pending.get(t.name())) {
            if w.axis.is_some() {
                for n in readers(t.name()) {
                    kept.entry(n).or_default().push((w.scales.len(), s.entries.clone()));
                }
            }
            stored.insert(t.name().to_string(), s);
        }
    }
    let mut stay_float = vec![];
    for t in &g.initializer {
        let Some(w) = origin(t.name()) else { continue };
        if stored.contains_key(t.name()) {
            continue;
        }
        let candidates: Vec<Vec<usize>> = match w.axis {
            None => vec![vec![0]],
            Some(_) => readers(t.name())
                .flat_map(|n| kept.get(&n).into_iter().flatten())
                .filter(|(count, _)| *count == w.scales.len())
                .map(|(_, entries)| entries.clone())
                .collect(),
        };
        let values = Values::of(t).ok();
        let found = values.and_then(|v| {
            candidates.into_iter().find_map(|entries| Some((w.requantized(&v, &t.dims, &entries)?, entries)))
        });
        match found {
            Some((ints, entries)) => {
                let ints = Some(int_tensor(w, &t.dims, Some(ints.into())));
                stored.insert(t.name().to_string(), Stored { ints, pending: None, entries });
            }
            None => stay_float.push(t.name().to_string()),
        }
    }
    // The floats go, and so do the originals' integers, scales and zero points unless another
    // node reads them (an activation's quantizer sharing a scale): what is used whole comes back
    // under its own name, so the model keeps its names where it can.
    let read: HashSet<&str> = g.node.iter().flat_map(|n| n.input.iter()).map(String::as_str).collect();
    let originals: HashSet<String> = dequantized
        .0
        .values()
        .flat_map(|w| [Some(&w.q), Some(&w.scale), w.zero_point.as_ref()])
        .flatten()
        .filter(|n| !read.contains(n.as_str()))
        .cloned()
        .collect();
    let mut spare = HashMap::new();
    for t in std::mem::take(&mut g.initializer) {
        if originals.contains(t.name()) {
            spare.insert(t.name().to_string(), t);
        } else if !stored.contains_key(t.name()) {
            g.initializer.push(t);
        }
    }
    let mut out = Emitted { spare, whole: HashMap::new(), tensors: vec![], names: Names::of(g) };
    let mut nodes = vec![];
    let mut stored: Vec<(String, Stored)> = stored.into_iter().collect();
    stored.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, s) in stored {
        let w = origin(&name).expect("stored tensors come from quantized weights");
        applied.pending.remove(&name);
        let q = match s.ints {
            None => out.whole(&w.q),
            Some(ints) => {
                let q = out.add(&w.q, ints);
                if let Some(slice) = s.pending {
                    applied.pending.insert(q.clone(), slice);
                }
                q
            }
        };
        let (scale, zero_point) = if w.axis.is_none() || s.entries.iter().copied().eq(0..w.scales.len()) {
            (out.whole(&w.scale), w.zero_point.as_ref().map(|zp| out.whole(zp)))
        } else {
            let scales: Vec<u8> = s.entries.iter().flat_map(|&j| w.scales[j].to_le_bytes()).collect();
            let scale = out.add(&w.scale, vector(DataType::Float, s.entries.len(), scales));
            let zero_point = w.zero_point.as_ref().map(|zp| {
                let mut raw = vec![];
                s.entries.iter().for_each(|&j| w.ty.put(w.zero_points[j], &mut raw));
                out.add(zp, vector(int_type(w.ty), s.entries.len(), raw))
            });
            (scale, zero_point)
        };
        let mut node = w.node.clone();
        node.name = Some(out.names.fresh(if w.node.name().is_empty() { &name } else { w.node.name() }));
        node.input = [Some(q), Some(scale), zero_point].into_iter().flatten().collect();
        node.output = vec![name];
        nodes.push(node);
    }
    g.initializer.extend(out.tensors);
    g.node.splice(0..0, nodes);
    // Originals read through an alias (an `Identity` of the integers) that nothing reads now.
    drop_unread(g, &originals);
    stay_float.sort();
    stay_float
}

/// The tensors `requantize` writes, named as the originals where those are free.
struct Emitted {
    /// Originals that nothing reads now, by name.
    spare: HashMap<String, TensorProto>,
    /// The name each original used whole was written under.
    whole: HashMap<String, String>,
    tensors: Vec<TensorProto>,
    names: Names,
}

impl Emitted {
    /// The original `name`, whole: written once, or still in the graph.
    fn whole(&mut self, name: &str) -> String {
        if let Some(n) = self.whole.get(name) {
            return n.clone();
        }
        let written = match self.spare.get(name).cloned() {
            Some(t) => self.add(name, t),
            None => name.to_string(),
        };
        self.whole.insert(name.to_string(), written.clone());
        written
    }

    /// A new tensor, named after `base`.
    fn add(&mut self, base: &str, mut t: TensorProto) -> String {
        let name = self.names.fresh(base);
        t.name = Some(name.clone());
        self.tensors.push(t);
        name
    }
}

/// A tensor of `w`'s integer type.
fn int_tensor(w: &Quantized, dims: &[i64], raw: Option<Bytes>) -> TensorProto {
    TensorProto { dims: dims.to_vec(), data_type: Some(int_type(w.ty) as i32), raw_data: raw, ..Default::default() }
}

/// The integers of `t` where it is `w`'s floats whole or a slice of them (rows and columns
/// dropped), with the entries along the quantization axis that it keeps.
fn sliced(w: &Quantized, t: &TensorProto, pending: Option<&RowSlice>) -> Option<Stored> {
    let floats = &w.floats;
    let same_source = |b: &[u8]| b.as_ptr() == floats.as_ptr() && b.len() == floats.len();
    match pending {
        Some(slice) if same_source(slice.source()) => {
            let entries = w.entries_of(slice, &t.dims)?;
            let ints = slice.with_source(w.ints.clone(), w.ty.size());
            Some(Stored { ints: Some(int_tensor(w, &t.dims, None)), pending: Some(ints), entries })
        }
        None if t.raw_data.as_deref().is_some_and(same_source) && t.dims == w.dims => {
            Some(Stored { ints: None, pending: None, entries: (0..w.scales.len()).collect() })
        }
        _ => None,
    }
}

fn int_type(ty: Int) -> DataType {
    match ty {
        Int::I8 => DataType::Int8,
        Int::U8 => DataType::Uint8,
        Int::I16 => DataType::Int16,
        Int::U16 => DataType::Uint16,
        Int::I32 => DataType::Int32,
    }
}

/// A 1-D tensor of `len` elements stored as `raw`.
fn vector(ty: DataType, len: usize, raw: Vec<u8>) -> TensorProto {
    TensorProto { dims: vec![len as i64], data_type: Some(ty as i32), raw_data: Some(raw.into()), ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::build::{attr_int, f32_tensor, node};
    use crate::onnx::tensor::Data;

    #[test]
    fn values_round_trip_only_where_an_integer_stores_them_exactly() {
        assert_eq!(quantized(0.5, 0, 0.25, Int::I8), Some(2));
        assert_eq!(quantized(0.3, 0, 0.25, Int::I8), None);
        assert_eq!(quantized(0.0, 3, 0.1, Int::U8), Some(3));
        assert_eq!(quantized(100.0, 0, 0.25, Int::I8), None, "400 is out of int8's range");
        assert_eq!(quantized(f32::NAN, 0, 1.0, Int::I8), None);
        // A bias that absorbed a fold is an integer number of steps up to float rounding; a
        // fraction of a step is not.
        let s = 0.001_f32 * 0.02;
        let near = 12345.0 * s * (1.0 + 3e-7);
        assert_eq!(quantized(near, 0, s, Int::I32), Some(12345));
        assert_eq!(quantized(12345.3 * s, 0, s, Int::I32), None);
    }

    fn int8(name: &str, dims: &[i64], vals: &[i8]) -> TensorProto {
        TensorProto {
            name: Some(name.into()),
            dims: dims.to_vec(),
            data_type: Some(DataType::Int8 as i32),
            raw_data: Some(vals.iter().map(|&v| v as u8).collect::<Vec<u8>>().into()),
            ..Default::default()
        }
    }

    /// A Gemm's per-channel int8 weight sliced to rows 0 and 2 comes back as the same rows of
    /// the integers with those rows' scales, and its bias, sliced and with a fold of whole
    /// steps, as int32 at the scales of the rows the weight kept.
    #[test]
    fn sliced_weights_keep_their_integers_and_the_scales_of_what_they_keep() {
        let mut g = GraphProto {
            initializer: vec![
                int8("w_q", &[3, 2], &[1, -2, 3, 4, -5, 6]),
                f32_tensor("w_s", &[3], &[0.5, 0.25, 0.125]),
                int8("w_z", &[3], &[0, 0, 0]),
                TensorProto {
                    name: Some("b_q".into()),
                    dims: vec![3],
                    data_type: Some(DataType::Int32 as i32),
                    raw_data: Some([10i32, 20, 30].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into()),
                    ..Default::default()
                },
                f32_tensor("b_s", &[3], &[0.05, 0.025, 0.0125]),
            ],
            node: vec![
                node("DequantizeLinear", "dq_w", &["w_q", "w_s", "w_z"], &["w"], vec![attr_int("axis", 0)]),
                node("DequantizeLinear", "dq_b", &["b_q", "b_s"], &["b"], vec![attr_int("axis", 0)]),
                node("Gemm", "fc", &["x", "w", "b"], &["y"], vec![attr_int("transB", 1)]),
            ],
            ..Default::default()
        };
        let d = dequantize(&mut g);
        assert_eq!(g.node.len(), 1, "both dequantizers became float weights");
        let w = g.initializer.iter().find(|t| t.name() == "w").unwrap();
        assert_eq!(Values::of(w).unwrap().get(4), -0.625, "(-5 - 0) * 0.125, row 2's scale");
        // What a plan keeping rows 0 and 2 (and folding 3 steps into the last bias) writes.
        let Data::Rows(slice) = Values::of(w).unwrap().slice_rows(&[0, 2], 2, &[0, 1]) else { panic!("raw") };
        let bias = f32_tensor("b", &[2], &[10.0 * 0.05, (30.0 + 3.0) * 0.0125]);
        let w_new = TensorProto { raw_data: None, ..f32_tensor("w", &[2, 2], &[]) };
        g.initializer.retain(|t| !matches!(t.name(), "w" | "b"));
        g.initializer.extend([w_new, bias]);
        let mut applied = Applied { pending: [("w".to_string(), slice)].into(), copied_from: HashMap::new() };
        assert!(requantize(&mut g, &mut applied, &d).is_empty(), "nothing stays float");

        let by = |name: &str| g.initializer.iter().find(|t| t.name() == name).unwrap_or_else(|| panic!("{name}"));
        let dq = |out: &str| g.node.iter().find(|n| n.output[0] == out).unwrap().input.clone();
        let (wq, bq) = (dq("w"), dq("b"));
        assert_eq!(applied.pending[&wq[0]].to_vec(), vec![1u8, (-2i8) as u8, (-5i8) as u8, 6]);
        assert_eq!(Values::of(by(&wq[1])).unwrap().get(1), 0.125, "row 2's scale");
        assert_eq!(
            by(&bq[0]).raw_data.as_deref().unwrap(),
            [10i32, 33].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()
        );
        assert_eq!(Values::of(by(&bq[1])).unwrap().get(1), 0.0125_f32 as f64, "the bias takes the weight's rows");
        assert!(!g.initializer.iter().any(|t| matches!(t.name(), "w" | "b")), "no float weight is left");
    }
}
