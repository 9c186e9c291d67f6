"""The isotonic solves: parallel pooling rounds (GPU/TPU) and sequential PAV (CPU)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from pcjax.ranking.blocks import (
    _block_stats, _Blocks, _count, _exact_prefix_sums, _rho_agg, _violates, _violations,
)
from pcjax.ranking.pallas import _isotonic_pallas


def _segmented_scan(ops, values, reset, reverse):
    """Inclusive scans of `values` along axis 1, restarting where `reset` is set.

    ops[k] is the associative operation of values[k]; with reverse=True the scan runs from the
    right and `reset` marks the first element (in scan order) of each segment.
    """

    def combine(earlier, later):
        (earlier_values, earlier_reset), (later_values, later_reset) = earlier, later
        merged = tuple(
            jnp.where(later_reset, b, op(a, b))
            for op, a, b in zip(ops, earlier_values, later_values)
        )
        return merged, earlier_reset | later_reset

    return lax.associative_scan(combine, (tuple(values), reset), reverse=reverse, axis=1)[0]


def _extension_merges(x, prefix, is_start, blocks: _Blocks, violated, kind, reg, inv_eps, leftward):
    """(R, n) bool: the block starts to remove in one pooling round (docs/soft_rank.md).

    Every active block absorbs the run of blocks on its left (rightward: right) that keep
    violating against the growing union, up to the next active block: a valid sequence of single
    pools, and the absorbed blocks are the run's prefix up to its first failure (a segment max).
    The union's value is a difference of the exact prefix sums `prefix` for l2 and a segmented
    log-sum-exp scan for kl.
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
    segment_op = jax.ops.segment_max if leftward else jax.ops.segment_min

    def over_segments(v, ids):
        """Each element gets the max (leftward) or min (rightward) of v (R, n') over its segment."""
        return segment_op(
            v.reshape(-1), ids.reshape(-1), num_segments=r * n, indices_are_sorted=True
        )[ids]

    if reg == "l2":
        # Leftward the union is [i, segment end], rightward [segment start, i].
        far = over_segments(iota, segment_ids)
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
            blocks.data_agg[:, :-1], blocks.rho_agg[:, :-1], union_data[:, 1:], union_rho[:, 1:],
            kind,
        )
        segment_ids = segment_ids[:, 1:]
    else:  # The union ending at p−1 against the block at p.
        absorbs = _violates(
            union_data[:, :-1], union_rho[:, :-1], blocks.data_agg[:, 1:], blocks.rho_agg[:, 1:],
            kind,
        )
        segment_ids = segment_ids[:, :-1]
    candidate = is_start[:, 1:]
    boundary = iota[:, 1:]
    failed = candidate & ~absorbs
    # The first failing boundary seen from the active block ends its run.
    first_failure = over_segments(jnp.where(failed, boundary, -1 if leftward else n), segment_ids)
    merge = candidate & ((boundary > first_failure) if leftward else (boundary < first_failure))
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

    One step per sorted position, all rows at once: push the position, then merge the top block
    with the one below while they violate. No stack is stored: the block below a top block
    starting at t is written once, at row t of `below_start` / `below_data`. p is a final block
    start iff min_{j ≥ p} s_j = p, s_j the top block's start after step j (a reverse cummin).
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
    """The isotonic solve: `solver` "auto" is sequential on CPU and parallel elsewhere (chosen by
    lax.platform_dependent when lowered); "pallas" / "pallas_interpret" run `pallas`.
    """
    solvers = {
        "parallel": _isotonic_parallel, "sequential": _isotonic_sequential,
        "pallas": _isotonic_pallas,
        "pallas_interpret": functools.partial(_isotonic_pallas, interpret=True),
    }
    if solver != "auto":
        return solvers[solver](x, kind, reg, inv_eps)
    return lax.platform_dependent(
        x, inv_eps,
        cpu=lambda x, inv_eps: _isotonic_sequential(x, kind, reg, inv_eps),
        default=lambda x, inv_eps: _isotonic_parallel(x, kind, reg, inv_eps),
    )
