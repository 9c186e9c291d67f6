"""Soft rank / soft sort of (R, n) rows: sort, isotonic solve and block-constant JVP."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from pcjax.ranking import native
from pcjax.ranking.blocks import _Blocks
from pcjax.ranking.isotonic import _isotonic
from pcjax.ranking.sort import _sort_rows


class _Solution(NamedTuple):
    out: jax.Array  # (R, n), in input order for ranks, (descending) sorted order for sorts
    inv_perm: jax.Array  # (R, n) int32: input position -> sorted position
    blocks: _Blocks
    rounds: jax.Array  # int32 scalar


def _solve(x, inv_eps, kind, reg, solver="auto") -> _Solution:
    """Soft rank / soft sort of the rows of x (R, n), descending convention of the paper.

    `solver` picks the isotonic solve (see `_isotonic`); only tests and benchmarks set it.
    """
    r, n = x.shape
    iota = lax.broadcasted_iota(jnp.int32, (r, n), 1)
    # Soft ranks are shift-invariant and soft sorts shift-equivariant: rows centred on their
    # midrange keep float32 resolution next to a large common offset (1e9 + small differences).
    centre = lax.stop_gradient(jnp.max(x, 1, keepdims=True) / 2 + jnp.min(x, 1, keepdims=True) / 2)
    x = x - centre
    neg_sorted, perm = _sort_rows(-x)
    blocks, rounds = _isotonic(-neg_sorted, kind, reg, inv_eps, solver)
    rows = lax.broadcasted_iota(jnp.int32, (r, n), 0)
    inv_perm = jnp.zeros((r, n), jnp.int32).at[rows, perm].set(iota, unique_indices=True)
    if kind == "rank":
        log_or_value = blocks.data_dev + blocks.rho_agg
        out_sorted = log_or_value if reg == "l2" else jnp.exp(log_or_value)
        out = jnp.take_along_axis(out_sorted, inv_perm, axis=1)
    else:
        out = blocks.rho_dev + blocks.data_agg + centre  # Sorts keep their output in sorted order.
    return _Solution(out, inv_perm, blocks, rounds)


def _jax_rows(x, inv_eps, kind, reg, solver):
    """`_rows` of the pure-JAX solvers."""
    sol = _solve(x, inv_eps, kind, reg, solver)
    start_in, weight_in = (
        jnp.take_along_axis(v, sol.inv_perm, axis=1) for v in (sol.blocks.start, sol.blocks.weights)
    )
    return sol.out, start_in, weight_in, sol.blocks.start


def _rows(x, inv_eps, kind, reg, solver):
    """(out, start_in, weight_in, start_sorted), each (R, n): the output (input order for ranks,
    sorted order for sorts), each element's block start (a sorted position) and averaging weight
    in input order, and the block start of each sorted position: what the JVP needs.

    `solver`: "compiled" runs the C++ solver (`native`) on CPU and the parallel solver elsewhere;
    "auto", "sequential" and "parallel" are the pure-JAX solvers of `_isotonic`.
    """
    if solver != "compiled":
        return _jax_rows(x, inv_eps, kind, reg, solver)
    return lax.platform_dependent(
        x, inv_eps,
        cpu=functools.partial(native.solve_rows, kind=kind, reg=reg),
        default=functools.partial(_jax_rows, kind=kind, reg=reg, solver="parallel"),
    )


def _row_block_sums(v, starts):
    """Σ of v (R, n) over each row's blocks, indexed by block start; linear, so transposable."""
    n = v.shape[1]
    return jax.vmap(lambda v, s: jax.ops.segment_sum(v, s, num_segments=n))(v, starts)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _soft_op(x, inv_eps, kind, reg, solver):
    return _rows(x, inv_eps, kind, reg, solver)[0]


@_soft_op.defjvp
def _soft_op_jvp(kind, reg, solver, primals, tangents):
    """Block-constant derivative, linear in the tangent of x (the tangent of ε is not used).

    rank: dr = c ⊙ (ds − Σ_B p ds), ds = dθ / ε, c = 1 (l2) or r (kl); sort: ds_out = Σ_B p dθ
    over the block of each sorted position; p = the block weights (1/|B| or the block softmax).
    """
    x, inv_eps = primals
    dx, _ = tangents
    out, start_in, weight_in, start_sorted = _rows(x, inv_eps, kind, reg, solver)
    if kind == "sort":
        sums = _row_block_sums(weight_in * dx, start_in)
        return out, jnp.take_along_axis(sums, start_sorted, axis=1)
    ds = dx * inv_eps
    dout = ds - jnp.take_along_axis(_row_block_sums(weight_in * ds, start_in), start_in, axis=1)
    return out, dout if reg == "l2" else out * dout


@functools.partial(jax.jit, static_argnames=("kind", "reg", "solver"))
def _soft_op_rows(x, inv_eps, kind, reg, solver="auto"):
    """`solver`: see `_rows`; the public operators pick "compiled" or "auto" (`native`)."""
    return _soft_op(x, inv_eps, kind, reg, solver)
