#!/usr/bin/env python3
"""Quantized models (ONNX Runtime's QDQ format): what minimizing them gives, beside what a user
would do instead (minimize the float model, then quantize it), in one run.

    python3 benches/quantized.py --binary target/release/onnx-minimize [--out bench-out/quantized]
        [--large] [--sweep]

For each model: the committed fixtures of fixtures/quantized (their float sources beside them),
and with ``--large`` a pruned 5e7-parameter MLP (benches/gen_sparse_mlp.py) and a pruned
ResNet-50 (benches/gen_cnn.py), quantized here with per-channel int8 weights. It measures

* ``onnx-minimize IN OUT`` (tract verification included): wall time and peak RSS, parameters and
  bytes before and after;
* ``onnx.load`` + ``onnx.save`` of the same model in Python, as the floor of any rewrite;
* ONNX Runtime on fresh inputs: the largest |original - minimized| output difference with its
  fused integer kernels (the default) and without graph optimizations (the QDQ float semantics,
  which tract computes too), beside ORT's own fused-vs-reference difference on the original;
  and the fused latency of both models;
* the other order, quantize(minimize(float)): its bytes, with the same calibration.

Writes ``quantized.json`` and ``quantized.md`` in ``--out``. With ``--sweep``, it also quantizes
every committed float32 fixture both ways (per tensor and per channel) and minimizes each:
``sweep.json`` lists, per model, the status and the parameters before and after.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "fixtures"))

from run import measure


def session(path: Path, fused: bool):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not fused:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def feeds_for(s, seed: int, batch: int = 4) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for i in s.get_inputs():
        shape = [d if isinstance(d, int) else batch for d in i.shape]
        if i.type == "tensor(int64)":
            out[i.name] = rng.integers(0, 10, shape).astype(np.int64)
        else:
            out[i.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def ort_compare(original: Path, small: Path) -> dict:
    result = {}
    for fused in (True, False):
        a, b = session(original, fused), session(small, fused)
        worst = 0.0
        for seed in range(3):
            f = feeds_for(a, 100 + seed)
            worst = max(worst, float(np.abs(a.run(None, f)[0] - b.run(None, f)[0]).max()))
        result["fused" if fused else "reference"] = worst
    a, r = session(original, True), session(original, False)
    f = feeds_for(a, 7)
    result["ort_own_fused_vs_reference"] = float(np.abs(a.run(None, f)[0] - r.run(None, f)[0]).max())
    return result


def latencies_ms(paths: list[Path], rounds: int = 7, repeats: int = 30) -> list[float]:
    """ONNX Runtime's fused latency of each model on one batch of 8, in interleaved rounds (the
    best round of each), so that both see the same machine state."""
    sessions = [session(p, True) for p in paths]
    feeds = [feeds_for(s, 1, batch=8) for s in sessions]
    best = [float("inf")] * len(paths)
    for _ in range(rounds):
        for i, (s, f) in enumerate(zip(sessions, feeds)):
            s.run(None, f)
            t = time.perf_counter()
            for _ in range(repeats):
                s.run(None, f)
            best[i] = min(best[i], (time.perf_counter() - t) / repeats * 1e3)
    return [round(b, 3) for b in best]


def quantize(src: Path, dst: Path, per_channel: bool, weights: str) -> None:
    from generate_quantized import Calibration
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    import onnx

    quantize_static(
        str(src),
        str(dst),
        Calibration(onnx.load(str(src), load_external_data=False)),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        weight_type=getattr(QuantType, weights),
        activation_type=QuantType.QUInt8,
        use_external_data_format=dst.name.endswith("_ext.onnx"),
    )


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def load_save_s(path: Path, out: Path) -> float:
    code = (
        "import onnx,sys,time;t=time.perf_counter();m=onnx.load(sys.argv[1]);"
        "onnx.save(m,sys.argv[2]);print(time.perf_counter()-t)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path), str(out)], capture_output=True, text=True, check=True)
    return float(done.stdout.strip())


def report(binary: str, path: Path, out: Path) -> dict:
    run = measure([binary, str(path), str(out), "-q", "--report", str(out) + ".json"], str(out) + ".log", 3600)
    if run["status"] != "ok":
        return {"status": run["status"], "log": run["log_tail"]}
    r = json.loads(Path(str(out) + ".json").read_text())
    return {
        "status": "ok",
        "wall_s": run["wall_s"],
        # Sampled from /proc: ru_maxrss would charge this process's own peak (the models it
        # quantized) to the child.
        "peak_rss_mb": round(run["sampled_peak_kb"]["VmHWM"] / 1024, 1),
        "params": [r["before"]["params"], r["after"]["params"]],
        "bytes": [r["before"]["bytes"], r["after"]["bytes"]],
        "stored_float": r["stored_float"],
    }


def sweep(binary: str, out: Path) -> None:
    """Every committed float32 fixture, quantized per tensor and per channel, minimized and verified."""
    import onnx

    rows = []
    work = out / "sweep"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    for src in sorted((ROOT / "fixtures").rglob("*.onnx")):
        stored = onnx.load(str(src), load_external_data=False).graph.initializer
        if "quantized" in src.parts or any(t.data_type in (10, 11, 16) for t in stored):
            continue
        for per_channel in (False, True):
            q = work / f"{src.stem}_{'channel' if per_channel else 'tensor'}.onnx"
            try:
                quantize(src, q, per_channel, "QInt8")
            except Exception as e:  # noqa: BLE001 - what the quantizer refuses is reported, not fatal
                rows.append({"model": q.name, "status": f"quantizer failed: {e}"[:200]})
                continue
            done = subprocess.run(
                [binary, str(q), str(work / "min.onnx"), "-q", "--report", "-"],
                check=False,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                rows.append({"model": q.name, "status": f"exit {done.returncode}", "log": done.stderr[-300:]})
                continue
            r = json.loads(done.stdout)
            rows.append(
                {
                    "model": q.name,
                    "status": "ok",
                    "params": [r["before"]["params"], r["after"]["params"]],
                    "stored_float": r["stored_float"],
                }
            )
    (out / "sweep.json").write_text(json.dumps(rows, indent=1) + "\n")
    ok = [r for r in rows if r["status"] == "ok"]
    shrunk = [r for r in ok if r["params"][1] < r["params"][0]]
    print(
        f"sweep: {len(rows)} models, {len(ok)} minimized and verified, {len(shrunk)} smaller, "
        f"{sum(1 for r in ok if r['stored_float'])} with a weight left float"
    )
    print("failed:", [r["model"] for r in rows if r["status"] != "ok"])
    print("unchanged:", [r["model"] for r in ok if r not in shrunk])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=str(ROOT / "target/release/onnx-minimize"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out/quantized")
    ap.add_argument("--large", action="store_true")
    ap.add_argument("--sweep", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.sweep:
        sweep(args.binary, args.out)
    expected = json.loads((ROOT / "fixtures/quantized/expected.json").read_text())
    models = [
        (name, ROOT / "fixtures/quantized" / name, ROOT / "fixtures" / e["source"], e["per_channel"], e["weights"])
        for name, e in expected.items()
    ]
    if args.large:
        gen = args.out / "generated"
        gen.mkdir(exist_ok=True)
        if not (gen / "sparse_mlp_5e7.onnx").exists():
            subprocess.run(
                [sys.executable, str(HERE / "gen_sparse_mlp.py"), "--params", "5e7", "--out", str(gen)], check=True
            )
        if not (gen / "resnet50_sparse.onnx").exists():
            subprocess.run([sys.executable, str(HERE / "gen_cnn.py"), "--out", str(gen)], check=True)
        for src, name in (
            (gen / "sparse_mlp_5e7.onnx", "sparse_mlp_5e7_qdq_ext.onnx"),
            (gen / "resnet50_sparse.onnx", "resnet50_qdq.onnx"),
        ):
            dst = gen / name
            if not dst.exists():
                quantize(src, dst, True, "QInt8")
            models.append((name, dst, src, True, "QInt8"))

    rows = []
    for name, path, source, per_channel, weights in models:
        work = args.out / name.removesuffix(".onnx")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        small = work / "minimized.onnx"
        row = {"model": name, "per_channel": per_channel, "weights": weights}
        row.update(report(args.binary, path, small))
        row["load_save_s"] = round(load_save_s(path, work / "load_save.onnx"), 3)
        if row["status"] == "ok":
            row["ort"] = ort_compare(path, small)
            row["ort_latency_ms"] = latencies_ms([path, small])
            # The other order: minimize the float model, then quantize it the same way.
            float_small = work / "float_minimized.onnx"
            subprocess.run([args.binary, str(source), str(float_small), "-q"], check=True)
            other = work / ("float_minimized_qdq" + ("_ext" if name.endswith("_ext.onnx") else "") + ".onnx")
            quantize(float_small, other, per_channel, weights)
            row["other_order_bytes"] = disk_bytes(other)
        rows.append(row)
        print(json.dumps(row), flush=True)

    (args.out / "quantized.json").write_text(json.dumps(rows, indent=1) + "\n")
    header = (
        "| model | params before -> after | bytes before -> after | quantize(minimize(float)) bytes "
        "| ORT fused diff (ORT's own fused vs reference) | reference diff | ORT fused ms before -> after "
        "| minimize s (load+save s) | peak RSS MB |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | {r['status']} | | | | | | | |")
            continue
        o = r["ort"]
        lines.append(
            f"| {r['model']} | {r['params'][0]:,} -> {r['params'][1]:,} | {r['bytes'][0]:,} -> {r['bytes'][1]:,} "
            f"| {r['other_order_bytes']:,} | {o['fused']:.2e} ({o['ort_own_fused_vs_reference']:.2e}) "
            f"| {o['reference']:.1e} | {r['ort_latency_ms'][0]} -> {r['ort_latency_ms'][1]} "
            f"| {r['wall_s']} ({r['load_save_s']}) | {r['peak_rss_mb']} |"
        )
    table = "\n".join(lines) + "\n"
    (args.out / "quantized.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
