"""An ONNX graph executed with torch operators, its weights as trainable parameters.

Why not a converter such as onnx2torch followed by a fresh export: the cycle has to get trained values back
into *the same* graph. A re-export renames tensors, re-decides how layers are written (Gemm or MatMul+Add),
and drops what onnx-minimize put there (gathered inputs, CompensatedLayerNorm, metadata, opsets). Executing
the graph as it is and writing only the numbers back keeps everything else byte for byte, and it makes any
model onnx-minimize wrote trainable, whichever exporter made the original.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper


class UnsupportedModel(ValueError):
    """The graph uses something this executor cannot run; the message names the node and the op."""


# Which inputs of which ops are learnable weights (prunable) and learnable biases or scales (trained, never pruned).
WEIGHT_INPUTS = {"Gemm": (1,), "MatMul": (0, 1), "Conv": (1,)}
TRAINED_INPUTS = {
    "Gemm": (2,),
    "Conv": (2,),
    "ConvTranspose": (1, 2),
    "LayerNormalization": (1, 2),
    "RMSNormalization": (1,),
    "BatchNormalization": (1, 2),
    "InstanceNormalization": (1, 2),
    "LSTM": (1, 2, 3, 7),
    "GRU": (1, 2, 3),
    "RNN": (1, 2, 3),
}


def _attrs(node: onnx.NodeProto) -> dict:
    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Split" and "split" not in values and (len(node.input) < 2 or not node.input[1]):
        values.setdefault("num_outputs", len(node.output))  # before opset 18 only the outputs say how many parts
    return values


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _axes(node_attrs: dict, inputs: list, index: int = 1) -> list[int] | None:
    if "axes" in node_attrs:
        return list(node_attrs["axes"])
    if len(inputs) > index and inputs[index] is not None:
        return [int(v) for v in inputs[index].reshape(-1).tolist()]
    return None


def _gemm(a, x, y, c=None):
    x = x.transpose(0, 1) if a.get("transA", 0) else x
    y = y.transpose(0, 1) if a.get("transB", 0) else y
    out = a.get("alpha", 1.0) * (x @ y)
    return out if c is None else out + a.get("beta", 1.0) * c


def _reshape(a, x, shape):
    dims = [int(d) for d in shape.tolist()]
    if not a.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _reduce(fn, alone=lambda x: x):
    """`alone`: what the reduction makes of a single element, the result over no axes (noop_with_empty_axes)."""

    def run(a, x, *rest):
        axes = _axes(a, [x, *rest])
        keep = bool(a.get("keepdims", 1))
        if not axes:  # absent or empty: every axis, or none with noop_with_empty_axes
            if a.get("noop_with_empty_axes", 0):
                return alone(x)
            axes = list(range(x.dim()))
        return fn(x, dim=axes, keepdim=keep)

    return run


def _prod(x, dim, keepdim):
    """torch.prod over several axes (it takes one at a time)."""
    dims = sorted({d % x.dim() for d in dim})
    for d in dims:
        x = x.prod(dim=d, keepdim=True)
    return x if keepdim else x.squeeze(tuple(dims))


def _slice(a, x, starts, ends, axes=None, steps=None):
    axes = list(range(len(starts))) if axes is None else axes.tolist()
    steps = [1] * len(axes) if steps is None else steps.tolist()
    index = [slice(None)] * x.dim()
    for axis, s, e, st in zip(axes, starts.tolist(), ends.tolist(), steps):
        n = x.shape[axis]
        if st < 0:
            raise UnsupportedModel("Slice with a negative step")
        s = max(0, min(n, s + n if s < 0 else s))
        e = max(0, min(n, e + n if e < 0 else e))
        index[axis] = slice(s, e, st)
    return x[tuple(index)]


def _conv(a, x, w, b=None):
    spatial = x.dim() - 2
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise UnsupportedModel("Conv with auto_pad SAME_*: export with explicit pads")
    pads = list(a.get("pads", [0] * 2 * spatial))
    if pads[:spatial] != pads[spatial:]:
        x = F.pad(x, [p for i in reversed(range(spatial)) for p in (pads[i], pads[i + spatial])])
        pads = [0] * 2 * spatial
    return conv(
        x,
        w,
        b,
        stride=list(a.get("strides", [1] * spatial)),
        padding=pads[:spatial],
        dilation=list(a.get("dilations", [1] * spatial)),
        groups=a.get("group", 1),
    )


def _conv_transpose(a, x, w, b=None):
    spatial = x.dim() - 2
    conv = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[spatial]
    pads = list(a.get("pads", [0] * 2 * spatial))
    if (
        pads[:spatial] != pads[spatial:]
        or "output_shape" in a
        or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
    ):
        raise UnsupportedModel("ConvTranspose with asymmetric pads, auto_pad or output_shape")
    return conv(
        x,
        w,
        b,
        stride=list(a.get("strides", [1] * spatial)),
        padding=pads[:spatial],
        output_padding=list(a.get("output_padding", [0] * spatial)),
        groups=a.get("group", 1),
        dilation=list(a.get("dilations", [1] * spatial)),
    )


def _pool_pads(a, x) -> tuple[list[int], list[int]]:
    """A pool's pads before and after each spatial axis: `pads`, or what `auto_pad` makes of them."""
    spatial = x.dim() - 2
    auto_pad = _text(a.get("auto_pad", "NOTSET"))
    if auto_pad == "VALID":
        return [0] * spatial, [0] * spatial
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        stride = list(a.get("strides", [1] * spatial))
        dilation = list(a.get("dilations", [1] * spatial))
        total = [
            max(0, (-(-n // s) - 1) * s + (k - 1) * d + 1 - n)
            for n, s, k, d in zip(x.shape[2:], stride, a["kernel_shape"], dilation)
        ]
        small, large = [t // 2 for t in total], [t - t // 2 for t in total]
        return (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    pads = list(a.get("pads", [0] * 2 * spatial))
    return pads[:spatial], pads[spatial:]


def _pool(kind):
    def run(a, x):
        spatial = x.dim() - 2
        kernel = list(a["kernel_shape"])
        begin, end = _pool_pads(a, x)
        if begin != end:
            raise UnsupportedModel(f"{kind} with asymmetric pads")
        pads = begin + end
        stride = list(a.get("strides", [1] * spatial))
        ceil = bool(a.get("ceil_mode", 0))
        if kind == "AveragePool" and any(d != 1 for d in a.get("dilations", [])):
            raise UnsupportedModel("AveragePool with dilations")
        if kind == "MaxPool":
            fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[spatial]
            return fn(
                x, kernel, stride, pads[:spatial], dilation=list(a.get("dilations", [1] * spatial)), ceil_mode=ceil
            )
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[spatial]
        return fn(
            x, kernel, stride, pads[:spatial], ceil_mode=ceil, count_include_pad=bool(a.get("count_include_pad", 0))
        )

    return run


def _lp_root(total, p):
    """`total ** (1 / p)`, with a finite gradient (zero) where a window is all zeros."""
    positive = total > 0
    return torch.where(positive, torch.where(positive, total, 1.0) ** (1.0 / p), 0.0)


def _lp_pool(a, x):
    """The p-norm of each window: a sum pool of |x|^p, as a depthwise convolution with ones. Padding adds
    nothing to a sum, so a window over pads (or past the end, in ceil_mode) takes the norm of what it covers."""
    spatial = x.dim() - 2
    sizes = list(x.shape[2:])
    kernel = list(a["kernel_shape"])
    stride = list(a.get("strides", [1] * spatial))
    dilation = list(a.get("dilations", [1] * spatial))
    begin, end = _pool_pads(a, x)
    for i in range(spatial):
        window = (kernel[i] - 1) * dilation[i] + 1
        room = sizes[i] + begin[i] + end[i] - window
        if a.get("ceil_mode", 0):
            out = -(-room // stride[i]) + 1
            if (out - 1) * stride[i] >= sizes[i] + begin[i]:  # the last window starts inside the input
                out -= 1
        else:
            out = room // stride[i] + 1
        end[i] += max(0, (out - 1) * stride[i] + window - (sizes[i] + begin[i] + end[i]))
    x = F.pad(x.abs() ** a.get("p", 2), [p for i in reversed(range(spatial)) for p in (begin[i], end[i])])
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]
    ones = torch.ones(x.shape[1], 1, *kernel, dtype=x.dtype, device=x.device)
    total = conv(x, ones, stride=stride, dilation=dilation, groups=x.shape[1])
    return _lp_root(total, a.get("p", 2))


def _global_lp_pool(a, x):
    total = (x.abs() ** a.get("p", 2)).sum(dim=tuple(range(2, x.dim())), keepdim=True)
    return _lp_root(total, a.get("p", 2))


def _layer_norm(a, x, scale, bias=None):
    axis = a.get("axis", -1) % x.dim()
    dims = list(range(axis, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    y = (x - mean) / torch.sqrt(var + a.get("epsilon", 1e-5)) * scale
    return y if bias is None else y + bias


def _rms_norm(a, x, scale):
    """Opset 23: x / sqrt(mean(x^2 over axis..last) + epsilon) * scale, in float64 where stash_type asks."""
    dims = list(range(a.get("axis", -1) % x.dim(), x.dim()))
    stash = torch.float64 if a.get("stash_type", 1) == onnx.TensorProto.DOUBLE else torch.float32
    wide = x.to(stash)
    y = wide / torch.sqrt((wide * wide).mean(dim=dims, keepdim=True) + a.get("epsilon", 1e-5))
    return y.to(x.dtype) * scale


def _attention(a, q, k, v, mask=None, *rest):
    """Attention (opset 23): query head h reads key/value head h // (Hq / Hkv). 3-D inputs hold their
    heads inside the last axis (`q_num_heads`, `kv_num_heads`), and so does the output."""
    if any(r is not None for r in rest) or a.get("softcap", 0.0):
        raise UnsupportedModel("Attention with a key/value cache or softcap is not supported")
    merged = q.dim() == 3
    if merged:

        def split(x, heads):
            return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)

        q, k, v = split(q, a["q_num_heads"]), split(k, a["kv_num_heads"]), split(v, a["kv_num_heads"])
    rep = q.shape[-3] // k.shape[-3]
    k, v = k.repeat_interleave(rep, dim=-3), v.repeat_interleave(rep, dim=-3)
    scores = (q @ k.transpose(-1, -2)) * a.get("scale", 1.0 / q.shape[-1] ** 0.5)
    lowest = float("-inf")
    if a.get("is_causal", 0):
        t, s = scores.shape[-2:]
        keep = torch.ones(t, s, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, lowest)
    if mask is not None:
        scores = scores.masked_fill(~mask, lowest) if mask.dtype == torch.bool else scores + mask
    # A row with every key masked attends to nothing (ONNX Runtime's output there is 0, not NaN).
    y = torch.softmax(scores, dim=-1).nan_to_num(0.0) @ v
    return y.transpose(1, 2).flatten(-2) if merged else y


def _rotary_embedding(a, x, cos, sin, position_ids=None):
    """RotaryEmbedding (opset 23): the first `rotary_embedding_dim` entries of each head (all when 0)
    rotate, as halves or as interleaved pairs, the rest pass; 4-D inputs are `[B, H, S, D]`, 3-D
    ones `[B, S, H * D]` (`num_heads`)."""
    four_d = x.dim() == 4
    x = x.transpose(1, 2) if four_d else x.reshape(x.shape[0], x.shape[1], a["num_heads"], -1)
    r = a.get("rotary_embedding_dim", 0) or x.shape[-1]
    if position_ids is not None:
        cos, sin = cos[position_ids], sin[position_ids]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    rot, rest = x[..., :r], x[..., r:]
    interleaved = a.get("interleaved", 0)
    x1, x2 = (rot[..., 0::2], rot[..., 1::2]) if interleaved else (rot[..., : r // 2], rot[..., r // 2 :])
    real, imag = cos * x1 - sin * x2, sin * x1 + cos * x2
    rot = torch.stack((real, imag), -1).flatten(-2) if interleaved else torch.cat((real, imag), -1)
    y = torch.cat((rot, rest), -1)
    return y.transpose(1, 2) if four_d else y.flatten(-2)


def _recurrent(kind: str):
    """LSTM (gates iofc, peepholes iof), GRU (zrh, `linear_before_reset`) and RNN with their default
    activations, every direction, `layout` 0 or 1; steps unrolled, so gradients flow through time."""
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[kind]

    def step(a, xt, h, c, r, rb, p):
        hidden = h.shape[-1]
        if kind == "RNN":
            return torch.tanh(xt + h @ r.T + rb), c
        if kind == "GRU":
            (xz, xr, xh), (rz, rr, rh), (bz, br, bh) = xt.split(hidden, -1), r.split(hidden), rb.split(hidden)
            z, reset = torch.sigmoid(xz + h @ rz.T + bz), torch.sigmoid(xr + h @ rr.T + br)
            if a.get("linear_before_reset", 0):
                n = torch.tanh(xh + reset * (h @ rh.T + bh))
            else:
                n = torch.tanh(xh + (reset * h) @ rh.T + bh)
            return (1 - z) * n + z * h, c
        i, o, f, g = (xt + h @ r.T + rb).split(hidden, -1)
        pi, po, pf = p.split(hidden) if p is not None else (0, 0, 0)
        c = torch.sigmoid(f + pf * c) * c + torch.sigmoid(i + pi * c) * torch.tanh(g)
        return torch.sigmoid(o + po * c) * torch.tanh(c), c

    defaults = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}[kind]

    def run(a, x, w, r, b=None, lengths=None, h0=None, c0=None, p=None):
        named = [_text(f).lower() for f in a.get("activations", [])]
        plain = all(f == g.lower() for f, g in zip(named, defaults * 2)) and len(named) in (
            0,
            len(defaults) * w.shape[0],
        )
        if lengths is not None or not plain or any(k in a for k in ("activation_alpha", "activation_beta", "clip")):
            raise UnsupportedModel(f"{kind} with sequence_lens, clip or other activations is not supported")
        if a.get("input_forget", 0):
            raise UnsupportedModel("LSTM with input_forget is not supported")
        batch_first = a.get("layout", 0) == 1
        if batch_first:
            x = x.transpose(0, 1)
            h0, c0 = (s.transpose(0, 1) if s is not None else None for s in (h0, c0))
        dirs, hidden = w.shape[0], r.shape[-1]
        b = b if b is not None else x.new_zeros(dirs, 2 * gates * hidden)
        ys, hs, cs = [], [], []
        for d in range(dirs):
            reverse = _text(a.get("direction", b"forward")) == "reverse" or d == 1
            h = h0[d] if h0 is not None else x.new_zeros(x.shape[1], hidden)
            c = c0[d] if c0 is not None else x.new_zeros(x.shape[1], hidden)
            wb, rb = b[d].split(gates * hidden)
            xw = x @ w[d].T + wb
            out = [None] * x.shape[0]
            for t in reversed(range(x.shape[0])) if reverse else range(x.shape[0]):
                h, c = step(a, xw[t], h, c, r[d], rb, p[d] if p is not None else None)
                out[t] = h
            ys.append(torch.stack(out))
            hs.append(h)
            cs.append(c)
        y, yh, yc = torch.stack(ys, 1), torch.stack(hs), torch.stack(cs)
        if batch_first:
            y, yh, yc = y.permute(2, 0, 1, 3), yh.transpose(0, 1), yc.transpose(0, 1)
        return [y, yh, yc] if kind == "LSTM" else [y, yh]

    return run


def _expand(a, x, shape):
    """Bidirectional broadcasting: `shape` may be shorter than x's or hold 1 where x's dimension is larger."""
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(int(d) for d in shape.tolist())))


def _flatten(a, x):
    axis = a.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def _gather(a, x, i):
    axis = a.get("axis", 0) % x.dim()
    index = torch.where(i < 0, i + x.shape[axis], i).long()
    return torch.index_select(x, axis, index.reshape(-1)).reshape((*x.shape[:axis], *i.shape, *x.shape[axis + 1 :]))


def _gather_nd(a, x, i):
    if a.get("batch_dims", 0):
        raise UnsupportedModel("GatherND with batch_dims is not supported")
    index = i.long()
    return x[tuple(index[..., k] for k in range(index.shape[-1]))]


def _batch_norm(a, x, scale, bias, mean, var):
    shape = [1, -1] + [1] * (x.dim() - 2)
    inv = scale.reshape(shape) / torch.sqrt(var.reshape(shape) + a.get("epsilon", 1e-5))
    return (x - mean.reshape(shape)) * inv + bias.reshape(shape)


def _instance_norm(a, x, scale, bias):
    return torch.nn.functional.instance_norm(x, weight=scale, bias=bias, eps=a.get("epsilon", 1e-5))


def _cast(a, x):
    to = a["to"]
    if to in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16):
        return x.to(torch.float32) if x.is_floating_point() or to == onnx.TensorProto.FLOAT else x.float()
    if to == onnx.TensorProto.BOOL:
        return x.bool()
    return x.to(torch.int64)


def _split(a, x, split=None):
    axis = a.get("axis", 0)
    sizes = split.tolist() if split is not None else a.get("split")
    if sizes is None:  # equal parts, the last one smaller where they cannot be
        return list(torch.split(x, -(-x.shape[axis] // a["num_outputs"]), dim=axis))
    return list(torch.split(x, [int(s) for s in sizes], dim=axis))


def _constant(a):
    if "value" in a:
        return torch.from_numpy(numpy_helper.to_array(a["value"]).copy())
    for key, dtype in (("value_float", torch.float32), ("value_int", torch.int64)):
        if key in a:
            return torch.tensor(a[key], dtype=dtype)
    for key, dtype in (("value_floats", torch.float32), ("value_ints", torch.int64)):
        if key in a:
            return torch.tensor(list(a[key]), dtype=dtype)
    raise UnsupportedModel("Constant without a tensor value")


def _constant_of_shape(a, shape):
    value = torch.from_numpy(numpy_helper.to_array(a["value"]).copy()) if "value" in a else torch.zeros(1)
    value = value.float() if value.is_floating_point() else value
    return value.reshape(()).expand(tuple(int(d) for d in shape.tolist())).clone()


def _trilu(a, x, k=None):
    k = int(k) if k is not None else 0
    return torch.triu(x, k) if a.get("upper", 1) else torch.tril(x, k)


def _gather_elements(a, x, index):
    axis = a.get("axis", 0) % x.dim()
    return torch.gather(x, axis, index % x.shape[axis])


def _is_inf(a, x):
    positive, negative = a.get("detect_positive", 1), a.get("detect_negative", 1)
    return (torch.isposinf(x) & bool(positive)) | (torch.isneginf(x) & bool(negative))


def _unsqueeze(a, x, axes=None):
    for axis in sorted(_axes(a, [x, axes]) or []):
        x = x.unsqueeze(axis % (x.dim() + 1))
    return x


def _squeeze(a, x, axes=None):
    axes = _axes(a, [x, axes])
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(axis % x.dim() for axis in axes))


_INT_RANGES = {torch.uint8: (0, 255), torch.int8: (-128, 127), torch.int16: (-32768, 32767)}
_ONNX_INT_RANGES = {
    onnx.TensorProto.UINT8: (0, 255),
    onnx.TensorProto.INT8: (-128, 127),
    onnx.TensorProto.UINT16: (0, 65535),
    onnx.TensorProto.INT16: (-32768, 32767),
}


def _per_axis(a, t, x):
    """A quantizer's scale or zero point: one for the tensor as it is, one per entry of `axis` shaped to broadcast."""
    if a.get("block_size", 0):
        raise UnsupportedModel("blocked quantization (block_size) is not supported")
    if t.numel() == 1:
        return t.reshape(())
    shape = [1] * x.dim()
    shape[a.get("axis", 1) % x.dim()] = -1
    return t.reshape(shape)


def _quantize_linear(a, x, scale, zero_point=None):
    """QuantizeLinear: saturate(round_half_even(x / scale) + zero_point) in the range of the zero point's type (or of
    `output_dtype`, uint8 by default). The integers come back as float32, which DequantizeLinear reads."""
    if zero_point is None:
        (lo, hi), zp = _ONNX_INT_RANGES[a.get("output_dtype") or onnx.TensorProto.UINT8], 0.0
    else:
        (lo, hi), zp = _INT_RANGES[zero_point.dtype], _per_axis(a, zero_point.float(), x)
    return torch.clamp(torch.round(x / _per_axis(a, scale.float(), x)) + zp, lo, hi)


def _dequantize_linear(a, x, scale, zero_point=None):
    """DequantizeLinear: (x - zero_point) * scale, per tensor or along `axis`, of stored integers or of what
    QuantizeLinear computed."""
    zp = 0.0 if zero_point is None else _per_axis(a, zero_point.float(), x)
    return (x.float() - zp) * _per_axis(a, scale.float(), x)


def _clip(a, x, lo=None, hi=None):
    lo = a.get("min", lo)
    hi = a.get("max", hi)
    return torch.clamp(x, min=lo, max=hi)


def _pad(a, x, pads=None, value=None, axes=None):
    """Pad: `pads` and the constant are inputs from opset 11 (attributes `pads` and `value` before), `axes` an input
    from opset 18. pads[i] goes before and pads[i + n] after axis axes[i] (or axis i). Negative pads crop, and
    edge, reflect and wrap read the cropped tensor, as ONNX Runtime does. Every mode at any rank: edge, reflect and
    wrap gather indices along each axis."""
    mode = _text(a.get("mode", "constant"))
    if mode not in ("constant", "edge", "reflect", "wrap"):
        raise UnsupportedModel(f"Pad mode {mode!r}")
    pads = [int(p) for p in pads.reshape(-1).tolist()] if pads is not None else list(a.get("pads", []))
    rank = x.dim()
    axes = list(range(rank)) if axes is None else [int(v) % rank for v in axes.reshape(-1).tolist()]
    if len(pads) != 2 * len(axes):
        raise UnsupportedModel(f"Pad with {len(pads)} pads for {len(axes)} axes")
    begin, end = [0] * rank, [0] * rank
    for i, axis in enumerate(axes):
        begin[axis], end[axis] = pads[i], pads[i + len(axes)]
    sizes = [n + b + e for n, b, e in zip(x.shape, begin, end)]
    if any(size < 0 for size in sizes):
        raise UnsupportedModel(f"Pad crops more than the input holds: {list(x.shape)} to {sizes}")
    fill = value.reshape(-1)[0].item() if value is not None and value.numel() else a.get("value", 0.0)
    if any(max(0, -b) + max(0, -e) > n for n, b, e in zip(x.shape, begin, end)):
        if mode != "constant" and 0 not in sizes:
            raise UnsupportedModel(f"Pad mode {mode!r} that crops a whole axis and pads it again")
        return torch.full(sizes, fill, dtype=x.dtype, device=x.device)  # the crop keeps none of the input
    for axis in range(rank):
        cut_begin, cut_end = max(0, -begin[axis]), max(0, -end[axis])
        if cut_begin or cut_end:
            x = x.narrow(axis, cut_begin, x.shape[axis] - cut_begin - cut_end)
    begin, end = [max(0, p) for p in begin], [max(0, p) for p in end]
    if mode == "constant":
        return F.pad(x, [p for axis in reversed(range(rank)) for p in (begin[axis], end[axis])], value=fill)
    for axis in range(rank):
        n = x.shape[axis]
        if not (begin[axis] or end[axis]):
            continue
        if n == 0:
            raise UnsupportedModel(f"Pad mode {mode!r} of an empty axis")
        at = np.arange(-begin[axis], n + end[axis])
        if mode == "edge":
            index = np.clip(at, 0, n - 1)
        elif mode == "wrap":
            index = at % n
        elif n == 1:  # reflect: a single element is its own mirror
            index = np.zeros_like(at)
        else:  # reflect, about the first and last element, as often as the pads need
            at = at % (2 * n - 2)
            index = np.where(at < n, at, 2 * n - 2 - at)
        x = x.index_select(axis, torch.as_tensor(index, dtype=torch.long, device=x.device))
    return x


def _floats(t) -> list[float]:
    return [float(v) for v in t.reshape(-1).tolist()]


def _source_coordinates(mode: str, out: int, size: int, scale, roi) -> np.ndarray:
    """The input coordinate each output position along one axis samples (Resize's coordinate_transformation_mode),
    in float32 and in the order ONNX Runtime computes it, so that nearest rounds the same halves."""
    y = np.arange(out, dtype=np.float32)
    s, half = np.float32(scale), np.float32(0.5)
    if mode == "half_pixel":
        return (y + half) / s - half
    if mode == "asymmetric":
        return y / s
    if mode == "pytorch_half_pixel":
        return (y + half) / s - half if out > 1 else np.zeros(out, np.float32)
    if mode == "tf_half_pixel_for_nn":
        return (y + half) / s
    if mode == "align_corners":
        return y * np.float32(size - 1) / np.float32(out - 1) if out > 1 else np.zeros(out, np.float32)
    if mode == "half_pixel_symmetric":
        adjustment = np.float32(out) / (s * np.float32(size))
        offset = np.float32(size) / np.float32(2) * (np.float32(1) - adjustment)
        return (float(offset) + (y.astype(np.float64) + 0.5) / float(s) - 0.5).astype(np.float32)
    if mode == "tf_crop_and_resize":
        start, end = np.float32(roi[0]), np.float32(roi[1])
        if out > 1:
            return start * np.float32(size - 1) + y * (end - start) * np.float32(size - 1) / np.float32(out - 1)
        return np.full(out, 0.5 * (float(start) + float(end)) * (size - 1), np.float32)
    raise UnsupportedModel(f"Resize coordinate_transformation_mode {mode!r}")


def _nearest(coordinates: np.ndarray, rule: str, scale) -> np.ndarray:
    """The input position nearest_mode picks for each coordinate (before clamping to the axis)."""
    floor = np.floor(coordinates)
    fraction = coordinates - floor
    if rule == "round_prefer_floor":
        return floor + (fraction > 0.5)
    if rule == "round_prefer_ceil":
        return floor + (fraction >= 0.5)
    if rule == "floor":
        return floor
    if rule == "ceil":
        return np.ceil(coordinates)
    if rule == "legacy":  # Upsample and Resize-10: down when enlarging, up when shrinking
        return np.ceil(coordinates) if scale < 1 else np.trunc(coordinates)
    raise UnsupportedModel(f"Resize nearest_mode {rule!r}")


def _cubic(t: np.ndarray, a: float) -> np.ndarray:
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _taps(coordinates: np.ndarray, mode: str, a: dict, scale: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Input positions (output positions x taps, not yet clamped) and their weights, for linear or cubic. With
    antialias and a scale below 1 the filter stretches by 1 / scale and its weights are normalised; exclude_outside
    drops the taps outside the input and normalises what is left; other taps outside read the nearest edge."""
    x = coordinates.astype(np.float64)
    reach = 1 if mode == "linear" else 2  # half the filter's support at scale 1
    stretch = min(float(scale), 1.0) if a.get("antialias", 0) else 1.0
    wide = math.ceil(reach / stretch)
    base = np.floor(x)
    index = base[:, None] + np.arange(1 - wide, wide + 1)[None, :]
    distance = (index - x[:, None]) * stretch
    if mode == "linear":
        weights = np.clip(1 - np.abs(distance), 0, 1)
    else:
        weights = _cubic(distance, float(a.get("cubic_coeff_a", -0.75)))
    normalise = stretch < 1
    if a.get("exclude_outside", 0):
        weights = np.where((index < 0) | (index >= size), 0.0, weights)
        normalise = True
    if normalise:
        total = weights.sum(axis=1, keepdims=True)
        weights = weights / np.where(total == 0, 1.0, total)
    return index, weights


def _along(x, axis: int, index: np.ndarray, weights: np.ndarray | None = None):
    """x gathered along `axis` at `index` (clamped to the axis), summed over taps with `weights` where given."""
    index = torch.as_tensor(np.clip(index, 0, x.shape[axis] - 1), dtype=torch.long, device=x.device)
    if weights is None:
        return x.index_select(axis, index)
    shape = [1] * x.dim()
    shape[axis] = -1
    weights = torch.as_tensor(weights, dtype=x.dtype, device=x.device)
    out = None
    for tap in range(index.shape[1]):
        term = x.index_select(axis, index[:, tap]) * weights[:, tap].reshape(shape)
        out = term if out is None else out + term
    return out


def _keeps(coordinates: np.ndarray, n: int, mode: str, rule: str, scale, crop: bool) -> bool:
    """Whether sampling an axis of n at `coordinates` (n of them) gives it back as it is."""
    if crop and ((coordinates < 0) | (coordinates > n - 1)).any():
        return False  # extrapolates
    if n == 1:
        return True  # every tap reads the one element, with weights that sum to 1
    if mode == "nearest":
        return np.array_equal(np.clip(_nearest(coordinates, rule, scale), 0, n - 1), np.arange(n))
    return np.array_equal(coordinates, np.arange(n))


def _interpolate(a, x, scales, sizes, roi, legacy: bool):
    """Resize with ONNX's semantics, one axis at a time (every mode is separable): nearest, linear (bilinear,
    trilinear, ...) and cubic, every coordinate_transformation_mode, nearest_mode, exclude_outside, antialias,
    axes, keep_aspect_ratio_policy and tf_crop_and_resize's roi and extrapolation_value. `legacy`: Upsample and
    Resize-10, which know only asymmetric coordinates and round nearest down (up when shrinking)."""
    rank = x.dim()
    mode = _text(a.get("mode", "nearest"))
    if mode not in (("nearest", "linear") if legacy else ("nearest", "linear", "cubic")):
        raise UnsupportedModel(f"{'Upsample or Resize-10' if legacy else 'Resize'} mode {mode!r}")
    if mode != "nearest" and not x.is_floating_point():
        raise UnsupportedModel(f"Resize mode {mode!r} of a {x.dtype} tensor")
    if mode == "nearest" and (a.get("antialias", 0) or a.get("exclude_outside", 0)):
        raise UnsupportedModel("Resize mode 'nearest' with antialias or exclude_outside")
    coordinate = "asymmetric" if legacy else _text(a.get("coordinate_transformation_mode", "half_pixel"))
    rule = "legacy" if legacy else _text(a.get("nearest_mode", "round_prefer_floor"))
    axes = [int(axis) % rank for axis in a["axes"]] if "axes" in a else list(range(rank))
    inputs = [x.shape[axis] for axis in axes]
    if scales is not None:
        factors = [np.float32(s) for s in scales]
        if len(factors) != len(axes):
            raise UnsupportedModel(f"Resize with {len(factors)} scales for {len(axes)} axes")
        outputs = [int(f * np.float32(n)) for f, n in zip(factors, inputs)]
    elif sizes is not None:
        outputs = [int(s) for s in sizes]
        if len(outputs) != len(axes):
            raise UnsupportedModel(f"Resize with {len(outputs)} sizes for {len(axes)} axes")
        factors = [np.float32(m) / np.float32(n) if n else np.float32(1) for m, n in zip(outputs, inputs)]
        policy = _text(a.get("keep_aspect_ratio_policy", "stretch"))
        if policy in ("not_larger", "not_smaller"):
            factor = min(factors) if policy == "not_larger" else max(factors)
            factors = [factor] * len(axes)
            outputs = [math.floor(float(factor * np.float32(n)) + 0.5) for n in inputs]
        elif policy != "stretch":
            raise UnsupportedModel(f"Resize keep_aspect_ratio_policy {policy!r}")
    else:
        raise UnsupportedModel("Resize without scales or sizes")
    boxes = [(0.0, 1.0)] * len(axes)
    if coordinate == "tf_crop_and_resize":
        if roi is None or len(roi) != 2 * len(axes):
            raise UnsupportedModel(f"Resize tf_crop_and_resize needs a roi of {2 * len(axes)} values")
        boxes = list(zip(roi[: len(axes)], roi[len(axes) :]))
        # The spec sizes a crop from scales by the roi too; ONNX Runtime does not. Only where both agree:
        for m, n, f, (start, end) in zip(outputs, inputs, factors, boxes):
            if scales is not None and int(np.float32(n) * (np.float32(end) - np.float32(start)) * f) != m:
                raise UnsupportedModel("Resize tf_crop_and_resize with scales and a roi that shrinks the output")
    # An axis whose scale is 1 stays as it is (tf_half_pixel_for_nn would shift it by half a pixel), as in the
    # spec's reference implementation and ONNX Runtime. Where they part, refuse: ONNX Runtime also leaves as it is
    # an axis of scale 1 whatever the roi, every axis when the output has the input's shape, and, with antialias,
    # any axis the output gives its own length, whatever the scales.
    crop = coordinate == "tf_crop_and_resize"
    kept = outputs == inputs or (a.get("antialias", 0) and mode != "nearest")
    plan = []
    for axis, n, m, f, box in zip(axes, inputs, outputs, factors, boxes):
        if f == 1 and m == n and not crop:
            continue
        coordinates = _source_coordinates(coordinate, m, n, f, box)
        if m == n and _keeps(coordinates, n, mode, rule, f, crop):
            continue
        if m == n and (f == 1 or kept):
            raise UnsupportedModel(f"Resize of an axis onto its own length that moves it ({coordinate}, scale {f})")
        plan.append((axis, n, f, coordinates))
    outside = None
    for axis, n, f, coordinates in plan:
        if n == 0:
            raise UnsupportedModel("Resize of an empty axis")
        if coordinate == "tf_crop_and_resize":
            beyond = torch.as_tensor((coordinates < 0) | (coordinates > n - 1), device=x.device)
            shape = [1] * rank
            shape[axis] = -1
            beyond = beyond.reshape(shape)
            outside = beyond if outside is None else outside | beyond
        if mode == "nearest":
            x = _along(x, axis, _nearest(coordinates, rule, f))
        else:
            x = _along(x, axis, *_taps(coordinates, mode, a, f, n))
    if outside is not None:
        fill = torch.tensor(a.get("extrapolation_value", 0.0), dtype=x.dtype, device=x.device)
        x = torch.where(outside, fill, x)
    return x


def _resize(a, x, *rest):
    """Resize-10: X, scales. From opset 11: X, roi, scales, sizes (one of scales and sizes, the other empty)."""
    if len(rest) == 1:  # two inputs are opset 10's (from 11 a valid node has scales or sizes after the roi)
        return _interpolate(a, x, _floats(rest[0]), None, None, legacy=True)
    roi, scales, sizes = (list(rest) + [None] * 3)[:3]
    present = [None if t is None or t.numel() == 0 else t for t in (roi, scales, sizes)]
    roi, scales = [None if t is None else _floats(t) for t in present[:2]]
    sizes = None if present[2] is None else [int(v) for v in present[2].reshape(-1).tolist()]
    return _interpolate(a, x, scales, sizes, roi, legacy=False)


def _upsample(a, x, scales=None):
    """Upsample: the scales an attribute in opset 7, an input in opset 9; Resize-10's semantics."""
    if scales is None and "scales" not in a:
        raise UnsupportedModel("Upsample without scales")
    return _interpolate(a, x, _floats(scales) if scales is not None else list(a["scales"]), None, None, legacy=True)


OPS: dict[str, Callable] = {
    "Gemm": _gemm,
    "MatMul": lambda a, x, y: x @ y,
    "Einsum": lambda a, *xs: torch.einsum(_text(a["equation"]), *xs),
    "Add": lambda a, x, y: x + y,
    "Sub": lambda a, x, y: x - y,
    "Mul": lambda a, x, y: x * y,
    # Integer division truncates (TorchScript computes sizes such as `C / 2` with it).
    "Div": lambda a, x, y: torch.div(x, y, rounding_mode="trunc") if not x.is_floating_point() else x / y,
    # Integer remainder has the divisor's sign, ONNX's default; fmod=1 the dividend's.
    "Mod": lambda a, x, y: torch.fmod(x, y) if a.get("fmod", 0) else torch.remainder(x, y),
    "Pow": lambda a, x, y: torch.pow(x, y),
    "Max": lambda a, *xs: torch.stack(torch.broadcast_tensors(*xs)).amax(0),
    "Min": lambda a, *xs: torch.stack(torch.broadcast_tensors(*xs)).amin(0),
    "Relu": lambda a, x: torch.relu(x),
    "LeakyRelu": lambda a, x: F.leaky_relu(x, a.get("alpha", 0.01)),
    "PRelu": lambda a, x, s: torch.where(x >= 0, x, x * s),
    "Elu": lambda a, x: F.elu(x, a.get("alpha", 1.0)),
    "Selu": lambda a, x: (
        a.get("gamma", 1.05070102214813232421875) * F.elu(x, a.get("alpha", 1.67326319217681884765625))
    ),
    "Celu": lambda a, x: F.celu(x, a.get("alpha", 1.0)),
    "ThresholdedRelu": lambda a, x: torch.where(x > a.get("alpha", 1.0), x, 0.0),
    "Sigmoid": lambda a, x: torch.sigmoid(x),
    "HardSigmoid": lambda a, x: torch.clamp(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0, 1),
    "HardSwish": lambda a, x: F.hardswish(x),
    "Tanh": lambda a, x: torch.tanh(x),
    "Softplus": lambda a, x: F.softplus(x),
    "Softsign": lambda a, x: F.softsign(x),
    "Mish": lambda a, x: F.mish(x),
    "Erf": lambda a, x: torch.erf(x),
    "Gelu": lambda a, x: F.gelu(
        x, approximate="tanh" if a.get("approximate", b"none") in (b"tanh", "tanh") else "none"
    ),
    "Exp": lambda a, x: torch.exp(x),
    "Log": lambda a, x: torch.log(x),
    "Sqrt": lambda a, x: torch.sqrt(x),
    "Reciprocal": lambda a, x: 1.0 / x,
    "Neg": lambda a, x: -x,
    "Abs": lambda a, x: torch.abs(x),
    "Sign": lambda a, x: torch.sign(x),
    "Ceil": lambda a, x: torch.ceil(x),
    "Floor": lambda a, x: torch.floor(x),
    "Sin": lambda a, x: torch.sin(x),
    "Cos": lambda a, x: torch.cos(x),
    "Clip": _clip,
    "QuantizeLinear": _quantize_linear,
    "DequantizeLinear": _dequantize_linear,
    "Softmax": lambda a, x: torch.softmax(x, a.get("axis", -1)),
    "LogSoftmax": lambda a, x: torch.log_softmax(x, a.get("axis", -1)),
    "Identity": lambda a, x: x,
    "Dropout": lambda a, x, *rest: x,
    "Cast": _cast,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": lambda a, x: x.permute(*(a.get("perm") or reversed(range(x.dim())))),
    "Concat": lambda a, *xs: torch.cat(xs, dim=a["axis"]),
    "Split": _split,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Attention": _attention,
    "RotaryEmbedding": _rotary_embedding,
    "Tile": lambda a, x, repeats: x.repeat(*repeats.tolist()),
    # Attention masks, as the exporters write them (padding, causal, SDPA's NaN guard).
    "Where": lambda a, c, x, y: torch.where(c.bool(), x, y),
    "IsNaN": lambda a, x: torch.isnan(x),
    "IsInf": _is_inf,
    "Equal": lambda a, x, y: x == y,
    "Less": lambda a, x, y: x < y,
    "LessOrEqual": lambda a, x, y: x <= y,
    "Greater": lambda a, x, y: x > y,
    "GreaterOrEqual": lambda a, x, y: x >= y,
    "And": lambda a, x, y: x.bool() & y.bool(),
    "Or": lambda a, x, y: x.bool() | y.bool(),
    "Xor": lambda a, x, y: x.bool() ^ y.bool(),
    "Not": lambda a, x: ~x.bool(),
    "ConstantOfShape": _constant_of_shape,
    "Range": lambda a, start, limit, delta: torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype),
    "Trilu": _trilu,
    "GatherElements": _gather_elements,
    "Expand": _expand,
    "Gather": _gather,
    "GatherND": _gather_nd,
    "Shape": lambda a, x: torch.tensor(
        x.shape[a.get("start", 0) : a.get("end", x.dim())], dtype=torch.int64, device=x.device
    ),
    "Slice": _slice,
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "MaxPool": _pool("MaxPool"),
    "AveragePool": _pool("AveragePool"),
    "GlobalAveragePool": lambda a, x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
    "GlobalMaxPool": lambda a, x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True),
    "LpPool": _lp_pool,
    "GlobalLpPool": _global_lp_pool,
    "BatchNormalization": _batch_norm,
    "InstanceNormalization": _instance_norm,
    "LayerNormalization": _layer_norm,
    "RMSNormalization": _rms_norm,
    "ReduceMean": _reduce(torch.mean),
    "ReduceSum": _reduce(torch.sum),
    "ReduceMax": _reduce(torch.amax),
    "ReduceMin": _reduce(torch.amin),
    "ReduceProd": _reduce(_prod),
    "ReduceSumSquare": _reduce(lambda x, dim, keepdim: (x * x).sum(dim=dim, keepdim=keepdim), lambda x: x * x),
    "ReduceL1": _reduce(lambda x, dim, keepdim: x.abs().sum(dim=dim, keepdim=keepdim), torch.abs),
    "ReduceL2": _reduce(lambda x, dim, keepdim: torch.linalg.vector_norm(x, 2, dim=dim, keepdim=keepdim), torch.abs),
    "ReduceLogSumExp": _reduce(torch.logsumexp),
    "Pad": _pad,
    "Resize": _resize,
    "Upsample": _upsample,
    "LSTM": _recurrent("LSTM"),
    "GRU": _recurrent("GRU"),
    "RNN": _recurrent("RNN"),
}


class OnnxModule(torch.nn.Module):
    """Runs `model`'s graph. Float weights of Gemm, MatMul and Conv are parameters and prunable (`weights`);
    their biases and norm scales are parameters too; every other constant is a buffer.

    `masks` (name -> bool tensor) hold pruned positions at exactly zero through any optimizer: the forward
    pass reads `weight * mask`, so neither gradients, momentum nor weight decay can move them."""

    def __init__(self, model: onnx.ModelProto):
        super().__init__()
        self.model = model
        graph = model.graph
        constants = {t.name: t for t in graph.initializer}
        # Weights written as Constant nodes (tf2onnx, older exporters) train like initializers.
        for n in graph.node:
            value = next((a.t for a in n.attribute if a.name == "value" and a.HasField("t")), None)
            if n.op_type == "Constant" and value is not None and n.output[0] not in constants:
                constants[n.output[0]] = value
        producer = {o: n for n in graph.node for o in n.output}
        # TorchScript exports read shared weights through Identity nodes: the weight is the initializer.
        alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in constants}
        self.weights: list[str] = []
        trained: set[str] = set()
        for node in graph.node:
            inputs = [alias.get(x, x) for x in node.input]
            if node.domain not in ("", "ai.onnx"):
                raise UnsupportedModel(f"node {node.name!r}: op {node.domain}.{node.op_type} is not a standard ONNX op")
            if node.op_type not in OPS and node.op_type != "Constant":
                raise UnsupportedModel(
                    f"node {node.name!r}: op {node.op_type} cannot be trained here; "
                    "train your own width-parameterised model instead (see docs/method.md)"
                )
            for i in WEIGHT_INPUTS.get(node.op_type, ()):
                if i < len(inputs) and inputs[i] in constants and inputs[i] not in self.weights:
                    self.weights.append(inputs[i])
            for i in TRAINED_INPUTS.get(node.op_type, ()):
                if i < len(inputs) and inputs[i] in constants:
                    trained.add(inputs[i])
            after_matmul = any(x in producer and producer[x].op_type == "MatMul" for x in inputs)
            if node.op_type == "Add" and after_matmul:  # the bias of a MatMul layer
                trained.update(x for x in inputs if x in constants)
        trained.update(self.weights)
        self.trained = sorted(trained)
        self._keys: dict[str, str] = {}
        for index, (name, tensor) in enumerate(constants.items()):
            value = torch.from_numpy(numpy_helper.to_array(tensor).copy())
            key = f"c{index}"
            self._keys[name] = key
            # Training runs in float32 whatever the model stores; writing back restores the stored type.
            value = value.float() if value.is_floating_point() else value
            if name in trained and value.is_floating_point():
                self.register_parameter(key, torch.nn.Parameter(value))
            else:
                self.register_buffer(key, value)
        self.weights = [w for w in self.weights if isinstance(self.stored(w), torch.nn.Parameter)]
        self.trained = [w for w in self.trained if isinstance(self.stored(w), torch.nn.Parameter)]
        self.masks: dict[str, torch.Tensor] = {}
        self._nodes = [(n.op_type, list(n.input), list(n.output), _attrs(n), n.name) for n in graph.node]
        self._inputs = [i.name for i in graph.input if i.name not in constants]
        self._outputs = [o.name for o in graph.output]

    def stored(self, name: str) -> torch.Tensor:
        """The parameter or buffer behind initializer `name`, unmasked."""
        return getattr(self, self._keys[name])

    def tensor(self, name: str) -> torch.Tensor:
        """The value the graph reads for initializer `name` (masked where a mask is set)."""
        value = self.stored(name)
        mask = self.masks.get(name)
        return value if mask is None else value * mask

    def mask_zeros(self) -> int:
        """Freezes every exact zero of the trained tensors at zero (the pruned weights, and the biases and
        norm scales of channels that space-coupled pruning silenced); returns how many weights are zero."""
        self.masks = {name: self.tensor(name).detach() != 0 for name in self.trained}
        return sum(int((~self.masks[name]).sum()) for name in self.weights)

    def forward(self, *inputs: torch.Tensor):
        values: dict[str, torch.Tensor | None] = {"": None}
        values.update(zip(self._inputs, (x.float() if x.is_floating_point() else x for x in inputs)))
        for name in self._keys:
            values[name] = self.tensor(name)
        for op, ins, outs, attrs, node in self._nodes:
            if op == "Constant" and outs[0] in self._keys:
                continue  # its value is a parameter or buffer, read above
            args = [values[i] for i in ins]
            while args and args[-1] is None:
                args.pop()
            try:
                result = OPS[op](attrs, *args) if op != "Constant" else _constant(attrs)
            except UnsupportedModel as e:
                raise UnsupportedModel(f"node {node!r}: {e}") from None
            for name, value in zip(outs, result if isinstance(result, list) else [result]):
                values[name] = value
        out = [values[o] for o in self._outputs]
        return out[0] if len(out) == 1 else tuple(out)

    def to_onnx(self) -> onnx.ModelProto:
        """The original model with the trained (masked) values in place of its initializers and
        Constant-node weights."""
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        stored = [(t.name, t) for t in model.graph.initializer]
        stored += [
            (n.output[0], a.t)
            for n in model.graph.node
            if n.op_type == "Constant"
            for a in n.attribute
            if a.name == "value"
        ]
        for name, tensor in stored:
            if name in self._keys and isinstance(self.stored(name), torch.nn.Parameter):
                array = self.tensor(name).detach().cpu().numpy()
                dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
                tensor.CopyFrom(numpy_helper.from_array(array.astype(dtype), tensor.name))
        return model


def load(path: str | os.PathLike) -> OnnxModule:
    module = OnnxModule(onnx.load(os.fspath(path)))
    module.source = os.fspath(path)  # what onnx-minimize reads to tell the module's channel spaces
    return module


def save(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Writes atomically: a reader never sees half a model, and an interrupted run leaves the old file.
    Weights go to `<path>.data` when the model would pass protobuf's 2 GB limit."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".onnx.tmp")
    os.close(fd)
    large = sum(t.ByteSize() for t in model.graph.initializer) > 2**31 - 2**27
    try:
        if large:  # onnx appends to an existing data file: start it afresh
            data = os.path.basename(path) + ".data"
            if os.path.exists(os.path.join(folder, data)):
                os.remove(os.path.join(folder, data))
            onnx.save(model, tmp, save_as_external_data=True, location=data)
        else:
            onnx.save(model, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def params(model: onnx.ModelProto) -> int:
    """Dense parameters as onnx-minimize counts them: every element of every initializer and Constant."""
    constants = [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    return int(sum(np.prod(t.dims, dtype=np.int64) for t in [*model.graph.initializer, *constants]))
