#!/usr/bin/env python3
"""Generate a pruned ResNet-50-sized CNN as ONNX, for benchmarking onnx-minimize.

    python benches/gen_cnn.py --out bench-out/models [--sparsity 0.8] [--dead-frac 0.25] [--seed 0]

Writes ``resnet50_sparse.onnx`` (weights inline, ~94 MB): Hugging Face ``ResNetModel`` with the
ResNet-50 configuration (bottleneck blocks, depths 3-4-6-3, widths 256-512-1024-2048), built
offline from its config with random weights, then pruned the way a magnitude pruner leaves it:

* ``--sparsity`` of every conv weight zeroed at random (unstructured);
* ``--dead-frac`` of the channels of every BatchNorm get gamma = 0, so after the exporter folds
  BN into the conv they are zero filters with bias beta: half of them beta = 0 (dead after
  ReLU), half beta > 0 (a constant channel);

and exported by the dynamo exporter (eval mode, BN folded, opset 18) with a dynamic batch. The
output is the pooled feature ``[batch, 2048, 1, 1]``.
"""
import argparse
import os

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-out/models")
    ap.add_argument("--sparsity", type=float, default=0.8)
    ap.add_argument("--dead-frac", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    config = ResNetConfig(
        embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3], layer_type="bottleneck"
    )
    model = ResNetModel(config).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_((torch.rand_like(m.weight) >= args.sparsity).float())
            elif isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                dead = torch.randperm(c)[: int(c * args.dead_frac)]
                m.weight[dead] = 0.0
                m.bias[dead[: len(dead) // 2]] = 0.0
                m.bias[dead[len(dead) // 2 :]] = m.bias[dead[len(dead) // 2 :]].abs() + 0.05

    class Pooled(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(pixel_values=x).pooler_output

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "resnet50_sparse.onnx")
    x = torch.randn(2, 3, 224, 224)
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(
        Pooled(model), (x,), path, dynamo=True, external_data=False, opset_version=18,
        input_names=["pixel_values"], output_names=["pooled"], dynamic_shapes={"x": {0: batch}},
    )
    params = sum(p.numel() for p in model.parameters())
    print(f"{path}: {params:,} parameters, {os.path.getsize(path) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
