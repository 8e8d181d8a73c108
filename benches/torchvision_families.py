#!/usr/bin/env python3
"""torchvision model families, pruned by units, minimized, checked against ONNX Runtime.

    python3 benches/torchvision_families.py --binary target/release/onnx-minimize \
        [--models shufflenet_v2_x0_5,resnet18,...] [--exporters ts,dynamo] [--out bench-out/torchvision]

Each model: random weights (seed 0), 10 classes, 40% of the output units of every Conv, Linear
and ConvTranspose with more than 4 of them zeroed (weights and bias), BatchNorm statistics reset
(mean 0, variance 1) and half of its shifts zeroed, so that a zeroed unit is dead or constant.
Exported at ``[1, 3, 64, 64]`` with a dynamic batch (TorchScript at opset 17, dynamo at its
default), minimized with verification, and both models run in ONNX Runtime at batch 2. Writes
``torchvision.json`` and ``torchvision.md``: parameters before and after, the compression, the
largest relative deviation, the removable channels kept and why, and the opaque nodes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision

FAMILIES = (
    "shufflenet_v2_x0_5,shufflenet_v2_x1_0,mobilenet_v3_small,efficientnet_b0,googlenet,densenet121,"
    "resnet18,regnet_y_400mf,resnext50_32x4d"
)


def pruned(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    m = getattr(torchvision.models, name)(weights=None, num_classes=10).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():
            layers = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.ConvTranspose2d)
            if isinstance(mod, layers) and mod.weight.shape[0] > 4:
                transposed = isinstance(mod, torch.nn.ConvTranspose2d)
                n = mod.weight.shape[1] if transposed else mod.weight.shape[0]
                dead = torch.randperm(n, generator=g)[: int(0.4 * n)]
                if transposed:
                    mod.weight[:, dead] = 0
                else:
                    mod.weight[dead] = 0
                if mod.bias is not None:
                    mod.bias[dead] = 0
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.zero_()
                mod.running_var.fill_(1.0)
                mod.bias.data[torch.rand(mod.bias.shape, generator=g) < 0.5] = 0
    return m


def export(m: torch.nn.Module, exporter: str, path: Path) -> None:
    x = torch.randn(1, 3, 64, 64)
    if exporter == "ts":
        torch.onnx.export(
            m, (x,), str(path), opset_version=17, dynamo=False, input_names=["x"], output_names=["y"],
            dynamic_axes={"x": {0: "batch"}},
        )  # fmt: skip
    else:
        batch = torch.export.Dim("batch", max=64)
        torch.onnx.export(
            m, (x,), str(path), dynamo=True, input_names=["x"], output_names=["y"], dynamic_shapes=({0: batch},),
            external_data=False,
        )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--models", default=FAMILIES)
    ap.add_argument("--exporters", default="ts,dynamo")
    ap.add_argument("--out", default="bench-out/torchvision")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models.split(","):
        model = pruned(name)
        for exporter in args.exporters.split(","):
            path = out / f"{name}_{exporter}.onnx"
            small = out / f"{name}_{exporter}_min.onnx"
            start = time.time()
            try:
                export(model, exporter, path)
            except Exception as e:  # noqa: BLE001 (an exporter's failure is the exporter's, not ours)
                rows.append({"model": name, "exporter": exporter, "error": f"export: {type(e).__name__}"})
                continue
            cmd = [args.binary, str(path), str(small), "-q", "--report", "-"]
            done = subprocess.run(cmd, check=False, capture_output=True, text=True)
            if done.returncode != 0:
                rows.append({"model": name, "exporter": exporter, "error": done.stderr.strip()[-300:]})
                continue
            r = json.loads(done.stdout)
            x = np.random.default_rng(5).standard_normal((2, 3, 64, 64)).astype(np.float32)
            a = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
            b = ort.InferenceSession(str(small)).run(None, {"x": x})[0]
            row = {
                "model": name,
                "exporter": exporter,
                "before": r["before"]["params"],
                "after": r["after"]["params"],
                "ort_deviation": float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12)),
                "kept_removable": sum(k["removable"] for k in r["blocked"]),
                "kept_because": sorted({w["code"] for k in r["blocked"] for w in k["reasons"]}),
                "opaque": len(r["opaque"]),
                "seconds": round(time.time() - start, 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    (out / "torchvision.json").write_text(json.dumps({"binary": args.binary, "rows": rows}, indent=1) + "\n")
    lines = ["| model | exporter | params | after | compression | ORT deviation | removable kept (why) | opaque |"]
    lines.append("|---|---|---:|---:|---:|---:|---|---:|")
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['exporter']} | | | | | {r['error'][:80]} | |")
            continue
        why = ", ".join(r["kept_because"])
        lines.append(
            f"| {r['model']} | {r['exporter']} | {r['before']:,} | {r['after']:,} | {r['before'] / r['after']:.2f}x "
            f"| {r['ort_deviation']:.1e} | {r['kept_removable']} ({why}) | {r['opaque']} |"
        )
    (out / "torchvision.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
