#!/usr/bin/env python3
"""Robustness sweep of onnx-minimize over Hugging Face model families not covered by
``attention_families.py`` / ``sweep.py``: tiny configs, random weights, generic pruning, both exporters.

    HF_HUB_OFFLINE=1 python3 benches/hf_zoo.py --bin /work/bin/onnx-minimize-s15 --out bench-out/hf_zoo \
        [--families mpnet xglm ...] [--exporters ts dynamo] [--timeout 180] [--table-only]

Per family: a tiny model built from its configuration (seed 0, nothing downloaded), every parameter moved off
its default init by 0.02 * N(0, 1) noise, then pruned generically: in every ``nn.Linear``, ``nn.Conv1d``,
``nn.Conv2d`` and GPT-2 ``Conv1D`` with more than 4 output units, 30% of the output units (weight rows and
bias entries) are zeroed at random, then 50% of the remaining weights (unstructured). The model is wrapped
to return one tensor (``last_hidden_state``, else ``logits``, else the first output) and exported by
TorchScript (opset 17, dynamic batch) and dynamo (``external_data=False``, dynamic batch; static shapes
where that fails, recorded as ``static``). Then

    onnx-minimize IN OUT --report R.json -q [--input-shape name=1,N ...]

and, where OUT was written, original and minimized run in ONNX Runtime (CPU) on fresh random inputs at batch
2 (token ids < vocab, full attention mask): the largest ``|a - b| / max|a|``. Where tract cannot run the
model (exit 4) the minimization is repeated with ``--verify none`` and that output is compared instead
(``ort_dev`` then marked ``nv``).

Each family runs in its own subprocess with a time limit. Files go under ``OUT/<family>/<exporter>/``
(``model.onnx``, ``min.onnx``, ``report.json``, ``stderr.txt``, ``record.json``); ``OUT/zoo.json`` and
``OUT/zoo.md`` collect every record found under OUT, so batches accumulate.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
import traceback
import warnings
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
from attention_families import ort_run  # one CPU thread, the feeds the model takes

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VOCAB, SEQ, BATCH = 64, 8, 2
AUDIO_LEN = 400
TOLERANCE = 1e-4

# ---------------------------------------------------------------- wrappers


def pick(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    for name in ("last_hidden_state", "logits", "predicted_depth"):
        v = getattr(out, name, None)
        if isinstance(v, torch.Tensor):
            return v
    return out[0]


class TextWrap(torch.nn.Module):
    def __init__(self, m, **kw):
        super().__init__()
        self.m, self.kw = m, kw

    def forward(self, input_ids, attention_mask):
        return pick(self.m(input_ids=input_ids, attention_mask=attention_mask, **self.kw))


class IdsWrap(torch.nn.Module):
    def __init__(self, m, **kw):
        super().__init__()
        self.m, self.kw = m, kw

    def forward(self, input_ids):
        return pick(self.m(input_ids=input_ids, **self.kw))


class ImageWrap(torch.nn.Module):
    def __init__(self, m, **kw):
        super().__init__()
        self.m, self.kw = m, kw

    def forward(self, pixel_values):
        return pick(self.m(pixel_values=pixel_values, **self.kw))


class MaeWrap(torch.nn.Module):
    """ViT-MAE with a fixed (identity) shuffle instead of random masking noise."""

    def __init__(self, m, patches):
        super().__init__()
        self.m, self.patches = m, patches

    def forward(self, pixel_values):
        noise = torch.arange(self.patches, dtype=pixel_values.dtype).unsqueeze(0).expand(pixel_values.shape[0], -1)
        return self.m(pixel_values=pixel_values, noise=noise).last_hidden_state


class AudioWrap(torch.nn.Module):
    def __init__(self, m, **kw):
        super().__init__()
        self.m, self.kw = m, kw

    def forward(self, input_values):
        return pick(self.m(input_values=input_values, **self.kw))


# ---------------------------------------------------------------- families


def _t():
    import transformers

    return transformers


BERT = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 66,
}
DEC = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "use_cache": False,
}
VIT = {
    "image_size": 32,
    "patch_size": 8,
    "num_channels": 3,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
}
AUDIO = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "conv_dim": (16, 16),
    "conv_stride": (5, 2),
    "conv_kernel": (10, 3),
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
    "vocab_size": VOCAB,
}
S2S = {
    "vocab_size": VOCAB,
    "d_model": 32,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "max_position_embeddings": 64,
    "pad_token_id": 1,
}
T5 = {
    "vocab_size": VOCAB,
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
}


def text(m, **kw):
    return TextWrap(m, **kw), "text", 32


def image(m, size=32, **kw):
    return ImageWrap(m, **kw), "image", size


def audio(m):
    return AudioWrap(m), "audio", AUDIO_LEN


def fam_mpnet():
    T = _t()
    return text(T.MPNetModel(T.MPNetConfig(**BERT), add_pooling_layer=False))


def fam_xlm_roberta():
    T = _t()
    return text(T.XLMRobertaModel(T.XLMRobertaConfig(**BERT, pad_token_id=1), add_pooling_layer=False))


def fam_camembert():
    T = _t()
    return text(T.CamembertModel(T.CamembertConfig(**BERT, pad_token_id=1), add_pooling_layer=False))


def fam_funnel():
    T = _t()
    cfg = T.FunnelConfig(
        vocab_size=VOCAB, block_sizes=[1, 1], d_model=32, n_head=4, d_head=8, d_inner=64, num_decoder_layers=1
    )
    return text(T.FunnelModel(cfg))


def fam_squeezebert():
    T = _t()
    return text(T.SqueezeBertModel(T.SqueezeBertConfig(**BERT, embedding_size=32)))


def fam_ibert():
    T = _t()
    return text(T.IBertModel(T.IBertConfig(**BERT, pad_token_id=1, quant_mode=False), add_pooling_layer=False))


def fam_mobilebert():
    T = _t()
    cfg = T.MobileBertConfig(
        **{**BERT, "hidden_size": 64},
        embedding_size=16,
        intra_bottleneck_size=32,
        true_hidden_size=32,
        num_feedforward_networks=2,
    )
    return text(T.MobileBertModel(cfg, add_pooling_layer=False))


def fam_layoutlm():
    T = _t()
    return text(T.LayoutLMModel(T.LayoutLMConfig(**BERT)))


def fam_canine():
    T = _t()
    cfg = T.CanineConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_hash_functions=2,
        num_hash_buckets=64,
        downsampling_rate=2,
        max_position_embeddings=64,
    )
    return text(T.CanineModel(cfg))


def fam_roformer():
    T = _t()
    return text(T.RoFormerModel(T.RoFormerConfig(**BERT, embedding_size=32)))


def fam_nystromformer():
    T = _t()
    cfg = T.NystromformerConfig(**BERT, num_landmarks=4, segment_means_seq_len=SEQ, conv_kernel_size=3)
    return text(T.NystromformerModel(cfg))


def fam_yoso():
    T = _t()
    return text(T.YosoModel(T.YosoConfig(**BERT, use_expectation=True, conv_window=None)))


def fam_big_bird():
    T = _t()
    cfg = T.BigBirdConfig(**BERT, attention_type="original_full")
    return text(T.BigBirdModel(cfg, add_pooling_layer=False))


def fam_longformer():
    T = _t()
    cfg = T.LongformerConfig(**BERT, attention_window=[4, 4], pad_token_id=1)
    return text(T.LongformerModel(cfg, add_pooling_layer=False))


def fam_ernie():
    T = _t()
    return text(T.ErnieModel(T.ErnieConfig(**BERT), add_pooling_layer=False))


def fam_data2vec_text():
    T = _t()
    cfg = T.Data2VecTextConfig(**BERT, pad_token_id=1)
    return text(T.Data2VecTextModel(cfg, add_pooling_layer=False))


def fam_convbert():
    T = _t()
    return text(T.ConvBertModel(T.ConvBertConfig(**BERT, embedding_size=32, head_ratio=2, conv_kernel_size=3)))


def fam_esm():
    T = _t()
    cfg = T.EsmConfig(**BERT, pad_token_id=1, position_embedding_type="rotary")
    return text(T.EsmModel(cfg, add_pooling_layer=False))


def fam_modernbert():
    T = _t()
    cfg = T.ModernBertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        local_attention=4,
        global_attn_every_n_layers=2,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
        cls_token_id=2,
        sep_token_id=3,
    )
    return text(T.ModernBertModel(cfg))


def fam_rembert():
    T = _t()
    cfg = T.RemBertConfig(**BERT, input_embedding_size=16, output_embedding_size=16, pad_token_id=1)
    return text(T.RemBertModel(cfg, add_pooling_layer=False))


def fam_xglm():
    T = _t()
    cfg = T.XGLMConfig(
        vocab_size=VOCAB, d_model=32, num_layers=2, attention_heads=4, ffn_dim=64, max_position_embeddings=64
    )
    return text(T.XGLMModel(cfg), use_cache=False)


def fam_codegen():
    T = _t()
    cfg = T.CodeGenConfig(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=64, n_ctx=64)
    return text(T.CodeGenModel(cfg), use_cache=False)


def fam_gpt_bigcode():
    T = _t()
    cfg = T.GPTBigCodeConfig(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, multi_query=True)
    return text(T.GPTBigCodeModel(cfg), use_cache=False)


def fam_mpt():
    T = _t()
    cfg = T.MptConfig(vocab_size=VOCAB, d_model=32, n_heads=4, n_layers=2, expansion_ratio=2, max_seq_len=64)
    return text(T.MptModel(cfg), use_cache=False)


def fam_biogpt():
    T = _t()
    return text(T.BioGptModel(T.BioGptConfig(**BERT)), use_cache=False)


def _decoder(cls_name, cfg_name, **extra):
    T = _t()
    cfg = getattr(T, cfg_name)(**{**DEC, **extra})
    return text(getattr(T, cls_name)(cfg), use_cache=False)


def fam_persimmon():
    extra = {"partial_rotary_factor": 0.5}
    d = {k: v for k, v in DEC.items() if k != "num_key_value_heads"}
    T = _t()
    return text(T.PersimmonModel(T.PersimmonConfig(**d, **extra)), use_cache=False)


def fam_olmo():
    return _decoder("OlmoModel", "OlmoConfig")


def fam_olmo2():
    return _decoder("Olmo2Model", "Olmo2Config")


def fam_granite():
    return _decoder("GraniteModel", "GraniteConfig", embedding_multiplier=2.0, residual_multiplier=0.5)


def fam_cohere():
    return _decoder("CohereModel", "CohereConfig")


def fam_starcoder2():
    return _decoder("Starcoder2Model", "Starcoder2Config")


def fam_qwen3():
    return _decoder("Qwen3Model", "Qwen3Config", head_dim=16)


def fam_helium():
    return _decoder("HeliumModel", "HeliumConfig", head_dim=16)


def fam_nemotron():
    return _decoder("NemotronModel", "NemotronConfig", head_dim=16)


def fam_glm():
    return _decoder("GlmModel", "GlmConfig", head_dim=16, pad_token_id=0)


def fam_qwen2_moe():
    return _decoder(
        "Qwen2MoeModel",
        "Qwen2MoeConfig",
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=64,
    )


def fam_mixtral():
    return _decoder("MixtralModel", "MixtralConfig", num_local_experts=4, num_experts_per_tok=2)


def fam_mamba():
    T = _t()
    cfg = T.MambaConfig(vocab_size=VOCAB, hidden_size=32, state_size=4, num_hidden_layers=2, expand=2, conv_kernel=4)
    return IdsWrap(T.MambaModel(cfg), use_cache=False), "ids", 32


def fam_beit():
    T = _t()
    return image(T.BeitModel(T.BeitConfig(**VIT, use_relative_position_bias=True), add_pooling_layer=False))


def fam_data2vec_vision():
    T = _t()
    cfg = T.Data2VecVisionConfig(**VIT, use_relative_position_bias=True)
    return image(T.Data2VecVisionModel(cfg, add_pooling_layer=False))


def fam_dinov2():
    T = _t()
    return image(T.Dinov2Model(T.Dinov2Config(**VIT)))


def fam_dinov3():
    T = _t()
    cfg = T.DINOv3ViTConfig(**VIT, num_register_tokens=2)
    return image(T.DINOv3ViTModel(cfg))


def fam_ijepa():
    T = _t()
    return image(T.IJepaModel(T.IJepaConfig(**VIT), add_pooling_layer=False))


def fam_levit():
    T = _t()
    cfg = T.LevitConfig(
        image_size=64,
        patch_size=16,
        hidden_sizes=[32, 48, 64],
        num_attention_heads=[2, 3, 4],
        depths=[1, 1, 1],
        key_dim=[8, 8, 8],
        down_ops=[["Subsample", 8, 32 // 8, 4, 2, 2], ["Subsample", 8, 48 // 8, 4, 2, 2]],
    )
    return image(T.LevitModel(cfg), 64)


def fam_mobilevit():
    T = _t()
    cfg = T.MobileViTConfig(
        image_size=64,
        hidden_sizes=[32, 48, 64],
        neck_hidden_sizes=[8, 16, 24, 32, 40, 48, 64],
        num_attention_heads=4,
    )
    return image(T.MobileViTModel(cfg, expand_output=False), 64)


def fam_mobilevitv2():
    T = _t()
    return image(T.MobileViTV2Model(T.MobileViTV2Config(image_size=64, width_multiplier=0.5)), 64)


def fam_poolformer():
    T = _t()
    cfg = T.PoolFormerConfig(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 48, 64])
    return image(T.PoolFormerModel(cfg), 64)


def fam_segformer():
    T = _t()
    cfg = T.SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 48, 64], num_attention_heads=[1, 2, 4, 4])
    return image(T.SegformerModel(cfg), 64)


def fam_cvt():
    T = _t()
    cfg = T.CvtConfig(embed_dim=[16, 32, 48], num_heads=[1, 2, 4], depth=[1, 2, 3])
    return image(T.CvtModel(cfg, add_pooling_layer=False), 64)


def fam_swinv2():
    T = _t()
    cfg = T.Swinv2Config(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4)
    return image(T.Swinv2Model(cfg, add_pooling_layer=False))


def fam_regnet():
    T = _t()
    cfg = T.RegNetConfig(embedding_size=16, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1], groups_width=8)
    return image(T.RegNetModel(cfg), 64)


def fam_convnextv2():
    T = _t()
    cfg = T.ConvNextV2Config(hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1])
    return image(T.ConvNextV2Model(cfg), 64)


def fam_focalnet():
    T = _t()
    cfg = T.FocalNetConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], focal_levels=[2, 2])
    return image(T.FocalNetModel(cfg, add_pooling_layer=False))


def fam_yolos():
    T = _t()
    cfg = T.YolosConfig(**{**VIT, "image_size": [32, 32]}, num_detection_tokens=5)
    return image(T.YolosModel(cfg, add_pooling_layer=False))


def fam_dpt():
    T = _t()
    cfg = T.DPTConfig(
        **{**VIT, "num_hidden_layers": 4},
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
    )
    return image(T.DPTForDepthEstimation(cfg))


def fam_vit_mae():
    T = _t()
    m = T.ViTMAEModel(T.ViTMAEConfig(**VIT, mask_ratio=0.0))
    return MaeWrap(m, 16), "image", 32


def fam_siglip_vision():
    T = _t()
    return image(T.SiglipVisionModel(T.SiglipVisionConfig(**VIT)))


def fam_siglip_text():
    T = _t()
    cfg = T.SiglipTextConfig(**{**BERT, "max_position_embeddings": SEQ})
    return text(T.SiglipTextModel(cfg))


def fam_owlvit_vision():
    T = _t()
    return image(T.OwlViTVisionModel(T.OwlViTVisionConfig(**VIT)))


def fam_blip_vision():
    T = _t()
    return image(T.BlipVisionModel(T.BlipVisionConfig(**VIT)))


def fam_pvt_v2():
    T = _t()
    cfg = T.PvtV2Config(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 48, 64], num_attention_heads=[1, 2, 4, 4])
    return image(T.PvtV2Model(cfg), 64)


def fam_efficientnet():
    T = _t()
    cfg = T.EfficientNetConfig(image_size=64, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320)
    return image(T.EfficientNetModel(cfg), 64)


def fam_bit():
    T = _t()
    cfg = T.BitConfig(
        embedding_size=16, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1], layer_type="bottleneck", num_groups=8
    )
    return image(T.BitModel(cfg), 64)


def _audio(model, config, **extra):
    T = _t()
    return audio(getattr(T, model)(getattr(T, config)(**{**AUDIO, **extra})))


def fam_wav2vec2():
    return _audio("Wav2Vec2Model", "Wav2Vec2Config")


def fam_wav2vec2_stable():
    return _audio("Wav2Vec2Model", "Wav2Vec2Config", feat_extract_norm="layer", do_stable_layer_norm=True)


def fam_hubert():
    return _audio("HubertModel", "HubertConfig")


def fam_data2vec_audio():
    return _audio("Data2VecAudioModel", "Data2VecAudioConfig", num_conv_pos_embeddings=4, conv_pos_kernel_size=3)


def fam_wavlm():
    return _audio("WavLMModel", "WavLMConfig", num_buckets=16, max_bucket_distance=32)


def fam_sew():
    return _audio("SEWModel", "SEWConfig", squeeze_factor=2)


def fam_sew_d():
    return _audio(
        "SEWDModel", "SEWDConfig", squeeze_factor=2, position_buckets=16, max_position_embeddings=64, share_att_key=True
    )


def fam_unispeech():
    return _audio("UniSpeechModel", "UniSpeechConfig")


def _encoder(model, config, **cfg):
    T = _t()
    return text(getattr(T, model)(getattr(T, config)(**cfg)).get_encoder())


def fam_marian_enc():
    return _encoder("MarianModel", "MarianConfig", **S2S, decoder_start_token_id=1)


def fam_mbart_enc():
    return _encoder("MBartModel", "MBartConfig", **S2S)


def fam_pegasus_enc():
    return _encoder("PegasusModel", "PegasusConfig", **S2S)


def fam_m2m_100_enc():
    return _encoder("M2M100Model", "M2M100Config", **S2S)


def fam_led_enc():
    cfg = {**S2S, "max_encoder_position_embeddings": 64, "max_decoder_position_embeddings": 64}
    del cfg["max_position_embeddings"]
    return _encoder("LEDModel", "LEDConfig", **cfg, attention_window=4)


def fam_mt5_enc():
    T = _t()
    return text(T.MT5EncoderModel(T.MT5Config(**T5)))


def fam_umt5_enc():
    T = _t()
    return text(T.UMT5EncoderModel(T.UMT5Config(**T5)))


def fam_t5v1_1_enc():
    T = _t()
    return text(T.T5EncoderModel(T.T5Config(**T5, feed_forward_proj="gated-gelu")))


def fam_longt5_enc():
    T = _t()
    return text(T.LongT5EncoderModel(T.LongT5Config(**T5, local_radius=4, encoder_attention_type="local")))


def fam_switch_enc():
    T = _t()
    cfg = T.SwitchTransformersConfig(**T5, num_experts=4, num_sparse_encoder_layers=1, num_sparse_decoder_layers=1)
    return text(T.SwitchTransformersEncoderModel(cfg))


FAMILIES = {k[4:]: v for k, v in dict(globals()).items() if k.startswith("fam_")}

# ---------------------------------------------------------------- pruning


def prunable(m) -> int | None:
    """Output units of a prunable layer, or None."""
    if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)):
        return m.weight.shape[0]
    if type(m).__name__ == "Conv1D" and hasattr(m, "nf"):
        return m.weight.shape[1]
    return None


@torch.no_grad()
def prune(model: torch.nn.Module, gen: torch.Generator) -> dict:
    for p in model.parameters():
        p.add_(0.02 * torch.randn(p.shape, generator=gen))
    layers = units = 0
    for m in model.modules():
        n = prunable(m)
        if n is None or n <= 4:
            continue
        rows = torch.randperm(n, generator=gen)[: round(0.3 * n)]
        w = m.weight
        if type(m).__name__ == "Conv1D":
            w[:, rows] = 0
        else:
            w[rows] = 0
        if getattr(m, "bias", None) is not None:
            m.bias[rows] = 0
        w.mul_((torch.rand(w.shape, generator=gen) >= 0.5).to(w.dtype))
        layers += 1
        units += len(rows)
    return {"pruned_layers": layers, "dead_units": units}


# ---------------------------------------------------------------- inputs, export


def inputs_for(kind: str, size: int, batch: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if kind in ("text", "ids"):
        x = {"input_ids": torch.randint(0, VOCAB, (batch, SEQ), generator=g)}
        if kind == "text":
            x["attention_mask"] = torch.ones(batch, SEQ, dtype=torch.long)
        return x
    if kind == "image":
        return {"pixel_values": torch.randn(batch, 3, size, size, generator=g)}
    return {"input_values": torch.randn(batch, size, generator=g)}


def export(wrapper, x: dict, path: str, exporter: str) -> dict:
    names = list(x)
    args = tuple(x.values())
    notes = {}
    if exporter == "ts":
        axes = {n: {0: "batch"} for n in [*names, "output"]}
        torch.onnx.export(
            wrapper,
            args,
            path,
            dynamo=False,
            opset_version=17,
            input_names=names,
            output_names=["output"],
            dynamic_axes=axes,
        )
        notes["batch"] = "dynamic"
        return notes
    batch = torch.export.Dim("batch", min=1, max=64)
    kw = {"dynamo": True, "input_names": names, "output_names": ["output"], "external_data": False, "verbose": False}
    try:
        prog = torch.onnx.export(wrapper, args, None, dynamic_shapes={n: {0: batch} for n in names}, **kw)
        notes["batch"] = "dynamic"
    except Exception as e:  # noqa: BLE001 - retry with static shapes
        notes["batch"] = "static"
        notes["dynamic_error"] = f"{type(e).__name__}: {last_line(e)}"
        prog = torch.onnx.export(wrapper, args, None, **kw)
    prog.save(path, external_data=False)
    return notes


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def last_line(e: BaseException) -> str:
    lines = [ln for ln in ANSI.sub("", str(e)).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else repr(e))[:300]


# ---------------------------------------------------------------- minimize, compare


def ort_dev(orig: str, mini: str, feeds: dict) -> tuple[float | None, str]:
    try:
        a = ort_run(orig, feeds)
    except Exception as e:  # noqa: BLE001
        return None, f"ort original: {last_line(e)}"
    try:
        b = ort_run(mini, feeds)
    except Exception as e:  # noqa: BLE001
        return float("inf"), f"ort minimized: {last_line(e)}"
    if a.shape != b.shape:
        return float("inf"), f"shape {a.shape} vs {b.shape}"
    scale = float(np.nanmax(np.abs(a))) or 1.0
    d = float(np.nanmax(np.abs(a.astype(np.float64) - b))) / scale
    if not (np.isnan(a) == np.isnan(b)).all():
        return float("inf"), "NaN pattern differs"
    return d, "nan in output" if np.isnan(a).any() else ""


OP_RE = re.compile(r"\(([A-Za-z0-9_]+)\)")


def read_report(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        r = json.load(f)
    opaque = []
    for o in r.get("opaque") or []:
        m = OP_RE.search(o.get("message", ""))
        opaque.append({"op": m.group(1) if m else "?", "code": o.get("code"), "node": o.get("node")})
    blocked = Counter()
    kept = 0
    for b in r.get("blocked") or []:
        kept += b.get("removable", 0)
        for w in b.get("reasons") or []:
            blocked[w.get("code", "?") if isinstance(w, dict) else str(w)] += 1
    devs = [o.get("max_relative_deviation") for o in (r.get("verification") or {}).get("outputs") or []]
    devs = [d for d in devs if d is not None]
    return {
        "params_before": (r.get("before") or {}).get("params"),
        "params_after": (r.get("after") or {}).get("params"),
        "verify_dev": max(devs) if devs else None,
        "opaque": opaque,
        "blocked_codes": dict(blocked),
        "blocked_removable": kept,
    }


NV_KEYS = ("params_before", "params_after", "opaque", "blocked_codes", "blocked_removable")


def minimize(binary: str, d: str, shapes: list[str], extra: list[str], tag: str) -> tuple[list[str], dict]:
    src, dst, rep = (os.path.join(d, f) for f in ("model.onnx", f"min{tag}.onnx", f"report{tag}.json"))
    for f in (dst, rep):
        if os.path.exists(f):
            os.remove(f)
    cmd = [binary, src, dst, "--report", rep, "-q"]
    for s in shapes:
        cmd += ["--input-shape", s]
    cmd += extra
    t = time.time()
    try:
        p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=150)
        rc, err = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired:
        rc, err = "timeout", ""
    with open(os.path.join(d, f"stderr{tag}.txt"), "w") as f:
        f.write(err)
    tail = [ln for ln in err.strip().splitlines() if ln.strip()][-6:]
    rec = {
        "exit": rc,
        "seconds": round(time.time() - t, 1),
        "stderr_tail": tail,
        "panic": "panicked" in err,
        "tract_fails_on": ("original" if f"cannot run {src}" in err else "output" if "cannot run" in err else None),
        "written": os.path.exists(dst),
        **read_report(rep),
    }
    return cmd, rec


def run_one(family: str, exporter: str, wrapper, kind: str, size: int, binary: str, out: str) -> dict:
    d = os.path.join(out, family, exporter)
    os.makedirs(d, exist_ok=True)
    rec: dict = {"family": family, "exporter": exporter, "kind": kind}
    x = inputs_for(kind, size, BATCH, 1)
    t = time.time()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rec.update(export(wrapper, x, os.path.join(d, "model.onnx"), exporter))
    except Exception as e:  # noqa: BLE001 - PyTorch's problem: note it
        rec["export_error"] = f"{type(e).__name__}: {last_line(e)}"
        return rec
    rec["export_s"] = round(time.time() - t, 1)
    b0 = 1 if rec.get("batch") == "dynamic" else BATCH
    shapes = [f"{n}={b0},{SEQ}" for n in x] if kind in ("text", "ids") else []
    cmd, res = minimize(binary, d, shapes, [], "")
    rec["cmd"] = shlex.join(cmd)
    rec.update(res)
    mini = os.path.join(d, "min.onnx")
    if res["exit"] == 4:
        cmd2, res2 = minimize(binary, d, shapes, ["--verify", "none"], "_nv")
        rec["nv"] = {"cmd": shlex.join(cmd2), "exit": res2["exit"], "stderr_tail": res2["stderr_tail"]}
        mini = os.path.join(d, "min_nv.onnx") if res2["written"] else None
        for k in NV_KEYS:  # the exit-4 report holds no analysis: take the unverified run's
            if res2.get(k) is not None:
                rec[k] = res2[k]
    if mini and os.path.exists(mini):
        orig = os.path.join(d, "model.onnx")
        rec["ort_dev"], rec["ort_note"] = ort_dev(orig, mini, inputs_for(kind, size, BATCH, 12345))
        if rec["ort_dev"] is None:  # the original itself fails at batch 2: try batch 1
            dev, note = ort_dev(orig, mini, inputs_for(kind, size, 1, 12345))
            rec["ort_dev"], rec["ort_note"] = dev, f"batch 1 ({note}); batch 2: {rec['ort_note']}"
        rec["ort_checked"] = os.path.basename(mini)
    return rec


def worker(family: str, exporters: list[str], binary: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    os.makedirs(os.path.join(out, family), exist_ok=True)
    try:
        wrapper, kind, size = FAMILIES[family]()
        wrapper.eval()
        info = prune(wrapper, torch.Generator().manual_seed(0))
        with torch.no_grad():
            wrapper(**inputs_for(kind, size, BATCH, 1))
    except Exception as e:  # noqa: BLE001
        rec = {"family": family, "exporter": "-", "build_error": f"{type(e).__name__}: {last_line(e)}"}
        rec["traceback"] = traceback.format_exc()[-2000:]
        save(out, family, "-", rec)
        return
    for ex in exporters:
        try:
            rec = run_one(family, ex, wrapper, kind, size, binary, out)
        except Exception as e:  # noqa: BLE001
            rec = {"family": family, "exporter": ex, "error": f"{type(e).__name__}: {last_line(e)}"}
        rec.update(info)
        save(out, family, ex, rec)


def save(out: str, family: str, exporter: str, rec: dict) -> None:
    d = os.path.join(out, family, exporter)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "record.json"), "w") as f:
        json.dump(rec, f, indent=1, default=str)


# ---------------------------------------------------------------- table


def collect(out: str) -> list[dict]:
    recs = []
    for fam in sorted(os.listdir(out)):
        for ex in ("-", "ts", "dynamo", "timeout"):
            p = os.path.join(out, fam, ex, "record.json")
            if os.path.exists(p):
                with open(p) as f:
                    rec = json.load(f)
                nv = read_report(os.path.join(out, fam, ex, "report_nv.json")) if rec.get("exit") == 4 else {}
                rec.update({k: nv[k] for k in NV_KEYS if nv.get(k) is not None})
                recs.append(rec)
    return recs


def failure(r: dict) -> str:
    why = []
    if r.get("exit") not in (None, 0):
        why.append(
            f"exit {r['exit']}" + (f" (tract fails on {r['tract_fails_on']})" if r.get("tract_fails_on") else "")
        )
    if r.get("panic"):
        why.append("panic")
    dev = r.get("ort_dev")
    if dev is not None and not dev <= TOLERANCE:
        why.append(f"ort dev {dev:.2e}")
    if r.get("ort_note", "").startswith("ort minimized"):
        why.append("ort cannot run minimized")
    if (r.get("nv") or {}).get("exit") not in (None, 0):
        why.append(f"--verify none exit {r['nv']['exit']}")
    return ", ".join(why)


def fmt_params(r: dict) -> tuple[str, str]:
    a, b = r.get("params_before"), r.get("params_after")
    if a is None or b is None:
        return "", ""
    return f"{a:,} -> {b:,}", f"{b / a:.3f}" if a else ""


def table(recs: list[dict]) -> str:
    rows = [
        "| family | exporter | exit | params before -> after | ratio | ORT dev | top opaque ops | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in recs:
        p, ratio = fmt_params(r)
        dev = r.get("ort_dev")
        dev_s = "" if dev is None else f"{dev:.1e}" + (" (nv)" if r.get("ort_checked") == "min_nv.onnx" else "")
        ops = Counter(o["op"] for o in r.get("opaque") or [])
        top = ", ".join(f"{k} {v}" for k, v in ops.most_common(4))
        note = (
            r.get("build_error")
            or r.get("export_error")
            or r.get("error")
            or failure(r)
            or ("static batch" if r.get("batch") == "static" else "")
        )
        exit_s = "" if r.get("exit") is None else str(r["exit"])
        note = str(note).replace("|", "/")[:140]
        rows.append(f"| {r['family']} | {r['exporter']} | {exit_s} | {p} | {ratio} | {dev_s} | {top} | {note} |")
    ran = [r for r in recs if "exit" in r]
    op_count = Counter(o["op"] for r in ran for o in r.get("opaque") or [])
    op_models = Counter(op for r in ran for op in {o["op"] for o in r.get("opaque") or []})
    code_count = Counter(o["code"] for r in ran for o in r.get("opaque") or [])
    blocked = Counter()
    for r in ran:
        blocked.update(r.get("blocked_codes") or {})
    fams = {r["family"] for r in ran}
    rows += [
        "",
        f"Exports minimized: {len(ran)} ({len(fams)} families); failures: {sum(1 for r in ran if failure(r))}",
        "",
        "Opaque operator types (nodes over all exports / exports with one):",
        "",
        ", ".join(f"{k} {v}/{op_models[k]}" for k, v in op_count.most_common()),
        "",
        "Opaque codes: " + ", ".join(f"{k} {v}" for k, v in code_count.most_common()),
        "",
        "Blocked reason codes: " + ", ".join(f"{k} {v}" for k, v in blocked.most_common()),
    ]
    return "\n".join(rows) + "\n"


def write_tables(out: str) -> None:
    recs = collect(out)
    with open(os.path.join(out, "zoo.json"), "w") as f:
        json.dump(recs, f, indent=1, default=str)
    with open(os.path.join(out, "zoo.md"), "w") as f:
        f.write(table(recs))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="/work/bin/onnx-minimize-s15")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-out", "hf_zoo"))
    ap.add_argument("--families", nargs="+", default=list(FAMILIES))
    ap.add_argument("--exporters", nargs="+", choices=["ts", "dynamo"], default=["ts", "dynamo"])
    ap.add_argument("--timeout", type=int, default=180, help="seconds per family")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    if a.worker:
        worker(a.worker, a.exporters, a.bin, out)
        return 0
    if not a.table_only:
        for fam in a.families:
            if fam not in FAMILIES:
                print(f"unknown family {fam}", file=sys.stderr)
                continue
            t = time.time()
            for stale in ("-", "timeout", *a.exporters):
                stale_rec = os.path.join(out, fam, stale, "record.json")
                if os.path.exists(stale_rec):
                    os.remove(stale_rec)
            log = os.path.join(out, f"{fam}.log")
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", fam, "--bin", a.bin, "--out", out]
            cmd += ["--exporters", *a.exporters]
            with open(log, "w") as f:
                try:
                    rc = subprocess.run(
                        cmd, check=False, stdout=f, stderr=subprocess.STDOUT, timeout=a.timeout
                    ).returncode
                except subprocess.TimeoutExpired:
                    rc = "timeout"
            done = [ex for ex in a.exporters if os.path.exists(os.path.join(out, fam, ex, "record.json"))]
            if rc != 0 or (len(done) < len(a.exporters) and not os.path.exists(os.path.join(out, fam, "-"))):
                missing = [ex for ex in a.exporters if ex not in done]
                save(out, fam, "timeout", {"family": fam, "exporter": "/".join(missing), "error": f"worker {rc}"})
            print(f"{fam}: {time.time() - t:.0f}s rc={rc}", flush=True)
            write_tables(out)
    write_tables(out)
    with open(os.path.join(out, "zoo.md")) as f:
        print(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
