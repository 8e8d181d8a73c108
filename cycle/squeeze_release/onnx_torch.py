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


def _reduce(fn):
    def run(a, x, *rest):
        axes = _axes(a, [x, *rest])
        keep = bool(a.get("keepdims", 1))
        if axes is None:
            if a.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, dim=axes, keepdim=keep)

    return run


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
    return torch.index_select(x, axis, index.reshape(-1)).reshape(*x.shape[:axis], *i.shape, *x.shape[axis + 1 :])


def _batch_norm(a, x, scale, bias, mean, var):
    shape = [1, -1] + [1] * (x.dim() - 2)
    inv = scale.reshape(shape) / torch.sqrt(var.reshape(shape) + a.get("epsilon", 1e-5))
    return (x - mean.reshape(shape)) * inv + bias.reshape(shape)


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


def _unsqueeze(a, x, axes=None):
    for axis in sorted(_axes(a, [x, axes]) or []):
        x = x.unsqueeze(axis % (x.dim() + 1))
    return x


def _squeeze(a, x, axes=None):
    axes = _axes(a, [x, axes])
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(axis % x.dim() for axis in axes))


def _clip(a, x, lo=None, hi=None):
    lo = a.get("min", lo)
    hi = a.get("max", hi)
    return torch.clamp(x, min=lo, max=hi)


OPS: dict[str, Callable] = {
    "Gemm": _gemm,
    "MatMul": lambda a, x, y: x @ y,
    "Add": lambda a, x, y: x + y,
    "Sub": lambda a, x, y: x - y,
    "Mul": lambda a, x, y: x * y,
    "Div": lambda a, x, y: x / y,
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
    "Expand": _expand,
    "Gather": _gather,
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
    "LayerNormalization": _layer_norm,
    "RMSNormalization": _rms_norm,
    "ReduceMean": _reduce(torch.mean),
    "ReduceSum": _reduce(torch.sum),
    "ReduceMax": _reduce(torch.amax),
    "ReduceMin": _reduce(torch.amin),
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
        """Freezes every exact zero of the prunable weights at zero; returns how many there are."""
        self.masks = {name: self.tensor(name).detach() != 0 for name in self.weights}
        return sum(int((~m).sum()) for m in self.masks.values())

    def forward(self, *inputs: torch.Tensor):
        values: dict[str, torch.Tensor | None] = {"": None}
        values.update(zip(self._inputs, (x.float() if x.is_floating_point() else x for x in inputs)))
        for name in self._keys:
            values[name] = self.tensor(name)
        for op, ins, outs, attrs, node in self._nodes:
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
        """The original model with the trained (masked) values in place of its initializers."""
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        for tensor in model.graph.initializer:
            if isinstance(self.stored(tensor.name), torch.nn.Parameter):
                array = self.tensor(tensor.name).detach().cpu().numpy()
                dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
                tensor.CopyFrom(numpy_helper.from_array(array.astype(dtype), tensor.name))
        return model


def load(path: str | os.PathLike) -> OnnxModule:
    return OnnxModule(onnx.load(os.fspath(path)))


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
