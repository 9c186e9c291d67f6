"""pairwise_dissimilarity against SciPy, and its values and gradients at singular points."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.spatial import distance

from pcjax.dissimilarity import DISSIMILARITIES, pairwise_dissimilarity

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
