"""Metrics against SciPy and scikit-learn references."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial import distance
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

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
    np.testing.assert_allclose(metrics.pc_score(5 * teacher @ rotation + 3, teacher), 1.0, atol=1e-5)


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
