"""Type stubs of the Rust extension; the documented API is the package's `__init__`."""

from typing import Callable

__version__: str

class OnnxMinimizeError(Exception): ...

class BadInputError(OnnxMinimizeError):
    exit_code: int

class UsageError(OnnxMinimizeError):
    exit_code: int

class VerificationError(OnnxMinimizeError):
    exit_code: int

class TractError(OnnxMinimizeError):
    exit_code: int

def minimize_file(
    src: str,
    dst: str | None,
    *,
    verify: str = "auto",
    tolerance: float | None = None,
    input_shapes: dict[str, list[int]] | None = None,
    inputs: list[str] | None = None,
    runs: int = 3,
    seed: int = 0x5EED,
    block_mb: float = 256.0,
    external_data: bool | None = None,
    gather_inputs: bool = False,
    compensated_layernorm: str = "ops",
    progress: Callable[[str, int | None, int | None, int, int, str], object] | None = None,
) -> tuple[str, str]: ...
def prune_file(
    src: str,
    dst: str,
    *,
    sparsity: float | None = None,
    remove: float | None = None,
    scope: str = "global",
    criterion: str = "magnitude",
    coupling: float = 0.5,
    include_output_layer: bool = False,
) -> str: ...
def release_file(
    src: str, dst: str, *, calibration: str = "threshold:1.5", seed: int = 0, include_output_layer: bool = False
) -> str: ...
def channel_spaces(src: str, *, include_output_layer: bool = False) -> str: ...
def cli(argv: list[str]) -> int: ...
def operators() -> tuple[list[str], list[str]]: ...
