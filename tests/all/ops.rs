//! Operator patterns exporters emit, each built by hand, minimized, and checked by tract.

use crate::common::{attr_f, attr_i, int64_tensor, write, G};
use onnx_minimize::onnx::proto::{attribute_proto::AttributeType, AttributeProto, ModelProto, TensorProto};
use onnx_minimize::onnx::tensor::int64s;
use onnx_minimize::report::Report;
use onnx_minimize::{minimize_file, Options};

fn minimize(m: &ModelProto) -> (Report, onnx_minimize::Model) {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "in.onnx", m);
    let out = dir.path().join("out.onnx");
    let report = minimize_file(&input, Some(&out), &Options::default(), &|_| {}).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.verification.is_some());
    (report, onnx_minimize::Model::load(&out).unwrap())
}

fn widths(r: &Report) -> Vec<(usize, usize)> {
    r.removals.layers.iter().map(|l| (l.inputs_after, l.outputs_after)).collect()
}

const B: Option<usize> = None;

#[test]
fn pointwise_zoo_between_layers() {
    // Per-channel scale with zeros, shift, divide, PReLU, Clip, Erf-GELU, Dropout, Cast, LeakyRelu.
    let mut g = G::new("x", &[B, Some(5)]);
    g.weight("w1", 8, 5, &[1, 6]).init("b1", &[8], &[0.5, -1.0, 0.3, 0.2, 0.1, 0.0, 2.0, -0.4]);
    g.init("scale", &[1, 8], &[1.0, 2.0, 0.0, 1.5, 1.0, 1.0, 0.5, 1.0]);
    g.init("shift", &[8], &[0.1; 8]).init("div", &[8], &[2.0; 8]).init("slope", &[8], &[0.2; 8]);
    g.init("lo", &[], &[-0.5]).init("hi", &[], &[0.75]).init("sqrt2", &[], &[std::f32::consts::SQRT_2]);
    g.init("one", &[], &[1.0]).init("half", &[], &[0.5]);
    g.op("Gemm", &["x", "w1", "b1"], "h", vec![attr_i("transB", 1)]);
    g.op("Mul", &["h", "scale"], "s", vec![]).op("Sub", &["s", "shift"], "t", vec![]).op(
        "Div",
        &["t", "div"],
        "u",
        vec![],
    );
    g.op("PRelu", &["u", "slope"], "p", vec![]).op("Clip", &["p", "lo", "hi"], "c", vec![]);
    // GELU as the TorchScript exporter writes it at opset 17.
    g.op("Div", &["c", "sqrt2"], "e0", vec![]).op("Erf", &["e0"], "e1", vec![]).op("Add", &["e1", "one"], "e2", vec![]);
    g.op("Mul", &["c", "e2"], "e3", vec![]).op("Mul", &["e3", "half"], "gelu", vec![]);
    g.op("Dropout", &["gelu"], "d", vec![]);
    let to = AttributeProto {
        name: Some("to".into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(1),
        ..Default::default()
    };
    g.op("Cast", &["d"], "k", vec![to]).op("LeakyRelu", &["k"], "l", vec![attr_f("alpha", 0.1)]);
    g.weight("w2", 3, 8, &[]).init("b2", &[3], &[0.0; 3]);
    g.op("Gemm", &["l", "w2", "b2"], "y", vec![attr_i("transB", 1)]);
    let (r, _) = minimize(&g.model("y", &[B, Some(3)]));
    // Rows 1 and 6 are constant, channel 2 is scaled by zero: all three leave.
    assert_eq!(widths(&r), vec![(5, 5), (5, 3)]);
}

#[test]
fn shared_weights_through_identity_get_one_sliced_copy() {
    let mut g = G::new("x", &[B, Some(4)]);
    g.weight("w1", 6, 4, &[0, 3]).init("b1", &[6], &[1.0; 6]).weight("w2", 3, 6, &[]);
    g.op("Gemm", &["x", "w1", "b1"], "h", vec![attr_i("transB", 1)]).op("Relu", &["h"], "a", vec![]);
    g.op("Identity", &["w2"], "w2_alias", vec![]);
    g.op("Gemm", &["a", "w2"], "y1", vec![attr_i("transB", 1)]);
    g.op("Gemm", &["a", "w2_alias"], "y2", vec![attr_i("transB", 1)]);
    g.op("Add", &["y1", "y2"], "y", vec![]);
    let (r, m) = minimize(&g.model("y", &[B, Some(3)]));
    assert_eq!(widths(&r), vec![(4, 4), (4, 3), (4, 3)]);
    // The shared original is gone; each reader has its own sliced copy with a folded bias.
    assert!(m.graph().initializer.iter().all(|t| t.name() != "w2"));
    // Both readers keep the same slice, so they share one copy: the model does not grow.
    assert_eq!(m.graph().initializer.iter().filter(|t| t.name().starts_with("w2")).count(), 1);
    assert!(r.after.params < r.before.params);
}

#[test]
fn constant_node_weights_and_a_channel_keeping_reshape() {
    let mut g = G::new("x", &[B, Some(2), Some(3)]);
    let w = g.rand(3 * 5);
    let mut w = w;
    (0..3).for_each(|c| w[c * 5 + 2] = 0.0); // output 2 of the MatMul reads nothing
    let t = crate::common::f32_tensor("w", &[3, 5], &w);
    let value = AttributeProto {
        name: Some("value".into()),
        r#type: Some(AttributeType::Tensor as i32),
        t: Some(t),
        ..Default::default()
    };
    g.g.node.push(crate::common::node("Constant", "const_w", &[], &["w"], vec![value]));
    g.init("b", &[5], &[0.1, 0.2, 0.3, 0.4, 0.5]);
    g.g.initializer.push(int64_tensor("shape", &[-1, 5]));
    g.op("MatMul", &["x", "w"], "mm", vec![]).op("Add", &["mm", "b"], "h", vec![]).op("Tanh", &["h"], "t", vec![]);
    g.op("Reshape", &["t", "shape"], "flat", vec![]);
    g.weight("w2", 3, 5, &[]);
    g.op("Gemm", &["flat", "w2"], "y", vec![attr_i("transB", 1)]);
    let (r, m) = minimize(&g.model("y", &[B, Some(3)]));
    assert_eq!(widths(&r), vec![(3, 4), (4, 3)]);
    let shape = m.graph().initializer.iter().find(|t| t.name() == "shape").unwrap();
    assert_eq!(onnx_minimize::onnx::tensor::int64s(shape), vec![-1, 4]);
}

#[test]
fn residual_adds_and_gating_share_one_space() {
    // Two writers into one stream: a channel leaves only when both agree.
    let mut g = G::new("x", &[B, Some(4)]);
    g.weight("wa", 6, 4, &[0, 1, 5]).weight("wb", 6, 4, &[0, 1, 2]).weight("wg", 6, 4, &[0]);
    g.op("Gemm", &["x", "wa"], "a", vec![attr_i("transB", 1)]);
    g.op("Gemm", &["x", "wb"], "b", vec![attr_i("transB", 1)]);
    g.op("Gemm", &["x", "wg"], "gl", vec![attr_i("transB", 1)]).op("Sigmoid", &["gl"], "gate", vec![]);
    g.op("Add", &["a", "b"], "s", vec![]).op("Mul", &["s", "gate"], "m", vec![]);
    g.weight("wo", 2, 6, &[]);
    g.op("Gemm", &["m", "wo"], "y", vec![attr_i("transB", 1)]);
    let (r, _) = minimize(&g.model("y", &[B, Some(2)]));
    // Channel 0 is zero in a and b (so s = 0 and m = 0); channel 1 is zero in a and b too.
    assert_eq!(widths(&r), vec![(4, 4), (4, 4), (4, 4), (4, 2)]);
}

#[test]
fn an_opaque_operator_keeps_its_channels_and_says_so() {
    let mut g = G::new("x", &[B, Some(4)]);
    g.weight("w1", 6, 4, &[2]).weight("w2", 3, 6, &[]);
    g.op("Gemm", &["x", "w1"], "h", vec![attr_i("transB", 1)]).op(
        "LpNormalization",
        &["h"],
        "s",
        vec![attr_i("axis", 1)],
    );
    g.op("Gemm", &["s", "w2"], "y", vec![attr_i("transB", 1)]);
    let (r, _) = minimize(&g.model("y", &[B, Some(3)]));
    assert_eq!(widths(&r), vec![(4, 6), (6, 3)]);
    assert!(
        r.removals
            .blocked
            .iter()
            .any(|b| b.reasons.iter().any(|w| w.code == "no-rule" && w.message.contains("LpNormalization"))),
        "{:?}",
        r.removals.blocked
    );
}

#[test]
fn a_softmax_over_the_channels_keeps_them_and_one_over_other_axes_passes_them() {
    let build = |axis: i64| {
        let mut g = G::new("x", &[B, Some(3), Some(4)]);
        // h = x @ w1 with channel 2 of h zero: dead after a softmax over the tokens (axis 1)
        // that w2 does not read there either.
        let mut w1 = g.rand(24);
        (0..4).for_each(|r| w1[r * 6 + 2] = 0.0);
        g.init("w1", &[4, 6], &w1);
        let mut w2 = g.rand(12);
        w2[4..6].iter_mut().for_each(|v| *v = 0.0);
        g.init("w2", &[6, 2], &w2);
        g.op("MatMul", &["x", "w1"], "h", vec![]).op("Softmax", &["h"], "s", vec![attr_i("axis", axis)]);
        g.op("MatMul", &["s", "w2"], "y", vec![]);
        minimize(&g.model("y", &[B, Some(3), Some(2)])).0
    };
    assert_eq!(widths(&build(1)), vec![(4, 5), (5, 2)]);
    let r = build(-1);
    assert_eq!(widths(&r), vec![(4, 6), (6, 2)]);
    assert!(r.removals.blocked.iter().any(|b| b.reasons.iter().any(|w| w.code == "reduces-channel-axis")));
}

#[test]
fn flatten_that_keeps_the_last_axis() {
    let mut g = G::new("x", &[B, Some(4)]);
    g.weight("w1", 6, 4, &[1, 4]).weight("w2", 2, 6, &[]);
    g.op("Gemm", &["x", "w1"], "h", vec![attr_i("transB", 1)]).rank("h", &[B, Some(6)]);
    g.op("Flatten", &["h"], "f", vec![attr_i("axis", 1)]);
    g.op("Gemm", &["f", "w2"], "y", vec![attr_i("transB", 1)]);
    let (r, m) = minimize(&g.model("y", &[B, Some(2)]));
    assert_eq!(widths(&r), vec![(4, 4), (4, 2)]);
    // The declared intermediate shape follows the new width.
    let vi = m.graph().value_info.iter().find(|v| v.name() == "h").unwrap();
    assert!(format!("{vi:?}").contains("DimValue(4)"));
}

/// Weights stored in typed fields (`float_data`) and as bfloat16 are read, sliced and folded in
/// their own type.
#[test]
fn typed_fields_and_bfloat16_weights() {
    use onnx_minimize::onnx::proto::{tensor_proto::DataType, type_proto};
    use onnx_minimize::onnx::tensor::{encode, with_data, FloatType, Values};
    let build = || {
        let mut g = G::new("x", &[B, Some(4)]);
        g.weight("w1", 6, 4, &[0, 5]).init("b1", &[6], &[0.5; 6]).weight("w2", 2, 6, &[]).init("b2", &[2], &[0.0; 2]);
        g.op("Gemm", &["x", "w1", "b1"], "h", vec![attr_i("transB", 1)]).op("Tanh", &["h"], "a", vec![]);
        g.op("Gemm", &["a", "w2", "b2"], "y", vec![attr_i("transB", 1)]);
        g.model("y", &[B, Some(2)])
    };
    let mut typed = build();
    for t in typed.graph.as_mut().unwrap().initializer.iter_mut() {
        let v = Values::of(t).unwrap();
        t.float_data = (0..v.len()).map(|i| v.get(i) as f32).collect();
        t.raw_data = None;
    }
    let (r, m) = minimize(&typed);
    assert_eq!(widths(&r), vec![(4, 4), (4, 2)]);
    assert!(m.graph().initializer.iter().all(|t| Values::of(t).is_ok()));

    let mut bf16 = build();
    for t in bf16.graph.as_mut().unwrap().initializer.iter_mut() {
        let v = Values::of(t).unwrap();
        let vals: Vec<f64> = (0..v.len()).map(|i| v.get(i)).collect();
        *t = with_data(t, t.dims.clone(), FloatType::Bf16, encode(FloatType::Bf16, &vals));
    }
    let g = bf16.graph.as_mut().unwrap();
    for vi in g.input.iter_mut().chain(g.output.iter_mut()) {
        if let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_mut().and_then(|t| t.value.as_mut()) {
            t.elem_type = Some(DataType::Bfloat16 as i32);
        }
    }
    let (r, m) = minimize(&bf16);
    assert_eq!(widths(&r), vec![(4, 4), (4, 2)]);
    assert!(r.verification.as_ref().unwrap().as_float32);
    // The folded bias is stored as bfloat16, like the weights.
    let b2 = m.graph().initializer.iter().find(|t| t.name() == "b2").unwrap();
    assert_eq!(Values::of(b2).unwrap().dtype, FloatType::Bf16);
}

/// `x.view(B, -1, C)` as exporters build it: the target shape is a `Concat` of dimensions read
/// with `Shape` and of constants; its last entry (the channels) is rewritten.
#[test]
fn computed_reshape_shapes_with_a_constant_channel_entry() {
    let mut g = G::new("x", &[B, Some(2), Some(4)]);
    let mut w1 = g.rand(4 * 6);
    (0..4).for_each(|c| w1[c * 6 + 1] = 0.0); // unit 1: constant
    g.init("w1", &[4, 6], &w1).init("b1", &[6], &[0.1, 0.5, 0.2, 0.3, 0.4, 0.6]);
    g.g.initializer.extend([
        int64_tensor("zero", &[0]),
        int64_tensor("minus_one", &[-1]),
        int64_tensor("channels", &[6]),
    ]);
    g.op("MatMul", &["x", "w1"], "mm", vec![]).op("Add", &["mm", "b1"], "h", vec![]).op("Tanh", &["h"], "a", vec![]);
    g.op("Shape", &["x"], "shape", vec![]).op("Gather", &["shape", "zero"], "batch", vec![attr_i("axis", 0)]);
    g.op("Concat", &["batch", "minus_one", "channels"], "target", vec![attr_i("axis", 0)]);
    g.op("Reshape", &["a", "target"], "r", vec![]);
    g.weight("w2", 3, 6, &[]);
    g.op("MatMul", &["r", "w2_t"], "y", vec![]);
    let w2 = g.rand(6 * 3);
    g.init("w2_t", &[6, 3], &w2);
    let (r, m) = minimize(&g.model("y", &[B, Some(2), Some(3)]));
    assert_eq!(widths(&r), vec![(4, 5), (5, 3)]);
    let channels = m.graph().initializer.iter().find(|t| t.name() == "channels").unwrap();
    assert_eq!(onnx_minimize::onnx::tensor::int64s(channels), vec![5]);
}

/// Regression (Swin's head): a Transpose whose rank is unknown cannot be followed, so the tensor
/// before it is kept whole, and everything it depends on must stay exact.
#[test]
fn a_layout_the_analysis_cannot_follow_keeps_its_inputs_needed() {
    let mut g = G::new("x", &[B, Some(3), Some(4)]);
    g.weight("w1", 4, 6, &[]).init("b1", &[6], &[0.3; 6]).weight("w2", 6, 4, &[1, 4]);
    g.op("MatMul", &["x", "w1"], "h", vec![]).op("Add", &["h", "b1"], "hb", vec![]).op("Relu", &["hb"], "a", vec![]);
    g.op("MatMul", &["a", "w2"], "o", vec![]);
    g.op("Transpose", &["o"], "t", vec![crate::common::attr_ints("perm", &[0, 2, 1])]);
    g.op("GlobalAveragePool", &["t"], "p", vec![]).op("Flatten", &["p"], "f", vec![attr_i("axis", 1)]);
    g.weight("w3", 2, 4, &[]);
    g.op("Gemm", &["f", "w3"], "y", vec![attr_i("transB", 1)]);
    let mut m = g.model("y", &[B, Some(2)]);
    // No declared shape for the input: no rank anywhere, as in TorchScript exports.
    let input = &mut m.graph.as_mut().unwrap().input[0];
    if let Some(onnx_minimize::onnx::proto::type_proto::Value::TensorType(t)) =
        input.r#type.as_mut().unwrap().value.as_mut()
    {
        t.shape = None;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "in.onnx", &m);
    let mut opts = Options::default();
    opts.verify.as_mut().unwrap().input_shapes.insert("x".into(), vec![2, 3, 4]);
    let r = minimize_file(&path, Some(&dir.path().join("out.onnx")), &opts, &|_| {}).unwrap_or_else(|e| panic!("{e}"));
    // Hidden units 1 and 4 feed nothing and leave; the rest is needed.
    assert_eq!(widths(&r), vec![(4, 4), (4, 4), (4, 2)]);
}

/// Regression (GPT-2, dynamo): one computed target shape shared by the reshapes of two layers
/// that lose different units: each reshape gets a copy of the shape with its own width, and
/// reshapes that need the same width share one copy.
#[test]
fn a_computed_shape_shared_by_two_reshapes_is_copied_for_each() {
    let cases: [(&[&[usize]], _, _); 2] = [
        (&[&[1, 2], &[0, 5]], vec![(4, 4), (4, 4), (4, 4), (4, 4)], 2),
        (&[&[1, 2], &[0]], vec![(4, 4), (4, 4), (4, 5), (5, 4)], 3),
    ];
    for (zeros, expected, concats) in cases {
        let mut g = G::new("x", &[B, Some(2), Some(4)]);
        g.g.initializer.extend([
            int64_tensor("zero", &[0]),
            int64_tensor("minus_one", &[-1]),
            int64_tensor("hidden", &[6]),
        ]);
        g.op("Shape", &["x"], "shape", vec![]).op("Gather", &["shape", "zero"], "batch", vec![attr_i("axis", 0)]);
        g.op("Concat", &["batch", "minus_one", "hidden"], "target", vec![attr_i("axis", 0)]);
        let mut cur = "x".to_string();
        for (i, zero_cols) in zeros.iter().enumerate() {
            let mut w = g.rand(4 * 6);
            (0..4).for_each(|c| zero_cols.iter().for_each(|&j| w[c * 6 + j] = 0.0));
            let v = g.rand(24);
            g.init(&format!("w{i}"), &[4, 6], &w).init(&format!("v{i}"), &[6, 4], &v);
            g.op("MatMul", &[&cur, &format!("w{i}")], &format!("h{i}"), vec![]);
            g.op("Reshape", &[&format!("h{i}"), "target"], &format!("r{i}"), vec![]);
            g.op("Tanh", &[&format!("r{i}")], &format!("a{i}"), vec![]);
            g.op("MatMul", &[&format!("a{i}"), &format!("v{i}")], &format!("o{i}"), vec![]);
            cur = format!("o{i}");
        }
        g.op("Identity", &[&cur], "y", vec![]);
        let (r, m) = minimize(&g.model("y", &[B, Some(2), Some(4)]));
        assert_eq!(widths(&r), expected);
        let found = m.graph().node.iter().filter(|n| n.op_type() == "Concat").count();
        assert_eq!(found, concats, "the shared shape and one copy per width needed");
    }
}

/// A Gather stores one index per kept feature: an input losing one feature of eight to a two-unit layer
/// is read whole, one losing six is gathered.
#[test]
fn inputs_are_gathered_only_when_that_makes_the_model_smaller() {
    use crate::common::{mlp, Form, Layer};
    for (dead, gathers) in [(1, false), (6, true)] {
        let w = (0..16).map(|i| if i % 8 < dead { 0.0 } else { 1.0 + i as f32 }).collect();
        let form = Form::Gemm { trans_b: true, alpha: 1.0, beta: 1.0 };
        let m = mlp(&[Layer { n_in: 8, n_out: 2, w, bias: Some(vec![0.1, 0.2]), form, act: None }]);
        let dir = tempfile::tempdir().unwrap();
        let input = write(dir.path(), "in.onnx", &m);
        let opts = Options { gather_inputs: true, ..Default::default() };
        let report = minimize_file(&input, Some(&dir.path().join("out.onnx")), &opts, &|_| {}).unwrap();
        assert_eq!(!report.removals.gathered_inputs.is_empty(), gathers, "{dead} dead features");
        assert!(report.after.params <= report.before.params);
    }
}

/// Attention's head split without the attention: `[B, T, 6] -> [B, T, 2, 3]`, heads moved in
/// front and back, merged. The channel space spans two axes, and leaves as a product.
#[test]
fn head_splits_shrink_entries_in_every_head_or_whole_heads() {
    for (unused, kept) in
        [(vec![1, 4], vec![(6, 4), (4, 2)]), (vec![3, 4, 5], vec![(6, 3), (3, 2)]), (vec![1], vec![(6, 6), (6, 2)])]
    {
        let mut g = G::new("x", &[B, Some(5), Some(6)]);
        let w = g.rand(36);
        g.init("w", &[6, 6], &w).init("b", &[6], &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]);
        let mut wo = g.rand(12);
        unused.iter().for_each(|&r| wo[r * 2..r * 2 + 2].iter_mut().for_each(|x| *x = 0.0));
        g.init("wo", &[6, 2], &wo);
        g.g.initializer.extend([int64_tensor("split", &[0, 0, 2, 3]), int64_tensor("merge", &[0, 0, 6])]);
        let perm = || vec![crate::common::attr_ints("perm", &[0, 2, 1, 3])];
        g.op("MatMul", &["x", "w"], "mm", vec![]).op("Add", &["mm", "b"], "q", vec![]);
        g.op("Reshape", &["q", "split"], "h", vec![]).op("Transpose", &["h"], "t", perm());
        g.op("Tanh", &["t"], "a", vec![]).op("Transpose", &["a"], "u", perm());
        g.op("Reshape", &["u", "merge"], "m", vec![]).op("MatMul", &["m", "wo"], "y", vec![]);
        let (r, _) = minimize(&g.model("y", &[B, Some(5), Some(2)]));
        assert_eq!(widths(&r), kept, "rows {unused:?} of wo zero");
    }
}

/// Slices along the channel axis (bounds as inputs, a negative start, an open end) and along
/// another axis: channels before and inside the range leave, and the bounds follow.
#[test]
fn slices_follow_channels_and_rewrite_their_bounds() {
    let mut g = G::new("x", &[B, Some(4), Some(5)]);
    g.weight("w1", 5, 8, &[]).init("b1", &[8], &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]);
    let mut w2 = g.rand(5 * 3);
    w2[3..6].iter_mut().for_each(|v| *v = 0.0); // sliced channel 1 (h channel 4) unread
    g.init("w2", &[5, 3], &w2);
    g.g.initializer.extend([
        int64_tensor("starts", &[-5, 1]),
        int64_tensor("ends", &[i64::MAX, 4]),
        int64_tensor("axes", &[2, 1]),
    ]);
    g.op("MatMul", &["x", "w1"], "mm", vec![]).op("Add", &["mm", "b1"], "h", vec![]).op("Relu", &["h"], "a", vec![]);
    g.op("Slice", &["a", "starts", "ends", "axes"], "s", vec![]).op("MatMul", &["s", "w2"], "y", vec![]);
    let (r, m) = minimize(&g.model("y", &[B, Some(3), Some(3)]));
    // h channels 0..3 feed nothing, channel 4 reads zero weights: 8 -> 4, and 5 -> 4 inputs.
    assert_eq!(widths(&r), vec![(5, 4), (4, 3)]);
    let bounds = |name: &str| {
        let t = m.graph().initializer.iter().find(|t| t.name().starts_with(name)).unwrap();
        onnx_minimize::onnx::tensor::int64s(t)
    };
    assert_eq!((bounds("starts"), bounds("ends")), (vec![0, 1], vec![4, 4]));
}

/// Regression (an MLP exported with an image-shaped input and `nn.Flatten`): the flattened
/// tensor's layout is unknown, so every input feature counts as varying and needed; first-layer
/// units whose rows are zero are still constant, and leave.
#[test]
fn units_with_zero_rows_leave_behind_a_flatten_of_unknown_layout() {
    let mut g = G::new("x", &[B, Some(1), Some(4), Some(4)]);
    g.op("Flatten", &["x"], "f", vec![attr_i("axis", 1)]);
    g.weight("w1", 8, 16, &[2, 5]).init("b1", &[8], &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]);
    g.op("Gemm", &["f", "w1", "b1"], "h", vec![attr_i("transB", 1)]).op("Relu", &["h"], "a", vec![]);
    g.weight("w2", 3, 8, &[]);
    g.op("Gemm", &["a", "w2"], "y", vec![attr_i("transB", 1)]);
    let (r, _) = minimize(&g.model("y", &[B, Some(3)]));
    assert_eq!(widths(&r), vec![(16, 6), (6, 3)]);
    assert_eq!(r.removals.layers[0].removed_constant, 2);
}

/// `W @ x`: the weight on the left, the channels on the second-to-last axis, the bias a column.
#[test]
fn a_weight_on_the_left_shrinks_rows_of_the_activation() {
    let mut g = G::new("x", &[B, Some(5), Some(3)]);
    g.weight("w1", 6, 5, &[1]).init("b1", &[6, 1], &[0.1, 0.6, 0.2, 0.3, 0.4, 0.5]);
    let mut w2 = g.rand(2 * 6);
    (w2[4], w2[10]) = (0.0, 0.0); // column 4 unread
    g.init("w2", &[2, 6], &w2);
    g.op("MatMul", &["w1", "x"], "m", vec![]).op("Add", &["m", "b1"], "h", vec![]).op("Relu", &["h"], "a", vec![]);
    g.op("MatMul", &["w2", "a"], "y", vec![]);
    let (r, m) = minimize(&g.model("y", &[B, Some(2), Some(3)]));
    assert_eq!(widths(&r), vec![(5, 4), (4, 2)]);
    // relu(0.6) folds into a new bias column after the second MatMul.
    assert!(m.graph().node.iter().any(|n| n.op_type() == "Add" && n.name().contains("folded")));
}

/// Multi-head attention written out (2 heads of 3): a query dimension that is 0 and a key
/// dimension that is constant leave Q and K (the softmax forgets a per-query constant); a
/// constant value dimension folds into the output projection's bias and an unread one leaves.
/// Without the softmax, the constant key dimension must stay.
#[test]
fn attention_heads_lose_query_key_and_value_dimensions() {
    for softmax in [true, false] {
        let mut g = G::new("x", &[B, Some(4), Some(6)]);
        // [in 6, out 6] projections with the listed output columns zero.
        let projection = |g: &mut G, name: &str, zero_cols: &[usize]| {
            let mut w = g.rand(36);
            (0..6).for_each(|c| zero_cols.iter().for_each(|&j| w[c * 6 + j] = 0.0));
            g.init(name, &[6, 6], &w);
        };
        projection(&mut g, "wq", &[1, 4]);
        projection(&mut g, "wk", &[2, 5]);
        projection(&mut g, "wv", &[0, 3]);
        g.init("bq", &[6], &[0.1, 0.0, 0.2, 0.3, 0.0, 0.4]).init("bk", &[6], &[0.5, 0.6, 0.7, 0.8, 0.9, 1.0]);
        g.init("bv", &[6], &[0.3, 0.1, 0.2, -0.4, 0.5, 0.6]);
        let mut wo = g.rand(36);
        [2, 5].iter().for_each(|&r| wo[r * 6..r * 6 + 6].iter_mut().for_each(|v| *v = 0.0));
        g.init("wo", &[6, 6], &wo).init("bo", &[6], &[0.0; 6]).init("scale", &[], &[3f32.sqrt()]);
        g.g.initializer.extend([int64_tensor("split", &[0, 0, 2, 3]), int64_tensor("merge", &[0, 0, 6])]);
        let perm = |p: &[i64]| vec![crate::common::attr_ints("perm", p)];
        for (t, to) in [("q", &[0, 2, 1, 3]), ("k", &[0, 2, 3, 1]), ("v", &[0, 2, 1, 3])] {
            g.op("MatMul", &["x", &format!("w{t}")], &format!("{t}m"), vec![]);
            g.op("Add", &[&format!("{t}m"), &format!("b{t}")], &format!("{t}b"), vec![]);
            g.op("Reshape", &[&format!("{t}b"), "split"], &format!("{t}h"), vec![]);
            g.op("Transpose", &[&format!("{t}h")], &format!("{t}t"), perm(to));
        }
        g.op("MatMul", &["qt", "kt"], "s", vec![]).op("Div", &["s", "scale"], "ss", vec![]);
        g.op(if softmax { "Softmax" } else { "Sigmoid" }, &["ss"], "p", vec![attr_i("axis", -1)]);
        g.op("MatMul", &["p", "vt"], "o", vec![]).op("Transpose", &["o"], "ot", perm(&[0, 2, 1, 3]));
        g.op("Reshape", &["ot", "merge"], "om", vec![]).op("MatMul", &["om", "wo"], "y0", vec![]);
        g.op("Add", &["y0", "bo"], "y", vec![]);
        let (r, _) = minimize(&g.model("y", &[B, Some(4), Some(6)]));
        // Layers in topological order: V, K, Q, O. Without a softmax the constant key dimension
        // stays, and `P @ V` is not known to average: V keeps every dimension.
        let expected =
            if softmax { vec![(6, 2), (6, 2), (6, 2), (2, 6)] } else { vec![(6, 6), (6, 4), (6, 4), (6, 6)] };
        assert_eq!(widths(&r), expected, "softmax: {softmax}");
    }
}

/// `nn.MultiheadAttention` as exported (sequence first, 2 heads of 3): one packed projection
/// unflattened to `[T, B, 3, E]`, each part selected by a Gather, heads merged with the batch
/// (`[T, B * H, D]`). Q, K and V keep entries of their own, as many in each part (the first
/// ones dropped pad the others); every head stays, with the same entries.
#[test]
fn packed_projection_parts_and_heads_merged_with_the_batch() {
    for (unread, expected) in [(true, vec![(6, 6), (2, 6)]), (false, vec![(6, 12), (4, 6)])] {
        let mut g = G::new("x", &[Some(4), B, Some(6)]);
        let mut w = g.rand(6 * 18);
        // Output columns zero: query 1 and 4, key 2 and 5, value 0 and 3.
        (0..6).for_each(|r| [1, 4, 8, 11, 12, 15].iter().for_each(|&c| w[r * 18 + c] = 0.0));
        let mut b: Vec<f32> = (0..18).map(|i| 0.1 + i as f32 / 20.0).collect();
        (b[1], b[4]) = (0.0, 0.0);
        g.init("w", &[6, 18], &w).init("b", &[18], &b).init("scale", &[], &[3f32.sqrt()]);
        let mut wo = g.rand(36);
        if unread {
            [2, 5].iter().for_each(|&r| wo[r * 6..r * 6 + 6].iter_mut().for_each(|v| *v = 0.0));
        }
        g.init("wo", &[6, 6], &wo).init("bo", &[6], &[0.0; 6]);
        g.g.initializer.extend([
            int64_tensor("parts", &[0, 0, 3, 6]),
            int64_tensor("heads", &[4, -1, 3]),
            int64_tensor("merge", &[4, -1, 6]),
            int64_tensor("first", &[0]),
            int64_tensor("fourth", &[3]),
        ]);
        let perm = |p: &[i64]| vec![crate::common::attr_ints("perm", p)];
        g.op("MatMul", &["x", "w"], "m", vec![]).op("Add", &["m", "b"], "qkv", vec![]);
        g.op("Reshape", &["qkv", "parts"], "u", vec![]).op("Unsqueeze", &["u", "first"], "u1", vec![]);
        g.op("Transpose", &["u1"], "u2", perm(&[3, 1, 2, 0, 4])).op("Squeeze", &["u2", "fourth"], "u3", vec![]);
        for (i, t) in ["q", "k", "v"].iter().enumerate() {
            // A scalar index: the part's axis goes.
            g.g.initializer.push(TensorProto { dims: vec![], ..int64_tensor(&format!("i{t}"), &[i as i64]) });
            g.op("Gather", &["u3", &format!("i{t}")], &format!("{t}p"), vec![attr_i("axis", 0)]);
            g.op("Reshape", &[&format!("{t}p"), "heads"], &format!("{t}h"), vec![]);
            g.op("Transpose", &[&format!("{t}h")], &format!("{t}t"), perm(&[1, 0, 2]));
        }
        g.op("Transpose", &["kt"], "ktt", perm(&[0, 2, 1])).op("MatMul", &["qt", "ktt"], "s", vec![]);
        g.op("Div", &["s", "scale"], "ss", vec![]).op("Softmax", &["ss"], "p", vec![attr_i("axis", -1)]);
        g.op("MatMul", &["p", "vt"], "o", vec![]).op("Transpose", &["o"], "ot", perm(&[1, 0, 2]));
        g.op("Reshape", &["ot", "merge"], "om", vec![]).op("MatMul", &["om", "wo"], "y0", vec![]);
        g.op("Add", &["y0", "bo"], "y", vec![]);
        let (r, _) = minimize(&g.model("y", &[Some(4), B, Some(6)]));
        assert_eq!(widths(&r), expected, "value dimension 2 unread: {unread}");
    }
}

/// A weight the graph computes from a weight (`Split` of a packed projection, `Transpose` of
/// each part, as cross-attention's `w.split([E, 2E])` exports) is folded into initializers, so
/// the linear rule sees it; the packed weight is stored in its parts, not twice.
#[test]
fn weights_split_and_transposed_in_the_graph_are_folded() {
    let mut g = G::new("x", &[B, Some(4)]);
    g.weight("w", 8, 4, &[2]).weight("w2", 4, 2, &[]).weight("w3", 4, 2, &[]);
    g.g.initializer.push(int64_tensor("sizes", &[4, 4]));
    let perm = vec![crate::common::attr_ints("perm", &[1, 0])];
    g.g.node.push(onnx_minimize::onnx::build::node(
        "Split",
        "split",
        &["w", "sizes"],
        &["w0", "w1"],
        vec![attr_i("axis", 0)],
    ));
    g.op("Transpose", &["w0"], "t0", perm.clone()).op("Transpose", &["w1"], "t1", perm);
    g.op("MatMul", &["x", "t0"], "h0", vec![]).op("Relu", &["h0"], "a0", vec![]).op(
        "MatMul",
        &["a0", "w2"],
        "y0",
        vec![],
    );
    g.op("MatMul", &["x", "t1"], "h1", vec![]).op("MatMul", &["h1", "w3"], "y1", vec![]);
    g.op("Add", &["y0", "y1"], "y", vec![]);
    let (r, m) = minimize(&g.model("y", &[B, Some(2)]));
    // The second part's layers stay; the first loses unit 2 (its row zero).
    assert_eq!(widths(&r), vec![(4, 4), (4, 2), (4, 3), (3, 2)]);
    let graph = m.graph();
    assert!(graph.node.iter().all(|n| !["Split", "Transpose"].contains(&n.op_type())));
    assert!(graph.initializer.iter().all(|t| t.name() != "w" && t.name() != "sizes"));
}

/// A matrix read both as it is and transposed (a tied embedding table and its output head) is not
/// folded: the model would store it twice.
#[test]
fn a_weight_read_twice_is_not_folded_into_a_second_copy() {
    let mut g = G::new("x", &[B, Some(4)]);
    g.weight("w", 4, 4, &[]).op("MatMul", &["x", "w"], "y1", vec![]);
    g.op("Transpose", &["w"], "t", vec![crate::common::attr_ints("perm", &[1, 0])]);
    g.op("MatMul", &["x", "t"], "y2", vec![]).op("Add", &["y1", "y2"], "y", vec![]);
    let (r, m) = minimize(&g.model("y", &[B, Some(4)]));
    assert!(r.after.params <= r.before.params, "{} -> {}", r.before.params, r.after.params);
    assert!(m.graph().node.iter().any(|n| n.op_type() == "Transpose"));
}

/// `torch.where(h > 0, h, 0.1 * h)` (a leaky ReLU written out) and `Not`/`And` of comparisons:
/// per channel, so the constant units (zero rows with a bias) stay constant through them and
/// leave, folded into the next layer's bias.
#[test]
fn where_and_comparisons_follow_channels() {
    let mut g = G::new("x", &[B, Some(6)]);
    g.weight("w1", 8, 6, &[1, 4]).init("b1", &[8], &[0.5, -0.7, 0.2, 0.1, 0.3, -0.2, 0.4, 0.6]);
    g.weight("w2", 3, 8, &[]).init("zero", &[1], &[0.0]).init("slope", &[1], &[0.1]).init("cap", &[1], &[2.0]);
    g.op("Gemm", &["x", "w1", "b1"], "h", vec![attr_i("transB", 1)]);
    g.op("Greater", &["h", "zero"], "pos", vec![]).op("Less", &["h", "cap"], "low", vec![]);
    g.op("And", &["pos", "low"], "inside", vec![]).op("Not", &["inside"], "outside", vec![]);
    g.op("Mul", &["h", "slope"], "leak", vec![]).op("Where", &["outside", "leak", "h"], "a", vec![]);
    g.op("Gemm", &["a", "w2"], "y", vec![attr_i("transB", 1)]);
    let (r, _) = minimize(&g.model("y", &[B, Some(3)]));
    assert_eq!(widths(&r), vec![(6, 6), (6, 3)]);
}

/// A token embedding writes the channels: a table column constant over every row folds into
/// the next layer's bias, a column nothing reads leaves, and the table loses both.
#[test]
fn embedding_tables_lose_constant_and_unread_columns() {
    let mut g = G::new("ids", &[B, Some(5)]);
    g.g.input[0] =
        crate::common::value_info("ids", onnx_minimize::onnx::proto::tensor_proto::DataType::Int64, &[B, Some(5)]);
    let mut table = g.rand(10 * 6);
    (0..10).for_each(|r| table[r * 6 + 2] = 0.5);
    g.init("table", &[10, 6], &table).weight("w", 6, 3, &[4]).init("b", &[3], &[0.1, 0.2, 0.3]);
    g.op("Gather", &["table", "ids"], "e", vec![attr_i("axis", 0)]).op("MatMul", &["e", "w"], "m", vec![]);
    g.op("Add", &["m", "b"], "y", vec![]);
    let (r, m) = minimize(&g.model("y", &[B, Some(5), Some(3)]));
    assert_eq!(widths(&r), vec![(4, 3)]);
    let table = m.graph().initializer.iter().find(|t| t.name() == "table").unwrap();
    assert_eq!(table.dims, vec![10, 4]);
}

/// RoBERTa's position ids as the dynamo exporter writes them: a padding mask summed along the
/// tokens in int64, which tract cannot sum (it types the cast as a dimension); verification
/// runs on copies that sum in float64.
#[test]
fn position_ids_summed_over_a_padding_mask_are_verified() {
    use onnx_minimize::onnx::proto::tensor_proto::DataType;
    let mut g = G::new("ids", &[B, Some(5)]);
    g.g.input[0] = crate::common::value_info("ids", DataType::Int64, &[B, Some(5)]);
    g.g.initializer.push(int64_tensor("one", &[1]));
    g.g.initializer.last_mut().unwrap().dims = vec![];
    let positions = g.rand(10 * 6);
    g.init("positions", &[10, 6], &positions).weight("w", 6, 3, &[4]);
    g.op("Equal", &["ids", "one"], "pad", vec![]).op("Not", &["pad"], "real", vec![]);
    g.op("Cast", &["real"], "r32", vec![attr_i("to", DataType::Int32 as i64)]);
    g.op("Cast", &["r32"], "r64", vec![attr_i("to", DataType::Int64 as i64)]);
    g.op("CumSum", &["r64", "one"], "count", vec![]).op("Mul", &["count", "r64"], "masked", vec![]);
    g.op("Add", &["masked", "one"], "at", vec![]).op("Gather", &["positions", "at"], "e", vec![attr_i("axis", 0)]);
    g.op("MatMul", &["e", "w"], "y", vec![]);
    let (r, m) = minimize(&g.model("y", &[B, Some(5), Some(3)]));
    assert_eq!(widths(&r), vec![(5, 3)]);
    assert_eq!(m.graph().node.iter().filter(|n| n.op_type() == "CumSum").count(), 1, "the copies are tract's alone");
}

/// TorchScript exports bake the example's batch size into reshapes while declaring it dynamic:
/// the original runs at that size only, so the other sizes tried are skipped and reported.
#[test]
fn shapes_the_original_cannot_run_at_are_skipped_and_reported() {
    let mut g = G::new("x", &[B, Some(4)]);
    g.g.initializer.push(int64_tensor("baked", &[1, 4]));
    g.weight("w1", 4, 5, &[]).weight("w2", 5, 3, &[2]);
    g.op("Reshape", &["x", "baked"], "r", vec![]).op("MatMul", &["r", "w1"], "h", vec![]);
    g.op("Relu", &["h"], "a", vec![]).op("MatMul", &["a", "w2"], "y", vec![]);
    let (r, _) = minimize(&g.model("y", &[Some(1), Some(3)]));
    assert_eq!(widths(&r), vec![(4, 4), (4, 3)]);
    let v = r.verification.unwrap();
    assert_eq!((v.runs, v.skipped.len()), (1, 2), "{:?}", v.skipped);
    assert!(v.skipped[0].contains("'x' F32 [3, 4]"), "{:?}", v.skipped);
}

/// InstanceNormalization (GroupNorm with a group per channel, as the dynamo exporter writes it
/// behind a `[0, C, -1]` reshape) normalizes each channel alone: a constant channel comes out as
/// the bias, as does one whose scale is zero, and both leave the convolution before and the
/// layer after.
#[test]
fn instance_norm_is_per_channel_behind_a_reshape_that_keeps_the_channels() {
    let mut g = G::new("x", &[B, Some(3), Some(6), Some(6)]);
    g.conv_weight("w1", 5, 3, 3, &[1, 3], &[]).init("b1", &[5], &[0.1, 0.5, -0.2, 0.3, 0.4]);
    g.g.initializer.push(int64_tensor("groups", &[0, 5, -1]));
    g.init("scale", &[5], &[1.0, 0.7, -1.2, 0.9, 0.0]).init("bias", &[5], &[0.1, -0.3, 0.2, 0.4, 0.6]);
    let w2 = g.rand(20);
    g.init("w2", &[5, 4], &w2);
    g.conv("x", "w1", Some("b1"), "c", 1, 1).op("Reshape", &["c", "groups"], "r", vec![]);
    g.op("InstanceNormalization", &["r", "scale", "bias"], "n", vec![]).op("Relu", &["n"], "a", vec![]);
    g.op("Transpose", &["a"], "t", vec![crate::common::attr_ints("perm", &[0, 2, 1])]);
    g.op("MatMul", &["t", "w2"], "y", vec![]);
    let (r, _) = minimize(&g.model("y", &[B, Some(36), Some(4)]));
    assert_eq!(widths(&r), vec![(3, 2), (2, 4)]);
}

/// `a = relu(x @ w1 + b1)` flattened to `[-1, size]` with the size read back as the last
/// dimension of `read` (`flat`), and `w2` (`[2, 6]`, transB) that leaves a's channel 2 unread.
fn flattened_to_a_size_read_back(g: &mut G, read: &str) {
    g.weight("w1", 4, 6, &[]).init("b1", &[6], &[0.1, -0.2, 0.3, 0.4, 0.5, 0.6]);
    let mut w2 = g.rand(6 * 2);
    (w2[2], w2[8]) = (0.0, 0.0);
    g.init("w2", &[2, 6], &w2);
    g.g.initializer.extend([
        int64_tensor("minus_one", &[-1]),
        int64_tensor("start", &[-1]),
        int64_tensor("end", &[i64::MAX]),
        int64_tensor("zero", &[0]),
    ]);
    g.op("MatMul", &["x", "w1"], "m", vec![]).op("Add", &["m", "b1"], "h", vec![]).op("Relu", &["h"], "a", vec![]);
    g.op("Shape", &[read], "s", vec![]).op("Slice", &["s", "start", "end", "zero"], "c", vec![]);
    g.op("Concat", &["minus_one", "c"], "target", vec![attr_i("axis", 0)]);
    g.op("Reshape", &["a", "target"], "flat", vec![]);
}

/// GPT-2's Conv1D as TorchScript writes it: `x.view(-1, x.size(-1))` reads the channel count
/// back with Shape only to reshape x itself, which follows the new width; reads of other axes
/// do not change. A channel count that also feeds arithmetic is the declared number there: it
/// folds to the original constant, and x shrinks all the same.
#[test]
fn shape_reads_that_only_reshape_the_tensor_itself_let_it_shrink() {
    for arithmetic in [false, true] {
        let mut g = G::new("x", &[B, Some(3), Some(4)]);
        flattened_to_a_size_read_back(&mut g, "a");
        g.op("Gemm", &["flat", "w2"], "y0", vec![attr_i("transB", 1)]);
        if arithmetic {
            // y = y0 * count: the channel count as a number.
            g.op("Cast", &["c"], "cf", vec![attr_i("to", 1)]).op("Mul", &["y0", "cf"], "y", vec![]);
        } else {
            g.op("Identity", &["y0"], "y", vec![]);
        }
        let (r, _) = minimize(&g.model("y", &[None, Some(2)]));
        assert_eq!(widths(&r), vec![(4, 5), (5, 2)], "arithmetic: {arithmetic}");
    }
}

/// TorchScript's GPT-2 reshapes the final norm's output to a last size read back from another
/// tensor (the embeddings): the reshape ties the two, so they keep the same channels and the
/// size read back is the new width. An unrelated tensor of the same width read back, which
/// something reads in full, is a size the declared shapes fix: it folds to a constant, which the
/// reshape's rule rewrites to the new width.
#[test]
fn a_last_size_read_back_from_another_tensor_ties_it_to_the_reshaped_one() {
    for unrelated in [false, true] {
        let mut g = G::new("x", &[B, Some(3), Some(4)]);
        g.weight("w3", 4, 6, &[]).op("MatMul", &["x", "w3"], "e", vec![]);
        flattened_to_a_size_read_back(&mut g, if unrelated { "e" } else { "h" });
        g.op("Gemm", &["flat", "w2"], "y0", vec![attr_i("transB", 1)]);
        // e is read by an output sum in full.
        g.op("ReduceSum", &["e"], "es", vec![attr_i("keepdims", 0)]).op("Unsqueeze", &["es", "zero"], "e1", vec![]);
        g.op("Add", &["y0", "e1"], "y", vec![]);
        let (r, _) = minimize(&g.model("y", &[None, Some(2)]));
        let out = |name: &str| r.removals.layers.iter().find(|l| l.node == name).map(|l| l.outputs_after);
        assert_eq!((out("MatMul_1"), out("MatMul_0")), (Some(5), Some(6)), "unrelated: {unrelated}");
    }
}

/// An Einsum that multiplies by a constant matrix over the last axis (here the weight stored
/// transposed, `bti,ji->btj`) is a linear layer; the equation stays, the sizes shrink.
#[test]
fn einsum_products_with_a_matrix_are_linear_layers() {
    let mut g = G::new("x", &[B, Some(3), Some(4)]);
    g.weight("w1", 6, 4, &[2]).init("b1", &[6], &[0.1, 0.2, 0.7, 0.3, 0.4, 0.5]);
    g.weight("w2", 2, 6, &[]);
    let eq = |e: &str| vec![onnx_minimize::onnx::build::attr_string("equation", e)];
    g.op("Einsum", &["x", "w1"], "m", eq("bti,ji->btj")).op("Add", &["m", "b1"], "h", vec![]);
    g.op("Relu", &["h"], "a", vec![]).op("Einsum", &["w2", "a"], "y", eq("ji,bti->btj"));
    let (r, _) = minimize(&g.model("y", &[B, Some(3), Some(2)]));
    assert_eq!(widths(&r), vec![(4, 5), (5, 2)]);
}

/// Expand: a class token broadcast over the batch (a constant, sliced with the stream's
/// channels) and an activation broadcast over the tokens (the shape's channel entry rewritten).
#[test]
fn expanded_class_tokens_and_activations_follow_the_channels() {
    let mut g = G::new("x", &[B, Some(3), Some(4)]);
    // The head reads stream channels 0, 2, 3, 5: channels 1 and 4 leave everywhere.
    g.weight("w", 4, 6, &[]).weight("head", 6, 2, &[1, 4]);
    let cls = g.rand(6);
    g.init("cls", &[1, 1, 6], &cls);
    g.g.initializer.extend([int64_tensor("one", &[1]), int64_tensor("three", &[3]), int64_tensor("six", &[6])]);
    g.op("MatMul", &["x", "w"], "patches", vec![]).rank("patches", &[B, Some(3), Some(6)]);
    g.op("Shape", &["x"], "batch", vec![attr_i("start", 0), attr_i("end", 1)]).rank("batch", &[Some(1)]);
    g.op("Concat", &["batch", "one", "one"], "cls_shape", vec![attr_i("axis", 0)]);
    g.op("Expand", &["cls", "cls_shape"], "cls_b", vec![]).rank("cls_b", &[B, Some(1), Some(6)]);
    g.op("ReduceMean", &["patches"], "mean", vec![crate::common::attr_ints("axes", &[1])]);
    g.op("Concat", &["batch", "three", "six"], "mean_shape", vec![attr_i("axis", 0)]);
    g.op("Expand", &["mean", "mean_shape"], "mean_b", vec![]).rank("mean_b", &[B, Some(3), Some(6)]);
    g.op("Sub", &["patches", "mean_b"], "centred", vec![]);
    g.op("Concat", &["cls_b", "centred"], "stream", vec![attr_i("axis", 1)]).rank("stream", &[B, Some(4), Some(6)]);
    g.op("MatMul", &["stream", "head"], "y", vec![]);
    let (r, m) = minimize(&g.model("y", &[B, Some(4), Some(2)]));
    assert_eq!(widths(&r), vec![(4, 4), (4, 2)], "{}", r.to_text());
    let sliced = m.graph().initializer.iter().find(|t| t.name() == "cls").expect("the class token");
    assert_eq!(sliced.dims, vec![1, 1, 4]);
    let entries: Vec<Vec<i64>> = m.graph().initializer.iter().filter(|t| t.dims == [1]).map(int64s).collect();
    assert!(entries.contains(&vec![4]), "the activation's Expand shape says 4 channels: {entries:?}");
}

/// An LSTM unit whose cell candidate reads nothing (zero rows of W and R, zero biases) keeps its
/// cell at 0, so its output is 0 and it leaves; a non-zero initial cell state, or a GRU's
/// recurrent bias inside the reset gate (`linear_before_reset`), keeps it.
#[test]
fn recurrent_units_with_a_silent_candidate_leave_unless_a_state_or_bias_feeds_them() {
    use onnx_minimize::onnx::build::node;
    let (h, i) = (4usize, 3usize);
    for (op, case, expected) in
        [("LSTM", "silent", 3), ("LSTM", "initial cell", 4), ("GRU", "silent", 3), ("GRU", "reset bias", 4)]
    {
        let (gates, candidate) = if op == "LSTM" { (4, 3) } else { (3, 2) };
        // One sample: a constant initial state is [directions, batch, hidden].
        let mut g = G::new("x", &[Some(5), Some(1), Some(i)]);
        let mut w = g.rand(gates * h * i);
        let mut r = g.rand(gates * h * h);
        let mut b = g.rand(2 * gates * h);
        let row = candidate * h + 1; // unit 1's candidate row
        w[row * i..(row + 1) * i].iter_mut().for_each(|v| *v = 0.0);
        r[row * h..(row + 1) * h].iter_mut().for_each(|v| *v = 0.0);
        (b[row], b[gates * h + row]) = (0.0, if case == "reset bias" { 0.3 } else { 0.0 });
        g.init("w", &[1, gates * h, i], &w).init("r", &[1, gates * h, h], &r).init("b", &[1, 2 * gates * h], &b);
        let mut inputs = vec!["x", "w", "r", "b", "", ""];
        if case == "initial cell" {
            let mut c0 = vec![0.0; h];
            c0[1] = 0.5;
            g.init("c0", &[1, 1, h], &c0);
            inputs.push("c0");
        }
        let mut lstm = node(op, "rec", &inputs, &["y"], vec![attr_i("hidden_size", h as i64)]);
        if op == "GRU" {
            lstm.attribute.push(attr_i("linear_before_reset", 1));
        }
        g.g.node.push(lstm);
        g.g.initializer.push(int64_tensor("one", &[1]));
        g.weight("w2", h, 2, &[]).op("Squeeze", &["y", "one"], "s", vec![]).op("MatMul", &["s", "w2"], "out", vec![]);
        let (r, _) = minimize(&g.model("out", &[Some(5), Some(1), Some(2)]));
        let layer = r.removals.layers.iter().find(|l| l.op == op).unwrap();
        assert_eq!(layer.outputs_after, expected, "{op}: {case}");
    }
}

/// TorchScript stacks the final states of a two-layer bidirectional LSTM along the directions'
/// axis and takes the last (`h[-1]`): that axis is the heads axis of each part, so the stack keeps
/// the parts whole rather than read a head index against the wrong count.
#[test]
fn final_states_stacked_along_the_directions_stay_whole() {
    use onnx_minimize::onnx::build::{attr_string, node};
    let (h, i) = (3usize, 2usize);
    let mut g = G::new("x", &[Some(4), B, Some(i)]);
    for (layer, inputs) in [(0, i), (1, 2 * h)] {
        let (w, r) = (format!("w{layer}"), format!("r{layer}"));
        let (wv, rv) = (g.rand(2 * 4 * h * inputs), g.rand(2 * 4 * h * h));
        g.init(&w, &[2, 4 * h, inputs], &wv).init(&r, &[2, 4 * h, h], &rv);
    }
    let mut last = int64_tensor("last", &[-1]);
    last.dims.clear(); // a scalar index: the axis goes
    g.g.initializer.extend([int64_tensor("merge", &[0, 0, -1]), last]);
    let bi = || vec![attr_i("hidden_size", 3), attr_string("direction", "bidirectional")];
    g.g.node.push(node("LSTM", "l0", &["x", "w0", "r0"], &["y0", "h0"], bi()));
    g.op("Transpose", &["y0"], "t0", vec![crate::common::attr_ints("perm", &[0, 2, 1, 3])]);
    g.op("Reshape", &["t0", "merge"], "m0", vec![]);
    g.g.node.push(node("LSTM", "l1", &["m0", "w1", "r1"], &["", "h1"], bi()));
    g.op("Concat", &["h0", "h1"], "hs", vec![attr_i("axis", 0)]);
    g.g.node.push(node("Gather", "pick", &["hs", "last"], &["top"], vec![attr_i("axis", 0)]));
    g.weight("wo", h, 2, &[]).op("MatMul", &["top", "wo"], "out", vec![]);
    let (r, _) = minimize(&g.model("out", &[B, Some(2)]));
    assert!(r.removals.blocked.is_empty() || r.removals.blocked.iter().all(|b| !b.reasons.is_empty()));
}

/// `x[..., idx]` on an activation's channels: a pick of a constant channel folds into the next
/// layer, a channel nothing picks is not read, a channel picked twice stays once upstream, and
/// the indices are renumbered among the kept channels.
#[test]
fn a_gather_of_an_activation_s_channels_is_a_channel_map() {
    let mut g = G::new("x", &[B, Some(3), Some(6)]);
    let mut w = g.rand(6 * 8);
    (0..6).for_each(|r| [1, 2, 3].iter().for_each(|&c| w[r * 8 + c] = 0.0));
    let v = g.rand(5 * 4);
    g.init("w", &[6, 8], &w).init("v", &[5, 4], &v);
    g.g.initializer.push(int64_tensor("picks", &[7, 0, 0, 3, -3]));
    g.op("MatMul", &["x", "w"], "h", vec![]).op("Gather", &["h", "picks"], "p", vec![attr_i("axis", -1)]);
    g.op("Tanh", &["p"], "t", vec![]).op("MatMul", &["t", "v"], "y", vec![]);
    let (r, m) = minimize(&g.model("y", &[B, Some(3), Some(4)]));
    // Channels 7, 0 and 5 stay; the pick of channel 3 (zero) leaves.
    assert_eq!(widths(&r), vec![(6, 3), (4, 4)]);
    let picks = m.graph().initializer.iter().find(|t| t.name() == "picks").map(int64s);
    assert_eq!(picks, Some(vec![2, 0, 0, 1]));
}

/// `x[:, idx]` on a channels-first map: the picks are channels (the Gather's axis is the
/// channel axis), so a pick of a constant channel folds into the next convolution, a channel
/// nothing picks is not read, and the indices are renumbered among the kept channels. Along
/// another axis (the rows of the map) the same Gather picks positions: the channels pass.
#[test]
fn a_gather_along_a_channels_first_axis_picks_channels() {
    for (axis, picks, after) in [(1, vec![5, 0, 1, 1, 4], vec![1, 0]), (2, vec![3, 0], vec![3, 0])] {
        let mut g = G::new("x", &[B, Some(3), Some(4), Some(4)]);
        let mut w = g.rand(6 * 3);
        (0..3).for_each(|i| [1, 2, 3, 4].iter().for_each(|&o| w[o * 3 + i] = 0.0));
        g.init("w", &[6, 3, 1, 1], &w).init("b", &[6], &[0.1, 0.3, 0.2, 0.0, -1.0, 0.4]);
        g.g.initializer.push(int64_tensor("picks", &picks));
        g.op("Conv", &["x", "w", "b"], "c", vec![]).op("Relu", &["c"], "r", vec![]);
        g.op("Gather", &["r", "picks"], "p", vec![attr_i("axis", axis)]);
        let c_in = if axis == 1 { picks.len() } else { 6 };
        let v = g.rand(2 * c_in);
        g.init("v", &[2, c_in, 1, 1], &v).op("Conv", &["p", "v"], "y", vec![]);
        let rows = if axis == 1 { 4 } else { picks.len() };
        let (r, m) = minimize(&g.model("y", &[B, Some(2), Some(rows), Some(4)]));
        let kept = picks.iter().filter(|&&c| c == 0 || c == 5).count();
        // Channels 0 and 5 vary; 1 (relu(0.3)) and 4 (relu(-1)) are constant, 2 and 3 too.
        let expected = if axis == 1 { vec![(3, 2), (kept, 2)] } else { vec![(3, 2), (2, 2)] };
        assert_eq!(widths(&r), expected, "axis {axis}");
        let written = m.graph().initializer.iter().find(|t| t.name() == "picks").map(int64s);
        assert_eq!(written, Some(after), "axis {axis}");
    }
}

/// A table read by an embedding `Gather` and, transposed, by an output head (`MatMul`): the
/// head's rule sees the table through the `Transpose`, and the stream entry both sides lose
/// (column 2 of the table, zero) leaves once, the `Transpose` written back. Where the head's
/// readers also drop vocabulary entries (rows of the table that the `Gather` must keep), the
/// two slices differ: the table is then read whole, as exported, never stored twice.
#[test]
fn a_tied_table_is_stored_once_whatever_its_two_sides_keep() {
    use onnx_minimize::onnx::proto::tensor_proto::DataType;
    for dead_vocab in [false, true] {
        let (v, c) = (8, 6);
        let mut g = G::new("ids", &[B, Some(3)]);
        g.g.input[0] = crate::common::value_info("ids", DataType::Int64, &[B, Some(3)]);
        let mut table = g.rand(v * c);
        (0..v).for_each(|r| table[r * c + 2] = 0.0);
        g.init("table", &[v, c], &table);
        g.op("Gather", &["table", "ids"], "x", vec![attr_i("axis", 0)]);
        g.op("Relu", &["x"], "h", vec![]);
        g.op("Transpose", &["table"], "head", vec![crate::common::attr_ints("perm", &[1, 0])]);
        g.op("MatMul", &["h", "head"], "logits", vec![]);
        let out = if dead_vocab {
            g.weight("w2", v, 3, &[1, 4]).op("MatMul", &["logits", "w2"], "z", vec![]);
            "z"
        } else {
            "logits"
        };
        let m = g.model(out, &[B, Some(3), Some(if dead_vocab { 3 } else { v })]);
        let (r, small) = minimize(&m);
        let tables: Vec<&[i64]> =
            small.graph().initializer.iter().filter(|t| t.dims.contains(&(v as i64))).map(|t| &t.dims[..]).collect();
        let transposes = small.graph().node.iter().filter(|n| n.op_type() == "Transpose").count();
        assert_eq!(transposes, 1, "dead vocabulary: {dead_vocab}");
        if dead_vocab {
            assert_eq!(r.after.params, r.before.params, "read whole: nothing changes");
            // The two vocabulary entries the last layer does not read stay, and the report says
            // why (they were hidden by the forcing's own need).
            let logits = r.removals.blocked.iter().find(|b| b.values == ["logits"]).expect("reported");
            assert_eq!((logits.removable, logits.reasons[0].code.as_str()), (2, "product-of-activations"));
        } else {
            assert_eq!(tables, [&[v as i64, c as i64 - 1][..]], "one table, without column 2");
            assert_eq!(widths(&r), [(c - 1, v)], "the head loses the entry");
        }
    }
}

/// CvT's attention (both exporters): a class token concatenated before the patch tokens, a
/// LayerNorm, the tokens split (`Split`) or sliced (`Slice`) apart again, transposed and
/// reshaped into a map for a depthwise Conv. The split is along the tokens: laying it out as
/// channels (the split and the concatenation used to claim their axis for the channels when
/// nothing else was known) rewrote the Conv for "channels" that were tokens, and tract refused
/// the output. Now nothing there is taken for channels, and the output verifies.
#[test]
fn a_class_token_split_off_the_patches_is_not_a_channel_split() {
    for split in [true, false] {
        let c = 6;
        let mut g = G::new("x", &[Some(1), Some(4), Some(c)]);
        let cls = g.rand(c);
        g.init("cls", &[1, 1, c], &cls).init("g", &[c], &[1.5; 6]);
        let b = g.rand(c);
        g.init("b", &[c], &b);
        let mut dw = g.rand(c);
        dw[1] = 0.0;
        dw[3] = 0.0;
        g.init("dw", &[c, 1, 1, 1], &dw).init("db", &[c], &[0.5, 0.0, -0.3, 0.0, 0.2, 0.1]);
        g.weight("w", c, 3, &[]);
        for (name, v) in [("sizes", vec![1, 4]), ("grid", vec![-1, c as i64, 2, 2]), ("flat", vec![1, c as i64, 4])] {
            g.g.initializer.push(int64_tensor(name, &v));
        }
        for (name, v) in [("start", 1), ("end", 5), ("axis", 1)] {
            g.g.initializer.push(int64_tensor(name, &[v]));
        }
        g.op("Concat", &["cls", "x"], "cat", vec![attr_i("axis", 1)]);
        g.op("LayerNormalization", &["cat", "g", "b"], "ln", vec![attr_i("axis", -1)]);
        if split {
            let node =
                crate::common::node("Split", "split", &["ln", "sizes"], &["cls_out", "t"], vec![attr_i("axis", 1)]);
            g.g.node.push(node);
        } else {
            g.op("Slice", &["ln", "start", "end", "axis"], "t", vec![]);
        }
        let perm = || vec![crate::common::attr_ints("perm", &[0, 2, 1])];
        g.op("Transpose", &["t"], "tt", perm()).op("Reshape", &["tt", "grid"], "map", vec![]);
        let conv = vec![attr_i("group", c as i64), crate::common::attr_ints("kernel_shape", &[1, 1])];
        g.op("Conv", &["map", "dw", "db"], "y", conv).op("Reshape", &["y", "flat"], "yf", vec![]);
        g.op("Transpose", &["yf"], "yt", perm()).op("MatMul", &["yt", "w"], "out", vec![]);
        let (r, _) = minimize(&g.model("out", &[Some(1), Some(4), Some(3)]));
        assert!(r.after.params <= r.before.params, "split: {split}");
    }
}
