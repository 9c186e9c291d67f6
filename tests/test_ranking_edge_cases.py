"""Ranking edge cases on every solver: constant rows, huge common offsets, unrepresentable ε.

Solvers: the two pure-JAX isotonic solvers (the CPU's sequential one and the GPU/TPU's parallel
one, both run here on CPU through `solve._solve`) and the compiled C++ one (public API with the
"compiled" CPU backend). References: closed forms (a constant row ranks (n + 1)/2 everywhere and
soft-sorts to itself) and the float64 NumPy reference of test_ranking.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import rankdata

from pcjax import ranking
from pcjax.ranking.solve import _solve
from test_ranking import ref_rows

JAX_SOLVERS = ("sequential", "parallel")
SOLVERS = JAX_SOLVERS + (
    pytest.param("compiled", marks=pytest.mark.skipif(
        ranking.native._UNAVAILABLE is not None, reason=f"{ranking.native._UNAVAILABLE}")),
)
CONSTANTS = (0.0, -0.0, 1e9, -7.5, 1e-30, 1e-40, 3e38, -3e38)


@functools.partial(jax.jit, static_argnames=("kind", "reg", "solver"))
def _jax_solver(x, inv_eps, kind, reg, solver):
    return _solve(x, inv_eps, kind, reg, solver).out


def _soft(x, eps, kind, reg, solver):
    """Soft rank / soft sort of the rows x (R, n) (descending convention for sorts, as _solve)."""
    x = jnp.asarray(x, jnp.float32)
    if solver in JAX_SOLVERS:
        return np.asarray(_jax_solver(x, jnp.float32(1 / eps), kind, reg, solver))
    before = ranking.cpu_backend()
    ranking.use_cpu_backend("compiled")
    try:
        if kind == "rank":
            return np.asarray(ranking.soft_rank(x, regularization_strength=eps, regularization=reg))
        return np.asarray(ranking.soft_sort(
            x, regularization_strength=eps, regularization=reg, direction="descending"))
    finally:
        ranking.use_cpu_backend(before)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("reg", ("l2", "kl"))
def test_constant_rows_of_any_value_get_equal_ranks_and_sort_to_themselves(solver, reg):
    # One row per constant, n = 5 and n = 6: every rank is (n + 1)/2, exactly representable.
    for n in (5, 6):
        x = np.repeat(np.array(CONSTANTS, np.float32)[:, None], n, axis=1)
        for eps in (1e-3, 1.0, 1e3):
            ranks = _soft(x, eps, "rank", reg, solver)
            # Equal within each row; kl's exp(log Σρ + ...) leaves a float32 rounding of the value.
            np.testing.assert_array_equal(np.ptp(ranks, axis=1), 0.0, err_msg=f"{eps}")
            np.testing.assert_allclose(ranks, (n + 1) / 2, rtol=4e-7, atol=0, err_msg=f"{eps}")
            sorts = _soft(x, eps, "sort", reg, solver)
            # The l2 soft sort of a constant row is the row; kl adds log-mean-exp rounding. XLA
            # on CPU flushes subnormal results (the 1e-40 row) to zero: atol = the least normal.
            tiny = np.finfo(np.float32).tiny
            np.testing.assert_allclose(sorts, x, rtol=2e-6, atol=tiny, err_msg=f"{eps}")


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("reg", ("l2", "kl"))
def test_a_huge_common_offset_does_not_change_the_ranks(solver, reg):
    # 1e9 + 64 k is exact in float32 (its spacing there is 64); ε of one to four spacings pools
    # neighbours. The reference ranks the same float64 values, offset included. Eight rows (two
    # splitting 0..11, six more of 6 of 0..11) share the (8, 6) programs of the constant-row test.
    rng = np.random.default_rng(0)
    k = np.concatenate([rng.permutation(12).reshape(2, 6)]
                       + [rng.permutation(12)[None, :6] for _ in range(6)])
    x = (np.float32(1e9) + 64 * k).astype(np.float32)
    for eps in (64.0, 256.0):
        want = ref_rows("rank", x, eps, reg, "ascending")
        np.testing.assert_allclose(_soft(x, eps, "rank", reg, solver), want, atol=1e-5)
        want = ref_rows("sort", x, 1 / eps, reg, "descending")
        # Sorted values near 1e9: float32 output spacing 64, so a rounding of half of it.
        np.testing.assert_allclose(_soft(x, 1 / eps, "sort", reg, solver), want, atol=32, rtol=0)


@pytest.mark.parametrize("eps", (1e-45, 1e-40, 1e-38, 1e39))
def test_strength_that_float32_cannot_hold_as_a_normal_number_is_refused(eps):
    for op in (ranking.soft_rank, ranking.soft_sort):
        with pytest.raises(ValueError, match="regularization_strength must be between"):
            op(jnp.ones((2, 3)), regularization_strength=eps)


def test_float64_holds_strengths_float32_cannot():
    x = np.array([[0.3, -1.0, 2.0, 0.3]])
    with jax.enable_x64(True):
        got = ranking.soft_rank(jnp.asarray(x), regularization_strength=1e-45)
    np.testing.assert_array_equal(got, rankdata(x, axis=-1))
