"""`onnx_minimize.torch.export_minimized` on a module pruned with `torch.nn.utils.prune`, both exporters."""

from __future__ import annotations

import numpy as np
import pytest

import onnx

torch = pytest.importorskip("torch")
onnxruntime = pytest.importorskip("onnxruntime")

from onnx_minimize.torch import export_minimized
from torch.nn.utils import prune


def pruned_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    )
    # Whole hidden units (rows) of the first two layers, and half the remaining weights.
    for layer in (model[0], model[2]):
        prune.ln_structured(layer, "weight", amount=0.5, n=2, dim=0)
        prune.l1_unstructured(layer, "weight", amount=0.5)
    return model


@pytest.mark.parametrize("dynamo", [True, False])
def test_a_module_pruned_with_torch_masks_exports_minimized_and_exact(tmp_path, dynamo):
    model = pruned_mlp()
    x = torch.randn(4, 32)
    out = tmp_path / "small.onnx"
    report = export_minimized(model, x, out, dynamo=dynamo, export_options={"input_names": ["x"]})
    assert report.before.params > 2 * report.after.params, str(report)
    assert report.verification is not None
    assert hasattr(model[0], "weight_mask"), "the caller's module keeps its masks"
    assert not out.with_name("small.onnx.data").exists()
    session = onnxruntime.InferenceSession(str(out))
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(y, model(x).numpy(), rtol=1e-5, atol=1e-5)
    widths = [i.dims for i in onnx.load(out).graph.initializer if len(i.dims) == 2]
    assert max(max(w) for w in widths) <= 32
