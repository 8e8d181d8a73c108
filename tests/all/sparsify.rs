//! Prune and release: exact sparsity, untouched biases and output layer, only zeros released,
//! documented noise statistics, reproducible seeds.

use crate::common::{fixture, mlp, write, Form, Layer};
use onnx_minimize::onnx::tensor::Values;
use onnx_minimize::sparsify::{prune, release, Amount, Calibration, Criterion, PruneOptions, Scope};
use onnx_minimize::Model;
use proptest::prelude::*;

fn tensor(m: &Model, name: &str) -> Vec<f64> {
    let t = m.graph().initializer.iter().find(|t| t.name() == name).unwrap();
    let v = Values::of(t).unwrap();
    (0..v.len()).map(|i| v.get(i)).collect()
}

fn zeros(v: &[f64]) -> usize {
    v.iter().filter(|x| **x == 0.0).count()
}

/// Stronger coupling gathers the same number of zeros into more whole rows and columns.
#[test]
fn stronger_coupling_prunes_more_whole_units() {
    let dead = |coupling| {
        let mut m = Model::load(&fixture("lenet300_pruned_ts.onnx")).unwrap();
        let opts = PruneOptions {
            amount: Amount::Sparsity(0.98),
            scope: Scope::Global,
            criterion: Criterion::UnitCoupled,
            coupling,
            include_output_layer: false,
        };
        prune(&mut m, &opts).unwrap();
        let w = tensor(&m, "fc1.weight");
        let rows = (0..300).filter(|r| w[r * 784..(r + 1) * 784].iter().all(|x| *x == 0.0)).count();
        let cols = (0..784).filter(|c| (0..300).all(|r| w[r * 784 + c] == 0.0)).count();
        rows + cols
    };
    let (half, two) = (dead(0.5), dead(2.0));
    assert!(two > half, "coupling 2 kills {two} rows and columns of fc1, coupling 0.5 {half}");
}

/// One step of iterative pruning: half of what survives goes, whatever was zero already.
#[test]
fn pruning_a_share_of_the_remaining_weights() {
    for scope in [Scope::Global, Scope::PerTensor] {
        let mut m = Model::load(&fixture("lenet300_pruned_ts.onnx")).unwrap();
        let opts = PruneOptions {
            amount: Amount::Remaining(0.5),
            scope,
            criterion: Criterion::Magnitude,
            coupling: 0.5,
            include_output_layer: false,
        };
        let r = prune(&mut m, &opts).unwrap();
        let expect = |n: usize, z: usize| z + ((n - z) as f64 * 0.5).round() as usize;
        if scope == Scope::PerTensor {
            for t in &r.tensors {
                assert_eq!(t.zeros_after, expect(t.elements, t.zeros_before), "{}", t.tensor);
            }
        }
        let (n, z0, z1) =
            r.tensors.iter().fold((0, 0, 0), |a, t| (a.0 + t.elements, a.1 + t.zeros_before, a.2 + t.zeros_after));
        assert!(z1.abs_diff(expect(n, z0)) <= r.tensors.len(), "{scope:?}: {z1} zeros, {} expected", expect(n, z0));
    }
}

#[test]
fn pruning_reaches_the_sparsity_exactly_and_leaves_biases_and_the_output_layer() {
    for (scope, criterion) in [(Scope::Global, Criterion::Magnitude), (Scope::PerTensor, Criterion::UnitCoupled)] {
        let mut m = Model::load(&fixture("lenet300_pruned_ts.onnx")).unwrap();
        let (fc3, b1) = (tensor(&m, "fc3.weight"), tensor(&m, "fc1.bias"));
        let r = prune(
            &mut m,
            &PruneOptions {
                amount: Amount::Sparsity(0.99),
                scope,
                criterion,
                coupling: 0.5,
                include_output_layer: false,
            },
        )
        .unwrap();
        let total: usize = r.tensors.iter().map(|t| t.elements).sum();
        let after: usize = r.tensors.iter().map(|t| t.zeros_after).sum();
        assert_eq!(after, (total as f64 * 0.99).round() as usize, "{scope:?}");
        if scope == Scope::PerTensor {
            for t in &r.tensors {
                assert_eq!(t.zeros_after, (t.elements as f64 * 0.99).round() as usize, "{}", t.tensor);
            }
        }
        assert_eq!(r.tensors.len(), 2, "fc1 and fc2 only");
        assert_eq!(tensor(&m, "fc3.weight"), fc3, "the output layer is excluded");
        assert_eq!(tensor(&m, "fc1.bias"), b1, "biases are not pruned");
    }
}

#[test]
fn release_changes_only_zeros_with_documented_noise_and_reproducible_seeds() {
    let base = Model::load(&fixture("lenet300_pruned_ts.onnx")).unwrap();
    let w = tensor(&base, "fc1.weight");
    let live: Vec<f64> = w.iter().copied().filter(|x| *x != 0.0).collect();
    let smallest = live.iter().map(|x| x.abs()).fold(f64::INFINITY, f64::min);
    let mean = live.iter().sum::<f64>() / live.len() as f64;
    let std = (live.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / live.len() as f64).sqrt();
    let released = |calibration, seed| {
        let mut m = Model::load(&fixture("lenet300_pruned_ts.onnx")).unwrap();
        release(&mut m, calibration, false, seed).unwrap();
        tensor(&m, "fc1.weight")
    };
    let a = released(Calibration::Threshold(1.5), 7);
    assert_eq!(a, released(Calibration::Threshold(1.5), 7), "same seed, same noise");
    assert_ne!(a, released(Calibration::Threshold(1.5), 8));
    assert_eq!(zeros(&a), 0);
    let mut noise = vec![];
    for (old, new) in w.iter().zip(&a) {
        if *old != 0.0 {
            assert_eq!(old, new, "a surviving weight changed");
        } else {
            noise.push(*new);
        }
    }
    // threshold:1.5: magnitudes in [1, 1.5] x the smallest surviving magnitude (float32 rounding).
    assert!(noise.iter().all(|x| x.abs() >= smallest * 0.999 && x.abs() <= smallest * 1.5 * 1.001));
    // std:0.1: normal with a tenth of the surviving weights' deviation.
    let b = released(Calibration::Std(0.1), 7);
    let noise: Vec<f64> = w.iter().zip(&b).filter(|(o, _)| **o == 0.0).map(|(_, n)| *n).collect();
    let m = noise.iter().sum::<f64>() / noise.len() as f64;
    let s = (noise.iter().map(|x| (x - m).powi(2)).sum::<f64>() / noise.len() as f64).sqrt();
    assert!(m.abs() < 0.01 * std && (s / (0.1 * std) - 1.0).abs() < 0.02, "mean {m}, std {s} vs {}", 0.1 * std);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_sparsity_is_reached_exactly(seed in any::<u64>(), sparsity in 0.0f64..1.0, criterion in 0usize..5, global in any::<bool>()) {
        let layers: Vec<Layer> = [(5usize, 7usize), (7, 6), (6, 2)].iter().enumerate().map(|(i, &(n_in, n_out))| Layer {
            n_in, n_out,
            w: (0..n_in * n_out).map(|k| (((seed >> (k % 48)) as usize + k * 7 + i) % 13) as f32 - 6.0).collect(),
            bias: Some(vec![0.5; n_out]),
            form: Form::Gemm { trans_b: i % 2 == 0, alpha: 1.0, beta: 1.0 },
            act: Some("Relu"),
        }).collect();
        let dir = tempfile::tempdir().unwrap();
        let mut m = Model::load(&write(dir.path(), "m.onnx", &mlp(&layers))).unwrap();
        let opts = PruneOptions {
            amount: Amount::Sparsity(sparsity),
            scope: if global { Scope::Global } else { Scope::PerTensor },
            criterion: [
                Criterion::Magnitude,
                Criterion::UnitCoupled,
                Criterion::SpaceCoupled,
                Criterion::SpaceStructured,
                Criterion::SpaceUniform,
            ][criterion],
            coupling: if global { 0.5 } else { 2.0 },
            include_output_layer: false,
        };
        let r = prune(&mut m, &opts).unwrap();
        let expected = |n: usize| ((n as f64) * sparsity).round() as usize;
        if global {
            let total: usize = r.tensors.iter().map(|t| t.elements).sum();
            prop_assert!(r.tensors.iter().map(|t| t.zeros_after).sum::<usize>() == expected(total).max(r.tensors.iter().map(|t| t.zeros_before).sum()));
        } else {
            for t in &r.tensors {
                prop_assert_eq!(t.zeros_after, expected(t.elements).max(t.zeros_before));
            }
        }
        // A unit whose row and reader's column space-coupled pruning emptied has its bias zeroed
        // too: it is the constant 0, and minimization removes at least those units, exactly.
        // (A layer keeps one unit at least.)
        let spaces = matches!(opts.criterion, Criterion::SpaceCoupled | Criterion::SpaceStructured | Criterion::SpaceUniform);
        prop_assert!(r.silenced.is_empty() || spaces);
        let pruned = dir.path().join("pruned.onnx");
        m.write(&pruned, false).unwrap();
        let small = dir.path().join("small.onnx");
        let report = onnx_minimize::minimize_file(&pruned, Some(&small), &Default::default(), &|_| {}).unwrap();
        for t in &r.silenced {
            let layer = report.removals.layers.iter().find(|l| l.node == t.tensor.replace('b', "fc")).unwrap();
            let left = (layer.outputs_before - (t.zeros_after - t.zeros_before)).max(1);
            prop_assert!(layer.outputs_after <= left, "{} keeps {} units, {left} not silenced", layer.node, layer.outputs_after);
        }
    }
}

/// The cycle minimizes a model that `--gather-inputs` already reads through a Gather: pruning that
/// kills more input features shrinks the Gather's indices, with or without the flag.
#[test]
fn a_model_read_through_a_gather_loses_more_input_features_on_the_next_pass() {
    use onnx_minimize::{minimize_file, Options};
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.onnx");
    let opts = Options { gather_inputs: true, ..Default::default() };
    let r1 = minimize_file(&fixture("lenet300_pruned_ts.onnx"), Some(&first), &opts, &|_| {}).unwrap();
    let mut m = Model::load(&first).unwrap();
    let opts = PruneOptions {
        amount: Amount::Sparsity(0.995),
        scope: Scope::Global,
        criterion: Criterion::UnitCoupled,
        coupling: 2.0,
        include_output_layer: false,
    };
    prune(&mut m, &opts).unwrap();
    let pruned = dir.path().join("pruned.onnx");
    m.write(&pruned, false).unwrap();
    for gather_inputs in [false, true] {
        let out = dir.path().join(format!("second_{gather_inputs}.onnx"));
        let r2 = minimize_file(&pruned, Some(&out), &Options { gather_inputs, ..Default::default() }, &|_| {}).unwrap();
        assert!(r2.verification.is_some());
        let features = r2.removals.layers[0].inputs_after;
        assert!(
            features < r1.removals.layers[0].inputs_after,
            "{features} features left of {}",
            r1.removals.layers[0].inputs_after
        );
        assert_eq!(r2.removals.gathered_inputs.len(), 1);
        assert_eq!(r2.removals.gathered_inputs[0].kept, features);
        let written = Model::load(&out).unwrap();
        assert_eq!(written.graph().node.iter().filter(|n| n.op_type() == "Gather").count(), 1, "one Gather");
        let again =
            minimize_file(&out, None, &Options { verify: None, gather_inputs, ..Default::default() }, &|_| {}).unwrap();
        assert_eq!(again.after.params, again.before.params, "the fixed point is reached in one pass");
    }
}

/// A LayerNorm stream's channel is constant only when every writer writes a constant, the
/// LayerNorms that write it included: unit-coupled pruning never touches their scales, so the
/// stream keeps every channel however sparse it gets. Space-coupled pruning scores whole stream
/// channels across all blocks and silences the norm scales, biases and embeddings of the ones it
/// empties; minimization then removes exactly those, verified on fresh inputs.
#[test]
fn space_coupled_pruning_empties_whole_layernorm_stream_channels() {
    use onnx_minimize::{minimize_file, Options};
    let dir = tempfile::tempdir().unwrap();
    let stream = |criterion| {
        let mut m = Model::load(&fixture("convnext/convnext_hf_dynamo.onnx")).unwrap();
        let opts = PruneOptions {
            amount: Amount::Sparsity(0.99),
            scope: Scope::Global,
            criterion,
            coupling: 2.0,
            include_output_layer: false,
        };
        let r = prune(&mut m, &opts).unwrap();
        let total: usize = r.tensors.iter().map(|t| t.elements).sum();
        let after: usize = r.tensors.iter().map(|t| t.zeros_after).sum();
        assert_eq!(after, (total as f64 * 0.99).round() as usize, "the sparsity is exact: {criterion:?}");
        let pruned = dir.path().join(format!("{criterion:?}.onnx"));
        m.write(&pruned, false).unwrap();
        let small = dir.path().join(format!("{criterion:?}.min.onnx"));
        let report = minimize_file(&pruned, Some(&small), &Options::default(), &|_| {}).unwrap();
        assert!(report.verification.is_some());
        (report.removals.layers[0].outputs_before, report.removals.layers[0].outputs_after, r.silenced.len())
    };
    let (width, unit, none) = stream(Criterion::UnitCoupled);
    assert_eq!((unit, none), (width, 0), "unit-coupled: the stem's LayerNorm writes every stream channel");
    let (_, space, silenced) = stream(Criterion::SpaceCoupled);
    assert!(space < width && silenced > 0, "space-coupled keeps {space} of {width} stream channels");
    for criterion in [Criterion::SpaceStructured, Criterion::SpaceUniform] {
        let (_, structured, silenced) = stream(criterion);
        assert!(structured < width && silenced > 0, "{criterion:?} keeps {structured} of {width} stream channels");
    }
}

/// The groups a space-coupled group lasso sums: a stream channel's space holds the stem's row,
/// every block's writer rows and reader columns, and the LayerNorm scales writing it; a hidden
/// unit's space holds its row and its reader's column, and nothing else.
#[test]
fn channel_spaces_group_a_stream_channel_across_blocks() {
    use onnx_minimize::sparsify::channel_spaces;
    let m = Model::load(&fixture("convnext/convnext_hf_dynamo.onnx")).unwrap();
    let spaces = channel_spaces(&m, false).unwrap();
    let holding = |space: usize| -> Vec<(String, usize)> {
        spaces.iter().filter(|s| s.spaces.contains(&space)).map(|s| (s.tensor.clone(), s.axis)).collect()
    };
    let stem = spaces.iter().find(|s| s.axis == 0 && s.spaces.len() == 16).expect("the stem's 16 rows");
    let stream = holding(stem.spaces[0]);
    assert!(stream.len() >= 8, "the stream channel in every block: {stream:?}");
    assert!(stream.iter().any(|(t, _)| t.contains("layernorm") || t.contains("norm")), "{stream:?}");
    for s in &spaces {
        let mut sorted = s.spaces.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), s.spaces.len(), "one space per entry of {} along {}", s.tensor, s.axis);
    }
    let hidden = spaces.iter().find(|s| s.spaces.len() == 64).expect("a 64-unit MLP");
    let unit = holding(hidden.spaces[0]);
    assert_eq!(unit.len(), 3, "its row, its bias and its reader's column: {unit:?}");
}

/// The cycle minimizes its own output again: a stream that a CompensatedLayerNorm in the `concat`
/// form reads (`LayerNorm(Concat(x, Expand(removed, [..leading, R])))`) shrinks on the next pass,
/// the compensation's constants carried along.
#[test]
fn a_stream_behind_a_concatenated_compensated_layernorm_shrinks_again() {
    use onnx_minimize::{minimize_file, ClnForm, Options};
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { compensated_layernorm: ClnForm::Concat, ..Options::default() };
    let mut src = fixture("convnext/convnext_hf_dynamo.onnx");
    let mut widths = vec![];
    for (pass, amount) in [0.5, 0.7].into_iter().enumerate() {
        let mut m = Model::load(&src).unwrap();
        let prune_opts = PruneOptions {
            amount: Amount::Remaining(amount),
            scope: Scope::Global,
            criterion: Criterion::SpaceStructured,
            coupling: 2.0,
            include_output_layer: false,
        };
        prune(&mut m, &prune_opts).unwrap();
        let pruned = dir.path().join(format!("pruned{pass}.onnx"));
        m.write(&pruned, false).unwrap();
        let small = dir.path().join(format!("small{pass}.onnx"));
        let report = minimize_file(&pruned, Some(&small), &opts, &|_| {}).unwrap();
        assert!(report.verification.is_some());
        widths.push(report.removals.layers[0].outputs_after);
        src = small;
    }
    assert!(widths[1] < widths[0], "the stem's stream channels: {widths:?}");
}
