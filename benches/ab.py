#!/usr/bin/env python3
"""Two builds of onnx-minimize on the same models, alternating, for a change's cost.

    python3 benches/ab.py --a OLD_BINARY --b NEW_BINARY MODEL.onnx ... [--repeat 3] [--out bench-out/ab]

Runs `BINARY MODEL OUT --no-verify --quiet --report R` for A then B, --repeat times, and reports
the median analysis time (`seconds_analysis`: reading the weights, the passes, the plan) and total
time of each, and whether both removed the same parameters. Writes OUT/ab.json and OUT/ab.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path


def run(binary: str, model: str, tmp: str) -> dict:
    out, report = os.path.join(tmp, "out.onnx"), os.path.join(tmp, "report.json")
    subprocess.run([binary, model, out, "--no-verify", "--quiet", "--report", report], check=True)
    r = json.loads(Path(report).read_text())
    for f in Path(tmp).iterdir():
        f.unlink()
    return {"analysis": r["seconds_analysis"], "total": r["seconds_total"], "params": r["after"]["params"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default="bench-out/ab")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            runs: dict[str, list[dict]] = {"a": [], "b": []}
            for _ in range(args.repeat):
                for side in ("a", "b"):
                    runs[side].append(run(getattr(args, side), model, tmp))
            row = {"model": os.path.basename(model)}
            for side in ("a", "b"):
                row[side] = {k: statistics.median(r[k] for r in runs[side]) for k in ("analysis", "total")}
                row[side]["params"] = runs[side][0]["params"]
            results.append(row)
            print(json.dumps(row))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ab.json").write_text(json.dumps({"a": args.a, "b": args.b, "results": results}, indent=2))
    lines = [
        f"A: `{args.a}`, B: `{args.b}`; median of {args.repeat}, no verification.",
        "",
        "| model | analysis A | analysis B | total A | total B | same result |",
        "|---|---:|---:|---:|---:|---|",
        *(
            f"| {r['model']} | {r['a']['analysis']:.2f} s | {r['b']['analysis']:.2f} s | {r['a']['total']:.2f} s "
            f"| {r['b']['total']:.2f} s | {'yes' if r['a']['params'] == r['b']['params'] else 'NO'} |"
            for r in results
        ),
    ]
    (out / "ab.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
