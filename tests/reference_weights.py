"""Deterministic weights for a PyTorch state_dict layout, from NumPy alone.

tests/make_pth_fixtures.py loads these into the PyTorch references and saves their outputs;
tests/test_convert.py rebuilds the same arrays without PyTorch and converts them, so every
architecture is checked against PyTorch without committing its weights. The values come from
PCG64's raw 64-bit stream, which NumPy keeps stable across versions, mapped to uniform doubles
and rounded once to float32.
"""

import math

import numpy as np


def _uniform(bits: np.random.PCG64, shape, low: float, high: float) -> np.ndarray:
    raw = bits.random_raw(math.prod(shape)) >> np.uint64(11)  # 53 random bits
    unit = raw.astype(np.float64) * 2.0**-53
    return (low + (high - low) * unit).astype(np.float32).reshape(shape)


def state_dict(layout, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays for ``layout`` = ``[(name, shape, dtype), ...]`` (a PyTorch state_dict's entries).

    Convolution and linear weights are He-uniform (bound sqrt(6 / fan_in), so activations stay
    of order one through 100 layers); BatchNorm scales and running variances uniform in
    [0.5, 1.5]; biases and running means uniform in [-0.2, 0.2]; ``num_batches_tracked`` 1000.
    """
    bits = np.random.PCG64(seed)
    arrays = {}
    for name, shape, dtype in layout:
        suffix = name.rsplit(".", 1)[-1]
        if suffix == "num_batches_tracked":
            arrays[name] = np.full(shape, 1000, dtype)
        elif suffix == "running_var" or (suffix == "weight" and len(shape) == 1):
            arrays[name] = _uniform(bits, shape, 0.5, 1.5)
        elif suffix in ("bias", "running_mean"):
            arrays[name] = _uniform(bits, shape, -0.2, 0.2)
        else:
            bound = math.sqrt(6.0 / math.prod(shape[1:]))
            arrays[name] = _uniform(bits, shape, -bound, bound)
    return arrays
