"""Baselines against NumPy re-implementations of the reference definitions and hand-made cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcjax.losses import baselines


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(1)
    student = rng.normal(size=(6, 4))
    teacher = rng.normal(size=(6, 5))
    return student.astype(np.float32), teacher.astype(np.float32)


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _smooth_l1(x, y):
    d = np.abs(x - y)
    return np.mean(np.where(d < 1, 0.5 * d * d, d - 0.5))


def _rkd_numpy(s, t):
    def dist(e):
        d = np.sqrt(np.sum((e[:, None] - e[None]) ** 2, axis=-1))
        return d / d[d > 0].mean()

    def angle(e):
        diff = e[None, :, :] - e[:, None, :]  # diff[i, j] = e_j - e_i
        norm = np.linalg.norm(diff, axis=-1, keepdims=True)
        unit = diff / np.maximum(norm, 1e-12)
        return np.einsum("ijd,ikd->ijk", unit, unit)

    return 25 * _smooth_l1(dist(s), dist(t)) + 50 * _smooth_l1(angle(s), angle(t))


def _pkt_numpy(s, t, eps=1e-7):
    def prob(x):
        x = x / (np.linalg.norm(x, axis=1, keepdims=True) + eps)
        sim = (x @ x.T + 1) / 2
        return sim / sim.sum(axis=1, keepdims=True)

    ps, pt = prob(s), prob(t)
    return np.mean(pt * np.log((pt + eps) / (ps + eps)))


def _sp_numpy(s, t):
    def gram(x):
        g = x @ x.T
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    return np.sum((gram(t) - gram(s)) ** 2) / s.shape[0] ** 2


def _cc_numpy(s, t):
    delta = np.abs(s - t)
    return np.mean([np.dot(delta[i], delta[i + 1]) for i in range(len(delta) - 1)])


def test_kd_matches_temperature_scaled_kl(features):
    s, t = features
    temperature = 4.0
    p_t = _softmax(t[:, :4] / temperature)
    p_s = _softmax(s / temperature)
    expected = np.mean(np.sum(p_t * np.log(p_t / p_s), axis=1)) * temperature**2
    np.testing.assert_allclose(baselines.kd(s, t[:, :4]), expected, rtol=1e-5)


def test_kd_two_class_hand_computed():
    # Temperature 1: teacher softmax (1/2, 1/2), student softmax (1/(1+e), e/(1+e)).
    loss = baselines.kd(jnp.array([[0.0, 1.0]]), jnp.array([[0.0, 0.0]]), temperature=1.0)
    p = 1 / (1 + math.e)
    expected = 0.5 * math.log(0.5 / p) + 0.5 * math.log(0.5 / (1 - p))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_kd_is_zero_for_identical_logits(features):
    s, _ = features
    np.testing.assert_allclose(baselines.kd(s, s), 0.0, atol=1e-6)


def test_fitnet_is_mean_squared_error(features):
    s, t = features
    np.testing.assert_allclose(
        baselines.fitnet(s, t[:, :4]), np.mean((s - t[:, :4]) ** 2), rtol=1e-5
    )


def test_rkd_matches_reference_definition(features):
    s, t = features
    np.testing.assert_allclose(baselines.rkd(s, t), _rkd_numpy(s, t), rtol=1e-4)


def test_rkd_is_invariant_to_scale_rotation_and_translation(features):
    s, _ = features
    rotation, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(4, 4)))
    moved = 3.0 * s @ rotation + 1.5
    np.testing.assert_allclose(baselines.rkd(moved, s), 0.0, atol=1e-4)


def test_rkd_gradient_finite_with_duplicate_student_points(features):
    s, t = features
    s = s.copy()
    s[1] = s[0]
    grad = jax.jit(jax.grad(baselines.rkd))(s, t)
    assert np.all(np.isfinite(grad))


def test_pkt_matches_reference_definition(features):
    s, t = features
    np.testing.assert_allclose(baselines.pkt(s, t), _pkt_numpy(s, t), rtol=1e-5)


def test_sp_matches_reference_definition(features):
    s, t = features
    np.testing.assert_allclose(baselines.sp(s, t), _sp_numpy(s, t), rtol=1e-5)


def test_cc_matches_repdistiller_consecutive_row_definition(features):
    s, t = features
    np.testing.assert_allclose(baselines.cc(s, t[:, :4]), _cc_numpy(s, t[:, :4]), rtol=1e-5)


def test_cc_three_rows_hand_computed():
    # |s - t| rows (1, 2), (2, 2), (2, 2): consecutive inner products 6 and 8, mean 7.
    student = jnp.array([[1.0, 2.0], [3.0, -1.0], [0.0, 0.0]])
    teacher = jnp.array([[0.0, 0.0], [1.0, 1.0], [2.0, -2.0]])
    np.testing.assert_allclose(baselines.cc(student, teacher), 7.0, rtol=1e-5)


def test_cc_gradient_is_zero_where_student_equals_teacher():
    # Like torch.abs, |x| has derivative 0 at x = 0, so row 0 (equal to the teacher) gets none.
    student = jnp.array([[1.0, 2.0], [3.0, -1.0]])
    teacher = jnp.array([[1.0, 2.0], [1.0, 1.0]])
    grad = jax.grad(baselines.cc)(student, teacher)
    np.testing.assert_array_equal(grad[0], 0.0)


def test_cc_rejects_different_widths():
    with pytest.raises(ValueError, match="student_embedding and teacher_embedding"):
        baselines.cc(jnp.ones((4, 3)), jnp.ones((4, 5)))


@pytest.mark.parametrize("name", ["rkd", "pkt", "sp", "cc"])
def test_teacher_side_gets_no_gradient(features, name):
    s, t = features
    t = t[:, :4] if name == "cc" else t
    grad = jax.grad(getattr(baselines, name), argnums=1)(jnp.asarray(s), jnp.asarray(t))
    np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("name", ["fitnet", "rkd", "pkt", "sp", "cc"])
def test_rejects_mismatched_batch_sizes(name):
    with pytest.raises(ValueError, match="same batch size"):
        getattr(baselines, name)(jnp.ones((4, 3)), jnp.ones((5, 3)))


def test_kd_rejects_mismatched_class_counts():
    with pytest.raises(ValueError, match="student_logits and teacher_logits"):
        baselines.kd(jnp.ones((4, 3)), jnp.ones((4, 5)))


@pytest.mark.parametrize("name", ["kd", "fitnet", "rkd", "pkt", "sp", "cc"])
def test_python_lists_are_accepted_like_arrays(features, name):
    s, t = features
    t = t[:, :4] if name in ("kd", "fitnet", "cc") else t
    fn = getattr(baselines, name)
    np.testing.assert_array_equal(fn(s.tolist(), t.tolist()), fn(s, t))
