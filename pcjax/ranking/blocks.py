"""Partitions of sorted rows into pooled blocks: block sums, prefix sums, aggregates."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


def _block_sum(v: jax.Array, flat_ids: jax.Array) -> jax.Array:
    """Each element gets the sum of `v` over its block.

    v: (R, n) or (R, n, k); flat_ids: (R, n) int32, block ids made unique across rows and sorted
    along each row. Linear in `v` (a segment sum and a gather), so JAX can transpose it: this is
    what makes the derivative rules below work in reverse mode.
    """
    r, n = flat_ids.shape
    sums = jax.ops.segment_sum(
        v.reshape((r * n,) + v.shape[2:]), flat_ids.reshape(-1), num_segments=r * n,
        indices_are_sorted=True,
    )
    return sums[flat_ids]


def _cumsum(v: jax.Array, chunk: int = 32) -> jax.Array:
    """Inclusive prefix sums along axis 1 of v (R, n), as products with triangular matrices.

    Chunks of `chunk` elements are summed by one small matmul each, and the chunk totals
    recursively: O(n · chunk · log_chunk n) arithmetic but no sequential or log n-level scan,
    which XLA on CPU runs an order of magnitude slower. Exact whenever every partial sum is
    representable (counts, or the multiples of a common quantum of `_exact_prefix_sums`).
    """
    r, n = v.shape
    size = min(n, chunk)
    upper = jnp.triu(jnp.ones((size, size), v.dtype))
    if n <= chunk:
        return jnp.matmul(v, upper, precision=lax.Precision.HIGHEST)
    m = -(-n // chunk)
    within = jnp.matmul(
        jnp.pad(v, ((0, 0), (0, m * chunk - n))).reshape(r, m, chunk), upper,
        precision=lax.Precision.HIGHEST,
    )
    totals = within[..., -1]
    offsets = _cumsum(totals, chunk) - totals
    return (within + offsets[..., None]).reshape(r, m * chunk)[:, :n]


def _count(flags: jax.Array) -> jax.Array:
    """(R, n) int32: number of set flags at or before each position."""
    return _cumsum(flags.astype(jnp.float32)).astype(jnp.int32)


def _exact_prefix_sums(d: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Exclusive prefix sums (R, n+1) of d (R, n) as a pair (hi, lo) with sum = hi + lo.

    d = d_hi + d_lo exactly, d_hi a multiple of a per-row power of two q small enough that every
    partial sum of d_hi is a float with at most 22 significant bits: the hi sums are exact, so
    the sum over [a, b) is (hi[b] − hi[a]) + (lo[b] − lo[a]) with the error of the small lo
    terms only, whatever the magnitude of the row. q is kept normal: a subnormal q is flushed to
    zero on CPU, which would turn a row of zeros (q = 0, 0/0) into NaN sums.
    """
    total = jnp.sum(jnp.abs(d), axis=1, keepdims=True)
    finfo = jnp.finfo(d.dtype)
    exponent = jnp.ceil(jnp.log2(jnp.maximum(total, finfo.tiny))) - 22
    # ldexp builds the power of two exactly; exp2 is not exact on every XLA CPU build.
    q = jnp.ldexp(jnp.ones_like(total), jnp.maximum(exponent, finfo.minexp).astype(jnp.int32))
    d_hi = jnp.round(d / q) * q
    pad = ((0, 0), (1, 0))
    return jnp.pad(_cumsum(d_hi), pad), jnp.pad(_cumsum(d - d_hi), pad)


class _Blocks(NamedTuple):
    """A partition of each sorted row into blocks, and its per-element statistics."""

    start: jax.Array  # (R, n) int32: first position of the block
    count: jax.Array  # (R, n) float: block size
    data_agg: jax.Array  # block aggregate of the sorted data d (l2 mean, kl log-sum-exp)
    data_dev: jax.Array  # d minus data_agg, computed from within-block differences
    rho_agg: jax.Array  # block aggregate of the ρ side (closed form)
    rho_dev: jax.Array  # soft sort only: ρ/ε minus its block aggregate (closed form)
    weights: jax.Array  # the block-averaging weights of d (l2 1/|B|, kl softmax over the block)


def _sort_rho_extra(count, reg, inv_eps):
    """Block aggregate of ρ/ε over positions [a, a+count) minus (n − a)/ε.

    l2: the mean, −(count − 1)/(2ε). kl: the log-sum-exp, a geometric series,
    log(1 − e^{−count/ε}) − log(1 − e^{−1/ε}) (expm1 keeps it exact for any ε).
    """
    if reg == "l2":
        return -0.5 * (count - 1) * inv_eps
    return jnp.log(-jnp.expm1(-count * inv_eps)) - jnp.log(-jnp.expm1(-inv_eps))


def _rho_agg(start, count, n, kind, reg, inv_eps):
    """Aggregate of the ρ side over positions [start, start+count), ρ_i = n − i (0-based i).

    rank: ρ (l2 mean) or log ρ (kl log-sum-exp = log Σρ); sort: ρ/ε (l2 mean, kl log-sum-exp).
    """
    if kind == "sort":
        return (n - start) * inv_eps + _sort_rho_extra(count, reg, inv_eps)
    rho_mean = n - start - 0.5 * (count - 1)
    return rho_mean if reg == "l2" else jnp.log(count) + jnp.log(rho_mean)


def _block_stats(x, is_start, kind, reg, inv_eps) -> _Blocks:
    """Statistics of the partition `is_start` of the descending rows `x` (R, n).

    kind="rank": the data is d = x/ε and the ρ side is ρ (l2) or log ρ (kl).
    kind="sort": the data is d = x and the ρ side is ρ/ε.
    """
    r, n = x.shape
    scale = inv_eps if kind == "rank" else 1.0
    iota = lax.broadcasted_iota(jnp.int32, (r, n), 1)
    row_offset = n * lax.broadcasted_iota(jnp.int32, (r, n), 0)
    flat_ids = _count(is_start) - 1 + row_offset
    starts = jnp.where(is_start, iota, 0).astype(x.dtype)
    count_and_start = jnp.stack([jnp.ones_like(x), starts], -1)
    count_and_start = _block_sum(count_and_start, flat_ids)
    count, start = count_and_start[..., 0], count_and_start[..., 1].astype(jnp.int32)
    # Centre each block on its first (largest) element: precise sums, overflow-free exponentials,
    # and a deviation d − data_agg that is exactly 0 on a single-element block whatever the scale
    # (scaling before subtracting would let rounding of x/ε leak into the ranks).
    x_first = jnp.take_along_axis(x, start, axis=1)
    centred = (x - x_first) * scale
    if reg == "l2":
        centred_agg = _block_sum(centred, flat_ids) / count
        weights = 1.0 / count
    else:
        centred_agg = jnp.log(_block_sum(jnp.exp(centred), flat_ids))
        weights = jnp.exp(centred - centred_agg)
    data_agg = x_first * scale + centred_agg
    data_dev = centred - centred_agg
    rho_agg = _rho_agg(start, count, n, kind, reg, inv_eps)
    if kind == "sort":
        rho_dev = (start - iota) * inv_eps - _sort_rho_extra(count, reg, inv_eps)
    else:
        rho_dev = jnp.zeros_like(x)
    return _Blocks(start, count, data_agg, data_dev, rho_agg, rho_dev, weights)


def _violates(left_data, left_rho, right_data, right_rho, kind):
    """Whether two adjacent groups violate the order γ_left ≥ γ_right of the isotonic solution.

    γ = data − rho for ranks and rho − data for sorts. Written on the differences of each side
    separately, so that ties are still pooled when the two sides differ hugely in magnitude
    (tiny ε).
    """
    data_step = left_data - right_data
    rho_step = left_rho - right_rho
    return data_step < rho_step if kind == "rank" else rho_step < data_step


def _violations(is_start, blocks: _Blocks, kind) -> jax.Array:
    """(R, n) bool: block starts whose block violates the order with its left neighbour."""
    violated = _violates(
        blocks.data_agg[:, :-1], blocks.rho_agg[:, :-1], blocks.data_agg[:, 1:],
        blocks.rho_agg[:, 1:], kind,
    )
    return jnp.pad(is_start[:, 1:] & violated, ((0, 0), (1, 0)))
