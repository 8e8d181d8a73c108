//! Inf and NaN in weights: `0 * Inf` is NaN, so whatever a non-finite constant reaches keeps its
//! channels, and minimization stays exact with NaNs in the outputs (tract checks NaN positions).

use crate::common::{mlp, write, Form, Layer};
use onnx_minimize::onnx::proto::ModelProto;
use onnx_minimize::report::Report;
use onnx_minimize::{minimize_file, Options};

const INF: f32 = f32::INFINITY;

fn layer(n_in: usize, n_out: usize, w: Vec<f32>, bias: Vec<f32>) -> Layer {
    Layer { n_in, n_out, w, bias: Some(bias), form: Form::MatMulAdd, act: None }
}

/// Minimized and verified whole by tract (a NaN where the original has none fails).
fn minimize(m: &ModelProto) -> Report {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "in.onnx", m);
    minimize_file(&input, Some(&dir.path().join("out.onnx")), &Options::default(), &|_| {})
        .unwrap_or_else(|e| panic!("{e}"))
}

fn widths(r: &Report) -> Vec<(usize, usize)> {
    r.removals.layers.iter().map(|l| (l.inputs_after, l.outputs_after)).collect()
}

#[test]
fn a_unit_with_an_infinite_weight_stays_though_only_zeros_read_it() {
    // Unit 1 is +-Inf for every input; the next layer reads it with zeros: 0 * Inf makes every
    // output NaN, which the unit's removal would turn finite.
    let first = layer(4, 3, vec![0.5, -0.3, 0.2, 0.1, INF, 0.0, 0.0, 0.2, 0.3, 0.3, -0.2, 0.4], vec![0.1; 3]);
    let second = layer(3, 2, vec![0.2, 0.0, 0.3, 0.1, 0.0, -0.4], vec![0.0; 2]);
    let r = minimize(&mlp(&[first, second]));
    assert!(widths(&r).iter().all(|&(i, o)| i >= 3 || o >= 3), "{}", r.to_text());
    let said: Vec<_> = r.removals.opaque.iter().map(|o| (o.code.as_str(), o.node.as_deref())).collect();
    assert_eq!(said, vec![("non-finite", Some("fc0"))]);
    assert!(r.to_text().contains("node 'fc0' (MatMul): it reads a constant holding Inf or NaN"), "{}", r.to_text());
}

#[test]
fn layers_before_an_infinite_weight_still_shrink_and_what_it_touches_keeps_its_channels() {
    // Layer 0: unit 2 has a zero row and bias (a constant zero), unit 3 nothing reads: both leave
    // into layer 1, which is finite.
    let w0 = vec![0.4, -0.2, 0.1, 0.3, -0.5, 0.2, 0.0, 0.0, 0.0, 0.7, 0.1, -0.3];
    let first = layer(3, 4, w0, vec![0.1, -0.1, 0.0, 0.2]);
    let w1 = vec![0.3, -0.6, 0.1, 0.0, 0.2, 0.1, 0.4, 0.0, 0.5, 0.2, -0.1, 0.0];
    let second = layer(4, 3, w1, vec![0.1, 0.2, 0.3]);
    // Layer 2 holds an Inf: what it reads keeps every channel (its unit 1, a zero row, would
    // otherwise be the constant bias: the NaN reaches it), and so does what it writes.
    let w2 = vec![0.3, -0.6, INF, 0.0, 0.0, 0.0, 0.5, 0.2, 0.0];
    let third = layer(3, 3, w2, vec![0.1, 0.2, 0.3]);
    let fourth = layer(3, 2, vec![0.2, 0.0, 0.3, 0.1, 0.0, -0.4], vec![0.0; 2]);
    let r = minimize(&mlp(&[first, second, third, fourth]));
    assert_eq!(widths(&r), vec![(3, 2), (2, 3), (3, 3), (3, 2)], "{}", r.to_text());
}

#[test]
fn a_constant_nan_unit_is_kept_whole() {
    let first = layer(2, 3, vec![0.5, -0.5, 0.0, 0.0, 0.25, 0.75], vec![0.0, f32::NAN, 0.1]);
    let second = layer(3, 2, vec![0.2, 0.0, 0.3, 0.1, 0.0, -0.4], vec![0.0; 2]);
    let r = minimize(&mlp(&[first, second]));
    assert!(r.removals.layers.iter().all(|l| l.removed_constant == 0 && l.removed_dead == 0), "{}", r.to_text());
}
