#!/usr/bin/env python3
"""Generate a Llama-shaped ONNX decoder with external data, without holding it in memory.

    python benches/gen_llama.py OUT.onnx [--layers 32] [--d-model 4096] [--heads 32]
        [--kv-heads 8] [--ffn 11008] [--vocab 32000] [--seq 8] [--dtype float16|bfloat16|float32]
        [--zero 0.5] [--seed 0] [--repeat-weights]

The graph is what the exporters write for Llama: token embedding Gather, decomposed RMSNorm,
separate q/k/v MatMuls, Reshape/Transpose head splits, rotary embeddings in the rotate_half form
(Slice/Neg/Concat times cos/sin tables), grouped-query attention with K/V repeated through
Unsqueeze/Expand/Reshape, a causal mask, Softmax, the output projection, SiLU-gated MLP and the
LM head. Shapes are static (batch 1, ``--seq`` tokens), so tract can run every piece.

``--zero`` zeroes that fraction of the MLP's hidden units (their gate and up columns: the unit
then outputs silu(0) * 0 = 0, which minimization removes with the matching down rows), of the
value dimensions (the same V columns in every key/value head; the output projection's matching
rows fold a zero) and of the rotary pairs of the keys (K columns d and d + head_dim/2 in every
key/value head: those query/key dimensions leave Q and K). Weights are written tensor by tensor, each tensor of 1 MiB or more at a 64 KiB boundary;
``--repeat-weights`` writes one layer's weights for every layer (same bytes, different names),
which makes a very large file quickly. Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import onnx
from onnx import TensorProto, helper

ALIGN = 64 << 10
ALIGN_FROM = 1 << 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--d-model", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=11008)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--seq", type=int, default=8)
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--zero", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat-weights", action="store_true")
    a = ap.parse_args()
    start = time.time()
    d, h, kvh, f, s = a.d_model, a.heads, a.kv_heads, a.ffn, a.seq
    hd = d // h
    rng = np.random.default_rng(a.seed)
    onnx_type = {"float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16, "float32": TensorProto.FLOAT}[
        a.dtype
    ]

    def encode(x: np.ndarray) -> bytes:
        x = x.astype(np.float32)
        if a.dtype == "float16":
            return x.astype(np.float16).tobytes()
        if a.dtype == "bfloat16":
            return (x.view(np.uint32) >> 16).astype(np.uint16).tobytes()
        return x.tobytes()

    data_name = os.path.basename(a.out) + ".data"
    data = open(os.path.join(os.path.dirname(os.path.abspath(a.out)), data_name), "wb")
    inits: list[TensorProto] = []
    params = 0

    def weight(name: str, raw: bytes, dims: list[int], elem: int = onnx_type) -> str:
        nonlocal params
        t = TensorProto(name=name, data_type=elem, dims=dims)
        params += int(np.prod(dims))
        if len(raw) < 1024:
            t.raw_data = raw
        else:
            off = data.tell()
            if len(raw) >= ALIGN_FROM and off % ALIGN:
                data.write(b"\0" * (ALIGN - off % ALIGN))
                off = data.tell()
            data.write(raw)
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data_name), ("offset", str(off)), ("length", str(len(raw)))):
                t.external_data.add(key=k, value=v)
        inits.append(t)
        return name

    def ints(name: str, vals: list[int]) -> str:
        inits.append(helper.make_tensor(name, TensorProto.INT64, [len(vals)], vals))
        return name

    def rand(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float32)

    def layer_weights() -> dict[str, bytes]:
        q, k, v, o = rand(d, d), rand(d, kvh * hd), rand(d, kvh * hd), rand(d, d)
        gate, up, down = rand(d, f), rand(d, f), rand(f, d)
        dead_units = rng.choice(f, int(f * a.zero), replace=False)
        gate[:, dead_units] = 0
        up[:, dead_units] = 0
        # Attention: the same value dimensions in every key/value head (the output projection
        # reads zeros there), and the same rotary pairs (d, d + hd/2) of the keys (a zero key
        # dimension rotates to zero: the pair leaves the queries and keys of the whole group).
        dead_v = rng.choice(hd, int(hd * a.zero), replace=False)
        dead_pairs = rng.choice(hd // 2, int(hd // 2 * a.zero), replace=False)
        for g in range(kvh):
            v[:, g * hd + dead_v] = 0
            k[:, g * hd + dead_pairs] = 0
            k[:, g * hd + hd // 2 + dead_pairs] = 0
        return {
            "q": encode(q), "k": encode(k), "v": encode(v), "o": encode(o),
            "gate": encode(gate), "up": encode(up), "down": encode(down),
            "ln1": encode(1 + rand(d)), "ln2": encode(1 + rand(d)),
        }  # fmt: skip

    nodes = []

    def node(op: str, inputs: list[str], name: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=f"{name}_node", **attrs))
        return name

    def rmsnorm(x: str, w: str, p: str) -> str:
        sq = node("Mul", [x, x], f"{p}_sq")
        mean = node("ReduceMean", [sq, "axes_last"], f"{p}_mean", keepdims=1)
        eps = node("Add", [mean, "eps"], f"{p}_eps")
        root = node("Sqrt", [eps], f"{p}_sqrt")
        normed = node("Div", [x, root], f"{p}_normed")
        return node("Mul", [normed, w], f"{p}_out")

    def rope(x: str, p: str) -> str:
        # x: [1, heads, s, hd]; rotate_half(x) = concat(-x2, x1)
        x1 = node("Slice", [x, "zero1", "half1", "axes_last"], f"{p}_x1")
        x2 = node("Slice", [x, "half1", "end1", "axes_last"], f"{p}_x2")
        neg = node("Neg", [x2], f"{p}_neg")
        rot = node("Concat", [neg, x1], f"{p}_rot", axis=-1)
        a_ = node("Mul", [x, "cos"], f"{p}_xcos")
        b_ = node("Mul", [rot, "sin"], f"{p}_rsin")
        return node("Add", [a_, b_], f"{p}_rope")

    # Shared constants.
    def const(name: str, vals: np.ndarray) -> None:
        t = TensorProto(name=name, data_type=onnx_type, dims=list(vals.shape))
        t.raw_data = encode(vals)
        inits.append(t)

    const("eps", np.array(1e-5, dtype=np.float32))
    ints("axes_last", [-1])
    ints("zero1", [0])
    ints("half1", [hd // 2])
    ints("end1", [hd])
    ints("shape_q", [1, s, h, hd])
    ints("shape_kv", [1, s, kvh, hd])
    ints("shape_rep", [1, kvh, h // kvh, s, hd])
    ints("shape_grp", [1, h, s, hd])
    ints("shape_out", [1, s, d])
    ints("unsq2", [2])
    pos = np.arange(s, dtype=np.float32)[:, None]
    inv = 1.0 / (10000 ** (np.arange(0, hd, 2, dtype=np.float32) / hd))
    ang = np.concatenate([pos * inv, pos * inv], axis=-1)
    const("cos", np.cos(ang))
    const("sin", np.sin(ang))
    const("causal", np.triu(np.full((s, s), -1e4, dtype=np.float32), 1))
    const("scale", np.array(1.0 / np.sqrt(hd), dtype=np.float32))

    weight("embed", encode(rand(a.vocab, d)), [a.vocab, d])
    x = node("Gather", ["embed", "input_ids"], "embedded", axis=0)
    shared = layer_weights() if a.repeat_weights else None
    for i in range(a.layers):
        w = shared or layer_weights()
        p = f"l{i}"
        dims = {
            "q": [d, d], "k": [d, kvh * hd], "v": [d, kvh * hd], "o": [d, d],
            "gate": [d, f], "up": [d, f], "down": [f, d], "ln1": [d], "ln2": [d],
        }  # fmt: skip
        for key, raw in w.items():
            weight(f"{p}.{key}", raw, dims[key])
        cast = {key: f"{p}.{key}" for key in dims}
        hn = rmsnorm(x, cast["ln1"], f"{p}_ln1")
        q = node("MatMul", [hn, cast["q"]], f"{p}_q")
        k = node("MatMul", [hn, cast["k"]], f"{p}_k")
        v = node("MatMul", [hn, cast["v"]], f"{p}_v")
        q = node("Transpose", [node("Reshape", [q, "shape_q"], f"{p}_q4")], f"{p}_qt", perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [k, "shape_kv"], f"{p}_k4")], f"{p}_kt", perm=[0, 2, 1, 3])
        v = node("Transpose", [node("Reshape", [v, "shape_kv"], f"{p}_v4")], f"{p}_vt", perm=[0, 2, 1, 3])
        q, k = rope(q, f"{p}_q"), rope(k, f"{p}_k")

        def repeat(t: str, name: str) -> str:
            u = node("Unsqueeze", [t, "unsq2"], f"{name}_u")
            e = node("Expand", [u, "shape_rep"], f"{name}_e")
            return node("Reshape", [e, "shape_grp"], f"{name}_r")

        k, v = repeat(k, f"{p}_krep"), repeat(v, f"{p}_vrep")
        kT = node("Transpose", [k], f"{p}_kT", perm=[0, 1, 3, 2])
        scores = node("Mul", [node("MatMul", [q, kT], f"{p}_qk"), "scale"], f"{p}_scaled")
        probs = node("Softmax", [node("Add", [scores, "causal"], f"{p}_masked")], f"{p}_probs", axis=-1)
        att = node("MatMul", [probs, v], f"{p}_att")
        att = node("Reshape", [node("Transpose", [att], f"{p}_att_t", perm=[0, 2, 1, 3]), "shape_out"], f"{p}_att3")
        x = node("Add", [x, node("MatMul", [att, cast["o"]], f"{p}_o")], f"{p}_res1")
        hn = rmsnorm(x, cast["ln2"], f"{p}_ln2")
        gate = node("MatMul", [hn, cast["gate"]], f"{p}_gate")
        silu = node("Mul", [gate, node("Sigmoid", [gate], f"{p}_sig")], f"{p}_silu")
        hidden = node("Mul", [silu, node("MatMul", [hn, cast["up"]], f"{p}_up")], f"{p}_hidden")
        x = node("Add", [x, node("MatMul", [hidden, cast["down"]], f"{p}_down")], f"{p}_res2")
        print(f"layer {i + 1}/{a.layers} written ({data.tell() / 1e9:.2f} GB)", flush=True)
    weight("norm", encode(1 + rand(d)), [d])
    weight("lm_head", encode(rand(d, a.vocab)), [d, a.vocab])
    hn = rmsnorm(x, "norm", "final")
    node("MatMul", [hn, "lm_head"], "logits")
    data.close()
    graph = helper.make_graph(
        nodes,
        "llama",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, s])],
        [helper.make_tensor_value_info("logits", onnx_type, [1, s, a.vocab])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="gen_llama")
    model.ir_version = 8
    with open(a.out, "wb") as fh:
        fh.write(model.SerializeToString())
    data_bytes = os.path.getsize(os.path.join(os.path.dirname(os.path.abspath(a.out)), data_name))
    print(
        json.dumps(
            {
                "file": a.out,
                "params": params,
                "data_bytes": data_bytes,
                "layers": a.layers,
                "d_model": d,
                "heads": h,
                "kv_heads": kvh,
                "ffn": f,
                "dtype": a.dtype,
                "zero": a.zero,
                "seconds": round(time.time() - start, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
