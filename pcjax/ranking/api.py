"""Public operators: soft_rank, soft_sort and the hard rank."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from pcjax.ranking.blocks import _block_sum
from pcjax.ranking.checks import _check_direction, _check_options, _check_values, _compute_dtype
from pcjax.ranking.native import cpu_backend
from pcjax.ranking.solve import _soft_op_rows, _solve
from pcjax.ranking.sort import _sort_rows


def _prepare(values, regularization_strength, regularization, direction):
    """Validates, flattens to rows (R, n) in the compute dtype and applies the direction's sign."""
    values = _check_values(values)
    dtype = _compute_dtype(values.dtype)
    _check_options(regularization_strength, regularization, direction, dtype)
    # Not reshape(-1, n): with n = 0 the row count cannot be inferred from zero elements.
    x = values.astype(dtype).reshape(math.prod(values.shape[:-1]), values.shape[-1])
    if direction == "descending":
        x = -x
    inv_eps = 1.0 / lax.stop_gradient(jnp.asarray(regularization_strength, dtype))
    return values, x, inv_eps


def _solver() -> str:
    """The `solve._rows` solver of the public operators, chosen outside jit (a static argument)."""
    return "compiled" if cpu_backend() == "compiled" else "auto"


def _finish(out, values, x):
    """Rows holding NaN or ±inf become NaN; back to the input's shape and dtype."""
    finite_row = jnp.all(jnp.isfinite(x), axis=1, keepdims=True)
    out = jnp.where(finite_row, out, jnp.nan)
    return out.reshape(values.shape).astype(values.dtype)


def soft_rank(values, *, regularization_strength=1.0, regularization: str = "l2",
              direction: str = "ascending") -> jax.Array:
    """Soft (differentiable) ranks of `values` along the last axis, 1-based.

    r(θ) is the projection of θ/ε onto the permutahedron of ρ = (n, ..., 1) (l2) or its KL
    analogue (Blondel et al. 2020, eqs. 6-7); ranks lie in [1, n] and sum to n(n+1)/2 per row.
    As ε → 0 they tend to `rank(values)` (ties averaged, exact once ε is below the smallest
    nonzero gap between values: for l2, once gaps/ε ≥ 1); as ε → ∞ every rank tends to (n+1)/2.
    ε is in the units of `values`: a rank moves by about one place for a change of ε in a value.

    Args:
      values: (..., n) floating array; any leading dims, the last axis is ranked. bfloat16 and
        float16 are computed in float32.
      regularization_strength: ε > 0. A Python number is checked eagerly. A traced scalar is used
        as given: not validated (a non-positive value gives meaningless output, not an error) and
        treated as a constant by differentiation (its gradient is zero).
      regularization: "l2" or "kl".
      direction: "ascending" (the smallest value gets rank ≈ 1) or "descending".

    Returns:
      (..., n) array of soft ranks in the dtype of `values`. A row holding NaN or ±inf gives a row
      of NaN; other rows are unaffected. Empty input (n = 0, or no rows) gives an empty array of
      the same shape.

    Cost: one sort, then O(n) per row (docs/soft_rank.md); the JVP and the VJP are O(n) (block
    averaging). Works under jit, vmap, grad and jvp.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> from pcjax.ranking import soft_rank
      >>> x = jnp.array([[0.1, 2.0, 1.0], [5.0, 5.0, -1.0]])
      >>> print(np.asarray(soft_rank(x, regularization_strength=0.1)).round(3))
      [[1.  3.  2. ]
       [2.5 2.5 1. ]]
      >>> print(np.asarray(soft_rank(x, regularization_strength=2.0)).round(3))
      [[1.533 2.483 1.983]
       [2.5   2.5   1.   ]]
    """
    values, x, inv_eps = _prepare(values, regularization_strength, regularization, direction)
    if x.shape[1] == 0:
        return values
    return _finish(_soft_op_rows(x, inv_eps, "rank", regularization, _solver()), values, x)


def soft_sort(values, *, regularization_strength=1.0, regularization: str = "l2",
              direction: str = "ascending") -> jax.Array:
    """Soft (differentiable) sort of `values` along the last axis.

    s(θ) is the projection of ρ/ε onto the permutahedron of θ (l2) or its KL analogue (Blondel
    et al. 2020, eq. 5 and §3), with ρ = (n, ..., 1). As ε → 0 it tends to the sorted values; as
    ε → ∞ every entry tends to the mean of the row (l2) or to its log-mean-exp (kl; for
    "ascending", −log-mean-exp(−θ)). Each row of the output is ordered. Here 1/ε is in the units
    of `values`: with l2, consecutive outputs inside a pooled block are exactly 1/ε apart, so
    gaps between sorted values wider than about 1/ε are shrunk and narrower ones are kept.

    Args and returns: as `soft_rank`, with "ascending" giving increasing rows.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> from pcjax.ranking import soft_sort
      >>> x = jnp.array([3.0, 1.0, 2.0])
      >>> print(np.asarray(soft_sort(x, regularization_strength=0.1)).round(3))
      [1. 2. 3.]
      >>> y = soft_sort(x, regularization_strength=2.0, direction="descending")
      >>> print(np.asarray(y).round(3))
      [2.5 2.  1.5]
    """
    values, x, inv_eps = _prepare(values, regularization_strength, regularization, direction)
    if x.shape[1] == 0:
        return values
    # _prepare negated "descending" rows; the solver sorts in decreasing order, so "ascending"
    # is computed as −s(−θ).
    out = _soft_op_rows(-x, inv_eps, "sort", regularization, _solver())
    if direction == "ascending":
        out = -out
    return _finish(out, values, x)


@functools.partial(jax.jit, static_argnames=("kind", "reg"))
def _rounds_rows(x, inv_eps, kind, reg):
    return _solve(x, inv_eps, kind, reg, solver="parallel").rounds


def _solver_rounds(values, *, regularization_strength=1.0, regularization: str = "l2",
                   direction: str = "ascending", kind: str = "rank") -> jax.Array:
    """Sequential O(n) passes of the parallel (GPU/TPU) solver for `soft_rank` (kind="rank") or
    `soft_sort` ("sort"): one plus one per pooling round, the largest over the rows."""
    values, x, inv_eps = _prepare(values, regularization_strength, regularization, direction)
    if kind == "sort":
        x = -x  # As in soft_sort.
    return _rounds_rows(x, inv_eps, kind, regularization)


def rank(values, *, direction: str = "ascending") -> jax.Array:
    """Hard ranks along the last axis, 1-based, ties averaged (like scipy.stats.rankdata).

    ``jax.scipy.stats.rankdata(values, axis=-1)`` gives the same values but was measured 2.5 to
    5 times slower on CPU (``benchmarks/soft_rank.py --rankdata``, benchmarks/results/soft_rank.md):
    `rank` is kept because it reuses the sort of `soft_rank` (a sorting network on CPU).

    Args:
      values: (..., n) array, at least 1-d. Integer and boolean values are accepted.
      direction: "ascending" (the smallest value gets rank 1) or "descending" (the largest does).

    Returns:
      (..., n) ranks in the dtype of `values` if it is floating, else float32. A row holding NaN
      gives a row of NaN; empty input an empty array of the same shape. Not differentiable
      (piecewise constant): use `soft_rank` for gradients. Note that bfloat16 cannot represent
      ranks above 256 exactly.

    Examples:
      >>> import jax.numpy as jnp
      >>> from pcjax.ranking import rank
      >>> print(rank(jnp.array([[0.5, -1.0, 0.5], [3.0, 2.0, 1.0]])))
      [[2.5 1.  2.5]
       [3.  2.  1. ]]
      >>> print(rank(jnp.array([10, 30, 20]), direction="descending"))
      [3. 1. 2.]
    """
    values = _check_values(values, floating=False)
    _check_direction(direction)
    out_dtype = values.dtype if jnp.issubdtype(values.dtype, jnp.floating) else jnp.float32
    n = values.shape[-1]
    if n == 0:
        return values.astype(out_dtype)
    ranks = _hard_rank_rows(lax.stop_gradient(values).reshape(-1, n))
    if direction == "descending":
        ranks = (n + 1) - ranks
    return ranks.reshape(values.shape).astype(out_dtype)


@jax.jit
def _hard_rank_rows(x):
    r, n = x.shape
    iota = lax.broadcasted_iota(jnp.int32, (r, n), 1)
    x_sorted, perm = _sort_rows(x)
    is_start = jnp.pad(x_sorted[:, 1:] != x_sorted[:, :-1], ((0, 0), (1, 0)), constant_values=True)
    row_offset = n * lax.broadcasted_iota(jnp.int32, (r, n), 0)
    flat_ids = jnp.cumsum(is_start, axis=1, dtype=jnp.int32) - 1 + row_offset
    count_and_start = jnp.stack(
        [jnp.ones((r, n), jnp.float32), jnp.where(is_start, iota, 0).astype(jnp.float32)], -1
    )
    count_and_start = _block_sum(count_and_start, flat_ids)
    # Positions start .. start+count-1 (0-based) share the mean 1-based rank start + (count+1)/2.
    ranks_sorted = count_and_start[..., 1] + 0.5 * (count_and_start[..., 0] + 1)
    rows = lax.broadcasted_iota(jnp.int32, (r, n), 0)
    ranks = jnp.zeros((r, n), jnp.float32).at[rows, perm].set(ranks_sorted, unique_indices=True)
    if jnp.issubdtype(x.dtype, jnp.floating):
        ranks = jnp.where(jnp.any(jnp.isnan(x), axis=1, keepdims=True), jnp.nan, ranks)
    return ranks
