#!/usr/bin/env python3
"""Generate a pruned ConvNeXt-Tiny-sized model as ONNX, for benchmarking onnx-minimize.

    python benches/gen_convnext.py --out bench-out/models [--seed 0] [--sparsity 0.8]
        [--removable-frac 0.25] [--dead-frac 0.3] [--dynamic-batch] [--no-check]

Writes, in DIR:

* ``convnext_tiny_sparse.onnx``       weights inline (~115 MB), dynamo exporter (default opset),
                                      input ``input [1, 3, 224, 224]`` (``--dynamic-batch``:
                                      ``[batch, 3, 224, 224]``), output ``logits [1, 10]``
* ``convnext_tiny_sparse.meta.json``  parameters, the expected stream width per stage and MLP
                                      hidden width per block after exact minimization, and the
                                      parameter count a perfect minimizer reaches

The model is the ConvNeXt of ``fixtures/generate_convnext.py`` (``convnext_own``: channels-first
LayerNorms as permute -> nn.LayerNorm -> permute, so every norm is a LayerNormalization between
Transposes; layer scale is a Mul) at ConvNeXt-Tiny size: dims 96-192-384-768, depths 3-3-9-3,
stem Conv 4x4 stride 4 (as in ConvNeXt-T; the fixtures use 2x2/2 on 32x32 inputs), ~28M
parameters, random O(1) weights, with the same forced structure as the fixtures:

* ``--removable-frac`` of every stage's stream channels are removable constants (zero producer
  filter with a non-zero bias, layer scale 0 in every block, gamma 0 in every LayerNorm reading
  them, zero depthwise filters), plus 2 kept constants per stage (one read by a LayerNorm with
  gamma != 0, one by a zero-padded depthwise conv with a non-zero filter);
* ``--dead-frac`` of every block's MLP hidden units dead (zero row and bias in Linear(C, 4C), or
  a zero column in Linear(4C, C)) and 3 constant (zero row, bias != 0: GELU(b) folds into the
  next bias);
* on top, ``--sparsity`` of every Linear weight zeroed at random (unstructured).

Unless ``--no-check``, the claims are verified in PyTorch first (float64, 2x3x64x64 input): the
constant stream channels are constant in every stream tensor, and a reduced model with the
removable channels and units actually deleted (CompensatedLayerNorms, folded biases) reproduces
the output.  Peak RSS is ~1.5 GB (the exporter holds a few copies of the weights); about 1-2
minutes on one core.
"""
import argparse
import importlib.util
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
GEN = os.path.join(os.path.dirname(HERE), "fixtures", "generate_convnext.py")


def load_gen():
    # The generator imports its sibling fixture_common as a top-level module.
    sys.path.insert(0, os.path.dirname(GEN))
    spec = importlib.util.spec_from_file_location("generate_convnext", GEN)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["generate_convnext"] = mod
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-out/models")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sparsity", type=float, default=0.8)
    ap.add_argument("--removable-frac", type=float, default=0.25)
    ap.add_argument("--dead-frac", type=float, default=0.3)
    ap.add_argument("--dynamic-batch", action="store_true")
    ap.add_argument("--no-check", action="store_true")
    args = ap.parse_args()
    gen = load_gen()
    torch.set_num_threads(1)
    t0 = time.time()

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    model = gen.ConvNeXt((96, 192, 384, 768), (3, 3, 9, 3), stem_k=4, classes=10).eval()
    view = gen.own_view(model)
    gen.randomize(model, view, g, sparsity=args.sparsity)
    forced = gen.force_structure(model, view, g, removable_frac=args.removable_frac, dead_frac=args.dead_frac)
    exp = gen.analyze(model, view)
    params = sum(p.numel() for p in model.parameters())
    print(f"built in {time.time() - t0:.0f}s: {params:,} parameters")

    params_after = None
    if not args.no_check:
        t1 = time.time()
        x = torch.randn(2, 3, 64, 64, generator=g, dtype=torch.float64)
        n_const = gen.check_stream_constants(model, view, exp, x)
        with torch.no_grad():
            red = gen.reduce_model(model, gen.own_view, exp)
            params_after = sum(p.numel() for p in red.parameters())
            want = model.double()(x)
            model.float()
            diff = float((red(x) - want).abs().max())
            del red
        assert diff <= 1e-10 * max(1.0, float(want.abs().max())), f"reduced model differs by {diff}"
        print(f"checked in {time.time() - t1:.0f}s: {n_const} constant-channel checks, reduced model "
              f"({params_after:,} parameters) max abs diff {diff:.1e}")

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "convnext_tiny_sparse.onnx")
    if os.path.exists(path):
        os.remove(path)
    t1 = time.time()
    kw = {}
    if args.dynamic_batch:
        kw["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=64)},)
    x = torch.randn(2 if args.dynamic_batch else 1, 3, 224, 224, generator=g)
    torch.onnx.export(model, (x,), path, dynamo=True, external_data=False, input_names=["input"],
                      output_names=["logits"], verbose=False, **kw)
    print(f"exported in {time.time() - t1:.0f}s")

    stages = [{k: e[k] for k in ("stage", "width_before", "width_after")} | {
        "removable": len(e["removable_indices"]), "kept_constants": len(e["kept_constant_channels"])}
        for e in exp["stages"]]
    blocks = [{k: b[k] for k in ("stage", "block", "hidden_before", "hidden_after")} | {
        "dead": len(b["dead_units"]), "constant_folded": len(b["constant_folded_units"])} for b in exp["blocks"]]
    meta = {
        "generator": "benches/gen_convnext.py", "args": vars(args), "file": os.path.basename(path),
        "bytes": os.path.getsize(path), "parameters": params, "parameters_after": params_after,
        "dims": [96, 192, 384, 768], "depths": [3, 3, 9, 3], "stem_kernel": 4,
        "input_shape": ["batch" if args.dynamic_batch else 1, 3, 224, 224],
        "expected": {"stages": stages, "blocks": blocks,
                     "removable_indices": [e["removable_indices"] for e in exp["stages"]],
                     "kept_constant_channels": [e["kept_constant_channels"] for e in exp["stages"]]},
        "forced": forced,
    }
    with open(os.path.join(args.out, "convnext_tiny_sparse.meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    for s in stages:
        print(f"  stage {s['stage']}: stream {s['width_before']} -> {s['width_after']}")
    hb = sum(b["hidden_before"] for b in blocks)
    ha = sum(b["hidden_after"] for b in blocks)
    print(f"  MLP hidden units: {hb} -> {ha} over {len(blocks)} blocks")
    print(f"{path}: {params:,} parameters, {os.path.getsize(path) / 1e6:.1f} MB"
          + (f"; exact minimum {params_after:,} parameters" if params_after else "")
          + f" ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
