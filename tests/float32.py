"""Tolerances for comparing float32 results, shared by the numeric tests.

A float32 operation rounds with relative error up to eps = 2**-23 ~ 1.2e-7. A sum of n terms
computed in another order (another CPU's vector width, a sharded reduction, another fusion)
can move by up to about n * eps times the sum of the magnitudes of its terms, and that error
is carried into everything computed from it. For the sizes in these tests (n <= 1024, a few
chained reductions) that is at most a few 1e-5 relative to the scale of the quantity.

So values are compared at ``rtol=1e-5`` (~80 eps), and arrays whose entries come from
cancelling sums (gradients, centred quantities) get an absolute tolerance relative to their
largest entry, as optax's float32 tests do: a tiny entry cannot be held to a relative
tolerance, since it is the difference of terms that are each known only to ~eps times their
own size. A wrong formula, sign, normalization or dropped term moves results by 1e-3 or more
of their scale and still fails.
"""

import numpy as np

RTOL = 1e-5


def scale(x) -> float:
    """The scale of an array: its largest absolute entry."""
    return float(np.max(np.abs(np.asarray(x, np.float64)), initial=0.0))


def assert_close(actual, expected, *, rtol: float = RTOL, rel_atol: float = RTOL, err_msg=""):
    """``assert_allclose`` with ``atol = rel_atol * max|expected|`` (the quantity's own scale)."""
    np.testing.assert_allclose(
        np.asarray(actual, np.float64),
        np.asarray(expected, np.float64),
        rtol=rtol,
        atol=rel_atol * scale(expected),
        err_msg=err_msg,
    )
