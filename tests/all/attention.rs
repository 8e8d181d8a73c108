//! Real transformer exports (BERT, ViT; both PyTorch exporters) whose heads carry removable
//! query/key and value/output dimensions (fixtures/generate_attention.py): each projection
//! keeps exactly what the rules allow, tract verifies, and a second pass finds nothing more.

use crate::common::fixture;
use onnx_minimize::{minimize_file, Options};

#[test]
fn every_attention_fixture_loses_its_removable_head_dimensions() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("attention/expected.json")).unwrap()).unwrap();
    for (file, e) in expected.as_object().unwrap() {
        let (heads, dim) = (e["heads"].as_u64().unwrap() as usize, e["head_dim"].as_u64().unwrap() as usize);
        let (qk, vo) = (e["qk_kept"].as_u64().unwrap() as usize, e["vo_kept"].as_u64().unwrap() as usize);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.onnx");
        let r = minimize_file(&fixture(&format!("attention/{file}")), Some(&out), &Options::default(), &|_| {})
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(r.verification.is_some(), "{file}");
        // TorchScript's BERT splits heads with `view(*hidden.shape[:-1], -1, D)` on a projection
        // whose rank nothing declares: without it, `-1` could absorb a leading axis, so the split
        // is not proven and the heads stay whole (verified, nothing removed there).
        if file == "bert_ts.onnx" {
            assert!(r.after.params <= r.before.params, "{file}");
            continue;
        }
        let width = heads * dim;
        let layers = &r.removals.layers;
        // Per encoder layer: Q and K keep `qk` of each head, V keeps `vo`, O reads `vo`.
        let shrunk_out = |kept: usize| {
            layers.iter().filter(|l| l.outputs_before == width && l.outputs_after == heads * kept).count()
        };
        let shrunk_in = layers.iter().filter(|l| l.inputs_before == width && l.inputs_after == heads * vo).count();
        assert_eq!(
            (shrunk_out(qk) + if qk == vo { 0 } else { shrunk_out(vo) }, shrunk_in),
            (6, 2),
            "{file}: {layers:?}"
        );
        let again = minimize_file(&out, None, &Options { verify: None, ..Default::default() }, &|_| {}).unwrap();
        assert_eq!(again.after.params, again.before.params, "{file}: a second pass removes nothing more");
    }
}
