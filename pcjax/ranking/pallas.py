"""Pool adjacent violators as a Pallas kernel: one program per row, its loops on the device.

Unlike the parallel solver's `while_loop`, whose condition a GPU copies to the host each round,
each program runs the stack PAV over its sorted row inside the kernel; blocks are centred on
their first value as in the compiled CPU solver. Tested in interpret mode on CPU; opt-in on GPU
(solver="pallas") until measured there.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pcjax.ranking.blocks import _Blocks, _block_stats


def _kernel(x_ref, eps_ref, start_ref, s_start, s_count, s_first, s_agg, *, n, kind, reg):
    inv_eps = eps_ref[0, 0]
    scale = inv_eps if kind == "rank" else 1.0

    def centred_agg(j):
        return s_agg[0, j] / s_count[0, j] * scale if reg == "l2" else s_agg[0, j]

    def rho(j):  # The ρ side relative to (n − start)/ε for sorts (blocks._rho_agg).
        start, count = s_start[0, j].astype(x_ref.dtype), s_count[0, j]
        if kind == "sort":
            if reg == "l2":
                return -start * inv_eps - 0.5 * (count - 1) * inv_eps
            return -start * inv_eps + jnp.log(-jnp.expm1(-count * inv_eps))
        mean = n - start - 0.5 * (count - 1)
        return mean if reg == "l2" else jnp.log(count * mean)

    def violates(top):
        left, right = jnp.maximum(top - 2, 0), top - 1
        data_step = (s_first[0, left] - s_first[0, right]) * scale + (
            centred_agg(left) - centred_agg(right)
        )
        rho_step = rho(left) - rho(right)
        bad = data_step < rho_step if kind == "rank" else rho_step < data_step
        return (top > 1) & bad

    def merge(top):
        left, right = top - 2, top - 1
        shift = s_first[0, right] - s_first[0, left]
        if reg == "l2":
            s_agg[0, left] = s_agg[0, left] + s_agg[0, right] + s_count[0, right] * shift
        else:
            s_agg[0, left] = jnp.logaddexp(s_agg[0, left], s_agg[0, right] + shift * scale)
        s_count[0, left] = s_count[0, left] + s_count[0, right]
        return top - 1

    def push(i, top):
        s_start[0, top] = i
        s_count[0, top] = jnp.ones((), x_ref.dtype)
        s_first[0, top] = x_ref[0, i]
        s_agg[0, top] = jnp.zeros((), x_ref.dtype)
        # The test is carried, not evaluated by the loop condition: refs are read in the body
        # only, after its writes (interpret mode's condition would see them before).
        def step(state):
            top = merge(state[0])
            return top, violates(top)

        return lax.while_loop(lambda state: state[1], step, (top + 1, violates(top + 1)))[0]

    top = lax.fori_loop(0, n, push, jnp.int32(0))

    def fill(j, _):
        start = s_start[0, j]

        def write(i, _):
            start_ref[0, i] = start

        lax.fori_loop(start, start + s_count[0, j].astype(jnp.int32), write, None)

    lax.fori_loop(0, top, fill, None)


def _isotonic_pallas(x, kind, reg, inv_eps, interpret=False) -> tuple[_Blocks, jax.Array]:
    """PAV on descending rows x (R, n) in a Pallas kernel; returns (blocks, rounds = n)."""
    r, n = x.shape
    m = 1 << (n - 1).bit_length()  # Blocks of a power-of-two width, as Triton needs.
    padded = jnp.pad(x, ((0, 0), (0, m - n)))
    eps = jnp.broadcast_to(jnp.asarray(inv_eps, x.dtype), (r, 1))
    row = pl.BlockSpec((1, m), lambda i: (i, 0))
    shapes = [jax.ShapeDtypeStruct((r, m), t) for t in (jnp.int32, jnp.int32, x.dtype)]
    starts = pl.pallas_call(
        functools.partial(_kernel, n=n, kind=kind, reg=reg),
        out_shape=shapes + shapes[2:] * 2,
        grid=(r,),
        in_specs=[row, pl.BlockSpec((1, 1), lambda i: (i, 0))],
        out_specs=[row] * 5,
        interpret=interpret,
        compiler_params=pltriton.CompilerParams(num_warps=1),
    )(padded, eps)[0][:, :n]
    is_start = starts == lax.broadcasted_iota(jnp.int32, (r, n), 1)
    return _block_stats(x, is_start, kind, reg, inv_eps), jnp.int32(n)
