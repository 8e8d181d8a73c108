//! Lossless reading and writing.

use crate::common::fixture;
use onnx_minimize::onnx::proto::ModelProto;
use onnx_minimize::Model;
use prost::Message;

fn decode(path: &std::path::Path) -> ModelProto {
    ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap()
}

#[test]
fn a_model_read_and_written_unchanged_is_identical() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["lenet300_pruned_dynamo.onnx", "mlp_gelu_erf_ts.onnx", "mlp_constants_f16_ts.onnx"] {
        let out = dir.path().join(name);
        Model::load(&fixture(name)).unwrap().write(&out, false).unwrap();
        assert_eq!(decode(&fixture(name)), decode(&out), "{name}");
        // Byte-identical too: prost writes fields in the canonical order exporters use.
        assert_eq!(std::fs::read(fixture(name)).unwrap(), std::fs::read(&out).unwrap(), "{name}");
    }
}

#[test]
fn external_data_round_trips_and_inlines() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("lenet300_pruned_dynamo_ext.onnx");
    let m = Model::load(&src).unwrap();
    assert!(m.had_external_data);
    let ext = dir.path().join("ext.onnx");
    m.write(&ext, true).unwrap();
    let inline = dir.path().join("inline.onnx");
    m.write(&inline, false).unwrap();
    assert!(dir.path().join("ext.onnx.data").exists());
    // Every tensor reads back the same, whichever way it was stored.
    let (a, b) = (Model::load(&ext).unwrap(), Model::load(&inline).unwrap());
    assert_eq!(a.proto, b.proto);
    assert_eq!(a.proto, Model::load(&fixture("lenet300_pruned_dynamo.onnx")).unwrap().proto);
}

#[test]
fn a_failed_check_leaves_no_file_behind() {
    let dir = tempfile::tempdir().unwrap();
    let m = Model::load(&fixture("lenet300_pruned_dynamo_ext.onnx")).unwrap();
    let out = dir.path().join("out.onnx");
    let err = onnx_minimize::onnx::io::write_atomically(&m, &out, true, &mut |_| {}, |staged| {
        assert!(staged.exists() && staged.with_file_name("out.onnx.data").exists());
        Err(onnx_minimize::Error::Usage("refused".into()))
    });
    assert!(err.is_err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

fn every_fixture(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()) {
        if e.is_dir() {
            every_fixture(&e, out);
        } else if e.extension().is_some_and(|x| x == "onnx") {
            out.push(e);
        }
    }
}

/// The minimized model written by streaming its sliced weights from the input (what
/// `minimize_file` does) is byte for byte the model that `minimize` builds in memory and writes.
#[test]
fn streamed_weights_write_the_same_bytes_as_weights_built_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut fixtures = vec![];
    every_fixture(&fixture(""), &mut fixtures);
    assert!(fixtures.len() > 30, "{fixtures:?}");
    let read = |p: &std::path::Path| std::fs::read(p).unwrap_or_default();
    // The same file name in two folders: external data names its file.
    let (streamed, built) = (dir.path().join("streamed/m.onnx"), dir.path().join("built/m.onnx"));
    std::fs::create_dir_all(streamed.parent().unwrap()).unwrap();
    std::fs::create_dir_all(built.parent().unwrap()).unwrap();
    for src in &fixtures {
        for external in [false, true] {
            let opts = onnx_minimize::Options { verify: None, external_data: Some(external), ..Default::default() };
            onnx_minimize::minimize_file(src, Some(&streamed), &opts, &|_| {}).unwrap();
            let mut m = Model::load(src).unwrap();
            onnx_minimize::minimize(&mut m, &opts).unwrap();
            m.write(&built, external).unwrap();
            let data = |p: &std::path::Path| onnx_minimize::onnx::io::data_file(p);
            assert!(read(&streamed) == read(&built), "{} (external: {external})", src.display());
            assert!(read(&data(&streamed)) == read(&data(&built)), "{} (data)", src.display());
            let _ = std::fs::remove_file(data(&streamed));
            let _ = std::fs::remove_file(data(&built));
        }
    }
}

/// Block-wise verification, cut as finely as the weights allow, passes wherever whole-model
/// verification does: every committed fixture.
#[test]
fn blockwise_verification_agrees_with_whole_on_every_fixture() {
    use onnx_minimize::{VerifyMode, VerifyOptions};
    let dir = tempfile::tempdir().unwrap();
    let mut fixtures = vec![];
    every_fixture(&fixture(""), &mut fixtures);
    let out = dir.path().join("m.onnx");
    for src in &fixtures {
        let mut pieces = 0;
        for (mode, block_bytes) in [(VerifyMode::Whole, None), (VerifyMode::Blockwise, Some(4096))] {
            let v = VerifyOptions { mode, block_bytes, runs: 1, ..Default::default() };
            let opts = onnx_minimize::Options { verify: Some(v), ..Default::default() };
            let r = onnx_minimize::minimize_file(src, Some(&out), &opts, &|_| {})
                .unwrap_or_else(|e| panic!("{} ({mode:?}): {e}", src.display()));
            let v = r.verification.unwrap();
            pieces = v.pieces.unwrap_or(pieces);
            assert_eq!(v.mode, if mode == VerifyMode::Whole { "whole" } else { "blockwise" });
        }
        assert!(pieces >= 1, "{}", src.display());
    }
}
