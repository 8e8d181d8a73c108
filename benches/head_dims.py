#!/usr/bin/env python3
"""Attention heads that keep dimensions of their own against heads that keep the union, on
transformers of real widths pruned at random, two builds side by side.

    HF_HUB_OFFLINE=1 python3 benches/head_dims.py --binary OLD --binary NEW --out bench-out/head_dims \
        [--models bert gpt2 vit llama] [--exporters ts dynamo] [--layers 2]

Each model is built from its configuration at its real widths (BERT-base, GPT-2 small, ViT-base,
and a Llama with grouped queries and rotary embeddings at 1024 wide), with ``--layers`` layers,
random weights (seed 0, nothing downloaded), pruned as ``hf_zoo.py`` prunes: 30% of the output
units of every linear layer zeroed at random, then half the remaining weights. A unit zeroed in
one head is rarely zeroed in every head, so a build that keeps the union of the heads' dimensions
keeps almost all of them. Each export (TorchScript at opset 17, dynamo) is minimized by every
build with tract's verification, and every minimized model is compared with the original in ONNX
Runtime on fresh inputs.

Writes ``OUT/head_dims.json`` and ``OUT/head_dims.md`` (the table, also printed): parameters
before and after each build, the attention projections' output widths per layer (Q, K, V as the
report lists them: the layers whose node name says query/key/value or q/k/v_proj or c_attn),
minimize time, and the largest ONNX Runtime deviation. The widths come from the report's node names,
which only TorchScript exports spell after the module (dynamo's are ``node_MatMul_62``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_zoo  # the pruning, wrappers, export and ONNX Runtime check

ATTENTION = ("query", "key", "value", "q_proj", "k_proj", "v_proj", "c_attn")


def build(name: str, layers: int):
    t = hf_zoo._t()
    if name == "bert":
        cfg = t.BertConfig(vocab_size=hf_zoo.VOCAB, num_hidden_layers=layers)
        return hf_zoo.TextWrap(t.BertModel(cfg, add_pooling_layer=False)), "text", 0
    if name == "gpt2":
        cfg = t.GPT2Config(vocab_size=hf_zoo.VOCAB, n_layer=layers, n_positions=64)
        return hf_zoo.TextWrap(t.GPT2Model(cfg)), "text", 0
    if name == "vit":
        cfg = t.ViTConfig(image_size=64, patch_size=16, num_hidden_layers=layers)
        return hf_zoo.ImageWrap(t.ViTModel(cfg, add_pooling_layer=False)), "image", 64
    cfg = t.LlamaConfig(
        vocab_size=hf_zoo.VOCAB,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=4,
        max_position_embeddings=64,
        use_cache=False,
    )
    return hf_zoo.TextWrap(t.LlamaModel(cfg)), "text", 0


def widths(report: dict) -> list[int]:
    return [
        layer["outputs_after"]
        for layer in report.get("layers", [])
        if any(a in layer.get("node", "") for a in ATTENTION)
    ]


def run(binary: str, model: str, out: str) -> dict:
    report = out + ".json"
    start = time.perf_counter()
    done = subprocess.run([binary, model, out, "-q", "--report", report], check=False, capture_output=True, text=True)
    rec = {"exit": done.returncode, "seconds": round(time.perf_counter() - start, 2)}
    if os.path.exists(report):
        with open(report) as f:
            r = json.load(f)
        rec.update(params_after=r["after"]["params"], params_before=r["before"]["params"], widths=widths(r))
    if done.returncode != 0:
        rec["error"] = done.stderr.strip()[-300:]
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", action="append", required=True)
    ap.add_argument("--out", default=os.path.join(hf_zoo.ROOT, "bench-out", "head_dims"))
    ap.add_argument("--models", nargs="+", default=["bert", "gpt2", "vit", "llama"])
    ap.add_argument("--exporters", nargs="+", choices=["ts", "dynamo"], default=["ts", "dynamo"])
    ap.add_argument("--layers", type=int, default=2)
    a = ap.parse_args()
    records = []
    for name in a.models:
        torch.manual_seed(0)
        wrapper, kind, size = build(name, a.layers)
        wrapper.eval()
        hf_zoo.prune(wrapper, torch.Generator().manual_seed(0))
        for exporter in a.exporters:
            d = os.path.join(a.out, name, exporter)
            os.makedirs(d, exist_ok=True)
            model = os.path.join(d, "model.onnx")
            hf_zoo.export(wrapper, hf_zoo.inputs_for(kind, size, 1, 0), model, exporter)
            feeds = hf_zoo.inputs_for(kind, size, 2, 1)
            rec = {"model": name, "exporter": exporter, "builds": []}
            for i, binary in enumerate(a.binary):
                out = os.path.join(d, f"min{i}.onnx")
                b = run(binary, model, out)
                if b["exit"] == 0:
                    b["ort_dev"] = hf_zoo.ort_dev(model, out, feeds)[0]
                rec["builds"].append(b)
            records.append(rec)
            print(json.dumps(rec), flush=True)
    with open(os.path.join(a.out, "head_dims.json"), "w") as f:
        json.dump({"binaries": a.binary, "records": records}, f, indent=1)
    rows = ["| model | exporter | parameters | " + " | ".join(f"after ({i + 1})" for i in range(len(a.binary)))]
    rows[0] += " | " + " | ".join(f"Q/K/V widths ({i + 1})" for i in range(len(a.binary))) + " | ORT dev | seconds |"
    rows.append("|" + "---|" * (3 + 2 * len(a.binary) + 2))
    for r in records:
        bs = r["builds"]
        after = [f"{b['params_after']:,}" if b["exit"] == 0 else f"exit {b['exit']}" for b in bs]
        w = [" ".join(map(str, b.get("widths", []))) for b in bs]
        devs = max((b.get("ort_dev") or 0.0) for b in bs)
        secs = " / ".join(str(b["seconds"]) for b in bs)
        before = bs[0].get("params_before", 0)
        rows.append(
            f"| {r['model']} | {r['exporter']} | {before:,} | {' | '.join(after)} | {' | '.join(w)} | {devs:.1e} | {secs} |"
        )
    table = "\n".join(rows) + "\n\nBuilds: " + ", ".join(f"({i + 1}) {b}" for i, b in enumerate(a.binary)) + "\n"
    with open(os.path.join(a.out, "head_dims.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
