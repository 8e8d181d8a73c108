#!/usr/bin/env python3
"""The Python package against the command line and onnxsim, side by side on one model.

    python benches/gen_cnn.py --out bench-out/models                       # ResNet-50-sized, 94 MB
    pip install target/wheels/onnx_minimize-*.whl onnxsim                  # maturin build --release
    python benches/python_bench.py --model bench-out/models/resnet50_sparse.onnx \\
        --binary target/release/onnx-minimize --wheel target/wheels/onnx_minimize-*.whl --out bench-out/python

Measures, in one run and on one machine: the wheel's size; `import onnx_minimize` in a fresh
interpreter (median over --imports, less a bare interpreter's start); then per --repeat, the
median wall time of the command line (a subprocess, as a shell user runs it), `minimize_file`
(in process, memory-mapped), `minimize` on a loaded `onnx.ModelProto` (it stages the proto to a
file and loads the result back), `onnxsim.simplify` on the same proto, and `onnx.load` +
`onnx.save`. The binding's overhead is `minimize_file` (and `minimize`) against the command line
with the same verification. Writes OUT/python_bench.json and OUT/python_bench.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from counts import initializer_elements


def timed(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def startup(code: str, n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--binary", required=True, help="the onnx-minimize command to compare with")
    ap.add_argument("--wheel", required=True, help="the installed wheel's file (glob), for its size")
    ap.add_argument("--out", default="bench-out/python")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--imports", type=int, default=10)
    ap.add_argument("--verify", default="whole", help="verification for every run of ours (auto/whole/none)")
    args = ap.parse_args()

    import onnx_minimize
    import onnxsim

    import onnx

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wheel = max(glob.glob(args.wheel))
    bare = startup("pass", args.imports)
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "model": args.model,
        "model_bytes": os.path.getsize(args.model),
        "wheel": os.path.basename(wheel),
        "wheel_bytes": os.path.getsize(wheel),
        "import_seconds": startup("import onnx_minimize", args.imports) - bare,
        "import_with_onnx_seconds": startup("import onnx_minimize, onnx", args.imports) - bare,
        "verify": args.verify,
        "runs": {},
    }
    flags = ["--no-verify"] if args.verify == "none" else ["--verify", args.verify]
    with tempfile.TemporaryDirectory() as tmp:
        dst = os.path.join(tmp, "small.onnx")
        rows = results["runs"]

        t, _ = timed(lambda: subprocess.run([args.binary, args.model, dst, "--quiet", *flags], check=True), args.repeat)
        rows["onnx-minimize (command line)"] = {"seconds": t, "params_after": initializer_elements(onnx.load(dst))}

        t, report = timed(lambda: onnx_minimize.minimize_file(args.model, dst, verify=args.verify), args.repeat)
        rows["onnx_minimize.minimize_file"] = {"seconds": t, "params_after": report.after.params}

        proto = onnx.load(args.model)
        t, (small, report) = timed(lambda: onnx_minimize.minimize(proto, verify=args.verify), args.repeat)
        rows["onnx_minimize.minimize (ModelProto)"] = {"seconds": t, "params_after": initializer_elements(small)}

        t, (simplified, ok) = timed(lambda: onnxsim.simplify(proto), args.repeat)
        rows["onnxsim.simplify (ModelProto)"] = {
            "seconds": t,
            "params_after": initializer_elements(simplified),
            "ok": ok,
        }

        t, _ = timed(lambda: onnx.save(onnx.load(args.model), dst), args.repeat)
        rows["onnx.load + onnx.save"] = {"seconds": t, "params_after": initializer_elements(proto)}
    results["params_before"] = initializer_elements(proto)

    (out / "python_bench.json").write_text(json.dumps(results, indent=2))
    lines = [
        (
            f"Model: `{os.path.basename(args.model)}` ({results['model_bytes'] / 1e6:.1f} MB, "
            f"{results['params_before']:,} parameters); verification `{args.verify}`; median of {args.repeat}."
        ),
        "",
        "| what | seconds | parameters after |",
        "|---|---:|---:|",
        *(f"| {name} | {r['seconds']:.2f} | {r['params_after']:,} |" for name, r in rows.items()),
        "",
        (
            f"Wheel `{results['wheel']}`: {results['wheel_bytes'] / 1e6:.1f} MB. `import onnx_minimize`: "
            f"{results['import_seconds'] * 1e3:.0f} ms ({results['import_with_onnx_seconds'] * 1e3:.0f} ms with `onnx`), "
            f"beyond a bare interpreter's start."
        ),
    ]
    (out / "python_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
