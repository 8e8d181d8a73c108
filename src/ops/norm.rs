//! LayerNormalization, and the CompensatedLayerNorm that replaces it when channels leave.
//!
//! LayerNorm reads every channel to compute its mean and variance, so slicing its input changes
//! what it computes: this is why channel removal usually stops at LayerNorm streams. A channel
//! may still leave when its input is a known constant `k_r` (the statistics can account for it)
//! and its own output is unused or constant (`gamma_r == 0` makes it the constant `beta_r`).
//! The replacement keeps the original width `C` and the removed constants, and computes, over the
//! kept channels `K` only,
//!
//! ```text
//! mean = (sum_K x + sum_R k) / C
//! var  = (sum_K (x - mean)^2 + sum_R (k - mean)^2) / C        (centred: no cancellation)
//! y_K  = gamma_K (x - mean) / sqrt(var + eps) + beta_K
//! ```
//!
//! in plain ONNX operators (ReduceSum, Sub, Mul, Add, Div, Sqrt), so every runtime runs it.

use super::{Activations, ChannelOp, Ctx, OpRule, Role};
use crate::analysis::reasons::{Opaque, Why};
use crate::analysis::{ConstCx, LayoutCx, NeedCx, NodeId, PlanCx, TieCx};
use crate::error::Result;
use crate::ir::NodeExt;
use crate::onnx::build::{attr_float, attr_int, int64_tensor};
use crate::onnx::proto::{AttributeProto, NodeProto, TensorProto};
use crate::onnx::tensor::{encode, with_data, FloatType, Values};
use crate::rewrite::Edit;

/// What a CompensatedLayerNorm may be written with, in either form.
pub(crate) const EMITS: &[&str] = &[
    "Add",
    "Cast",
    "Concat",
    "Div",
    "Expand",
    "Identity",
    "LayerNormalization",
    "Mul",
    "RMSNormalization",
    "ReduceSum",
    "Shape",
    "Slice",
    "Sqrt",
    "Sub",
];

pub(crate) struct LayerNorm;

/// How a CompensatedLayerNorm is written out (`--compensated-layernorm`: its names are the CLI's and
/// the Python package's spellings).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ClnForm {
    /// ReduceSum/Sub/Mul/Add/Div/Sqrt over the kept channels, plus the removed constants' terms.
    #[default]
    Ops,
    /// LayerNormalization over the kept channels concatenated with the removed constants
    /// (broadcast with Shape/Expand), then sliced back to the kept channels.
    Concat,
}

/// A LayerNormalization, an RMSNormalization, or a LayerNorm written out as ReduceMean, Sub,
/// Pow, Sqrt and Div, over the channel axis: as the analysis sees it.
pub(crate) struct Norm<'g> {
    /// The normalized tensor (for a decomposed norm, what its first ReduceMean reads).
    pub input: &'g str,
    /// RMSNormalization: no centring, no bias.
    pub rms: bool,
    /// Scale and bias; none for a decomposed norm (its affine map is a separate Mul and Add).
    pub affine: Option<(Values<'g>, Option<Values<'g>>)>,
    /// The normalized axis as written (must turn out to be the channel axis).
    pub axis: i64,
    /// The operator normalizes over `axis` and every axis after it (LayerNormalization), rather
    /// than `axis` alone (a decomposed norm).
    pub to_end: bool,
    pub eps: f64,
    pub dtype: FloatType,
    /// The nodes of a decomposed norm before its last, which go when it is replaced.
    pub inner: Vec<NodeId>,
}

impl OpRule for LayerNorm {
    fn op_types(&self) -> &'static [&'static str] {
        &["LayerNormalization", "RMSNormalization"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        if node.output.iter().skip(1).any(|o| !o.is_empty() && !cx.ir.readers(o).is_empty()) {
            return Role::Opaque(Opaque::AuxiliaryOutput("its mean or inverse deviation output is used"));
        }
        let constant =
            |slot: usize| node.input.get(slot).filter(|s| !s.is_empty()).map(|s| cx.const_tensor(s).map(Values::of));
        let gamma = match constant(1) {
            Some(Some(Ok(v))) if v.dims.len() == 1 => v,
            _ => return Role::Opaque(Opaque::Shape("its scale is not a constant vector")),
        };
        let beta = match constant(2) {
            None => None,
            Some(Some(Ok(v))) if v.dims == gamma.dims => Some(v),
            _ => return Role::Opaque(Opaque::Shape("its bias is not a constant vector")),
        };
        let rms = node.op_type() == "RMSNormalization";
        if rms && beta.is_some() {
            return Role::Opaque(Opaque::Malformed("it has a third input, which RMSNormalization does not define"));
        }
        Role::Op(Box::new(Norm {
            input: &node.input[0],
            rms,
            dtype: gamma.dtype,
            affine: Some((gamma, beta)),
            axis: node.attr_i("axis", -1),
            to_end: true,
            eps: node.attr_f("epsilon", 1e-5) as f64,
            inner: vec![],
        }))
    }
}

/// A constant of the replacement of type `ty`, named `name` (a local `$` name).
fn named_floats(name: &str, dims: Vec<i64>, ty: FloatType, vals: &[f64]) -> TensorProto {
    TensorProto { name: Some(name.into()), ..with_data(&TensorProto::default(), dims, ty, encode(ty, vals)) }
}

/// A node of the replacement, named after its output (a local `$` name, made unique later).
fn local_node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        name: Some(format!("${}_node", output.trim_start_matches('$'))),
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

impl Norm<'_> {
    /// The channel count, where the operator's own constants fix it.
    pub fn width(&self) -> Option<usize> {
        self.affine.as_ref().map(|(g, _)| g.len())
    }

    fn gamma(&self, c: usize) -> f64 {
        self.affine.as_ref().map_or(1.0, |(g, _)| g.get(c))
    }

    fn beta(&self) -> Option<&Values<'_>> {
        self.affine.as_ref().and_then(|(_, b)| b.as_ref())
    }

    /// Output channel `c` is the constant `beta_c` when its scale is zero.
    pub fn constant(&self, c: usize) -> Option<f64> {
        (self.gamma(c) == 0.0).then(|| self.beta().map_or(0.0, |b| b.get(c)))
    }

    /// The nodes and constants of a CompensatedLayerNorm computing `y` from the kept channels
    /// of `x`, given the constants of the removed ones. Names starting with `$` are local and
    /// made unique when the edit is applied.
    /// `axis` is the channel axis counted from the end.
    pub fn compensated(
        &self,
        form: ClnForm,
        x: &str,
        y: &str,
        axis: isize,
        keep: &[usize],
        removed: &[f64],
    ) -> (Vec<NodeProto>, Vec<TensorProto>) {
        // The concatenated form needs the operator itself, over the last axis.
        if form == ClnForm::Concat && self.affine.is_some() && axis == -1 {
            return self.concatenated(x, y, keep, removed);
        }
        let dtype = self.dtype;
        // LayerNormalization computes in float32 at least (its stash_type); so does this.
        let (compute, widen) = match dtype {
            FloatType::F16 | FloatType::Bf16 => (FloatType::F32, true),
            other => (other, false),
        };
        let mut nodes = vec![];
        let mut inits = vec![];
        let mut constant =
            |name: &str, dims: Vec<i64>, vals: &[f64], ty: FloatType| inits.push(named_floats(name, dims, ty, vals));
        let width = (keep.len() + removed.len()) as f64;
        if self.affine.is_some() {
            let gamma: Vec<f64> = keep.iter().map(|&c| self.gamma(c)).collect();
            constant("$gamma", vec![keep.len() as i64], &gamma, dtype);
        }
        if let Some(b) = self.beta() {
            let beta: Vec<f64> = keep.iter().map(|&c| b.get(c)).collect();
            constant("$beta", vec![keep.len() as i64], &beta, dtype);
        }
        if !self.rms {
            constant("$removed_sum", vec![], &[removed.iter().sum()], compute);
        }
        constant("$width", vec![], &[width], compute);
        constant("$eps", vec![], &[self.eps], compute);
        // The removed constants along the channel axis, broadcast over the axes after it.
        let mut removed_dims = vec![removed.len() as i64];
        removed_dims.resize((-axis) as usize, 1);
        constant("$removed", removed_dims, removed, compute);
        inits.push(int64_tensor("$axes", &[axis as i64]));
        let op = |nodes: &mut Vec<NodeProto>, op: &str, inputs: &[&str], output: &str| {
            let attribute = if op == "ReduceSum" { vec![attr_int("keepdims", 1)] } else { vec![] };
            nodes.push(local_node(op, inputs, output, attribute));
        };
        let cast = |nodes: &mut Vec<NodeProto>, input: &str, to: FloatType, output: &str| {
            nodes.push(local_node("Cast", &[input], output, vec![attr_int("to", to.onnx() as i64)]));
        };
        let xin = if widen {
            cast(&mut nodes, x, FloatType::F32, "$x32");
            "$x32"
        } else {
            x
        };
        let centred = if self.rms {
            // RMSNorm: the mean square, with the removed constants' squares added back.
            op(&mut nodes, "Mul", &[xin, xin], "$squares");
            op(&mut nodes, "ReduceSum", &["$squares", "$axes"], "$kept_squares");
            op(&mut nodes, "Mul", &["$removed", "$removed"], "$removed_squares_each");
            op(&mut nodes, "ReduceSum", &["$removed_squares_each", "$axes"], "$removed_squares");
            xin
        } else {
            op(&mut nodes, "ReduceSum", &[xin, "$axes"], "$kept_sum");
            op(&mut nodes, "Add", &["$kept_sum", "$removed_sum"], "$sum");
            op(&mut nodes, "Div", &["$sum", "$width"], "$mean");
            op(&mut nodes, "Sub", &[xin, "$mean"], "$centred");
            op(&mut nodes, "Mul", &["$centred", "$centred"], "$squares");
            op(&mut nodes, "ReduceSum", &["$squares", "$axes"], "$kept_squares");
            op(&mut nodes, "Sub", &["$mean", "$removed"], "$removed_centred");
            op(&mut nodes, "Mul", &["$removed_centred", "$removed_centred"], "$removed_squares_each");
            op(&mut nodes, "ReduceSum", &["$removed_squares_each", "$axes"], "$removed_squares");
            "$centred"
        };
        op(&mut nodes, "Add", &["$kept_squares", "$removed_squares"], "$all_squares");
        op(&mut nodes, "Div", &["$all_squares", "$width"], "$variance");
        op(&mut nodes, "Add", &["$variance", "$eps"], "$variance_eps");
        op(&mut nodes, "Sqrt", &["$variance_eps"], "$deviation");
        op(&mut nodes, "Div", &[centred, "$deviation"], "$normalized");
        let normalized = if widen {
            cast(&mut nodes, "$normalized", dtype, "$normalized_t");
            "$normalized_t"
        } else {
            "$normalized"
        };
        match &self.affine {
            Some((_, Some(_))) => {
                op(&mut nodes, "Mul", &[normalized, "$gamma"], "$scaled");
                op(&mut nodes, "Add", &["$scaled", "$beta"], y);
            }
            Some((_, None)) => op(&mut nodes, "Mul", &[normalized, "$gamma"], y),
            None => op(&mut nodes, "Identity", &[normalized], y),
        }
        (nodes, inits)
    }
}

impl Norm<'_> {
    /// `Slice(LayerNormalization(Concat(x_K, Expand(k_R))), K)`: the original operator on the
    /// original width, with the removed channels' constants put back.
    fn concatenated(&self, x: &str, y: &str, keep: &[usize], removed: &[f64]) -> (Vec<NodeProto>, Vec<TensorProto>) {
        let dtype = self.dtype;
        let ints = int64_tensor;
        let floats = |name: &str, vals: &[f64]| named_floats(name, vec![vals.len() as i64], dtype, vals);
        let r = removed.len();
        let gamma: Vec<f64> = keep.iter().map(|&c| self.gamma(c)).chain(std::iter::repeat_n(0.0, r)).collect();
        let mut inits = vec![
            floats("$removed", removed),
            floats("$gamma", &gamma),
            ints("$removed_width", &[r as i64]),
            ints("$zero", &[0]),
            ints("$minus_one", &[-1]),
            ints("$kept_width", &[keep.len() as i64]),
        ];
        let mut ln_inputs = vec!["$full", "$gamma"];
        if let Some(b) = self.beta() {
            let beta: Vec<f64> = keep.iter().map(|&c| b.get(c)).chain(std::iter::repeat_n(0.0, r)).collect();
            inits.push(floats("$beta", &beta));
            ln_inputs.push("$beta");
        }
        let nodes = vec![
            local_node("Shape", &[x], "$shape", vec![]),
            local_node("Slice", &["$shape", "$zero", "$minus_one"], "$leading", vec![]),
            local_node("Concat", &["$leading", "$removed_width"], "$removed_shape", vec![attr_int("axis", 0)]),
            local_node("Expand", &["$removed", "$removed_shape"], "$removed_broadcast", vec![]),
            local_node("Concat", &[x, "$removed_broadcast"], "$full", vec![attr_int("axis", -1)]),
            local_node(
                if self.rms { "RMSNormalization" } else { "LayerNormalization" },
                &ln_inputs,
                "$normalized",
                vec![attr_int("axis", -1), attr_float("epsilon", self.eps as f32)],
            ),
            local_node("Slice", &["$normalized", "$zero", "$kept_width", "$minus_one"], y, vec![]),
        ];
        (nodes, inits)
    }
}

/// LayerNorms and RMSNorms written out as operators, as exporters emit channels-first
/// LayerNorms (Hugging Face's ConvNeXt before it used a permute), RMSNorms of LLMs, and every
/// LayerNorm at old opsets:
///
/// ```text
/// LayerNorm: m = ReduceMean(x, [a]); d = Sub(x, m); y = Div(d, Sqrt(Add(ReduceMean(d^2, [a]), eps)))
/// RMSNorm:                                        y = Div(x, Sqrt(Add(ReduceMean(x^2, [a]), eps)))
/// ```
///
/// with `^2` as `Pow(_, 2)` or `Mul(_, _)`; and Keras' LayerNormalization as tf2onnx writes it,
/// the affine map folded in:
///
/// ```text
/// s = Mul(Reciprocal(Sqrt(Add(ReduceMean(d^2, [a]), eps))), gamma)
/// y = Add(Mul(x, s), Add(Mul(Neg(m), s), beta))          (operands of Mul and Add either way round)
/// ```
///
/// Each match becomes a [`Norm`] on its `Div` node (the last `Add` of Keras' form, with its
/// gamma and beta); the other nodes are covered by it. Their intermediate tensors must have no
/// other reader, or the pattern is not taken.
pub(crate) fn decomposed<'g>(cx: &Ctx<'g>) -> Vec<(NodeId, Norm<'g>)> {
    let g = cx.graph;
    let ir = cx.ir;
    let op = |n: usize| g.node[n].op_type();
    let sole = |value: &str| sole(ir, value);
    let scalar = |name: &str| -> Option<f64> {
        let v = Values::of(ir.const_tensor(g, name)?).ok()?;
        (v.len() == 1).then(|| v.get(0))
    };
    let mean_axes = |n: usize| mean_axes(cx, n);
    let mut found = vec![];
    // Anchor on the square's mean: v = ReduceMean(t^2); s = Sqrt(v + eps); y = t / s.
    for m2 in 0..g.node.len() {
        let matched = (|| {
            let axes = mean_axes(m2).filter(|a| a.len() == 1)?;
            let square = *ir.producer.get(&g.node[m2].input[0])?;
            let sq = &g.node[square];
            let t = sq.input.first()?;
            let squares = match op(square) {
                "Pow" => sq.input.get(1).and_then(|e| scalar(e)) == Some(2.0),
                "Mul" => sq.input.get(1) == Some(t),
                _ => false,
            };
            (squares && sole(&sq.output[0]) == Some(m2) && !ir.is_const(t)).then_some(())?;
            let add = sole(&g.node[m2].output[0]).filter(|&n| op(n) == "Add")?;
            let a = &g.node[add];
            let eps_slot = if a.input.first() == Some(&g.node[m2].output[0]) { 1 } else { 0 };
            let eps_tensor = ir.const_tensor(g, a.input.get(eps_slot)?)?;
            let (eps, dtype) = (scalar(&a.input[eps_slot])?, FloatType::from_onnx(eps_tensor.data_type())?);
            let sqrt = sole(&a.output[0]).filter(|&n| op(n) == "Sqrt")?;
            let s = &g.node[sqrt].output[0];
            if let Some(keras) = keras_layernorm(cx, t, &axes, vec![square, m2, add, sqrt], eps, dtype) {
                return Some(keras);
            }
            // y = t / s, or t * (1 / s) with the inverse written as Reciprocal (the dynamo
            // exporter's rsqrt) or as Div(1, s) (TorchScript's), the product either way round.
            let (div, inverse) = match sole(s).map(|n| (n, op(n)))? {
                (r, "Div") if g.node[r].input.get(1) == Some(s) && scalar(&g.node[r].input[0]) == Some(1.0) => {
                    (sole(&g.node[r].output[0])?, Some(r))
                }
                (d, "Div") => (d, None),
                (r, "Reciprocal") => (sole(&g.node[r].output[0])?, Some(r)),
                _ => return None,
            };
            let dv = &g.node[div];
            let reads_t_by = |by: &String| {
                let pair = (dv.input.first(), dv.input.get(1));
                pair == (Some(t), Some(by)) || (op(div) == "Mul" && pair == (Some(by), Some(t)))
            };
            match inverse {
                None => reads_t_by(s).then_some(())?,
                Some(r) => (op(div) == "Mul" && reads_t_by(&g.node[r].output[0])).then_some(())?,
            }
            // Centred by its own mean over the same axis, privately: a LayerNorm; otherwise an
            // RMSNorm of t (which may have other readers: it is the norm's input).
            let private = !ir.readers(t).iter().any(|r| r.0 != square && r.0 != div) && !ir.outputs.contains(t);
            let centring = ir.producer.get(t).copied().filter(|&sub| op(sub) == "Sub" && private).and_then(|sub| {
                let (x, mean) = (g.node[sub].input.first()?, g.node[sub].input.get(1)?);
                let m1 = ir.producer.get(mean).copied().filter(|&m1| mean_axes(m1) == Some(axes.clone()))?;
                (g.node[m1].input.first() == Some(x) && sole(mean) == Some(sub)).then_some((sub, m1, x))
            });
            let (input, rms, mut inner) = match centring {
                Some((sub, m1, x)) => (x.as_str(), false, vec![m1, sub]),
                None => (t.as_str(), true, vec![]),
            };
            inner.extend([square, m2, add, sqrt]);
            inner.extend(inverse);
            let inner = inner.into_iter().map(NodeId).collect();
            let norm = Norm { input, rms, affine: None, axis: axes[0], to_end: false, eps, dtype, inner };
            Some((NodeId(div), norm))
        })();
        found.extend(matched);
    }
    found
}

/// The one node reading `value` (at any number of its slots), when it is not a graph output.
fn sole(ir: &crate::ir::Ir, value: &str) -> Option<usize> {
    let readers = ir.readers(value);
    let first = readers.first()?.0;
    (readers.iter().all(|r| r.0 == first) && !ir.outputs.contains(value)).then_some(first)
}

/// The axes of a `ReduceMean` keeping its dimensions, as an attribute or (opset 18) an input.
fn mean_axes(cx: &Ctx, n: usize) -> Option<Vec<i64>> {
    let node = &cx.graph.node[n];
    if node.op_type() != "ReduceMean" || !node.default_domain() || node.attr_i("keepdims", 1) != 1 {
        return None;
    }
    match node.input.get(1).filter(|s| !s.is_empty()) {
        Some(a) => Some(crate::onnx::tensor::int64s(cx.ir.const_tensor(cx.graph, a)?)),
        None => node.attr_ints("axes"),
    }
}

/// Keras' LayerNormalization through tf2onnx (see [`decomposed`]), from the centred `t` whose
/// square's mean is the variance, given the nodes from that square to the `Sqrt`.
fn keras_layernorm<'g>(
    cx: &Ctx<'g>,
    t: &'g str,
    axes: &[i64],
    mut inner: Vec<usize>,
    eps: f64,
    dtype: FloatType,
) -> Option<(NodeId, Norm<'g>)> {
    let (g, ir) = (cx.graph, cx.ir);
    let op = |n: usize| g.node[n].op_type();
    // The nodes reading `value`, each once; a graph output has one more reader, `usize::MAX`.
    let readers = |value: &str| -> Vec<usize> {
        let mut r: Vec<usize> = ir.readers(value).iter().map(|r| r.0).collect();
        r.dedup();
        if ir.outputs.contains(value) {
            r.push(usize::MAX);
        }
        r
    };
    let sole = |value: &str| sole(ir, value);
    let out = |n: usize| g.node[n].output[0].as_str();
    // The other operand of a binary node, given one.
    let other = |n: usize, one: &str| -> Option<&'g str> {
        let i = &g.node[n].input;
        match (i.first(), i.get(1)) {
            (Some(a), Some(b)) if a == one => Some(b.as_str()),
            (Some(a), Some(b)) if b == one => Some(a.as_str()),
            _ => None,
        }
    };
    let vector = |name: &str| Values::of(ir.const_tensor(g, name)?).ok();
    let sqrt = *inner.last()?;
    let reciprocal = sole(out(sqrt)).filter(|&n| op(n) == "Reciprocal")?;
    let scale = sole(out(reciprocal)).filter(|&n| op(n) == "Mul")?;
    let gamma = vector(other(scale, out(reciprocal))?)?;
    // Centred privately: t = Sub(x, m), m = ReduceMean(x) over the same axis, read by t and a Neg.
    let sub = ir.producer.get(t).copied().filter(|&n| op(n) == "Sub" && sole(t) == Some(inner[0]))?;
    let (x, mean) = (g.node[sub].input.first()?.as_str(), g.node[sub].input.get(1)?.as_str());
    let m1 = ir.producer.get(mean).copied()?;
    (g.node[m1].input.first().map(String::as_str) == Some(x) && mean_axes(cx, m1).as_deref() == Some(axes))
        .then_some(())?;
    let mean_readers = readers(mean);
    let neg = *mean_readers.iter().find(|&&n| n != sub && n != usize::MAX && op(n) == "Neg")?;
    (mean_readers.len() == 2 && mean_readers.contains(&sub)).then_some(())?;
    // s scales x and -m, then beta joins the latter.
    let (mut times_x, mut times_mean) = (None, None);
    for n in readers(out(scale)) {
        match (n != usize::MAX && op(n) == "Mul").then(|| other(n, out(scale))).flatten() {
            Some(o) if o == x => times_x = Some(n),
            Some(o) if o == out(neg) && sole(out(neg)) == Some(n) => times_mean = Some(n),
            _ => return None,
        }
    }
    let (times_x, times_mean) = (times_x?, times_mean?);
    let shift = sole(out(times_mean)).filter(|&n| op(n) == "Add")?;
    let beta = vector(other(shift, out(times_mean))?)?;
    let y = sole(out(times_x)).filter(|&n| op(n) == "Add" && sole(out(shift)) == Some(n))?;
    (other(y, out(times_x)) == Some(out(shift)) && gamma.len() == beta.len()).then_some(())?;
    inner.extend([m1, sub, reciprocal, scale, neg, times_x, times_mean, shift]);
    let inner = inner.into_iter().map(NodeId).collect();
    let affine = Some((gamma, Some(beta)));
    Some((NodeId(y), Norm { input: x, rms: false, affine, axis: axes[0], to_end: false, eps, dtype, inner }))
}

/// The statistics read every channel: one class over the normalized axis whose channels may
/// leave only as constants the compensation accounts for.
impl<'g> ChannelOp<'g> for Norm<'g> {
    fn activations(&self) -> Activations {
        Activations::new(vec![0], "it normalizes a constant")
    }

    fn layout(&self, cx: &mut LayoutCx<'_, 'g>) {
        let (Some(x), Some(y)) = (cx.value(self.input), cx.output(0)) else { return };
        if let Some(w) = self.width() {
            cx.set_width(x, w);
            cx.set_width(y, w);
        }
        cx.copy(x, y);
        cx.copy(y, x);
        if let Some(r) = cx.get(x).rank.or(cx.get(y).rank) {
            cx.set_rank(x, r);
            cx.set_rank(y, r);
            let axis = if self.axis < 0 { self.axis + r as i64 } else { self.axis };
            let channels_alone = !self.to_end || axis == r as i64 - 1;
            if !channels_alone || cx.get(x).position().is_some_and(|p| p as i64 != axis) {
                cx.force_both(x, y, Why::NormOverOtherAxes);
            } else {
                // The normalized axis is the channel axis: said here, so that a layout guessed
                // elsewhere for the same tensor conflicts instead of passing through the norm.
                cx.set_axis(x, axis as isize - r as isize);
                cx.set_axis(y, axis as isize - r as isize);
            }
        }
    }

    /// Output channel `c` is input channel `c`, normalized, unless its scale is zero: it is then
    /// the constant `beta_c` whatever the input holds, so it may leave while the input channel
    /// stays (a live residual stream read by a norm that silences some channels).
    fn ties(&self, cx: &mut TieCx<'_, 'g>) {
        let (Some(x), Some(y)) = (cx.value(self.input), cx.output(0)) else { return };
        if let (Some(w), true) = (cx.width(x), cx.width(x) == cx.width(y)) {
            (0..w).filter(|&c| self.constant(c).is_none()).for_each(|c| cx.tie(x, c, y, c, 1));
        }
    }

    fn constants(&self, cx: &mut ConstCx<'_, 'g>) {
        let Some(y) = cx.output(0) else { return };
        let r = (0..cx.consts(y).len()).map(|c| self.constant(c)).collect();
        cx.set(y, r);
    }

    fn needs(&self, cx: &mut NeedCx<'_, 'g>) {
        let (Some(x), Some(y)) = (cx.value(self.input), cx.output(0)) else { return };
        // If any normalized output is needed, so is every input channel whose value is not a
        // known constant.
        let used = (0..cx.needed(y).len()).any(|c| cx.needed(y)[c] && self.constant(c).is_none());
        if used {
            let consts = cx.consts(x);
            (0..cx.needed(x).len()).filter(|&c| consts[c].is_none()).for_each(|c| cx.mark(x, c));
        }
        // A needed output whose scale is zero keeps its input channel: the rewrite then reads it
        // from its place (an output kept but not needed is written as its constant instead).
        let silenced: Vec<usize> = (0..cx.needed(y).len().min(cx.needed(x).len()))
            .filter(|&c| cx.needed(y)[c] && self.constant(c).is_some())
            .collect();
        silenced.into_iter().for_each(|c| cx.mark(x, c));
    }

    fn rewrite(&self, cx: &mut PlanCx<'_, 'g>) -> Result<()> {
        let (Some(x), Some(yv)) = (cx.value(self.input), cx.output(0)) else { return Ok(()) };
        let (Some(w), Some(axis)) = (cx.layout(x).width, cx.layout(x).axis) else { return Ok(()) };
        let (keep, keep_y) = (cx.kept(x, w), cx.kept(yv, w));
        if keep.len() == w && keep_y.len() == w {
            return Ok(());
        }
        let y = cx.node_proto().output[0].clone();
        // Outputs that leave while their input stays (a zero scale) are dropped by a Gather
        // after the norm.
        let out = if keep_y == keep { y.clone() } else { "$normalized_kept".to_string() };
        let (mut nodes, mut initializers) = if keep.len() < w {
            let mut kept = vec![false; w];
            keep.iter().for_each(|&c| kept[c] = true);
            // Removed channels are constants whenever a normalized output is needed; otherwise
            // nothing reads the result and any value will do.
            let removed: Vec<f64> = (0..w).filter(|&c| !kept[c]).map(|c| cx.consts(x)[c].unwrap_or(0.0)).collect();
            let (nodes, initializers) = self.compensated(cx.cln_form, self.input, &out, axis, &keep, &removed);
            cx.extend(self.inner.iter().map(|&n| Edit::Remove { node: n.0 }));
            (nodes, initializers)
        } else {
            let mut node = cx.node_proto().clone();
            node.output[0] = out.clone();
            (vec![node], vec![])
        };
        if out != y {
            let at: Vec<i64> = keep_y.iter().map(|c| keep.binary_search(c).unwrap_or(0) as i64).collect();
            initializers.push(int64_tensor("$kept_outputs", &at));
            let extra: Vec<usize> = keep_y.iter().copied().filter(|c| keep.binary_search(c).is_err()).collect();
            let gathered = if extra.is_empty() { y.clone() } else { "$gathered".to_string() };
            nodes.push(local_node("Gather", &[&out, "$kept_outputs"], &gathered, vec![attr_int("axis", axis as i64)]));
            if !extra.is_empty() {
                // An output kept though its input left (its class is kept by a reader that could
                // have folded it) is its constant beta: `0 * any entry + beta`, exact as the
                // original's `0 * normalized + beta`.
                let mut dims = vec![keep_y.len() as i64];
                dims.resize((-axis) as usize, 1);
                let constant = |c: usize| self.constant(c).expect("untied outputs have a zero scale");
                let mask: Vec<f64> = keep_y.iter().map(|c| if extra.contains(c) { 0.0 } else { 1.0 }).collect();
                let offset: Vec<f64> =
                    keep_y.iter().map(|&c| if extra.contains(&c) { constant(c) } else { 0.0 }).collect();
                for (name, vals) in [("$silenced", mask), ("$silenced_beta", offset)] {
                    initializers.push(named_floats(name, dims.clone(), self.dtype, &vals));
                }
                nodes.push(local_node("Mul", &["$gathered", "$silenced"], "$gathered_masked", vec![]));
                nodes.push(local_node("Add", &["$gathered_masked", "$silenced_beta"], &y, vec![]));
            }
        }
        let node = cx.node.0;
        cx.push(Edit::Replace { node, nodes, initializers });
        Ok(())
    }
}
