//! Each pass on small hand-built graphs, asserted directly: no tract, no files. The tract
//! end-to-end tests in `tests/` prove exactness; these say which pass got what wrong.

use super::decide::{decide, InputPolicy};
use super::layout::{Heads, Layout};
use super::plan::plan;
use super::reasons::{KeepReason, Opaque, Why};
use super::{Additions, Facts, Graph, ValueId};
use crate::ir::Ir;
use crate::onnx::build::{attr_int, f32_tensor, int64_tensor, node, value_info};
use crate::onnx::proto::{tensor_proto::DataType, GraphProto, NodeProto};
use crate::ops::ClnForm;
use crate::rewrite::Edit;

/// A graph with input `x` of the given dims, built node by node; `y` is the output.
struct G(GraphProto);

impl G {
    fn new(dims: &[Option<usize>]) -> G {
        let mut g = GraphProto::default();
        g.input.push(value_info("x", DataType::Float, dims));
        g.output.push(value_info("y", DataType::Float, &[]));
        G(g)
    }

    /// A weight `[rows, cols]` whose row `r` is all `row_value(r)`.
    fn matrix(mut self, name: &str, rows: usize, cols: usize, row_value: impl Fn(usize) -> f32) -> G {
        let vals: Vec<f32> = (0..rows).flat_map(|r| (0..cols).map(move |_| r)).map(&row_value).collect();
        self.0.initializer.push(f32_tensor(name, &[rows, cols], &vals));
        self
    }

    fn vector(mut self, name: &str, vals: &[f32]) -> G {
        self.0.initializer.push(f32_tensor(name, &[vals.len()], vals));
        self
    }

    fn ints(mut self, name: &str, vals: &[i64]) -> G {
        self.0.initializer.push(int64_tensor(name, vals));
        self
    }

    /// A scalar int64 (a Gather's index that drops its axis).
    fn scalar(mut self, name: &str, value: i64) -> G {
        let mut t = int64_tensor(name, &[value]);
        t.dims.clear();
        self.0.initializer.push(t);
        self
    }

    fn op(mut self, op: &str, ins: &[&str], out: &str) -> G {
        self.0.node.push(node(op, out, ins, &[out], vec![]));
        self
    }

    fn with(mut self, n: NodeProto) -> G {
        self.0.node.push(n);
        self
    }

    fn facts<T>(&self, f: impl FnOnce(&Facts) -> T) -> T {
        self.facts_with(true, f)
    }

    /// [`Self::facts`], with padded convolutions' border corrections allowed or not.
    fn facts_with<T>(&self, corrections: bool, f: impl FnOnce(&Facts) -> T) -> T {
        let ir = Ir::build(&self.0, 17).expect("a DAG");
        let facts = Facts::of(Graph::new(&self.0, &ir), &|_| {}, Additions { corrections, biases: true });
        f(&facts)
    }
}

fn v(facts: &Facts, name: &str) -> ValueId {
    facts.graph.value(name).unwrap_or_else(|| panic!("no value {name}"))
}

fn layout(facts: &Facts, name: &str) -> Layout {
    facts.layouts[v(facts, name)]
}

/// `x[B, 4] -> Gemm(w1: 4 -> 3, transB) -> h -> Relu -> a -> Gemm(w2: 3 -> 2, transB) -> y`.
/// Row 1 of w1 is zero (with bias 2: `h[1]` is the constant 2); column 2 of w2 is zero.
fn chain() -> G {
    let w2: Vec<f32> = (0..2).flat_map(|_| [1.0, 1.0, 0.0]).collect();
    let mut g =
        G::new(&[None, Some(4)]).matrix("w1", 3, 4, |r| if r == 1 { 0.0 } else { 1.0 }).vector("b1", &[0.5, 2.0, -1.0]);
    g.0.initializer.push(f32_tensor("w2", &[2, 3], &w2));
    g.with(node("Gemm", "g1", &["x", "w1", "b1"], &["h"], vec![attr_int("transB", 1)]))
        .op("Relu", &["h"], "a")
        .with(node("Gemm", "g2", &["a", "w2"], &["y"], vec![attr_int("transB", 1)]))
}

#[test]
fn layout_fixes_axes_widths_and_ranks_along_a_chain() {
    chain().facts(|f| {
        let h = layout(f, "h");
        assert_eq!((h.axis, h.width, h.rank, h.block, h.heads), (Some(-1), Some(3), Some(2), Some(1), None));
        assert_eq!(layout(f, "a"), h);
        assert_eq!(layout(f, "x").width, Some(4));
        assert_eq!(layout(f, "y").width, Some(2));
    });
}

#[test]
fn an_activation_ties_its_channels_to_its_input() {
    chain().facts(|f| {
        let (h, a, y) = (v(f, "h"), v(f, "a"), v(f, "y"));
        for c in 0..3 {
            assert_eq!(f.classes.class(h, c), f.classes.class(a, c));
        }
        assert_ne!(f.classes.class(h, 0), f.classes.class(h, 1));
        // A linear layer starts a new space.
        assert_ne!(f.classes.class(a, 0), f.classes.class(y, 0));
    });
}

#[test]
fn a_zero_row_makes_a_constant_that_activations_carry() {
    chain().facts(|f| {
        assert_eq!(f.consts[v(f, "h")], vec![None, Some(2.0), None]);
        assert_eq!(f.consts[v(f, "a")], vec![None, Some(2.0), None]);
    });
}

#[test]
fn need_stops_at_zero_columns_and_constants() {
    chain().facts(|f| {
        // a[1] is constant (folded), a[2] is read by a zero column only.
        assert_eq!(f.needed[v(f, "a")], vec![true, false, false]);
        assert_eq!(f.needed[v(f, "h")], vec![true, false, false]);
        assert_eq!(f.needed[v(f, "x")], vec![true; 4]);
    });
}

#[test]
fn the_plan_slices_both_weights_and_folds_the_constant() {
    chain().facts(|f| {
        let p = plan(f, &decide(f, InputPolicy::Keep), ClnForm::Ops).expect("a plan");
        let l = &p.removals.layers;
        assert_eq!((l[0].outputs_after, l[0].removed_constant, l[0].removed_dead), (1, 1, 1));
        assert_eq!((l[1].inputs_before, l[1].inputs_after), (3, 1));
        let dims = |node: usize, slot: usize| {
            p.edits.iter().find_map(|e| match e {
                Edit::Const { node: n, slot: s, tensor } | Edit::Slice { node: n, slot: s, tensor, .. }
                    if (*n, *s) == (node, slot) =>
                {
                    Some(tensor.dims.clone())
                }
                _ => None,
            })
        };
        assert_eq!(dims(0, 1), Some(vec![1, 4]));
        assert_eq!(dims(2, 1), Some(vec![2, 1]));
        // relu(2) = 2 times the column of ones: g2 gains a bias of 2.
        assert!(p.edits.iter().any(|e| matches!(e, Edit::SetInput { node: 2, slot: 2, .. })));
    });
}

#[test]
fn the_input_policy_changes_the_decision_only() {
    // Input features 2 and 3 are read by zero columns only.
    let w: Vec<f32> = (0..3).flat_map(|_| [1.0, 1.0, 0.0, 0.0]).collect();
    let mut g = G::new(&[None, Some(4)]);
    g.0.initializer.push(f32_tensor("w", &[3, 4], &w));
    let g = g.with(node("Gemm", "g", &["x", "w"], &["y"], vec![attr_int("transB", 1)]));
    g.facts(|f| {
        let x = v(f, "x");
        assert_eq!(f.needed[x], vec![true, true, false, false]);
        assert_eq!(decide(f, InputPolicy::Keep).kept(f, x, 4), vec![0, 1, 2, 3]);
        assert_eq!(decide(f, InputPolicy::Gather).kept(f, x, 4), vec![0, 1]);
        let kept = plan(f, &decide(f, InputPolicy::Keep), ClnForm::Ops).expect("a plan");
        let reasons = &kept.removals.blocked[0].reasons;
        assert_eq!((reasons[0].code.as_str(), reasons[0].message.as_str()), ("graph-input", "graph input 'x'"));
    });
}

#[test]
fn an_operator_without_a_rule_forces_what_it_touches_with_a_typed_reason() {
    let g = chain().op("LpNormalization", &["y"], "s");
    let g = G(GraphProto { output: vec![value_info("s", DataType::Float, &[])], ..g.0 });
    g.facts(|f| {
        let why = Why::Opaque(Opaque::NoRule { domain: String::new(), op: "LpNormalization".into() });
        let expected = KeepReason::Node { node: super::NodeId(3), why };
        assert_eq!(f.forced.of(v(f, "y")), &[expected]);
        assert!(f.needed[v(f, "y")].iter().all(|&n| n));
    });
}

#[test]
fn a_constant_varying_along_other_axes_is_read_as_varying() {
    // h (width 3) + a constant of shape [2, 3] that varies along another axis: channel c still
    // reads column c alone, so nothing is forced, and no channel of the sum is a constant.
    let g = chain();
    let mut g = g.matrix("k", 2, 3, |i| i as f32);
    g.0.node.insert(1, node("Add", "add", &["h", "k"], &["hk"], vec![]));
    g.0.node[2].input[0] = "hk".into();
    g.facts(|f| {
        assert!(f.forced.of(v(f, "hk")).is_empty(), "{:?}", f.forced.of(v(f, "hk")));
        assert!(f.consts[v(f, "hk")].iter().all(Option::is_none));
    });
}

#[test]
fn concat_and_split_tie_channels_at_their_offsets() {
    // x -> Gemm -> p (2), Gemm -> q (3); Concat(p, q) -> c (5); Split(c, [1, 4]) -> s1, s2.
    let g = G::new(&[None, Some(4)])
        .matrix("wp", 2, 4, |_| 1.0)
        .matrix("wq", 3, 4, |_| 1.0)
        .ints("sizes", &[1, 4])
        .matrix("ws", 2, 4, |_| 1.0)
        .with(node("Gemm", "gp", &["x", "wp"], &["p"], vec![attr_int("transB", 1)]))
        .with(node("Gemm", "gq", &["x", "wq"], &["q"], vec![attr_int("transB", 1)]))
        .with(node("Concat", "cat", &["p", "q"], &["c"], vec![attr_int("axis", 1)]))
        .with(node("Split", "split", &["c", "sizes"], &["s1", "s2"], vec![attr_int("axis", 1)]))
        .with(node("Gemm", "gs", &["s2", "ws"], &["y1"], vec![attr_int("transB", 1)]))
        .op("Add", &["y1", "s1"], "y");
    g.facts(|f| {
        let (p, q, c, s1, s2) = (v(f, "p"), v(f, "q"), v(f, "c"), v(f, "s1"), v(f, "s2"));
        assert_eq!(layout(f, "c").width, Some(5));
        assert_eq!(f.classes.class(q, 0), f.classes.class(c, 2));
        assert_eq!(f.classes.class(p, 0), f.classes.class(s1, 0));
        assert_eq!(f.classes.class(p, 1), f.classes.class(s2, 0));
        assert_eq!(f.classes.class(q, 2), f.classes.class(s2, 3));
    });
}

/// `x[B, T, 6] -> MatMul(w: 6 -> 6) -> q -> Reshape [0, 0, 2, 3] -> h -> Transpose -> t -> Relu
/// -> r -> Transpose -> u -> Reshape [0, 0, 6] -> m -> MatMul(wo: 6 -> 2) -> y`: a channel space
/// over heads (2) x entries (3). `wo` reads entry `d` of head `h` at row `3h + d`.
fn heads(wo_row: impl Fn(usize) -> f32) -> G {
    let perm = || vec![crate::onnx::build::attr_ints("perm", &[0, 2, 1, 3])];
    G::new(&[None, Some(5), Some(6)])
        .matrix("w", 6, 6, |_| 1.0)
        .matrix("wo", 6, 2, wo_row)
        .ints("split_heads", &[0, 0, 2, 3])
        .ints("merge_heads", &[0, 0, 6])
        .op("MatMul", &["x", "w"], "q")
        .op("Reshape", &["q", "split_heads"], "h")
        .with(node("Transpose", "t1", &["h"], &["t"], perm()))
        .op("Relu", &["t"], "r")
        .with(node("Transpose", "t2", &["r"], &["u"], perm()))
        .op("Reshape", &["u", "merge_heads"], "m")
        .op("MatMul", &["m", "wo"], "y")
}

#[test]
fn a_head_split_lays_channels_over_two_axes() {
    heads(|_| 1.0).facts(|f| {
        let h = layout(f, "h");
        assert_eq!((h.axis, h.width, h.rank, h.heads), (Some(-1), Some(6), Some(4), Some(Heads::plain(-2, 2))));
        assert_eq!(layout(f, "t").heads, Some(Heads::plain(-3, 2)));
        assert_eq!(layout(f, "u").heads, Some(Heads::plain(-2, 2)));
        assert_eq!((layout(f, "m").heads, layout(f, "m").width), (None, Some(6)));
        let (q, m) = (v(f, "q"), v(f, "m"));
        assert!((0..6).all(|c| f.classes.class(q, c) == f.classes.class(m, c)));
        assert!(f.forced.of(v(f, "t")).is_empty());
    });
}

#[test]
fn heads_lose_an_entry_only_where_every_head_loses_it() {
    let kept = |rows: &[usize]| {
        let rows = rows.to_vec();
        heads(move |r| if rows.contains(&r) { 0.0 } else { 1.0 }).facts(|f| {
            let d = decide(f, InputPolicy::Keep);
            (d.kept(f, v(f, "q"), 6), d.kept(f, v(f, "t"), 6))
        })
    };
    // Entry 1 is unused in both heads: it leaves from both.
    assert_eq!(kept(&[1, 4]).0, vec![0, 2, 3, 5]);
    // Entry 1 of head 0 only: kept, so both heads keep three entries.
    assert_eq!(kept(&[1]).0, vec![0, 1, 2, 3, 4, 5]);
    // All of head 1: the head leaves.
    assert_eq!(kept(&[3, 4, 5]).1, vec![0, 1, 2]);
}

#[test]
fn the_plan_rewrites_both_head_reshapes() {
    heads(|r| if r == 1 || r == 4 { 0.0 } else { 1.0 }).facts(|f| {
        let p = plan(f, &decide(f, InputPolicy::Keep), ClnForm::Ops).expect("a plan");
        let shape = |node: usize| {
            p.edits.iter().find_map(|e| match e {
                Edit::Const { node: n, slot: 1, tensor } if *n == node => Some(crate::onnx::tensor::int64s(tensor)),
                _ => None,
            })
        };
        assert_eq!(shape(1), Some(vec![0, 0, 2, 2]));
        assert_eq!(shape(5), Some(vec![0, 0, 4]));
    });
}

#[test]
fn padding_or_resizing_the_channel_axis_keeps_it_whole() {
    let why_of = |g: G, name: &str| g.facts(|f| f.forced.of(v(f, name)).to_vec());
    let base = || chain().ints("pads", &[0, 1, 0, 0]).vector("scales", &[1.0, 2.0]);
    let padded = base().op("Pad", &["h", "pads"], "p");
    let resized = base().op("Resize", &["h", "", "scales"], "p");
    for (g, why) in [(padded, Why::PadsChannelAxis), (resized, Why::ResizesChannelAxis)] {
        let reasons = why_of(g, "p");
        assert!(reasons.iter().any(|r| matches!(r, KeepReason::Node { why: w, .. } if *w == why)), "{reasons:?}");
    }
}

#[test]
fn a_merge_that_copies_every_axis_but_the_last_two_merges_the_heads() {
    // `[0, 0, -1]` of a rank-4 value copies the first two axes, so its -1 is exactly the heads
    // times their entries (TorchScript's bidirectional RNN output); `[0, -1]` would fold the
    // tokens in too, and keeps the channels whole.
    for (target, merges) in [(vec![0, 0, -1], true), (vec![0, -1], false)] {
        let mut g = heads(|_| 1.0);
        let merge = g.0.initializer.iter_mut().find(|t| t.name() == "merge_heads").unwrap();
        *merge = int64_tensor("merge_heads", &target);
        g.facts(|f| {
            let reasons = f.forced.of(v(f, "m"));
            let reshapes = reasons.iter().any(|r| matches!(r, KeepReason::Node { why: Why::ReshapesChannelAxis, .. }));
            assert_eq!(reshapes, !merges, "{target:?}: {reasons:?}");
            if merges {
                let (q, m) = (v(f, "q"), v(f, "m"));
                assert!((0..6).all(|c| f.classes.class(q, c) == f.classes.class(m, c)));
            }
        });
    }
}

#[test]
fn a_conv_bias_of_the_wrong_length_makes_the_conv_opaque() {
    let g = G::new(&[None, Some(2), Some(4), Some(4)]);
    let mut g = g.vector("b", &[0.1; 3]);
    g.0.initializer.push(f32_tensor("w", &[4, 2, 1, 1], &[1.0; 8]));
    let g = g.op("Conv", &["x", "w", "b"], "y");
    g.facts(|f| {
        let why = Why::Opaque(Opaque::Malformed("its bias does not have one entry per output channel"));
        assert!(f.forced.of(v(f, "x")).contains(&KeepReason::Node { node: super::NodeId(0), why }));
    });
}

/// `x[B, 4] -> Gemm(w1) -> h`, then h's halves `h[:, :n // 2]` and `h[:, n // 2:]` with
/// `n = h.shape[read]` read back (TorchScript's rotate_half), added, into `Gemm(w2) -> y`.
/// Rows 1 and 3 of w1 are zero: the pair (1, 3) is constant 0.
fn halves(read: i64, sink: &str) -> G {
    let w2: Vec<f32> = vec![1.0; 4];
    let mut g = G::new(&[None, Some(4)]).matrix("w1", 4, 4, |r| if r % 2 == 1 { 0.0 } else { 1.0 });
    g.0.initializer.push(f32_tensor("w2", &[2, 2], &w2));
    g.0.initializer.push(crate::onnx::proto::TensorProto { dims: vec![], ..int64_tensor("read", &[read]) });
    g.0.initializer.push(crate::onnx::proto::TensorProto { dims: vec![], ..int64_tensor("two", &[2]) });
    g.ints("zero", &[0])
        .ints("max", &[i64::MAX])
        .ints("axis", &[1])
        .ints("axes0", &[0])
        .with(node("Gemm", "g1", &["x", "w1"], &["h"], vec![attr_int("transB", 1)]))
        .op("Shape", &["h"], "shape")
        .with(node("Gather", "n", &["shape", "read"], &["n"], vec![attr_int("axis", 0)]))
        .op("Div", &["n", "two"], "half")
        .op("Unsqueeze", &["half", "axes0"], "mid")
        .op("Slice", &[sink, "zero", "mid", "axis"], "first")
        .op("Slice", &["h", "mid", "max", "axis"], "second")
        .op("Add", &["first", "second"], "sum")
        .with(node("Gemm", "g2", &["sum", "w2"], &["y"], vec![attr_int("transB", 1)]))
}

#[test]
fn a_slice_bounded_by_its_own_size_read_back_loses_pairs_and_writes_its_bounds() {
    halves(1, "h").facts(|f| {
        let d = decide(f, InputPolicy::Keep);
        assert_eq!(d.kept(f, v(f, "h"), 4), vec![0, 2]);
        let p = plan(f, &d, ClnForm::Ops).expect("a plan");
        let written: Vec<Vec<i64>> = p
            .edits
            .iter()
            .filter_map(|e| match e {
                Edit::SetInput { slot: 1 | 2, tensor, .. } => Some(crate::onnx::tensor::int64s(tensor)),
                _ => None,
            })
            .collect();
        // The first half ends at 1, the second starts there: the halves of the 2 kept.
        assert_eq!(written, vec![vec![1], vec![1]]);
    });
}

#[test]
fn a_size_read_back_of_another_axis_or_into_another_tensor_keeps_the_channels() {
    // The batch axis read back: not the channel count.
    halves(0, "h").facts(|f| assert_eq!(decide(f, InputPolicy::Keep).kept(f, v(f, "h"), 4), vec![0, 1, 2, 3]));
    // h's size bounds a slice of x: a read of the channel count that nothing follows.
    halves(1, "x").facts(|f| assert_eq!(decide(f, InputPolicy::Keep).kept(f, v(f, "h"), 4), vec![0, 1, 2, 3]));
}

#[test]
fn size_arithmetic_is_not_opaque_and_what_it_builds_for_an_activation_keeps_its_channels() {
    let mut g = chain();
    g.0.initializer.push(crate::onnx::proto::TensorProto { dims: vec![], ..int64_tensor("i0", &[0]) });
    let g = g
        .ints("axes0", &[0])
        .ints("rest", &[-1])
        .op("Shape", &["h"], "shape")
        .with(node("Gather", "batch", &["shape", "i0"], &["batch"], vec![attr_int("axis", 0)]))
        .op("Unsqueeze", &["batch", "axes0"], "batch1")
        .with(node("Concat", "target", &["batch1", "rest"], &["target"], vec![attr_int("axis", 0)]))
        .op("ConstantOfShape", &["shape"], "zeros")
        .op("Add", &["h", "zeros"], "hz");
    g.facts(|f| {
        let role = |name: &str| {
            let n = f.graph.order.iter().copied().find(|&n| f.graph.node(n).output[0] == name).unwrap();
            matches!(f.graph.role(n), crate::ops::Role::Opaque(_))
        };
        assert!(!role("batch") && !role("batch1") && !role("target") && !role("zeros"));
        // A tensor built from sizes that an Add gives h's channels cannot follow a rewrite.
        assert!(f.forced.is_forced(v(f, "zeros")) && f.forced.is_forced(v(f, "h")));
    });
}

/// A packed projection's `[.., 3, E]` parts keep entries of their own only where Gathers of one
/// part alone read them (through axis moves); any other reader needs a product.
#[test]
fn packed_parts_are_ragged_only_when_read_one_by_one() {
    for other_reader in [false, true] {
        let mut g = G::new(&[None, Some(4)])
            .matrix("w", 4, 6, |_| 1.0)
            .ints("parts", &[0, 3, 2])
            .op("MatMul", &["x", "w"], "q")
            .op("Reshape", &["q", "parts"], "h")
            .with(node("Transpose", "t", &["h"], &["t"], vec![crate::onnx::build::attr_ints("perm", &[1, 0, 2])]));
        g = g.scalar("i", 1).with(node("Gather", "p", &["t", "i"], &["y"], vec![attr_int("axis", 0)]));
        if other_reader {
            g = g.op("Relu", &["h"], "r");
        }
        g.facts(|f| {
            let h = layout(f, "h").heads.expect("heads");
            assert_eq!((h.count, h.ragged), (3, !other_reader));
            assert_eq!(layout(f, "y").width, Some(2));
            let (t, y) = (v(f, "t"), v(f, "y"));
            assert!((0..2).all(|c| f.classes.class(y, c) == f.classes.class(t, 2 + c)));
        });
    }
}

/// Heads merged with the batch (`[T, B, E] -> [T, B * H, D]`, moved to `[B * H, T, D]`) split back
/// out only where the target keeps the other axes' declared sizes: `[B, H, T, D]` is the heads
/// again; `[B * 2, H, T / 2, D]` has the same volume but its second axis is not the head.
#[test]
fn heads_merged_with_the_batch_split_out_only_where_the_other_axes_stay() {
    for (target, splits) in [([2i64, 2, 4, 3], true), ([4, 2, 2, 3], false)] {
        let mut g = G::new(&[Some(4), Some(2), Some(6)])
            .matrix("w", 6, 6, |_| 1.0)
            .ints("merge", &[4, -1, 3])
            .ints("back", &target)
            .op("MatMul", &["x", "w"], "q")
            .op("Reshape", &["q", "merge"], "h")
            .with(node("Transpose", "t", &["h"], &["t"], vec![crate::onnx::build::attr_ints("perm", &[1, 0, 2])]))
            .op("Reshape", &["t", "back"], "y");
        let dims = |d: &[i64]| d.iter().map(|&x| Some(x as usize)).collect::<Vec<_>>();
        g.0.value_info.push(value_info("t", DataType::Float, &dims(&[4, 4, 3])));
        g.0.value_info.push(value_info("y", DataType::Float, &dims(&target)));
        g.facts(|f| {
            let h = layout(f, "h").heads.expect("merged heads");
            assert_eq!((h.count, h.merged, h.axis), (2, true, -2));
            assert_eq!(layout(f, "t").heads.map(|h| (h.axis, h.merged)), Some((-3, true)));
            let y = layout(f, "y").heads;
            assert_eq!(y.map(|h| (h.axis, h.count, h.merged)), splits.then_some((-3, 2, false)), "{target:?}");
            assert_eq!(f.forced.of(v(f, "t")).is_empty(), splits, "{target:?}");
        });
    }
}

/// Bloom's packed projection, `[B, E] -> [B, H, 3, D]`: the target's last entry is not the
/// channel entries, so the reshape is followed by nothing. Its output gets no channels (a reader
/// tied to 12 channels there would bind the projection's constant ones), and the report names
/// the reshape with the projection's removable channels.
#[test]
fn a_reshape_splitting_channels_over_three_axes_lays_nothing_out_and_is_reported() {
    // Columns 0 and 7 of the projection are zero: constant (0) channels.
    let w: Vec<f32> = (0..4 * 12).map(|i| if i % 12 == 0 || i % 12 == 7 { 0.0 } else { 1.0 + i as f32 }).collect();
    let mut g = G::new(&[None, Some(4)]).ints("parts", &[-1, 2, 3, 2]).op("MatMul", &["x", "w"], "q");
    g.0.initializer.push(f32_tensor("w", &[4, 12], &w));
    let g = g.scalar("i", 0).op("Reshape", &["q", "parts"], "h").with(node(
        "Gather",
        "p",
        &["h", "i"],
        &["y"],
        vec![attr_int("axis", 2)],
    ));
    g.facts(|f| {
        assert_eq!(layout(f, "h").width, None);
        assert_eq!(layout(f, "y").width, None);
        assert!(f.forced.is_forced(v(f, "q")));
        let p = plan(f, &decide(f, InputPolicy::Keep), ClnForm::Ops).expect("a plan");
        let b = p.removals.blocked.iter().find(|b| b.values == ["q"]).expect("q is reported");
        assert_eq!((b.width, b.removable), (12, 2));
        assert_eq!(b.reasons[0].node.as_deref(), Some("h"));
    });
}

/// A constant channel that a rule needs (a padded Conv without border corrections reads a
/// non-zero constant at the borders) is reported with that node, though nothing is forced.
#[test]
fn a_constant_a_rule_needs_is_reported_with_the_node_that_needs_it() {
    let w1: Vec<f32> = (0..3 * 2).map(|i| if i / 2 == 1 { 0.0 } else { 1.0 }).collect();
    let mut g = G::new(&[Some(1), Some(2), Some(4), Some(4)]).vector("b1", &[0.5, 2.0, -1.0]);
    g.0.initializer.push(f32_tensor("w1", &[3, 2, 1, 1], &w1));
    g.0.initializer.push(f32_tensor("w2", &[2, 3, 3, 3], &[1.0; 2 * 3 * 9]));
    let pads = crate::onnx::build::attr_ints("pads", &[1, 1, 1, 1]);
    let g = g.op("Conv", &["x", "w1", "b1"], "h").with(node("Conv", "c2", &["h", "w2"], &["y"], vec![pads]));
    g.facts_with(false, |f| {
        assert_eq!(f.consts[v(f, "h")], vec![None, Some(2.0), None]);
        assert_eq!(f.needed[v(f, "h")], vec![true; 3]);
        let p = plan(f, &decide(f, InputPolicy::Keep), ClnForm::Ops).expect("a plan");
        let [b] = &p.removals.blocked[..] else { panic!("one block: {:?}", p.removals.blocked) };
        assert_eq!((b.values.as_slice(), b.width, b.removable), (&["h".to_string()][..], 3, 1));
        assert_eq!((b.reasons[0].code.as_str(), b.reasons[0].node.as_deref()), ("needs-constant", Some("c2")));
    });
    // With corrections the Conv adds the constant back itself: nothing to report.
    g.facts(|f| assert_eq!(f.needed[v(f, "h")], vec![true, false, true]));
}
