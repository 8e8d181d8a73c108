"""The onnx-minimize package, for every structural step, so the cycle uses exactly what users run."""

from __future__ import annotations

import onnx_minimize

# What the cycle catches: onnx-minimize refused or failed (the message says why).
ToolError = onnx_minimize.OnnxMinimizeError


def prune(src, dst, fraction: float, config) -> dict:
    """Zeroes `fraction` of the weights not zero yet; `config`: the cycle's Config (criterion, coupling, scope)."""
    report = onnx_minimize.prune_file(
        src, dst, remove=fraction, criterion=config.criterion, coupling=config.coupling, scope=config.scope
    )
    return report.to_dict()


def minimize(src, dst, config) -> dict:
    """`config`: the cycle's Config (gather_inputs, compensated_layernorm)."""
    return onnx_minimize.minimize_file(
        src, dst, gather_inputs=config.gather_inputs, compensated_layernorm=config.compensated_layernorm
    ).to_dict()


def release(src, dst, calibration: str, seed: int) -> dict:
    return onnx_minimize.release_file(src, dst, calibration=calibration, seed=seed).to_dict()
