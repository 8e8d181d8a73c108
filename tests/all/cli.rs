//! The command line on good and bad input: clear errors, documented exit codes, no stray files.

use crate::common::{bin, fixture, mlp, node, write, Form, Layer};
use std::process::{Command, Output};

fn run(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tiny() -> onnx_minimize::onnx::proto::ModelProto {
    let l = |n_in, n_out, w: Vec<f32>| Layer {
        n_in,
        n_out,
        w,
        bias: Some(vec![0.5; n_out]),
        form: Form::Gemm { trans_b: true, alpha: 1.0, beta: 1.0 },
        act: Some("Relu"),
    };
    mlp(&[l(2, 2, vec![1.0, 0.0, 0.0, 0.0]), l(2, 1, vec![1.0, 1.0])])
}

#[test]
fn main_job_on_the_lenet_fixture_writes_report_and_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("small.onnx");
    let report = dir.path().join("r.json");
    let o =
        run(&[fixture("lenet300_pruned_dynamo.onnx").as_os_str(), out.as_os_str(), os("--report"), report.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("300 -> 252") && text.contains("verified with tract"), "{text}");
    assert!(stderr(&o).contains("verifying with tract"), "progress is shown");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert!(json["after"]["params"].as_u64() < json["before"]["params"].as_u64());
    assert_eq!(json["verification"]["mode"], "whole", "small models are checked whole");
    assert!(out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "no staging folder is left behind");
    // Piece by piece, on request: the report says so.
    let o = run(&[
        fixture("lenet300_pruned_dynamo.onnx").as_os_str(),
        out.as_os_str(),
        os("--verify"),
        os("blockwise"),
        os("--block-mb"),
        os("0.2"),
        os("--report"),
        report.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("block-wise in"), "{}", String::from_utf8_lossy(&o.stdout));
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["verification"]["mode"], "blockwise");
    assert!(json["verification"]["pieces"].as_u64() > Some(1), "{}", json["verification"]);
}

#[test]
fn dry_run_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("small.onnx");
    let o = run(&[
        fixture("mlp_dead_units_ts.onnx").as_os_str(),
        out.as_os_str(),
        os("--dry-run"),
        os("-q"),
        os("--report"),
        os("-"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!out.exists());
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"verification\""));
}

#[test]
fn help_teaches() {
    let o = run(&[os("--help")]);
    let text = String::from_utf8_lossy(&o.stdout);
    for needle in ["EXAMPLES", "EXIT STATUS", "--input-shape", "--dry-run", "--report", "--verify", "OPERATORS", "Gemm"]
    {
        assert!(text.contains(needle), "{needle}");
    }
}

/// Each bad input: its exit status and a message that names the culprit.
#[test]
fn bad_input_gets_a_clear_error_and_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("out.onnx");
    let check = |args: Vec<&std::ffi::OsStr>, code: i32, needles: &[&str]| {
        let o = run(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: '{n}' not in {err}");
        }
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists(), "{args:?} left an output");
    };

    let junk = d.join("junk.onnx");
    std::fs::write(&junk, b"this is not a protobuf at all \xff\xff\xff").unwrap();
    check(vec![junk.as_os_str(), out.as_os_str()], 1, &["junk.onnx", "not a valid ONNX model"]);

    let truncated = d.join("truncated.onnx");
    let bytes = std::fs::read(fixture("lenet300_pruned_ts.onnx")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    check(vec![truncated.as_os_str(), out.as_os_str()], 1, &["truncated.onnx"]);

    let empty = d.join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    check(vec![empty.as_os_str(), out.as_os_str()], 1, &["empty"]);

    check(vec![d.join("missing.onnx").as_os_str(), out.as_os_str()], 1, &["missing.onnx"]);

    let no_data = d.join("lenet_ext.onnx");
    std::fs::copy(fixture("lenet300_pruned_dynamo_ext.onnx"), &no_data).unwrap();
    check(vec![no_data.as_os_str(), out.as_os_str()], 1, &["lenet300_pruned_dynamo_ext.onnx.data", "tensor"]);

    let mut m = tiny();
    m.opset_import[0].version = Some(99);
    let future = write(d, "future.onnx", &m);
    check(vec![future.as_os_str(), out.as_os_str()], 1, &["opset 99"]);

    let mut m = tiny();
    let g = m.graph.as_mut().unwrap();
    let mut custom = node("Frobnicate", "mystery", &["a0"], &["f"], vec![]);
    custom.domain = Some("com.example".into());
    g.node.insert(2, custom);
    g.node[3].input[0] = "f".into();
    let exotic = write(d, "exotic.onnx", &m);
    check(vec![exotic.as_os_str(), out.as_os_str()], 4, &["tract cannot run", "--no-verify"]);
    let o = run(&[exotic.as_os_str(), os("--dry-run"), os("--no-verify")]);
    assert!(o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("com.example::Frobnicate has no channel rule"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    // A model that indexes past its table at the verification's shapes makes tract panic: an
    // error naming the model, exit 4, and no panic message.
    let mut g = crate::common::G::new("ids", &[None]);
    g.g.input[0] = crate::common::value_info("ids", onnx_minimize::onnx::proto::tensor_proto::DataType::Int64, &[None]);
    g.g.initializer.push(crate::common::int64_tensor("past", &[7]));
    g.weight("table", 4, 2, &[1]).weight("w", 2, 3, &[0]);
    g.op("Add", &["ids", "past"], "at", vec![]).op("Gather", &["table", "at"], "rows", vec![]);
    g.op("MatMul", &["rows", "w"], "y", vec![]);
    let past = write(d, "past.onnx", &g.model("y", &[None, Some(3)]));
    check(vec![past.as_os_str(), out.as_os_str()], 4, &["past.onnx", "internal error", "--input-shape"]);

    let mut m = tiny();
    let w = &mut m.graph.as_mut().unwrap().initializer[0];
    w.data_type = Some(onnx_minimize::onnx::proto::tensor_proto::DataType::Int32 as i32);
    let ints = write(d, "ints.onnx", &m);
    let o = run(&[ints.as_os_str(), os("--dry-run"), os("--no-verify")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("INT32 is not a float type"));

    // The JSON report says why, for pipelines.
    let report = d.join("failure.json");
    let o = run(&[exotic.as_os_str(), out.as_os_str(), os("--report"), report.as_os_str()]);
    assert_eq!(o.status.code(), Some(4));
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["exit_code"], 4);
    assert!(json["error"].as_str().unwrap().contains("tract cannot run"));

    let good = write(d, "good.onnx", &tiny());
    check(vec![good.as_os_str(), good.as_os_str()], 2, &["is the input"]);
    check(vec![good.as_os_str()], 2, &["--dry-run"]);
    check(vec![good.as_os_str(), out.as_os_str(), os("--input-shape"), os("nope=1,2")], 2, &["nope", "\"x\""]);
    check(vec![good.as_os_str(), out.as_os_str(), os("--input-shape"), os("x=1,a")], 2, &["bad dimension"]);
    let unwritable = d.join("no/such/dir/out.onnx");
    let o = run(&[good.as_os_str(), unwritable.as_os_str()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cannot write"), "{}", stderr(&o));

    // Dynamic dimensions need no shape: they are tried at several sizes; or given explicitly.
    let o =
        run(&[good.as_os_str(), out.as_os_str(), os("--input-shape"), os("x=5,2"), os("-q"), os("--report"), os("-")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("5,\n          2"));
}

#[test]
fn user_inputs_from_npz_and_npy_are_verified_on() {
    let dir = tempfile::tempdir().unwrap();
    let header = |shape: &str| {
        let h = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}\n");
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        b
    };
    let mut npy = header("(4, 784)");
    npy.extend((0..4 * 784).flat_map(|i| ((i % 7) as f32 * 0.1).to_le_bytes()));
    let npy_path = dir.path().join("x.npy");
    std::fs::write(&npy_path, &npy).unwrap();
    let arg = format!("input={}", npy_path.display());
    let out = dir.path().join("out.onnx");
    let o = run(&[
        fixture("lenet300_pruned_ts.onnx").as_os_str(),
        out.as_os_str(),
        os("--inputs"),
        os(&arg),
        os("-q"),
        os("--report"),
        os("-"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["verification"]["runs"], 4);
    assert_eq!(json["verification"]["input_shapes"][0][0], serde_json::json!([4, 784]));

    let npz = dir.path().join("inputs.npz");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&npz).unwrap());
    zip.start_file(
        "input.npy",
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored),
    )
    .unwrap();
    std::io::Write::write_all(&mut zip, &npy).unwrap();
    zip.finish().unwrap();
    let o = run(&[
        fixture("lenet300_pruned_ts.onnx").as_os_str(),
        out.as_os_str(),
        os("--inputs"),
        npz.as_os_str(),
        os("-q"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    let wrong = format!("nope={}", npy_path.display());
    let o = run(&[
        fixture("lenet300_pruned_ts.onnx").as_os_str(),
        dir.path().join("o2.onnx").as_os_str(),
        os("--inputs"),
        os(&wrong),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not the model's input 'input'"), "{}", stderr(&o));
}

#[test]
fn readme_lists_every_supported_operator() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for op in onnx_minimize::supported_operators() {
        assert!(readme.contains(&format!("`{op}`")), "README does not list {op}");
    }
}

/// The cycle's rewrites from the command line: prune to an exact sparsity with unit coupling, release,
/// both with JSON reports; out-of-range settings are usage errors that write nothing.
#[test]
fn prune_and_release_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (pruned, released) = (dir.path().join("p.onnx"), dir.path().join("r.onnx"));
    let input = fixture("lenet300_pruned_ts.onnx");
    let args = ["--sparsity", "0.99", "--criterion", "unit-coupled", "--coupling", "2", "--report", "-"];
    let o = run(&[&[os("prune"), input.as_os_str(), pruned.as_os_str()], &args.map(os)[..]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!((report["sparsity_after"].as_f64().unwrap() - 0.99).abs() < 1e-6);
    let o = run(&[os("release"), pruned.as_os_str(), released.as_os_str(), os("--calibration"), os("std:0.1")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&[
        os("prune"),
        released.as_os_str(),
        pruned.as_os_str(),
        os("--remove"),
        os("0.5"),
        os("--report"),
        os("-"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (before, after) = (report["sparsity_before"].as_f64().unwrap(), report["sparsity_after"].as_f64().unwrap());
    assert!(before < 1e-6 && (after - 0.5).abs() < 1e-3, "half of a released model: {before} -> {after}");
    for (flag, value) in [("--coupling", "99"), ("--sparsity", "1.5"), ("--remove", "2")] {
        let out = dir.path().join("bad.onnx");
        let mut args = vec![os("prune"), input.as_os_str(), out.as_os_str(), os("--sparsity"), os("0.5")];
        args.extend([os(flag), os(value)]);
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}: {}", stderr(&o));
        assert!(stderr(&o).contains(flag), "{}", stderr(&o));
        assert!(!out.exists());
    }
}

/// `--report - | head -1`: the reader goes away before the report is written; the tool stops
/// quietly, as ripgrep does, instead of panicking on the broken pipe.
#[test]
fn a_reader_that_stops_early_ends_the_output_cleanly() {
    use std::process::Stdio;
    let lenet = fixture("lenet300_pruned_dynamo.onnx");
    let mut child = Command::new(bin())
        .args([lenet.as_os_str(), os("--dry-run"), os("--no-verify"), os("-q"), os("--report"), os("-")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before the report is written
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}
