"""PyTorch convenience: export a pruned module to ONNX and minimize it, in one call."""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any

from . import Report, minimize_file


def _pruned_copy(module):
    """A copy of `module` whose `torch.nn.utils.prune` masks are permanent (`weight = weight_orig *
    weight_mask`), so the export writes the zeros as plain weights rather than a mask product."""
    from torch.nn.utils import prune

    def hooks(m):
        return [h for h in m._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)]

    # A pruned weight is a computed tensor, which deepcopy refuses: copy its value instead.
    memo = {}
    for m in module.modules():
        for hook in hooks(m):
            masked = getattr(m, hook._tensor_name)
            memo[id(masked)] = masked.detach().clone()
    copied = copy.deepcopy(module, memo)
    for m in copied.modules():
        for hook in hooks(m):
            prune.remove(m, hook._tensor_name)
    return copied


def export_minimized(
    module,
    example_inputs: Any,
    path: str | os.PathLike,
    *,
    dynamo: bool = True,
    export_options: dict | None = None,
    **minimize_options,
) -> Report:
    """Exports `module` with `torch.onnx.export` and writes its minimized form to `path`.

    The module is copied, put in eval mode, and its `torch.nn.utils.prune` masks applied (the
    original is left as it is), so models pruned with `torch.nn.utils.prune` or torch-pruning
    export as plain sparse weights. `example_inputs` is a tensor or a tuple of them;
    `dynamo` picks the exporter (True: `torch.export`-based; False: TorchScript);
    `export_options` go to `torch.onnx.export` (`input_names`, `dynamic_shapes`,
    `opset_version`, ...); the other keywords to `minimize_file` (`verify`, `input_shapes`, ...).
    Weights go inside `path` unless the model is above 2 GB, or `external_data=True`.

        report = export_minimized(model, torch.randn(1, 3, 224, 224), "small.onnx")
    """
    import torch

    module = _pruned_copy(module).eval()
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    with tempfile.TemporaryDirectory(prefix="onnx-minimize-") as folder:
        exported = Path(folder) / "exported.onnx"
        with torch.no_grad():
            torch.onnx.export(module, args, exported, dynamo=dynamo, **(export_options or {}))
        if minimize_options.get("external_data") is None:
            size = sum(f.stat().st_size for f in Path(folder).iterdir())
            minimize_options["external_data"] = size >= 2**31
        return minimize_file(exported, path, **minimize_options)
