//! Models from other converters: scikit-learn through skl2onnx and tf2onnx's idioms built by hand
//! (fixtures/generate_frameworks.py: NHWC transposes, an unfolded BatchNormalization,
//! Constant-node weights, a channels-last flatten into MatMul + Add), and TensorFlow functions
//! converted by tf2onnx itself (fixtures/generate_tf2onnx.py: an MLP, an NHWC CNN with a folded
//! BatchNorm, a residual stream under Keras' LayerNormalization), and PaddlePaddle models exported
//! by paddle2onnx (fixtures/generate_paddle2onnx.py: the same three, with Conv + Add biases, an
//! unfolded BatchNormalization, a Shape-computed flatten, LayerNormalization): exact, and as small
//! as the rules allow.

use crate::common::fixture;
use onnx_minimize::sparsify::{self, Amount, Criterion, PruneOptions, Scope};
use onnx_minimize::{minimize_file, Options};

#[test]
fn exports_from_other_converters_shrink_and_verify() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("frameworks/expected.json")).unwrap()).unwrap();
    for (file, e) in expected.as_object().unwrap() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.onnx");
        let r = minimize_file(&fixture(&format!("frameworks/{file}")), Some(&out), &Options::default(), &|_| {})
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(r.verification.is_some() && r.after.params < r.before.params, "{file}");
        let hidden: Vec<usize> = e["hidden"].as_array().unwrap().iter().map(|h| h.as_u64().unwrap() as usize).collect();
        let layers = &r.removals.layers;
        let widths: Vec<usize> = layers[..layers.len() - 1].iter().map(|l| l.outputs_after).collect();
        assert_eq!(widths, hidden, "{file}: {layers:?}");

        // The cycle's own pruning on top: exact, strictly smaller than the export, never larger
        // than minimizing the export alone.
        let pruned = dir.path().join("pruned.onnx");
        let opts = PruneOptions {
            amount: Amount::Sparsity(0.6),
            scope: Scope::Global,
            criterion: Criterion::UnitCoupled,
            coupling: 1.0,
            include_output_layer: false,
        };
        sparsify::rewrite_file(&fixture(&format!("frameworks/{file}")), &pruned, |m| sparsify::prune(m, &opts))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let again = minimize_file(&pruned, Some(&out), &Options::default(), &|_| {})
            .unwrap_or_else(|e| panic!("{file} pruned: {e}"));
        assert!(again.after.params <= r.after.params && again.after.params < r.before.params, "{file}");
    }
}

/// An activation (or a quantizer) between an NHWC flatten and the dense layer reading it: its
/// output's block is the dense layer's to fix, as the flatten's is. It used to default to 1 and
/// clash, and the layer kept every channel.
#[test]
fn an_activation_after_a_channels_last_flatten_keeps_the_flatten_s_layout() {
    use crate::common::{read, write};
    use onnx_minimize::onnx::build::node;
    let mut m = read(&fixture("frameworks/tf_style_nhwc.onnx"));
    let g = m.graph.as_mut().unwrap();
    let at = g.node.iter().position(|n| n.op_type() == "MatMul" && n.input.iter().any(|i| i == "flat")).unwrap();
    g.node[at].input.iter_mut().filter(|i| *i == "flat").for_each(|i| *i = "flat_relu".into());
    g.node.insert(at, node("Relu", "relu_after_flatten", &["flat"], &["flat_relu"], vec![]));
    let dir = tempfile::tempdir().unwrap();
    let with_relu = write(dir.path(), "relu.onnx", &m);
    let out = dir.path().join("out.onnx");
    let plain = minimize_file(&fixture("frameworks/tf_style_nhwc.onnx"), None, &Options::default(), &|_| {}).unwrap();
    let r = minimize_file(&with_relu, Some(&out), &Options::default(), &|_| {}).unwrap();
    assert!(r.verification.is_some());
    assert_eq!(r.after.params, plain.after.params, "{:?}", r.removals.blocked);
}
