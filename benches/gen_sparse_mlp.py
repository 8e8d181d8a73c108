#!/usr/bin/env python3
"""Generate a large pruned ("sparse") MLP as ONNX, for benchmarking onnx-minimize.

    python benches/gen_sparse_mlp.py --params 1e9 --out bench-out/models
        [--sparsity 0.9] [--dead-frac 0.3] [--dead-out-frac 0.05] [--seed 0]
        [--depth 8] [--in-features W0] [--classes 10]

Writes, in DIR:

* ``sparse_mlp_<N>.onnx``       the graph, with every initializer stored as external data
* ``sparse_mlp_<N>.onnx.data``  one data file, referenced by the relative location
                                ``sparse_mlp_<N>.onnx.data``, tensors 4096-byte aligned
* ``sparse_mlp_<N>.meta.json``  what was generated: widths, parameter count, how many
                                units of each hidden layer are dead or constant, and the
                                parameter count a perfect minimizer reaches

``<N>`` is the requested parameter count written compactly (1e9, 5e7, 266610, ...).

The model (float32, opset 17)::

    x [batch, W0] -> (Gemm(transB=1) + Relu) x depth, width H -> Gemm -> y [batch, classes]

``batch`` is a dynamic dimension.  ``W0`` defaults to ``H``, and ``H`` is chosen so that the
total parameter count (weights and biases) is as close as possible to ``--params``
(``depth * H^2`` dominates: 1e9 gives 8 layers of width 11180).

Weights are He-scaled normal with ``--sparsity`` of them zeroed at random (unstructured
pruning).  In every hidden layer, additionally:

* ``--dead-frac`` of the units get an all-zero incoming row; three quarters of those get a
  bias <= 0 (ReLU output always 0: *dead*), one quarter a bias > 0 (output is the constant
  relu(b): *constant*, to be folded into the next layer's bias);
* ``--dead-out-frac`` of the other units get an all-zero column in the next layer's weight
  (their output is unused: *dead*, and so is their incoming row).

Memory: nothing of model size is ever held.  Each weight matrix is generated and appended to
the data file in row chunks of about 8M elements (32 MB), the TensorProtos only carry
``external_data`` entries (location, offset, length), and only the small graph proto is
serialized.  Peak RSS is ~200 MB whatever ``--params`` is (numpy, onnx, one chunk and its
temporaries); a 1e9-parameter model is written at disk speed plus RNG time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from counts import parse_count, size_tag  # noqa: E402

ALIGN = 4096
CHUNK_ELEMS = 8 * 1024 * 1024


def model_paths(out_dir: str, n: int) -> tuple[str, str, str]:
    base = os.path.join(out_dir, f"sparse_mlp_{size_tag(n)}")
    return base + ".onnx", base + ".onnx.data", base + ".meta.json"


def total_params(w0: int, h: int, depth: int, classes: int) -> int:
    return (w0 * h + h) + (depth - 1) * (h * h + h) + (classes * h + classes)


def choose_width(n: int, depth: int, in_features: int | None, classes: int) -> int:
    """Largest-fit width H (>= 2) whose parameter count is closest to n."""
    if in_features is None:
        # depth*H^2 + (depth + classes)*H + classes = n
        a, b, c = depth, depth + classes, classes - n
    else:
        # (depth-1)*H^2 + (W0 + depth + classes)*H + classes = n
        a, b, c = depth - 1, in_features + depth + classes, classes - n
    if a == 0:
        h = -c / b
    else:
        h = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    best = None
    for cand in {max(2, math.floor(h)), max(2, math.ceil(h))}:
        w0 = cand if in_features is None else in_features
        err = abs(total_params(w0, cand, depth, classes) - n)
        if best is None or err < best[0]:
            best = (err, cand)
    return best[1]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class DataWriter:
    """Appends raw little-endian tensors to one file, aligned, and makes external TensorProtos."""

    def __init__(self, path: str):
        self.path = path
        self.location = os.path.basename(path)
        self.f = open(path, "wb")
        self.offset = 0

    def _align(self) -> None:
        pad = (-self.offset) % ALIGN
        if pad:
            self.f.write(b"\0" * pad)
            self.offset += pad

    def begin(self) -> int:
        self._align()
        return self.offset

    def write(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype="<f4")
        self.f.write(memoryview(arr).cast("B"))
        self.offset += arr.nbytes

    def tensor(self, name: str, dims: list[int], start: int) -> TensorProto:
        t = TensorProto()
        t.name = name
        t.data_type = TensorProto.FLOAT
        t.dims.extend(dims)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.location), ("offset", str(start)), ("length", str(self.offset - start))):
            e = t.external_data.add()
            e.key = k
            e.value = v
        return t

    def close(self) -> None:
        self.f.close()


def write_weight(
    dw: DataWriter,
    rng: np.random.Generator,
    name: str,
    rows: int,
    cols: int,
    sparsity: float,
    zero_rows: np.ndarray,
    zero_cols: np.ndarray,
) -> tuple[TensorProto, np.ndarray, np.ndarray]:
    """A [rows, cols] float32 weight, written chunk by chunk: never more than CHUNK_ELEMS in RAM.

    Also returns which rows are all zero and which columns have a non-zero (by construction
    or by chance: with 10 rows at 90 % sparsity a third of the columns are all zero)."""
    std = math.sqrt(2.0 / max(1.0, cols * (1.0 - sparsity)))
    row_is_zero = np.zeros(rows, dtype=bool)
    row_is_zero[zero_rows] = True
    step = max(1, CHUNK_ELEMS // cols)
    zero_row = np.zeros(rows, dtype=bool)
    col_nonzero = np.zeros(cols, dtype=bool)
    start = dw.begin()
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        w = rng.standard_normal((r1 - r0, cols), dtype=np.float32)
        w *= np.float32(std)
        if sparsity > 0:
            w[rng.random((r1 - r0, cols), dtype=np.float32) < sparsity] = 0.0
        if len(zero_cols):
            w[:, zero_cols] = 0.0
        w[row_is_zero[r0:r1]] = 0.0
        nz = w != 0
        zero_row[r0:r1] = ~nz.any(axis=1)
        col_nonzero |= nz.any(axis=0)
        dw.write(w)
        del w, nz
    return dw.tensor(name, [rows, cols], start), zero_row, col_nonzero


def generate(
    n: int,
    out_dir: str,
    sparsity: float = 0.9,
    dead_frac: float = 0.3,
    dead_out_frac: float = 0.05,
    seed: int = 0,
    depth: int = 8,
    in_features: int | None = None,
    classes: int = 10,
    quiet: bool = False,
) -> dict:
    t0 = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    onnx_path, data_path, meta_path = model_paths(out_dir, n)
    h = choose_width(n, depth, in_features, classes)
    w0 = h if in_features is None else in_features
    rng = np.random.default_rng(seed)

    dw = DataWriter(data_path)
    inits: list[TensorProto] = []
    nodes = []
    layers_meta = []
    prev = "x"
    prev_zero_out = np.zeros(0, dtype=np.int64)  # columns of the next weight to zero
    zero_row_of, col_nonzero_of, biases = [], [], []
    fan_in = w0
    for i in range(depth + 1):
        last = i == depth
        out = classes if last else h
        if last:
            zero_rows = np.zeros(0, dtype=np.int64)
            bias = (rng.standard_normal(out) * 0.1).astype(np.float32)
            n_dead_in = n_const = n_dead_out = 0
            next_zero_out = np.zeros(0, dtype=np.int64)
        else:
            n_zero_in = int(round(dead_frac * h))
            n_dead_out = int(round(dead_out_frac * h))
            n_dead_out = min(n_dead_out, h - n_zero_in - 1) if h - n_zero_in - 1 > 0 else 0
            perm = rng.permutation(h)
            zero_rows = np.sort(perm[:n_zero_in])
            next_zero_out = np.sort(perm[n_zero_in : n_zero_in + n_dead_out])
            n_const = n_zero_in // 4
            n_dead_in = n_zero_in - n_const
            bias = (rng.standard_normal(out) * 0.1).astype(np.float32)
            # dead: zero row and bias <= 0; constant: zero row and bias > 0
            bias[zero_rows[:n_dead_in]] = -np.abs(bias[zero_rows[:n_dead_in]])
            bias[zero_rows[n_dead_in:]] = np.abs(bias[zero_rows[n_dead_in:]]) + np.float32(0.05)
        wname, bname = f"fc{i}.weight", f"fc{i}.bias"
        t, zero_row, col_nonzero = write_weight(dw, rng, wname, out, fan_in, sparsity, zero_rows, prev_zero_out)
        inits.append(t)
        zero_row_of.append(zero_row)
        col_nonzero_of.append(col_nonzero)
        biases.append(bias)
        start = dw.begin()
        dw.write(bias)
        inits.append(dw.tensor(bname, [out], start))

        y = "y" if last else f"fc{i}_out"
        nodes.append(helper.make_node("Gemm", [prev, wname, bname], [y], name=f"fc{i}", transB=1))
        if not last:
            r = f"relu{i}_out"
            nodes.append(helper.make_node("Relu", [y], [r], name=f"relu{i}"))
            prev = r
        layers_meta.append(
            {
                "node": f"fc{i}",
                "in": fan_in,
                "out": out,
                "planted_zero_in_row": int(n_dead_in + n_const),
                "planted_zero_out_col": int(n_dead_out),
            }
        )
        prev_zero_out = next_zero_out
        fan_in = out
        if not quiet:
            print(
                f"  fc{i}: [{out} x {layers_meta[-1]['in']}] written, data {dw.offset / 1e6:.1f} MB, "
                f"peak RSS {peak_rss_mb():.0f} MB",
                file=sys.stderr,
            )
    dw.close()

    # What a minimizer that removes every unit with an all-zero incoming row (dead or
    # constant) or an all-zero outgoing column should keep.  Direct analysis: a column
    # counts as non-zero if any row has a non-zero in it, removed rows included, so a
    # minimizer iterating to a fixpoint can only do as well or (rarely) slightly better.
    params_after = 0
    kept_prev = w0  # the graph input keeps its width
    for i, lm in enumerate(layers_meta):
        if i < depth:
            zr = zero_row_of[i]
            unused = ~col_nonzero_of[i + 1]
            removed = zr | unused
            lm["zero_in_row"] = int(zr.sum())
            lm["zero_in_row_dead"] = int((zr & (biases[i] <= 0)).sum())
            lm["zero_in_row_constant"] = int((zr & (biases[i] > 0)).sum())
            lm["zero_out_col"] = int(unused.sum())
            kept = int((~removed).sum())
        else:
            kept = classes
        lm["kept_after"] = kept
        params_after += kept * kept_prev + kept
        kept_prev = kept

    graph = helper.make_graph(
        nodes,
        f"sparse_mlp_{size_tag(n)}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", w0])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", classes])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=8,
        producer_name="onnx-minimize benches/gen_sparse_mlp.py",
    )
    with open(onnx_path, "wb") as f:
        f.write(model.SerializeToString())
    onnx.checker.check_model(onnx_path)  # path form: checks the external data references too

    params = total_params(w0, h, depth, classes)
    meta = {
        "file": os.path.basename(onnx_path),
        "data_file": os.path.basename(data_path),
        "requested_params": n,
        "params": params,
        "in_features": w0,
        "width": h,
        "depth": depth,
        "classes": classes,
        "sparsity": sparsity,
        "dead_frac": dead_frac,
        "dead_out_frac": dead_out_frac,
        "seed": seed,
        "onnx_bytes": os.path.getsize(onnx_path),
        "data_bytes": os.path.getsize(data_path),
        "expected_params_after": params_after,
        "layers": layers_meta,
        "seconds": round(time.perf_counter() - t0, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", required=True, help="target parameter count, e.g. 1e9")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--sparsity", type=float, default=0.9, help="fraction of weights zeroed at random")
    ap.add_argument("--dead-frac", type=float, default=0.3, help="fraction of each hidden layer's units with a zero incoming row")
    ap.add_argument("--dead-out-frac", type=float, default=0.05, help="fraction of each hidden layer's units with a zero outgoing column")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--depth", type=int, default=8, help="number of hidden Gemm+Relu layers")
    ap.add_argument("--in-features", type=int, default=None, help="input width W0 (default: the hidden width)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("-q", "--quiet", action="store_true")
    a = ap.parse_args()
    if a.depth < 1:
        ap.error("--depth must be >= 1")
    n = parse_count(a.params)
    m = generate(n, a.out, a.sparsity, a.dead_frac, a.dead_out_frac, a.seed, a.depth, a.in_features, a.classes, a.quiet)
    onnx_path, data_path, meta_path = model_paths(a.out, n)
    print(
        f"{onnx_path}: {m['params']:,} parameters (requested {n:,}): "
        f"x[batch,{m['in_features']}] -> {m['depth']} x {m['width']} -> {m['classes']}, "
        f"sparsity {m['sparsity']}, a perfect minimizer keeps {m['expected_params_after']:,}"
    )
    print(f"  {onnx_path}: {m['onnx_bytes']:,} bytes")
    print(f"  {data_path}: {m['data_bytes']:,} bytes ({m['data_bytes'] / 2**30:.2f} GiB)")
    print(f"  {meta_path}")
    print(f"  took {m['seconds']:.1f} s, peak RSS {m['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
