#!/usr/bin/env python3
"""Attention-head dimensions removed across Hugging Face transformer families, each exported by
TorchScript and by dynamo, minimized, and checked against the original in ONNX Runtime.

    HF_HUB_OFFLINE=1 python3 benches/attention_families.py --binary target/release/onnx-minimize \
        --out bench-out/families [--families bert gpt2 ...] [--exporters ts dynamo]

Each family is a tiny model built from its configuration (random weights, seed 0, nothing
downloaded): two layers, four heads, multi-query or grouped keys and values where the family has
them, rotary embeddings as the family applies them. In every attention layer the benchmark zeroes
one query dimension per head (a rotary pair: both halves, or both of an interleaved pair, where
rotary embeddings turn it), value dimension 0 per key/value head and input column 3 of the output
projection per head. That makes, per layer, the query and key rows of those dimensions, value
dimensions 0 and 3 and output-projection columns 0 and 3 of every head removable: the expected
count. (Random noise added to the key and value rows that should be dead leaves torch's output as
it is: ``pattern_check``, 0 when the zeroing is structural.)

Each model is exported with a dynamic batch (TorchScript at opset 17, dynamo at its default) and
minimized with verification; where tract cannot run a model, minimization is rerun with
``--verify none`` and ONNX Runtime alone checks it. Original and minimized models run in ONNX
Runtime on batches of two, one with a padded attention mask.

Exports, minimized models, reports and logs go under ``OUT/<family>/<exporter>/``. Writes
``OUT/families.json`` (one record per family and exporter: exit status, parameters before and
after, channels removed and expected, the largest absolute ONNX Runtime deviation, the removable
channels kept and why, the opaque nodes) and ``OUT/families.md`` (the table, also printed). Exits 1
when a minimization fails verification (exit status 3) or deviates by more than 1e-4 in ONNX
Runtime (or ONNX Runtime cannot run it); a family that shrinks less than expected, or that an
exporter cannot export, is reported, not failed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import onnxruntime as ort
import torch
import transformers as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB, SEQ, BATCH = 64, 7, 2
TOLERANCE = 1e-4


# ---------------------------------------------------------------- zeroing


class Projection:
    """A linear projection: ``nn.Linear`` (weight ``[out, in]``) or GPT-2's ``Conv1D`` (``[in, out]``)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.conv1d = type(module).__name__ == "Conv1D"

    def _rows(self, rows: list[int]) -> tuple:
        return (slice(None), rows) if self.conv1d else (rows, slice(None))

    def _cols(self, cols: list[int]) -> tuple:
        return (cols, slice(None)) if self.conv1d else (slice(None), cols)

    @torch.no_grad()
    def zero_outputs(self, rows: list[int]) -> None:
        self.module.weight[self._rows(rows)] = 0
        bias = getattr(self.module, "bias", None)
        if bias is not None:
            bias[rows] = 0

    @torch.no_grad()
    def zero_inputs(self, cols: list[int]) -> None:
        self.module.weight[self._cols(cols)] = 0

    @torch.no_grad()
    def add_noise_to_outputs(self, rows: list[int]) -> None:
        w = self.module.weight
        w[self._rows(rows)] += torch.randn_like(w[self._rows(rows)])


def query_dims(head_dim: int, rotary: str | None = None, rotary_dims: int | None = None) -> list[int]:
    """The query dimensions to zero per head: dimension 1, and the one a rotary embedding pairs with it."""
    if rotary is None:
        return [1]
    rotary_dims = rotary_dims or head_dim
    if rotary_dims < 4:
        return [1]
    if rotary == "half":
        return [1, 1 + rotary_dims // 2]
    if rotary == "interleave":
        return [0, 1]
    raise ValueError(rotary)


Row = Callable[[int, int], int]


@dataclass
class Attention:
    """One attention layer: its projections and where head ``h``'s dimension ``d`` lies in each output."""

    heads: int
    kv_heads: int
    head_dim: int
    q: Projection
    k: Projection
    v: Projection
    o: Projection
    q_row: Row
    k_row: Row
    v_row: Row
    q_dims: list[int]

    def zero(self) -> None:
        self.q.zero_outputs([self.q_row(h, d) for h in range(self.heads) for d in self.q_dims])
        self.v.zero_outputs([self.v_row(g, 0) for g in range(self.kv_heads)])
        self.o.zero_inputs([h * self.head_dim + 3 for h in range(self.heads)])

    def perturb_dead(self) -> None:
        """Noise on the rows that ``zero`` made dead: the key rows of the zeroed query dimensions, value dimension 3."""
        self.k.add_noise_to_outputs([self.k_row(g, d) for g in range(self.kv_heads) for d in self.q_dims])
        self.v.add_noise_to_outputs([self.v_row(g, 3) for g in range(self.kv_heads)])

    def expected(self) -> int:
        """Channels removable: query and key rows of the zeroed dimensions, values and output columns 0 and 3."""
        n = len(self.q_dims)
        return self.heads * n + self.kv_heads * n + 2 * self.kv_heads + 2 * self.heads


def separate(heads, kv_heads, head_dim, q, k, v, o, q_dims) -> Attention:
    """Separate query, key and value projections, each laid out ``[head, dim]``."""

    def row(h, d):
        return h * head_dim + d

    return Attention(
        heads, kv_heads, head_dim, Projection(q), Projection(k), Projection(v), Projection(o), row, row, row, q_dims
    )


def fused_concat(heads, kv_heads, head_dim, qkv, o, q_dims) -> Attention:
    """One projection laid out ``[Q (heads x dim) | K (kv_heads x dim) | V (kv_heads x dim)]``."""
    p = Projection(qkv)
    q_size, kv_size = heads * head_dim, kv_heads * head_dim
    return Attention(
        heads,
        kv_heads,
        head_dim,
        p,
        p,
        p,
        Projection(o),
        lambda h, d: h * head_dim + d,
        lambda g, d: q_size + g * head_dim + d,
        lambda g, d: q_size + kv_size + g * head_dim + d,
        q_dims,
    )


def fused_per_head(heads, head_dim, qkv, o, q_dims) -> Attention:
    """One projection laid out per head ``[q k v]`` (GPT-NeoX, Bloom)."""
    p = Projection(qkv)
    return Attention(
        heads,
        heads,
        head_dim,
        p,
        p,
        p,
        Projection(o),
        lambda h, d: h * 3 * head_dim + d,
        lambda g, d: g * 3 * head_dim + head_dim + d,
        lambda g, d: g * 3 * head_dim + 2 * head_dim + d,
        q_dims,
    )


def find(model: torch.nn.Module, class_suffix: str) -> list[torch.nn.Module]:
    return [m for m in model.modules() if type(m).__name__.endswith(class_suffix)]


# ---------------------------------------------------------------- families


class TextWrap(torch.nn.Module):
    def __init__(self, model, **kwargs):
        super().__init__()
        self.m, self.kwargs = model, kwargs

    def forward(self, input_ids, attention_mask):
        return self.m(input_ids=input_ids, attention_mask=attention_mask, **self.kwargs).last_hidden_state


class VisionWrap(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, pixel_values):
        return self.m(pixel_values=pixel_values).last_hidden_state


class AudioWrap(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, input_features):
        return self.m(input_features=input_features).last_hidden_state


class Built(NamedTuple):
    model: torch.nn.Module
    wrapper: torch.nn.Module
    kind: str  # "text", "image" or "audio": the inputs it takes
    attention: list[Attention]


def text(model, attention, **kwargs) -> Built:
    return Built(model, TextWrap(model, **kwargs), "text", attention)


BERT_LIKE = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
VISION = {
    "image_size": 32,
    "patch_size": 8,
    "num_channels": 3,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
}


def bert_like_attention(model, heads=4, head_dim=8) -> list[Attention]:
    """BERT-style layers: ``query``/``key``/``value`` and ``attention.output.dense``, or (transformers 5 vision
    models) ``q_proj``/``k_proj``/``v_proj``/``o_proj``."""
    qkvo = [m for m in model.modules() if all(hasattr(m, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj"))]
    if qkvo:
        return [separate(heads, heads, head_dim, m.q_proj, m.k_proj, m.v_proj, m.o_proj, [1]) for m in qkvo]
    selfs = [m for m in model.modules() if all(hasattr(m, a) for a in ("query", "key", "value"))]
    outs = [m for n, m in model.named_modules() if n.endswith("attention.output")]
    assert len(selfs) == len(outs), (len(selfs), len(outs))
    return [separate(heads, heads, head_dim, s.query, s.key, s.value, o.dense, [1]) for s, o in zip(selfs, outs)]


def bert() -> Built:
    m = T.BertModel(T.BertConfig(**BERT_LIKE), add_pooling_layer=False)
    return text(m, bert_like_attention(m))


def roberta() -> Built:
    cfg = T.RobertaConfig(**{**BERT_LIKE, "max_position_embeddings": 66, "pad_token_id": 1})
    m = T.RobertaModel(cfg, add_pooling_layer=False)
    return text(m, bert_like_attention(m))


def electra() -> Built:
    m = T.ElectraModel(T.ElectraConfig(**BERT_LIKE, embedding_size=32))
    return text(m, bert_like_attention(m))


def albert() -> Built:
    m = T.AlbertModel(T.AlbertConfig(**BERT_LIKE, embedding_size=16), add_pooling_layer=False)
    layers = [
        a for a in m.modules() if type(a).__name__ == "AlbertAttention" or type(a).__name__.startswith("AlbertSdpa")
    ]
    return text(m, [separate(4, 4, 8, a.query, a.key, a.value, a.dense, [1]) for a in layers])


def distilbert() -> Built:
    cfg = T.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64)
    m = T.DistilBertModel(cfg)
    layers = [a for a in m.modules() if hasattr(a, "q_lin")]
    return text(m, [separate(4, 4, 8, a.q_lin, a.k_lin, a.v_lin, a.out_lin, [1]) for a in layers])


def deberta_v2() -> Built:
    cfg = T.DebertaV2Config(
        **BERT_LIKE,
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        position_buckets=32,
        max_relative_positions=-1,
        share_att_key=True,
        norm_rel_ebd="layer_norm",
        position_biased_input=False,
    )
    m = T.DebertaV2Model(cfg)
    selfs = [a for a in m.modules() if hasattr(a, "query_proj")]
    outs = [o for n, o in m.named_modules() if n.endswith("attention.output")]
    return text(
        m, [separate(4, 4, 8, s.query_proj, s.key_proj, s.value_proj, o.dense, [1]) for s, o in zip(selfs, outs)]
    )


def gpt2() -> Built:
    cfg = T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, use_cache=False)
    m = T.GPT2Model(cfg)
    layers = find(m, "GPT2Attention")
    return text(m, [fused_concat(4, 4, 8, a.c_attn, a.c_proj, [1]) for a in layers], use_cache=False)


def gptj() -> Built:
    cfg = T.GPTJConfig(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=64, use_cache=False)
    m = T.GPTJModel(cfg)
    q = query_dims(16, "interleave", 8)
    layers = find(m, "GPTJAttention")
    return text(m, [separate(4, 4, 16, a.q_proj, a.k_proj, a.v_proj, a.out_proj, q) for a in layers], use_cache=False)


def gpt_neox() -> Built:
    cfg = T.GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        rotary_pct=0.25,
        max_position_embeddings=64,
        use_cache=False,
    )
    m = T.GPTNeoXModel(cfg)
    q = query_dims(16, "half", 4)
    layers = find(m, "GPTNeoXAttention")
    return text(m, [fused_per_head(4, 16, a.query_key_value, a.dense, q) for a in layers], use_cache=False)


def opt() -> Built:
    cfg = T.OPTConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        ffn_dim=64,
        num_attention_heads=4,
        word_embed_proj_dim=32,
        max_position_embeddings=64,
        use_cache=False,
    )
    m = T.OPTModel(cfg)
    layers = find(m, "OPTAttention")
    return text(m, [separate(4, 4, 8, a.q_proj, a.k_proj, a.v_proj, a.out_proj, [1]) for a in layers], use_cache=False)


def bloom() -> Built:
    m = T.BloomModel(T.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4, use_cache=False))
    layers = find(m, "BloomAttention")
    return text(m, [fused_per_head(4, 8, a.query_key_value, a.dense, [1]) for a in layers], use_cache=False)


def falcon() -> Built:
    cfg = T.FalconConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_kv_heads=1,
        multi_query=True,
        new_decoder_architecture=False,
        alibi=False,
        max_position_embeddings=64,
        use_cache=False,
    )
    m = T.FalconModel(cfg)
    q = query_dims(8, "half", 8)
    layers = find(m, "FalconAttention")
    return text(m, [fused_concat(4, 1, 8, a.query_key_value, a.dense, q) for a in layers], use_cache=False)


def llama_like(config, model, attention, kv_heads=2, rotary_dims=16, out="o_proj", fused_qkv=False, **extra) -> Built:
    """A Llama-style decoder: hidden size 64, four heads of 16 dimensions, rotary embeddings by halves."""
    cfg = config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=64,
        use_cache=False,
        **extra,
    )
    m = model(cfg)
    q = query_dims(16, "half", rotary_dims)
    if fused_qkv:
        layers = [fused_concat(4, kv_heads, 16, a.qkv_proj, a.o_proj, q) for a in find(m, attention)]
    else:
        layers = [
            separate(4, kv_heads, 16, a.q_proj, a.k_proj, a.v_proj, getattr(a, out), q) for a in find(m, attention)
        ]
    return text(m, layers, use_cache=False)


def llama() -> Built:
    return llama_like(T.LlamaConfig, T.LlamaModel, "LlamaAttention")


def mistral() -> Built:
    return llama_like(T.MistralConfig, T.MistralModel, "MistralAttention")


def qwen2() -> Built:
    return llama_like(T.Qwen2Config, T.Qwen2Model, "Qwen2Attention")


def gemma() -> Built:
    return llama_like(T.GemmaConfig, T.GemmaModel, "GemmaAttention", head_dim=16)


def phi() -> Built:
    return llama_like(
        T.PhiConfig, T.PhiModel, "PhiAttention", kv_heads=4, rotary_dims=8, out="dense", partial_rotary_factor=0.5
    )


def phi3() -> Built:
    return llama_like(T.Phi3Config, T.Phi3Model, "Phi3Attention", fused_qkv=True, pad_token_id=0)


def stablelm() -> Built:
    return llama_like(
        T.StableLmConfig, T.StableLmModel, "StableLmAttention", kv_heads=4, rotary_dims=4, partial_rotary_factor=0.25
    )


def t5() -> Built:
    cfg = T.T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        use_cache=False,
    )
    m = T.T5EncoderModel(cfg)
    return text(m, [separate(4, 4, 8, a.q, a.k, a.v, a.o, [1]) for a in find(m, "T5Attention")])


def bart() -> Built:
    cfg = T.BartConfig(
        vocab_size=VOCAB,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        use_cache=False,
    )
    m = T.BartModel(cfg).get_encoder()
    layers = find(m, "BartAttention")
    return text(m, [separate(4, 4, 8, a.q_proj, a.k_proj, a.v_proj, a.out_proj, [1]) for a in layers])


def clip() -> Built:
    cfg = T.CLIPTextConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        projection_dim=32,
        eos_token_id=2,
        bos_token_id=0,
        pad_token_id=1,
    )
    m = T.CLIPTextModel(cfg)
    layers = find(m, "CLIPAttention")
    return text(m, [separate(4, 4, 8, a.q_proj, a.k_proj, a.v_proj, a.out_proj, [1]) for a in layers])


def vit() -> Built:
    m = T.ViTModel(T.ViTConfig(**VISION), add_pooling_layer=False)
    return Built(m, VisionWrap(m), "image", bert_like_attention(m))


def deit() -> Built:
    m = T.DeiTModel(T.DeiTConfig(**VISION), add_pooling_layer=False)
    return Built(m, VisionWrap(m), "image", bert_like_attention(m))


def swin() -> Built:
    cfg = T.SwinConfig(
        image_size=32,
        patch_size=4,
        num_channels=3,
        embed_dim=32,
        depths=[2],
        num_heads=[4],
        window_size=4,
        mlp_ratio=2.0,
    )
    m = T.SwinModel(cfg, add_pooling_layer=False)
    return Built(m, VisionWrap(m), "image", bert_like_attention(m))


def whisper() -> Built:
    cfg = T.WhisperConfig(
        vocab_size=VOCAB,
        num_mel_bins=16,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=16,
        max_target_positions=32,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=0,
        use_cache=False,
    )
    m = T.WhisperModel(cfg).get_encoder()
    layers = find(m, "WhisperAttention")
    attention = [separate(4, 4, 8, a.q_proj, a.k_proj, a.v_proj, a.out_proj, [1]) for a in layers]
    return Built(m, AudioWrap(m), "audio", attention)


FAMILIES: dict[str, Callable[[], Built]] = {
    "bert": bert,
    "distilbert": distilbert,
    "roberta": roberta,
    "albert": albert,
    "electra": electra,
    "deberta-v2": deberta_v2,
    "gpt2": gpt2,
    "gptj": gptj,
    "gpt-neox": gpt_neox,
    "opt": opt,
    "bloom": bloom,
    "falcon": falcon,
    "llama": llama,
    "mistral": mistral,
    "qwen2": qwen2,
    "phi": phi,
    "phi3": phi3,
    "gemma": gemma,
    "stablelm": stablelm,
    "t5": t5,
    "bart": bart,
    "clip": clip,
    "vit": vit,
    "deit": deit,
    "swin": swin,
    "whisper": whisper,
}


# ---------------------------------------------------------------- export, minimize, compare


def make_inputs(kind: str, seed: int, padded: bool = False) -> dict[str, torch.Tensor]:
    """A batch of ``BATCH``; ``padded`` masks the last two tokens of the second text sequence."""
    g = torch.Generator().manual_seed(seed)
    if kind == "text":
        mask = torch.ones(BATCH, SEQ, dtype=torch.long)
        if padded:
            mask[1, -2:] = 0
        return {"input_ids": torch.randint(3, VOCAB, (BATCH, SEQ), generator=g), "attention_mask": mask}
    if kind == "image":
        return {"pixel_values": torch.randn(BATCH, 3, 32, 32, generator=g)}
    return {"input_features": torch.randn(BATCH, 16, 32, generator=g)}


def ort_run(path: str, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v.numpy() for k, v in inputs.items() if k in names})[0]


def export(wrapper: torch.nn.Module, inputs: dict[str, torch.Tensor], path: str, exporter: str) -> None:
    names = list(inputs)
    args = tuple(inputs.values())
    if exporter == "ts":
        axes = {n: {0: "batch"} for n in [*names, "last_hidden_state"]}
        torch.onnx.export(
            wrapper, args, path, dynamo=False, opset_version=17, input_names=names,
            output_names=["last_hidden_state"], dynamic_axes=axes,
        )  # fmt: skip
    else:
        batch = torch.export.Dim("batch", min=1, max=64)
        torch.onnx.export(
            wrapper, args, path, dynamo=True, input_names=names, output_names=["last_hidden_state"],
            dynamic_shapes={n: {0: batch} for n in names}, external_data=False,
        )  # fmt: skip


def max_deviation(a: str | Callable, b: str, kind: str, seeds: tuple[int, int]) -> float:
    """Largest absolute difference between ``a`` (a path, or the torch module) and the ONNX model ``b`` in ONNX
    Runtime, on an unpadded batch (first seed) and a padded one (second seed)."""
    worst = 0.0
    for seed, padded in zip(seeds, (False, True)):
        x = make_inputs(kind, seed, padded and kind == "text")
        if isinstance(a, str):
            ref = ort_run(a, x)
        else:
            with torch.no_grad():
                ref = a(**x).numpy()
        worst = max(worst, float(np.abs(ref - ort_run(b, x)).max()))
    return worst


def last_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [repr(e)])[-1][:300]


def minimize(binary: str, src: str, dst: str, report: str, run_dir: str) -> dict:
    """Minimize with verification; where tract cannot run the model (exit status other than 0 and 3), again with
    ``--verify none``. Returns the record's fields on the run, and writes its output beside the models."""
    fields: dict = {}
    start = time.time()
    done = subprocess.run([binary, src, dst, "--report", report], check=False, capture_output=True, text=True)
    if done.returncode not in (0, 3):
        fields["exit_verified"] = done.returncode
        fields["verify_error"] = (done.stdout + done.stderr).strip().splitlines()[-4:]
        with open(os.path.join(run_dir, "minimize_verified.log"), "w") as f:
            f.write(done.stdout + done.stderr)
        cmd = [binary, src, dst, "--report", report, "--verify", "none"]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True)
        fields["verify"] = "none"
    fields["minimize_s"] = round(time.time() - start, 1)
    fields["exit"] = done.returncode
    with open(os.path.join(run_dir, "minimize.stdout"), "w") as f:
        f.write(done.stdout)
    with open(os.path.join(run_dir, "minimize.stderr"), "w") as f:
        f.write(done.stderr)
    if done.returncode != 0:
        fields["minimize_tail"] = (done.stdout + done.stderr).strip().splitlines()[-5:]
    return fields


def read_report(path: str) -> dict:
    """Parameters, channels removed, the layers that changed, the removable channels kept and why, opaque nodes."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        r = json.load(f)
    if "before" not in r:
        return {}
    changed = [
        layer
        for layer in r["layers"]
        if (layer["inputs_before"], layer["outputs_before"]) != (layer["inputs_after"], layer["outputs_after"])
    ]
    return {
        "params_before": r["before"]["params"],
        "params_after": r["after"]["params"],
        "removed": sum(
            layer["inputs_before"] - layer["inputs_after"] + layer["outputs_before"] - layer["outputs_after"]
            for layer in r["layers"]
        ),
        "layers": [
            f"{x['node']} {x['inputs_before']}->{x['inputs_after']} / {x['outputs_before']}->{x['outputs_after']}"
            for x in changed
        ],
        "blocked": [
            f"kept {b['removable']} of {b['width']} removable channels of {b['values']} because of: "
            + "; ".join(w["message"] for w in b["reasons"])
            for b in r.get("blocked", [])
        ],
        "opaque": [o["message"] for o in r.get("opaque", [])],
    }


def shrank(removed: int | None, expected: int) -> str:
    if not removed:
        return "no"
    return "yes" if removed >= expected else "partial"


def run_family(name: str, exporters: list[str], binary: str, out: str) -> list[dict]:
    torch.manual_seed(0)
    model, wrapper, kind, attention = FAMILIES[name]()
    model.eval()
    wrapper.eval()
    assert attention, "no attention layers found"
    for a in attention:
        a.zero()
    # The zeroing makes the intended key and value rows dead: noise on them leaves torch's output as it is.
    x = make_inputs(kind, 100, padded=kind == "text")
    with torch.no_grad():
        ref = wrapper(**x)
        state = copy.deepcopy(model.state_dict())
        for a in attention:
            a.perturb_dead()
        perturbed = wrapper(**x)
        model.load_state_dict(state)
    a0 = attention[0]
    common = {
        "attn_impl": getattr(model.config, "_attn_implementation", None),
        "attention_layers": len(attention),
        "heads": a0.heads,
        "kv_heads": a0.kv_heads,
        "head_dim": a0.head_dim,
        "query_dims": a0.q_dims,
        "pattern_check": float((ref - perturbed).abs().max()),
        "expected": sum(a.expected() for a in attention),
    }
    records = []
    for exporter in exporters:
        run_dir = os.path.join(out, name, exporter)
        os.makedirs(run_dir, exist_ok=True)
        src, dst, report = (os.path.join(run_dir, f) for f in ("model.onnx", "min.onnx", "report.json"))
        for f in (src, dst, report):
            if os.path.exists(f):
                os.remove(f)
        record = {"family": name, "exporter": exporter, **common}
        records.append(record)
        start = time.time()
        try:
            log = os.path.join(run_dir, "export.log")
            with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f), torch.no_grad():
                export(wrapper, make_inputs(kind, 1), src, exporter)
            record["export_s"] = round(time.time() - start, 1)
            record["export_vs_torch"] = max_deviation(wrapper, src, kind, (11, 12))
        except Exception as e:  # noqa: BLE001 (an exporter's failure is the exporter's, not ours)
            record["error"] = "export: " + last_line(e)
            with open(os.path.join(run_dir, "export_error.txt"), "w") as f:
                traceback.print_exc(file=f)
            continue
        record.update(minimize(binary, src, dst, report, run_dir))
        if record["exit"] == 0 and os.path.exists(dst):
            try:
                record["ort_max_deviation"] = max_deviation(src, dst, kind, (21, 22))
            except Exception as e:  # noqa: BLE001 (a minimized model ONNX Runtime cannot run is a failure)
                record["ort_error"] = last_line(e)
        record.update(read_report(report))
        record["shrank"] = shrank(record.get("removed"), record["expected"])
    return records


# ---------------------------------------------------------------- summary


def failed(r: dict) -> bool:
    """A correctness failure: verification found a difference, or ONNX Runtime does (or cannot run the result)."""
    return r.get("exit") == 3 or "ort_error" in r or (r.get("ort_max_deviation") or 0.0) > TOLERANCE


def table(records: list[dict]) -> str:
    lines = [
        "| family | exporter | exit | params before -> after | removed/expected | attention shrank | ORT max deviation |",
        "|---|---|---|---:|---:|---|---:|",
    ]
    errors = []
    for r in records:
        if "exit" not in r:
            errors.append(f"- {r['family']} {r['exporter']}: {r.get('error')}")
            lines.append(f"| {r['family']} | {r['exporter']} | error | | | | |")
            continue
        exit_ = str(r["exit"])
        if "exit_verified" in r:
            exit_ += f" (verified: {r['exit_verified']}; --verify none)"
        params = f"{r['params_before']:,} -> {r['params_after']:,}" if "params_before" in r else ""
        dev = r.get("ort_max_deviation")
        dev = "" if dev is None else f"{dev:.1e}" + (" FAIL" if dev > TOLERANCE else "")
        if "ort_error" in r:
            dev = "ORT cannot run it: FAIL"
            errors.append(f"- {r['family']} {r['exporter']}: ONNX Runtime on the minimized model: {r['ort_error']}")
        removed = f"{r.get('removed', '?')}/{r['expected']}"
        lines.append(f"| {r['family']} | {r['exporter']} | {exit_} | {params} | {removed} | {r['shrank']} | {dev} |")
    bad = sum(map(failed, records))
    lines += ["", f"{len(records)} runs; {bad} correctness failure(s) (exit 3 or ORT deviation > {TOLERANCE:g})"]
    if errors:
        lines += ["", "Errors:", *errors]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "onnx-minimize"))
    ap.add_argument("--out", default="bench-out/families", help="where the models, the JSON and the table go")
    ap.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES), metavar="FAMILY")
    ap.add_argument("--exporters", nargs="+", choices=["ts", "dynamo"], default=["ts", "dynamo"])
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    T.logging.set_verbosity_error()
    ort.set_default_logger_severity(3)
    torch.set_num_threads(1)
    binary = os.path.abspath(args.binary)
    os.makedirs(args.out, exist_ok=True)
    records = []
    for name in args.families:
        try:
            rows = run_family(name, args.exporters, binary, args.out)
        except Exception as e:  # noqa: BLE001 (a family transformers cannot build is reported, not fatal)
            traceback.print_exc()
            rows = [{"family": name, "exporter": x, "error": "build: " + last_line(e)} for x in args.exporters]
        for r in rows:
            print(json.dumps({k: r.get(k) for k in ("family", "exporter", "exit", "removed", "expected")}), flush=True)
        records += rows
    with open(os.path.join(args.out, "families.json"), "w") as f:
        json.dump({"binary": binary, "records": records}, f, indent=1)
    summary = table(records)
    with open(os.path.join(args.out, "families.md"), "w") as f:
        f.write(summary + "\n")
    print(summary)
    return 1 if any(map(failed, records)) else 0


if __name__ == "__main__":
    sys.exit(main())
