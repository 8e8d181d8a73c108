"""Small stand-ins for the two LayerNorm-stream families the method claims: a ConvNeXt and a Vision
Transformer, sized to train on two CPU cores on 28x28 images (MNIST rows of 784 pixels, as the MLPs read
them).

- `ConvNeXt`: ConvNeXt-Tiny's structure (Liu et al. 2022) at a small width and depth: a patchify stem
  (2x2, stride 2) with a LayerNorm, stages of blocks (depthwise 7x7 conv, channels-last LayerNorm,
  inverted-bottleneck MLP with GELU, layer scale, residual add), downsampling by a LayerNorm and a 2x2
  stride-2 conv, global average pooling, a LayerNorm and the classifier.
- `ViT`: a pre-LN Vision Transformer: a patch embedding (a 7x7 stride-7 conv: 16 patches), a class token
  and a learned position table, blocks of multi-head self-attention (separate query, key and value
  projections, `scaled_dot_product_attention`) and GELU MLPs, a final LayerNorm and the classifier on the
  class token.

Both export with PyTorch's dynamo exporter, whose attention patterns onnx-minimize follows.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


class ChannelsLastNorm(nn.Module):
    """A LayerNorm over the channels of an NCHW map (the stem's and the downsampling layers')."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=1e-6)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, layer_scale: float = 0.1):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x):
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.gamma * self.pwconv2(F.gelu(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, dims=(24, 48, 96), depths=(2, 2, 2), classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, dims[0], 2, stride=2), ChannelsLastNorm(dims[0])]
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            if i:
                layers += [ChannelsLastNorm(dims[i - 1]), nn.Conv2d(dims[i - 1], dim, 2, stride=2)]
            layers += [ConvNeXtBlock(dim) for _ in range(depth)]
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], classes)

    def forward(self, x):
        x = self.features(x.reshape(-1, 1, 28, 28))
        return self.head(self.norm(x.mean((2, 3))))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, _ = x.shape
        # Widths from the projections, so that a structured pruner may narrow the heads.
        split = lambda y: y.view(b, t, self.heads, y.shape[-1] // self.heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)))
        return self.out(y.transpose(1, 2).reshape(b, t, -1))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = Attention(dim, heads)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(self, dim: int = 64, depth: int = 4, heads: int = 4, hidden: int = 128, patch: int = 7):
        super().__init__()
        tokens = (28 // patch) ** 2
        self.embed = nn.Conv2d(1, dim, patch, stride=patch)
        self.cls = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.position = nn.Parameter(0.02 * torch.randn(1, tokens + 1, dim))
        self.blocks = nn.Sequential(*(ViTBlock(dim, heads, hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.embed(x.reshape(-1, 1, 28, 28)).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.position
        return self.head(self.norm(self.blocks(x))[:, 0])


MODELS = {"convnext": ConvNeXt, "vit": ViT}


def export(module: nn.Module, path: Path) -> Path:
    """The dynamo exporter, batch dimension dynamic."""
    module.eval()
    example = torch.zeros(2, 784)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example,),
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes={"x": {0: batch}},
            dynamo=True,
            verbose=False,
        )
    program.save(str(path))
    return path
