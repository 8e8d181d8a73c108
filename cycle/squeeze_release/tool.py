"""The onnx-minimize binary, called for every structural step so the cycle uses exactly what users run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class ToolError(RuntimeError):
    """onnx-minimize refused or failed; the message carries its stderr and exit code."""


def binary() -> str:
    """$ONNX_MINIMIZE, else this checkout's release then debug build, else the one on PATH."""
    if os.environ.get("ONNX_MINIMIZE"):
        return os.environ["ONNX_MINIMIZE"]
    for build in ("release", "debug"):
        candidate = REPO / "target" / build / "onnx-minimize"
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("onnx-minimize")
    if found is None:
        raise ToolError("onnx-minimize not found: run `cargo build --release` or set $ONNX_MINIMIZE")
    return found


def run(*args: str | os.PathLike) -> dict:
    """Runs one subcommand with a JSON report and returns the report."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [binary(), *map(str, args), "--quiet", "--report", str(report)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ToolError(f"{' '.join(cmd)} exited with {done.returncode}: {done.stderr.strip()}")
        return json.loads(report.read_text())


def prune(src, dst, fraction: float, config) -> dict:
    """Zeroes `fraction` of the weights not zero yet; `config`: the cycle's Config (criterion, coupling, scope)."""
    flags = ["--criterion", config.criterion, "--coupling", str(config.coupling), "--scope", config.scope]
    return run("prune", src, dst, "--remove", f"{fraction:.6f}", *flags)


def minimize(src, dst, gather_inputs: bool = True, seed: int = 0) -> dict:
    flags = ["--gather-inputs"] if gather_inputs else []
    return run(src, dst, *flags, "--seed", str(seed))


def release(src, dst, calibration: str, seed: int) -> dict:
    return run("release", src, dst, "--calibration", calibration, "--seed", str(seed))
