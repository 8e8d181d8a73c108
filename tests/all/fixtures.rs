//! Every committed PyTorch export: minimized, verified by tract, and shrunk exactly as far as
//! the generator (which knows the pruned units from the PyTorch side) says is possible.

use crate::common::fixture;
use onnx_minimize::{minimize_file, Options};

/// The fixtures a generator's manifest lists, with what it knows about each.
fn manifest(path: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(fixture(path)).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    manifest["fixtures"].as_array().unwrap().clone()
}

#[test]
fn every_fixture_shrinks_to_its_fixpoint_and_verifies() {
    let fixtures = manifest("manifest.json");
    let dir = tempfile::tempdir().unwrap();
    assert!(fixtures.len() >= 17);
    for f in &fixtures {
        let file = f["file"].as_str().unwrap();
        let out = dir.path().join(file);
        let report = minimize_file(&fixture(file), Some(&out), &Options::default(), &|_| {})
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let v = report.verification.as_ref().expect("verified");
        assert_eq!(v.runs, 3, "{file}");
        assert!(v.input_shapes.iter().any(|s| s[0][0] != 1), "{file}: tried another batch size");
        for (i, layer) in f["hidden_layers"].as_array().unwrap().iter().enumerate() {
            let expected = layer["fixpoint"]["remaining"].as_u64().unwrap() as usize;
            assert_eq!(report.removals.layers[i].outputs_after, expected, "{file}: hidden layer {i}");
            assert_eq!(report.removals.layers[i + 1].inputs_after, expected, "{file}: layer {} inputs", i + 1);
        }
        assert!(report.after.params < report.before.params, "{file}");
        assert!(report.after.bytes < report.before.bytes, "{file}");
        let last = report.removals.layers.last().unwrap();
        assert_eq!(last.outputs_after, last.outputs_before, "{file}: graph outputs keep their shape");
        if let Some(unused) = f["unused_input_features"].as_u64().filter(|&u| u > 0) {
            let input =
                report.removals.blocked.iter().find(|b| b.reasons.iter().any(|r| r.code == "graph-input")).unwrap();
            assert_eq!(input.removable as u64, unused, "{file}: unused input features are reported");
        }
        if f["unused_input_features"].as_u64().is_some_and(|u| u > 0) {
            let opts = Options { gather_inputs: true, ..Default::default() };
            let gathered = minimize_file(&fixture(file), Some(&dir.path().join("g.onnx")), &opts, &|_| {}).unwrap();
            let unused = f["unused_input_features"].as_u64().unwrap() as usize;
            assert_eq!(
                gathered.removals.layers[0].inputs_after,
                gathered.removals.layers[0].inputs_before - unused,
                "{file}"
            );
            assert!(gathered.after.params < report.after.params);
        }
        // One pass reaches the fixed point: a second finds nothing more.
        let again = minimize_file(&out, None, &Options { verify: None, ..Default::default() }, &|_| {}).unwrap();
        assert!(
            again
                .removals
                .layers
                .iter()
                .all(|l| l.outputs_after == l.outputs_before && l.inputs_after == l.inputs_before),
            "{file}"
        );
        // The output keeps the input's storage: external data stays external.
        assert_eq!(f["external_data"].is_string(), dir.path().join(format!("{file}.data")).exists(), "{file}");
    }
}

/// Every committed CNN export: verified by tract, and each convolution or linear layer keeps
/// exactly the channels the generator's own analysis (on the PyTorch side, with the padding rule
/// and its border correction) says an exact minimizer must keep.
#[test]
fn every_cnn_fixture_shrinks_exactly_as_far_as_its_generator_expects() {
    let fixtures = manifest("cnn/manifest.json");
    let dir = tempfile::tempdir().unwrap();
    assert!(fixtures.len() >= 14);
    for f in &fixtures {
        let file = format!("cnn/{}", f["file"].as_str().unwrap());
        let out = dir.path().join(f["file"].as_str().unwrap());
        let report = minimize_file(&fixture(&file), Some(&out), &Options::default(), &|_| {})
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(report.verification.is_some());
        assert!(report.after.params < report.before.params, "{file}");
        for layer in f["layers"].as_array().unwrap().iter().filter(|l| l["treated_as"] == "linear") {
            let node = layer["node"].as_str().unwrap();
            let ours = report
                .removals
                .layers
                .iter()
                .find(|l| l.node == node)
                .unwrap_or_else(|| panic!("{file}: {node} not reported"));
            assert_eq!(ours.outputs_after as u64, layer["remaining"].as_u64().unwrap(), "{file}: {node}");
        }
        let again = minimize_file(&out, None, &Options { verify: None, ..Default::default() }, &|_| {}).unwrap();
        assert_eq!(again.after.params, again.before.params, "{file}: one pass reaches the fixed point");
    }
}

/// ConvNeXt exports (our own, Hugging Face's, and one with decomposed LayerNorms): stream
/// channels leave through CompensatedLayerNorm where every reader allows, MLP units leave, and
/// every layer keeps exactly what the generator's float64 PyTorch reduction kept.
#[test]
fn every_convnext_fixture_shrinks_its_streams_through_compensated_layernorm() {
    let fixtures = manifest("convnext/manifest.json");
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(fixtures.len(), 8);
    for f in &fixtures {
        let name = f["file"].as_str().unwrap();
        let out = dir.path().join(name);
        let report = minimize_file(&fixture(&format!("convnext/{name}")), Some(&out), &Options::default(), &|_| {})
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(report.verification.is_some());
        // The generator assumed decomposed LayerNorms stay opaque; they are recognised and
        // compensated, so that model shrinks exactly like our own with LayerNormalization.
        let decomposed = name.contains("decomposed");
        if !decomposed {
            for layer in f["layers"].as_array().unwrap() {
                let node = layer["node"].as_str().unwrap();
                let Some(ours) = report.removals.layers.iter().find(|l| l.node == node) else { continue };
                let expected =
                    (layer["in_after"].as_u64().unwrap() as usize, layer["out_after"].as_u64().unwrap() as usize);
                assert_eq!((ours.inputs_after, ours.outputs_after), expected, "{name}: {node}");
            }
        }
        assert!(
            report.removals.blocked.iter().all(|b| b.reasons.iter().all(|r| !r.message.contains("ReduceMean"))),
            "{name}"
        );
        let like = if decomposed { name.replace("decomposed", "own") } else { name.to_string() };
        let f = fixtures.iter().find(|g| g["file"] == like.as_str()).unwrap();
        // Beyond the generator's count: the compensation constants (a few per LayerNorm), and
        // per LayerNorm whose zero scales silence outputs its readers folded, the Gather's
        // indices of the outputs it keeps (and the stem's constants for outputs kept whose
        // input left).
        let expected = f["expected"]["parameters_after"].as_u64().unwrap();
        assert!(
            report.after.params >= expected && report.after.params <= expected + 300,
            "{name}: {} vs {expected}",
            report.after.params
        );
        let again = minimize_file(&out, None, &Options { verify: None, ..Default::default() }, &|_| {}).unwrap();
        assert_eq!(again.after.params, again.before.params, "{name}: one pass reaches the fixed point");
    }
}

/// Recurrent layers as both exporters write them (LSTM, GRU, RNN, a bidirectional LSTM whose
/// directions merge into the features): dead and unread hidden units and unread input features
/// leave, exactly as far as the generator's PyTorch-side algebra says.
#[test]
fn every_recurrent_fixture_loses_the_units_its_generator_expects() {
    let fixtures = manifest("recurrent/manifest.json");
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(fixtures.len(), 7);
    for f in &fixtures {
        let name = f["file"].as_str().unwrap();
        let out = dir.path().join(name);
        let report = minimize_file(&fixture(&format!("recurrent/{name}")), Some(&out), &Options::default(), &|_| {})
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(report.verification.is_some());
        let want = &f["recurrent"];
        let layer = report.removals.layers.iter().find(|l| l.op == want["op"].as_str().unwrap()).unwrap();
        let count = |k: &str| want[k].as_u64().unwrap() as usize;
        assert_eq!((layer.inputs_after, layer.outputs_after), (count("inputs_after"), count("units_after")), "{name}");
        assert_eq!(report.removals.layers[0].outputs_after, count("first_linear_after"), "{name}");
        let again = minimize_file(&out, None, &Options { verify: None, ..Default::default() }, &|_| {}).unwrap();
        assert_eq!(again.after.params, again.before.params, "{name}: one pass reaches the fixed point");
    }
}
