#!/usr/bin/env python3
"""nn.MultiheadAttention as the TorchScript exporter writes it, pruned, minimized by one or more
builds side by side, each result checked against the original in ONNX Runtime.

    python3 benches/torchscript_mha.py --binary OLD --binary NEW [--out bench-out/ts_mha]

Five models (width 16, four heads of 4, random weights, seed 0), each with the same structured
zeros in every attention: query dimension 1 zero (weight row and bias), key dimension 2 a
constant (zero row, bias kept), value dimension 0 a constant, value dimension 3 unread by the
output projection. Q/K and V/O can each lose two of four dimensions per head.

- ``encoder``: two nn.TransformerEncoderLayers (batch first); ``seq_first`` the same with
  ``batch_first=False``; ``norm_first`` with the norm before each block;
- ``mha``: one nn.MultiheadAttention called directly (``need_weights=False``); ``mha_mask``
  with a causal ``attn_mask`` and ``need_weights=True``.

Exported with ``dynamo=False`` at opset 17, the batch dynamic (the exporter writes the example's
sequence length into the key and value reshapes). Writes ``torchscript_mha.json`` and
``torchscript_mha.md`` (parameters before, after per build, and the largest deviation from the
original in ONNX Runtime at batch 3).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

C, H, T = 16, 4, 5


def prune(mha: torch.nn.MultiheadAttention) -> None:
    d = C // H
    w, b = mha.in_proj_weight, mha.in_proj_bias
    with torch.no_grad():
        for h in range(H):
            w[h * d + 1] = 0.0
            b[h * d + 1] = 0.0
            w[C + h * d + 2] = 0.0
            w[2 * C + h * d] = 0.0
            mha.out_proj.weight[:, h * d + 3] = 0.0


class Model(torch.nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        if kind.startswith("mha"):
            self.m = torch.nn.MultiheadAttention(C, H, batch_first=True)
            prune(self.m)
        else:
            layer = torch.nn.TransformerEncoderLayer(
                C, H, 2 * C, dropout=0.0, batch_first=kind != "seq_first", norm_first=kind == "norm_first"
            )
            self.m = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            for block in self.m.layers:
                prune(block.self_attn)

    def forward(self, x):
        if self.kind == "mha":
            return self.m(x, x, x, need_weights=False)[0]
        if self.kind == "mha_mask":
            mask = torch.triu(torch.full((T, T), float("-inf")), 1)
            return self.m(x, x, x, attn_mask=mask, need_weights=True)[0]
        return self.m(x)


def minimized(binary: str, src: Path, out: Path) -> dict:
    done = subprocess.run(
        [binary, str(src), str(out), "-q", "--report", "-"], check=False, capture_output=True, text=True
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip()[-300:]}
    report = json.loads(done.stdout)
    a, b = ort.InferenceSession(str(src)), ort.InferenceSession(str(out))
    shape = [T, 3, C] if "seq_first" in src.name else [3, T, C]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    ya, yb = a.run(None, {"x": x})[0], b.run(None, {"x": x})[0]
    return {
        "before": report["before"]["params"],
        "after": report["after"]["params"],
        "ort_deviation": float(np.abs(ya - yb).max() / np.abs(ya).max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", action="append", required=True)
    ap.add_argument("--out", default="bench-out/ts_mha")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ["encoder", "seq_first", "norm_first", "mha", "mha_mask"]:
            model = Model(kind).eval()
            src = Path(tmp) / f"{kind}.onnx"
            x = torch.randn(T, 2, C) if kind == "seq_first" else torch.randn(2, T, C)
            batch = {1: "batch"} if kind == "seq_first" else {0: "batch"}
            torch.onnx.export(
                model,
                (x,),
                str(src),
                dynamo=False,
                opset_version=17,
                input_names=["x"],
                output_names=["y"],
                dynamic_axes={"x": batch, "y": batch},
            )
            results = [minimized(b, src, Path(tmp) / f"{kind}_{k}.onnx") for k, b in enumerate(args.binary)]
            rows.append({"model": kind, "before": results[0].get("before"), "builds": results})
    (out / "torchscript_mha.json").write_text(json.dumps({"binaries": args.binary, "rows": rows}, indent=1) + "\n")
    head = (
        "| model | params | " + " | ".join(f"after ({k + 1})" for k in range(len(args.binary))) + " | ORT deviation |"
    )
    lines = [head, "|---|" + "---:|" * (len(args.binary) + 2)]
    for r in rows:
        cells = [str(b.get("after", b.get("error"))) for b in r["builds"]]
        dev = max((b.get("ort_deviation", 0.0) for b in r["builds"]), default=0.0)
        lines.append(f"| {r['model']} | {r['before']} | " + " | ".join(cells) + f" | {dev:.1e} |")
    lines.append("")
    lines += [f"({k + 1}) {b}" for k, b in enumerate(args.binary)]
    table = "\n".join(lines) + "\n"
    (out / "torchscript_mha.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
