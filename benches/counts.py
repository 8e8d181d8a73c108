"""Parameter counts written compactly (1e9, 5e7): shared by the generators and the runner.

Standard library only, so that the benchmark runner's own memory stays small.
"""

import math


def size_tag(n: int) -> str:
    """Compact, file-name friendly spelling of a parameter count: 1e9, 5e7, 15e5, 266610."""
    n = int(n)
    if n <= 0:
        return str(n)
    k = 0
    m = n
    while m % 10 == 0:
        m //= 10
        k += 1
    return f"{m}e{k}" if k >= 3 else str(n)


def parse_count(s: str) -> int:
    """'1e9', '5e7', '1000000', '1_000_000' -> int."""
    s = s.strip().replace("_", "")
    try:
        return int(s)
    except ValueError:
        return int(round(float(s)))


def initializer_elements(model) -> int:
    """Elements of an ONNX model's initializers: its parameters as deployed."""
    return sum(math.prod(t.dims) for t in model.graph.initializer)
