#!/usr/bin/env python3
"""Language models whose output head is tied to the token embeddings, at vocabulary sizes where
the dynamo exporter keeps the head's ``Transpose`` of the table (above 8192 entries): parameters,
bytes and minimize time with each binary given, and ONNX Runtime's agreement.

    HF_HUB_OFFLINE=1 python3 benches/tied_heads.py --binary OLD --binary target/release/onnx-minimize \
        [--models gpt2,smollm] [--exporters dynamo,ts] [--out bench-out/tied]

Models (random weights, seed 0, 4 layers):

* ``gpt2``    GPT2LMHeadModel at GPT-2 small's widths: vocabulary 50257, hidden 768, 12 heads
* ``smollm``  LlamaForCausalLM at SmolLM-135M's widths: vocabulary 49152, hidden 576, 9 query and
              3 key/value heads, MLP 1536, RMSNorm, rotary embeddings, ``tie_word_embeddings``

Pruning, the structured result the Squeeze-Release cycle leaves in a residual stream: a quarter of
the stream channels zero in every writer (the table's columns, the projections writing the stream)
with the norms' gammas zero there, half of the MLP units dead. Writes ``tied.json`` and
``tied.md`` into OUT.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np
import onnxruntime as ort
import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sweep import zero_norm_gamma, zero_out_units

LAYERS = 4


def stream(width: int) -> list[int]:
    return list(range(0, width, 4))


def dead(up, gen, n: int) -> None:
    """Half of the units of an up projection (rows of a Linear, columns of a Conv1D) dead."""
    units = torch.randperm(n, generator=gen)[: n // 2].tolist()
    zero_out_units(up, units, bias=0.0)


def gpt2(gen):
    cfg = transformers.GPT2Config(vocab_size=50257, n_embd=768, n_layer=LAYERS, n_head=12, n_positions=1024)
    lm = transformers.GPT2LMHeadModel(cfg).eval()
    cs, t = stream(768), lm.transformer
    with torch.no_grad():
        t.wte.weight[:, cs] = 0.0
        t.wpe.weight[:, cs] = 0.0
        for blk in t.h:
            zero_out_units(blk.attn.c_proj, cs, bias=0.0)
            zero_out_units(blk.mlp.c_proj, cs, bias=0.0)
            zero_norm_gamma(blk.ln_1, cs)
            zero_norm_gamma(blk.ln_2, cs)
            dead(blk.mlp.c_fc, gen, 4 * 768)
        zero_norm_gamma(t.ln_f, cs)
        t.ln_f.bias[cs] = 0.0
    return lm


def smollm(gen):
    cfg = transformers.LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=LAYERS,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    lm = transformers.LlamaForCausalLM(cfg).eval()
    cs, m = stream(576), lm.model
    with torch.no_grad():
        m.embed_tokens.weight[:, cs] = 0.0
        for layer in m.layers:
            zero_out_units(layer.self_attn.o_proj, cs)
            zero_out_units(layer.mlp.down_proj, cs)
            zero_norm_gamma(layer.input_layernorm, cs)
            zero_norm_gamma(layer.post_attention_layernorm, cs)
            dead(layer.mlp.gate_proj, gen, 1536)
        zero_norm_gamma(m.norm, cs)
    assert lm.lm_head.weight.data_ptr() == m.embed_tokens.weight.data_ptr()
    return lm


MODELS = {"gpt2": gpt2, "smollm": smollm}


class Logits(torch.nn.Module):
    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask):
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def export(lm, exporter: str, path: Path) -> None:
    ids, mask = torch.randint(0, 1000, (2, 16)), torch.ones(2, 16, dtype=torch.int64)
    names = {"input_names": ["input_ids", "attention_mask"], "output_names": ["logits"]}
    if exporter == "ts":
        axes = {n: {0: "batch", 1: "seq"} for n in ("input_ids", "attention_mask", "logits")}
        torch.onnx.export(
            Logits(lm), (ids, mask), str(path), dynamo=False, opset_version=17, dynamic_axes=axes, **names
        )
    else:
        b, s = torch.export.Dim("batch"), torch.export.Dim("seq", max=1024)
        torch.onnx.export(
            Logits(lm),
            (ids, mask),
            str(path),
            dynamo=True,
            external_data=False,
            dynamic_shapes=({0: b, 1: s}, {0: b, 1: s}),
            **names,
        )


def ort_deviation(a: Path, b: Path) -> float:
    rng = np.random.default_rng(1)
    feeds = {
        "input_ids": rng.integers(0, 50000, (2, 24)).astype(np.int64),
        "attention_mask": np.ones((2, 24), np.int64),
    }
    x = ort.InferenceSession(str(a)).run(None, feeds)[0]
    y = ort.InferenceSession(str(b)).run(None, feeds)[0]
    return float(np.abs(x - y).max() / np.abs(x).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", action="append", required=True)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--exporters", default="dynamo,ts")
    ap.add_argument("--out", default="bench-out/tied")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    rows = []
    for name in args.models.split(","):
        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        lm = MODELS[name](gen)
        for exporter in args.exporters.split(","):
            src = out / f"{name}_{exporter}.onnx"
            if not src.exists():
                export(lm, exporter, src)
            for i, binary in enumerate(args.binary):
                dst, rep = out / f"{name}_{exporter}_min{i}.onnx", out / f"{name}_{exporter}_{i}.json"
                t0 = time.perf_counter()
                p = subprocess.run(
                    [
                        binary,
                        str(src),
                        str(dst),
                        "--report",
                        str(rep),
                        "-q",
                        "--input-shape",
                        "input_ids=1,16",
                        "--input-shape",
                        "attention_mask=1,16",
                    ],
                    check=False,
                    capture_output=True,
                    text=True,
                )
                seconds = time.perf_counter() - t0
                row = {
                    "model": name,
                    "exporter": exporter,
                    "binary": binary,
                    "exit": p.returncode,
                    "seconds": round(seconds, 2),
                }
                if p.returncode == 0:
                    r = json.loads(rep.read_text())
                    row |= {
                        "params": r["before"]["params"],
                        "params_after": r["after"]["params"],
                        "bytes": r["before"]["bytes"],
                        "bytes_after": r["after"]["bytes"],
                        "ort": ort_deviation(src, dst),
                    }
                else:
                    row["stderr"] = p.stderr[-400:]
                rows.append(row)
                print(row, flush=True)
    (out / "tied.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        "| model | exporter | binary | params | after | MB | after MB | minimize s | ORT rel. deviation |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["exit"] != 0:
            lines.append(f"| {r['model']} | {r['exporter']} | {r['binary']} | exit {r['exit']} | | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['exporter']} | {r['binary']} | {r['params']:,} | {r['params_after']:,} | "
            f"{r['bytes'] / 1e6:.1f} | {r['bytes_after'] / 1e6:.1f} | {r['seconds']:.1f} | {r['ort']:.1e} |"
        )
    (out / "tied.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
