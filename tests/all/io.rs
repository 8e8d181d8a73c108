//! Lossless reading and writing.

use crate::common::{fixture, read};
use onnx_minimize::onnx::proto::ModelProto;
use onnx_minimize::Model;

#[test]
fn a_model_read_and_written_unchanged_is_identical() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["lenet300_pruned_dynamo.onnx", "mlp_gelu_erf_ts.onnx", "mlp_constants_f16_ts.onnx"] {
        let out = dir.path().join(name);
        Model::load(&fixture(name)).unwrap().write(&out, false).unwrap();
        assert_eq!(read(&fixture(name)), read(&out), "{name}");
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

/// Models no runtime would accept are refused before anything is analysed, each with an error
/// naming the tensor, value or node at fault, and no output.
#[test]
fn malformed_graphs_are_refused_by_name() {
    use crate::common::{mlp, write, Form, Layer};
    use onnx_minimize::onnx::proto::NodeProto;
    let base = || {
        let layer = |n_in, n_out| Layer {
            n_in,
            n_out,
            w: (0..n_in * n_out).map(|i| i as f32 - 3.0).collect(),
            bias: Some(vec![0.5; n_out]),
            form: Form::Gemm { trans_b: true, alpha: 1.0, beta: 1.0 },
            act: Some("Relu"),
        };
        mlp(&[layer(3, 4), layer(4, 2)])
    };
    fn graph(m: &mut ModelProto) -> &mut onnx_minimize::onnx::proto::GraphProto {
        m.graph.as_mut().unwrap()
    }
    type Mutation = Box<dyn Fn(&mut ModelProto)>;
    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "duplicate initializer",
            Box::new(|m| {
                let t = graph(m).initializer[0].clone();
                graph(m).initializer.push(t)
            }),
            "two initializers are named",
        ),
        ("undefined input", Box::new(|m| graph(m).node[1].input[0] = "nothing".into()), "reads 'nothing'"),
        (
            "two writers",
            Box::new(|m| {
                let n: NodeProto = graph(m).node[1].clone();
                graph(m).node.push(NodeProto { name: Some("again".into()), ..n })
            }),
            "every value has one writer",
        ),
        ("negative dims", Box::new(|m| graph(m).initializer[0].dims[0] = -4), "negative dimensions"),
        ("short data", Box::new(|m| graph(m).initializer[0].dims[0] = 1 << 40), "holds"),
        (
            "cycle",
            Box::new(|m| {
                let out = graph(m).node[1].output[0].clone();
                graph(m).node[0].input[0] = out
            }),
            "cycle",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (what, mutate, expected) in cases {
        let mut m = base();
        mutate(&mut m);
        let src = write(dir.path(), "bad.onnx", &m);
        let out = dir.path().join("out.onnx");
        let err = onnx_minimize::minimize_file(&src, Some(&out), &onnx_minimize::Options::default(), &|_| {})
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(matches!(err, onnx_minimize::Error::Invalid { .. }), "{what}: {err}");
        assert!(err.to_string().contains(expected), "{what}: {err}");
        assert_eq!(err.exit_code(), 1, "{what}");
        assert!(!out.exists(), "{what}");
    }
}

/// External data reached through a symlink that leaves the model's folder is refused.
#[cfg(unix)]
#[test]
fn external_data_outside_the_model_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = Model::load(&fixture("lenet300_pruned_dynamo_ext.onnx")).unwrap();
    let elsewhere = dir.path().join("elsewhere");
    let folder = dir.path().join("model");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::create_dir_all(&folder).unwrap();
    m.write(&elsewhere.join("m.onnx"), true).unwrap();
    std::fs::copy(elsewhere.join("m.onnx"), folder.join("m.onnx")).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("m.onnx.data"), folder.join("m.onnx.data")).unwrap();
    let err = Model::load(&folder.join("m.onnx")).err().expect("refused");
    assert!(err.to_string().contains("outside the model's folder"), "{err}");
    assert!(Model::load(&elsewhere.join("m.onnx")).is_ok());
}

/// External tensors of 1 MiB and more start at 64 KiB boundaries (so onnxruntime can map them),
/// and read back unchanged.
#[test]
fn large_external_tensors_are_aligned() {
    use crate::common::{mlp, write, Form, Layer};
    let layer = |n_in: usize, n_out: usize| Layer {
        n_in,
        n_out,
        w: (0..n_in * n_out).map(|i| (i % 7) as f32 - 3.0).collect(),
        bias: Some(vec![0.5; n_out]),
        form: Form::Gemm { trans_b: true, alpha: 1.0, beta: 1.0 },
        act: Some("Relu"),
    };
    // 300 x 1000 floats = 1.2 MB after a 12 KB weight: the second needs padding.
    let m = mlp(&[layer(3, 1000), layer(1000, 300)]);
    let dir = tempfile::tempdir().unwrap();
    let src = write(dir.path(), "m.onnx", &m);
    let out = dir.path().join("ext.onnx");
    Model::load(&src).unwrap().write(&out, true).unwrap();
    let stored = read(&out);
    let mut large = 0;
    for t in &stored.graph.unwrap().initializer {
        let entry =
            |k: &str| t.external_data.iter().find(|e| e.key() == k).map(|e| e.value().parse::<usize>().unwrap());
        if let (Some(offset), Some(length)) = (entry("offset"), entry("length")) {
            if length >= 1 << 20 {
                assert_eq!(offset % (64 << 10), 0, "{}", t.name());
                large += 1;
            }
        }
    }
    assert_eq!(large, 1);
    assert_eq!(Model::load(&out).unwrap().proto, Model::load(&src).unwrap().proto);
}

/// When tract cannot run a model on the shapes guessed for its dynamic dimensions, the error says
/// which input got which shape and what to pass instead.
#[test]
fn a_model_tract_cannot_run_on_guessed_shapes_names_the_input() {
    use crate::common::{int64_tensor, node, value_info, write};
    use onnx_minimize::onnx::proto::{tensor_proto::DataType, GraphProto, OperatorSetIdProto};
    // Frames of 4 samples: any length the guesses try (1, 3, 2) fails to reshape.
    let g = GraphProto {
        name: Some("frames".into()),
        node: vec![node("Reshape", "frame", &["audio", "shape"], &["y"], vec![])],
        initializer: vec![int64_tensor("shape", &[-1, 4])],
        input: vec![value_info("audio", DataType::Float, &[None])],
        output: vec![value_info("y", DataType::Float, &[None, Some(4)])],
        ..Default::default()
    };
    let m = ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(17) }],
        graph: Some(g),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let src = write(dir.path(), "frames.onnx", &m);
    let out = dir.path().join("out.onnx");
    for mode in [onnx_minimize::VerifyMode::Whole, onnx_minimize::VerifyMode::Blockwise] {
        let verify = onnx_minimize::VerifyOptions { mode, ..Default::default() };
        let opts = onnx_minimize::Options { verify: Some(verify), ..Default::default() };
        let err = onnx_minimize::minimize_file(&src, Some(&out), &opts, &|_| {})
            .expect_err("tract cannot reshape 1 sample into frames of 4");
        let text = err.to_string();
        assert!(text.contains("'audio'") && text.contains("--input-shape"), "{mode:?}: {text}");
        assert!(!out.exists());
    }
}

/// The dynamo exporter (and ONNX Runtime's quantizer) declare shapes for weights too: a weight
/// that shrinks is declared at its new shape, or shape inference refuses the model.
#[test]
fn shrunk_weights_are_declared_at_their_new_shapes() {
    use onnx_minimize::onnx::proto::{tensor_shape_proto::dimension::Value, type_proto};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let opts = onnx_minimize::Options { verify: None, ..Default::default() };
    onnx_minimize::minimize_file(&fixture("mlp_constants_dynamo.onnx"), Some(&out), &opts, &|_| {}).unwrap();
    let m = Model::load(&out).unwrap();
    let g = m.graph();
    let mut declared = 0;
    for t in &g.initializer {
        for vi in g.value_info.iter().filter(|v| v.name() == t.name()) {
            let Some(type_proto::Value::TensorType(tt)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
                continue;
            };
            let dims: Vec<i64> = tt
                .shape
                .as_ref()
                .unwrap()
                .dim
                .iter()
                .map(|d| match d.value {
                    Some(Value::DimValue(n)) => n,
                    _ => -1,
                })
                .collect();
            assert_eq!(dims, t.dims, "{}", t.name());
            declared += 1;
        }
    }
    assert!(declared >= 10, "the export declares its weights' shapes");
}
