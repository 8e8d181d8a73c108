//! Weights computed from weights become weights. `nn.MultiheadAttention` called with a query that
//! is not its key (cross-attention, DETR, decoder layers) splits its packed projection at run
//! time, `w_q, w_kv = in_proj_weight.split([E, 2E])`, and the dynamo exporter writes the `Split`
//! (and the `Transpose` of each part) into the graph: the linear rules would see a computed
//! weight and keep everything. Folding `Split` and `Transpose` of float initializers into new
//! initializers, byte for byte, lets them see the constant; the minimized model then stores the
//! parts instead of the whole and its split, the same numbers.
//!
//! A matrix that other nodes read too (a tied embedding table, read by a `Gather` and transposed
//! for the output head) is folded as well, so that the head's rule sees its weight, and recorded
//! as a [`Tie`]: once the rewrite has sliced both sides, [`retie`] writes the `Transpose` back
//! where the head's slice is the transpose of the table's, so the table is stored once. Where it
//! is not, the caller plans again without such folds (a second copy of the table would cost more
//! than the stream channels it frees).

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use super::build;
use super::proto::{tensor_proto::DataType, GraphProto, NodeProto, TensorProto};
use super::tensor::{encode, int64s, numel, with_data, FloatType, Values};
use crate::ir::{normalize, Ir, NodeExt};
use crate::rewrite::{Applied, Names, Pending};

/// A `Transpose` of a weight that other nodes read too, folded into its output: the node to
/// write back (its input names the weight, its output the folded copy), and the bytes of both
/// sides (slices of them are recognised by their source).
pub(crate) struct Tie {
    node: NodeProto,
    source_bytes: Bytes,
    folded_bytes: Bytes,
}

/// Folds what it can, a pass at a time until nothing changes, and returns the ties it made
/// (none unless `tie`: see the module's comment).
pub(crate) fn constants(g: &mut GraphProto, opset: i64, tie: bool) -> Vec<Tie> {
    let shadowed: HashSet<String> = g.input.iter().filter_map(|i| i.name.clone()).collect();
    let mut ties = vec![];
    let mut sources = HashSet::new();
    loop {
        let index: HashMap<String, usize> = g
            .initializer
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.name.clone().filter(|n| !shadowed.contains(n)).map(|n| (n, i)))
            .collect();
        // `Constant` nodes hold constants too (TorchScript writes split sizes so).
        let nodes: HashMap<&str, &TensorProto> = g
            .node
            .iter()
            .filter(|n| n.op_type() == "Constant" && n.domain().is_empty())
            .filter_map(|n| Some((n.output.first()?.as_str(), n.attr("value")?.t.as_ref()?)))
            .collect();
        let constant = |name: &str| index.get(name).map(|&i| &g.initializer[i]).or_else(|| nodes.get(name).copied());
        // A weight something else reads too would be stored twice: only a weight read by this
        // node alone is folded, a vector (a bias that the exporter shares between two layers
        // because its values are equal), or a tied matrix (a `Transpose` of an initializer that
        // something other than a `Transpose` reads, to be written back by `retie`).
        let mut readers: HashMap<&str, usize> = HashMap::new();
        let mut plain: HashSet<&str> = HashSet::new();
        for n in &g.node {
            for x in &n.input {
                *readers.entry(x.as_str()).or_default() += 1;
                if n.op_type() != "Transpose" {
                    plain.insert(x);
                }
            }
        }
        for o in g.output.iter().filter_map(|o| o.name.as_ref()) {
            *readers.entry(o.as_str()).or_default() += 1;
            plain.insert(o);
        }
        let alone = |node: &NodeProto| {
            node.input
                .first()
                .is_some_and(|x| readers.get(x.as_str()) == Some(&1) || constant(x).is_some_and(|t| t.dims.len() <= 1))
        };
        let tied = |node: &NodeProto| {
            let x = node.input.first()?;
            let t = index.get(x.as_str()).map(|&i| &g.initializer[i])?;
            let plain_transpose = node.op_type() == "Transpose"
                && node.attr_ints("perm").is_none_or(|p| p == [1, 0])
                && t.dims.len() == 2;
            (tie && plain_transpose && plain.contains(x.as_str())).then(|| t.raw_data.clone()).flatten()
        };
        // Every node foldable now, in one pass; what they make may be foldable in the next.
        let done: Vec<(usize, Vec<TensorProto>, Option<Bytes>)> = g
            .node
            .iter()
            .enumerate()
            .filter_map(|(n, node)| {
                let source = if alone(node) { None } else { Some(tied(node)?) };
                Some((n, fold(node, &constant, opset)?, source))
            })
            .collect();
        if done.is_empty() {
            break;
        }
        let mut gone_nodes = HashSet::new();
        for (n, outputs, source) in done {
            let node = &g.node[n];
            match (source, outputs.first()) {
                (Some(source_bytes), Some(t)) => ties.push(Tie {
                    node: node.clone(),
                    source_bytes,
                    folded_bytes: t.raw_data.clone().unwrap_or_default(),
                }),
                _ => sources.extend(node.input.iter().filter(|i| !i.is_empty()).cloned()),
            }
            g.initializer.extend(outputs);
            gone_nodes.insert(n);
        }
        remove_nodes(g, &gone_nodes);
    }
    // A weight (or split sizes) read only by what was folded is now stored in its parts.
    let read: HashSet<&str> = g
        .node
        .iter()
        .flat_map(|n| n.input.iter())
        .chain(g.output.iter().filter_map(|o| o.name.as_ref()))
        .map(String::as_str)
        .collect();
    let gone: HashSet<String> = sources.into_iter().filter(|s| !read.contains(s.as_str())).collect();
    g.initializer.retain(|t| !t.name.as_ref().is_some_and(|n| gone.contains(n)));
    g.node.retain(|n| !(n.op_type() == "Constant" && n.output.first().is_some_and(|o| gone.contains(o))));
    ties
}

/// Writes each tie's `Transpose` back in place of every version of its folded weight (the weight
/// itself or the private copies the rewrite made of it, `copied_from`) that is the transpose of
/// a version of the source: the rows of one are the columns of the other, as slices of the
/// bytes the fold saw or whole. Returns false, changing nothing, when a version has no such
/// partner: the minimized model would store the table twice.
pub(crate) fn retie(g: &mut GraphProto, applied: &mut Applied, ties: &[Tie]) -> bool {
    let versions = |of: &str| -> Vec<String> {
        let from = |n: &str| n == of || applied.copied_from.get(n).is_some_and(|c| c == of);
        g.initializer.iter().map(|t| t.name()).filter(|n| from(n)).map(str::to_string).collect()
    };
    let mut writes = vec![];
    for tie in ties {
        let kept = |name: &str, bytes: &Bytes| kept(g, &applied.pending, name, bytes);
        let sources: Vec<(String, Kept)> = versions(&tie.node.input[0])
            .into_iter()
            .filter_map(|v| Some((v.clone(), kept(&v, &tie.source_bytes)?)))
            .collect();
        for folded in versions(&tie.node.output[0]) {
            let Some((rows, cols)) = kept(&folded, &tie.folded_bytes) else { return false };
            let Some((source, _)) = sources.iter().find(|(_, (r, c))| *r == cols && *c == rows) else { return false };
            writes.push((&tie.node, source.clone(), folded));
        }
    }
    let mut names = Names::of(g);
    for (node, source, folded) in writes {
        g.initializer.retain(|t| t.name() != folded);
        applied.pending.remove(&folded);
        let at = g.node.iter().position(|n| n.input.contains(&folded)).unwrap_or(0);
        let transpose = NodeProto {
            name: Some(names.fresh(node.name())),
            input: vec![source],
            output: vec![folded],
            ..node.clone()
        };
        g.node.insert(at, transpose);
    }
    true
}

/// Rows and columns of a matrix.
type Kept = (Vec<usize>, Vec<usize>);

/// The rows and columns of `bytes` (a 2-D tensor) that initializer `name` holds: a slice of them
/// the rewrite left pending, or all of them where it is still that tensor.
fn kept(g: &GraphProto, pending: &Pending, name: &str, bytes: &Bytes) -> Option<Kept> {
    let t = g.initializer.iter().find(|t| t.name() == name)?;
    match pending.get(name) {
        Some(slice) => slice.kept(bytes).map(|(rows, cols)| (rows.to_vec(), cols)),
        None => {
            let raw = t.raw_data.as_ref()?;
            let [r, c] = t.dims[..] else { return None };
            let whole = raw.as_ptr() == bytes.as_ptr() && raw.len() == bytes.len();
            whole.then(|| ((0..r as usize).collect(), (0..c as usize).collect()))
        }
    }
}

/// The initializers `node` computes, when it is a `Split` or `Transpose` of a float initializer
/// with constant sizes.
fn fold<'g>(
    node: &NodeProto,
    constant: &impl Fn(&str) -> Option<&'g TensorProto>,
    opset: i64,
) -> Option<Vec<TensorProto>> {
    let x = constant(node.input.first().filter(|_| node.default_domain())?)?;
    let values = Values::of(x).ok()?;
    let dims: Vec<usize> = values.dims.iter().map(|&d| d as usize).collect();
    let named = |name: &String, dims: Vec<usize>, raw: Vec<u8>| TensorProto {
        name: Some(name.clone()),
        ..with_data(x, dims.iter().map(|&d| d as i64).collect(), values.dtype, raw)
    };
    match node.op_type() {
        "Transpose" => {
            let r = dims.len();
            let perm: Vec<usize> = match node.attr_ints("perm") {
                Some(p) => p.iter().map(|&a| usize::try_from(a).ok().filter(|&a| a < r)).collect::<Option<_>>()?,
                None => (0..r).rev().collect(),
            };
            let mut seen = vec![false; r];
            if perm.len() != r || perm.iter().any(|&a| std::mem::replace(&mut seen[a], true)) {
                return None;
            }
            let out: Vec<usize> = perm.iter().map(|&a| dims[a]).collect();
            let mut strides = vec![1; r];
            (0..r.saturating_sub(1)).rev().for_each(|i| strides[i] = strides[i + 1] * dims[i + 1]);
            let total: usize = out.iter().product();
            // Output element k, its index digit by digit, is input element sum(digit * stride).
            let source = (0..total).map(|k| {
                let (mut rest, mut at) = (k, 0);
                for q in (0..r).rev() {
                    at += (rest % out[q]) * strides[perm[q]];
                    rest /= out[q];
                }
                at
            });
            let raw = values.gather(source);
            Some(vec![named(node.output.first()?, out, raw)])
        }
        "Split" => {
            let axis = normalize(node.attr_i("axis", 0), dims.len())?;
            let parts = node.output.len();
            let sizes: Vec<usize> = match node.input.get(1).filter(|s| !s.is_empty()) {
                Some(s) => int64s(constant(s)?).into_iter().map(|v| usize::try_from(v).ok()).collect::<Option<_>>()?,
                None => match node.attr_ints("split") {
                    Some(v) if opset < 13 => v.into_iter().map(|v| usize::try_from(v).ok()).collect::<Option<_>>()?,
                    _ => {
                        // Equal parts, the last smaller when `num_outputs` does not divide.
                        let each = dims[axis].div_ceil(parts.max(1));
                        (0..parts).map(|p| each.min(dims[axis].saturating_sub(p * each))).collect()
                    }
                },
            };
            if sizes.len() != parts || sizes.iter().sum::<usize>() != dims[axis] {
                return None;
            }
            let mut at = 0;
            let mut out = vec![];
            for (name, &size) in node.output.iter().zip(&sizes) {
                let keep: Vec<usize> = (at..at + size).collect();
                at += size;
                if name.is_empty() {
                    continue;
                }
                let mut d = dims.clone();
                d[axis] = size;
                out.push(named(name, d, values.gather_axis(axis, &keep)));
            }
            Some(out)
        }
        _ => None,
    }
}

/// Sizes that no input can change become constants, as `onnxsim` folds them. TorchScript writes
/// `nn.MultiheadAttention`'s head size as `Shape(x)[2] / H`, its softmax scale as
/// `1 / sqrt(Shape(q)[-1])` and its packed projection's shape with `-1 % 3`, all computed at run
/// time from dimensions the model declares: the channel rules would keep every tensor read that
/// way whole. As constants they are entries a rule can rewrite (a reshape target) or a number
/// that keeps its meaning (the scale stays the original `1 / sqrt(head_dim)` when the head
/// shrinks). Only values every entry of which the graph fixes are folded (`Ir::computed_ints`,
/// from declared and inferred dimensions), so any input the model accepts computes them alike.
/// Returns the folded copy of `g`, or `None` where nothing folds (and nothing was copied).
pub(crate) fn sizes(g: &GraphProto, ir: &Ir) -> Option<GraphProto> {
    let int64 = DataType::Int64 as i32;
    // Float scalars computed so far (the scale's steps), by name.
    let mut floats: HashMap<String, (FloatType, f64)> = HashMap::new();
    let mut folded: Vec<(usize, TensorProto)> = vec![];
    for &i in &ir.order {
        let node = &g.node[i];
        let Some(out) = node.output.first().filter(|o| !o.is_empty() && node.output.len() == 1) else { continue };
        if !node.default_domain() || node.op_type() == "Constant" || ir.outputs.contains(out) || ir.is_const(out) {
            continue;
        }
        let dims: Option<Vec<i64>> =
            ir.shape(out).and_then(|s| s.iter().map(|d| d.and_then(|d| i64::try_from(d).ok())).collect());
        if let (Some(v), Some(dims)) = (ir.computed_ints(out), dims) {
            let small = v.len() <= MAX_FOLDED && numel(&dims) == Some(v.len() as u64);
            if small && ir.elem_type(g, out) == Some(int64) && !reads_back_itself(g, ir, out) {
                folded.push((i, TensorProto { dims, ..build::int64_tensor(out, v) }));
                continue;
            }
        }
        if let Some((dtype, x)) = float_step(node, ir, g, &floats) {
            floats.insert(out.clone(), (dtype, x));
            let scalar = with_data(&TensorProto::default(), vec![], dtype, encode(dtype, &[x]));
            folded.push((i, TensorProto { name: Some(out.clone()), ..scalar }));
        }
    }
    if folded.is_empty() {
        return None;
    }
    let mut g = g.clone();
    let gone: HashSet<usize> = folded.iter().map(|&(i, _)| i).collect();
    let sources: Vec<String> = gone.iter().flat_map(|&i| g.node[i].input.clone()).collect();
    g.initializer.extend(folded.into_iter().map(|(_, t)| t));
    remove_nodes(&mut g, &gone);
    split_shape_pieces(&mut g);
    drop_unread(&mut g, sources);
    Some(g)
}

/// Removes the nodes at the indices `gone`.
pub(crate) fn remove_nodes(g: &mut GraphProto, gone: &HashSet<usize>) {
    let mut at = 0;
    g.node.retain(|_| {
        at += 1;
        !gone.contains(&(at - 1))
    });
}

/// Whether `value` is dimensions of tensors read back plainly (`Shape`, then picks and
/// regrouping only) into the target of a reshape of one of those tensors: `k.view(-1, T, D)`
/// with `T` and `D` read from `k` follows k's new size as it is, where a constant would need a
/// rule to rewrite it.
fn reads_back_itself(g: &GraphProto, ir: &Ir, value: &str) -> bool {
    const PLAIN: &[&str] = &["Gather", "Slice", "Squeeze", "Unsqueeze", "Concat", "Reshape", "Identity", "Cast"];
    // The tensors read, walking up through plain steps only; `None` past any other step.
    fn read(g: &GraphProto, ir: &Ir, value: &str, depth: usize, out: &mut HashSet<String>) -> Option<()> {
        let Some(&n) = ir.producer.get(value) else { return ir.is_const(value).then_some(()) };
        let node = &g.node[n];
        match node.op_type() {
            "Shape" => {
                out.insert(node.input.first()?.clone());
                Some(())
            }
            op if PLAIN.contains(&op) && depth < 8 => {
                node.input.iter().filter(|s| !s.is_empty()).try_for_each(|s| read(g, ir, s, depth + 1, out))
            }
            _ => None,
        }
    }
    fn reshaped(g: &GraphProto, ir: &Ir, value: &str, tensors: &HashSet<String>, depth: usize) -> bool {
        ir.readers(value).iter().any(|&(n, slot)| {
            let node = &g.node[n];
            match node.op_type() {
                "Reshape" if slot == 1 => node.input.first().is_some_and(|x| tensors.contains(x)),
                "Concat" | "Squeeze" | "Unsqueeze" | "Identity" | "Cast" if depth < 8 => {
                    node.output.first().is_some_and(|o| reshaped(g, ir, o, tensors, depth + 1))
                }
                _ => false,
            }
        })
    }
    let mut tensors = HashSet::new();
    read(g, ir, value, 0, &mut tensors).is_some() && !tensors.is_empty() && reshaped(g, ir, value, &tensors, 0)
}

/// Folded values hold at most this many entries (shapes, not tensors).
const MAX_FOLDED: usize = 64;

/// The float scalar a node computes from constants and folded sizes: the steps of a scale
/// (`Cast`, `Sqrt`, `Div`, ...), each rounded to its type as the runtime rounds it (these
/// operations are correctly rounded, so computing in f64 and rounding once is exact).
fn float_step(
    node: &NodeProto,
    ir: &Ir,
    g: &GraphProto,
    floats: &HashMap<String, (FloatType, f64)>,
) -> Option<(FloatType, f64)> {
    let scalar = |name: &String| -> Option<(Option<FloatType>, f64)> {
        if let Some(&(t, x)) = floats.get(name) {
            return Some((Some(t), x));
        }
        if let Some(v) = ir.computed_ints(name).filter(|v| v.len() == 1) {
            return Some((None, v[0] as f64));
        }
        let t = ir.const_tensor(g, name)?;
        match FloatType::from_onnx(t.data_type()) {
            Some(ft) => Values::of(t).ok().filter(|v| v.len() == 1).map(|v| (Some(ft), v.get(0))),
            None => {
                int64s(t).first().copied().filter(|_| t.data_type() == DataType::Int64 as i32).map(|v| (None, v as f64))
            }
        }
    };
    let operands: Vec<(Option<FloatType>, f64)> = node.input.iter().map(scalar).collect::<Option<_>>()?;
    let dtype = match node.op_type() {
        "Cast" => FloatType::from_onnx(node.attr_i("to", 0) as i32)?,
        _ => operands.first()?.0?,
    };
    // Every float operand is of the result's type (a mixed graph is not ours to reinterpret).
    if operands.iter().any(|(t, _)| t.is_some_and(|t| t != dtype)) || operands.is_empty() {
        return None;
    }
    let x = |k: usize| operands.get(k).map(|o| o.1);
    let v = match (node.op_type(), operands.len()) {
        ("Cast", 1) => x(0)?,
        ("Sqrt", 1) => x(0)?.sqrt(),
        ("Reciprocal", 1) => 1.0 / x(0)?,
        ("Neg", 1) => -x(0)?,
        ("Add", 2) => x(0)? + x(1)?,
        ("Sub", 2) => x(0)? - x(1)?,
        ("Mul", 2) => x(0)? * x(1)?,
        ("Div", 2) => x(0)? / x(1)?,
        _ => return None,
    };
    // Ints stay exact in the float only where they are small; anything not finite stays computed.
    let exact = operands.iter().all(|(t, x)| t.is_some() || x.abs() < (1u64 << 24) as f64);
    (exact && v.is_finite()).then(|| (dtype, dtype.round(v)))
}

/// A shape assembled from read dimensions and folded sizes (`Concat(Slice(Shape(x), 0, 2),
/// [3, E], [])`) lists each folded entry on its own, as the exporters write constant entries,
/// so that the reshape rules find them by position; empty pieces go.
fn split_shape_pieces(g: &mut GraphProto) {
    let ints: HashMap<String, Vec<i64>> = g
        .initializer
        .iter()
        .filter(|t| t.data_type() == DataType::Int64 as i32 && t.dims.len() == 1 && t.dims[0] as usize <= MAX_FOLDED)
        .filter_map(|t| Some((t.name.clone()?, int64s(t))))
        .collect();
    let mut taken: HashSet<String> = g.initializer.iter().filter_map(|t| t.name.clone()).collect();
    taken.extend(g.node.iter().flat_map(|n| n.output.iter().cloned()));
    let mut added = vec![];
    let mut split = HashSet::new();
    for node in g.node.iter_mut().filter(|n| n.op_type() == "Concat" && n.attr_i("axis", 0) == 0) {
        let pieces: Vec<Option<&Vec<i64>>> = node.input.iter().map(|s| ints.get(s)).collect();
        let splits = pieces.iter().any(|p| p.is_some_and(|v| v.len() != 1));
        if !splits || pieces.iter().all(Option::is_some) || pieces.iter().all(|p| p.is_some_and(Vec::is_empty)) {
            continue;
        }
        let mut inputs = vec![];
        for (name, piece) in node.input.iter().zip(pieces) {
            match piece {
                Some(v) if v.len() != 1 => {
                    split.insert(name.clone());
                    for (k, &e) in v.iter().enumerate() {
                        let entry =
                            (0..).map(|n| format!("{name}_{k}_{n}")).find(|s| !taken.contains(s)).expect("a free name");
                        taken.insert(entry.clone());
                        added.push(build::int64_tensor(&entry, &[e]));
                        inputs.push(entry);
                    }
                }
                _ => inputs.push(name.clone()),
            }
        }
        node.input = inputs;
    }
    g.initializer.extend(added);
    let read: HashSet<&str> = g.node.iter().flat_map(|n| n.input.iter()).map(String::as_str).collect();
    let unread: HashSet<String> = split.into_iter().filter(|n| !read.contains(n.as_str())).collect();
    g.initializer.retain(|t| t.name.as_ref().is_none_or(|n| !unread.contains(n)));
}

/// Removes what computed only the folded values: nodes of the size steps nothing reads any
/// more, starting from the producers of `sources`, and the constants they alone read.
fn drop_unread(g: &mut GraphProto, mut sources: Vec<String>) {
    const STEPS: &[&str] = &[
        "Shape",
        "Size",
        "Gather",
        "Slice",
        "Squeeze",
        "Unsqueeze",
        "Concat",
        "Cast",
        "Constant",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Mod",
        "Sqrt",
        "Reshape",
        "Identity",
        "Reciprocal",
        "Neg",
    ];
    let mut reads: HashMap<String, usize> = HashMap::new();
    let count = |n: &NodeProto, reads: &mut HashMap<String, usize>| {
        let mut names: Vec<String> = n.input.iter().filter(|s| !s.is_empty()).cloned().collect();
        crate::ir::implicit_reads(n, &mut names);
        names.into_iter().for_each(|s| *reads.entry(s).or_default() += 1);
    };
    g.node.iter().for_each(|n| count(n, &mut reads));
    g.output.iter().filter_map(|o| o.name.clone()).for_each(|o| *reads.entry(o).or_default() += 1);
    let producer: HashMap<String, usize> =
        g.node.iter().enumerate().flat_map(|(i, n)| n.output.iter().map(move |o| (o.clone(), i))).collect();
    let mut gone = HashSet::new();
    let mut dropped_inputs = vec![];
    while let Some(name) = sources.pop() {
        let Some(&i) = producer.get(&name) else {
            dropped_inputs.push(name);
            continue;
        };
        let n = &g.node[i];
        let unread = n.output.iter().all(|o| reads.get(o).is_none_or(|&r| r == 0));
        let step = STEPS.contains(&n.op_type()) && n.default_domain();
        if gone.contains(&i) || !unread || !step {
            continue;
        }
        gone.insert(i);
        for s in n.input.iter().filter(|s| !s.is_empty()) {
            reads.entry(s.clone()).and_modify(|r| *r -= 1);
            sources.push(s.clone());
        }
    }
    remove_nodes(g, &gone);
    let graph_inputs: HashSet<String> = g.input.iter().filter_map(|i| i.name.clone()).collect();
    let unread: HashSet<String> = dropped_inputs
        .into_iter()
        .filter(|s| reads.get(s).is_none_or(|&r| r == 0) && !graph_inputs.contains(s))
        .collect();
    g.initializer.retain(|t| t.name.as_ref().is_none_or(|n| !unread.contains(n)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::build::{attr_int, f32_tensor, int64_tensor, node, value_info};

    fn scalar(name: &str, v: i64) -> TensorProto {
        TensorProto { dims: vec![], ..int64_tensor(name, &[v]) }
    }

    /// TorchScript's `nn.MultiheadAttention` on `x: [batch, 7, 12]`: the head size `12 / 2`, a
    /// target `[B, 3, head size]` assembled from a folded pair, the scale `1 / sqrt(head size)`,
    /// and the `-1 % 3` of its packed projection's shape.
    #[test]
    fn sizes_of_declared_dimensions_fold_and_the_batch_stays_read() {
        let float = attr_int("to", DataType::Float as i64);
        let mut g = GraphProto {
            node: vec![
                node("Shape", "shape", &["x"], &["s"], vec![]),
                node("Gather", "width", &["s", "two"], &["e"], vec![]),
                node("Div", "per_head", &["e", "heads"], &["d"], vec![]),
                node("Cast", "int", &["d"], &["dc"], vec![attr_int("to", DataType::Int64 as i64)]),
                node("Unsqueeze", "one", &["dc"], &["du"], vec![]),
                node("Concat", "pair", &["three", "du"], &["p"], vec![attr_int("axis", 0)]),
                node("Gather", "batch", &["s", "zero"], &["b"], vec![]),
                node("Unsqueeze", "b1", &["b", "axes"], &["bu"], vec![]),
                node("Concat", "target", &["bu", "p"], &["t"], vec![attr_int("axis", 0)]),
                node("Reshape", "r", &["x", "t"], &["y"], vec![]),
                node("Cast", "f", &["d"], &["df"], vec![float]),
                node("Sqrt", "sqrt", &["df"], &["sd"], vec![]),
                node("Div", "inv", &["one_f", "sd"], &["scale"], vec![]),
                node("Mul", "scaled", &["x", "scale"], &["z"], vec![]),
                node("Mod", "mod", &["minus1", "three"], &["m"], vec![]),
            ],
            initializer: vec![
                scalar("two", 2),
                scalar("heads", 2),
                scalar("zero", 0),
                int64_tensor("three", &[3]),
                int64_tensor("axes", &[0]),
                int64_tensor("minus1", &[-1]),
                TensorProto { dims: vec![], ..f32_tensor("one_f", &[], &[1.0]) },
            ],
            input: vec![value_info("x", DataType::Float, &[None, Some(7), Some(12)])],
            ..Default::default()
        };
        g.node[4].input.push("axes".into());
        let named = |n: &str| crate::onnx::proto::ValueInfoProto { name: Some(n.into()), ..Default::default() };
        g.output = vec![named("y"), named("z"), named("m")];
        let ir = Ir::build(&g, 17).unwrap();
        assert_eq!(ir.computed_ints("m"), Some(&[2][..]), "computed, but a graph output stays as it is");
        let g = sizes(&g, &ir).expect("sizes fold");
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type()).collect();
        assert_eq!(ops, ["Shape", "Gather", "Unsqueeze", "Concat", "Reshape", "Mul", "Mod"]);
        let t = |name: &str| g.initializer.iter().find(|t| t.name() == name).unwrap_or_else(|| panic!("{name}"));
        let target = &g.node[3];
        assert_eq!(target.input.len(), 3, "the folded pair's entries, one by one: {:?}", target.input);
        assert_eq!([int64s(t(&target.input[1])), int64s(t(&target.input[2]))], [vec![3], vec![6]]);
        let scale = Values::of(t("scale")).unwrap().get(0);
        assert_eq!(scale, (1.0f32 / 6f32.sqrt()) as f64);
        for gone in ["e", "d", "dc", "df", "sd", "two", "heads", "p"] {
            assert!(g.initializer.iter().all(|t| t.name() != gone), "{gone} stays");
        }
        let rebuilt = Ir::build(&g, 17).unwrap();
        assert_eq!(rebuilt.shape("y"), Some(&[None, Some(3), Some(6)][..]));
    }

    #[test]
    fn the_remainder_takes_the_divisors_sign() {
        let g = GraphProto {
            node: vec![node("Mod", "mod", &["a", "b"], &["m"], vec![])],
            initializer: vec![int64_tensor("a", &[-1, 7, -7]), int64_tensor("b", &[3])],
            ..Default::default()
        };
        assert_eq!(Ir::build(&g, 17).unwrap().computed_ints("m"), Some(&[2, 1, 2][..]));
    }
}
