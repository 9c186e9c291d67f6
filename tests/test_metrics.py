"""Metrics against SciPy and scikit-learn references."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial import distance
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors
from sklearn.preprocessing import StandardScaler

from float32 import assert_close
from pcjax import metrics

N = 20


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(N, 4)).astype(np.float32)
    student = (teacher[:, :2] + 0.7 * rng.normal(size=(N, 2))).astype(np.float32)
    return student, teacher


def _spearman_reference(student, teacher, valid):
    d_s = distance.cdist(student[valid], student[valid])
    d_t = distance.cdist(teacher[valid], teacher[valid])
    n = len(d_s)
    rows = [spearmanr(np.delete(d_s[i], i), np.delete(d_t[i], i)).statistic for i in range(n)]
    return np.mean(rows)


@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_pc_score_matches_scipy_spearman_for_any_chunk_size(features, chunk_size):
    student, teacher = features
    np.testing.assert_allclose(
        metrics.pc_score(student, teacher, chunk_size=chunk_size),
        _spearman_reference(student, teacher, np.ones(N, bool)),
        rtol=1e-5,
    )


def test_pc_score_with_mask_ignores_padding(features):
    student, teacher = features
    valid = np.arange(N) < 15
    padded_student = np.where(valid[:, None], student, 1e6)
    np.testing.assert_allclose(
        metrics.pc_score(padded_student, teacher, mask=valid, chunk_size=4),
        _spearman_reference(student, teacher, valid),
        rtol=1e-5,
    )


def test_pc_score_with_ties_matches_scipy(features):
    _, teacher = features
    student = np.round(teacher[:, :1] * 2)  # many equal distances
    np.testing.assert_allclose(
        metrics.pc_score(student, teacher),
        _spearman_reference(student, teacher, np.ones(N, bool)),
        rtol=1e-5,
    )


def test_pc_score_is_one_up_to_rotation_translation_and_scale(features):
    _, teacher = features
    rotation, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(4, 4)))
    # Exact ranks (the distances of these random points are far from ties even after float32
    # rounding); the Spearman correlation itself is a float32 mean, hence atol=1e-5.
    np.testing.assert_allclose(
        metrics.pc_score(5 * teacher @ rotation + 3, teacher), 1.0, atol=1e-5
    )


def test_pc_score_is_minus_one_for_reversed_order(features):
    _, teacher = features
    reversed_distance = lambda u, v: -jnp.sqrt(jnp.sum((u - v) ** 2))  # noqa: E731
    np.testing.assert_allclose(
        metrics.pc_score(teacher, teacher, student_dissimilarity=reversed_distance), -1.0,
        atol=1e-5,
    )


def test_pc_score_is_near_zero_for_random_student():
    rng = np.random.default_rng(2)
    score = metrics.pc_score(rng.normal(size=(300, 3)), rng.normal(size=(300, 3)))
    assert abs(score) < 0.05


def test_accuracy_counts_valid_examples_only():
    logits = jnp.array([[2.0, 1.0], [0.0, 3.0], [5.0, 0.0], [0.0, 1.0]])
    labels = jnp.array([0, 1, 1, 0])
    assert metrics.accuracy(logits, labels) == 0.5
    assert metrics.accuracy(logits, labels, mask=jnp.array([True, True, False, False])) == 1.0


@pytest.fixture(scope="module")
def classification():
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(3, 6)) * 2.0
    labels = rng.integers(0, 3, size=160)
    x = (centers[labels] + rng.normal(size=(160, 6)) * 1.5).astype(np.float32)
    return x[:100], labels[:100], x[100:], labels[100:]


def test_knn_majority_vote_matches_scikit_learn(classification):
    x_train, y_train, x_test, y_test = classification
    reference = KNeighborsClassifier(n_neighbors=5, metric="cosine").fit(x_train, y_train)
    np.testing.assert_allclose(
        metrics.knn_accuracy(x_train, y_train, x_test, y_test, k=5, vote="majority",
                             chunk_size=16),
        reference.score(x_test, y_test),
        atol=1 / 60 + 1e-6,  # one test example may land on a different side of a vote tie
    )


def test_knn_masked_training_examples_are_never_neighbours(classification):
    x_train, y_train, x_test, y_test = classification
    decoy = np.concatenate([x_test, x_train])  # test points themselves, with wrong labels
    decoy_labels = np.concatenate([(y_test + 1) % 3, y_train])
    train_mask = np.arange(len(decoy)) >= len(x_test)
    np.testing.assert_allclose(
        metrics.knn_accuracy(decoy, decoy_labels, x_test, y_test, train_mask=train_mask),
        metrics.knn_accuracy(x_train, y_train, x_test, y_test),
    )


def test_linear_probe_matches_scikit_learn_logistic_regression(classification):
    x_train, y_train, x_test, y_test = classification
    l2 = 1e-2
    scaler = StandardScaler().fit(x_train)
    reference = LogisticRegression(C=1.0 / (l2 * len(x_train)), max_iter=1000).fit(
        scaler.transform(x_train), y_train
    )
    accuracy = metrics.linear_probe_accuracy(x_train, y_train, x_test, y_test, l2=l2, steps=50)
    np.testing.assert_allclose(
        accuracy, reference.score(scaler.transform(x_test), y_test), atol=1 / 60 + 1e-6
    )


def test_metrics_reject_mismatched_labels():
    with pytest.raises(ValueError, match="labels must have shape"):
        metrics.accuracy(jnp.ones((4, 3)), jnp.ones((5,), int))
    with pytest.raises(ValueError, match="test_labels must have shape"):
        metrics.knn_accuracy(jnp.ones((4, 3)), jnp.zeros(4, int), jnp.ones((2, 3)),
                             jnp.zeros(3, int))


# ----------------------------------------------------------------------------- linear CKA


def _cka_reference(x, y):
    """Kornblith et al. 2019, eq. 4 with linear kernels, in float64 on the feature side."""
    x, y = (np.asarray(a, np.float64) for a in (x, y))
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def test_linear_cka_matches_numpy_reference_and_its_kernel_form(features):
    student, teacher = features
    expected = _cka_reference(student, teacher)
    # The same number through the (N, N) centred Gram matrices: HSIC(K, L) / sqrt(...).
    centring = np.eye(N) - 1.0 / N
    gram = lambda a: centring @ (a @ a.T) @ centring  # noqa: E731
    k, l = gram(student.astype(np.float64)), gram(teacher.astype(np.float64))
    np.testing.assert_allclose(np.sum(k * l) / np.sqrt(np.sum(k * k) * np.sum(l * l)), expected)
    assert_close(metrics.linear_cka(student, teacher), expected)


def test_linear_cka_is_one_up_to_rotation_translation_and_scale_at_any_scale(features):
    _, teacher = features
    rotation, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(4, 4)))
    for scale in (1e-20, 1.0, 1e20):
        moved = (scale * (teacher @ rotation + 3)).astype(np.float32)
        np.testing.assert_allclose(metrics.linear_cka(moved, teacher), 1.0, rtol=1e-5)


def test_linear_cka_with_mask_ignores_padding(features):
    student, teacher = features
    valid = np.arange(N) < 13
    padded = np.where(valid[:, None], student, np.nan)
    assert_close(
        metrics.linear_cka(padded, teacher, mask=valid),
        _cka_reference(student[valid], teacher[valid]),
    )


def test_linear_cka_is_nan_when_undefined(features):
    student, teacher = features
    broken = student.copy()
    broken[2, 0] = np.inf
    assert np.isnan(metrics.linear_cka(broken, teacher))
    assert np.isnan(metrics.linear_cka(np.ones_like(student), teacher))  # constant: no variance
    one_valid = np.arange(N) == 4
    assert np.isnan(metrics.linear_cka(student, teacher, mask=one_valid))


# ----------------------------------------------------------------------------- neighbourhood recall


def _recall_reference(student, teacher, k, valid):
    """Per point, in float64, with NumPy's stable sort: ties go to the lower index."""
    points = np.flatnonzero(valid)
    rows = []
    for i in points:
        others = points[points != i]
        k_i = min(k, len(others))

        def nearest(x):
            x = np.asarray(x, np.float64)
            order = np.argsort(np.sum((x[others] - x[i]) ** 2, axis=-1), kind="stable")
            return set(others[order[:k_i]])

        rows.append(len(nearest(teacher) & nearest(student)) / k_i)
    return np.mean(rows)


@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_neighbourhood_recall_matches_scikit_learn_nearest_neighbors(features, k, chunk_size):
    student, teacher = features

    def neighbours(x):  # sklearn returns each point itself first (no duplicates here)
        found = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)
        assert np.array_equal(found[:, 0], np.arange(N))
        return found[:, 1:]

    expected = np.mean([
        len(set(a) & set(b)) / k for a, b in zip(neighbours(teacher), neighbours(student))
    ])
    got = metrics.neighbourhood_recall(student, teacher, k=k, chunk_size=chunk_size)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    reference = _recall_reference(student, teacher, k, np.ones(N, bool))
    np.testing.assert_allclose(got, reference, rtol=1e-6)  # a float32 mean of N fractions


def test_neighbourhood_recall_breaks_ties_by_lower_index():
    # Small integers: the shift, the power-of-two rescale, the centring (mean 0.75 after the
    # rescale) and the distances are exact, so ties are exact ties, broken as a stable sort
    # breaks them.
    values = np.repeat(np.arange(-3.0, 4.0), 2)
    teacher = values[:, None].astype(np.float32)
    student = np.random.default_rng(5).permutation(values)[:, None].astype(np.float32)
    for k in (1, 2, 3, 4):
        np.testing.assert_allclose(
            metrics.neighbourhood_recall(student, teacher, k=k),
            _recall_reference(student, teacher, k, np.ones(len(values), bool)),
        )


def test_neighbourhood_recall_with_mask_never_uses_padding(features):
    student, teacher = features
    valid = np.ones(N, bool)
    valid[[0, 6, 7, 19]] = False
    padded = np.where(valid[:, None], student, np.nan)
    np.testing.assert_allclose(
        metrics.neighbourhood_recall(padded, teacher, k=4, mask=valid, chunk_size=6),
        _recall_reference(student, teacher, 4, valid),
    )


def test_neighbourhood_recall_caps_k_at_the_number_of_other_points(features):
    student, teacher = features
    assert metrics.neighbourhood_recall(student, teacher, k=N + 5) == 1.0
    four = np.arange(N) < 4
    assert metrics.neighbourhood_recall(student, teacher, k=10, mask=four) == 1.0
    assert metrics.neighbourhood_recall(teacher, teacher, k=3) == 1.0


def test_neighbourhood_recall_is_nan_when_undefined(features):
    student, teacher = features
    broken = teacher.copy()
    broken[3, 1] = np.nan
    assert np.isnan(metrics.neighbourhood_recall(student, broken))
    assert np.isnan(metrics.neighbourhood_recall(student, teacher, mask=np.arange(N) == 2))


def test_similarity_metrics_accept_python_lists(features):
    student, teacher = features
    for fn in (metrics.linear_cka, metrics.neighbourhood_recall):
        np.testing.assert_array_equal(
            fn(student.tolist(), teacher.tolist()), fn(student, teacher)
        )


@pytest.mark.parametrize("k", [0, -1, 2.5, True, None])
def test_neighbourhood_recall_rejects_a_bad_k(features, k):
    with pytest.raises(ValueError, match="k must be a positive integer"):
        metrics.neighbourhood_recall(*features, k=k)


def test_similarity_metrics_reject_bad_shapes():
    with pytest.raises(ValueError, match="x and y must have the same batch size"):
        metrics.linear_cka(np.ones((4, 2)), np.ones((5, 2)))
    with pytest.raises(ValueError, match="mask must have shape"):
        metrics.neighbourhood_recall(np.ones((4, 2)), np.ones((4, 2)), mask=np.ones(3, bool))
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        metrics.neighbourhood_recall(np.ones((4, 2)), np.ones((4, 2)), chunk_size=0)


def test_accuracy_and_probes_accept_python_lists(classification):
    x_train, y_train, x_test, y_test = (a[:20] for a in classification)
    lists = [a.tolist() for a in (x_train, y_train, x_test, y_test)]
    mask = [True] * 19 + [False]
    for fn in (metrics.knn_accuracy, metrics.linear_probe_accuracy):
        np.testing.assert_array_equal(
            fn(*lists, test_mask=mask), fn(x_train, y_train, x_test, y_test, test_mask=mask)
        )
    logits = [[2.0, 1.0], [0.0, 3.0]]
    assert metrics.accuracy(logits, [0, 0], mask=[True, False]) == 1.0
