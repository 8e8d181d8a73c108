//! Models quantized by ONNX Runtime's static quantizer in the QDQ format
//! (fixtures/generate_quantized.py): int8 and uint8 weights, per tensor and per channel, int32
//! biases, activation quantizers, constants behind a `QuantizeLinear`. Each shrinks, exactly (tract
//! runs both on fresh inputs), to the widths the generator expects, and stays quantized: every
//! weight is still stored as integers, nothing is stored as float that was not, no node is added
//! for the constants that left, nothing in the output is unread, and a second pass changes
//! nothing.

use std::collections::HashSet;

use crate::common::{changed_layers, fixture};
use onnx_minimize::onnx::proto::GraphProto;
use onnx_minimize::{minimize_file, Model, Options};

/// Bytes of the tensors stored in a graph, whichever field holds them, but for shape constants
/// (int64: a head split's targets get private copies).
fn weight_bytes(g: &GraphProto) -> i64 {
    let size = |data_type: i32| match data_type {
        2 | 3 => 1,           // uint8, int8
        4 | 5 | 10 | 16 => 2, // uint16, int16, float16, bfloat16
        1 | 6 => 4,           // float, int32
        11 => 8,              // double
        _ => 0,
    };
    g.initializer.iter().map(|t| t.dims.iter().product::<i64>() * size(t.data_type())).sum()
}

/// Elements of the float tensors stored in a graph (scales, and whatever is not quantized).
fn float_elements(g: &GraphProto) -> i64 {
    let floats = g.initializer.iter().filter(|t| t.data_type == Some(1));
    floats.map(|t| t.dims.iter().product::<i64>()).sum()
}

/// The inputs of weighted layers that no `DequantizeLinear` makes: weights left float.
fn float_weights(g: &GraphProto) -> Vec<String> {
    let dequantized: HashSet<&str> = g
        .node
        .iter()
        .filter(|n| n.op_type() == "DequantizeLinear")
        .flat_map(|n| n.output.iter().map(String::as_str))
        .collect();
    let layers = g.node.iter().filter(|n| matches!(n.op_type(), "Conv" | "Gemm" | "MatMul"));
    layers
        .flat_map(|n| n.input.iter().skip(1))
        .filter(|i| g.initializer.iter().any(|t| t.name() == i.as_str()) && !dequantized.contains(i.as_str()))
        .cloned()
        .collect()
}

#[test]
fn quantized_models_shrink_exactly_and_stay_quantized() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("quantized/expected.json")).unwrap()).unwrap();
    for (file, e) in expected.as_object().unwrap() {
        let dir = tempfile::tempdir().unwrap();
        let (src, out) = (fixture(&format!("quantized/{file}")), dir.path().join("out.onnx"));
        let r = minimize_file(&src, Some(&out), &Options::default(), &|_| {}).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(r.verification.is_some(), "{file}");
        assert!(r.after.params < r.before.params, "{file}: {:?}", r.after);
        assert!(r.removals.stored_float.is_empty(), "{file}: {:?}", r.removals.stored_float);
        if let Some(hidden) = e.get("hidden") {
            let hidden: Vec<usize> = serde_json::from_value(hidden.clone()).unwrap();
            let layers = &r.removals.layers;
            let widths: Vec<usize> = layers[..layers.len() - 1].iter().map(|l| l.outputs_after).collect();
            assert_eq!(widths, hidden, "{file}");
        }
        if let Some(changed) = e.get("changed_layers") {
            let want: Vec<[usize; 4]> = serde_json::from_value(changed.clone()).unwrap();
            assert_eq!(changed_layers(&r), want, "{file}");
        }

        let (before, after) = (Model::load(&src).unwrap(), Model::load(&out).unwrap());
        let (g0, g1) = (before.graph(), after.graph());
        assert!(float_weights(g1).is_empty(), "{file}: float weights {:?}", float_weights(g1));
        assert!(float_elements(g1) <= float_elements(g0), "{file}: floats grew");
        assert!(weight_bytes(g1) < weight_bytes(g0), "{file}: weights did not shrink");
        // A weight two layers share gets a copy (and its dequantizer) per slice they keep; no
        // other node is added for the channels that left.
        let computing = |g: &GraphProto| g.node.iter().filter(|n| n.op_type() != "DequantizeLinear").count();
        assert!(computing(g1) <= computing(g0), "{file}: nodes were added");
        let read: HashSet<&str> = g1
            .node
            .iter()
            .flat_map(|n| n.input.iter())
            .chain(g1.output.iter().filter_map(|o| o.name.as_ref()))
            .map(String::as_str)
            .collect();
        let unread: Vec<&str> =
            g1.node.iter().flat_map(|n| n.output.iter()).map(String::as_str).filter(|o| !read.contains(o)).collect();
        assert!(unread.is_empty(), "{file}: nothing reads {unread:?}");

        let opts = Options { verify: None, ..Default::default() };
        let again = minimize_file(&out, None, &opts, &|_| {}).unwrap();
        assert_eq!(again.after.params, again.before.params, "{file}: a second pass removes nothing more");
    }
}
