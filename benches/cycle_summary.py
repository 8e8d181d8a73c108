"""Per-stage widths and tract latency of the ConvNeXt and ViT recipe runs, for BENCHMARKS.md.

    python3 benches/cycle_summary.py runs/convnext runs/vit [--latency]

Reads each recipe folder (`python3 -m squeeze_release.mnist --arch convnext|vit --out FOLDER --baselines`):
every method's `report.json` (the cycle's) or `torch-pruning.json`, and prints one markdown table per model
with the deployable parameters, compression, test accuracy and the widths per stage: the residual stream of
each ConvNeXt stage and the MLP units of each block; for the ViT the stream, and per block the query/key
and value dimensions (all heads together) and the MLP units. `--latency` adds tract's latency of the dense
and the final model of each cycle method (`cargo bench --bench latency`, one thread, batch 1 and 64).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stages(arch: str, layers: dict[str, list[int]]) -> str:
    """Widths per stage from the minimized model's linear layers ({node: [inputs, outputs]}, graph order)."""
    named = list(layers.items())[:-1]  # the classifier last
    if arch == "convnext":
        found: list[tuple[int, list[int]]] = []
        for name, (_, out) in named:
            if "conv" in name:  # the stem or a downsampling conv opens a stage: its width is the stream's
                found.append((out, []))
            else:  # each block's pw1 then pw2: pw1's outputs are the block's hidden units
                found[-1][1].append(out)
        return "; ".join(f"{stream} ({'-'.join(map(str, hidden[::2]))})" for stream, hidden in found)
    stream = named[0][1][1]
    widths = [w for _, w in named[1:]]
    blocks = [widths[6 * b : 6 * b + 6] for b in range(len(widths) // 6)]
    # Each block: value, key, query, output, fc1, fc2 projections, as the dynamo exporter orders them.
    parts = [f"qk {b[2][1]} v {b[0][1]} mlp {b[4][1]}" for b in blocks]
    return f"stream {stream}; " + ", ".join(parts)


def latency(paths: list[Path], shape: str) -> list[float]:
    cmd = ["cargo", "bench", "-q", "--bench", "latency", "--", *map(str, paths), "--shape", shape, "--iters", "20"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [json.loads(line)["median_ms"] for line in out.splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--latency", action="store_true")
    args = parser.parse_args()
    for folder in args.runs:
        arch = "vit" if "vit" in folder.name else "convnext"
        print(f"\n### {arch} ({folder})\n")
        print(
            "| method | final params | compression | test acc (dense) | widths | tract ms, batch 1 / 64 (dense -> final) |"
        )
        print("|---|---:|---:|---:|---|---|")
        for method in ("squeeze-release", "no-release", "imp", "torch-pruning"):
            path = folder / method / "report.json" if method != "torch-pruning" else folder / "torch-pruning.json"
            if not path.exists():
                continue
            r = json.loads(path.read_text())
            if "layer_widths" in r and isinstance(r["layer_widths"], dict):
                widths = stages(arch, r["layer_widths"])
            else:
                widths = ", ".join(map(str, r.get("layer_widths") or []))
            ms = ""
            if args.latency and method != "torch-pruning":
                dense, final = folder / method / "baseline.onnx", folder / method / "final.onnx"
                ms = ", ".join(
                    "{:.2f} -> {:.2f}".format(*latency([dense, final], shape)) for shape in ("1,784", "64,784")
                )
            print(
                f"| {method} | {r['final_params']:,} | {r['compression']:.1f}x | {r['final_test']:.2f} "
                f"({r['baseline_test']:.2f}) | {widths} | {ms} |"
            )


if __name__ == "__main__":
    main()
