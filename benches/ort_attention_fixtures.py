#!/usr/bin/env python3
"""Every committed attention fixture, minimized, against the original in ONNX Runtime (batches
1 to 3, seven tokens, a padded mask where the model takes one).

    python3 benches/ort_attention_fixtures.py [--binary target/debug/onnx-minimize]

Prints the largest relative deviation per fixture, the parameter counts and file sizes; exits 1 when one exceeds
1e-5.
"""

import argparse
import glob
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort

import onnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from counts import initializer_elements

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def feeds(session, batch, rng):
    out = {}
    for i in session.get_inputs():
        if i.type == "tensor(float)":
            # Declared sizes as they are; the symbolic batch (axis 0) and sequence get ours.
            shape = [d if isinstance(d, int) else (batch if a == 0 else 7) for a, d in enumerate(i.shape)]
            out[i.name] = rng.standard_normal(shape).astype(np.float32)
        elif i.name == "attention_mask":
            mask = np.ones((batch, 7), np.int64)
            mask[0, :3] = 0
            out[i.name] = mask
        else:
            out[i.name] = rng.integers(0, 40, (batch, 7)).astype(np.int64)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "debug", "onnx-minimize"))
    a = ap.parse_args()
    ort.set_default_logger_severity(3)
    rng = np.random.default_rng(1)
    worst_all = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted(glob.glob(os.path.join(ROOT, "fixtures", "attention", "*.onnx"))):
            out = os.path.join(tmp, "min.onnx")
            subprocess.run([a.binary, path, out, "--no-verify", "-q"], check=True)
            before, after = ort.InferenceSession(path), ort.InferenceSession(out)
            worst = 0.0
            for batch in (1, 2, 3):
                f = feeds(before, batch, rng)
                x, y = before.run(None, f)[0], after.run(None, f)[0]
                worst = max(worst, float(np.abs(x - y).max() / (np.abs(x).max() + 1e-12)))
            worst_all = max(worst_all, worst)
            name = os.path.basename(path)
            params = [initializer_elements(onnx.load(p)) for p in (path, out)]
            sizes = f"{params[0]:,} -> {params[1]:,} parameters, {os.path.getsize(path):,} -> {os.path.getsize(out):,} bytes"
            print(f"{name:28} max rel dev {worst:.1e}  {sizes}")
    return 1 if worst_all > 1e-5 else 0


if __name__ == "__main__":
    sys.exit(main())
