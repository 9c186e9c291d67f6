"""Differentiable sorting and ranking in pure JAX: `soft_rank`, `soft_sort`, and the hard `rank`.

Reference: Blondel, Teboul, Berthet, Djolonga, "Fast Differentiable Sorting and Ranking",
ICML 2020 (arXiv:2002.08871). The method, in prose: docs/soft_rank.md.

Notation (per row of length n, everything along the last axis): ρ = (n, n-1, ..., 1), ε the
regularization strength, P(w) the permutahedron (convex hull of the permutations of w).

- soft rank, l2:   r(θ) = argmin_{μ ∈ P(ρ)} ½‖μ − θ/ε‖²
- soft rank, kl:   r(θ) = exp(argmin_{μ ∈ P(log ρ)} KL-projection of θ/ε)   (Blondel et al. §3)
- soft sort, l2:   s(θ) = argmin_{μ ∈ P(θ)} ½‖μ − ρ/ε‖²
- soft sort, kl:   the same with the KL (entropic) regularizer.

With direction="ascending" the smallest value gets rank 1 and the largest rank n (the soft ranks
are 1-based like `rank`); "descending" ranks −θ. Soft sort "ascending" returns values in
increasing order (computed as −s(−θ)).

Each projection is solved after one sort as an isotonic regression over the sorted values: the
output is constant-shifted on *blocks* of consecutive sorted positions, and the derivative is
block-constant (Jacobian = block averaging), so forward and backward passes cost O(n log n) time
(the sort) and O(n) memory per row.

Isotonic solver: pool adjacent violators in parallel rounds. Each block's optimal value is γ
(l2: mean of s − w; kl: logΣe^s − logΣe^w) and the solution needs γ non-increasing. Pooling
adjacent violators in any order reaches the unique optimum (Best, Chakravarti & Ubhaya 2000, for
separable convex objectives, which both regularizers are), and a pooled value lies between the
values of its parts (a weighted mean for l2, a mediant logΣa/Σb for kl). So in one round every
block whose left boundary is violated can absorb, one after the other, all the blocks on its left
that keep violating with the growing union (and, next round, on its right): a valid sequence of
single pools, done for all blocks at once with O(n) work and O(log n) depth (a segmented scan and
a segment max; see `_extension_merges`). Absorbing whole runs matters: on rank-unit inputs one
large central block grows over the tails, which costs one round per absorbed neighbour (49
rounds at n = 1023, 136 at n = 4095) when only adjacent pairs are pooled, against 9 to 11 passes
here. Every round with a violation removes at least one boundary of its row, so the loop is
capped at n rounds; it ends when nothing is violated (comparisons with NaN are false, so a NaN
row cannot keep it going). That is the solver on GPU/TPU. On CPU, where a pass costs a few
kernels rather than a device-wide sync but each round's O(n) scans and segment reductions are
slow, the classic sequential pool-adjacent-violators (one step per position, all rows at once,
`_isotonic_sequential`) is several times faster; both give the same partition, and
lax.platform_dependent picks one when the program is lowered.

The sort is chosen the same way. XLA's sort on CPU calls a comparator per comparison and is
several times slower there than a bitonic sorting network made of O(log² n) elementwise passes
over reshaped rows (`_sorting_network`), so CPU programs sort with the network and GPU/TPU
programs with lax.sort. Both give the stable order, ties broken by position.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["soft_rank", "soft_sort", "rank"]

_REGULARIZATIONS = ("l2", "kl")
_DIRECTIONS = ("ascending", "descending")


# ----------------------------------------------------------------------------- validation


def _check_values(values) -> jax.Array:
    values = jnp.asarray(values)
    if values.ndim == 0:
        raise ValueError(
            "values must have at least one dimension (the last axis is ranked); got a 0-d array."
        )
    if not jnp.issubdtype(values.dtype, jnp.floating):
        raise ValueError(f"values must have a floating dtype; got {values.dtype}.")
    return values


def _check_options(regularization_strength, regularization, direction) -> None:
    if regularization not in _REGULARIZATIONS:
        raise ValueError(f"regularization must be one of {_REGULARIZATIONS}; got {regularization!r}.")
    _check_direction(direction)
    if jnp.ndim(regularization_strength) != 0:
        raise ValueError(
            "regularization_strength must be a scalar; got shape "
            f"{jnp.shape(regularization_strength)}."
        )
    if isinstance(regularization_strength, jax.core.Tracer):
        return  # Its value is unknown until run time; see the soft_rank docstring.
    try:
        strength = float(regularization_strength)
    except (TypeError, ValueError):
        strength = math.nan
    if not (strength > 0 and math.isfinite(strength)):
        raise ValueError(
            f"regularization_strength must be a positive finite number; got {regularization_strength!r}."
        )


def _check_direction(direction) -> None:
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be one of {_DIRECTIONS}; got {direction!r}.")


def _compute_dtype(dtype) -> jnp.dtype:
    """float32 for float32 and narrower floats (bfloat16, float16); float64 stays float64."""
    return jnp.promote_types(dtype, jnp.float32)


# ----------------------------------------------------------------------------- block helpers


def _block_sum(v: jax.Array, flat_ids: jax.Array) -> jax.Array:
    """Each element gets the sum of `v` over its block.

    v: (R, n) or (R, n, k); flat_ids: (R, n) int32, block ids made unique across rows and sorted
    along each row. Linear in `v` (a segment sum and a gather), so JAX can transpose it: this is
    what makes the derivative rules below work in reverse mode.
    """
    r, n = flat_ids.shape
    sums = jax.ops.segment_sum(
        v.reshape((r * n,) + v.shape[2:]),
        flat_ids.reshape(-1),
        num_segments=r * n,
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
    terms only, whatever the magnitude of the row.
    """
    total = jnp.sum(jnp.abs(d), axis=1, keepdims=True)
    q = jnp.exp2(jnp.ceil(jnp.log2(jnp.maximum(total, jnp.finfo(d.dtype).tiny))) - 22)
    d_hi = jnp.round(d / q) * q
    pad = ((0, 0), (1, 0))
    return jnp.pad(_cumsum(d_hi), pad), jnp.pad(_cumsum(d - d_hi), pad)


class _Blocks(NamedTuple):
    """A partition of each sorted row into blocks, and its per-element statistics."""

    flat_ids: jax.Array  # (R, n) int32: block id, unique across rows
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
    count_and_start = jnp.stack([jnp.ones_like(x), jnp.where(is_start, iota, 0).astype(x.dtype)], -1)
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
    return _Blocks(flat_ids, start, count, data_agg, data_dev, rho_agg, rho_dev, weights)


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
        blocks.data_agg[:, :-1], blocks.rho_agg[:, :-1], blocks.data_agg[:, 1:], blocks.rho_agg[:, 1:], kind
    )
    return jnp.pad(is_start[:, 1:] & violated, ((0, 0), (1, 0)))


def _segmented_scan(ops, values, reset, reverse):
    """Inclusive scans of `values` along axis 1, restarting where `reset` is set.

    ops[k] is the associative operation of values[k]; with reverse=True the scan runs from the
    right and `reset` marks the first element (in scan order) of each segment.
    """

    def combine(earlier, later):
        (earlier_values, earlier_reset), (later_values, later_reset) = earlier, later
        merged = tuple(
            jnp.where(later_reset, b, op(a, b)) for op, a, b in zip(ops, earlier_values, later_values)
        )
        return merged, earlier_reset | later_reset

    return lax.associative_scan(combine, (tuple(values), reset), reverse=reverse, axis=1)[0]


def _extension_merges(x, prefix, is_start, blocks: _Blocks, violated, kind, reg, inv_eps, leftward):
    """(R, n) bool: the block starts to remove in one pooling round.

    Every *active* block X (leftward: its left boundary is violated) absorbs, one after the
    other, the blocks L1, L2, ... on its left while γ(L_j) < γ(X ∪ L1 ∪ ... ∪ L_{j−1}) (for
    L1 this is the violation itself), going no further than the next active block (which it may
    absorb last). Each absorption is a pool of adjacent violators, and doing the regions from
    left to right is a valid order: an active block's own absorptions only lower its γ, so it
    still violates with the union that then absorbs it. The test is monotone along the run
    (γ(L_j) grows with j while the union's γ only falls), so the absorbed blocks are exactly the
    prefix of the run up to the first failure, which a segment max finds. rightward mirrors it.
    Absorbing whole runs at once is what keeps the number of rounds small: a big block that
    takes in its neighbours one at a time would otherwise need one round per neighbour.

    The union of a position with everything up to its active block (its segment's far end) is
    a difference of the row's prefix sums `prefix` for l2 (see `_exact_prefix_sums`), and a
    segmented log-sum-exp scan for kl.
    """
    r, n = x.shape
    iota = lax.broadcasted_iota(jnp.int32, (r, n), 1)
    row_offset = n * lax.broadcasted_iota(jnp.int32, (r, n), 0)
    end = blocks.start + blocks.count.astype(jnp.int32) - 1
    # A segment runs from one active block to the next: leftward it ends with an active block
    # (`reset` marks its last element), rightward it starts with one (its first element).
    if leftward:
        active = jnp.take_along_axis(violated, blocks.start, axis=1)
        reset = active & (iota == end)
        segment_start = jnp.pad(reset[:, :-1], ((0, 0), (1, 0)), constant_values=True)
    else:
        after_end = jnp.minimum(end + 1, n - 1)
        active = jnp.take_along_axis(violated, after_end, axis=1) & (end + 1 < n)
        reset = active & (iota == blocks.start)
        segment_start = reset.at[:, 0].set(True)
    segment_ids = _count(segment_start) - 1 + row_offset
    if reg == "l2":
        # Leftward the union is [i, segment end], rightward [segment start, i].
        segment_op = jax.ops.segment_max if leftward else jax.ops.segment_min
        far = segment_op(
            iota.reshape(-1), segment_ids.reshape(-1), num_segments=r * n, indices_are_sorted=True
        )[segment_ids]
        lo, hi = (iota, far + 1) if leftward else (far, iota + 1)
        union_sum = sum(
            jnp.take_along_axis(p, hi, axis=1) - jnp.take_along_axis(p, lo, axis=1) for p in prefix
        )
        union_count = (hi - lo).astype(x.dtype)
        union_data = union_sum / union_count
    else:
        d = x * inv_eps if kind == "rank" else x
        # Materialize the scan's inputs: otherwise XLA fuses their producers (gathers) into each
        # of the scan's log n levels and recomputes them there (measured ~15% of a solve on CPU).
        d, reset = lax.optimization_barrier((d, reset))
        union_data, union_count = _segmented_scan(
            (jnp.logaddexp, jnp.add), (d, jnp.ones_like(d)), reset, reverse=leftward
        )
    union_start = iota if leftward else iota - union_count.astype(jnp.int32) + 1
    union_rho = _rho_agg(union_start, union_count, n, kind, reg, inv_eps)
    # Candidate boundary p (a block start, p >= 1) joins the block holding p−1 to the one at p.
    if leftward:  # The block left of p against the union starting at p.
        absorbs = _violates(
            blocks.data_agg[:, :-1], blocks.rho_agg[:, :-1], union_data[:, 1:], union_rho[:, 1:], kind
        )
        segment_ids = segment_ids[:, 1:]
    else:  # The union ending at p−1 against the block at p.
        absorbs = _violates(
            union_data[:, :-1], union_rho[:, :-1], blocks.data_agg[:, 1:], blocks.rho_agg[:, 1:], kind
        )
        segment_ids = segment_ids[:, :-1]
    candidate = is_start[:, 1:]
    boundary = iota[:, 1:]
    failed = candidate & ~absorbs
    # The first failing boundary seen from the active block ends its run.
    if leftward:
        first_failure = jax.ops.segment_max(
            jnp.where(failed, boundary, -1).reshape(-1), segment_ids.reshape(-1), num_segments=r * n,
            indices_are_sorted=True,
        )[segment_ids]
        merge = candidate & (boundary > first_failure)
    else:
        first_failure = jax.ops.segment_min(
            jnp.where(failed, boundary, n).reshape(-1), segment_ids.reshape(-1), num_segments=r * n,
            indices_are_sorted=True,
        )[segment_ids]
        merge = candidate & (boundary < first_failure)
    return jnp.pad(merge, ((0, 0), (1, 0)))


def _isotonic_parallel(x, kind, reg, inv_eps) -> tuple[_Blocks, jax.Array]:
    """Parallel pool-adjacent-violators on descending rows x (R, n); returns (blocks, rounds).

    Rounds alternate leftward and rightward absorption (`_extension_merges`). `rounds` counts
    the sequential O(n) passes: the first one plus one per pooling round.
    """
    n = x.shape[1]
    # Derived from x so that, inside jax.shard_map, the loop's initial carry varies over the same
    # manual mesh axes as the body's output (a constant would not, and check_vma rejects that).
    is_start = jnp.ones_like(x, dtype=bool)
    blocks = _block_stats(x, is_start, kind, reg, inv_eps)
    violated = _violations(is_start, blocks, kind)
    prefix = _exact_prefix_sums(x * inv_eps if kind == "rank" else x) if reg == "l2" else None

    def pool(is_start, blocks, violated, leftward):
        is_start = is_start & ~_extension_merges(
            x, prefix, is_start, blocks, violated, kind, reg, inv_eps, leftward
        )
        blocks = _block_stats(x, is_start, kind, reg, inv_eps)
        return is_start, blocks, _violations(is_start, blocks, kind)

    def cond(state):
        _, _, violated, rounds = state
        # Each round with a violation removes a boundary of that row: n rounds always suffice.
        return jnp.any(violated) & (rounds <= n)

    def body(state):
        is_start, blocks, violated, rounds = state
        is_start, blocks, violated = pool(is_start, blocks, violated, leftward=True)
        is_start, blocks, violated = pool(is_start, blocks, violated, leftward=False)
        return is_start, blocks, violated, rounds + 2

    _, blocks, _, rounds = lax.while_loop(cond, body, (is_start, blocks, violated, jnp.int32(1)))
    return blocks, rounds


def _isotonic_sequential(x, kind, reg, inv_eps) -> tuple[_Blocks, jax.Array]:
    """Classic pool-adjacent-violators on descending rows x (R, n); returns (blocks, rounds = n).

    One step per sorted position, all rows at once: push the position as a one-element block,
    then merge the top block with the one below it while the two violate (each row stops on its
    own; the step ends when no row merges). Total work O(n) per row, but n sequential steps:
    cheap on CPU, where a step costs a few small kernels, and the reason this is not used on
    GPU/TPU.

    No stack is stored. The block below a top block starting at t is fixed from the step that
    pushed t until t is merged away, so it is written once, at row t of `below_start` and
    `below_data` (an in-place row update per step). The final partition is read from the top
    block's start s_j after each step j: j ends a final block iff every later top starts after
    it, so p is a block start iff min_{j ≥ p} s_j = p (a reverse cumulative min).
    The pooled values are the ones `_extension_merges` compares: l2 means from the exact prefix
    sums, kl log-sum-exps.
    """
    r, n = x.shape
    d = x * inv_eps if kind == "rank" else x
    d_cols = d.T  # (n, R): every per-step read and write is one contiguous row.
    columns = lax.broadcasted_iota(jnp.int32, (r,), 0)
    if reg == "l2":
        hi, lo = (p.T for p in _exact_prefix_sums(d))

    def rho(start, end):
        return _rho_agg(start, (end - start).astype(d.dtype), n, kind, reg, inv_eps)

    def step(carry, j):
        below_start, below_data, top_start, top_data = carry
        below_start = lax.dynamic_update_index_in_dim(below_start, top_start, j, 0)
        below_data = lax.dynamic_update_index_in_dim(below_data, top_data, j, 0)
        end = j + 1

        def below(top_start, top_data):
            start, data = below_start[top_start, columns], below_data[top_start, columns]
            merge = (top_start > 0) & _violates(
                data, rho(start, top_start), top_data, rho(top_start, end), kind
            )
            return merge, start, data, top_start, top_data

        def pool(state):
            merge, start, data, top_start, top_data = state
            if reg == "l2":
                union_sum = (hi[end] - hi[start, columns]) + (lo[end] - lo[start, columns])
                union_data = union_sum / (end - start).astype(d.dtype)
            else:
                union_data = jnp.logaddexp(data, top_data)
            return below(jnp.where(merge, start, top_start), jnp.where(merge, union_data, top_data))

        # Every merge lowers top_start, and top_start > 0 is required: at most j merges per row,
        # whatever the values (NaN compares false and merges nothing).
        state = below(jnp.full_like(top_start, j), lax.dynamic_index_in_dim(d_cols, j, 0, False))
        top_start, top_data = lax.while_loop(lambda state: jnp.any(state[0]), pool, state)[3:]
        return (below_start, below_data, top_start, top_data), top_start

    # Derived from x, like the parallel solver's carry, so that shard_map's check_vma accepts it.
    init = (
        jnp.zeros_like(d_cols, jnp.int32), d_cols, jnp.zeros_like(d_cols[0], jnp.int32), d_cols[0]
    )
    _, tops = lax.scan(step, init, lax.iota(jnp.int32, n))
    positions = lax.broadcasted_iota(jnp.int32, (n, r), 0)
    is_start = (lax.cummin(tops, axis=0, reverse=True) == positions).T
    return _block_stats(x, is_start, kind, reg, inv_eps), jnp.int32(n)


def _isotonic(x, kind, reg, inv_eps, solver="auto") -> tuple[_Blocks, jax.Array]:
    """The isotonic solve: `solver` "auto" is sequential on CPU and parallel elsewhere.

    Both solvers return the same partition (tests compare them); the choice is only speed. With
    "auto" both are traced and lax.platform_dependent keeps the one for the platform the program
    is lowered for.
    """
    solvers = {"parallel": _isotonic_parallel, "sequential": _isotonic_sequential}
    if solver != "auto":
        return solvers[solver](x, kind, reg, inv_eps)
    return lax.platform_dependent(
        x, inv_eps,
        cpu=lambda x, inv_eps: _isotonic_sequential(x, kind, reg, inv_eps),
        default=lambda x, inv_eps: _isotonic_parallel(x, kind, reg, inv_eps),
    )


# ----------------------------------------------------------------------------- sorting


def _sort_keys(x: jax.Array) -> jax.Array:
    """Integer keys ordered like lax.sort orders `x`: −0.0 equals 0.0, every NaN sorts last.

    A float's bits read as a signed integer are ordered for non-negative values and reversed
    for negative ones, so the magnitude bits of negatives are flipped. Narrow floats are widened
    to float32 first (exactly); integers are their own keys and booleans become int32.
    """
    if x.dtype == jnp.bool_:
        return x.astype(jnp.int32)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return x
    x = x.astype(_compute_dtype(x.dtype))
    int_dtype = jnp.int64 if x.dtype == jnp.float64 else jnp.int32
    largest = jnp.iinfo(int_dtype).max
    bits = lax.bitcast_convert_type(x, int_dtype)
    bits = jnp.where(x == 0, 0, bits)
    bits = jnp.where(jnp.isnan(x), largest, bits)
    return jnp.where(bits < 0, bits ^ largest, bits)


def _values_of_sort_keys(keys: jax.Array, dtype) -> jax.Array:
    """Inverse of `_sort_keys` up to its canonical forms (0.0 for −0.0, one NaN for all NaNs)."""
    if not jnp.issubdtype(dtype, jnp.floating):
        return keys.astype(dtype)
    largest = jnp.iinfo(keys.dtype).max
    bits = jnp.where(keys < 0, keys ^ largest, keys)
    return lax.bitcast_convert_type(bits, _compute_dtype(dtype)).astype(dtype)


def _sorting_network(keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Ascending sort of the integer rows `keys` (R, n) by a bitonic network; (sorted, perm).

    Rows are padded to the next power of two m with the largest key. Every stage for blocks of
    size b = 2, 4, ..., m compare-exchanges the first half of each block with the reversed second
    half, then the two halves of every sub-block of size b/2, b/4, ..., 2: log2(m)(log2(m)+1)/2
    elementwise passes over reshaped views, with no gathers. Ties are broken by position, which
    makes the order strict: the result is the stable sort, identical to lax.sort with a position
    operand, and the padding (equal to the largest key but at later positions) sorts last.
    On CPU this beats XLA's comparison sort, which calls a comparator per comparison.
    """
    r, n = keys.shape
    m = 1 << (n - 1).bit_length()
    keys = jnp.pad(keys, ((0, 0), (0, m - n)), constant_values=jnp.iinfo(keys.dtype).max)
    perm = lax.broadcasted_iota(jnp.int32, (r, m), 1)

    def exchange(keys, perm, half, flip):
        k = keys.reshape(r, m // (2 * half), 2, half)
        p = perm.reshape(r, m // (2 * half), 2, half)
        k_a, p_a, k_b, p_b = k[:, :, 0], p[:, :, 0], k[:, :, 1], p[:, :, 1]
        if flip:
            k_b, p_b = k_b[..., ::-1], p_b[..., ::-1]
        swap = (k_b < k_a) | ((k_b == k_a) & (p_b < p_a))
        low = jnp.where(swap, k_b, k_a), jnp.where(swap, p_b, p_a)
        high = jnp.where(swap, k_a, k_b), jnp.where(swap, p_a, p_b)
        if flip:
            high = tuple(h[..., ::-1] for h in high)
        return tuple(jnp.stack([lo, hi], 2).reshape(r, m) for lo, hi in zip(low, high))

    block = 2
    while block <= m:
        keys, perm = exchange(keys, perm, block // 2, flip=True)
        half = block // 4
        while half >= 1:
            keys, perm = exchange(keys, perm, half, flip=False)
            half //= 2
        block *= 2
    return keys[:, :n], perm[:, :n]


def _sort_rows(x: jax.Array, sorter: str = "auto") -> tuple[jax.Array, jax.Array]:
    """Stable ascending sort of the rows of x (R, n): (sorted values, perm), perm[i, k] the
    input position of the k-th smallest.

    `sorter`: "network" (`_sorting_network`), "lax" (lax.sort with a position operand) or "auto",
    which traces both and lets lax.platform_dependent keep the network on CPU and lax.sort
    elsewhere. Both give the same perm (tests compare them). The network's values come back
    from its keys, so −0.0 returns as 0.0 and every NaN as one NaN: equal under comparison, and
    a row with NaN gives NaN anyway in every caller.
    """

    def network(x):
        keys, perm = _sorting_network(_sort_keys(x))
        return _values_of_sort_keys(keys, x.dtype), perm

    def lax_sort(x):
        iota = lax.broadcasted_iota(jnp.int32, x.shape, 1)
        return tuple(lax.sort((x, iota), dimension=1, num_keys=1))

    if sorter != "auto":
        return {"network": network, "lax": lax_sort}[sorter](x)
    return lax.platform_dependent(x, cpu=network, default=lax_sort)


# ----------------------------------------------------------------------------- soft operators


class _Solution(NamedTuple):
    out: jax.Array  # (R, n), in input order for ranks, sorted order for sorts
    out_sorted: jax.Array  # (R, n) in descending-sort order
    perm: jax.Array  # (R, n) int32: sorted position -> input position
    inv_perm: jax.Array | None  # (R, n) int32: input position -> sorted position (ranks only)
    blocks: _Blocks
    rounds: jax.Array  # int32 scalar


def _solve(x, inv_eps, kind, reg, solver="auto") -> _Solution:
    """Soft rank / soft sort of the rows of x (R, n), descending convention of the paper.

    `solver` picks the isotonic solve (see `_isotonic`); only tests and benchmarks set it.
    """
    r, n = x.shape
    iota = lax.broadcasted_iota(jnp.int32, (r, n), 1)
    neg_sorted, perm = _sort_rows(-x)
    blocks, rounds = _isotonic(-neg_sorted, kind, reg, inv_eps, solver)
    if kind == "rank":
        log_or_value = blocks.data_dev + blocks.rho_agg
        out_sorted = log_or_value if reg == "l2" else jnp.exp(log_or_value)
        rows = lax.broadcasted_iota(jnp.int32, (r, n), 0)
        inv_perm = jnp.zeros((r, n), jnp.int32).at[rows, perm].set(iota, unique_indices=True)
        out = jnp.take_along_axis(out_sorted, inv_perm, axis=1)
    else:
        out_sorted = blocks.rho_dev + blocks.data_agg
        inv_perm = None  # Sorts keep their output in sorted order.
        out = out_sorted
    return _Solution(out, out_sorted, perm, inv_perm, blocks, rounds)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _soft_op(x, inv_eps, kind, reg, solver):
    return _solve(x, inv_eps, kind, reg, solver).out


@_soft_op.defjvp
def _soft_op_jvp(kind, reg, solver, primals, tangents):
    """Block-constant derivative, linear in the tangent of x (the tangent of ε is not used).

    rank: dr_sorted = c ⊙ (ds − Σ_B p ds), ds = sorted dθ / ε, c = 1 (l2) or r_sorted (kl);
    sort: ds_out = Σ_B p dθ_sorted; p = the block weights (1/|B| or the block softmax).
    """
    x, inv_eps = primals
    dx, _ = tangents
    sol = _solve(x, inv_eps, kind, reg, solver)
    blocks = sol.blocks
    dx_sorted = jnp.take_along_axis(dx, sol.perm, axis=1)
    if kind == "sort":
        return sol.out, _block_sum(blocks.weights * dx_sorted, blocks.flat_ids)
    ds = dx_sorted * inv_eps
    dout_sorted = ds - _block_sum(blocks.weights * ds, blocks.flat_ids)
    if reg == "kl":
        dout_sorted = sol.out_sorted * dout_sorted
    return sol.out, jnp.take_along_axis(dout_sorted, sol.inv_perm, axis=1)


def _prepare(values, regularization_strength, regularization, direction):
    """Validates, flattens to rows (R, n) in the compute dtype and applies the direction's sign."""
    values = _check_values(values)
    _check_options(regularization_strength, regularization, direction)
    dtype = _compute_dtype(values.dtype)
    # Not reshape(-1, n): with n = 0 the row count cannot be inferred from zero elements.
    x = values.astype(dtype).reshape(math.prod(values.shape[:-1]), values.shape[-1])
    if direction == "descending":
        x = -x
    inv_eps = 1.0 / lax.stop_gradient(jnp.asarray(regularization_strength, dtype))
    return values, x, inv_eps


def _finish(out, values, x):
    """Rows holding NaN or ±inf become NaN; back to the input's shape and dtype."""
    finite_row = jnp.all(jnp.isfinite(x), axis=1, keepdims=True)
    out = jnp.where(finite_row, out, jnp.nan)
    return out.reshape(values.shape).astype(values.dtype)


@functools.partial(jax.jit, static_argnames=("kind", "reg", "solver"))
def _soft_op_rows(x, inv_eps, kind, reg, solver="auto"):
    """`solver` (see `_isotonic`) is for tests; the public operators use "auto"."""
    return _soft_op(x, inv_eps, kind, reg, solver)


def soft_rank(
    values,
    *,
    regularization_strength=1.0,
    regularization: str = "l2",
    direction: str = "ascending",
) -> jax.Array:
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

    Cost: one sort, then O(n) work per solver round (see module docstring); the JVP and the VJP
    are O(n) (block averaging). Works under jit, vmap, grad and jvp.
    """
    values, x, inv_eps = _prepare(values, regularization_strength, regularization, direction)
    if x.shape[1] == 0:
        return values
    return _finish(_soft_op_rows(x, inv_eps, "rank", regularization), values, x)


def soft_sort(
    values,
    *,
    regularization_strength=1.0,
    regularization: str = "l2",
    direction: str = "ascending",
) -> jax.Array:
    """Soft (differentiable) sort of `values` along the last axis.

    s(θ) is the projection of ρ/ε onto the permutahedron of θ (l2) or its KL analogue (Blondel
    et al. 2020, eq. 5 and §3), with ρ = (n, ..., 1). As ε → 0 it tends to the sorted values; as
    ε → ∞ every entry tends to the mean of the row (l2) or to its log-mean-exp (kl; for
    "ascending", −log-mean-exp(−θ)). Each row of the output is ordered. Here 1/ε is in the units
    of `values`: with l2, consecutive outputs inside a pooled block are exactly 1/ε apart, so
    gaps between sorted values wider than about 1/ε are shrunk and narrower ones are kept.

    Args and returns: as `soft_rank`, with "ascending" giving increasing rows.
    """
    values, x, inv_eps = _prepare(values, regularization_strength, regularization, direction)
    if x.shape[1] == 0:
        return values
    # _prepare negated "descending" rows; the solver sorts in decreasing order, so "ascending"
    # is computed as −s(−θ).
    out = _soft_op_rows(-x, inv_eps, "sort", regularization)
    if direction == "ascending":
        out = -out
    return _finish(out, values, x)


@functools.partial(jax.jit, static_argnames=("kind", "reg"))
def _rounds_rows(x, inv_eps, kind, reg):
    return _solve(x, inv_eps, kind, reg, solver="parallel").rounds


def _solver_rounds(
    values,
    *,
    regularization_strength=1.0,
    regularization: str = "l2",
    direction: str = "ascending",
    kind: str = "rank",
) -> jax.Array:
    """Number of sequential passes of the parallel solver (the one used on GPU/TPU) for
    `soft_rank` (kind="rank") or `soft_sort` ("sort"); the CPU's sequential solver always makes n.

    One pass for the initial partition plus one per pooling round; over several rows, the
    largest count of any row (rows are solved together). For benchmarks and diagnostics.
    """
    values, x, inv_eps = _prepare(values, regularization_strength, regularization, direction)
    if kind == "sort":
        x = -x  # As in soft_sort.
    return _rounds_rows(x, inv_eps, kind, regularization)


# ----------------------------------------------------------------------------- hard rank


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
    """
    values = jnp.asarray(values)
    if values.ndim == 0:
        raise ValueError(
            "values must have at least one dimension (the last axis is ranked); got a 0-d array."
        )
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
