"""The cycle driver at toy scale: the ONNX executor against PyTorch, masks, and a whole run with resume.

Run: python3 -m unittest discover -s cycle/tests -t cycle   (needs torch, onnx, matplotlib and the onnx-minimize
package: `pip install .` at the repository's root).
"""

import json
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import torch

from squeeze_release import Config, OnnxModule, Run, UnsupportedModel, onnx_torch, tool, vision
from squeeze_release.mnist import accuracy, export, fit

REPO = Path(__file__).resolve().parents[2]


def toy_data(seed: int = 0, n: int = 768):
    """Four classes separable on the first 6 of 16 features; the other 10 are noise pruning can drop."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    centres = torch.randn(4, 6, generator=g) * 2.5
    x = torch.cat([centres[y] + torch.randn(n, 6, generator=g), 0.3 * torch.randn(n, 10, generator=g)], 1)
    return (x[: n // 2], y[: n // 2]), (x[n // 2 :], y[n // 2 :])


def toy_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 24), torch.nn.ReLU(), torch.nn.Linear(24, 12), torch.nn.ReLU(), torch.nn.Linear(12, 4)
    )


class Executor(unittest.TestCase):
    def test_mlp_and_cnn_compute_what_pytorch_computes(self):
        torch.manual_seed(1)
        cnn = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 8, 3, padding=1, groups=8),
            torch.nn.GELU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.LayerNorm(8),
            torch.nn.Linear(8, 5),
            torch.nn.Softmax(-1),
        )
        with torch.no_grad():
            cnn[1].running_mean.uniform_(-1, 1)
            cnn[1].running_var.uniform_(0.5, 2)
        with tempfile.TemporaryDirectory() as tmp:
            for model, x in ((toy_mlp(), torch.randn(5, 16)), (cnn, torch.randn(2, 3, 8, 8))):
                module = onnx_torch.load(export(model, Path(tmp) / "m.onnx", x))
                with torch.no_grad():
                    torch.testing.assert_close(module(x), model.eval()(x), rtol=1e-5, atol=1e-6)
                self.assertTrue(module.weights, "the linear layers' weights are prunable parameters")

    def test_every_fixture_runs_as_onnx_runtime_runs_it_before_and_after_minimizing(self):
        import onnxruntime

        # The transformer exports (fixtures/attention) included: their masks' Where, Equal, Range, Trilu...
        # Quantized models (fixtures/quantized) are not: the cycle trains float models (quantize
        # after it), and ONNX Runtime runs them in fused integer kernels, which only approximate
        # the QDQ float semantics the executor computes (test_operators.Quantized checks those).
        fixtures = sorted(p for p in (REPO / "fixtures").rglob("*.onnx") if "quantized" not in p.parts)
        self.assertGreater(len(fixtures), 30)
        rng = np.random.default_rng(0)
        with tempfile.TemporaryDirectory() as tmp:
            for fixture in fixtures:
                small = Path(tmp) / "small.onnx"
                tool.minimize(fixture, small, Config())
                for path in (fixture, small):
                    try:
                        session = onnxruntime.InferenceSession(str(path))
                    except onnxruntime.capi.onnxruntime_pybind11_state.NotImplemented:
                        continue  # ONNX Runtime has no float64 Erf
                    feeds = {}
                    for i in session.get_inputs():
                        shape = [d if isinstance(d, int) else 2 for d in i.shape]
                        if i.type == "tensor(int64)":  # token ids: any valid row of the tables
                            feeds[i.name] = rng.integers(0, 2, shape)
                            continue
                        dtype = {"tensor(float16)": np.float16, "tensor(double)": np.float64}.get(i.type, np.float32)
                        feeds[i.name] = rng.standard_normal(shape).astype(dtype)
                    want = session.run(None, feeds)[0].astype(np.float32)
                    module = onnx_torch.load(path)
                    self.assertTrue(module.weights, f"{path.name} from {fixture}: its layers' weights train")
                    with torch.no_grad():
                        got = module(*(torch.from_numpy(v) for v in feeds.values())).numpy()
                    scale = np.abs(want).max() + 1e-6
                    tol = 1e-2 if np.float16 in (v.dtype for v in feeds.values()) else 1e-4
                    self.assertLess(np.abs(got - want).max() / scale, tol, f"{path.name} from {fixture}")

    def test_the_layernorm_stream_recipes_run_as_onnx_runtime_runs_them_pruned_and_minimized(self):
        """The recipes' ConvNeXt and ViT (dynamo exports: depthwise convs, channels-last LayerNorms, layer
        scales, attention as SDPA lowers, a class token and a position table), pruned space-coupled until
        whole stream channels empty, then minimized with either CompensatedLayerNorm form: the executor
        computes what ONNX Runtime computes on each, and the minimized models what the pruned one does."""
        import onnxruntime

        def weaken(model: torch.nn.Module, width: int, channels: range) -> None:
            """What group lasso does to a stream channel the data does not need: every layer's rows and
            columns of it (the first stage's, for the ConvNeXt) become small."""
            for m in model.modules():
                if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                    if m.weight.shape[0] == width:
                        m.weight[channels] *= 0.01
                    if m.weight.shape[1] == width:
                        m.weight[:, channels] *= 0.01

        x = torch.randn(3, 784)
        run = lambda path: onnxruntime.InferenceSession(str(path)).run(None, {"input": x.numpy()})[0]
        for arch, cls in vision.MODELS.items():
            with self.subTest(arch), tempfile.TemporaryDirectory() as tmp:
                torch.manual_seed(0)
                model = cls()
                with torch.no_grad():  # trained-like: no two norms equal (the exporter would share them)
                    for p in model.parameters():
                        p.add_(0.05 * torch.randn_like(p))
                    weaken(
                        model,
                        model.features[0].out_channels if arch == "convnext" else model.embed.out_channels,
                        range(4),
                    )
                dense, pruned = vision.export(model, Path(tmp) / "dense.onnx"), Path(tmp) / "pruned.onnx"
                config = Config(criterion="space-coupled", coupling=2.0)
                report = tool.prune(dense, pruned, 0.99, config)
                self.assertTrue(report["silenced"], "stream channels emptied, with their norms and embeddings")
                reference = run(pruned)
                for form in ("ops", "concat"):
                    small = Path(tmp) / f"{form}.onnx"
                    minimized = tool.minimize(pruned, small, Config(compensated_layernorm=form))
                    self.assertLess(minimized["after"]["params"], minimized["before"]["params"])
                    stream = minimized["layers"][0]  # the stem's or the patch embedding's channels
                    self.assertLess(stream["outputs_after"], stream["outputs_before"], f"{arch} {form}")
                    np.testing.assert_allclose(run(small), reference, rtol=1e-4, atol=1e-5)
                    for path in (dense, pruned, small):
                        with torch.no_grad():
                            got = onnx_torch.load(path)(x).numpy()
                        np.testing.assert_allclose(got, run(path), rtol=1e-4, atol=1e-5, err_msg=f"{arch} {path.name}")

    def test_writing_back_changes_only_values(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = export(toy_mlp(), Path(tmp) / "m.onnx", torch.randn(1, 16))
            module = onnx_torch.load(path)
            with torch.no_grad():
                for p in module.parameters():
                    p.add_(1.0)
            before, after = onnx.load(str(path)), module.to_onnx()
            self.assertEqual(before.graph.node, after.graph.node)
            self.assertEqual(before.opset_import, after.opset_import)
            self.assertEqual([t.name for t in before.graph.initializer], [t.name for t in after.graph.initializer])
            self.assertNotEqual(before.graph.initializer, after.graph.initializer)

    def test_weights_in_constant_nodes_train_and_write_back(self):
        path = REPO / "fixtures" / "frameworks" / "tf_style_nhwc.onnx"
        module = onnx_torch.load(path)
        self.assertEqual(sorted(module.weights), ["dense", "w"])
        with torch.no_grad():
            for p in module.parameters():
                p.add_(1.0)
        before, after = onnx.load(str(path)), module.to_onnx()
        value = {n.output[0]: n.attribute[0].t for n in after.graph.node if n.op_type == "Constant"}
        original = {n.output[0]: n.attribute[0].t for n in before.graph.node if n.op_type == "Constant"}
        moved = onnx.numpy_helper.to_array(value["w"]) - onnx.numpy_helper.to_array(original["w"])
        np.testing.assert_allclose(moved, 1.0)
        self.assertEqual([n.op_type for n in before.graph.node], [n.op_type for n in after.graph.node])

    def test_unknown_ops_are_named(self):
        node = onnx.helper.make_node("NonMaxSuppression", ["x"], ["y"], name="nms")
        graph = onnx.helper.make_graph(
            [node],
            "g",
            [onnx.helper.make_tensor_value_info("x", 1, [1])],
            [onnx.helper.make_tensor_value_info("y", 1, [1])],
        )
        with self.assertRaisesRegex(UnsupportedModel, "'nms'.*NonMaxSuppression"):
            OnnxModule(onnx.helper.make_model(graph))

    def test_masked_zeros_stay_exactly_zero_while_the_rest_trains(self):
        train, _ = toy_data()
        with tempfile.TemporaryDirectory() as tmp:
            module = onnx_torch.load(export(toy_mlp(), Path(tmp) / "m.onnx", torch.randn(1, 16)))
            name = module.weights[0]
            with torch.no_grad():
                module.stored(name)[:, ::2] = 0.0
            before = module.tensor(name).detach().clone()
            frozen = module.mask_zeros()
            fit(module, train, 1.0, seed=0, lr=1e-2)
            after = module.tensor(name).detach()
            self.assertEqual(frozen, int((before == 0).sum()))
            self.assertTrue(torch.equal(after[before == 0], torch.zeros(frozen)))
            self.assertFalse(torch.equal(after[before != 0], before[before != 0]))
            written = onnx.numpy_helper.to_array(next(t for t in module.to_onnx().graph.initializer if t.name == name))
            self.assertEqual(int((written == 0).sum()), frozen, "the written model carries the zeros")


class Interrupted(Exception):
    pass


class Cycle(unittest.TestCase):
    @staticmethod
    def dense(path: Path, epochs: float) -> Path:
        """The toy MLP trained for `epochs` and exported to `path`: where every cycle test starts."""
        train_set, _ = toy_data()
        model = toy_mlp()
        fit(model, train_set, epochs, seed=0, lr=3e-3, batch=32)
        return export(model, path, torch.randn(1, 16))

    def run_cycle(self, folder: Path, dense: Path, stop_at_call: int | None = None) -> dict:
        train_set, valid = toy_data()
        calls = []

        def train(module, epochs, seed):
            calls.append(seed)
            if stop_at_call is not None and len(calls) == stop_at_call:
                raise Interrupted()
            fit(module, train_set, epochs, seed, lr=3e-3, batch=32)

        config = Config(
            prune_fraction=0.6,
            coupling=1.0,
            finetune_epochs=1.0,
            train_epochs=1.0,
            final_epochs=1.0,
            tolerance=5.0,
            max_cycles=3,
            seed=3,
        )
        return Run(dense, folder, train, lambda m: accuracy(m, valid), config=config).run()

    def test_a_cycle_onnx_minimize_cannot_verify_is_rejected_and_the_run_goes_on(self):
        real = tool.minimize
        calls = []

        def failing_second_cycle(src, dst, *args):
            calls.append(Path(src).name)
            if Path(src).name == "cycle02.finetuned.onnx":
                raise tool.ToolError("onnx-minimize exited with 4: error: tract cannot run the model")
            return real(src, dst, *args)

        with tempfile.TemporaryDirectory() as tmp, mock.patch.object(tool, "minimize", failing_second_cycle):
            dense = self.dense(Path(tmp) / "dense.onnx", 2.0)
            report = self.run_cycle(Path(tmp) / "run", dense)
        second = report["cycles"][1]
        self.assertFalse(second["accepted"])
        self.assertIn("tract cannot run", second["error"])
        self.assertEqual(len(report["cycles"]), 3, "the run went on with a gentler cycle")
        self.assertLess(report["cycles"][2]["prune_fraction"], second["prune_fraction"])

    def test_a_model_with_external_data_runs_through_the_cycle(self):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            inline = onnx.load(str(self.dense(tmp / "inline.onnx", 2.0)))
            onnx.save(
                inline, str(tmp / "ext.onnx"), save_as_external_data=True, location="ext.weights", size_threshold=0
            )
            self.assertTrue((tmp / "ext.weights").stat().st_size > 0)
            report = self.run_cycle(tmp / "run", tmp / "ext.onnx")
            self.assertEqual(report["original_params"], onnx_torch.params(inline))
            self.assertLessEqual(report["final_params"], report["original_params"])

    def test_toy_cycle_end_to_end_and_resume_after_an_interruption(self):
        _, valid = toy_data()
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            dense = self.dense(tmp / "dense.onnx", 4.0)
            report = self.run_cycle(tmp / "whole", dense)
            for key in (
                "baseline_metric",
                "final_metric",
                "original_params",
                "final_params",
                "compression",
                "final_bytes",
                "layer_widths",
                "cycles",
            ):
                self.assertIn(key, report)
            self.assertEqual(report, json.loads((tmp / "whole" / "report.json").read_text()) | {})
            self.assertEqual(len(report["cycles"]), 3)
            self.assertIsNotNone(report["final_training"], "the kept model trained once more at the end")
            for c in report["cycles"]:  # measured whenever a cycle starts from a released and trained model
                self.assertTrue(c["released_pruned_back"] is None or 0.0 <= c["released_pruned_back"] <= 1.0)
            self.assertLess(report["final_params"], report["original_params"])
            self.assertGreaterEqual(report["final_metric"], report["baseline_metric"] - 5.0)
            self.assertEqual(report["compression"], report["original_params"] / report["final_params"])
            for name in ("final.onnx", "size_vs_accuracy.png", "layer_widths.png"):
                self.assertTrue((tmp / "whole" / name).stat().st_size > 0, name)
            final = onnx_torch.load(tmp / "whole" / "final.onnx")
            self.assertAlmostEqual(accuracy(final, valid), report["final_metric"], places=4)

            # The same run, interrupted in the middle of cycle 2's training, then resumed.
            with self.assertRaises(Interrupted):
                self.run_cycle(tmp / "resumed", dense, stop_at_call=4)
            state = json.loads((tmp / "resumed" / "state.json").read_text())
            self.assertEqual(len(state["cycles"]), 1, "cycle 1 was judged and saved before the interruption")
            self.assertIn("finetune", state["current"]["done"])
            resumed = self.run_cycle(tmp / "resumed", dense)

            def strip(value):  # timings differ between runs; nothing else may
                if isinstance(value, dict):
                    return {k: strip(v) for k, v in value.items() if k != "seconds"}
                return [strip(v) for v in value] if isinstance(value, list) else value

            self.assertEqual(strip(resumed), strip(report), "resuming loses nothing and changes nothing")


if __name__ == "__main__":
    unittest.main()
