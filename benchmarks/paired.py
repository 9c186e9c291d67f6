"""Paired comparisons over seeds: the mean difference of two methods with a t confidence interval.

Runs at the same seed share the student's initialization and batch order, so the per-seed
differences cancel the seed's luck; the interval is the one-sample t-interval of those differences.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def interval(a, b, confidence: float = 0.95) -> tuple[float, float, float]:
    """The mean of ``a - b`` over paired runs and its two-sided t confidence interval.

    Args:
      a, b: (n,) scores of two methods, run i of both at the same seed; n >= 2, finite.
      confidence: the interval's coverage, in (0, 1).

    Returns:
      (mean, low, high) of the difference, in the scores' units.

    Examples:
      >>> print([round(x, 3) for x in interval([0.9, 0.8, 0.7], [0.8, 0.6, 0.6])])
      [0.133, -0.01, 0.277]
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size < 2:
        raise ValueError(f"interval: a and b must be 1-D, of one length >= 2 (paired runs), got "
                         f"shapes {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError(f"interval: a and b must be finite, got {a} and {b}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"interval: confidence must be in (0, 1), got {confidence}")
    d = a - b
    half = stats.t.ppf(0.5 + confidence / 2, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def verdict(low: float, high: float) -> str:
    """"wins" when the interval lies above 0, "loses" when below, "ties" when it holds 0.

    Examples:
      >>> print(verdict(0.1, 0.3), verdict(-0.2, 0.1), verdict(-0.3, -0.1))
      wins ties loses
    """
    return "wins" if low > 0 else "loses" if high < 0 else "ties"
