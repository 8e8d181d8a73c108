"""The ONNX executor operator by operator against ONNX Runtime, and its coverage of the operators onnx-minimize
reads and writes.

Run: python3 -m unittest discover -s cycle/tests -t cycle   (needs the onnx-minimize package: `pip install .`).
"""

import unittest
from pathlib import Path

import numpy as np
import onnx_minimize
import torch
from onnx import TensorProto, helper, numpy_helper

from squeeze_release import OnnxModule, onnx_torch

# Operators onnx-minimize reads or emits that the executor deliberately does not run, each with the reason.
# Empty: every one of them trains. A model holding one of these is refused by OnnxModule with its name.
NOT_TRAINED: dict[str, str] = {}

# Run by the executor outside its op table (OnnxModule.forward evaluates Constant nodes itself).
OUTSIDE_THE_TABLE = {"Constant"}


def rms_reference(x, scale, axis=-1, epsilon=1e-5):
    """RMSNormalization (opset 23) in float64, straight from the spec's function body."""
    axes = tuple(range(axis % x.ndim, x.ndim))
    wide = x.astype(np.float64)
    return (wide / np.sqrt((wide * wide).mean(axis=axes, keepdims=True) + epsilon) * scale).astype(np.float32)


def model(nodes, inputs, outputs, opset, constants=None):
    """`inputs`: name -> shape (float32); `outputs`: names, float32, or name -> element type;
    `constants`: name -> array, as initializers."""
    outputs = outputs if isinstance(outputs, dict) else dict.fromkeys(outputs, TensorProto.FLOAT)
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs.items()],
        [helper.make_tensor_value_info(name, dtype, None) for name, dtype in outputs.items()],
        [numpy_helper.from_array(value, name) for name, value in (constants or {}).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def unary(op, shape=(2, 3, 4), opset=13, **attrs):
    return model([helper.make_node(op, ["x"], ["y"], **attrs)], {"x": list(shape)}, ["y"], opset)


def lp_pool(shape, opset=18, **attrs):
    return model([helper.make_node("LpPool", ["x"], ["y"], **attrs)], {"x": list(shape)}, ["y"], opset)


def concatenated_norm(op, width=6, removed=(0.5, -1.25), beta=True):
    """The form onnx-minimize writes for a LayerNorm or RMSNorm that lost channels (src/ops/norm.rs,
    `Norm::concatenated`): Slice(Norm(Concat(x, Expand(removed, Concat(Shape(x)[:-1], [r])))), :kept, axis -1)."""
    r = len(removed)
    rng = np.random.default_rng(7)
    constants = {
        "removed": np.array(removed, np.float32),
        "gamma": np.concatenate([rng.standard_normal(width), np.zeros(r)]).astype(np.float32),
        "removed_width": np.array([r], np.int64),
        "zero": np.array([0], np.int64),
        "minus_one": np.array([-1], np.int64),
        "kept_width": np.array([width], np.int64),
    }
    norm_inputs = ["full", "gamma"]
    if beta and op == "LayerNormalization":
        constants["beta"] = np.concatenate([rng.standard_normal(width), np.zeros(r)]).astype(np.float32)
        norm_inputs.append("beta")
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "minus_one"], ["leading"]),
        helper.make_node("Concat", ["leading", "removed_width"], ["removed_shape"], axis=0),
        helper.make_node("Expand", ["removed", "removed_shape"], ["removed_broadcast"]),
        helper.make_node("Concat", ["x", "removed_broadcast"], ["full"], axis=-1),
        helper.make_node(op, norm_inputs, ["normalized"], axis=-1, epsilon=1e-5),
        helper.make_node("Slice", ["normalized", "zero", "kept_width", "minus_one"], ["y"]),
    ]
    return model(nodes, {"x": [2, 3, width]}, ["y"], 23, constants)


def split(opset, parts, size, **attrs):
    outputs = [f"y{i}" for i in range(parts)]
    return model([helper.make_node("Split", ["x"], outputs, **attrs)], {"x": [2, size]}, outputs, opset)


def reduce(op, opset, axes=None, shape=(2, 3, 4), **attrs):
    """A reduction with `axes` an attribute before opset 18, an input from it."""
    inputs, constants = ["x"], {}
    if axes is not None and opset >= 18:
        inputs.append("axes")
        constants["axes"] = np.array(axes, np.int64)
    elif axes is not None:
        attrs["axes"] = axes
    return model([helper.make_node(op, inputs, ["y"], **attrs)], {"x": list(shape)}, ["y"], opset, constants)


def pad(opset, pads, shape=(2, 3, 4, 5), value=None, axes=None, **attrs):
    """Pad with its pads, constant and axes as inputs (opset 11 on; axes from 18), as attributes before 11."""
    if opset < 11:
        attrs["pads"] = pads
        if value is not None:
            attrs["value"] = value
        return model([helper.make_node("Pad", ["x"], ["y"], **attrs)], {"x": list(shape)}, ["y"], opset)
    inputs, constants = ["x", "pads"], {"pads": np.array(pads, np.int64)}
    if value is not None:
        constants["value"] = np.array(value, np.float32)
    if value is not None or axes is not None:
        inputs.append("value" if value is not None else "")
    if axes is not None:
        inputs.append("axes")
        constants["axes"] = np.array(axes, np.int64)
    return model([helper.make_node("Pad", inputs, ["y"], **attrs)], {"x": list(shape)}, ["y"], opset, constants)


def resize(shape, scales=None, sizes=None, roi=None, opset=13, **attrs):
    """Resize: X, scales in opset 10; X, roi, scales, sizes from 11 (roi and scales present, maybe empty, before 13)."""
    constants = {}
    if scales is not None:
        constants["scales"] = np.array(scales, np.float32)
    if opset == 10:
        inputs = ["x", "scales"]
    else:
        if roi is not None:
            constants["roi"] = np.array(roi, np.float32)
        elif opset < 13:
            constants["roi"] = np.zeros(0, np.float32)
        if scales is None and opset < 13:
            constants["scales"] = np.zeros(0, np.float32)
        inputs = ["x", "roi" if "roi" in constants else "", "scales" if "scales" in constants else ""]
        if sizes is not None:
            inputs.append("sizes")
            constants["sizes"] = np.array(sizes, np.int64)
    return model([helper.make_node("Resize", inputs, ["y"], **attrs)], {"x": list(shape)}, ["y"], opset, constants)


def upsample(shape, scales, opset=9, **attrs):
    """Upsample: the scales an input in opset 9, an attribute in opset 7."""
    if opset < 9:
        node = helper.make_node("Upsample", ["x"], ["y"], scales=[float(s) for s in scales], **attrs)
        return model([node], {"x": list(shape)}, ["y"], opset)
    node = helper.make_node("Upsample", ["x", "scales"], ["y"], **attrs)
    return model([node], {"x": list(shape)}, ["y"], opset, {"scales": np.array(scales, np.float32)})


# label -> (model, numpy reference or None). Every model runs through ONNX Runtime as well, unless ONNX Runtime
# cannot run it and a reference stands in.
CASES = {
    "Mish": (unary("Mish", opset=18), None),
    "Softsign": (unary("Softsign"), None),
    "Celu": (unary("Celu"), None),
    "Celu alpha": (unary("Celu", alpha=0.7), None),
    "ThresholdedRelu": (unary("ThresholdedRelu"), None),
    "ThresholdedRelu alpha": (unary("ThresholdedRelu", alpha=-0.3), None),
    "Selu": (unary("Selu"), None),
    "Selu alpha gamma": (unary("Selu", alpha=1.5, gamma=0.9), None),
    "Sign": (unary("Sign"), None),
    "Ceil": (unary("Ceil"), None),
    "Floor": (unary("Floor"), None),
    "Sin": (unary("Sin"), None),
    "Cos": (unary("Cos"), None),
    "InstanceNormalization": (
        model(
            [helper.make_node("InstanceNormalization", ["x", "scale", "bias"], ["y"], epsilon=1e-3)],
            {"x": [2, 3, 4, 5]},
            ["y"],
            13,
            {"scale": np.array([1.0, 0.0, -0.5], np.float32), "bias": np.array([0.1, 0.2, -0.3], np.float32)},
        ),
        None,
    ),
    "LpPool opset 11": (lp_pool([2, 3, 6, 6], opset=13, kernel_shape=[3, 3]), None),
    "LpPool p1 strides": (lp_pool([2, 3, 7, 7], kernel_shape=[3, 2], strides=[2, 2], p=1), None),
    "LpPool p3 pads": (lp_pool([2, 3, 6, 5], kernel_shape=[3, 3], pads=[1, 1, 1, 1], p=3), None),
    "LpPool asymmetric pads": (lp_pool([1, 2, 6, 6], kernel_shape=[2, 3], pads=[1, 0, 0, 2]), None),
    "LpPool ceil_mode": (lp_pool([1, 2, 7, 8], kernel_shape=[2, 3], strides=[2, 3], ceil_mode=1), None),
    "LpPool ceil_mode pads": (
        lp_pool([1, 2, 6, 6], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
        None,
    ),
    "LpPool ceil_mode, a last window all in the pads": (
        lp_pool([1, 2, 5, 5], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
        None,
    ),
    "LpPool dilations": (lp_pool([1, 2, 9, 9], kernel_shape=[2, 3], dilations=[2, 2]), None),
    "LpPool SAME_UPPER": (lp_pool([1, 2, 7, 6], kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_UPPER"), None),
    "LpPool SAME_LOWER": (lp_pool([1, 2, 7, 6], kernel_shape=[2, 2], strides=[2, 1], auto_pad="SAME_LOWER"), None),
    "LpPool VALID": (lp_pool([1, 2, 7, 6], kernel_shape=[3, 3], strides=[2, 2], auto_pad="VALID"), None),
    "LpPool 1d": (lp_pool([2, 3, 9], kernel_shape=[3], strides=[2], p=1), None),
    "LpPool 3d": (lp_pool([1, 2, 4, 5, 4], kernel_shape=[2, 2, 2], pads=[0, 1, 0, 0, 1, 0]), None),
    "GlobalLpPool": (unary("GlobalLpPool", shape=(2, 3, 4, 5)), None),
    "GlobalLpPool p1": (unary("GlobalLpPool", shape=(2, 3, 4, 5), p=1), None),
    "GlobalLpPool p3 1d": (unary("GlobalLpPool", shape=(2, 3, 7), p=3), None),
    "RMSNormalization": (
        model(
            [helper.make_node("RMSNormalization", ["x", "scale"], ["y"])],
            {"x": [2, 3, 4], "scale": [4]},
            ["y"],
            23,
        ),
        lambda x, scale: rms_reference(x, scale),
    ),
    "RMSNormalization axis epsilon": (
        model(
            [helper.make_node("RMSNormalization", ["x", "scale"], ["y"], axis=1, epsilon=1e-2)],
            {"x": [2, 3, 4], "scale": [3, 4]},
            ["y"],
            23,
        ),
        lambda x, scale: rms_reference(x, scale, axis=1, epsilon=1e-2),
    ),
    "Expand": (
        model(
            [helper.make_node("Expand", ["x", "shape"], ["y"])],
            {"x": [3, 1]},
            ["y"],
            13,
            {"shape": np.array([2, 1, 4], np.int64)},
        ),
        None,
    ),
    "Expand to a shorter shape of ones": (
        model(
            [helper.make_node("Expand", ["x", "shape"], ["y"])],
            {"x": [2, 1, 3]},
            ["y"],
            13,
            {"shape": np.array([4, 1], np.int64)},
        ),
        None,
    ),
    "Shape, Slice and Concat of shapes": (
        model(
            [
                helper.make_node("Shape", ["x"], ["shape"], start=1),
                helper.make_node("Slice", ["shape", "zero", "minus_one"], ["head"]),
                helper.make_node("Shape", ["x"], ["tail"], start=-1),
                helper.make_node("Concat", ["tail", "head", "two"], ["y"], axis=0),
            ],
            {"x": [2, 3, 4, 5]},
            {"y": TensorProto.INT64},
            15,
            {"zero": np.array([0], np.int64), "minus_one": np.array([-1], np.int64), "two": np.array([2], np.int64)},
        ),
        None,
    ),
    "Attention with grouped heads and an additive mask": (
        model(
            [helper.make_node("Attention", ["q", "k", "v", "m"], ["y"], scale=0.4)],
            {"q": [2, 4, 3, 6], "k": [2, 2, 5, 6], "v": [2, 2, 5, 4], "m": [3, 5]},
            ["y"],
            23,
        ),
        None,
    ),
    "Attention causal with the default scale": (
        model(
            [helper.make_node("Attention", ["q", "k", "v"], ["y"], is_causal=1)],
            {"q": [1, 2, 4, 6], "k": [1, 2, 4, 6], "v": [1, 2, 4, 6]},
            ["y"],
            23,
        ),
        None,
    ),
    "Attention with 3-D inputs and grouped heads": (
        model(
            [helper.make_node("Attention", ["q", "k", "v"], ["y"], q_num_heads=4, kv_num_heads=2)],
            {"q": [2, 3, 8], "k": [2, 5, 4], "v": [2, 5, 6]},
            ["y"],
            23,
        ),
        None,
    ),
    "RotaryEmbedding 3-D, halves, partial": (
        model(
            [helper.make_node("RotaryEmbedding", ["x", "c", "s"], ["y"], num_heads=2, rotary_embedding_dim=4)],
            {"x": [2, 3, 12], "c": [2, 3, 2], "s": [2, 3, 2]},
            ["y"],
            23,
        ),
        None,
    ),
    "RotaryEmbedding 4-D, interleaved, positions": (
        model(
            [helper.make_node("RotaryEmbedding", ["x", "c", "s", "p"], ["y"], interleaved=1)],
            {"x": [1, 2, 3, 4], "c": [5, 2], "s": [5, 2]},
            ["y"],
            23,
            {"p": np.array([[4, 0, 2]], np.int64)},
        ),
        None,
    ),
    "Tile": (
        model(
            [helper.make_node("Tile", ["x", "r"], ["y"])],
            {"x": [2, 3]},
            ["y"],
            13,
            {"r": np.array([2, 1], np.int64)},
        ),
        None,
    ),
    "emitted LayerNormalization": (concatenated_norm("LayerNormalization"), None),
    "emitted LayerNormalization without bias": (concatenated_norm("LayerNormalization", beta=False), None),
    "emitted RMSNormalization": (concatenated_norm("RMSNormalization"), None),
    "Split num_outputs uneven": (split(18, 3, 10, axis=1, num_outputs=3), None),
    "Split equal by outputs": (split(13, 3, 9, axis=1), None),
    "Flatten axis rank": (unary("Flatten", axis=3), None),
    "Flatten axis -1": (unary("Flatten", axis=-1), None),
    "Flatten axis 0": (unary("Flatten", axis=0), None),
    "Einsum as a product with a matrix": (
        model(
            [helper.make_node("Einsum", ["x", "w"], ["y"], equation="bti,ji->btj")],
            {"x": [2, 3, 4]},
            ["y"],
            13,
            {"w": np.arange(20, dtype=np.float32).reshape(5, 4) / 10},
        ),
        None,
    ),
    "GatherND of spatial positions": (
        model(
            [helper.make_node("GatherND", ["x", "i"], ["y"])],
            {"x": [3, 4, 2, 5]},
            ["y"],
            13,
            {"i": np.array([[[0, 1], [2, 3]], [[-1, 0], [1, -2]]], np.int64)},
        ),
        None,
    ),
    "Gather negative indices": (
        model(
            [helper.make_node("Gather", ["x", "i"], ["y"], axis=1)],
            {"x": [2, 5, 3]},
            ["y"],
            13,
            {"i": np.array([[-1, 0], [2, -5]], np.int64)},
        ),
        None,
    ),
}


REDUCTIONS = {
    f"{op} {label}": (reduce(op, opset, axes, **attrs), None)
    for op in ("ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSumExp", "ReduceProd")
    for label, opset, axes, attrs in (
        ("opset 13 axes attribute", 13, [1], {"keepdims": 0}),
        ("opset 13 every axis", 13, None, {}),
        ("opset 18 axes input", 18, [0, 2], {}),
        ("opset 18 negative axes, keepdims 0", 18, [-1, 0], {"keepdims": 0}),
        ("opset 18 every axis, keepdims 0", 18, None, {"keepdims": 0}),
        ("opset 18 noop_with_empty_axes", 18, None, {"noop_with_empty_axes": 1}),
        ("opset 18 empty axes input", 18, [], {"keepdims": 0}),
    )
}

PADS = {
    "Pad constant": (pad(13, [0, 0, 1, 2, 0, 0, 3, 1]), None),
    "Pad constant value input": (pad(13, [1, 0, 2, 0, 0, 1, 0, 3], value=1.5), None),
    "Pad constant opset 7 attributes": (pad(7, [0, 1, 1, 0, 0, 0, 2, 2], value=-2.0), None),
    "Pad constant negative pads": (pad(13, [0, -1, 2, -2, -1, 0, -1, 1], value=0.5), None),
    "Pad constant axes input": (pad(18, [2, -1, 1, 3], value=3.0, axes=[1, -1]), None),
    "Pad reflect": (pad(13, [0, 0, 2, 3, 0, 0, 3, 1], mode="reflect"), None),
    "Pad reflect every axis of a 3-D tensor": (pad(13, [1, 2, 3, 1, 1, 2], shape=(3, 4, 5), mode="reflect"), None),
    "Pad reflect opset 7 attributes": (pad(7, [0, 0, 1, 2, 0, 0, 2, 1], mode="reflect"), None),
    "Pad reflect negative pads": (pad(13, [0, 1, -1, 2, 0, -1, 2, -2], mode="reflect"), None),
    "Pad reflect axes input": (pad(18, [3, 1, 2, 2], axes=[-2, 1], mode="reflect"), None),
    "Pad edge": (pad(13, [0, 0, 3, 1, 0, 0, 2, 4], mode="edge"), None),
    "Pad edge every axis of a 5-D tensor": (
        pad(13, [1, 0, 2, 1, 1, 0, 1, 0, 2, 1], shape=(1, 2, 3, 2, 3), mode="edge"),
        None,
    ),
    "Pad edge opset 7 attributes": (pad(7, [1, 0, 0, 2, 0, 2, 1, 0], mode="edge"), None),
    "Pad edge negative pads": (pad(13, [-1, 2, 0, -2, 0, -1, 3, 1], mode="edge"), None),
    "Pad edge axes input": (pad(18, [2, 0, 1, 3], axes=[0, 3], mode="edge"), None),
    "Pad wrap": (pad(19, [0, 0, 2, 3, 0, 0, 1, 4], mode="wrap"), None),
    "Pad wrap every axis of a 3-D tensor": (pad(19, [1, 2, 3, 1, 0, 2], shape=(3, 4, 5), mode="wrap"), None),
    "Pad wrap negative pads": (pad(19, [0, 1, -1, 2, 0, -1, 2, -2], mode="wrap"), None),
    "Pad wrap axes input": (pad(19, [1, 3, 2, 0], axes=[2, -1], mode="wrap"), None),
    "Pad 1-D": (pad(13, [2, 3], shape=(4,), mode="reflect"), None),
}

RESIZES = {
    "Resize nearest x2": (resize([1, 2, 4, 5], scales=[1, 1, 2, 2]), None),
    "Resize nearest x2 asymmetric floor": (
        resize([1, 2, 4, 5], scales=[1, 1, 2, 2], coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        None,
    ),
    **{
        f"Resize nearest x1.5 x1.7 {coordinates} {rounding}": (
            resize(
                [1, 2, 4, 5],
                scales=[1, 1, 1.5, 1.7],
                coordinate_transformation_mode=coordinates,
                nearest_mode=rounding,
            ),
            None,
        )
        for coordinates in ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel")
        for rounding in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
    },
    "Resize nearest down x0.6 x0.5": (resize([1, 2, 5, 8], scales=[1, 1, 0.6, 0.5]), None),
    "Resize nearest sizes": (resize([1, 2, 4, 5], sizes=[1, 2, 7, 3], nearest_mode="round_prefer_ceil"), None),
    "Resize nearest 3-D every axis": (resize([2, 3, 4], scales=[1.5, 2, 0.75]), None),
    "Resize nearest tf_half_pixel_for_nn opset 11": (
        resize([1, 2, 4, 5], scales=[1, 1, 1.5, 2.5], opset=11, coordinate_transformation_mode="tf_half_pixel_for_nn"),
        None,
    ),
    "Resize nearest tf_crop_and_resize": (
        resize(
            [1, 2, 4, 5],
            sizes=[1, 2, 5, 6],
            roi=[0, 0, -0.2, 0.1, 1, 1, 0.9, 1.3],
            coordinate_transformation_mode="tf_crop_and_resize",
            extrapolation_value=-7.0,
        ),
        None,
    ),
    **{
        f"Resize linear x2 {coordinates}": (
            resize([1, 2, 4, 5], scales=[1, 1, 2, 2], mode="linear", coordinate_transformation_mode=coordinates),
            None,
        )
        for coordinates in ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel")
    },
    **{
        f"Resize linear x1.5 x2.3 {coordinates}": (
            resize([1, 2, 4, 5], scales=[1, 1, 1.5, 2.3], mode="linear", coordinate_transformation_mode=coordinates),
            None,
        )
        for coordinates in ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel")
    },
    "Resize linear down x0.6 x0.5": (resize([1, 2, 5, 8], scales=[1, 1, 0.6, 0.5], mode="linear"), None),
    "Resize linear sizes": (resize([1, 2, 4, 5], sizes=[1, 2, 7, 3], mode="linear"), None),
    "Resize linear sizes to one": (
        resize([1, 2, 4, 5], sizes=[1, 2, 1, 9], mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
        None,
    ),
    "Resize linear opset 11 with empty roi": (
        resize([1, 2, 4, 5], scales=[1, 1, 2, 1.5], opset=11, mode="linear"),
        None,
    ),
    "Resize linear 2-D": (resize([3, 4], scales=[2, 1.5], mode="linear"), None),
    "Resize trilinear": (resize([1, 1, 3, 4, 5], scales=[1, 1, 2, 1.5, 0.8], mode="linear"), None),
    "Resize linear tf_crop_and_resize": (
        resize(
            [1, 2, 4, 5],
            sizes=[1, 2, 6, 4],
            roi=[0, 0, 0.1, -0.3, 1, 1, 0.8, 1.2],
            mode="linear",
            coordinate_transformation_mode="tf_crop_and_resize",
            extrapolation_value=2.5,
        ),
        None,
    ),
    "Resize linear axes opset 18": (resize([1, 2, 4, 5], scales=[2, 1.5], opset=18, mode="linear", axes=[2, 3]), None),
    "Resize nearest negative axes opset 18": (resize([1, 2, 4, 5], sizes=[3, 9], opset=18, axes=[-1, 2]), None),
    "Resize linear not_larger": (
        resize([1, 2, 4, 5], sizes=[7, 7], opset=18, mode="linear", axes=[2, 3], keep_aspect_ratio_policy="not_larger"),
        None,
    ),
    "Resize nearest not_smaller": (
        resize([1, 2, 4, 5], sizes=[7, 7], opset=18, axes=[2, 3], keep_aspect_ratio_policy="not_smaller"),
        None,
    ),
    "Resize linear antialias down": (
        resize([1, 2, 9, 10], scales=[1, 1, 0.5, 0.6], opset=18, mode="linear", antialias=1),
        None,
    ),
    "Resize linear antialias up": (
        resize([1, 2, 4, 5], scales=[1, 1, 2, 1.5], opset=18, mode="linear", antialias=1),
        None,
    ),
    "Resize linear half_pixel_symmetric": (
        resize(
            [1, 2, 4, 5],
            scales=[1, 1, 1.5, 2.3],
            opset=19,
            mode="linear",
            coordinate_transformation_mode="half_pixel_symmetric",
        ),
        None,
    ),
    "Resize cubic x2": (resize([1, 2, 4, 5], scales=[1, 1, 2, 2], mode="cubic"), None),
    "Resize cubic x1.5 x2.3 align_corners": (
        resize([1, 2, 4, 5], scales=[1, 1, 1.5, 2.3], mode="cubic", coordinate_transformation_mode="align_corners"),
        None,
    ),
    "Resize cubic asymmetric a -0.5": (
        resize(
            [1, 2, 4, 5],
            scales=[1, 1, 2, 1.5],
            mode="cubic",
            coordinate_transformation_mode="asymmetric",
            cubic_coeff_a=-0.5,
        ),
        None,
    ),
    "Resize cubic exclude_outside": (
        resize([1, 2, 4, 5], scales=[1, 1, 1.7, 2], mode="cubic", exclude_outside=1),
        None,
    ),
    "Resize cubic down sizes": (resize([1, 2, 9, 10], sizes=[1, 2, 4, 6], mode="cubic"), None),
    "Resize cubic antialias down": (
        resize([1, 2, 9, 10], scales=[1, 1, 0.5, 0.6], opset=18, mode="cubic", antialias=1),
        None,
    ),
    "Resize cubic antialias down exclude_outside": (
        resize([1, 2, 9, 10], scales=[1, 1, 0.5, 0.6], opset=18, mode="cubic", antialias=1, exclude_outside=1),
        None,
    ),
    "Resize opset 10 nearest": (resize([1, 2, 4, 5], scales=[1, 1, 2, 3], opset=10), None),
    "Resize opset 10 nearest down": (resize([1, 2, 5, 8], scales=[1, 1, 0.6, 0.5], opset=10), None),
    "Resize opset 10 linear": (resize([1, 2, 4, 5], scales=[1, 1, 1.5, 2], opset=10, mode="linear"), None),
    "Upsample opset 9 nearest x2": (upsample([1, 2, 4, 5], [1, 1, 2, 2]), None),
    "Upsample opset 9 nearest x2 x3": (upsample([1, 2, 4, 5], [1, 1, 2, 3]), None),
    "Upsample opset 9 nearest x1.5": (upsample([1, 2, 4, 5], [1, 1, 1.5, 2.5]), None),
    "Upsample opset 9 linear": (upsample([1, 2, 4, 5], [1, 1, 2, 1.5], mode="linear"), None),
    "Upsample opset 7 nearest": (upsample([1, 2, 4, 5], [1, 1, 3, 2], opset=7), None),
    "Upsample opset 7 linear": (upsample([1, 2, 4, 5], [1, 1, 2, 2], opset=7, mode="linear"), None),
}

CASES.update(REDUCTIONS)
CASES.update(PADS)
CASES.update(RESIZES)


class Operators(unittest.TestCase):
    def test_each_operator_computes_what_onnx_runtime_computes(self):
        import onnxruntime

        rng = np.random.default_rng(0)
        for label, (onnx_model, reference) in CASES.items():
            with self.subTest(label):
                feeds = {
                    i.name: (2 * rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim])).astype(
                        np.float32
                    )
                    for i in onnx_model.graph.input
                }
                module = OnnxModule(onnx_model)
                with torch.no_grad():
                    got = module(*(torch.from_numpy(v) for v in feeds.values()))
                got = [t.numpy() for t in (got if isinstance(got, tuple) else (got,))]
                wants = []
                options = onnxruntime.SessionOptions()
                options.log_severity_level = (
                    3  # ONNX shape inference and ONNX Runtime disagree on some ceil_mode shapes
                )
                try:
                    session = onnxruntime.InferenceSession(
                        onnx_model.SerializeToString(), options, providers=["CPUExecutionProvider"]
                    )
                    wants.append(session.run(None, feeds))
                except Exception:
                    if reference is None:
                        raise
                if reference is not None:
                    wants.append([reference(*feeds.values())])
                for want in wants:
                    self.assertEqual(len(got), len(want))
                    for g, w in zip(got, want):
                        self.assertEqual(g.shape, w.shape)
                        self.assertEqual(g.dtype, w.dtype)
                        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=label)

    def test_lp_pools_of_all_zero_windows_have_finite_gradients(self):
        for onnx_model, shape in (
            (lp_pool([1, 2, 5, 5], kernel_shape=[2, 2], pads=[1, 1, 1, 1]), (1, 2, 5, 5)),
            (unary("GlobalLpPool", shape=(1, 2, 3, 3)), (1, 2, 3, 3)),
        ):
            x = torch.zeros(shape)
            x[0, 0, 1, 1] = 0.5  # some windows of channel 0 are not all zeros; every one of channel 1 is
            x.requires_grad_(True)
            y = OnnxModule(onnx_model)(x)
            y.sum().backward()
            self.assertTrue(torch.isfinite(x.grad).all(), onnx_model.graph.node[0].op_type)
            self.assertTrue((y[0, 1] == 0).all(), "an all-zero window's norm is exactly zero")

    def test_what_it_cannot_run_as_onnx_means_it_refuses(self):
        refused = {
            "Pad mode": pad(13, [0, 0, 1, 1, 0, 0, 1, 1], mode="mirror"),
            "Resize mode": resize([1, 2, 4, 5], scales=[1, 1, 2, 2], mode="bilinear"),
            "Upsample cubic": upsample([1, 2, 4, 5], [1, 1, 2, 2], mode="cubic"),
            "Resize nearest antialias": resize([1, 2, 4, 5], scales=[1, 1, 0.5, 0.5], opset=18, antialias=1),
            # ONNX Runtime copies an input resized to its own shape; the spec resamples it
            "Resize onto its own shape": resize([1, 2, 2, 3], scales=[1, 1, 1, 1.25]),
            # the spec sizes the output by the roi too, ONNX Runtime does not
            "Resize tf_crop_and_resize scales": resize(
                [1, 2, 4, 5],
                scales=[1, 1, 2, 2],
                roi=[0, 0, 0.2, 0, 1, 1, 0.8, 1],
                coordinate_transformation_mode="tf_crop_and_resize",
            ),
        }
        for label, onnx_model in refused.items():
            with self.subTest(label):
                shape = [d.dim_value for d in onnx_model.graph.input[0].type.tensor_type.shape.dim]
                with self.assertRaises(onnx_torch.UnsupportedModel):
                    OnnxModule(onnx_model)(torch.zeros(shape))

    def test_resampling_passes_every_gradient_back(self):
        """Each output of Pad (edge, reflect, wrap) reads one input and each of Resize (linear, cubic) a mix with
        weights that sum to 1: the gradient of the output's sum sums to its size."""
        for label, onnx_model in {
            "Pad reflect": PADS["Pad reflect negative pads"][0],
            "Pad edge": PADS["Pad edge every axis of a 5-D tensor"][0],
            "Pad wrap": PADS["Pad wrap"][0],
            "Resize linear": RESIZES["Resize linear x1.5 x2.3 half_pixel"][0],
            "Resize cubic": RESIZES["Resize cubic x1.5 x2.3 align_corners"][0],
            "Resize linear antialias": RESIZES["Resize linear antialias down"][0],
        }.items():
            with self.subTest(label):
                shape = [d.dim_value for d in onnx_model.graph.input[0].type.tensor_type.shape.dim]
                x = torch.randn(shape, requires_grad=True)
                y = OnnxModule(onnx_model)(x)
                y.sum().backward()
                self.assertAlmostEqual(float(x.grad.sum()), y.numel(), places=3)

    def test_an_l2_norm_of_zeros_has_a_finite_gradient(self):
        x = torch.zeros(2, 3, 4, requires_grad=True)
        OnnxModule(reduce("ReduceL2", 18, [1]))(x).sum().backward()
        self.assertTrue(torch.isfinite(x.grad).all())

    def test_an_rms_norm_scale_trains(self):
        onnx_model = model(
            [helper.make_node("RMSNormalization", ["x", "scale"], ["y"])],
            {"x": [2, 4]},
            ["y"],
            23,
            {"scale": np.ones(4, np.float32)},
        )
        module = OnnxModule(onnx_model)
        self.assertIsInstance(module.stored("scale"), torch.nn.Parameter)


class Quantized(unittest.TestCase):
    def test_quantized_fixtures_run_as_their_float_semantics_define(self):
        """ONNX Runtime's QDQ fixtures (fixtures/quantized), against ONNX Runtime without graph optimizations: the
        QDQ float semantics, which its fused integer kernels only approximate."""
        import onnxruntime

        fixtures = sorted((Path(__file__).resolve().parents[2] / "fixtures" / "quantized").glob("*.onnx"))
        self.assertTrue(fixtures)
        rng = np.random.default_rng(0)
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        for path in fixtures:
            session = onnxruntime.InferenceSession(str(path), options)
            feeds = {}
            for i in session.get_inputs():
                shape = [d if isinstance(d, int) else 2 for d in i.shape]
                if i.type == "tensor(int64)":
                    feeds[i.name] = rng.integers(0, 2, shape)
                else:
                    feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
            want = session.run(None, feeds)[0]
            with torch.no_grad():
                got = onnx_torch.load(path)(*(torch.from_numpy(v) for v in feeds.values())).numpy()
            self.assertLess(np.abs(got - want).max() / (np.abs(want).max() + 1e-6), 1e-5, path.name)


class Coverage(unittest.TestCase):
    def test_executor_covers_every_operator_the_minimizer_reads_or_emits(self):
        listed = onnx_minimize.operators()
        reads, emits = set(listed["reads"]), set(listed["emits"])
        self.assertTrue(reads and emits, f"onnx_minimize.operators() listed nothing: {listed}")
        runs = set(onnx_torch.OPS) | OUTSIDE_THE_TABLE
        for op in NOT_TRAINED:
            self.assertNotIn(op, runs, f"{op} runs now: take it off NOT_TRAINED")
        self.assertEqual(
            sorted(reads - runs - set(NOT_TRAINED)), [], "onnx-minimize accepts these; the executor cannot run them"
        )
        self.assertEqual(
            sorted(emits - runs - set(NOT_TRAINED)), [], "onnx-minimize writes these; the executor cannot run them"
        )


if __name__ == "__main__":
    unittest.main()
