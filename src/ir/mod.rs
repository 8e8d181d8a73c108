//! The graph as the analysis sees it: a petgraph DAG of ONNX nodes, with constants resolved.
//!
//! The `GraphProto` stays the single source of truth (so writing it back is lossless); this IR
//! only indexes it. Edges run producer to consumer, one per activation, which gives topological
//! order and reachability from petgraph. Constants are resolved once, through the `Identity`
//! chains and `Constant` nodes that exporters emit, so rules ask "is this input a constant?"
//! without caring how it was stored.

use std::collections::{HashMap, HashSet};

use petgraph::graph::{DiGraph, NodeIndex};

mod shapes;

pub(crate) use shapes::normalize;

use crate::onnx::proto::{AttributeProto, GraphProto, NodeProto, TensorProto};

/// Where a constant tensor is stored in the proto.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConstRef {
    Initializer(usize),
    /// The `value` attribute of the `Constant` node at this index.
    ConstantNode(usize),
}

impl ConstRef {
    pub fn tensor(self, g: &GraphProto) -> &TensorProto {
        match self {
            ConstRef::Initializer(i) => &g.initializer[i],
            ConstRef::ConstantNode(i) => {
                g.node[i].attribute.iter().find(|a| a.name() == "value").and_then(|a| a.t.as_ref()).expect("resolved")
            }
        }
    }

    pub fn tensor_mut(self, g: &mut GraphProto) -> &mut TensorProto {
        match self {
            ConstRef::Initializer(i) => &mut g.initializer[i],
            ConstRef::ConstantNode(i) => g.node[i]
                .attribute
                .iter_mut()
                .find(|a| a.name() == "value")
                .and_then(|a| a.t.as_mut())
                .expect("resolved"),
        }
    }
}

pub struct Ir {
    /// Node indices (into `GraphProto::node`) in topological order.
    pub order: Vec<usize>,
    pub producer: HashMap<String, usize>,
    /// Who reads each value: (node index, input slot). Implicit reads from subgraphs use slot `usize::MAX`.
    pub consumers: HashMap<String, Vec<(usize, usize)>>,
    pub inputs: Vec<String>,
    pub outputs: HashSet<String>,
    consts: HashMap<String, ConstRef>,
    /// Readers of each stored constant, through any alias, so a rewrite knows whether it may
    /// change the tensor in place or must give its node a private copy.
    pub const_uses: HashMap<ConstRef, usize>,
    /// Shapes, declared (type information) or inferred (`shapes`): a dimension is `None` where
    /// it is symbolic or unknown.
    shapes: HashMap<String, Vec<Option<u64>>>,
    /// The named (symbolic) dimensions the graph declares, by value and axis: two axes that
    /// declare one name have one size, whatever the inputs.
    symbols: HashMap<(String, usize), String>,
    /// Small int64 tensors computed from constants and known sizes, with their values.
    computed: HashMap<String, Vec<i64>>,
    /// The default-domain opset, where operators changed form (Split's sizes, Reduce's axes).
    pub opset: i64,
}

/// Operators whose output has the type of their first input.
const SAME_TYPE: &[&str] = &[
    "Abs",
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Clip",
    "Concat",
    "Conv",
    "ConvTranspose",
    "Div",
    "Elu",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Gather",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "InstanceNormalization",
    "LayerNormalization",
    "LeakyRelu",
    "Log",
    "MatMul",
    "Max",
    "MaxPool",
    "Min",
    "Mod",
    "Mul",
    "Neg",
    "Pad",
    "Pow",
    "PRelu",
    "Reciprocal",
    "ReduceL1",
    "ReduceL2",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceSum",
    "ReduceSumSquare",
    "Relu",
    "Reshape",
    "Resize",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Softplus",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Tanh",
    "Transpose",
    "Unsqueeze",
];

/// Initializers that a runtime would reject or misread: one name twice, negative dimensions, or
/// stored bytes that do not fill the shape.
fn validate_initializers(g: &GraphProto) -> Result<(), String> {
    use crate::onnx::proto::tensor_proto::DataType;
    let mut seen = HashSet::new();
    for t in &g.initializer {
        let name = t.name();
        if !seen.insert(name) {
            return Err(format!("two initializers are named '{name}': a name is defined once"));
        }
        if t.dims.iter().any(|&d| d < 0) {
            return Err(format!("initializer '{name}' has negative dimensions {:?}", t.dims));
        }
        let size = match DataType::try_from(t.data_type()) {
            Ok(DataType::Double | DataType::Int64 | DataType::Uint64 | DataType::Complex64) => 8,
            Ok(DataType::Float | DataType::Int32 | DataType::Uint32) => 4,
            Ok(DataType::Float16 | DataType::Bfloat16 | DataType::Int16 | DataType::Uint16) => 2,
            Ok(DataType::Int8 | DataType::Uint8 | DataType::Bool) => 1,
            _ => continue,
        };
        let numel = crate::onnx::tensor::numel(&t.dims);
        if let (Some(raw), Some(n)) = (t.raw_data.as_ref(), numel) {
            if raw.len() as u64 != n.saturating_mul(size) {
                return Err(format!(
                    "initializer '{name}' holds {} bytes but its shape {:?} needs {}",
                    raw.len(),
                    t.dims,
                    n.saturating_mul(size)
                ));
            }
        } else if numel.is_none() {
            return Err(format!("initializer '{name}' has dimensions {:?} too large to address", t.dims));
        }
    }
    Ok(())
}

fn shadowed_by_input(g: &GraphProto) -> HashSet<&str> {
    g.input.iter().filter_map(|i| i.name.as_deref()).collect()
}

/// Names a node reads inside its subgraphs (If/Loop/Scan bodies read outer values implicitly).
pub(crate) fn implicit_reads(node: &NodeProto, out: &mut Vec<String>) {
    for a in &node.attribute {
        for g in a.g.iter().chain(a.graphs.iter()) {
            for n in &g.node {
                out.extend(n.input.iter().filter(|s| !s.is_empty()).cloned());
                implicit_reads(n, out);
            }
        }
    }
}

impl Ir {
    /// Builds the index, or names the node that makes the graph unusable (a cycle).
    pub fn build(g: &GraphProto, opset: i64) -> Result<Ir, String> {
        let inputs_shadow = shadowed_by_input(g);
        let mut consts = HashMap::new();
        for (i, t) in g.initializer.iter().enumerate() {
            let name = t.name.clone().unwrap_or_default();
            // An initializer that is also a graph input is only a default the caller may
            // override, so it is not a constant.
            if !inputs_shadow.contains(name.as_str()) {
                consts.insert(name, ConstRef::Initializer(i));
            }
        }
        validate_initializers(g)?;
        let mut dag = DiGraph::new();
        let idx: Vec<NodeIndex> = (0..g.node.len()).map(|i| dag.add_node(i)).collect();
        let mut producer = HashMap::new();
        let label = |i: usize| format!("node '{}' ({})", g.node[i].name(), g.node[i].op_type());
        for (i, n) in g.node.iter().enumerate() {
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                if let Some(j) = producer.insert(o.clone(), i) {
                    return Err(format!(
                        "'{o}' is written by {} and by {}: every value has one writer",
                        label(j),
                        label(i)
                    ));
                }
                if consts.contains_key(o) || inputs_shadow.contains(o.as_str()) {
                    return Err(format!("'{o}' is written by {} but is also a graph input or initializer", label(i)));
                }
            }
        }
        for (i, n) in g.node.iter().enumerate() {
            let undefined = n.input.iter().find(|s| {
                !s.is_empty()
                    && !producer.contains_key(*s)
                    && !consts.contains_key(*s)
                    && !inputs_shadow.contains(s.as_str())
            });
            if let Some(name) = undefined {
                return Err(format!("{} reads '{name}', which no node, graph input or initializer defines", label(i)));
            }
        }
        let mut consumers: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
        for (i, n) in g.node.iter().enumerate() {
            let mut implicit = vec![];
            implicit_reads(n, &mut implicit);
            let reads = n.input.iter().cloned().enumerate().chain(implicit.into_iter().map(|s| (usize::MAX, s)));
            for (slot, name) in reads.filter(|(_, s)| !s.is_empty()) {
                if let Some(&p) = producer.get(&name) {
                    dag.update_edge(idx[p], idx[i], ());
                }
                consumers.entry(name).or_default().push((i, slot));
            }
        }
        let order = petgraph::algo::toposort(&dag, None).map_err(|c| {
            let n = &g.node[dag[c.node_id()]];
            format!("the graph has a cycle through node '{}' ({})", n.name(), n.op_type())
        })?;
        let order: Vec<usize> = order.into_iter().map(|i| dag[i]).collect();
        // Constant nodes and Identity chains, in order, so an alias of an alias resolves.
        for &i in &order {
            let n = &g.node[i];
            if n.default_domain() {
                let out = n.output.first().cloned().unwrap_or_default();
                match n.op_type() {
                    "Constant" if n.attribute.iter().any(|a| a.name() == "value" && a.t.is_some()) => {
                        consts.insert(out, ConstRef::ConstantNode(i));
                    }
                    "Identity" => {
                        if let Some(&c) = n.input.first().and_then(|s| consts.get(s)) {
                            consts.insert(out, c);
                        }
                    }
                    _ => {}
                }
            }
        }
        let outputs: HashSet<String> = g.output.iter().filter_map(|o| o.name.clone()).collect();
        let mut const_uses: HashMap<ConstRef, usize> = HashMap::new();
        for (name, readers) in &consumers {
            if let Some(c) = consts.get(name) {
                let real = readers.iter().filter(|(n, _)| {
                    !(g.node[*n].op_type() == "Identity"
                        && consts.contains_key(g.node[*n].output.first().map(String::as_str).unwrap_or("")))
                });
                *const_uses.entry(*c).or_default() += real.count();
            }
        }
        for o in &outputs {
            if let Some(c) = consts.get(o) {
                *const_uses.entry(*c).or_default() += 1;
            }
        }
        let mut shapes = HashMap::new();
        let mut symbols = HashMap::new();
        for vi in g.input.iter().chain(&g.output).chain(&g.value_info) {
            let shape = vi.r#type.as_ref().and_then(|t| match &t.value {
                Some(crate::onnx::proto::type_proto::Value::TensorType(tt)) => tt.shape.as_ref(),
                _ => None,
            });
            if let (Some(name), Some(shape)) = (&vi.name, shape) {
                use crate::onnx::proto::tensor_shape_proto::dimension::Value;
                for (axis, d) in shape.dim.iter().enumerate() {
                    if let Some(Value::DimParam(p)) = &d.value {
                        symbols.insert((name.clone(), axis), p.clone());
                    }
                }
                let dims = shape
                    .dim
                    .iter()
                    .map(|d| match d.value {
                        Some(Value::DimValue(v)) if v >= 0 => Some(v as u64),
                        _ => None,
                    })
                    .collect();
                shapes.insert(name.clone(), dims);
            }
        }
        let inputs = g.input.iter().filter_map(|i| i.name.clone()).filter(|n| !consts.contains_key(n)).collect();
        let computed = HashMap::new();
        let mut ir =
            Ir { order, producer, consumers, inputs, outputs, consts, const_uses, shapes, symbols, computed, opset };
        ir.infer_shapes(g);
        Ok(ir)
    }

    pub fn const_ref(&self, name: &str) -> Option<ConstRef> {
        self.consts.get(name).copied()
    }

    pub fn is_const(&self, name: &str) -> bool {
        self.consts.contains_key(name)
    }

    /// The tensor behind a constant value name.
    pub fn const_tensor<'g>(&self, g: &'g GraphProto, name: &str) -> Option<&'g TensorProto> {
        self.consts.get(name).map(|&c| c.tensor(g))
    }

    /// The float type of a value (see [`Ir::elem_type`]). A rewrite that adds a constant beside
    /// an activation must match its type, and exporters declare few.
    pub fn float_type(&self, g: &GraphProto, name: &str) -> Option<crate::onnx::tensor::FloatType> {
        crate::onnx::tensor::FloatType::from_onnx(self.elem_type(g, name)?)
    }

    /// The element type of a value: stored, declared, or that of the operand its node computes
    /// it from (a `Cast` names its own, `Shape` and `Size` write int64); `None` where the walk
    /// meets anything else.
    pub fn elem_type(&self, g: &GraphProto, name: &str) -> Option<i32> {
        use crate::onnx::proto::{tensor_proto::DataType, type_proto::Value};
        let declared = |at: &str| {
            let vi = g.input.iter().chain(&g.value_info).chain(&g.output).find(|v| v.name() == at)?;
            match vi.r#type.as_ref()?.value.as_ref()? {
                Value::TensorType(t) => t.elem_type.filter(|&e| e != 0),
                _ => None,
            }
        };
        let mut at = name;
        for _ in 0..self.order.len() + 1 {
            if let Some(t) = self.const_tensor(g, at) {
                return Some(t.data_type());
            }
            if let Some(e) = declared(at) {
                return Some(e);
            }
            let node = &g.node[*self.producer.get(at)?];
            let from = match node.op_type() {
                "Cast" => return Some(node.attr_i("to", 0) as i32),
                "Shape" | "Size" => return Some(DataType::Int64 as i32),
                // A dequantized value has its scale's type; a quantized one its zero point's,
                // or the type `output_dtype` names (uint8 by default).
                "DequantizeLinear" => 1,
                "QuantizeLinear" if node.input.get(2).is_none_or(|z| z.is_empty()) => {
                    return Some(match node.attr_i("output_dtype", 0) as i32 {
                        0 => DataType::Uint8 as i32,
                        t => t,
                    })
                }
                "QuantizeLinear" => 2,
                "CastLike" | "Where" => 1,
                op if SAME_TYPE.contains(&op) => 0,
                _ => return None,
            };
            at = node.input.get(from).filter(|s| !s.is_empty())?;
        }
        None
    }

    /// The rank of a value, as declared in the graph's type information or inferred from it.
    pub fn rank(&self, name: &str) -> Option<usize> {
        self.shapes.get(name).map(Vec::len)
    }

    /// The shape of a value, where its type information gives one or inference found it.
    pub fn shape(&self, name: &str) -> Option<&[Option<u64>]> {
        self.shapes.get(name).map(Vec::as_slice)
    }

    /// The dimension `axis` (counted from the end, as channel axes are) of a value: a constant's
    /// own, or as declared or inferred; axes before the first are 1, as broadcasting reads them.
    pub fn dim_from_end(&self, g: &GraphProto, name: &str, axis: isize) -> Option<u64> {
        let at = |len: usize| usize::try_from(len as isize + axis).ok();
        if let Some(t) = self.const_tensor(g, name) {
            return Some(at(t.dims.len()).map_or(1, |i| t.dims[i] as u64));
        }
        let dims = self.shapes.get(name)?;
        match at(dims.len()) {
            Some(i) => dims[i],
            None => Some(1),
        }
    }

    /// Whether axis `i` of `a` and axis `j` of `b` (from the start) are declared to have one
    /// size: the same number, or the same symbol.
    pub fn same_dim(&self, a: &str, i: usize, b: &str, j: usize) -> bool {
        let number = |n: &str, k: usize| self.shapes.get(n).and_then(|d| d.get(k).copied().flatten());
        let symbol = |n: &str, k: usize| self.symbols.get(&(n.to_string(), k));
        matches!((number(a, i), number(b, j)), (Some(x), Some(y)) if x == y)
            || matches!((symbol(a, i), symbol(b, j)), (Some(x), Some(y)) if x == y && !x.is_empty())
    }

    pub fn readers(&self, name: &str) -> &[(usize, usize)] {
        self.consumers.get(name).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Attribute lookup with ONNX defaults, shared by the operator rules.
pub trait NodeExt {
    fn attr(&self, name: &str) -> Option<&AttributeProto>;
    /// Whether the operator is ONNX's own (the empty domain or `ai.onnx`), the only ones the rules
    /// and inference read.
    fn default_domain(&self) -> bool;
    fn attr_i(&self, name: &str, default: i64) -> i64 {
        self.attr(name).and_then(|a| a.i).unwrap_or(default)
    }
    fn attr_f(&self, name: &str, default: f32) -> f32 {
        self.attr(name).and_then(|a| a.f).unwrap_or(default)
    }
    fn attr_ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }
    /// A string attribute, as text.
    fn attr_s(&self, name: &str, default: &str) -> String {
        self.attr(name).and_then(|a| a.s.as_deref()).map_or(default.into(), |s| String::from_utf8_lossy(s).into())
    }
    fn has_attr(&self, name: &str) -> bool {
        self.attr(name).is_some()
    }
}

impl NodeExt for NodeProto {
    fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.attribute.iter().find(|a| a.name() == name)
    }

    fn default_domain(&self) -> bool {
        matches!(self.domain(), "" | "ai.onnx")
    }
}
