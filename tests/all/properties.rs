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
        prop_assert!(report.after.params <= report.before.params, "never grows: {:?}", report.removals.layers);
        if locally_removable(&layers) {
            prop_assert!(report.after.params < report.before.params, "{:?}", report.removals.layers);
        }
        let again = minimize_file(&out, None, &Options { verify: None, ..Default::default() }, &|_| {}).unwrap();
        prop_assert_eq!(again.after.params, again.before.params, "a second pass removes nothing more");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    /// One weight or bias Inf, -Inf or NaN anywhere: exact still, NaN positions included.
    #[test]
    fn mlps_with_a_non_finite_weight_stay_exact(seed in any::<u64>(), depth in 1usize..4, at in any::<prop::sample::Index>(), kind in 0usize..3) {
        let mut layers = random_mlp(seed, depth);
        let bad = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN][kind];
        let l = at.index(layers.len());
        let layer = &mut layers[l];
        match &mut layer.bias {
            Some(b) if at.index(2) == 0 => {
                let i = at.index(b.len());
                b[i] = bad
            }
            _ => { let i = at.index(layer.w.len()); layer.w[i] = bad }
        }
        let dir = tempfile::tempdir().unwrap();
        let input = write(dir.path(), "in.onnx", &mlp(&layers));
        let report = minimize_file(&input, Some(&dir.path().join("out.onnx")), &Options::default(), &|_| {})
            .map_err(|e| TestCaseError::fail(format!("{e}\n{layers:?}")))?;
        prop_assert!(report.after.params <= report.before.params);
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

/// A random CNN: conv/depthwise/grouped/residual/split/concat blocks with random zero patterns, forced zero
/// filters and constant channels, then a pooled or flattened head.
fn random_cnn(seed: u64) -> onnx_minimize::onnx::proto::ModelProto {
    use crate::common::{attr_i, attr_ints, G};
    let mut rng = StdRng::seed_from_u64(seed);
    let c0 = rng.random_range(1..4usize);
    let mut g = G::new("x", &[None, Some(c0), Some(6), Some(6)]);
    let (mut cur, mut ch) = ("x".to_string(), c0);
    let blocks = rng.random_range(1..4);
    let conv = |g: &mut G, rng: &mut StdRng, i: usize, x: &str, cin: usize, cout: usize, tag: &str| {
        let k = [1usize, 3][rng.random_range(0..2)];
        let pad = if k == 3 { 1 } else { 0 }; // spatial size stays 6x6 for residuals and concats
        let zero: Vec<usize> = (0..cout).filter(|_| rng.random_bool(0.3)).collect();
        let unread: Vec<usize> = (0..cin).filter(|_| rng.random_bool(0.2)).collect();
        let (w, b, y) = (format!("w{tag}{i}"), format!("b{tag}{i}"), format!("y{tag}{i}"));
        g.conv_weight(&w, cout, cin, k, &zero, &unread);
        let sparsity = rng.random_range(0.0..0.7);
        let t = g.g.initializer.last_mut().unwrap();
        let mut vals: Vec<f32> =
            t.raw_data.as_ref().unwrap().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        vals.iter_mut().for_each(|v| {
            if rng.random_bool(sparsity) {
                *v = 0.0
            }
        });
        t.raw_data = Some(vals.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into());
        let bias: Vec<f32> =
            (0..cout).map(|_| if rng.random_bool(0.3) { 0.0 } else { rng.random_range(-1.0..1.0) }).collect();
        let with_bias = rng.random_bool(0.8);
        if with_bias {
            g.init(&b, &[cout], &bias);
        }
        g.conv(x, &w, with_bias.then_some(b.as_str()), &y, pad, 1);
        y
    };
    for i in 0..blocks {
        let cout = rng.random_range(2..7usize);
        match rng.random_range(0..7) {
            0 => {
                let y = conv(&mut g, &mut rng, i, &cur, ch, cout, "c");
                let a = format!("a{i}");
                g.op(["Relu", "Sigmoid", "HardSwish"][rng.random_range(0..3)], &[&y], &a, vec![]);
                (cur, ch) = (a, cout);
            }
            1 => {
                // Depthwise 3x3 with zero filters.
                let zero: Vec<usize> = (0..ch).filter(|_| rng.random_bool(0.3)).collect();
                g.conv_weight(&format!("dw{i}"), ch, 1, 3, &zero, &[]);
                g.init(&format!("dwb{i}"), &[ch], &(0..ch).map(|c| c as f32 * 0.1).collect::<Vec<_>>());
                let y = format!("d{i}");
                g.conv(&cur, &format!("dw{i}"), Some(&format!("dwb{i}")), &y, 1, ch as i64);
                let a = format!("a{i}");
                g.op("Relu", &[&y], &a, vec![]);
                cur = a;
            }
            2 => {
                // Residual: two writers of one stream.
                let y1 = conv(&mut g, &mut rng, i, &cur, ch, cout, "r");
                let y2 = conv(&mut g, &mut rng, i, &cur, ch, cout, "s");
                let a = format!("a{i}");
                g.op("Add", &[&y1, &y2], &a, vec![]);
                (cur, ch) = (a, cout);
            }
            4 if ch % 2 == 0 => {
                // Grouped 3x3 (group 2) with zero filters and unread entries.
                let cout = 2 * rng.random_range(1..4usize);
                let zero: Vec<usize> = (0..cout).filter(|_| rng.random_bool(0.3)).collect();
                let unread: Vec<usize> = (0..ch / 2).filter(|_| rng.random_bool(0.3)).collect();
                g.conv_weight(&format!("gw{i}"), cout, ch / 2, 3, &zero, &unread);
                let bias: Vec<f32> = (0..cout).map(|c| if c % 3 == 0 { 0.0 } else { c as f32 * 0.1 }).collect();
                g.init(&format!("gb{i}"), &[cout], &bias);
                let (y, a) = (format!("gy{i}"), format!("a{i}"));
                g.conv(&cur, &format!("gw{i}"), Some(&format!("gb{i}")), &y, 1, 2);
                g.op("Relu", &[&y], &a, vec![]);
                (cur, ch) = (a, cout);
            }
            3 => {
                // Split into two parts (given sizes, or equal halves), each through its own
                // activation, concatenated back in the other order.
                let cout = 2 * rng.random_range(1..4usize);
                let y = conv(&mut g, &mut rng, i, &cur, ch, cout, "t");
                let (p, q) = (format!("p{i}"), format!("q{i}"));
                if rng.random_bool(0.5) {
                    let first = rng.random_range(1..cout);
                    g.g.initializer.push(crate::common::int64_tensor(
                        &format!("sizes{i}"),
                        &[first as i64, (cout - first) as i64],
                    ));
                    g.g.node.push(crate::common::node(
                        "Split",
                        &format!("split{i}"),
                        &[&y, &format!("sizes{i}")],
                        &[&p, &q],
                        vec![attr_i("axis", 1)],
                    ));
                } else {
                    g.g.node.push(crate::common::node(
                        "Split",
                        &format!("split{i}"),
                        &[&y],
                        &[&p, &q],
                        vec![attr_i("axis", 1)],
                    ));
                }
                let (pa, qa, a) = (format!("pa{i}"), format!("qa{i}"), format!("a{i}"));
                g.op("Relu", &[&p], &pa, vec![]).op("Tanh", &[&q], &qa, vec![]);
                g.op("Concat", &[&qa, &pa], &a, vec![attr_i("axis", 1)]);
                (cur, ch) = (a, cout);
            }
            6 if (2..ch).any(|a| ch % a == 0) => {
                // A channel shuffle: the channels split into a x b, the two swapped, merged.
                let factors: Vec<usize> = (2..ch).filter(|a| ch % a == 0).collect();
                let a = factors[rng.random_range(0..factors.len())];
                let (split, merge) = (format!("split{i}"), format!("merge{i}"));
                g.g.initializer.extend([
                    crate::common::int64_tensor(&split, &[-1, a as i64, (ch / a) as i64, 6, 6]),
                    crate::common::int64_tensor(&merge, &[-1, ch as i64, 6, 6]),
                ]);
                let (s, t, a) = (format!("s{i}"), format!("t{i}"), format!("a{i}"));
                g.op("Reshape", &[&cur, &split], &s, vec![]);
                g.op("Transpose", &[&s], &t, vec![attr_ints("perm", &[0, 2, 1, 3, 4])]);
                g.op("Reshape", &[&t, &merge], &a, vec![]);
                cur = a;
            }
            _ => {
                let c2 = rng.random_range(1..4usize);
                let y1 = conv(&mut g, &mut rng, i, &cur, ch, cout, "p");
                let y2 = conv(&mut g, &mut rng, i, &cur, ch, c2, "q");
                let a = format!("a{i}");
                g.op("Concat", &[&y1, &y2], &a, vec![attr_i("axis", 1)]);
                (cur, ch) = (a, cout + c2);
            }
        }
    }
    let out = rng.random_range(1..4usize);
    if rng.random_bool(0.5) {
        g.op("GlobalAveragePool", &[&cur], "gap", vec![]).op("Flatten", &["gap"], "f", vec![attr_i("axis", 1)]);
        g.weight("wfc", out, ch, &[]);
    } else {
        g.op("MaxPool", &[&cur], "mp", vec![attr_ints("kernel_shape", &[2, 2]), attr_ints("strides", &[2, 2])]);
        g.op("Flatten", &["mp"], "f", vec![attr_i("axis", 1)]);
        g.weight("wfc", out, ch * 9, &[]);
    }
    g.op("Gemm", &["f", "wfc"], "y", vec![attr_i("transB", 1)]);
    g.model("y", &[None, Some(out)])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn minimized_cnns_compute_the_same(seed in any::<u64>()) {
        exact_and_at_its_fixed_point(&random_cnn(seed), seed)?;
    }
}

/// Minimized (and so verified by tract on fresh inputs), with no more weights, and a second pass
/// removes nothing more.
fn exact_and_at_its_fixed_point(
    model: &onnx_minimize::onnx::proto::ModelProto,
    seed: u64,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "in.onnx", model);
    let out = dir.path().join("out.onnx");
    minimize_file(&input, Some(&out), &Options::default(), &|_| {})
        .map_err(|e| TestCaseError::fail(format!("seed {seed}: {e}")))?;
    prop_assert!(
        crate::common::float_params(&out) <= crate::common::float_params(&input),
        "seed {}: weights grew",
        seed
    );
    let again = minimize_file(&out, None, &Options { verify: None, ..Default::default() }, &|_| {}).unwrap();
    prop_assert_eq!(again.after.params, again.before.params, "seed {}: a second pass removes nothing more", seed);
    Ok(())
}

/// A ViT-like embedding: patches from a MatMul, a class token expanded over the batch and put
/// before them along the tokens, a position table added, a head reading every token's channels.
/// `pruned` stream channels are zero in the patch projection, the token and the table, and
/// `unread` ones have zero head rows.
fn random_tokens(seed: u64) -> (onnx_minimize::onnx::proto::ModelProto, usize) {
    use crate::common::{attr_i, int64_tensor, G};
    let mut rng = StdRng::seed_from_u64(seed);
    let (tokens, d_in, d, out) =
        (rng.random_range(1..4usize), rng.random_range(1..5usize), rng.random_range(2..9usize), 2);
    let pruned: Vec<usize> = (0..d).filter(|_| rng.random_bool(0.3)).collect();
    // Half the time the head reads channels picked by a Gather (`x[..., idx]`, repeats and
    // negative indices): its rows are then the picks.
    let picks: Option<Vec<i64>> = rng.random_bool(0.5).then(|| {
        let n = rng.random_range(1..d + 3);
        (0..n).map(|_| rng.random_range(-(d as i64)..d as i64)).collect()
    });
    let source = |r: usize| picks.as_ref().map_or(r, |p| p[r].rem_euclid(d as i64) as usize);
    let rows = picks.as_ref().map_or(d, Vec::len);
    let unread: Vec<usize> = (0..rows).filter(|&r| !pruned.contains(&source(r)) && rng.random_bool(0.2)).collect();
    let mut g = G::new("x", &[None, Some(tokens), Some(d_in)]);
    // Tables whose last axis is the stream's channels.
    let table = |g: &mut G, name: &str, dims: &[usize]| {
        let mut v = g.rand(dims.iter().product());
        v.iter_mut().enumerate().filter(|(i, _)| pruned.contains(&(i % d))).for_each(|(_, x)| *x = 0.0);
        g.init(name, dims, &v);
    };
    table(&mut g, "w", &[d_in, d]);
    table(&mut g, "cls", &[1, 1, d]);
    table(&mut g, "pos", &[1, tokens + 1, d]);
    let mut head = g.rand(rows * out);
    head.iter_mut().enumerate().filter(|(i, _)| unread.contains(&(i / out))).for_each(|(_, x)| *x = 0.0);
    g.init("head", &[rows, out], &head);
    g.g.initializer.push(int64_tensor("one", &[1]));
    g.op("MatMul", &["x", "w"], "patches", vec![]).rank("patches", &[None, Some(tokens), Some(d)]);
    g.op("Shape", &["x"], "batch", vec![attr_i("start", 0), attr_i("end", 1)]).rank("batch", &[Some(1)]);
    g.op("Concat", &["batch", "one", "one"], "cls_shape", vec![attr_i("axis", 0)]);
    g.op("Expand", &["cls", "cls_shape"], "cls_b", vec![]).rank("cls_b", &[None, Some(1), Some(d)]);
    g.op("Concat", &["cls_b", "patches"], "tokens", vec![attr_i("axis", 1)]);
    g.rank("tokens", &[None, Some(tokens + 1), Some(d)]);
    g.op("Add", &["tokens", "pos"], "stream", vec![]).rank("stream", &[None, Some(tokens + 1), Some(d)]);
    let head_input = match &picks {
        Some(p) => {
            g.g.initializer.push(int64_tensor("picks", p));
            g.op("Gather", &["stream", "picks"], "picked", vec![attr_i("axis", -1)]);
            "picked"
        }
        None => "stream",
    };
    g.op("MatMul", &[head_input, "head"], "y", vec![]);
    // Picks of one channel are tied to it: an unread pick leaves only with every pick of its
    // channel.
    let read = |c: usize| (0..rows).any(|r| source(r) == c && !unread.contains(&r));
    let removable = (0..rows).filter(|&r| pruned.contains(&source(r)) || !read(source(r))).count();
    (g.model("y", &[None, Some(tokens + 1), Some(out)]), rows - removable)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    /// Class tokens, position tables, token concatenation and channel picks: exact, and the
    /// head keeps exactly the rows whose channels are neither constant zero nor unread (by
    /// every pick of them).
    #[test]
    fn token_streams_shrink_exactly(seed in any::<u64>()) {
        let (model, kept) = random_tokens(seed);
        let dir = tempfile::tempdir().unwrap();
        let input = write(dir.path(), "in.onnx", &model);
        let report = minimize_file(&input, Some(&dir.path().join("out.onnx")), &Options::default(), &|_| {})
            .map_err(|e| TestCaseError::fail(format!("seed {seed}: {e}")))?;
        let head = report.removals.layers.last().unwrap();
        if kept > 0 {
            prop_assert_eq!(head.inputs_after, kept, "seed {}: {}", seed, report.to_text());
        } else {
            // Nothing needed: one channel stays (with every pick tied to it).
            prop_assert!(head.inputs_after >= 1, "seed {}: {}", seed, report.to_text());
        }
    }
}

/// `Linear -> ReLU -> {LSTM, GRU, RNN}` (one or both directions, the directions merged into the
/// features as TorchScript does) `-> MatMul`, with random zero rows and columns in every weight
/// and zero biases: whole candidate rows (dead units), unread units, unread input features.
fn random_recurrent(seed: u64) -> onnx_minimize::onnx::proto::ModelProto {
    use crate::common::{attr_i, attr_ints, int64_tensor, G};
    use onnx_minimize::onnx::build::{attr_string, node};
    let mut rng = StdRng::seed_from_u64(seed);
    let (op, gates) = [("LSTM", 4), ("GRU", 3), ("RNN", 1)][rng.random_range(0..3)];
    let (f, i, h, dirs) = (3, rng.random_range(2..6usize), rng.random_range(2..6usize), rng.random_range(1..3usize));
    let mut g = G::new("x", &[Some(4), None, Some(f)]);
    let l1_zero: Vec<usize> = (0..i).filter(|_| rng.random_bool(0.3)).collect();
    let mut w1 = g.rand(f * i);
    w1.iter_mut().enumerate().filter(|(e, _)| l1_zero.contains(&(e % i))).for_each(|(_, v)| *v = 0.0);
    let b1: Vec<f32> = (0..i).map(|k| if l1_zero.contains(&k) { 0.0 } else { 0.1 }).collect();
    g.init("w1", &[f, i], &w1).init("b1", &[i], &b1);
    g.op("MatMul", &["x", "w1"], "q", vec![]).op("Add", &["q", "b1"], "a", vec![]).op("Relu", &["a"], "p", vec![]);
    let zero_p = |rng: &mut StdRng, v: &mut [f32], rows: usize, cols: usize, p: f64| {
        for r in 0..rows {
            if rng.random_bool(p) {
                v[r * cols..(r + 1) * cols].iter_mut().for_each(|x| *x = 0.0);
            }
        }
        for c in 0..cols {
            if rng.random_bool(p) {
                (0..rows).for_each(|r| v[r * cols + c] = 0.0);
            }
        }
    };
    let mut w = g.rand(dirs * gates * h * i);
    let mut r = g.rand(dirs * gates * h * h);
    let mut b = g.rand(dirs * 2 * gates * h);
    zero_p(&mut rng, &mut w, dirs * gates * h, i, 0.3);
    zero_p(&mut rng, &mut r, dirs * gates * h, h, 0.3);
    b.iter_mut().for_each(|v| {
        if rng.random_bool(0.4) {
            *v = 0.0
        }
    });
    g.init("w", &[dirs, gates * h, i], &w).init("r", &[dirs, gates * h, h], &r).init("b", &[dirs, 2 * gates * h], &b);
    let mut rec = node(op, "rec", &["p", "w", "r", "b"], &["y"], vec![attr_i("hidden_size", h as i64)]);
    if dirs == 2 {
        rec.attribute.push(attr_string("direction", "bidirectional"));
    }
    if op == "GRU" && rng.random_bool(0.5) {
        rec.attribute.push(attr_i("linear_before_reset", 1));
    }
    g.g.node.push(rec);
    g.g.initializer.extend([int64_tensor("merge", &[0, 0, -1])]);
    g.op("Transpose", &["y"], "yt", vec![attr_ints("perm", &[0, 2, 1, 3])]).op(
        "Reshape",
        &["yt", "merge"],
        "m",
        vec![],
    );
    let mut w2 = g.rand(dirs * h * 2);
    zero_p(&mut rng, &mut w2, dirs * h, 2, 0.4);
    g.init("w2", &[dirs * h, 2], &w2).op("MatMul", &["m", "w2"], "out", vec![]);
    g.model("out", &[Some(4), None, Some(2)])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// Recurrent layers: exact on fresh inputs whatever the pattern, and idempotent.
    #[test]
    fn minimized_recurrent_layers_compute_the_same(seed in any::<u64>()) {
        exact_and_at_its_fixed_point(&random_recurrent(seed), seed)?;
    }
}
