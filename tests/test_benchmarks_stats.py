"""The paired statistics of the transfer tables (benchmarks/paired.py) against scipy's paired
t-test and a closed form."""

import os
import sys

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import paired  # noqa: E402


@pytest.mark.parametrize("n", [2, 3, 10])
def test_interval_is_scipys_paired_t_interval(n):
    rng = np.random.default_rng(n)
    a, b = rng.uniform(0.8, 0.95, n), rng.uniform(0.8, 0.95, n)
    reference = stats.ttest_rel(a, b).confidence_interval(0.95)
    mean, low, high = paired.interval(a, b)
    # float64 throughout; the quantile and the mean agree to rounding.
    np.testing.assert_allclose([mean, low, high], [np.mean(a - b), reference.low,
                                                   reference.high], rtol=1e-12, atol=1e-15)


def test_two_seeds_closed_form():
    # Differences 1 and 3: mean 2, std sqrt(2), standard error 1; t(0.975, 1 dof) = 12.7062047.
    mean, low, high = paired.interval([1.0, 5.0], [0.0, 2.0])
    np.testing.assert_allclose([mean, low, high], [2.0, 2.0 - 12.7062047, 2.0 + 12.7062047],
                               rtol=1e-8)


def test_pairing_cancels_the_seeds_spread():
    # A constant gain of 0.01 over seeds whose scores spread by 0.2: unpaired it would tie.
    base = np.array([0.6, 0.8, 0.7, 0.9, 0.65])
    gain = np.array([0.011, 0.009, 0.010, 0.012, 0.008])
    mean, low, high = paired.interval(base + gain, base)
    assert low > 0 and paired.verdict(low, high) == "wins"
    assert paired.verdict(*paired.interval(base, base + gain)[1:]) == "loses"


def test_verdict_needs_the_interval_to_exclude_zero():
    assert paired.verdict(0.001, 0.2) == "wins"
    assert paired.verdict(-0.2, -1e-6) == "loses"
    for low, high in ((0.0, 0.2), (-0.2, 0.0), (-0.1, 0.1), (0.0, 0.0)):
        assert paired.verdict(low, high) == "ties"


def test_equal_runs_tie_with_a_zero_width_interval():
    a = [0.9, 0.8, 0.85]
    assert paired.interval(a, a) == (0.0, 0.0, 0.0)
    assert paired.verdict(*paired.interval(a, a)[1:]) == "ties"


@pytest.mark.parametrize("a, b, match", [
    ([0.9], [0.8], "length >= 2"),
    ([0.9, 0.8], [0.8, 0.7, 0.6], "same|one length"),
    ([[0.9, 0.8]], [[0.8, 0.7]], "1-D"),
    ([0.9, np.nan], [0.8, 0.7], "finite"),
    ([0.9, 0.8], [np.inf, 0.7], "finite"),
])
def test_bad_input_raises(a, b, match):
    with pytest.raises(ValueError, match=match):
        paired.interval(a, b)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 95.0])
def test_bad_confidence_raises(confidence):
    with pytest.raises(ValueError, match="confidence"):
        paired.interval([0.9, 0.8], [0.8, 0.7], confidence)
