"""Typed reports: the fields of the command line's JSON report (`--report`), as dataclasses."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple


@dataclass(frozen=True)
class LayerReport:
    """One layer that lost channels: its input and output widths before and after."""

    node: str
    op: str
    inputs_before: int
    inputs_after: int
    outputs_before: int
    outputs_after: int
    #: Output channels that left because they were constant (folded into the next layer's bias).
    removed_constant: int
    #: Output channels that left because nothing needed reads them.
    removed_dead: int


@dataclass(frozen=True)
class Reason:
    """Why something was kept: a stable `code` for pipelines, the `node` it names, and a message."""

    code: str
    node: str | None
    message: str


@dataclass(frozen=True)
class Blocked:
    """A channel space holding `removable` channels that `reasons` kept."""

    values: list[str]
    width: int
    removable: int
    reasons: list[Reason]


@dataclass(frozen=True)
class GatheredInput:
    """A graph input whose unused features a Gather now drops (`gather_inputs=True`)."""

    input: str
    features: int
    kept: int


@dataclass(frozen=True)
class Size:
    """Deployable size: elements of every stored tensor, and bytes of the file plus its external data."""

    params: int
    bytes: int


@dataclass(frozen=True)
class OutputCheck:
    output: str
    #: Largest |original - minimized| over all runs, divided by the largest |original|.
    max_relative_deviation: float
    #: For an output read from an activation quantizer: one of its steps, the absolute
    #: deviation accepted besides the tolerance (float rounding can move a quantized value by one).
    quantization_step: float | None = None


@dataclass(frozen=True)
class Verification:
    """How tract checked the minimized model against the original."""

    runs: int
    input_shapes: list[list[list[int]]]
    tolerance: float
    outputs: list[OutputCheck]
    seconds: float
    #: Both models were compared as float32 (tract cannot run their own float types).
    as_float32: bool
    #: "whole", or "blockwise" (piece by piece, `pieces` of them).
    mode: str
    pieces: int | None
    #: Input sets with guessed dynamic sizes the *original* model cannot run on (a batch size
    #: baked into a reshape), as tried: nothing to compare there.
    skipped: list[str] = dataclasses.field(default_factory=list)


@dataclass(frozen=True)
class Report:
    """What a minimization removed and what it could not, sizes before and after, and the check.

    `str(report)` is the command line's summary table; `to_dict()` its JSON report.
    """

    input: str
    output: str | None
    layers: list[LayerReport]
    blocked: list[Blocked]
    #: Nodes without a channel rule (or whose operands it does not cover), with the reason.
    opaque: list[Reason]
    gathered_inputs: list[GatheredInput]
    #: Quantized weights stored as float: their new values have no exact integer form.
    stored_float: list[str]
    before: Size
    after: Size
    verification: Verification | None
    seconds_analysis: float
    seconds_total: float
    summary: str = dataclasses.field(default="", repr=False, compare=False)

    @property
    def compression(self) -> float:
        """Parameters before over after."""
        return self.before.params / max(self.after.params, 1)

    def to_dict(self) -> dict[str, Any]:
        """The JSON report's fields."""
        d = dataclasses.asdict(self)
        del d["summary"]
        return d

    def __str__(self) -> str:
        return self.summary

    @classmethod
    def from_dict(cls, d: dict[str, Any], summary: str = "") -> Report:
        v = d.get("verification")
        return cls(
            input=d["input"],
            output=d.get("output"),
            layers=[LayerReport(**x) for x in d["layers"]],
            blocked=[Blocked(**{**b, "reasons": [Reason(**r) for r in b["reasons"]]}) for b in d["blocked"]],
            opaque=[Reason(**r) for r in d["opaque"]],
            gathered_inputs=[GatheredInput(**g) for g in d["gathered_inputs"]],
            stored_float=d["stored_float"],
            before=Size(**d["before"]),
            after=Size(**d["after"]),
            verification=None
            if v is None
            else Verification(**{**v, "outputs": [OutputCheck(**o) for o in v["outputs"]]}),
            seconds_analysis=d["seconds_analysis"],
            seconds_total=d["seconds_total"],
            summary=summary,
        )


@dataclass(frozen=True)
class TensorChange:
    """What `prune` or `release` did to one weight tensor."""

    tensor: str
    elements: int
    zeros_before: int
    zeros_after: int


@dataclass(frozen=True)
class SparsifyReport:
    """What `prune` or `release` did: per tensor, and the sparsity of all prunable weights."""

    tensors: list[TensorChange]
    sparsity_before: float
    sparsity_after: float
    #: Biases, norm scales and embedding entries zeroed with the channels that the space-coupled
    #: criterion left without weights.
    silenced: list[TensorChange] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SparsifyReport:
        changes = lambda key: [TensorChange(**t) for t in d.get(key, [])]
        return cls(changes("tensors"), d["sparsity_before"], d["sparsity_after"], changes("silenced"))


class Progress(NamedTuple):
    """One progress event: a stage begins (`done` is None), or it has handled `done` of `total`
    bytes in `items` of `of` `unit`s (tensors written, pieces verified)."""

    stage: str
    done: int | None
    total: int | None
    items: int
    of: int
    unit: str
