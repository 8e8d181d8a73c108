"""The `onnx-minimize` command (and `python -m onnx_minimize`): the Rust command line, unchanged."""

from __future__ import annotations

import signal
import sys

from . import _native


def main() -> int:
    # The work runs in Rust without the GIL, where Python's own Ctrl-C handler would only set a
    # flag nobody reads: let the signal stop the process as it stops the binary.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.stdout.flush()
    return _native.cli(["onnx-minimize", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
