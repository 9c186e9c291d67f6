"""pairwise_dissimilarity against SciPy, its values and gradients at singular points, and the
row normalizer and exact rescale it is built on."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.spatial import distance

from pcjax.dissimilarity import (
    DISSIMILARITIES, l2_normalize, max_exponent, pairwise_dissimilarity,
)

KINDS = ("euclidean", "sqeuclidean", "cosine")


@pytest.fixture(scope="module")
def points():
    rng = np.random.default_rng(0)
    return rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def singular_points():
    """Rows: a zero vector, a duplicated point (rows 1 and 2), and a generic point."""
    return jnp.array([[0.0, 0.0, 0.0], [1.0, 2.0, -1.0], [1.0, 2.0, -1.0], [0.5, -1.0, 2.0]])


@pytest.mark.parametrize("kind", KINDS)
def test_matches_scipy_cdist(points, kind):
    x, y = points
    np.testing.assert_allclose(
        pairwise_dissimilarity(x, y, kind=kind), distance.cdist(x, y, kind), atol=1e-5
    )


@pytest.mark.parametrize("kind", KINDS)
def test_y_none_is_self_dissimilarity(points, kind):
    x, _ = points
    np.testing.assert_allclose(
        pairwise_dissimilarity(x, kind=kind), distance.cdist(x, x, kind), atol=1e-5
    )


def test_callable_kind_is_applied_to_every_pair(points):
    x, y = points
    manhattan = lambda u, v: jnp.sum(jnp.abs(u - v))  # noqa: E731
    np.testing.assert_allclose(
        pairwise_dissimilarity(x, y, kind=manhattan), distance.cdist(x, y, "cityblock"),
        rtol=1e-5,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_values_finite_at_zero_vectors_and_duplicates(singular_points, kind):
    values = pairwise_dissimilarity(singular_points, kind=kind)
    assert np.all(np.isfinite(values))
    assert abs(values[1, 2]) < 1e-5
    if kind == "cosine":
        np.testing.assert_allclose(values[0], 1.0)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_finite_at_zero_vectors_and_duplicates(singular_points, kind):
    weights = jnp.arange(16.0).reshape(4, 4)
    grad = jax.grad(lambda x: jnp.sum(weights * pairwise_dissimilarity(x, kind=kind)))(
        singular_points
    )
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_match_finite_differences_at_generic_points(points, kind):
    x, y = (a.astype(np.float64) for a in points)
    with jax.enable_x64(True):
        check_grads(
            lambda a: pairwise_dissimilarity(a, jnp.asarray(y), kind=kind), (jnp.asarray(x),),
            order=1, modes=("rev",), eps=1e-6,
        )


def test_bfloat16_features_give_float32_values(points):
    x, y = points
    low = pairwise_dissimilarity(x.astype(jnp.bfloat16), y.astype(jnp.bfloat16))
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(low, distance.cdist(x, y), rtol=2e-2, atol=2e-2)


def test_rejects_features_of_rank_other_than_two():
    with pytest.raises(ValueError, match="x must have shape"):
        pairwise_dissimilarity(jnp.ones((2, 3, 4)))


def test_rejects_mismatched_feature_sizes():
    with pytest.raises(ValueError, match="same feature size"):
        pairwise_dissimilarity(jnp.ones((2, 3)), jnp.ones((2, 4)))


def test_named_kinds_are_the_known_ones():
    assert DISSIMILARITIES == KINDS


def test_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind must be one of"):
        pairwise_dissimilarity(jnp.ones((2, 3)), kind="manhattan")


@pytest.mark.parametrize("kind", KINDS)
def test_nan_features_give_nan_dissimilarities(points, kind):
    x, y = points
    x = x.copy()
    x[0, 1] = np.nan
    values = pairwise_dissimilarity(x, y, kind=kind)
    assert np.all(np.isnan(values[0])) and np.all(np.isfinite(values[1:]))


def test_named_kinds_accept_python_lists(points):
    x, y = points
    np.testing.assert_array_equal(
        pairwise_dissimilarity(x.tolist(), y.tolist()), pairwise_dissimilarity(x, y)
    )


# ----------------------------------------------------------------------------- l2_normalize


@pytest.mark.parametrize("scale", [1.0, 1e30, 1e-30])
def test_l2_normalize_matches_numpy_at_any_finite_scale(points, scale):
    # In float32 the squared norm of rows of 1e30 overflows and of 1e-30 underflows; the
    # power-of-two rescale keeps every row exact.
    x = points[0] * np.float32(scale)
    expected = points[0] / np.linalg.norm(points[0].astype(np.float64), axis=-1, keepdims=True)
    np.testing.assert_allclose(l2_normalize(x), expected, rtol=1e-6, atol=1e-7)


def test_l2_normalize_eps_is_the_smallest_norm_divided_by_as_in_torch():
    x = np.array([[3e-13, 4e-13], [3.0, 4.0], [0.0, 0.0]], np.float32)
    got = l2_normalize(x, eps=1e-12)
    np.testing.assert_allclose(got, [[0.3, 0.4], [0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
    # Zero row: gradient 1 / eps per entry with eps (torch), 0 without.
    row_sum_grad = lambda eps: jax.grad(lambda v: l2_normalize(v, eps).sum())(x)[2]  # noqa: E731
    np.testing.assert_allclose(row_sum_grad(1e-12), [1e12, 1e12], rtol=1e-6)
    np.testing.assert_array_equal(row_sum_grad(0.0), [0.0, 0.0])


def test_l2_normalize_gradient_matches_finite_differences(points):
    check_grads(l2_normalize, (points[0].astype(np.float64),), order=1, modes=["rev"])


def test_l2_normalize_nan_or_inf_rows_give_nan():
    got = l2_normalize(jnp.array([[np.nan, 1.0], [np.inf, 1.0], [1.0, 0.0]]))
    assert np.all(np.isnan(got[:2])) and np.array_equal(got[2], [1.0, 0.0])


@pytest.mark.parametrize("value", [3.0, 1e20, 2.5e-30, 3e38])
def test_max_exponent_is_numpys_frexp_exponent_and_rescales_exactly(value):
    x = np.array([[value, -value / 3]], np.float32)
    exponent = max_exponent(x)
    assert exponent == np.frexp(np.float32(value))[1]
    np.testing.assert_array_equal(jnp.ldexp(x, -exponent), np.ldexp(x, -int(exponent)))


@pytest.mark.parametrize("value", [0.0, np.nan, np.inf])
def test_max_exponent_is_zero_for_zero_or_non_finite_input(value):
    assert max_exponent(jnp.full((2, 2), value)) == 0
