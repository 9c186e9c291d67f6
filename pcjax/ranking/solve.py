"""Soft rank / soft sort of (R, n) rows: sort, isotonic solve and block-constant JVP."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from pcjax.ranking.blocks import _block_sum, _Blocks
from pcjax.ranking.isotonic import _isotonic
from pcjax.ranking.sort import _sort_rows

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


@functools.partial(jax.jit, static_argnames=("kind", "reg", "solver"))
def _soft_op_rows(x, inv_eps, kind, reg, solver="auto"):
    """`solver` (see `_isotonic`) is for tests; the public operators use "auto"."""
    return _soft_op(x, inv_eps, kind, reg, solver)
