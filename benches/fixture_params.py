#!/usr/bin/env python3
"""Parameters after minimization, and opaque nodes, of every committed fixture, for one or more
builds side by side.

    python3 benches/fixture_params.py --binary OLD --binary NEW [--gather-inputs] [--out DIR]

Each binary runs ``IN --dry-run --no-verify -q --report -`` on every ``fixtures/**/*.onnx`` (a
refactor must leave every count unchanged; a new rule may only lower them). Writes
``DIR/fixture_params.json`` and ``DIR/fixture_params.md`` (the table, also printed) and exits 1
when the builds disagree on any fixture. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def params_after(binary: str, model: str, gather: bool) -> dict:
    cmd = [binary, model, "--dry-run", "--no-verify", "-q", "--report", "-"] + (["--gather-inputs"] if gather else [])
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    report = json.loads(done.stdout) if done.stdout.strip() else {}
    if done.returncode != 0 or "after" not in report:
        return {"error": (report.get("error") or done.stderr.strip())[-300:]}
    return {
        "before": report["before"]["params"],
        "after": report["after"]["params"],
        "opaque": len(report.get("opaque", [])),
        "seconds_analysis": report.get("seconds_analysis"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", action="append", required=True, help="an onnx-minimize build (repeat to compare)")
    ap.add_argument("--gather-inputs", action="store_true", help="minimize with --gather-inputs")
    ap.add_argument("--out", default="bench-out", help="where the JSON and the table go")
    args = ap.parse_args()
    models = sorted(
        os.path.relpath(os.path.join(d, f), ROOT)
        for d, _, files in os.walk(os.path.join(ROOT, "fixtures"))
        for f in files
        if f.endswith(".onnx")
    )
    rows = []
    for m in models:
        runs = [params_after(b, os.path.join(ROOT, m), args.gather_inputs) for b in args.binary]
        rows.append({"model": m, "runs": runs})
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "fixture_params.json"), "w") as f:
        json.dump({"binaries": args.binary, "gather_inputs": args.gather_inputs, "rows": rows}, f, indent=1)
    n = len(args.binary)
    head = (
        "| fixture | params | "
        + " | ".join(f"after ({i + 1})" for i in range(n))
        + " | "
        + " | ".join(f"opaque ({i + 1})" for i in range(n))
        + " | same |"
    )
    lines = [head, "|---|---:|" + "---:|" * (2 * n) + "---|"]
    differ = 0
    for r in rows:
        afters = [run.get("after", run.get("error", "?")) for run in r["runs"]]
        same = len(set(map(str, afters))) == 1
        differ += not same
        before = next((run["before"] for run in r["runs"] if "before" in run), "?")
        opaque = [str(run.get("opaque", "?")) for run in r["runs"]]
        cells = " | ".join(map(str, afters)) + " | " + " | ".join(opaque)
        lines.append(f"| {r['model']} | {before} | {cells} | {'yes' if same else 'NO'} |")
    lines.append("")
    lines.append(f"{len(rows)} fixtures; builds: " + "; ".join(f"({i + 1}) {b}" for i, b in enumerate(args.binary)))
    table = "\n".join(lines)
    with open(os.path.join(args.out, "fixture_params.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
