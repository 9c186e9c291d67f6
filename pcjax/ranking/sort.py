"""Stable row sorts: a bitonic network on CPU, lax.sort elsewhere."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from pcjax.ranking.checks import _compute_dtype


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

    Rows are padded to a power of two m with the largest key; log2(m)(log2(m)+1)/2 elementwise
    compare-exchange passes over reshaped views, no gathers. Ties are broken by position: the
    stable sort, identical to lax.sort with a position operand (the padding sorts last).
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

    `sorter`: "network" (`_sorting_network`), "lax" (lax.sort with a position operand) or "auto"
    (the network on CPU, lax.sort elsewhere, by lax.platform_dependent); the same perm. The
    network returns −0.0 as 0.0 and every NaN as one NaN (a NaN row gives NaN in every caller).
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
