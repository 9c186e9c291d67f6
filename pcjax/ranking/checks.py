"""Argument checks of the ranking operators and their compute dtype."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_REGULARIZATIONS = ("l2", "kl")
_DIRECTIONS = ("ascending", "descending")


def _check_values(values, floating: bool = True) -> jax.Array:
    """`values` as an array of at least one dimension; of a floating dtype if `floating`."""
    values = jnp.asarray(values)
    if values.ndim == 0:
        raise ValueError(
            "values must have at least one dimension (the last axis is ranked); got a 0-d array."
        )
    if floating and not jnp.issubdtype(values.dtype, jnp.floating):
        raise ValueError(f"values must have a floating dtype; got {values.dtype}.")
    return values


def _check_options(regularization_strength, regularization, direction, dtype=jnp.float32) -> None:
    """ValueError naming the first bad option; ε must be a normal number of the compute `dtype`
    (a subnormal ε is flushed to zero on CPU, and 1/ε would overflow)."""
    if regularization not in _REGULARIZATIONS:
        raise ValueError(
            f"regularization must be one of {_REGULARIZATIONS}; got {regularization!r}."
        )
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
            "regularization_strength must be a positive finite number; got "
            f"{regularization_strength!r}."
        )
    finfo = jnp.finfo(dtype)
    if not float(finfo.tiny) <= strength <= float(finfo.max):
        raise ValueError(
            f"regularization_strength must be between {finfo.tiny} and {finfo.max} to be a "
            f"normal {finfo.dtype} number with a finite 1/ε; got {regularization_strength!r}."
        )


def _check_direction(direction) -> None:
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be one of {_DIRECTIONS}; got {direction!r}.")


def _compute_dtype(dtype) -> jnp.dtype:
    """float32 for float32 and narrower floats (bfloat16, float16); float64 stays float64."""
    return jnp.promote_types(dtype, jnp.float32)
