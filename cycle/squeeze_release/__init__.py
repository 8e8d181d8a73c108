"""Squeeze-Release for PyTorch users: onnx-minimize does the structural work, your training loop the rest.

    from squeeze_release import Config, run
    report = run("dense.onnx", "runs/mine", train=my_train, evaluate=my_accuracy, config=Config(tolerance=1.0))

`my_train(module, epochs, seed)` trains the `torch.nn.Module` it is given in place; `my_accuracy(module)`
returns the guard metric (higher is better). docs/method.md explains the loop and its settings.
"""

from .cycle import Config, Run, run
from .onnx_torch import OnnxModule, UnsupportedModel

__all__ = ["Config", "OnnxModule", "Run", "UnsupportedModel", "run"]
