//! Weights computed from weights become weights. `nn.MultiheadAttention` called with a query that
//! is not its key (cross-attention, DETR, decoder layers) splits its packed projection at run
//! time, `w_q, w_kv = in_proj_weight.split([E, 2E])`, and the dynamo exporter writes the `Split`
//! (and the `Transpose` of each part) into the graph: the linear rules would see a computed
//! weight and keep everything. Folding `Split` and `Transpose` of float initializers into new
//! initializers, byte for byte, lets them see the constant; the minimized model then stores the
//! parts instead of the whole and its split, the same numbers. A matrix that other nodes read too
//! (a tied embedding table transposed for the output head) is left alone: folding it would store
//! it twice.

use std::collections::{HashMap, HashSet};

use super::proto::{GraphProto, NodeProto, TensorProto};
use super::tensor::{int64s, with_data, Values};
use crate::ir::{normalize, NodeExt};

/// Folds what it can, a pass at a time until nothing changes; says how many nodes went.
pub(crate) fn constants(g: &mut GraphProto, opset: i64) -> usize {
    let shadowed: HashSet<String> = g.input.iter().filter_map(|i| i.name.clone()).collect();
    let mut folded = 0;
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
        // A weight something else reads too (a tied embedding table that a head transposes) would
        // be stored twice: only a weight read by this node alone is folded, or a vector (a bias
        // that the exporter shares between two layers because its values are equal).
        let mut readers: HashMap<&str, usize> = HashMap::new();
        for name in g.node.iter().flat_map(|n| n.input.iter()).chain(g.output.iter().filter_map(|o| o.name.as_ref())) {
            *readers.entry(name.as_str()).or_default() += 1;
        }
        let alone = |node: &NodeProto| {
            node.input
                .first()
                .is_some_and(|x| readers.get(x.as_str()) == Some(&1) || constant(x).is_some_and(|t| t.dims.len() <= 1))
        };
        // Every node foldable now, in one pass; what they make may be foldable in the next.
        let done: Vec<(usize, Vec<TensorProto>)> = g
            .node
            .iter()
            .enumerate()
            .filter(|(_, n)| alone(n))
            .filter_map(|(n, node)| Some((n, fold(node, &constant, opset)?)))
            .collect();
        if done.is_empty() {
            break;
        }
        let mut gone_nodes = HashSet::new();
        for (n, outputs) in done {
            sources.extend(g.node[n].input.iter().filter(|i| !i.is_empty()).cloned());
            g.initializer.extend(outputs);
            gone_nodes.insert(n);
        }
        folded += gone_nodes.len();
        let mut at = 0;
        g.node.retain(|_| {
            at += 1;
            !gone_nodes.contains(&(at - 1))
        });
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
    folded
}

/// The initializers `node` computes, when it is a `Split` or `Transpose` of a float initializer
/// with constant sizes.
fn fold<'g>(
    node: &NodeProto,
    constant: &impl Fn(&str) -> Option<&'g TensorProto>,
    opset: i64,
) -> Option<Vec<TensorProto>> {
    let default = node.domain().is_empty() || node.domain() == "ai.onnx";
    let x = constant(node.input.first().filter(|_| default)?)?;
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
