//! Convolutional patterns, built by hand, minimized, and checked by tract at several batch sizes.

use crate::common::{attr_i, layers_change_as_expected, write, G};
use onnx_minimize::onnx::proto::ModelProto;
use onnx_minimize::report::Report;
use onnx_minimize::{minimize_file, Options};

const B: Option<usize> = None;

fn minimize(m: &ModelProto) -> Report {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "in.onnx", m);
    let out = dir.path().join("out.onnx");
    let report = minimize_file(&input, Some(&out), &Options::default(), &|_| {}).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.verification.is_some());
    report
}

fn widths(r: &Report) -> Vec<(usize, usize)> {
    r.removals.layers.iter().map(|l| (l.inputs_after, l.outputs_after)).collect()
}

fn image() -> G {
    G::new("x", &[B, Some(3), Some(8), Some(8)])
}

fn bias(g: &mut G, name: &str, vals: &[f32]) {
    g.init(name, &[vals.len()], vals);
}

/// BatchNorm folded into the conv: a dead filter is a zero filter with a non-zero bias, a
/// constant channel. A 1x1 unpadded reader folds it into its bias; a padded 3x3 reader cannot (the
/// padding reads 0 at the borders, not the constant), so it adds the constant back after itself as
/// the convolution of a map of ones, exact at the borders too.
#[test]
fn constant_channels_fold_into_the_bias_or_a_border_correction() {
    let mut g = image();
    g.conv_weight("w1", 6, 3, 3, &[1, 2, 4], &[]);
    bias(&mut g, "b1", &[0.1, 0.7, 0.0, 0.2, -0.3, 0.5]);
    g.conv("x", "w1", Some("b1"), "c1", 1, 1).op("Relu", &["c1"], "r1", vec![]);
    // Channel 1 is the constant 0.7, channel 2 is 0, channel 4 is relu(-0.3) = 0.
    g.conv_weight("w2", 4, 6, 3, &[], &[]);
    bias(&mut g, "b2", &[0.0; 4]);
    g.conv("r1", "w2", Some("b2"), "c2", 1, 1).op("Relu", &["c2"], "r2", vec![]);
    g.conv_weight("w3", 5, 4, 1, &[3], &[]);
    bias(&mut g, "b3", &[0.1, 0.2, 0.3, 0.4, 0.5]);
    g.conv("r2", "w3", Some("b3"), "c3", 0, 1).op("Relu", &["c3"], "r3", vec![]);
    g.conv_weight("w4", 2, 5, 1, &[], &[]);
    g.conv("r3", "w4", None, "y", 0, 1);
    let r = minimize(&g.model("y", &[B, Some(2), Some(8), Some(8)]));
    // Layer 1's channel 1 (0.7) leaves through layer 2's border correction; channels 2 and 4
    // (zero) leave. Layer 3's channel 3 (constant 0.4 after ReLU) folds into the unpadded 1x1
    // reader's bias.
    assert_eq!(widths(&r), vec![(3, 3), (3, 4), (4, 4), (4, 2)]);
}

#[test]
fn depthwise_separable_with_batchnorm_and_pooling_into_a_flattened_head() {
    let mut g = image();
    g.conv_weight("w1", 8, 3, 1, &[0, 5], &[]);
    bias(&mut g, "b1", &[0.0, 0.1, 0.2, 0.3, 0.4, 0.0, 0.6, 0.7]);
    g.conv("x", "w1", Some("b1"), "c1", 0, 1);
    // Unfolded BatchNorm, as a TorchScript export with do_constant_folding=False leaves it.
    let ones = [1.0f32; 8];
    g.init("bn_s", &[8], &[1.0, 2.0, 0.5, 1.0, 1.0, 1.5, 1.0, 1.0]).init("bn_b", &[8], &[0.0; 8]);
    g.init("bn_m", &[8], &[0.0; 8]).init("bn_v", &[8], &ones);
    g.op("BatchNormalization", &["c1", "bn_s", "bn_b", "bn_m", "bn_v"], "bn", vec![]);
    g.op("Clip", &["bn"], "r1", vec![]);
    // Depthwise 3x3 (pad 1): channels 0 and 5 are exactly 0 in, so their outputs are the bias.
    g.conv_weight("dw", 8, 1, 3, &[3], &[]);
    bias(&mut g, "dwb", &[0.5; 8]);
    g.conv("r1", "dw", Some("dwb"), "d", 1, 8).op("Relu", &["d"], "r2", vec![]);
    g.op(
        "MaxPool",
        &["r2"],
        "p",
        vec![crate::common::attr_ints("kernel_shape", &[2, 2]), crate::common::attr_ints("strides", &[2, 2])],
    );
    g.conv_weight("w3", 4, 8, 1, &[2], &[]);
    g.conv("p", "w3", None, "c3", 0, 1);
    // [B, 4, 4, 4] flattened: each channel owns 16 features of the Gemm.
    g.op("Flatten", &["c3"], "f", vec![attr_i("axis", 1)]);
    g.weight("wfc", 3, 64, &[]);
    g.op("Gemm", &["f", "wfc"], "y", vec![attr_i("transB", 1)]);
    let r = minimize(&g.model("y", &[B, Some(3)]));
    // Channels 0, 5 (dead, through BN and depthwise: constant bias) and 3 (zero depthwise filter:
    // constant bias) leave layer 1 and the depthwise conv; layer 3's zero filter 2 leaves, and
    // with it 16 Gemm inputs.
    assert_eq!(widths(&r), vec![(3, 5), (5, 3), (48, 3)]);
}

#[test]
fn residual_concat_and_split_streams() {
    let mut g = image();
    g.conv_weight("wa", 6, 3, 3, &[0, 1], &[]).conv_weight("wb", 6, 3, 3, &[0, 2], &[]);
    g.conv("x", "wa", None, "a", 1, 1).conv("x", "wb", None, "b", 1, 1);
    // Residual: channel 0 is dead in both writers and leaves; 1 and 2 are dead in only one.
    g.op("Add", &["a", "b"], "s", vec![]).op("Relu", &["s"], "rs", vec![]);
    // Inception-style: concat the stream with a 4-channel branch whose channel 3 is dead.
    g.conv_weight("wc", 4, 3, 1, &[3], &[]);
    g.conv("x", "wc", None, "c", 0, 1);
    g.op("Concat", &["rs", "c"], "cat", vec![attr_i("axis", 1)]);
    // Split it back into 7 + 3 channels, each read by its own 1x1 conv, then summed.
    g.g.initializer.push(crate::common::int64_tensor("sizes", &[7, 3]));
    g.g.node.push(crate::common::node("Split", "split", &["cat", "sizes"], &["s1", "s2"], vec![attr_i("axis", 1)]));
    g.conv_weight("w1", 2, 7, 1, &[], &[]).conv_weight("w2", 2, 3, 1, &[], &[]);
    g.conv("s1", "w1", None, "y1", 0, 1).conv("s2", "w2", None, "y2", 0, 1);
    g.op("Add", &["y1", "y2"], "y", vec![]);
    let r = minimize(&g.model("y", &[B, Some(2), Some(8), Some(8)]));
    // cat = [rs(6) | c(4)] loses rs channel 0 and c channel 3: the split's first part (rs and
    // c0) keeps 6 of 7, the second (c1..c3) 2 of 3. Layers in topological order: wc, wa, wb, w2, w1.
    assert_eq!(widths(&r), vec![(3, 3), (3, 5), (3, 5), (2, 2), (6, 2)]);
}

/// A transposed convolution is a linear layer stored inputs first; a constant input never folds
/// into it (its border outputs gather fewer taps), but a zero one leaves, and so does an input no
/// filter reads; a zero filter makes a constant output that the next 1x1 Conv folds.
#[test]
fn transposed_convolutions_shrink_on_both_sides() {
    let mut g = G::new("x", &[B, Some(3), Some(4), Some(4)]);
    g.conv_weight("w1", 6, 3, 3, &[2], &[]).init("b1", &[6], &[0.1, 0.2, -0.5, 0.3, 0.4, 0.5]);
    g.conv("x", "w1", Some("b1"), "c1", 1, 1).op("Relu", &["c1"], "r1", vec![]);
    // ConvTranspose weight [in 6, out 4, 2, 2]: input 5 unread, output 1 all zero.
    let mut wt = g.rand(6 * 4 * 4);
    for c in 0..6 {
        for o in 0..4 {
            if c == 5 || o == 1 {
                wt[(c * 4 + o) * 4..(c * 4 + o + 1) * 4].iter_mut().for_each(|v| *v = 0.0);
            }
        }
    }
    g.init("wt", &[6, 4, 2, 2], &wt).init("bt", &[4], &[0.1, 0.7, -0.2, 0.3]);
    let strides = crate::common::attr_ints("strides", &[2, 2]);
    g.op("ConvTranspose", &["r1", "wt", "bt"], "t", vec![strides]).op("Relu", &["t"], "r2", vec![]);
    g.conv_weight("w2", 2, 4, 1, &[], &[]).conv("r2", "w2", None, "y", 0, 1);
    let r = minimize(&g.model("y", &[B, Some(2), Some(8), Some(8)]));
    assert_eq!(widths(&r), vec![(3, 4), (4, 3), (3, 2)]);
}

/// A grouped convolution (group 2): input entries leave only where both groups lose them, and
/// so do outputs, so every group keeps the same width and `group` stays 2.
#[test]
fn grouped_convolutions_shrink_the_same_entries_in_every_group() {
    let mut g = G::new("x", &[B, Some(4), Some(6), Some(6)]);
    g.conv_weight("w1", 8, 4, 1, &[], &[]).conv("x", "w1", None, "c1", 0, 1).op("Relu", &["c1"], "r1", vec![]);
    // Grouped weight [6, 4, 3, 3]: local input 1 (channels 1 and 5) unread; outputs 1 and 4
    // (local 1 of each group) zero filters; local input 2 unread in group 0 only (channel 2).
    let mut wg = g.rand(6 * 4 * 9);
    for o in 0..6 {
        for i in 0..4 {
            if i == 1 || o == 1 || o == 4 || (i == 2 && o < 3) {
                wg[(o * 4 + i) * 9..(o * 4 + i + 1) * 9].iter_mut().for_each(|v| *v = 0.0);
            }
        }
    }
    g.init("wg", &[6, 4, 3, 3], &wg).init("bg", &[6], &[0.1, 0.5, 0.2, 0.3, 0.4, 0.6]);
    g.conv("r1", "wg", Some("bg"), "c2", 1, 2).op("Relu", &["c2"], "r2", vec![]);
    g.conv_weight("w3", 2, 6, 1, &[], &[]).conv("r2", "w3", None, "y", 0, 1);
    let r = minimize(&g.model("y", &[B, Some(2), Some(6), Some(6)]));
    assert_eq!(widths(&r), vec![(4, 6), (6, 4), (4, 2)]);
}

/// Pad and Resize over space, reductions over space, Unsqueeze and Squeeze of other axes: the
/// channels pass through. A zero constant stays constant through zero padding; a non-zero one
/// does not (the border reads the pad value), so it stays.
#[test]
fn spatial_resampling_reductions_and_squeezes_keep_channels_apart() {
    let mut g = G::new("x", &[None, Some(3), Some(4), Some(4)]);
    g.conv_weight("w", 6, 3, 1, &[1, 4], &[]).init("b", &[6], &[0.1, 0.0, 0.3, 0.2, 0.5, 0.4]);
    g.conv("x", "w", Some("b"), "c", 0, 1).op("Relu", &["c"], "r", vec![]);
    g.g.initializer.extend([
        crate::common::int64_tensor("pads", &[0, 0, 1, 1, 0, 0, 1, 1]),
        crate::common::int64_tensor("spatial", &[2, 3]),
        crate::common::int64_tensor("one", &[1]),
    ]);
    g.init("scales", &[4], &[1.0, 1.0, 2.0, 2.0]);
    g.op("Pad", &["r", "pads"], "p", vec![]).op("Resize", &["p", "", "scales"], "up", vec![]);
    g.op("ReduceSum", &["up", "spatial"], "s", vec![attr_i("keepdims", 0)]);
    g.op("Unsqueeze", &["s", "one"], "u", vec![]).op("Squeeze", &["u", "one"], "f", vec![]);
    let mut wfc = g.rand(2 * 6);
    wfc[2] = 0.0;
    wfc[8] = 0.0; // column 2 unread
    g.init("wfc", &[2, 6], &wfc);
    g.op("Gemm", &["f", "wfc"], "y", vec![attr_i("transB", 1)]);
    let r = minimize(&g.model("y", &[None, Some(2)]));
    assert_eq!(widths(&r), vec![(3, 4), (4, 2)]);
}

/// Resize to constant sizes names the channel axis's length too: it follows the kept width.
#[test]
fn resize_sizes_follow_the_kept_channels() {
    let mut g = G::new("x", &[Some(1), Some(3), Some(4), Some(4)]);
    g.conv_weight("w", 6, 3, 1, &[2], &[]).init("b", &[6], &[0.1, 0.2, 0.0, 0.3, 0.4, 0.5]);
    g.conv("x", "w", Some("b"), "c", 0, 1);
    g.g.initializer.push(crate::common::int64_tensor("sizes", &[1, 6, 8, 8]));
    g.op("Resize", &["c", "", "", "sizes"], "up", vec![]);
    g.conv_weight("w2", 2, 6, 1, &[], &[]).conv("up", "w2", None, "y", 0, 1);
    let r = minimize(&g.model("y", &[Some(1), Some(2), Some(8), Some(8)]));
    assert_eq!(widths(&r), vec![(3, 5), (5, 2)]);
}

/// The dynamo exporter's adaptive pooling: spatial axes moved in front, positions picked by
/// GatherND with constant indices, moved back; the channels pass through, constants too.
#[test]
fn gathernd_pooling_passes_channels_through() {
    let mut g = G::new("x", &[B, Some(3), Some(4), Some(4)]);
    g.conv_weight("w", 6, 3, 1, &[1, 4], &[]).init("b", &[6], &[0.1, 0.0, 0.3, 0.2, 0.7, 0.4]);
    g.conv("x", "w", Some("b"), "c", 0, 1).op("Relu", &["c"], "r", vec![]);
    let perm = |p: &[i64]| vec![crate::common::attr_ints("perm", p)];
    g.op("Transpose", &["r"], "hw_first", perm(&[2, 3, 0, 1]));
    g.g.initializer.push(onnx_minimize::onnx::proto::TensorProto {
        dims: vec![2, 2, 2],
        ..crate::common::int64_tensor("positions", &[0, 0, 1, 3, 3, 1, 2, 2])
    });
    g.op("GatherND", &["hw_first", "positions"], "picked", vec![]);
    g.op("Transpose", &["picked"], "pooled", perm(&[2, 3, 0, 1]));
    g.op("Flatten", &["pooled"], "f", vec![attr_i("axis", 1)]).weight("wfc", 3, 24, &[]);
    g.op("Gemm", &["f", "wfc"], "y", vec![attr_i("transB", 1)]);
    let r = minimize(&g.model("y", &[B, Some(3)]));
    assert_eq!(widths(&r), vec![(3, 4), (16, 3)]);
}

/// ViT's patch embedding as TorchScript writes `x.flatten(2).transpose(1, 2)`: the target reads
/// the first two dimensions of x back (`Concat(Slice(Shape(x), 0, 2), [-1])`), so the channel
/// axis stays where it is and the spatial axes merge after it.
#[test]
fn flattening_the_axes_after_the_channels_keeps_them_apart() {
    let mut g = G::new("x", &[B, Some(3), Some(4), Some(4)]);
    g.conv_weight("w", 6, 3, 1, &[2, 5], &[]).init("b", &[6], &[0.1, 0.2, 0.0, 0.3, 0.4, 0.5]);
    g.conv("x", "w", Some("b"), "c", 0, 1).op("Relu", &["c"], "r", vec![]);
    g.g.initializer.extend([
        crate::common::int64_tensor("zero", &[0]),
        crate::common::int64_tensor("two", &[2]),
        crate::common::int64_tensor("minus_one", &[-1]),
    ]);
    g.op("Shape", &["r"], "s", vec![]).op("Slice", &["s", "zero", "two"], "lead", vec![]);
    g.op("Concat", &["lead", "minus_one"], "target", vec![attr_i("axis", 0)]);
    g.op("Reshape", &["r", "target"], "flat", vec![]);
    g.op("Transpose", &["flat"], "tokens", vec![crate::common::attr_ints("perm", &[0, 2, 1])]);
    g.weight("wl", 6, 2, &[]).op("MatMul", &["tokens", "wl"], "y", vec![]);
    let r = minimize(&g.model("y", &[B, Some(16), Some(2)]));
    assert_eq!(widths(&r), vec![(3, 4), (4, 2)]);
}

/// ConvNeXt V2's global response normalization divides each channel's spatial norm by the mean
/// of the norms over the channels: a zero channel adds nothing to the sum, so it leaves and the
/// mean keeps the original divisor. A maximum over the channels sees every channel (a zero one
/// wins where the others are negative): it keeps them all.
#[test]
fn zero_channels_leave_sums_and_means_over_the_channels() {
    for (over_channels, expected) in [
        ("ReduceMean", vec![(3, 4), (4, 2)]),
        ("ReduceSumSquare", vec![(3, 4), (4, 2)]),
        ("ReduceMax", vec![(3, 6), (6, 2)]),
    ] {
        let mut g = image();
        g.conv_weight("w1", 6, 3, 3, &[1, 4], &[]);
        bias(&mut g, "b1", &[0.1, 0.0, 0.2, -0.3, 0.0, 0.5]);
        g.conv("x", "w1", Some("b1"), "h", 1, 1);
        g.init("eps", &[1], &[1e-6]).init("gamma", &[1, 6, 1, 1], &[0.5, 1.5, -1.0, 2.0, 0.7, 0.3]);
        let keep = || crate::common::attr_i("keepdims", 1);
        g.op("ReduceL2", &["h"], "gx", vec![crate::common::attr_ints("axes", &[2, 3]), keep()]);
        g.op(over_channels, &["gx"], "m", vec![crate::common::attr_ints("axes", &[1]), keep()]);
        g.op("Add", &["m", "eps"], "me", vec![]).op("Div", &["gx", "me"], "nx", vec![]);
        g.op("Mul", &["h", "nx"], "hn", vec![]).op("Mul", &["gamma", "hn"], "s", vec![]);
        g.op("Add", &["s", "h"], "a", vec![]);
        g.conv_weight("w2", 2, 6, 1, &[], &[]);
        g.conv("a", "w2", None, "y", 0, 1);
        let r = minimize(&g.model("y", &[B, Some(2), Some(8), Some(8)]));
        assert_eq!(widths(&r), expected, "{over_channels}");
    }
}

/// ShuffleNetV2 (torchvision, both exporters; fixtures/generate_shuffle.py): dead channels
/// travel through the channel shuffles (`view`, `transpose`, `view`: one permutation, written
/// back as a Gather of the kept channels) and the halves that skip a branch, and every layer
/// loses exactly what PyTorch sees is zero.
#[test]
fn dead_channels_leave_through_channel_shuffles() {
    layers_change_as_expected("shuffle");
}

/// A channel shuffle by hand: 8 channels split into 2 x 4, swapped, merged, so output channel
/// `2b + a` is input channel `4a + b`. The first conv's dead filters 1 and 6 are the shuffled
/// channels 2 and 5, whose columns leave the second conv. Regrouping the spatial axes as well
/// (`[-1, 2, 4, 2, 8]`: no longer a permutation of channels) keeps everything.
#[test]
fn a_channel_shuffle_moves_dead_channels_to_their_new_places() {
    for regroups in [false, true] {
        let mut g = G::new("x", &[B, Some(3), Some(4), Some(4)]);
        g.conv_weight("w1", 8, 3, 1, &[1, 6], &[]);
        g.conv("x", "w1", None, "c1", 0, 1);
        let split: &[i64] = if regroups { &[-1, 2, 4, 2, 8] } else { &[-1, 2, 4, 4, 4] };
        g.g.initializer.extend([
            crate::common::int64_tensor("split", split),
            crate::common::int64_tensor("merge", &[-1, 8, 4, 4]),
        ]);
        g.op("Reshape", &["c1", "split"], "s", vec![]).op(
            "Transpose",
            &["s"],
            "t",
            vec![crate::common::attr_ints("perm", &[0, 2, 1, 3, 4])],
        );
        g.op("Reshape", &["t", "merge"], "m", vec![]);
        g.conv_weight("w2", 5, 8, 1, &[], &[]);
        g.conv("m", "w2", None, "y", 0, 1);
        let r = minimize(&g.model("y", &[B, Some(5), Some(4), Some(4)]));
        let expected = if regroups { vec![(3, 8), (8, 5)] } else { vec![(3, 6), (6, 5)] };
        assert_eq!(widths(&r), expected, "regroups: {regroups}");
    }
}
