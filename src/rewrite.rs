//! Applying a plan to the model: new tensors, new attributes, widths in the type information.
//!
//! Rules describe changes as [`Edit`]s against node inputs instead of touching the proto, so the
//! analysis can borrow the graph while planning and the rewrite owns it afterwards. A constant
//! shared by several nodes is never changed in place: the edited node gets a private copy.

use std::collections::{HashMap, HashSet};

use prost::Message;

use crate::ir::{ConstRef, Ir};
use crate::onnx::build::{attr_int, int64_tensor};
use crate::onnx::proto::{type_proto, AttributeProto, GraphProto, NodeProto, TensorProto};
use crate::onnx::tensor::{with_data, Data, FloatType, RowSlice};

/// What [`apply`] itself may add: the Gathers in front of graph inputs.
pub(crate) const EMITS: &[&str] = &["Gather"];

// Edits are few (a handful per layer), so their size does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Edit {
    /// New contents for the constant that `node` reads at input `slot`.
    Const {
        node: usize,
        slot: usize,
        tensor: TensorProto,
    },
    /// Like `Const`, with bytes that are a slice of the stored tensor, copied when the model is
    /// written; `tensor` holds everything else.
    Slice {
        node: usize,
        slot: usize,
        tensor: TensorProto,
        data: RowSlice,
    },
    /// A new constant at input `slot` of `node` (a Gemm gaining its C, a Split its sizes).
    SetInput {
        node: usize,
        slot: usize,
        tensor: TensorProto,
    },
    Attr {
        node: usize,
        attr: AttributeProto,
    },
    /// Optional input `slot` of `node` becomes absent (a recurrent layer's computed zero state).
    DropInput {
        node: usize,
        slot: usize,
    },
    RemoveAttr {
        node: usize,
        name: String,
    },
    /// `node` replaced by `nodes` (reading its inputs, writing its outputs) with new constants;
    /// names starting with `$` are local to the replacement and made unique.
    Replace {
        node: usize,
        nodes: Vec<NodeProto>,
        initializers: Vec<TensorProto>,
    },
    /// Input `slot` of `node` reads a private copy of `producer` (a target shape that other
    /// reshapes share), whose inputs at the given slots become the given constants.
    CloneProducer {
        node: usize,
        slot: usize,
        producer: usize,
        entries: Vec<(usize, TensorProto)>,
    },
    /// `node` goes (a decomposed LayerNorm's inner node, once its last node is replaced).
    Remove {
        node: usize,
    },
    /// `nodes` inserted after `node`: they read its output as `$before` and write what it wrote
    /// as `$after` (a padded Conv's correction for the constants it no longer reads); other
    /// names starting with `$` are local, as in `Replace`.
    Follow {
        node: usize,
        nodes: Vec<NodeProto>,
        initializers: Vec<TensorProto>,
    },
    /// `Add(output, tensor)` inserted after `node`, which had no bias to fold constants into.
    AddBias {
        node: usize,
        tensor: TensorProto,
    },
    /// Readers of graph input `input` read only features `keep` (along `axis`), through a Gather.
    GatherInput {
        input: String,
        axis: isize,
        keep: Vec<usize>,
    },
    /// Input `slot` of `node` reads the entries `keep` (along `axis`) of what it read, through
    /// a Gather shared by every reader that keeps the same entries (a rotary table read by the
    /// queries and keys of every layer).
    GatherOperand {
        node: usize,
        slot: usize,
        axis: isize,
        keep: Vec<usize>,
    },
    /// A value's declared size along its channel axis changes.
    Width {
        value: String,
        axis: isize,
        from: usize,
        to: usize,
    },
}

impl Edit {
    /// New contents for the constant at `slot` of `node`: `like` with these dims and data.
    pub(crate) fn sliced(
        node: usize,
        slot: usize,
        like: &TensorProto,
        dims: Vec<i64>,
        dtype: FloatType,
        data: Data,
    ) -> Edit {
        match data {
            Data::Bytes(raw) => Edit::Const { node, slot, tensor: with_data(like, dims, dtype, raw) },
            Data::Rows(data) => {
                let tensor = TensorProto { raw_data: None, ..with_data(like, dims, dtype, vec![]) };
                Edit::Slice { node, slot, tensor, data }
            }
        }
    }
}

/// Tensor bytes to be copied when the model is written, by initializer name.
pub(crate) type Pending = HashMap<String, RowSlice>;

/// What applying a plan leaves besides the graph: slices to copy when writing, and the
/// constant each private copy was made of (so that a copy of a quantized weight is stored
/// quantized again, `onnx/quant.rs`).
pub(crate) struct Applied {
    pub pending: Pending,
    pub copied_from: HashMap<String, String>,
}

/// How many parameters `edits` add to the graph (negative: remove), counting each edited constant as if
/// private; enough to compare two plans for the same graph.
pub(crate) fn param_growth(edits: &[Edit], g: &GraphProto, ir: &Ir) -> i64 {
    let numel = |t: &TensorProto| crate::onnx::tensor::numel(&t.dims).map_or(0, |n| n as i64);
    let read = |node: usize, slot: usize| {
        g.node[node].input.get(slot).and_then(|name| ir.const_tensor(g, name)).map_or(0, numel)
    };
    edits
        .iter()
        .map(|e| match e {
            Edit::Const { node, slot, tensor }
            | Edit::Slice { node, slot, tensor, .. }
            | Edit::SetInput { node, slot, tensor } => numel(tensor) - read(*node, *slot),
            Edit::Replace { initializers, .. } | Edit::Follow { initializers, .. } => {
                initializers.iter().map(numel).sum()
            }
            Edit::CloneProducer { entries, .. } => entries.iter().map(|(_, t)| numel(t)).sum(),
            Edit::AddBias { tensor, .. } => numel(tensor),
            Edit::GatherInput { keep, .. } | Edit::GatherOperand { keep, .. } => keep.len() as i64,
            Edit::Attr { .. }
            | Edit::RemoveAttr { .. }
            | Edit::DropInput { .. }
            | Edit::Remove { .. }
            | Edit::Width { .. } => 0,
        })
        .sum()
}

pub(crate) struct Names(HashSet<String>);

impl Names {
    pub(crate) fn of(g: &GraphProto) -> Names {
        let mut s: HashSet<String> = g.initializer.iter().filter_map(|t| t.name.clone()).collect();
        for n in &g.node {
            s.extend(n.input.iter().chain(&n.output).cloned());
            s.insert(n.name().to_string());
        }
        Names(s)
    }

    pub(crate) fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut i = 1;
        while self.0.contains(&name) {
            name = format!("{base}_{i}");
            i += 1;
        }
        self.0.insert(name.clone());
        name
    }
}

enum Structural {
    Bias(Box<TensorProto>),
    Replace(Vec<NodeProto>, Vec<TensorProto>),
    Follow(Vec<NodeProto>, Vec<TensorProto>),
    Remove,
    InsertAfter(Box<NodeProto>),
    InsertBefore(Box<NodeProto>),
}

/// Gives the `$`-names of inserted nodes and constants fresh names under `base` (or the names
/// `preset` maps them to).
fn localize(
    names: &mut Names,
    base: &str,
    mut local: HashMap<String, String>,
    nodes: &mut [NodeProto],
    initializers: &mut [TensorProto],
) {
    let mut rename = |n: &mut String| {
        if let Some(l) = n.strip_prefix('$') {
            *n = local.entry(l.to_string()).or_insert_with(|| names.fresh(&format!("{base}_{l}"))).clone();
        }
    };
    for n in nodes.iter_mut() {
        n.input.iter_mut().chain(n.output.iter_mut()).for_each(&mut rename);
        if let Some(name) = n.name.as_mut() {
            rename(name);
        }
    }
    for t in initializers.iter_mut() {
        if let Some(name) = t.name.as_mut() {
            rename(name);
        }
    }
}

/// Applies `edits` to `g`, and returns the tensors whose bytes are still to be copied.
pub(crate) fn apply(g: &mut GraphProto, ir: &Ir, edits: Vec<Edit>) -> Applied {
    let mut cx = Apply {
        names: Names::of(g),
        orphaned: HashSet::new(),
        structural: vec![],
        copies: HashMap::new(),
        copied_from: HashMap::new(),
        pending: Pending::new(),
        gathers: vec![],
        operand_gathers: HashMap::new(),
        clones: HashMap::new(),
    };
    for edit in edits {
        cx.edit(g, ir, edit);
    }
    cx.finish(g)
}

/// A Gather of an operand: the value, the axis and the entries kept.
type OperandGather = (String, isize, Vec<usize>);

/// What applying the edits collects before the structural changes, which shift node indices,
/// run last.
struct Apply {
    names: Names,
    /// Constants that lost a reader, to drop if they lost all.
    orphaned: HashSet<String>,
    structural: Vec<(usize, Structural)>,
    /// Private copies made of each shared constant.
    copies: HashMap<ConstRef, Vec<usize>>,
    /// The constant each private copy was made of, by the copy's name.
    copied_from: HashMap<String, String>,
    pending: Pending,
    gathers: Vec<(String, isize, Vec<usize>)>,
    /// Gathers of operands by (value, axis, entries): their output and first reader.
    /// Each such Gather and its first reader.
    operand_gathers: HashMap<OperandGather, (NodeProto, usize)>,
    /// Private copies of shared producers by what they were given: readers that need the same
    /// copy (the K targets of every layer) share one.
    clones: HashMap<CloneKey, String>,
}

/// A producer and its new constant inputs (slot, encoded tensor without its name).
type CloneKey = (usize, Vec<(usize, Vec<u8>)>);

impl Apply {
    /// New contents for the constant at `slot` of `node`, with bytes now (`data` none) or later.
    fn set_const(
        &mut self,
        g: &mut GraphProto,
        ir: &Ir,
        node: usize,
        slot: usize,
        mut tensor: TensorProto,
        data: Option<RowSlice>,
    ) {
        let input = g.node[node].input[slot].clone();
        let cref = ir.const_ref(&input).expect("edits target constants");
        if ir.const_uses.get(&cref).copied().unwrap_or(0) <= 1 {
            let stored = cref.tensor_mut(g);
            tensor.name = stored.name.take();
            self.store(matches!(cref, ConstRef::Initializer(_)), &mut tensor, data);
            *cref.tensor_mut(g) = tensor;
            return;
        }
        // Readers of a shared weight that keep the same slice share one copy.
        let pending = &self.pending;
        let same = |t: &TensorProto| {
            let slice = t.name.as_ref().and_then(|n| pending.get(n));
            t.dims == tensor.dims
                && t.data_type == tensor.data_type
                && match (&data, slice) {
                    (Some(a), Some(b)) => a.same(b),
                    (None, None) => t.raw_data == tensor.raw_data,
                    _ => false,
                }
        };
        let copy = self.copies.get(&cref).into_iter().flatten().copied().find(|&i| same(&g.initializer[i]));
        let name = match copy {
            Some(i) => g.initializer[i].name.clone().unwrap_or_default(),
            None => {
                let name = self.names.fresh(&format!("{input}_min"));
                tensor.name = Some(name.clone());
                self.store(true, &mut tensor, data);
                g.initializer.push(tensor);
                self.copies.entry(cref).or_default().push(g.initializer.len() - 1);
                self.copied_from.insert(name.clone(), input.clone());
                name
            }
        };
        g.node[node].input[slot] = name;
        self.orphaned.insert(input);
    }

    /// Registers the slice of a new initializer; a tensor inside a `Constant` node is packed now,
    /// as the writer streams initializers only.
    fn store(&mut self, initializer: bool, tensor: &mut TensorProto, data: Option<RowSlice>) {
        match (data, tensor.name.clone()) {
            (Some(data), Some(name)) if initializer => {
                self.pending.insert(name, data);
            }
            (Some(data), _) => tensor.raw_data = Some(data.to_vec().into()),
            (None, _) => {}
        }
    }

    fn edit(&mut self, g: &mut GraphProto, ir: &Ir, edit: Edit) {
        let Apply { names, orphaned, structural, gathers, clones, .. } = self;
        match edit {
            Edit::Const { node, slot, tensor } => self.set_const(g, ir, node, slot, tensor, None),
            Edit::Slice { node, slot, tensor, data } => self.set_const(g, ir, node, slot, tensor, Some(data)),
            Edit::SetInput { node, slot, mut tensor } => {
                let name = names.fresh(&format!("{}_input{slot}", g.node[node].name()));
                tensor.name = Some(name.clone());
                g.initializer.push(tensor);
                let inputs = &mut g.node[node].input;
                if inputs.len() <= slot {
                    inputs.resize(slot + 1, String::new());
                }
                inputs[slot] = name;
            }
            Edit::RemoveAttr { node, name } => g.node[node].attribute.retain(|a| a.name() != name),
            Edit::DropInput { node, slot } => {
                let inputs = &mut g.node[node].input;
                if let Some(input) = inputs.get_mut(slot) {
                    input.clear();
                }
                while inputs.last().is_some_and(String::is_empty) {
                    inputs.pop();
                }
            }
            Edit::Attr { node, attr } => {
                let attrs = &mut g.node[node].attribute;
                match attrs.iter_mut().find(|a| a.name == attr.name) {
                    Some(a) => *a = attr,
                    None => attrs.push(attr),
                }
            }
            Edit::AddBias { node, tensor } => structural.push((node, Structural::Bias(Box::new(tensor)))),
            Edit::Follow { node, nodes, initializers } => {
                structural.push((node, Structural::Follow(nodes, initializers)))
            }
            Edit::Replace { node, nodes, initializers } => {
                // The replaced node's constants (a LayerNorm's scale and bias) may be read by
                // nothing else now.
                orphaned.extend(g.node[node].input.iter().filter(|i| ir.is_const(i)).cloned());
                structural.push((node, Structural::Replace(nodes, initializers)));
            }
            Edit::CloneProducer { node, slot, producer, entries } => {
                let content = |t: &TensorProto| TensorProto { name: None, ..t.clone() }.encode_to_vec();
                let key = (producer, entries.iter().map(|(s, t)| (*s, content(t))).collect());
                if let Some(out) = clones.get(&key) {
                    g.node[node].input[slot] = out.clone();
                    return;
                }
                let mut copy = g.node[producer].clone();
                let base = format!("{}_for_{}", copy.output[0], g.node[node].name());
                let out = names.fresh(&base);
                for (producer_slot, mut tensor) in entries {
                    let constant = names.fresh(&format!("{base}_entry"));
                    tensor.name = Some(constant.clone());
                    g.initializer.push(tensor);
                    copy.input[producer_slot] = constant;
                }
                copy.name = Some(names.fresh(&format!("{}_copy", copy.name())));
                copy.output = vec![out.clone()];
                g.node[node].input[slot] = out.clone();
                clones.insert(key, out);
                structural.push((producer, Structural::InsertAfter(Box::new(copy))));
            }
            Edit::Remove { node } => {
                orphaned.extend(g.node[node].input.iter().filter(|i| ir.is_const(i)).cloned());
                structural.push((node, Structural::Remove));
            }
            Edit::Width { value, axis, from, to } => set_width(g, &value, axis, from, to),
            Edit::GatherInput { input, axis, keep } => gathers.push((input, axis, keep)),
            Edit::GatherOperand { node, slot, axis, keep } => {
                let input = g.node[node].input[slot].clone();
                let (gather, first) = self
                    .operand_gathers
                    .entry((input.clone(), axis, keep.clone()))
                    .or_insert_with(|| (kept_gather(&mut self.names, g, &input, axis, &keep, "gather_kept"), node));
                *first = (*first).min(node);
                g.node[node].input[slot] = gather.output[0].clone();
            }
        }
    }

    fn finish(self, g: &mut GraphProto) -> Applied {
        let Apply { mut names, orphaned, mut structural, gathers, pending, operand_gathers, copied_from, .. } = self;
        // In a fixed order: gathers in front of one node go in by name, not by hash.
        let mut operand_gathers: Vec<(NodeProto, usize)> = operand_gathers.into_values().collect();
        operand_gathers.sort_by(|(a, m), (b, n)| (m, &a.output).cmp(&(n, &b.output)));
        for (gather, first) in operand_gathers {
            structural.push((first, Structural::InsertBefore(Box::new(gather))));
        }
        // From the back so earlier indices stay valid; in place, or right after the node, keeps the
        // order topological.
        // A node's own changes before what goes in front of it.
        structural.sort_by_key(|(n, change)| (std::cmp::Reverse(*n), matches!(change, Structural::InsertBefore(_))));
        for (node, change) in structural {
            match change {
                Structural::Bias(tensor) => {
                    let mut tensor = *tensor;
                    let out = g.node[node].output[0].clone();
                    let base = g.node[node].name().to_string();
                    let pre = names.fresh(&format!("{out}_before_folded_bias"));
                    let bias = names.fresh(&format!("{base}_folded_bias"));
                    g.node[node].output[0] = pre.clone();
                    tensor.name = Some(bias.clone());
                    g.initializer.push(tensor);
                    let add = NodeProto {
                        name: Some(names.fresh(&format!("{base}_folded_bias_add"))),
                        op_type: Some("Add".into()),
                        input: vec![pre, bias],
                        output: vec![out],
                        ..Default::default()
                    };
                    g.node.insert(node + 1, add);
                }
                Structural::Replace(mut nodes, mut initializers) => {
                    let base = g.node[node].name().to_string();
                    localize(&mut names, &base, HashMap::new(), &mut nodes, &mut initializers);
                    g.initializer.extend(initializers);
                    g.node.splice(node..=node, nodes);
                }
                Structural::Follow(mut nodes, mut initializers) => {
                    let (base, out) = (g.node[node].name().to_string(), g.node[node].output[0].clone());
                    let before = names.fresh(&format!("{out}_uncorrected"));
                    g.node[node].output[0] = before.clone();
                    let preset = HashMap::from([("before".to_string(), before), ("after".to_string(), out)]);
                    localize(&mut names, &base, preset, &mut nodes, &mut initializers);
                    g.initializer.extend(initializers);
                    g.node.splice(node + 1..node + 1, nodes);
                }
                Structural::Remove => {
                    g.node.remove(node);
                }
                Structural::InsertAfter(copy) => g.node.insert(node + 1, *copy),
                Structural::InsertBefore(gather) => g.node.insert(node, *gather),
            }
        }
        // Last, as they shift every node index: Gathers in front of all nodes.
        for (input, axis, keep) in gathers {
            let gather = kept_gather(&mut names, g, &input, axis, &keep, "gather_used_features");
            for n in g.node.iter_mut() {
                n.input.iter_mut().filter(|i| **i == input).for_each(|i| *i = gather.output[0].clone());
            }
            g.node.insert(0, gather);
        }
        drop_unread(g, &orphaned);
        declare_stored_shapes(g);
        Applied { pending, copied_from }
    }
}

/// A Gather of the entries `keep` of `input` along `axis` (`{input}_kept`, its indices an
/// initializer of `g`), named `{input}_{what}`.
fn kept_gather(
    names: &mut Names,
    g: &mut GraphProto,
    input: &str,
    axis: isize,
    keep: &[usize],
    what: &str,
) -> NodeProto {
    let kept = names.fresh(&format!("{input}_kept"));
    let indices = names.fresh(&format!("{input}_kept_indices"));
    let idx: Vec<i64> = keep.iter().map(|&c| c as i64).collect();
    g.initializer.push(int64_tensor(&indices, &idx));
    NodeProto {
        name: Some(names.fresh(&format!("{input}_{what}"))),
        op_type: Some("Gather".into()),
        input: vec![input.to_string(), indices],
        output: vec![kept],
        attribute: vec![attr_int("axis", axis as i64)],
        ..Default::default()
    }
}

/// Removes the constants in `candidates` that nothing reads any more, and the Identity or
/// Constant nodes that only fed them, following alias chains back to the stored tensor.
pub(crate) fn drop_unread(g: &mut GraphProto, candidates: &HashSet<String>) {
    let mut candidates = candidates.clone();
    while !candidates.is_empty() {
        let mut read: HashSet<String> = g.output.iter().filter_map(|o| o.name.clone()).collect();
        let mut stack: Vec<&GraphProto> = vec![g];
        while let Some(graph) = stack.pop() {
            for n in &graph.node {
                read.extend(n.input.iter().cloned());
                for a in &n.attribute {
                    stack.extend(a.g.iter().chain(a.graphs.iter()));
                }
            }
        }
        let dead = |name: &str| candidates.contains(name) && !read.contains(name);
        let mut upstream = HashSet::new();
        g.node.retain(|n| {
            let alias = matches!(n.op_type(), "Identity" | "Constant") && n.output.len() == 1;
            if alias && dead(&n.output[0]) {
                upstream.extend(n.input.iter().cloned());
                return false;
            }
            true
        });
        g.initializer.retain(|t| !t.name.as_deref().is_some_and(dead));
        candidates = upstream;
    }
}

/// Declares every stored tensor's shape as it now is where the graph declares one (the dynamo
/// exporter and ONNX Runtime's quantizer write shapes for weights too): a stale one makes shape
/// inference refuse the model, and runtimes warn.
fn declare_stored_shapes(g: &mut GraphProto) {
    use crate::onnx::proto::tensor_shape_proto::{dimension::Value as Dim, Dimension};
    let dims: HashMap<&str, &[i64]> = g.initializer.iter().map(|t| (t.name(), t.dims.as_slice())).collect();
    for vi in &mut g.value_info {
        let Some(&stored) = dims.get(vi.name()) else { continue };
        if let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_mut().and_then(|t| t.value.as_mut()) {
            if let Some(shape) = t.shape.as_mut() {
                shape.dim =
                    stored.iter().map(|&n| Dimension { value: Some(Dim::DimValue(n)), ..Default::default() }).collect();
            }
        }
    }
}

fn set_width(g: &mut GraphProto, value: &str, axis: isize, from: usize, to: usize) {
    for vi in g.value_info.iter_mut().chain(g.output.iter_mut()).filter(|v| v.name.as_deref() == Some(value)) {
        let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_mut().and_then(|t| t.value.as_mut()) else {
            continue;
        };
        let Some(shape) = t.shape.as_mut() else {
            continue;
        };
        let pos = shape.dim.len() as isize + axis;
        if pos < 0 {
            continue;
        }
        let dim = &mut shape.dim[pos as usize];
        if let Some(crate::onnx::proto::tensor_shape_proto::dimension::Value::DimValue(d)) = dim.value.as_mut() {
            if *d == from as i64 {
                *d = to as i64;
            }
        }
    }
}
