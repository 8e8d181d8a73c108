"""onnx-minimize: make a pruned ONNX model physically smaller without changing what it computes.

Pruning zeroes weights but leaves tensors their dense shapes. `minimize` finds the channels that
the zeros make dead (nothing needed reads them) or constant (the same value for every input),
removes them, folds the constants into the next layer's bias, and checks with tract that the
smaller model computes what the original did; if it does not, nothing is returned or written.

    import onnx, onnx_minimize

    small, report = onnx_minimize.minimize(onnx.load("pruned.onnx"))
    print(report)                                 # the command line's table
    print(report.before.params, "->", report.after.params)

    # Models with external data, or above 2 GB: file to file, never through Python memory.
    report = onnx_minimize.minimize_file("llama.onnx", "small.onnx", verify="blockwise")

The same engine as the `onnx-minimize` command, which this package also installs. Errors are
`OnnxMinimizeError`s, one class per exit status of the command: `BadInputError` (1),
`UsageError` (2), `VerificationError` (3) and `TractError` (4). The GIL is released while a
model is analysed, rewritten, written and verified.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Union

from . import _native
from ._native import (
    BadInputError,
    OnnxMinimizeError,
    TractError,
    UsageError,
    VerificationError,
)
from .report import (
    Blocked,
    GatheredInput,
    LayerReport,
    OutputCheck,
    Progress,
    Reason,
    Report,
    Size,
    SparsifyReport,
    TensorChange,
    Verification,
)

if TYPE_CHECKING:
    import numpy as np

    import onnx

__version__: str = _native.__version__

__all__ = [
    "BadInputError",
    "Blocked",
    "GatheredInput",
    "LayerReport",
    "OnnxMinimizeError",
    "OutputCheck",
    "Progress",
    "Reason",
    "Report",
    "Size",
    "SparsifyReport",
    "TensorChange",
    "TractError",
    "UsageError",
    "Verification",
    "VerificationError",
    "channel_spaces",
    "minimize",
    "minimize_file",
    "operators",
    "prune",
    "prune_file",
    "release",
    "release_file",
]

#: A model: loaded, serialized, or the path of an .onnx file (its external data beside it).
ModelLike = Union["onnx.ModelProto", bytes, str, os.PathLike]
ProgressCallback = Callable[[Progress], object]

_TWO_GB = 2**31


def _verify_mode(verify: bool | str) -> str:
    if verify is True:
        return "auto"
    if verify is False:
        return "none"
    return verify


def _progress(callback: ProgressCallback | None):
    return None if callback is None else lambda *event: callback(Progress(*event))


def _input_files(inputs, folder: Path) -> list[str]:
    """`inputs` as the command line's --inputs arguments: arrays are saved to an .npz in `folder`."""
    if inputs is None:
        return []
    if isinstance(inputs, (str, os.PathLike)):
        return [os.fspath(inputs)]
    if isinstance(inputs, Mapping):
        import numpy as np

        path = folder / "inputs.npz"
        np.savez(path, **{name: np.ascontiguousarray(a) for name, a in inputs.items()})
        return [str(path)]
    return [os.fspath(f) for f in inputs]


def minimize_file(
    src: str | os.PathLike,
    dst: str | os.PathLike | None,
    *,
    gather_inputs: bool = False,
    verify: bool | str = True,
    tolerance: float | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    inputs: Mapping[str, np.ndarray] | str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    runs: int = 3,
    seed: int = 0x5EED,
    block_mb: float = 256.0,
    external_data: bool | None = None,
    compensated_layernorm: str = "ops",
    progress: ProgressCallback | None = None,
) -> Report:
    """Minimizes the model at `src` and writes it to `dst` (None: a dry run that writes nothing).

    The model is memory-mapped and its kept weights copied straight into `dst`, so this serves
    models with external data and models of any size: nothing passes through Python memory.
    `dst` is written atomically, and only once verification passes.

    Args:
        src: the pruned model (.onnx; external data is read from beside it).
        dst: where to write the minimized model, or None to only report.
        gather_inputs: drop graph-input features that no computation reads, through a Gather in
            front of the input's readers (the input keeps its shape: callers pass the same tensors).
        verify: True (= "auto": both models whole where they fit in memory, else piece by piece),
            "whole", "blockwise", or False (= "none": nothing then proves the output right).
        tolerance: largest accepted output deviation, relative to each output's largest
            magnitude; by default 1e-4, or 1e-2 for models with float16/bfloat16 weights.
        input_shapes: shapes to verify with, by input name, for dynamic dimensions other than a
            batch (which are otherwise tried at 1, 3 and 2), e.g. {"input_ids": (1, 128)}.
        inputs: inputs of your own to verify on besides the random ones: {name: array}, an .npz
            path holding one array per input, or a list of "NAME=FILE.npy" / "FILE.npz".
        runs: number of random input sets.
        seed: seed of the random inputs.
        block_mb: megabytes of weights per piece in block-wise verification.
        external_data: write weights to `<dst>.data` (True) or inside the file (False); by default
            as `src` stores them.
        compensated_layernorm: how a LayerNorm that loses channels is written: "ops" (plain
            operators) or "concat" (LayerNormalization over the kept channels and the constants).
        progress: called with a `Progress` at each stage and as bytes are handled (for a bar).
            It runs with the GIL held; an exception it raises is raised when the work ends.

    Returns:
        The `Report`: per layer what left, what was kept and which node kept it, sizes before
        and after, and the verification.

    Raises:
        BadInputError: the model or a file cannot be read or written, or is not valid ONNX.
        UsageError: a wrong option, or `dst` is `src`.
        VerificationError: the minimized model computes something else (a bug: please report it).
        TractError: tract cannot run the model: give `input_shapes`, or `verify=False`.
    """
    with tempfile.TemporaryDirectory(prefix="onnx-minimize-") as folder:
        report, text = _native.minimize_file(
            os.fspath(src),
            None if dst is None else os.fspath(dst),
            verify=_verify_mode(verify),
            tolerance=tolerance,
            input_shapes=None if input_shapes is None else {k: list(v) for k, v in input_shapes.items()},
            inputs=_input_files(inputs, Path(folder)),
            runs=runs,
            seed=seed,
            block_mb=block_mb,
            external_data=external_data,
            gather_inputs=gather_inputs,
            compensated_layernorm=compensated_layernorm,
            progress=_progress(progress),
        )
    return Report.from_dict(json.loads(report), text)


def _staged(model: ModelLike, folder: Path) -> tuple[Path, str]:
    """A file holding `model`, and how reports should name it."""
    if isinstance(model, (str, os.PathLike)):
        return Path(model), os.fspath(model)
    path = folder / "model.onnx"
    if isinstance(model, (bytes, bytearray, memoryview)):
        path.write_bytes(model)
        return path, "<bytes>"
    import onnx

    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"expected an onnx.ModelProto, bytes or a path, not {type(model).__name__}")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise UsageError(
            "the model's weights are in external files that were not loaded: pass the model's path "
            "(its external data is read from beside it), or onnx.load it with load_external_data=True"
        )
    onnx.save_model(model, path, save_as_external_data=model.ByteSize() >= _TWO_GB, location="model.onnx.data")
    return path, "<ModelProto>"


def _load(path: Path) -> onnx.ModelProto:
    """The written model with its weights in memory, as the same model written inline would load."""
    import onnx

    model = onnx.load(path, load_external_data=True)
    if Path(f"{path}.data").exists():
        # onnx.load marks the loaded tensors' location DEFAULT explicitly; inline ones leave it unset.
        for t in model.graph.initializer:
            t.ClearField("data_location")
    return model


def minimize(
    model: ModelLike,
    *,
    gather_inputs: bool = False,
    verify: bool | str = True,
    tolerance: float | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    inputs: Mapping[str, np.ndarray] | str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    **options,
) -> tuple[onnx.ModelProto, Report]:
    """Minimizes a model and returns `(minimized onnx.ModelProto, Report)`.

    `model` is an `onnx.ModelProto`, the bytes of one, or a path. The options are
    `minimize_file`'s (the rest: `runs`, `seed`, `block_mb`, `compensated_layernorm`, `progress`);
    see `help(onnx_minimize.minimize_file)`. For models with external data or above 2 GB, prefer
    `minimize_file`, which never loads the weights into Python.

        small, report = onnx_minimize.minimize(model, input_shapes={"input_ids": (1, 128)})
    """
    with tempfile.TemporaryDirectory(prefix="onnx-minimize-") as folder:
        src, name = _staged(model, Path(folder))
        dst = Path(folder) / "minimized.onnx"
        report = minimize_file(
            src,
            dst,
            gather_inputs=gather_inputs,
            verify=verify,
            tolerance=tolerance,
            input_shapes=input_shapes,
            inputs=inputs,
            **options,
        )
        return _load(dst), dataclasses.replace(report, input=name, output=None)


def prune_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    sparsity: float | None = None,
    remove: float | None = None,
    scope: str = "global",
    criterion: str = "magnitude",
    coupling: float = 0.5,
    include_output_layer: bool = False,
) -> SparsifyReport:
    """Zeroes the smallest-scoring weights of the linear layers (Gemm, MatMul, Conv) of `src`.

    Give exactly one of `sparsity` (the fraction of prunable weights that is zero afterwards,
    existing zeros included) and `remove` (the fraction of the weights not zero yet to zero now:
    one step of iterative pruning). `scope`: "global" (one threshold) or "per-tensor".
    `criterion`: "magnitude" (|w|) or "unit-coupled" (|w| times (row mass * column mass) **
    `coupling`, which gathers the zeros into whole units that `minimize` can remove) or
    "space-coupled" (the masses of whole channel spaces across layers, a residual stream's
    channel in every block; a channel left without weights loses its biases, norm scales and
    embedding entries too, listed in the report's `silenced`) or "space-structured" (whole
    channel spaces, the weakest of each layer by the root mean square of their weights first:
    structured pruning that `minimize` turns into smaller layers) or "space-uniform" (the same
    share of every layer's spaces, each layer's weakest). Otherwise biases, norms and the
    output layer (unless `include_output_layer`) are left alone.
    """
    report = _native.prune_file(
        os.fspath(src),
        os.fspath(dst),
        sparsity=sparsity,
        remove=remove,
        scope=scope,
        criterion=criterion,
        coupling=coupling,
        include_output_layer=include_output_layer,
    )
    return SparsifyReport.from_dict(json.loads(report))


def channel_spaces(src: str | os.PathLike, *, include_output_layer: bool = False) -> list[dict[str, Any]]:
    """The channel spaces of the prunable weights of the model at `src`, for a group lasso that acts on
    whole channels across layers, as space-coupled pruning does: a list of `{"tensor", "axis", "spaces"}`,
    one per weight axis (rows, columns) and per bias, norm scale or embedding table writing a space, where
    `spaces[i]` numbers the space of entry `i` along `axis` (equal numbers: one space, such as a residual
    stream's channel in every block that writes or reads it, with its LayerNorm scales)."""
    return json.loads(_native.channel_spaces(os.fspath(src), include_output_layer=include_output_layer))


def release_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    calibration: str = "threshold:1.5",
    seed: int = 0,
    include_output_layer: bool = False,
) -> SparsifyReport:
    """Turns the exact zeros inside the linear layers' weights of `src` into small noise, so a
    minimized model can train its full capacity again.

    `calibration`: "std:X" (normal noise with X times the standard deviation of the tensor's
    non-zero weights) or "threshold:X" (uniform in [1, X] times its smallest non-zero magnitude,
    with a random sign: above the last pruning threshold).
    """
    report = _native.release_file(
        os.fspath(src), os.fspath(dst), calibration=calibration, seed=seed, include_output_layer=include_output_layer
    )
    return SparsifyReport.from_dict(json.loads(report))


def _in_memory(
    rewrite: Callable[..., SparsifyReport], model: ModelLike, options
) -> tuple[onnx.ModelProto, SparsifyReport]:
    with tempfile.TemporaryDirectory(prefix="onnx-minimize-") as folder:
        src, _ = _staged(model, Path(folder))
        dst = Path(folder) / "rewritten.onnx"
        report = rewrite(src, dst, **options)
        return _load(dst), report


def prune(model: ModelLike, **options) -> tuple[onnx.ModelProto, SparsifyReport]:
    """`prune_file` on an `onnx.ModelProto`, bytes or a path; returns `(pruned model, report)`."""
    return _in_memory(prune_file, model, options)


def release(model: ModelLike, **options) -> tuple[onnx.ModelProto, SparsifyReport]:
    """`release_file` on an `onnx.ModelProto`, bytes or a path; returns `(released model, report)`."""
    return _in_memory(release_file, model, options)


def operators() -> dict[str, list[str]]:
    """Operator types with a channel rule ("reads"; all others are kept whole) and those a
    rewrite can add ("emits"; what a runtime of minimized models must support)."""
    reads, emits = _native.operators()
    return {"reads": reads, "emits": emits}
