"""Pairwise dissimilarities between feature vectors, safe to differentiate everywhere.

A dissimilarity only has to order pairs (perception coherence compares ranks), so any of these
works as ``d_T`` or ``d_S`` in the loss (see perception_coherence_loss).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

Dissimilarity = str | Callable[[jax.Array, jax.Array], jax.Array]

DISSIMILARITIES = ("euclidean", "sqeuclidean", "cosine")


def _compute_dtype(*arrays: jax.Array) -> jnp.dtype:
    # Half-precision features are compared in float32: distances feed rankings, and bfloat16
    # has too few mantissa bits to separate close pairs.
    return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def _safe_sqrt(x: jax.Array) -> jax.Array:
    """sqrt with value 0 and gradient 0 at x <= 0 (instead of an infinite gradient at 0).

    NaN stays NaN (0 * x), so broken features stay visible.
    """
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0 * x)


def max_exponent(x: jax.Array) -> jax.Array:
    """The binary exponent e of max|x| (max|x| = f 2^e, f in [0.5, 1)), with no gradient.

    ``jnp.ldexp(x, -max_exponent(x))`` rescales x by a power of two, exactly, so that max|x| is
    in [0.5, 1): distances computed from it cannot overflow or underflow at any feature scale.
    e is 0 when x is all zero or holds NaN or Inf (x is then left as it is).

    Args:
      x: an array of any shape, floating.

    Returns:
      int32 scalar.

    Examples:
      >>> import jax.numpy as jnp
      >>> from pcjax.dissimilarity import max_exponent
      >>> x = jnp.array([[3.0, -1.0]]) * 2.0**70
      >>> print(max_exponent(x), jnp.ldexp(x, -max_exponent(x)))
      72 [[ 0.75 -0.25]]
    """
    return jnp.frexp(jax.lax.stop_gradient(jnp.max(jnp.abs(x))))[1]


def l2_normalize(x: jax.Array, eps: float = 0.0) -> jax.Array:
    """x / max(||x||, eps) along the last axis, in float32 (float64 for float64 input).

    Computed on each row rescaled by a power of two (exact), so no norm overflows or
    underflows at any finite scale. A zero row stays zero: with eps = 0 its gradient is 0, with
    eps > 0 it is 1 / eps (``torch.nn.functional.normalize``). A row holding NaN or Inf is
    all NaN.

    Args:
      x: (..., d) features.
      eps: the smallest norm divided by, >= 0.

    Returns:
      An array of x's shape.

    Examples:
      >>> import jax.numpy as jnp
      >>> from pcjax.dissimilarity import l2_normalize
      >>> print(l2_normalize(jnp.array([[0.0, 2.0], [0.0, 0.0], [-3.0 * 2.0**100, 0.0]])))
      [[ 0.  1.]
       [ 0.  0.]
       [-1.  0.]]
    """
    x = jnp.asarray(x)
    x = x.astype(_compute_dtype(x))
    exponent = jnp.frexp(jax.lax.stop_gradient(jnp.max(jnp.abs(x), axis=-1, keepdims=True)))[1]
    scaled = jnp.ldexp(x, -exponent)
    norm = _safe_sqrt(jnp.sum(scaled * scaled, axis=-1, keepdims=True))
    denominator = jnp.maximum(norm, jnp.ldexp(jnp.asarray(eps, x.dtype), -exponent))
    positive = denominator > 0
    unit = jnp.where(positive, scaled / jnp.where(positive, denominator, 1.0), 0.0)
    return unit + 0.0 * denominator  # A NaN or Inf anywhere in a row makes all of it NaN.


def _squared_euclidean(x: jax.Array, y: jax.Array) -> jax.Array:
    # ||x||^2 + ||y||^2 - 2 x.y costs one matmul and O(n m) memory; the direct form would
    # materialize an (n, m, d) difference tensor. Rounding can make it slightly negative.
    cross = x @ y.T
    squared = jnp.sum(x * x, axis=-1)[:, None] + jnp.sum(y * y, axis=-1)[None, :] - 2.0 * cross
    return jnp.maximum(squared, 0.0)


def check_dissimilarity(kind: Dissimilarity, argument: str) -> None:
    """Raises ValueError naming `argument` unless `kind` is a known name or a callable.

    Examples:
      >>> from pcjax.dissimilarity import check_dissimilarity
      >>> check_dissimilarity("cosine", "kind")
      >>> check_dissimilarity("manhattan", "kind")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: kind must be one of ('euclidean', 'sqeuclidean', 'cosine') or a callable ...
    """
    if not callable(kind) and kind not in DISSIMILARITIES:
        raise ValueError(
            f"{argument} must be one of {DISSIMILARITIES} or a callable d(u, v) -> scalar, "
            f"got {kind!r}."
        )


def pairwise_dissimilarity(
    x: jax.Array, y: jax.Array | None = None, kind: Dissimilarity = "euclidean"
) -> jax.Array:
    """All pairwise dissimilarities between the rows of ``x`` and the rows of ``y``.

    Kinds, for rows u of x and v of y:
        * ``"euclidean"``:   ||u - v||_2
        * ``"sqeuclidean"``: ||u - v||_2^2
        * ``"cosine"``:      1 - <u, v> / (||u|| ||v||), in [0, 2]; a zero vector has cosine 0 with
            everything, i.e. dissimilarity 1.
        * a callable ``d(u, v)`` taking two (d,) vectors and returning a scalar; it is vmapped over
            both batches (so it may build O(n m d) intermediates).

    Values and gradients are finite at zero vectors and at duplicate points (where the euclidean
    distance is not differentiable, the gradient returned is 0, a valid subgradient).

    Args:
        x: (n, d) features.
        y: (m, d) features; ``None`` means ``x`` (the (n, n) self-dissimilarity matrix).
        kind: one of ``"euclidean"``, ``"sqeuclidean"``, ``"cosine"`` or a callable.

    Returns:
        (n, m) dissimilarities, in float32 (or float64 for float64 input).

    Examples:
      >>> import jax.numpy as jnp
      >>> from pcjax.dissimilarity import pairwise_dissimilarity
      >>> x = jnp.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
      >>> print(pairwise_dissimilarity(x))
      [[ 0.  5. 10.]
       [ 5.  0.  5.]
       [10.  5.  0.]]
      >>> print(pairwise_dissimilarity(jnp.array([[1.0, 0.0]]), 2.0 * jnp.eye(2), "cosine"))
      [[0. 1.]]
    """
    check_dissimilarity(kind, "kind")
    y_given = y is not None
    x = jnp.asarray(x)
    y = x if y is None else jnp.asarray(y)
    for name, value in (("x", x), ("y", y)):
        if value.ndim != 2:
            raise ValueError(f"{name} must have shape (batch, features), got shape {value.shape}.")
    if y_given and x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y must have the same feature size, got x {x.shape} and y {y.shape}."
        )
    dtype = _compute_dtype(x, y)
    x, y = x.astype(dtype), y.astype(dtype)
    if callable(kind):
        return jax.vmap(lambda u: jax.vmap(lambda v: kind(u, v))(y))(x).astype(dtype)
    if kind == "cosine":
        return 1.0 - l2_normalize(x) @ l2_normalize(y).T
    squared = _squared_euclidean(x, y)
    return squared if kind == "sqeuclidean" else _safe_sqrt(squared)
