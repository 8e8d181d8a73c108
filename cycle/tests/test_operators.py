"""The ONNX executor operator by operator against ONNX Runtime, and its coverage of the operators onnx-minimize
reads and writes.

Run: python3 -m unittest discover -s cycle/tests -t cycle   (the coverage test needs $ONNX_MINIMIZE: an
onnx-minimize binary with the `operators` subcommand; it is skipped without one).
"""

import json
import os
import subprocess
import unittest

import numpy as np
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
    "emitted LayerNormalization": (concatenated_norm("LayerNormalization"), None),
    "emitted LayerNormalization without bias": (concatenated_norm("LayerNormalization", beta=False), None),
    "emitted RMSNormalization": (concatenated_norm("RMSNormalization"), None),
    "Split num_outputs uneven": (split(18, 3, 10, axis=1, num_outputs=3), None),
    "Split equal by outputs": (split(13, 3, 9, axis=1), None),
    "Flatten axis rank": (unary("Flatten", axis=3), None),
    "Flatten axis -1": (unary("Flatten", axis=-1), None),
    "Flatten axis 0": (unary("Flatten", axis=0), None),
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


class Coverage(unittest.TestCase):
    def test_executor_covers_every_operator_the_minimizer_reads_or_emits(self):
        binary = os.environ.get("ONNX_MINIMIZE")
        if not binary:
            self.skipTest("$ONNX_MINIMIZE is unset: set it to an onnx-minimize binary to list its operators")
        done = subprocess.run([binary, "operators"], capture_output=True, text=True, check=False)
        self.assertEqual(done.returncode, 0, f"{binary} operators: {done.stderr.strip()}")
        listed = json.loads(done.stdout)
        reads, emits = set(listed["reads"]), set(listed["emits"])
        self.assertTrue(reads and emits, f"{binary} operators listed nothing: {done.stdout!r}")
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
