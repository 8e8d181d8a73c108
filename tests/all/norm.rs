//! LayerNorm residual streams: constant stream channels leave through CompensatedLayerNorm.

use crate::common::{attr_i, write, G};
use onnx_minimize::ClnForm;
use onnx_minimize::{minimize_file, Options};
use proptest::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

/// A pre-LN residual stack on `[batch, tokens, width]`: `x -> Linear -> (s + MLP(LN(s)))* ->
/// LN -> Linear`. Stream channels in `constant` are written only as constants (zero weight
/// columns, non-zero biases) and read by LayerNorms whose scale is zero there when `gamma_zero`.
fn pre_ln_stack(
    seed: u64,
    width: usize,
    blocks: usize,
    constant: &[usize],
    gamma_zero: bool,
) -> onnx_minimize::onnx::proto::ModelProto {
    stack(seed, width, blocks, constant, gamma_zero, Kind::LayerNorm)
}

/// How the stack writes its norms.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    LayerNorm,
    /// RMSNormalization, opset 23.
    RmsNorm,
    /// ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div, then Mul by the scale and Add of the bias.
    LayerNormOps,
    /// Pow/ReduceMean/Add/Sqrt/Div, then Mul by the scale.
    RmsNormOps,
    /// The same with `x * Reciprocal(sqrt)` (the dynamo exporter's rsqrt).
    RmsNormReciprocal,
    /// The same with `Div(1, sqrt) * x` (TorchScript's), the product the other way round.
    RmsNormInverse,
    /// Keras' LayerNormalization as tf2onnx writes it: `s = gamma / sqrt(var + eps)`,
    /// `y = x * s + (beta - mean * s)`.
    KerasLayerNorm,
}

/// The same stack with its norms written as `kind` says.
fn stack(
    seed: u64,
    width: usize,
    blocks: usize,
    constant: &[usize],
    gamma_zero: bool,
    kind: Kind,
) -> onnx_minimize::onnx::proto::ModelProto {
    let mut rng = StdRng::seed_from_u64(seed);
    let (inputs, hidden, outputs) = (3, 6, 2);
    let mut g = G::new("x", &[None, Some(4), Some(inputs)]);
    let linear = |g: &mut G, rng: &mut StdRng, name: &str, x: &str, n_in: usize, n_out: usize, zero_cols: &[usize]| {
        let mut w: Vec<f32> = (0..n_in * n_out).map(|_| rng.random_range(-1.0..1.0)).collect();
        for c in 0..n_in {
            for &j in zero_cols {
                w[c * n_out + j] = 0.0;
            }
        }
        let b: Vec<f32> = (0..n_out).map(|_| rng.random_range(-1.0..1.0)).collect();
        g.init(&format!("{name}_w"), &[n_in, n_out], &w).init(&format!("{name}_b"), &[n_out], &b);
        g.op("MatMul", &[x, &format!("{name}_w")], &format!("{name}_mm"), vec![]);
        g.op("Add", &[&format!("{name}_mm"), &format!("{name}_b")], name, vec![]);
    };
    let layernorm = |g: &mut G, rng: &mut StdRng, name: &str, x: &str| {
        let gamma: Vec<f32> = (0..width)
            .map(|c| if gamma_zero && constant.contains(&c) { 0.0 } else { rng.random_range(0.5..1.5) })
            .collect();
        let beta: Vec<f32> = (0..width).map(|_| rng.random_range(-0.5..0.5)).collect();
        g.init(&format!("{name}_g"), &[width], &gamma).init(&format!("{name}_b"), &[width], &beta);
        let (gn, bn) = (format!("{name}_g"), format!("{name}_b"));
        let local = |s: &str| format!("{name}_{s}");
        match kind {
            Kind::LayerNorm => g.op("LayerNormalization", &[x, &gn, &bn], name, vec![attr_i("axis", -1)]),
            Kind::RmsNorm => g.op("RMSNormalization", &[x, &gn], name, vec![attr_i("axis", -1)]),
            Kind::KerasLayerNorm => {
                g.init(&local("eps"), &[], &[1e-5]);
                let axes = crate::common::attr_ints("axes", &[-1]);
                g.op("ReduceMean", &[x], &local("mean"), vec![axes.clone()]);
                g.op("Neg", &[&local("mean")], &local("neg"), vec![]);
                g.op("Sub", &[x, &local("mean")], &local("centred"), vec![]);
                g.op("Mul", &[&local("centred"), &local("centred")], &local("sq"), vec![]);
                g.op("ReduceMean", &[&local("sq")], &local("var"), vec![axes]);
                g.op("Add", &[&local("var"), &local("eps")], &local("var_eps"), vec![]);
                g.op("Sqrt", &[&local("var_eps")], &local("dev"), vec![]);
                g.op("Reciprocal", &[&local("dev")], &local("inv"), vec![]);
                g.op("Mul", &[&local("inv"), &gn], &local("s"), vec![]);
                g.op("Mul", &[x, &local("s")], &local("xs"), vec![]);
                g.op("Mul", &[&local("neg"), &local("s")], &local("ms"), vec![]);
                g.op("Add", &[&local("ms"), &bn], &local("shift"), vec![]);
                g.op("Add", &[&local("xs"), &local("shift")], name, vec![])
            }
            Kind::LayerNormOps | Kind::RmsNormOps | Kind::RmsNormReciprocal | Kind::RmsNormInverse => {
                g.init(&local("two"), &[], &[2.0]).init(&local("eps"), &[], &[1e-5]);
                let axes = crate::common::attr_ints("axes", &[-1]);
                let centred = if kind == Kind::LayerNormOps {
                    g.op("ReduceMean", &[x], &local("mean"), vec![axes.clone()]);
                    g.op("Sub", &[x, &local("mean")], &local("centred"), vec![]);
                    local("centred")
                } else {
                    x.to_string()
                };
                g.op("Pow", &[&centred, &local("two")], &local("sq"), vec![]);
                g.op("ReduceMean", &[&local("sq")], &local("var"), vec![axes]);
                g.op("Add", &[&local("var"), &local("eps")], &local("var_eps"), vec![]);
                g.op("Sqrt", &[&local("var_eps")], &local("dev"), vec![]);
                match kind {
                    Kind::RmsNormReciprocal => {
                        g.op("Reciprocal", &[&local("dev")], &local("inv"), vec![]);
                        g.op("Mul", &[&centred, &local("inv")], &local("normalized"), vec![])
                    }
                    Kind::RmsNormInverse => {
                        g.init(&local("one"), &[], &[1.0]);
                        g.op("Div", &[&local("one"), &local("dev")], &local("inv"), vec![]);
                        g.op("Mul", &[&local("inv"), &centred], &local("normalized"), vec![])
                    }
                    _ => g.op("Div", &[&centred, &local("dev")], &local("normalized"), vec![]),
                };
                let scaled = if kind == Kind::LayerNormOps { local("scaled") } else { name.to_string() };
                g.op("Mul", &[&local("normalized"), &gn], &scaled, vec![]);
                if kind == Kind::LayerNormOps {
                    g.op("Add", &[&scaled, &bn], name, vec![])
                } else {
                    g
                }
            }
        };
    };
    linear(&mut g, &mut rng, "embed", "x", inputs, width, constant);
    let mut stream = "embed".to_string();
    for b in 0..blocks {
        layernorm(&mut g, &mut rng, &format!("ln{b}"), &stream);
        linear(&mut g, &mut rng, &format!("up{b}"), &format!("ln{b}"), width, hidden, &[]);
        g.op("Gelu", &[&format!("up{b}")], &format!("act{b}"), vec![]);
        linear(&mut g, &mut rng, &format!("down{b}"), &format!("act{b}"), hidden, width, constant);
        g.op("Add", &[&stream, &format!("down{b}")], &format!("s{b}"), vec![]);
        stream = format!("s{b}");
    }
    layernorm(&mut g, &mut rng, "final_ln", &stream);
    linear(&mut g, &mut rng, "head", "final_ln", width, outputs, &[]);
    let mut m = g.model("head", &[None, Some(4), Some(outputs)]);
    // Opset 17 keeps ReduceMean's axes an attribute; RMSNormalization needs 23.
    m.opset_import[0].version = Some(match kind {
        Kind::RmsNorm => 23,
        Kind::LayerNorm => 20,
        _ => 17,
    });
    m
}

fn minimize_as(m: &onnx_minimize::onnx::proto::ModelProto, form: ClnForm) -> onnx_minimize::report::Report {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "in.onnx", m);
    let opts = Options { compensated_layernorm: form, ..Default::default() };
    minimize_file(&input, Some(&dir.path().join("out.onnx")), &opts, &|_| {}).unwrap_or_else(|e| panic!("{e}"))
}

/// Every layer reading the stream reads `to` of its `from` channels, and the result verified.
fn assert_stream_shrinks(r: onnx_minimize::report::Report, from: usize, to: usize, what: &str) {
    let readers = r.removals.layers.iter().filter(|l| l.inputs_before == from);
    assert!(readers.clone().all(|l| l.inputs_after == to), "{what}: {:?}", r.removals.layers);
    assert!(r.verification.unwrap().outputs[0].max_relative_deviation < 1e-5, "{what}");
}

fn minimize(m: &onnx_minimize::onnx::proto::ModelProto) -> onnx_minimize::report::Report {
    minimize_as(m, ClnForm::Ops)
}

#[test]
fn constant_stream_channels_leave_through_compensated_layernorm() {
    let r = minimize(&pre_ln_stack(7, 8, 2, &[1, 4, 6], true));
    let embed = r.removals.layers.iter().find(|l| l.node.contains("MatMul") && l.inputs_before == 3).unwrap();
    assert_eq!(embed.outputs_after, 5, "{:?}", r.removals.layers);
    assert!(
        r.removals.layers.iter().filter(|l| l.inputs_before == 8).all(|l| l.inputs_after == 5),
        "{:?}",
        r.removals.layers
    );
    assert!(r.verification.unwrap().outputs[0].max_relative_deviation < 1e-5);
}

#[test]
fn both_compensated_layernorm_forms_are_exact() {
    for form in [ClnForm::Ops, ClnForm::Concat] {
        let r = minimize_as(&pre_ln_stack(11, 8, 3, &[0, 3, 7], true), form);
        assert_stream_shrinks(r, 8, 5, &format!("{form:?}"));
    }
}

#[test]
fn rmsnorm_streams_shrink_in_both_forms() {
    for form in [ClnForm::Ops, ClnForm::Concat] {
        let r = minimize_as(&stack(5, 8, 2, &[2, 3, 5], true, Kind::RmsNorm), form);
        assert_stream_shrinks(r, 8, 5, &format!("{form:?}"));
    }
}

#[test]
fn decomposed_norms_are_recognised_and_compensated() {
    for kind in
        [Kind::LayerNormOps, Kind::RmsNormOps, Kind::RmsNormReciprocal, Kind::RmsNormInverse, Kind::KerasLayerNorm]
    {
        let r = minimize(&stack(9, 8, 2, &[0, 6, 7], true, kind));
        assert_stream_shrinks(r, 8, 5, &format!("{kind:?}"));
    }
}

#[test]
fn a_constant_channel_whose_normalized_value_is_used_stays() {
    // Constant in the stream, but the LayerNorms scale it: its normalized output varies.
    let r = minimize(&pre_ln_stack(3, 8, 2, &[2, 5], false));
    assert!(
        r.removals.layers.iter().all(|l| l.inputs_after == l.inputs_before && l.outputs_after == l.outputs_before),
        "{:?}",
        r.removals.layers
    );
}

/// Zeroes entry `c` of every norm scale (`ln*_g`) of a [`stack`].
fn zero_scale(m: &mut onnx_minimize::onnx::proto::ModelProto, c: usize) {
    let graph = m.graph.as_mut().unwrap();
    for t in graph.initializer.iter_mut().filter(|t| t.name().starts_with("ln") && t.name().ends_with("_g")) {
        let mut v: Vec<f32> = t.raw_data().chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        v[c] = 0.0;
        t.raw_data = Some(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>().into());
    }
}

/// A norm whose scale is zero on a channel writes the constant beta there whatever its input
/// holds: its readers fold it into their bias and drop the column, while the input channel (a
/// graph input here, live) stays for the statistics.
#[test]
fn outputs_a_norm_silences_leave_its_readers_while_their_inputs_stay() {
    let mut g = G::new("x", &[None, Some(5), Some(6)]);
    let gamma = [1.0, 0.0, 0.5, -1.0, 0.0, 2.0];
    let beta = [0.1, 0.7, -0.2, 0.3, -0.5, 0.0];
    g.init("gamma", &[6], &gamma).init("beta", &[6], &beta).weight("w", 6, 3, &[]).init("b", &[3], &[0.1, 0.2, 0.3]);
    g.op("LayerNormalization", &["x", "gamma", "beta"], "n", vec![attr_i("axis", -1)]);
    g.op("MatMul", &["n", "w"], "m", vec![]).op("Add", &["m", "b"], "y", vec![]);
    let r = minimize(&g.model("y", &[None, Some(5), Some(3)]));
    assert_eq!(r.removals.layers.iter().map(|l| (l.inputs_after, l.outputs_after)).collect::<Vec<_>>(), [(4, 3)]);
    assert!(r.verification.unwrap().outputs[0].max_relative_deviation < 1e-5);
    // With constant stream channels besides (compensated), in both forms.
    for form in [ClnForm::Ops, ClnForm::Concat] {
        let mut m = stack(13, 8, 2, &[1, 6], true, Kind::LayerNorm);
        zero_scale(&mut m, 3);
        let r = minimize_as(&m, form);
        let readers: Vec<_> =
            r.removals.layers.iter().filter(|l| l.inputs_before == 8).map(|l| l.inputs_after).collect();
        assert!(readers.contains(&5), "{form:?}: {:?}", r.removals.layers);
        assert!(r.verification.unwrap().outputs[0].max_relative_deviation < 1e-5, "{form:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn pre_ln_stacks_compute_the_same(seed in any::<u64>(), blocks in 1usize..4, constant in proptest::collection::btree_set(0usize..6, 0..6), gamma_zero in any::<bool>(), kind in 0usize..7, silenced in proptest::option::of(0usize..6)) {
        let constant: Vec<usize> = constant.into_iter().collect();
        let kind = [Kind::LayerNorm, Kind::RmsNorm, Kind::LayerNormOps, Kind::RmsNormOps, Kind::RmsNormReciprocal, Kind::RmsNormInverse, Kind::KerasLayerNorm][kind];
        let mut m = stack(seed, 6, blocks, &constant, gamma_zero, kind);
        // A live stream channel every norm silences (scale 0): its readers may drop it, the
        // stream keeps it.
        if let Some(c) = silenced.filter(|c| !constant.contains(c)) {
            zero_scale(&mut m, c);
        }
        let r = minimize(&m);
        let expected = if gamma_zero && constant.len() < 6 { 6 - constant.len() } else if gamma_zero { 1 } else { 6 };
        let embed = r.removals.layers.iter().find(|l| l.inputs_before == 3).unwrap();
        prop_assert_eq!(embed.outputs_after, expected);
    }
}

/// A float16 stack: weights, folded biases and compensation constants stay float16 where the
/// model has them, and the statistics are computed in float32 as LayerNormalization does.
#[test]
fn float16_streams_shrink_and_stay_float16() {
    use onnx_minimize::onnx::proto::{tensor_proto::DataType, type_proto};
    use onnx_minimize::onnx::tensor::{encode, with_data, FloatType, Values};
    let mut m = pre_ln_stack(13, 8, 2, &[1, 2, 6], true);
    let g = m.graph.as_mut().unwrap();
    for t in g.initializer.iter_mut() {
        let v = Values::of(t).unwrap();
        let vals: Vec<f64> = (0..v.len()).map(|i| v.get(i)).collect();
        *t = with_data(t, t.dims.clone(), FloatType::F16, encode(FloatType::F16, &vals));
    }
    for vi in g.input.iter_mut().chain(g.output.iter_mut()) {
        if let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_mut().and_then(|t| t.value.as_mut()) {
            t.elem_type = Some(DataType::Float16 as i32);
        }
    }
    let r = minimize(&m);
    assert!(
        r.removals.layers.iter().filter(|l| l.inputs_before == 8).all(|l| l.inputs_after == 5),
        "{:?}",
        r.removals.layers
    );
    let v = r.verification.unwrap();
    assert!(v.outputs[0].max_relative_deviation < 1e-2, "{v:?}");
}

/// A stream minimized once in the `concat` form, one channel removed (`Expand` of a one-entry
/// constant to `[.., 1]`): the compensated norms still tie what they read to what they write, so
/// the stream is one space from the embedding's outputs to every reader's inputs, and the next
/// pruning and minimizing pass can shrink it again.
#[test]
fn a_stream_behind_a_concatenated_compensated_layernorm_is_one_space() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "in.onnx", &pre_ln_stack(11, 8, 2, &[3], true));
    let out = dir.path().join("out.onnx");
    let opts = Options { compensated_layernorm: ClnForm::Concat, ..Default::default() };
    let r = minimize_file(&input, Some(&out), &opts, &|_| {}).unwrap();
    assert_stream_shrinks(r, 8, 7, "concat form");
    let m = onnx_minimize::Model::load(&out).unwrap();
    let spaces = onnx_minimize::sparsify::channel_spaces(&m, true).unwrap();
    let of = |tensor: &str, axis: usize| {
        let mut s = spaces.iter().find(|s| s.tensor == tensor && s.axis == axis).unwrap().spaces.clone();
        s.sort_unstable();
        s
    };
    // The embedding's outputs (axis 1 of `[3, 7]`) are the inputs of the first block and the head.
    assert_eq!(of("embed_w", 1), of("up0_w", 0));
    assert_eq!(of("embed_w", 1), of("head_w", 0));
}
