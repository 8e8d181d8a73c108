"""The Squeeze-Release cycle: prune, fine-tune with the zeros frozen, minimize, release, train, and again while
the metric holds.

onnx-minimize does every structural step (so the cycle ships exactly what users run by hand); the user's
PyTorch code does the training, on an `OnnxModule` of the current model. Everything a step produces is a file
in the run folder and a line in `state.json`, written atomically after the step, so an interrupted run
resumes losing only the step in progress.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnx
import torch

from . import onnx_torch, tool

Train = Callable[[onnx_torch.OnnxModule, float, int], None]
Metric = Callable[[onnx_torch.OnnxModule], float]


@dataclasses.dataclass
class Config:
    """How hard to push. The defaults are what the MNIST recipes measured best with (docs/method.md)."""

    #: Share of the current model's non-zero prunable weights zeroed in the first cycle.
    prune_fraction: float = 0.5
    #: After a kept cycle the share that survives pruning is multiplied by this (0.5: 50% -> 75% -> 87.5%);
    #: a rejected cycle halves the prune fraction instead. 1.0 keeps the fraction fixed.
    grow: float = 0.5
    #: The prune fraction never goes above this.
    max_fraction: float = 0.9
    #: onnx-minimize prune --criterion: "unit-coupled" gathers zeros into whole units, "magnitude" is plain IMP.
    criterion: str = "unit-coupled"
    #: onnx-minimize prune --coupling: how strongly unit-coupled scores follow whole units.
    coupling: float = 2.0
    scope: str = "global"
    #: onnx-minimize release --calibration ("threshold:X", "std:X"), or "output:X": the largest std:s whose
    #: relative change of the outputs on the calibration sample stays within X.
    calibration: str = "threshold:1.5"
    #: False: prune and minimize only (iterative pruning without release, a baseline).
    release: bool = True
    finetune_epochs: float = 1.0
    train_epochs: float = 3.0
    #: How far the guard metric may fall below the dense baseline's.
    tolerance: float = 1.0
    max_cycles: int = 20
    #: Rejected cycles in a row before stopping.
    retries: int = 3
    #: Training of the smallest kept model once the loop ends (released first when `release` is on,
    #: masked otherwise); kept only if it scores at least as well.
    final_epochs: float = 10.0
    gather_inputs: bool = True
    #: onnx-minimize --compensated-layernorm: "ops" (plain operators) or "concat" (a LayerNormalization over
    #: the kept channels and the removed constants, whose scale and bias keep training in the executor).
    compensated_layernorm: str = "ops"
    seed: int = 0


STEPS = ("prune", "finetune", "minimize", "release", "train", "judge", "final")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _write_json(path: Path, value) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json.tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)


def _seed(config: Config, cycle: int, step: str) -> int:
    return config.seed * 1_000_003 + cycle * 101 + STEPS.index(step)


def _pruned_back(minimized: Path, pruned: Path) -> float | None:
    """Share of the positions released after `minimized` (its exact zeros) that `pruned` zeroes again."""
    weights = lambda path: {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    before, after = weights(minimized), weights(pruned)
    released = back = 0
    for name, w in before.items():
        if w.dtype.kind == "f" and name in after and after[name].shape == w.shape:
            zeros = w == 0
            released += int(zeros.sum())
            back += int((after[name][zeros] == 0).sum())
    return back / released if released else None


def _widths(report: dict) -> dict[str, list[int]]:
    return {layer["node"]: [layer["inputs_after"], layer["outputs_after"]] for layer in report["layers"]}


class Run:
    """One run folder. `Run(...).run()` starts it or resumes it where `state.json` left off."""

    def __init__(
        self,
        model: str | os.PathLike,
        folder: str | os.PathLike,
        train: Train,
        evaluate: Metric,
        test: Metric | None = None,
        config: Config | None = None,
        sample: torch.Tensor | None = None,
    ):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.train, self.evaluate, self.test, self.sample = train, evaluate, test or evaluate, sample
        self.state_path = self.folder / "state.json"
        if self.state_path.exists():
            self.state = json.loads(self.state_path.read_text())
            self.config = Config(**self.state["config"])
            log(f"resuming {self.folder} at cycle {self.state['current']['index']}")
        else:
            self.config = config or Config()
            if self.config.calibration.startswith("output:") and sample is None:
                raise ValueError("calibration output:X needs a `sample` input batch to measure the outputs on")
            # Through onnx: a model with external data arrives whole (its data file beside the copy).
            onnx_torch.save(onnx.load(os.fspath(model)), self.folder / "baseline.onnx")
            self.state = {"config": dataclasses.asdict(self.config), "cycles": [], "finished": False}

    def save(self) -> None:
        _write_json(self.state_path, self.state)

    def path(self, name: str) -> Path:
        return self.folder / name

    def module(self, name: str) -> onnx_torch.OnnxModule:
        return onnx_torch.load(self.path(name))

    def run(self) -> dict:
        if "baseline" not in self.state:
            self._baseline()
        while not self.state["finished"]:
            self._cycle()
        return self._finish()

    def _baseline(self) -> None:
        log("baseline: minimizing and evaluating")
        report = tool.minimize(self.path("baseline.onnx"), self.path("baseline.min.onnx"), self.config)
        module = self.module("baseline.onnx")
        self.state["baseline"] = {
            "params": report["before"]["params"],
            "bytes": report["before"]["bytes"],
            "metric": self.evaluate(module),
            "test": self.test(module),
            "layer_widths": _widths(report),
        }
        self.state["current"] = {
            "index": 1,
            "fraction": self.config.prune_fraction,
            "start": "baseline.onnx",
            "done": {},
        }
        self.state["best"] = None
        self.state["failures"] = 0
        self.state["seconds"] = 0.0
        self.save()

    def _step(self, name: str, work: Callable[[], dict]) -> dict:
        return self._once(self.state["current"]["done"], name, work)

    def _once(self, record: dict, name: str, work: Callable[[], dict]) -> dict:
        """`record[name]`, doing `work` (timed, then saved) only if no earlier run did."""
        if name not in record:
            started = time.time()
            info = work()
            info["seconds"] = round(time.time() - started, 3)
            record[name] = info
            self.state["seconds"] += info["seconds"]
            self.save()
        return record[name]

    def _cycle(self) -> None:
        c, cur = self.config, self.state["current"]
        k, fraction = cur["index"], cur["fraction"]
        tag = f"cycle{k:02d}"

        def prune():
            # The model may carry zeros already (no release, or a minimized start): prune a share of the rest.
            report = tool.prune(self.path(cur["start"]), self.path(f"{tag}.pruned.onnx"), fraction, c)
            info = {"file": f"{tag}.pruned.onnx", "sparsity": report["sparsity_after"]}
            if cur["start"].endswith(".trained.onnx"):
                # The failure to watch: released noise pruned straight back.
                released = cur["start"].replace(".trained.onnx", ".min.onnx")
                info["released_pruned_back"] = _pruned_back(self.path(released), self.path(info["file"]))
            return info

        def finetune():
            module = self.module(f"{tag}.pruned.onnx")
            frozen = module.mask_zeros()
            self.train(module, c.finetune_epochs, _seed(c, k, "finetune"))
            onnx_torch.save(module.to_onnx(), self.path(f"{tag}.finetuned.onnx"))
            return {"file": f"{tag}.finetuned.onnx", "frozen_zeros": frozen}

        def minimize():
            try:
                report = tool.minimize(self.path(f"{tag}.finetuned.onnx"), self.path(f"{tag}.min.onnx"), c)
            except tool.ToolError as e:
                # onnx-minimize writes nothing it could not verify (tract fails on some degenerate
                # one-unit models): such a cycle cannot be judged, so it is rejected.
                return {"error": str(e)}
            module = self.module(f"{tag}.min.onnx")
            return {
                "file": f"{tag}.min.onnx",
                "params": report["after"]["params"],
                "bytes": report["after"]["bytes"],
                "layer_widths": _widths(report),
                "metric": self.evaluate(module),
                "deviation": max(o["max_relative_deviation"] for o in report["verification"]["outputs"]),
            }

        def release():
            calibration = self._calibration(f"{tag}.min.onnx", f"{tag}.released.onnx", _seed(c, k, "release"))
            return {"file": f"{tag}.released.onnx", "calibration": calibration}

        def train():
            module = self.module(f"{tag}.released.onnx")
            self.train(module, c.train_epochs, _seed(c, k, "train"))
            onnx_torch.save(module.to_onnx(), self.path(f"{tag}.trained.onnx"))
            return {"file": f"{tag}.trained.onnx", "metric": self.evaluate(module)}

        self._step("prune", prune)
        self._step("finetune", finetune)
        minimized = self._step("minimize", minimize)
        if "error" in minimized:
            why = minimized["error"].splitlines()[0][:300]
            log(f"cycle {k:2d}: the minimized model could not be verified, rejected: {why}")
            self._advance(k, fraction, {"cycle": k, "prune_fraction": fraction, "accepted": False, **minimized})
            return
        if c.release:
            self._step("release", release)
            trained = self._step("train", train)
        self._judge(k, fraction, tag, minimized, trained if c.release else None)

    def _calibration(self, src: str, dst: str, seed: int) -> str:
        kind = self.config.calibration
        if not kind.startswith("output:"):
            tool.release(self.path(src), self.path(dst), kind, seed)
            return kind
        # Bisect the noise scale on the measured relative change of the outputs.
        bound = float(kind.split(":", 1)[1])
        with torch.no_grad():
            reference = self.module(src)(self.sample)
            lo, hi = 0.0, 1.0
            for _ in range(10):
                mid = (lo + hi) / 2
                tool.release(self.path(src), self.path(dst), f"std:{mid:.6g}", seed)
                change = (self.module(dst)(self.sample) - reference).norm() / reference.norm()
                lo, hi = (mid, hi) if change <= bound else (lo, mid)
        tool.release(self.path(src), self.path(dst), f"std:{lo:.6g}", seed)
        return f"std:{lo:.6g}"

    def _polish(self, best: dict) -> dict:
        c, k = self.config, self.state["current"]["index"]
        if c.release:
            self._calibration(best["model"], "polish.released.onnx", _seed(c, k, "final"))
            module = self.module("polish.released.onnx")
        else:
            module = self.module(best["model"])
            module.mask_zeros()
        self.train(module, c.final_epochs, _seed(c, k, "final"))
        onnx_torch.save(module.to_onnx(), self.path("polish.trained.onnx"))
        metric = self.evaluate(module)
        log(f"final training: metric {metric:.2f} (kept model {best['metric']:.2f})")
        return {"file": "polish.trained.onnx", "metric": metric, "test": self.test(module)}

    def _judge(self, k: int, fraction: float, tag: str, minimized: dict, trained: dict | None) -> None:
        c, base = self.config, self.state["baseline"]
        # The released and trained model has the minimized one's shapes: deploy whichever scores higher.
        best = trained if trained is not None and trained["metric"] >= minimized["metric"] else minimized
        module = self.module(best["file"])
        pruned = self.state["current"]["done"]["prune"]
        entry = {
            "cycle": k,
            "prune_fraction": fraction,
            "sparsity": pruned["sparsity"],
            "released_pruned_back": pruned.get("released_pruned_back"),
            "params": minimized["params"],
            "bytes": minimized["bytes"],
            "compression": base["params"] / minimized["params"],
            "metric_minimized": minimized["metric"],
            "metric": best["metric"],
            "test": self.test(module),
            "model": best["file"],
            "layer_widths": minimized["layer_widths"],
        }
        entry["accepted"] = entry["metric"] >= base["metric"] - c.tolerance
        log(
            f"cycle {k:2d}: sparsity {entry['sparsity']:.3f}, params {entry['params']:,}, "
            f"compression {entry['compression']:.1f}x, metric {entry['metric']:.2f} "
            f"(test {entry['test']:.2f}, baseline {base['metric']:.2f}) {'kept' if entry['accepted'] else 'rejected'}"
        )
        self._advance(k, fraction, entry)

    def _advance(self, k: int, fraction: float, entry: dict) -> None:
        """Records a judged cycle; the next starts from it when kept, else from the same start, gentler."""
        c, cur = self.config, self.state["current"]
        self.state["cycles"].append(entry)
        if entry["accepted"]:
            self.state["best"] = entry
            self.state["failures"] = 0
            grown = min(c.max_fraction, 1.0 - (1.0 - fraction) * c.grow)
            nxt = {"index": k + 1, "fraction": grown, "start": entry["model"], "done": {}}
        else:
            self.state["failures"] += 1
            nxt = {"index": k + 1, "fraction": fraction / 2, "start": cur["start"], "done": {}}
        self.state["current"] = nxt
        self.state["finished"] = self.state["failures"] > c.retries or k >= c.max_cycles
        self.save()

    def _finish(self) -> dict:
        base, best = self.state["baseline"], self.state["best"]
        final = best["model"] if best else "baseline.onnx"
        polished = best and self.config.final_epochs > 0 and self._once(self.state, "final", lambda: self._polish(best))
        if polished and polished["metric"] >= best["metric"]:
            final = polished["file"]
        try:
            report = tool.minimize(self.path(final), self.path("final.onnx"), self.config)
        except tool.ToolError:
            if not best or final == best["model"]:
                raise
            log("final training gave a model that could not be verified; keeping the cycle's model")
            final = best["model"]
            report = tool.minimize(self.path(final), self.path("final.onnx"), self.config)
        module = self.module("final.onnx")
        result = {
            "baseline_metric": base["metric"],
            "baseline_test": base["test"],
            "final_metric": self.evaluate(module),
            "final_test": self.test(module),
            "original_params": base["params"],
            "final_params": report["after"]["params"],
            "compression": base["params"] / report["after"]["params"],
            "original_bytes": base["bytes"],
            "final_bytes": report["after"]["bytes"],
            "layer_widths": _widths(report),
            "baseline_layer_widths": base["layer_widths"],
            "cycles": self.state["cycles"],
            "final_training": self.state.get("final"),
            "seconds": round(self.state["seconds"], 1),
            "config": self.state["config"],
        }
        _write_json(self.path("report.json"), result)
        plot(result, self.folder)
        log(
            f"final: {result['original_params']:,} -> {result['final_params']:,} params "
            f"({result['compression']:.1f}x), metric {result['final_metric']:.2f} (test {result['final_test']:.2f}) "
            f"against {result['baseline_metric']:.2f} (test {result['baseline_test']:.2f}); {self.folder / 'final.onnx'}"
        )
        return result


def run(model, folder, train: Train, evaluate: Metric, **kwargs) -> dict:
    """Runs (or resumes) the cycle on the ONNX file `model` in run folder `folder`; returns the report."""
    return Run(model, folder, train, evaluate, **kwargs).run()


def pyplot():
    """matplotlib's pyplot on a file backend (runs have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_plot(fig, ax, path: Path, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)


def plot(report: dict, folder: Path) -> None:
    """size_vs_accuracy.png and layer_widths.png in `folder`."""
    plt = pyplot()
    cycles = report["cycles"]
    fig, ax = plt.subplots(figsize=(6, 4))
    base = report["baseline_metric"]
    ax.axhline(base, color="grey", lw=1, label="dense baseline")
    ax.axhspan(base - report["config"]["tolerance"], base, color="grey", alpha=0.15, label="tolerance")
    kept = [c for c in cycles if c["accepted"]]
    sizes = [report["original_params"]] + [c["params"] for c in kept]
    ax.plot(sizes, [base] + [c["metric"] for c in kept], "o-", label="kept cycles")
    lost = [c for c in cycles if not c["accepted"] and "params" in c]
    ax.plot([c["params"] for c in lost], [c["metric"] for c in lost], "x", color="red", label="rejected")
    ax.set_xscale("log")
    ax.invert_xaxis()
    save_plot(fig, ax, folder / "size_vs_accuracy.png", "dense parameters (minimized)", "metric")

    fig, ax = plt.subplots(figsize=(6, 4))
    layers = list(report["baseline_layer_widths"])
    steps = [report["baseline_layer_widths"]] + [c["layer_widths"] for c in kept]
    for layer in layers:
        ax.plot(range(len(steps)), [s.get(layer, [0, 0])[1] for s in steps], "o-", label=f"{layer} out")
    if layers:
        ax.plot(range(len(steps)), [s.get(layers[0], [0, 0])[0] for s in steps], "s--", label=f"{layers[0]} in")
    ax.set_yscale("log")
    save_plot(fig, ax, folder / "layer_widths.png", "kept cycle", "width")
