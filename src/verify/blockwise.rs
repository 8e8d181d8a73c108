//! Block-wise verification: for models tract cannot hold whole.
//!
//! The original graph is cut, in its topological order, into pieces of about
//! [`VerifyOptions::block_bytes`] of weights. Each piece of the original runs in tract on the
//! values the previous pieces of the original computed; the minimized model's matching piece (the
//! nodes its outputs need, back to values already known) runs on the same values with the removed
//! entries taken out. Its outputs must match the original's kept entries, and the original's
//! removed entries must equal the constants the analysis claimed for them. Values whose entries
//! the analysis cannot name (a shape, a value split into heads) come from the minimized model's
//! own earlier pieces instead, so every node of the minimized model is still checked, through
//! the graph outputs at the latest. Memory follows two pieces and the values crossing the cuts.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use prost::Message;
use tract_onnx::prelude::*;

use super::{deviation, for_tract, input_sets, plan, tract_err, verification, ChannelMap, Kept, VerifyOptions};
use crate::error::{Error, Result};
use crate::onnx::proto::{
    tensor_proto::DataType, type_proto, GraphProto, ModelProto, TensorProto, TypeProto, ValueInfoProto,
};
use crate::report::{OutputCheck, Verification};
use crate::{Model, Progress};

/// A run of the original's nodes, and the values it hands on.
#[derive(Default)]
struct Piece {
    /// Indices into the original's nodes, in topological order.
    nodes: Vec<usize>,
    /// Values it computes that later pieces or the graph outputs read.
    outputs: Vec<String>,
    /// Bytes of weights it reads.
    bytes: u64,
    /// Values no piece after this one reads (dropped once it ran).
    last_use: Vec<String>,
}

/// Cuts `g` (whose nodes `order` sorts topologically) after the first node at which a piece
/// reaches `budget` bytes of weights.
fn cut(g: &GraphProto, order: &[usize], budget: u64) -> Result<Vec<Piece>> {
    let sizes: HashMap<&str, u64> =
        g.initializer.iter().map(|t| (t.name(), t.raw_data.as_ref().map_or(0, |r| r.len() as u64))).collect();
    let outputs: HashSet<&str> = g.output.iter().map(|o| o.name()).collect();
    if let Some(n) = g.node.iter().find(|n| n.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty())) {
        return Err(Error::Usage(format!(
            "block-wise verification cannot cut through control flow ({} '{}'): use --verify whole",
            n.op_type(),
            n.name()
        )));
    }
    // The position of the last node reading each value (graph outputs: never done).
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (p, &n) in order.iter().enumerate() {
        for i in g.node[n].input.iter().filter(|i| !i.is_empty()) {
            last.insert(i, p);
        }
    }
    outputs.iter().for_each(|o| {
        last.insert(o, usize::MAX);
    });
    let mut pieces: Vec<Piece> = vec![];
    let mut live: Vec<&str> = vec![];
    let mut piece = Piece::default();
    let mut counted: HashSet<&str> = HashSet::new();
    for (p, &n) in order.iter().enumerate() {
        let node = &g.node[n];
        piece.nodes.push(n);
        for i in &node.input {
            if let Some(&b) = sizes.get(i.as_str()) {
                if counted.insert(i) {
                    piece.bytes += b;
                }
            }
        }
        live.extend(node.output.iter().filter(|o| !o.is_empty() && last.contains_key(o.as_str())).map(|o| o.as_str()));
        if (piece.bytes >= budget && p + 1 < order.len()) || p + 1 == order.len() {
            live.retain(|v| last[v] > p);
            let mine = outputs_of(g, &piece.nodes);
            piece.outputs = live.iter().filter(|v| mine.contains(*v)).map(|v| v.to_string()).collect();
            pieces.push(std::mem::take(&mut piece));
            counted.clear();
        }
    }
    // Which values each piece is the last to read.
    let position: HashMap<usize, usize> = order.iter().enumerate().map(|(p, &n)| (n, p)).collect();
    let ends: Vec<usize> = pieces.iter().map(|pc| position[pc.nodes.last().expect("pieces are not empty")]).collect();
    for (name, &l) in &last {
        if l != usize::MAX {
            let k = ends.partition_point(|&e| e < l);
            let at = k.min(pieces.len() - 1);
            pieces[at].last_use.push(name.to_string());
        }
    }
    Ok(pieces)
}

/// The values `nodes` of `g` write.
fn outputs_of<'g>(g: &'g GraphProto, nodes: &[usize]) -> HashSet<&'g str> {
    nodes.iter().flat_map(|&n| g.node[n].output.iter().map(|o| o.as_str())).collect()
}

/// The values `nodes` of `g` read but do not write, for which `from_outside` holds, each once.
fn reads_from_outside(g: &GraphProto, nodes: &[usize], from_outside: impl Fn(&str) -> bool) -> Vec<String> {
    let inside = outputs_of(g, nodes);
    let mut reads: Vec<String> = nodes
        .iter()
        .flat_map(|&n| g.node[n].input.iter())
        .filter(|i| !i.is_empty() && !inside.contains(i.as_str()) && from_outside(i))
        .cloned()
        .collect();
    reads.sort();
    reads.dedup();
    reads
}

/// The nodes of `g` (in graph order) that compute `targets` from `known` values, initializers
/// and `Constant` nodes.
fn slice(
    g: &GraphProto,
    producer: &HashMap<&str, usize>,
    targets: &[String],
    known: &dyn Fn(&str) -> bool,
) -> Vec<usize> {
    let mut chosen = HashSet::new();
    let mut stack: Vec<&str> = targets.iter().map(|t| t.as_str()).collect();
    while let Some(v) = stack.pop() {
        if known(v) {
            continue;
        }
        if let Some(&n) = producer.get(v) {
            if chosen.insert(n) {
                stack.extend(g.node[n].input.iter().filter(|i| !i.is_empty()).map(|i| i.as_str()));
            }
        }
    }
    let mut nodes: Vec<usize> = chosen.into_iter().collect();
    nodes.sort_unstable();
    nodes
}

/// Input types and shapes, what an optimized tract plan is made for.
type Facts = Vec<(DatumType, Vec<usize>)>;

/// `nodes` of a model, loaded in tract for the constants they were last given.
struct Loaded<'m> {
    model: &'m ModelProto,
    nodes: &'m [usize],
    outputs: &'m [String],
    as_f32: bool,
    /// The model's int64 `CumSum`s, which tract sums in float64 ([`for_tract::int64_sums`]).
    sums: &'m HashSet<String>,
    label: String,
    last: Option<(Vec<u8>, InferenceModel)>,
    /// tract's optimized plan of `last` for the input facts it was made for.
    planned: Option<(Facts, Arc<TypedRunnableModel>)>,
}

impl Loaded<'_> {
    /// Runs the nodes on the values `feed`. Float values become graph inputs; the others
    /// (shapes, indices, masks) become constants, as tract needs shapes and axes to be known,
    /// so the piece is loaded again only when those change. The piece holds the weights its
    /// nodes read and is loaded from memory.
    fn run(&mut self, feed: Vec<(&String, Tensor)>) -> Result<TVec<TValue>> {
        let label = Path::new(&self.label);
        let mut inputs = vec![];
        let mut constants = vec![];
        let mut key = vec![];
        for (name, t) in feed {
            let t = if t.datum_type() == DatumType::TDim {
                t.cast_to::<i64>().map_err(|e| shape_err(name, e.to_string()))?.into_owned()
            } else {
                t
            };
            let elem = onnx_type(name, t.datum_type())?;
            if t.datum_type().is_float() {
                key.extend_from_slice(name.as_bytes());
                inputs.push((name, elem, t));
            } else {
                let c = TensorProto {
                    name: Some(name.clone()),
                    dims: t.shape().iter().map(|&d| d as i64).collect(),
                    data_type: Some(elem as i32),
                    raw_data: Some(t.as_bytes().to_vec().into()),
                    ..Default::default()
                };
                key.extend(c.encode_to_vec());
                constants.push(c);
            }
        }
        if self.last.as_ref().is_none_or(|(k, _)| *k != key) {
            (self.last, self.planned) = (None, None);
            let typed_inputs = inputs.iter().map(|(name, elem, _)| typed(name, *elem)).collect();
            let bytes = self.encode(typed_inputs, constants);
            let model = tract_onnx::onnx().model_for_read(&mut &bytes[..]).map_err(tract_err(label))?;
            self.last = Some((key, model));
        }
        let model = &self.last.as_ref().expect("loaded above").1;
        let facts: Facts = inputs.iter().map(|(_, _, t)| (t.datum_type(), t.shape().to_vec())).collect();
        let runnable = match self.planned.take() {
            Some((f, r)) if f == facts => r,
            _ => plan(model, label, &facts)?,
        };
        let values = inputs.into_iter().map(|(_, _, t)| t.into_tvalue()).collect();
        let out = runnable.run(values).map_err(tract_err(label));
        self.planned = Some((facts, runnable));
        out
    }

    fn encode(&self, input: Vec<ValueInfoProto>, constants: Vec<TensorProto>) -> Vec<u8> {
        let g = self.model.graph.as_ref().expect("checked at load");
        let read: HashSet<&str> = self.nodes.iter().flat_map(|&n| g.node[n].input.iter().map(|i| i.as_str())).collect();
        let weights: Vec<&TensorProto> = g.initializer.iter().filter(|t| read.contains(t.name())).collect();
        let mut graph = GraphProto {
            name: Some("piece".into()),
            node: self.nodes.iter().map(|&n| g.node[n].clone()).collect(),
            initializer: weights.iter().map(|&t| t.clone()).chain(constants).collect(),
            input,
            output: self
                .outputs
                .iter()
                .map(|o| ValueInfoProto { name: Some(o.clone()), ..Default::default() })
                .collect(),
            ..Default::default()
        };
        for_tract::prepare(&mut graph, self.sums, self.as_f32);
        let piece = ModelProto {
            ir_version: self.model.ir_version,
            opset_import: self.model.opset_import.clone(),
            functions: self.model.functions.clone(),
            graph: Some(graph),
            ..Default::default()
        };
        let bytes = piece.encode_to_vec();
        // The weights were read from the mapped files once; tract holds its own copy now.
        weights.iter().filter_map(|t| t.raw_data.as_deref()).for_each(crate::onnx::io::release_pages);
        bytes
    }
}

/// The ONNX element type of tract's (little-endian, as ONNX stores raw data) type.
fn onnx_type(name: &str, dt: DatumType) -> Result<DataType> {
    Ok(match dt {
        DatumType::F32 => DataType::Float,
        DatumType::F16 => DataType::Float16,
        DatumType::F64 => DataType::Double,
        DatumType::I64 => DataType::Int64,
        DatumType::I32 => DataType::Int32,
        DatumType::I16 => DataType::Int16,
        DatumType::I8 => DataType::Int8,
        DatumType::U8 => DataType::Uint8,
        DatumType::Bool => DataType::Bool,
        other => return Err(shape_err(name, format!("cannot pass a {other:?} tensor between pieces"))),
    })
}

/// A graph input of this element type (tract wants one; the shape comes from the tensor).
fn typed(name: &str, elem: DataType) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem as i32),
                shape: None,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The entries of `t` that the minimized model keeps.
fn project(t: &Tensor, name: &str, k: &Kept) -> Result<Tensor> {
    match &k.keep {
        Some(keep) => select(t, name, axis_of(t, name, k)?, keep),
        None => Ok(t.clone()),
    }
}

/// `indices` of `t` along `axis`.
fn select(t: &Tensor, name: &str, axis: usize, indices: &[usize]) -> Result<Tensor> {
    let dt = t.datum_type();
    let wide = t.cast_to::<f64>().map_err(|e| shape_err(name, e.to_string()))?;
    let view = wide.to_plain_array_view::<f64>().map_err(|e| shape_err(name, e.to_string()))?;
    let kept = view.select(tract_ndarray::Axis(axis), indices);
    Tensor::from(kept).cast_to_dt(dt).map(|c| c.into_owned()).map_err(|e| shape_err(name, e.to_string()))
}

/// How far the minimized model's `ours` is from the original's `theirs` on the entries that
/// something needs.
fn kept_deviation(theirs: &Tensor, ours: &Tensor, name: &str, k: &Kept) -> Result<f64> {
    let theirs = project(theirs, name, k)?;
    let (theirs, ours) = match &k.compared {
        Some(needed) => {
            let axis = usize::try_from(ours.rank() as isize + k.axis)
                .map_err(|_| shape_err(name, format!("shape {:?} has no axis {}", ours.shape(), k.axis)))?;
            (select(&theirs, name, axis, needed)?, select(ours, name, axis, needed)?)
        }
        None => (theirs, ours.clone()),
    };
    deviation(&theirs, &ours).map(|(diff, scale)| diff / scale).map_err(|why| shape_err(name, why))
}

fn axis_of(t: &Tensor, name: &str, k: &Kept) -> Result<usize> {
    let axis = t.rank() as isize + k.axis;
    match usize::try_from(axis).ok().filter(|&a| t.shape()[a] == k.entries) {
        Some(a) => Ok(a),
        None => Err(shape_err(name, format!("shape {:?} has no axis {} of {} entries", t.shape(), k.axis, k.entries))),
    }
}

fn shape_err(name: &str, why: String) -> Error {
    Error::Tract { model: "block-wise verification".into(), why: format!("value '{name}': {why}") }
}

/// Largest deviation of the removed entries of `t` from the constants claimed for them,
/// relative to `t`'s scale.
fn constant_deviation(t: &Tensor, name: &str, k: &Kept) -> Result<f64> {
    if k.constants.is_empty() {
        return Ok(0.0);
    }
    let axis = axis_of(t, name, k)?;
    let wide = t.cast_to::<f64>().map_err(|e| shape_err(name, e.to_string()))?;
    let view = wide.to_plain_array_view::<f64>().map_err(|e| shape_err(name, e.to_string()))?;
    let scale = view.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(f32::EPSILON as f64);
    let mut worst = 0.0f64;
    for &(e, c) in &k.constants {
        for x in view.index_axis(tract_ndarray::Axis(axis), e).iter() {
            let d = if *x == c { 0.0 } else { (x - c).abs() };
            worst = if d.is_nan() { f64::INFINITY } else { worst.max(d) };
        }
    }
    Ok(worst / scale)
}

/// How far the minimized model's value `ours` is from the original's `theirs`, and what to call
/// it if too far: on the kept entries something needs, and on the removed entries against their
/// claimed constants, where the map names them; whole for a graph output it does not; not at all
/// otherwise (the minimized model's own value is then carried on and judged downstream).
fn judge(name: &str, theirs: &Tensor, ours: &Tensor, kept: Option<&Kept>, output: bool) -> Result<(f64, String)> {
    Ok(match kept {
        Some(kept) => {
            let c = constant_deviation(theirs, name, kept)?;
            let d = kept_deviation(theirs, ours, name, kept)?;
            if c > d {
                (c, format!("{name} (its removed entries are not the constants the analysis found)"))
            } else {
                (d, name.to_string())
            }
        }
        None if output => {
            let (diff, scale) = deviation(theirs, ours).map_err(|why| shape_err(name, why))?;
            (diff / scale, name.to_string())
        }
        None => (0.0, name.to_string()),
    })
}

pub(super) fn verify(
    original: &Path,
    minimized: &Path,
    channels: &ChannelMap,
    opts: &VerifyOptions,
    tolerance: f64,
    progress: &dyn Fn(Progress),
) -> Result<Verification> {
    let start = Instant::now();
    let (o, m) = (Model::load(original)?, Model::load(minimized)?);
    let (og, mg) = (o.graph(), m.graph());
    let as_f32 = for_tract::has_non_f32_floats(og) || for_tract::has_non_f32_floats(mg);
    let o_ir = o.ir()?;
    let (o_sums, m_sums) = (for_tract::int64_sums(og, &o_ir), for_tract::int64_sums(mg, &m.ir()?));
    let order = o_ir.order;
    let budget = opts.block_bytes.unwrap_or(super::BLOCK_BYTES);
    let pieces = cut(og, &order, budget)?;
    let total: u64 = pieces.iter().map(|p| p.bytes).sum();
    let m_producer: HashMap<&str, usize> =
        mg.node.iter().enumerate().flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i))).collect();
    let m_inputs: HashSet<&str> = mg.input.iter().map(|i| i.name()).collect();
    let m_consts: HashSet<&str> = mg.initializer.iter().map(|t| t.name()).collect();
    let graph_outputs: Vec<String> = og.output.iter().map(|o| o.name().to_string()).collect();
    let mut worst = vec![0.0f64; graph_outputs.len()];
    let runs = input_sets(og, opts)?;
    let shapes: Vec<Vec<Vec<usize>>> =
        runs.iter().map(|set| set.tensors.iter().map(|(_, t)| t.shape().to_vec()).collect()).collect();
    // Per run, values of the original, and of the minimized model where its own are needed.
    let mut theirs: Vec<HashMap<String, Tensor>> = vec![HashMap::new(); runs.len()];
    let mut ours: Vec<HashMap<String, Tensor>> = vec![HashMap::new(); runs.len()];
    for (r, set) in runs.iter().enumerate() {
        for (name, t) in set.tensors.iter().cloned() {
            let t = if as_f32 && t.datum_type().is_float() {
                t.cast_to::<f32>().map_err(tract_err(original))?.into_owned()
            } else {
                t
            };
            ours[r].insert(name.clone(), t.clone());
            theirs[r].insert(name, t);
        }
    }
    let mut seen = 0u64;
    // Each piece is loaded once for every run: loading dominates.
    for (k, piece) in pieces.iter().enumerate() {
        let label = |which: &str| format!("{} (piece {} of {}, {which})", original.display(), k + 1, pieces.len());
        // The original's piece, on the original's values.
        let produced = outputs_of(og, &piece.nodes);
        let o_inputs = reads_from_outside(og, &piece.nodes, |i| theirs[0].contains_key(i));
        let mut loaded = Loaded {
            model: &o.proto,
            nodes: &piece.nodes,
            outputs: &piece.outputs,
            as_f32,
            sums: &o_sums,
            label: label("original"),
            last: None,
            planned: None,
        };
        for (values, set) in theirs.iter_mut().zip(&runs) {
            let feed = o_inputs.iter().map(|i| (i, values[i].clone())).collect();
            let ys = loaded.run(feed).map_err(|e| set.explain(e))?;
            for (name, y) in piece.outputs.iter().zip(ys) {
                values.insert(name.clone(), y.into_tensor());
            }
        }
        drop(loaded);
        // The minimized model's piece: the nodes its share of the outputs needs.
        let targets: Vec<String> =
            piece.outputs.iter().filter(|v| m_producer.contains_key(v.as_str())).cloned().collect();
        let known = |v: &str| {
            m_consts.contains(v)
                || m_inputs.contains(v)
                || ours[0].contains_key(v)
                || (channels.contains_key(v) && theirs[0].contains_key(v) && !produced.contains(v))
        };
        let nodes = slice(mg, &m_producer, &targets, &known);
        let m_in = reads_from_outside(mg, &nodes, |i| !m_consts.contains(i));
        let mut loaded = Loaded {
            model: &m.proto,
            nodes: &nodes,
            outputs: &targets,
            as_f32,
            sums: &m_sums,
            label: label("minimized"),
            last: None,
            planned: None,
        };
        for (r, (theirs, ours)) in theirs.iter_mut().zip(ours.iter_mut()).enumerate() {
            let feed = m_in
                .iter()
                .map(|i| match (channels.get(i), theirs.get(i), ours.get(i)) {
                    (Some(kept), Some(t), _) if !produced.contains(i.as_str()) => Ok((i, project(t, i, kept)?)),
                    (_, _, Some(t)) => Ok((i, t.clone())),
                    _ => Err(shape_err(i, "no earlier piece computed it".into())),
                })
                .collect::<Result<Vec<_>>>()?;
            let ys = loaded.run(feed).map_err(|e| runs[r].explain(e))?;
            for (name, y) in targets.iter().zip(ys) {
                let y = y.into_tensor();
                let (dev, what) = judge(name, &theirs[name], &y, channels.get(name), graph_outputs.contains(name))?;
                if dev.is_nan() || dev > tolerance {
                    return Err(Error::Diverged { output: what, deviation: dev, tolerance, run: r });
                }
                if let Some(i) = graph_outputs.iter().position(|g| g == name) {
                    worst[i] = worst[i].max(dev);
                }
                ours.insert(name.clone(), y);
            }
            for v in piece.last_use.iter().filter(|v| !m_inputs.contains(v.as_str())) {
                theirs.remove(v);
                ours.remove(v);
            }
        }
        seen += piece.bytes;
        progress(Progress::Bytes { done: seen, total, items: k + 1, of: pieces.len(), unit: "pieces" });
    }
    let checks = graph_outputs.into_iter().zip(worst).map(|(output, max_relative_deviation)| OutputCheck {
        output,
        max_relative_deviation,
        quantization_step: None,
    });
    let mut v = verification(shapes, tolerance, checks, start, "blockwise", Some(pieces.len()));
    v.as_float32 = as_f32;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::tensor::{encode, with_data, Values};

    /// A folded bias made wrong inside one piece is caught there, and named.
    #[test]
    fn a_wrong_folded_bias_inside_one_piece_is_caught() {
        let (src, mut model, channels) = crate::minimized_fixture("mlp_constants_ts.onnx");
        model.materialize();
        let dir = tempfile::tempdir().unwrap();
        let (good, bad) = (dir.path().join("good.onnx"), dir.path().join("bad.onnx"));
        model.write(&good, false).unwrap();
        let opts = VerifyOptions { runs: 1, block_bytes: Some(1), ..Default::default() };
        let ok = verify(&src, &good, &channels, &opts, 1e-4, &|_| {}).unwrap();
        assert!(ok.pieces.unwrap() > 2, "{:?}", ok.pieces);
        // The second layer's bias holds the constants folded from the first.
        let g = model.graph_mut();
        let second = g.node.iter().filter(|n| n.op_type() == "Gemm").nth(1).unwrap();
        let (bias, dense) = (second.input[2].clone(), second.output[0].clone());
        let t = g.initializer.iter_mut().find(|t| t.name() == bias).unwrap();
        let v = Values::of(t).unwrap();
        let mut vals: Vec<f64> = (0..v.len()).map(|i| v.get(i)).collect();
        vals[0] += 0.5;
        let dtype = v.dtype;
        *t = with_data(t, t.dims.clone(), dtype, encode(dtype, &vals));
        model.write(&bad, false).unwrap();
        match verify(&src, &bad, &channels, &opts, 1e-4, &|_| {}) {
            Err(Error::Diverged { output, .. }) => assert!(output.starts_with(&dense), "{output} is not {dense}"),
            other => panic!("not caught: {other:?}"),
        }
    }
}
