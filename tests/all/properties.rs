//! Property tests: random fully-connected graphs with random zero patterns and forced dead and
//! constant units. Whatever the pattern, the minimized model computes what the original does
//! (tract, fresh inputs, several batch sizes), and it is smaller whenever a unit was removable.

use crate::common::{mlp, write, Form, Layer};
use onnx_minimize::{minimize_file, Options};
use proptest::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

const ACTS: [Option<&str>; 6] =
    [None, Some("Relu"), Some("Sigmoid"), Some("Tanh"), Some("LeakyRelu"), Some("Softplus")];

fn random_mlp(seed: u64, depth: usize) -> Vec<Layer> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut widths = vec![rng.random_range(1..8usize)];
    widths.extend((0..depth).map(|_| rng.random_range(1..10usize)));
    widths.push(rng.random_range(1..4usize));
    let sparsity = [0.2, 0.5, 0.8][rng.random_range(0..3)];
    (0..widths.len() - 1)
        .map(|i| {
            let (n_in, n_out) = (widths[i], widths[i + 1]);
            let dead_rows: Vec<bool> = (0..n_out).map(|_| rng.random_bool(0.25)).collect();
            let dead_cols: Vec<bool> = (0..n_in).map(|_| rng.random_bool(0.15)).collect();
            let w = (0..n_out * n_in)
                .map(|k| {
                    let (j, c) = (k / n_in, k % n_in);
                    if dead_rows[j] || dead_cols[c] || rng.random_bool(sparsity) {
                        0.0
                    } else {
                        rng.random_range(-1.0..1.0f32)
                    }
                })
                .collect();
            let bias = rng.random_bool(0.8).then(|| {
                (0..n_out).map(|_| if rng.random_bool(0.2) { 0.0 } else { rng.random_range(-1.0..1.0f32) }).collect()
            });
            let form = if rng.random_bool(0.3) {
                Form::MatMulAdd
            } else {
                Form::Gemm {
                    trans_b: rng.random_bool(0.5),
                    alpha: [1.0, 0.5][rng.random_range(0..2)],
                    beta: [1.0, 2.0, 0.0][rng.random_range(0..3)],
                }
            };
            Layer { n_in, n_out, w, bias, form, act: ACTS[rng.random_range(0..ACTS.len())] }
        })
        .collect()
}

/// Units that the simplest local rule already proves removable: a hidden unit with no incoming
/// weight (constant) or no outgoing weight (unused).
fn locally_removable(layers: &[Layer]) -> bool {
    layers.windows(2).any(|p| {
        let (l, next) = (&p[0], &p[1]);
        let r = (0..l.n_out)
            .filter(|&j| {
                let zero_row = (0..l.n_in).all(|c| l.w[j * l.n_in + c] == 0.0);
                let zero_col = (0..next.n_out).all(|k| next.w[k * next.n_in + j] == 0.0);
                zero_row || zero_col
            })
            .count();
        r > 0 && l.n_out > 1
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn minimized_mlps_compute_the_same_and_shrink(seed in any::<u64>(), depth in 1usize..4, gather_inputs in any::<bool>()) {
        let layers = random_mlp(seed, depth);
        let dir = tempfile::tempdir().unwrap();
        let input = write(dir.path(), "in.onnx", &mlp(&layers));
        let out = dir.path().join("out.onnx");
        let report = minimize_file(&input, Some(&out), &Options { gather_inputs, ..Default::default() }, &|_| {})
            .map_err(|e| TestCaseError::fail(format!("{e}\n{layers:?}")))?;
        prop_assert!(report.verification.is_some());
        if locally_removable(&layers) {
            prop_assert!(report.after.params < report.before.params, "{:?}", report.layers);
        }
        let again = minimize_file(&out, None, &Options { verify: None, ..Default::default() }, &|_| {}).unwrap();
        prop_assert_eq!(again.after.params, again.before.params, "a second pass removes nothing more");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    /// Corrupted models (bytes flipped, cut short) give an error or a model, never a panic.
    #[test]
    fn corrupted_models_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>(), truncate in any::<bool>()) {
        let mut bytes = std::fs::read(crate::common::fixture("mlp_gelu_erf_ts.onnx")).unwrap();
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] ^= b;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("bad.onnx");
        std::fs::write(&input, &bytes).unwrap();
        let opts = Options { verify: None, ..Default::default() };
        let result = std::panic::catch_unwind(|| minimize_file(&input, None, &opts, &|_| {}).map(|_| ()));
        prop_assert!(result.is_ok(), "panicked");
    }
}
