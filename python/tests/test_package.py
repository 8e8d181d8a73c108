"""The Python package against the command line, run on the installed wheel.

Run: pip install . pytest && pytest python/tests   ($ONNX_MINIMIZE: a cargo-built binary to compare
with; by default the `onnx-minimize` command the wheel installed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx_minimize
import pytest
from onnx_minimize import _native

import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures"
LENET = FIXTURES / "lenet300_pruned_dynamo.onnx"


def cli() -> str:
    return os.environ.get("ONNX_MINIMIZE") or shutil.which("onnx-minimize") or pytest.fail("no onnx-minimize command")


def files(path: Path) -> dict[str, bytes]:
    """A written model's bytes, its external data included."""
    return {p.name.replace(path.name, "*"): p.read_bytes() for p in sorted(path.parent.glob(path.name + "*"))}


def test_every_committed_fixture_gives_the_command_lines_bytes(tmp_path):
    fixtures = sorted(FIXTURES.rglob("*.onnx"))
    assert len(fixtures) > 50
    for fixture in fixtures:
        by_cli, by_api = tmp_path / "cli" / fixture.name, tmp_path / "api" / fixture.name
        by_cli.parent.mkdir(exist_ok=True)
        by_api.parent.mkdir(exist_ok=True)
        done = subprocess.run(
            [cli(), fixture, by_cli, "--no-verify", "--quiet"], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        report = onnx_minimize.minimize_file(fixture, by_api, verify=False)
        assert files(by_api) == files(by_cli), fixture
        assert report.after.bytes == sum(map(len, files(by_api).values())), fixture


def test_a_model_proto_bytes_and_a_path_give_the_same_model():
    model = onnx.load(LENET)
    results = [onnx_minimize.minimize(m) for m in (model, LENET.read_bytes(), LENET, str(LENET))]
    written = {m.SerializeToString() for m, _ in results}
    assert len(written) == 1
    small, report = results[0]
    assert isinstance(small, onnx.ModelProto)
    assert report.before.params > report.after.params
    assert report.compression == report.before.params / report.after.params
    assert report.verification is not None and report.verification.mode == "whole"
    assert all(o.max_relative_deviation < 1e-5 for o in report.verification.outputs)
    assert [r.input for _, r in results] == ["<ModelProto>", "<bytes>", str(LENET), str(LENET)]
    assert results[0][1].output is None


def test_inputs_of_ones_own_are_verified_on_besides_the_random_ones(tmp_path):
    mine = {"input": np.random.default_rng(1).random((5, 784), dtype=np.float32)}
    _, report = onnx_minimize.minimize(LENET, inputs=mine, runs=2)
    assert report.verification.runs == 3 and [5, 784] in [s[0] for s in report.verification.input_shapes]
    np.savez(tmp_path / "mine.npz", **mine)
    np.save(tmp_path / "x.npy", mine["input"])
    for given in (tmp_path / "mine.npz", [f"input={tmp_path / 'x.npy'}"]):
        assert onnx_minimize.minimize_file(LENET, None, inputs=given, runs=2).verification.runs == 3
    with pytest.raises(onnx_minimize.UsageError, match="nope"):
        onnx_minimize.minimize(LENET, inputs={"nope": mine["input"]})


def test_the_report_holds_the_command_lines_json_and_table(tmp_path):
    out, json_path = tmp_path / "small.onnx", tmp_path / "report.json"
    done = subprocess.run(
        [cli(), LENET, out, "--no-verify", "--report", json_path], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    expected = json.loads(json_path.read_text())
    report = onnx_minimize.minimize_file(LENET, tmp_path / "again.onnx", verify=False)
    got = report.to_dict()
    for d in (got, expected):
        for key in ("seconds_analysis", "seconds_total", "output"):
            d.pop(key)
    assert got == expected
    assert str(report).splitlines()[0] == done.stdout.splitlines()[0]
    assert "layer" in str(report) and "->" in str(report)


def test_external_data_is_read_and_written_beside_the_model(tmp_path, monkeypatch):
    src = FIXTURES / "lenet300_pruned_dynamo_ext.onnx"
    out = tmp_path / "small.onnx"
    report = onnx_minimize.minimize_file(src, out)
    assert (tmp_path / "small.onnx.data").is_file()
    assert report.after.bytes == out.stat().st_size + (tmp_path / "small.onnx.data").stat().st_size
    inline = onnx_minimize.minimize_file(src, tmp_path / "inline.onnx", external_data=False)
    assert not (tmp_path / "inline.onnx.data").exists() and inline.after.params == report.after.params

    small, _ = onnx_minimize.minimize(src)
    assert all(t.data_location == TensorProto.DEFAULT for t in small.graph.initializer)
    assert small.SerializeToString() == onnx.load(tmp_path / "inline.onnx").SerializeToString()

    # A ModelProto above 2 GB cannot be serialized whole: it is staged with external data.
    monkeypatch.setattr(onnx_minimize, "_TWO_GB", 1000)
    staged, _ = onnx_minimize.minimize(onnx.load(LENET))
    monkeypatch.undo()
    assert staged.SerializeToString() == onnx_minimize.minimize(LENET)[0].SerializeToString()

    unloaded = onnx.load(src, load_external_data=False)
    with pytest.raises(onnx_minimize.UsageError, match="external files"):
        onnx_minimize.minimize(unloaded)


def unknown_op_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Frobnicate", ["h"], ["y"], domain="com.ex")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.ex", 1)])


def test_each_exit_status_of_the_command_is_an_exception_class(tmp_path):
    cases = [
        (onnx_minimize.BadInputError, 1, lambda: onnx_minimize.minimize_file(tmp_path / "missing.onnx", None)),
        (onnx_minimize.BadInputError, 1, lambda: onnx_minimize.minimize(b"not a model")),
        (onnx_minimize.UsageError, 2, lambda: onnx_minimize.minimize_file(LENET, LENET)),
        (onnx_minimize.UsageError, 2, lambda: onnx_minimize.prune(LENET)),
        (onnx_minimize.UsageError, 2, lambda: onnx_minimize.prune(LENET, sparsity=1.5)),
        (
            onnx_minimize.VerificationError,
            3,
            lambda: onnx_minimize.minimize_file(LENET, tmp_path / "v.onnx", tolerance=-1),
        ),
        (onnx_minimize.TractError, 4, lambda: onnx_minimize.minimize(unknown_op_model())),
    ]
    for cls, status, call in cases:
        with pytest.raises(cls) as caught:
            call()
        assert isinstance(caught.value, onnx_minimize.OnnxMinimizeError)
        assert caught.value.exit_code == status == cls.exit_code
    assert "missing.onnx" in str(pytest.raises(onnx_minimize.BadInputError, cases[0][2]).value)
    assert not (tmp_path / "v.onnx").exists(), "a model that failed verification is never written"
    with pytest.raises(ValueError, match="'magnitude', 'unit-coupled'"):
        onnx_minimize.prune(LENET, sparsity=0.5, criterion="largest")
    with pytest.raises(ValueError, match="'auto', 'whole', 'blockwise'"):
        onnx_minimize.minimize(LENET, verify="sometimes")
    with pytest.raises(TypeError, match="ModelProto"):
        onnx_minimize.minimize(42)


def test_the_gil_is_released_while_a_model_is_minimized():
    ticks: list[float] = []
    stop = threading.Event()

    def tick():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    thread = threading.Thread(target=tick)
    thread.start()
    calls: list[tuple[float, float]] = []
    try:
        while sum(end - start for start, end in calls) < 0.5:
            start = time.perf_counter()
            _native.minimize_file(str(FIXTURES / "cnn" / "resnet20_dynamo.onnx"), None, runs=2)
            calls.append((start, time.perf_counter()))
    finally:
        stop.set()
        thread.join()
    # Away from the calls' edges, the other thread ticked at a good part of its free rate (one per
    # millisecond): with the GIL held it could not tick at all.
    margin = 0.005
    inside = [t for t in ticks if any(start + margin < t < end - margin for start, end in calls)]
    span = sum(max(end - start - 2 * margin, 0) for start, end in calls)
    assert len(inside) > 0.25 * span / 0.001, (len(inside), span)


def test_progress_reports_every_stage():
    events: list[onnx_minimize.Progress] = []
    onnx_minimize.minimize(LENET, progress=events.append)
    stages = [e.stage for e in events if e.done is None]
    assert [s.split()[0] for s in stages] == ["reading", "analysing", "writing", "verifying"]
    analysed = [e for e in events if e.done is not None and e.stage.startswith("analysing")]
    assert analysed and analysed[-1].done == analysed[-1].total and analysed[-1].items == analysed[-1].of == 3

    def broken(_):
        raise KeyError("from the callback")

    with pytest.raises(KeyError, match="from the callback"):
        onnx_minimize.minimize(LENET, progress=broken)


def test_prune_and_release_in_memory_as_on_files(tmp_path):
    pruned, report = onnx_minimize.prune(onnx.load(LENET), sparsity=0.99, criterion="unit-coupled")
    assert report.sparsity_after == pytest.approx(0.99, abs=1e-3) and report.tensors
    onnx_minimize.prune_file(LENET, tmp_path / "p.onnx", sparsity=0.99, criterion="unit-coupled")
    assert onnx.load(tmp_path / "p.onnx").SerializeToString() == pruned.SerializeToString()
    released, report = onnx_minimize.release(pruned, calibration="std:0.1", seed=3)
    assert report.sparsity_before > 0.98 and report.sparsity_after < 0.01
    assert len(released.graph.initializer) == len(pruned.graph.initializer)


def test_space_coupled_pruning_and_the_channel_spaces_it_couples(tmp_path):
    convnext = FIXTURES / "convnext" / "convnext_hf_dynamo.onnx"
    report = onnx_minimize.prune_file(
        convnext, tmp_path / "p.onnx", sparsity=0.99, criterion="space-coupled", coupling=2
    )
    assert report.silenced and all(t.zeros_after > t.zeros_before for t in report.silenced)
    assert report.to_dict()["silenced"] == [dataclasses.asdict(t) for t in report.silenced]
    spaces = onnx_minimize.channel_spaces(convnext)
    named = {(m["tensor"], m["axis"]) for m in spaces}
    assert ("m.convnext.embeddings.layernorm.weight", 0) in named  # norm scales group with their channels
    stem = next(m for m in spaces if m["tensor"].endswith("patch_embeddings.weight"))
    stream = [m["tensor"] for m in spaces if stem["spaces"][0] in m["spaces"]]
    assert len(stream) > 8, stream


def test_the_command_is_installed_and_teaches(tmp_path):
    script = Path(sys.executable).parent / "onnx-minimize"
    for command in ([script], [sys.executable, "-m", "onnx_minimize"]):
        done = subprocess.run([*command, "--help"], capture_output=True, text=True, check=False)
        assert done.returncode == 0 and "EXAMPLES" in done.stdout and "EXIT STATUS" in done.stdout
        done = subprocess.run(
            [*command, tmp_path / "missing.onnx", tmp_path / "o.onnx"], capture_output=True, text=True, check=False
        )
        assert done.returncode == 1 and "missing.onnx" in done.stderr
    assert onnx_minimize.__version__ == _native.__version__
    assert "Gemm" in onnx_minimize.operators()["reads"]
    assert "Raises:" in onnx_minimize.minimize_file.__doc__ and "minimize_file" in onnx_minimize.minimize.__doc__
