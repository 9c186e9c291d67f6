"""perception_coherence_loss: the properties of its definition against SciPy and NumPy
references, masks, scales, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.spatial import distance
from scipy.stats import rankdata, spearmanr
from sklearn.isotonic import isotonic_regression

from float32 import assert_close
from pcjax.losses import pc_score, perception_coherence_loss

# The batch size, widths and mask of tests/test_sharding_losses.py: shared shapes share compiles.
B = 16

# pc_score maps its chunks with lax.map, which compiles again at every eager call (a new body
# each time): the tests that score finite, NaN and masked batches share one jitted pc_score
# (one compile per shape and mask presence). Its eager calls are test_metrics.py's.
_pc_score = jax.jit(pc_score)


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(B, 5)).astype(np.float32)
    student = rng.normal(size=(B, 3)).astype(np.float32)
    return student, teacher


@pytest.fixture(scope="module")
def mask():
    valid = np.ones(B, bool)
    valid[[1, 2, 9, 15]] = False
    return valid


def _reference_loss(student, teacher, objective):
    """Hard-rank loss with SciPy ranks, one reference at a time."""
    d_s, d_t = distance.cdist(student, student), distance.cdist(teacher, teacher)
    rows = []
    for i in range(len(student)):
        others = np.arange(len(student)) != i
        n = others.sum()
        sigma, tau = rankdata(d_s[i, others]) / n, rankdata(d_t[i, others]) / n
        if objective == "mse":
            rows.append(np.mean((sigma - tau) ** 2))
        else:
            rows.append(1 - spearmanr(sigma, tau).statistic)
    return np.mean(rows)


@pytest.mark.parametrize("objective", ["mse", "spearman"])
def test_hard_rank_limit_matches_scipy_rankdata(features, objective):
    student, teacher = features
    loss = perception_coherence_loss(
        student, teacher, regularization_strength=1e-4, objective=objective
    )
    np.testing.assert_allclose(loss, _reference_loss(student, teacher, objective), atol=1e-5)


def test_hard_rank_limit_with_teacher_ties(features):
    student, _ = features
    # Teacher points on a 1-D integer grid: many equal distances, so many averaged ranks.
    teacher = np.zeros((B, 5), np.float32)
    teacher[:, 0] = np.arange(B) % 4
    loss = perception_coherence_loss(student, teacher, regularization_strength=1e-4)
    np.testing.assert_allclose(loss, _reference_loss(student, teacher, "mse"), atol=1e-5)


def test_invariant_to_increasing_transform_of_teacher_dissimilarities(features):
    student, teacher = features
    transformed = lambda u, v: jnp.exp(jnp.sqrt(jnp.sum((u - v) ** 2)))  # noqa: E731
    base = perception_coherence_loss(student, teacher)
    for kind in ("sqeuclidean", transformed):
        assert_close(
            perception_coherence_loss(student, teacher, teacher_dissimilarity=kind), base
        )


@pytest.mark.parametrize("scale", [1e-3, 1e3])
def test_invariant_to_rescaling_and_translating_student(features, scale):
    student, teacher = features
    np.testing.assert_allclose(
        perception_coherence_loss(scale * student + 5.0 * scale, teacher),
        perception_coherence_loss(student, teacher),
        rtol=1e-4,
    )


def test_same_sharpness_at_batch_16_and_1024():
    # A fixed noisy student/teacher relation: the loss estimates a smoothed PC divergence that
    # must not depend on the batch size. Without the row normalization in rank units, eps = 1
    # would pool whole rows at B = 1024 (loss near 1/12, against about 0.037 at B = 16).
    # The batches of 16 run eagerly on operations already compiled for B = 16 by the tests above
    # (mean of 32: standard error about 4%); the batch of 1024 is one jitted forward.
    rng = np.random.default_rng(3)

    def sample(batch):
        teacher = rng.normal(size=(batch, 8)).astype(np.float32)
        return teacher + 0.5 * rng.normal(size=teacher.shape).astype(np.float32), teacher

    small = np.mean([perception_coherence_loss(*sample(B)) for _ in range(32)])
    large = jax.jit(perception_coherence_loss)(*sample(1024))
    np.testing.assert_allclose(small, large, rtol=0.25)


def test_similar_student_has_near_zero_loss(features):
    _, teacher = features
    rotation, _ = np.linalg.qr(np.random.default_rng(4).normal(size=(5, 5)))
    student = 0.3 * teacher @ rotation - 2.0
    assert perception_coherence_loss(student, teacher, regularization_strength=1e-4) < 1e-7
    assert perception_coherence_loss(student, teacher, objective="spearman",
                                     regularization_strength=1e-4) < 1e-6


@pytest.mark.parametrize("objective", ["mse", "spearman"])
@pytest.mark.parametrize("regularization", ["l2", "kl"])
def test_masked_loss_equals_loss_on_valid_rows(features, mask, objective, regularization):
    student, teacher = features
    options = dict(objective=objective, regularization=regularization)
    assert_close(
        perception_coherence_loss(student, teacher, mask=mask, **options),
        perception_coherence_loss(student[mask], teacher[mask], **options),
    )


def test_masked_gradient_equals_gradient_on_valid_rows_and_zero_elsewhere(features, mask):
    student, teacher = features
    garbage = student.copy()
    garbage[~mask] = np.nan  # padded rows may hold anything
    grad = jax.grad(perception_coherence_loss)(garbage, teacher, mask=mask)
    expected = jax.grad(perception_coherence_loss)(student[mask], teacher[mask])
    assert_close(grad[mask], expected, rtol=1e-4)
    # Exact: the loss reads features through jnp.where(mask, x, 0), whose gradient is 0 off the
    # mask.
    np.testing.assert_array_equal(grad[~mask], 0.0)


def test_fewer_than_three_valid_samples_give_zero_loss_and_gradient(features):
    student, teacher = features
    mask = np.zeros(B, bool)
    mask[[0, 5]] = True
    loss, grad = jax.value_and_grad(perception_coherence_loss)(student, teacher, mask=mask)
    assert loss == 0.0
    np.testing.assert_array_equal(grad, 0.0)


def test_teacher_gets_no_gradient(features):
    student, teacher = features
    grad = jax.grad(perception_coherence_loss, argnums=1)(student, teacher)
    np.testing.assert_array_equal(grad, 0.0)


def test_gradient_finite_for_collapsed_student(features):
    _, teacher = features
    grad = jax.grad(perception_coherence_loss)(jnp.zeros((B, 3)), teacher)
    assert np.all(np.isfinite(grad))


def test_nan_features_give_nan_loss(features):
    student, teacher = features
    broken_student, broken_teacher = student.copy(), teacher.copy()
    broken_student[3, 1] = np.nan
    broken_teacher[5, 0] = np.nan
    assert np.isnan(perception_coherence_loss(broken_student, teacher))
    assert np.isnan(perception_coherence_loss(student, broken_teacher))


def test_bfloat16_features_give_float32_loss_close_to_float32(features):
    student, teacher = features
    low = perception_coherence_loss(student.astype(jnp.bfloat16), teacher.astype(jnp.bfloat16))
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(low, perception_coherence_loss(student, teacher), atol=0.02)


def test_gradient_descent_makes_2d_student_coherent_with_3d_teacher():
    rng = np.random.default_rng(5)
    teacher = rng.normal(size=(48, 3)) * np.array([3.0, 2.0, 0.7])
    student = jnp.asarray(rng.normal(size=(48, 2)), jnp.float32)
    optimizer = optax.adam(0.05)

    @jax.jit
    def descend(student, teacher):
        def step(_, carry):
            student, state = carry
            grad = jax.grad(perception_coherence_loss)(
                student, teacher, regularization_strength=0.3
            )
            updates, state = optimizer.update(grad, state)
            return optax.apply_updates(student, updates), state

        return jax.lax.fori_loop(0, 150, step, (student, optimizer.init(student)))[0]

    assert _pc_score(student, teacher) < 0.3
    assert _pc_score(descend(student, teacher), teacher) >= 0.9


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(student_features=np.ones((4, 2)), teacher_features=np.ones((5, 2))),
         "same batch size"),
        (dict(student_features=np.ones((2, 2)), teacher_features=np.ones((2, 2))),
         "at least 3 samples"),
        (dict(student_features=np.ones((4, 2, 1)), teacher_features=np.ones((4, 2))),
         "student_features must have shape"),
        (dict(student_features=np.ones((4, 2)), teacher_features=np.ones((4,))),
         "teacher_features must have shape"),
        (dict(student_dissimilarity="manhattan"), "student_dissimilarity must be one of"),
        (dict(teacher_dissimilarity="l1"), "teacher_dissimilarity must be one of"),
        (dict(objective="kl"), "objective must be one of"),
        (dict(regularization="l1"), "regularization must be one of"),
        (dict(mask=np.ones((3,), bool)), "mask must have shape"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(kwargs, message):
    arguments = dict(student_features=np.ones((4, 2)), teacher_features=np.ones((4, 3)))
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        perception_coherence_loss(arguments.pop("student_features"),
                                  arguments.pop("teacher_features"), **arguments)


# ----------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("strength", ["a", None, -1.0, 0.0, float("nan"), float("inf")])
def test_bad_regularization_strength_raises_value_error_naming_it(features, strength):
    student, teacher = features
    with pytest.raises(ValueError, match="regularization_strength must be a positive finite"):
        perception_coherence_loss(student, teacher, regularization_strength=strength)


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, bool])
def test_integer_features_are_refused_by_the_loss_pc_score_and_soft_rank(features, dtype):
    from pcjax import soft_rank

    student, teacher = features
    for name, args in (("student_features", (student.astype(dtype), teacher)),
                       ("teacher_features", (student, teacher.astype(dtype)))):
        for fn in (perception_coherence_loss, pc_score):
            with pytest.raises(ValueError, match=f"{name} must have a floating dtype"):
                fn(*args)
    with pytest.raises(ValueError, match="floating dtype"):
        soft_rank(student.astype(dtype))


def test_fewer_than_three_samples_raise_in_the_loss_and_pc_score(features):
    student, teacher = features
    for fn in (perception_coherence_loss, pc_score):
        with pytest.raises(ValueError, match="at least 3 samples to rank, got a batch of 2"):
            fn(student[:2], teacher[:2])


def test_mask_leaving_two_valid_samples_gives_nan_pc_score(features):
    """The loss is 0 there (test above); no correlation exists, so the score is undefined."""
    student, teacher = features
    mask = np.zeros(B, bool)
    mask[[0, 5]] = True
    assert np.isnan(_pc_score(student, teacher, mask=mask))
    mask[7] = True  # 3 valid samples: each reference compares 2, a defined correlation.
    expected = np.mean([
        spearmanr(distance.cdist(student[mask], student[mask])[i, others],
                  distance.cdist(teacher[mask], teacher[mask])[i, others]).statistic
        for i in range(3) for others in [np.arange(3) != i]
    ])
    np.testing.assert_allclose(_pc_score(student, teacher, mask=mask), expected, rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_floats_up_to_32_bits_give_float32_results(features, dtype):
    student, teacher = features
    # The dtype is fixed when traced: eval_shape checks it without compiling.
    for fn, args in ((perception_coherence_loss, (student.astype(dtype), teacher)),
                     (pc_score, (student.astype(dtype), teacher.astype(dtype)))):
        assert jax.eval_shape(fn, *args).dtype == jnp.float32


def test_float64_features_give_float64_results_with_x64(features):
    student, teacher = features
    expected_loss = _reference_loss(student.astype(np.float64), teacher, "mse")
    expected_score = np.mean([
        spearmanr(row_s[others], row_t[others]).statistic
        for i, (row_s, row_t) in enumerate(zip(distance.cdist(student, student),
                                                distance.cdist(teacher, teacher)))
        for others in [np.arange(B) != i]
    ])
    with jax.enable_x64(True):
        student64, teacher64 = student.astype(np.float64), teacher.astype(np.float64)
        loss = perception_coherence_loss(student64, teacher64, regularization_strength=1e-4)
        score = pc_score(student64, teacher64)
        assert loss.dtype == jnp.float64 and score.dtype == jnp.float64
        # Mixed widths promote like jnp arithmetic.
        assert jax.eval_shape(perception_coherence_loss, student, teacher64).dtype == jnp.float64
    # Near-hard soft ranks (eps = 1e-4) reach the hard-rank reference up to float64 rounding.
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-9)
    np.testing.assert_allclose(score, expected_score, rtol=1e-9)
    # Without x64, JAX stores float64 input as float32: the float32 rule applies.
    assert jax.eval_shape(
        perception_coherence_loss, student.astype(np.float64), teacher
    ).dtype == jnp.float32


# ----------------------------------------------------------------------------- any finite scale


@pytest.mark.parametrize("kind", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("scale", [1e20, 1e-20])
def test_loss_exact_at_huge_and_tiny_feature_scales(features, kind, scale):
    # Squared distances of features of 1e20 overflow float32 and of 1e-20 underflow it. The
    # loss is scale-free in both sides, so it must equal the loss at scale 1, and the
    # gradient, of a function with f(c x) = f(x), must be the scale-1 gradient divided by c.
    student, teacher = features
    options = dict(student_dissimilarity=kind, teacher_dissimilarity=kind)
    loss, grad = jax.value_and_grad(perception_coherence_loss)(student, teacher, **options)
    scaled_loss, scaled_grad = jax.value_and_grad(perception_coherence_loss)(
        student * np.float32(scale), teacher * np.float32(scale), **options
    )
    assert_close(scaled_loss, loss)
    assert_close(scaled_grad * scale, grad, rtol=1e-4)


@pytest.mark.parametrize("scale", [1e20, 1e-20])
def test_pc_score_exact_at_huge_and_tiny_feature_scales(features, scale):
    student, teacher = features
    c = np.float32(scale)
    assert_close(_pc_score(student * c, teacher * c), _pc_score(student, teacher))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_valid_features_give_nan_loss_and_pc_score(features, mask, bad):
    student, teacher = features
    for side in (0, 1):
        broken = [student.copy(), teacher.copy()]
        broken[side][3, 0] = bad
        assert np.isnan(perception_coherence_loss(*broken)), side
        assert np.isnan(_pc_score(*broken)), side
        # The same value in a masked (padded) row is ignored.
        broken[side][3, 0], broken[side][1, 0] = 1.0, bad
        assert np.isfinite(perception_coherence_loss(*broken, mask=mask)), side
        assert np.isfinite(_pc_score(*broken, mask=mask)), side


def test_nan_features_with_fewer_than_three_valid_samples_give_nan_loss(features):
    student, teacher = features
    student = student.copy()
    student[0, 0] = np.nan
    mask = np.zeros(B, bool)
    mask[[0, 5]] = True
    assert np.isnan(perception_coherence_loss(student, teacher, mask=mask))


def test_python_lists_are_accepted_like_arrays(features, mask):
    student, teacher = features
    for fn in (perception_coherence_loss, pc_score):
        np.testing.assert_array_equal(
            fn(student.tolist(), teacher.tolist(), mask=mask.tolist()),
            fn(student, teacher, mask=mask),
        )


# ----------------------------------------------------------------------------- neighbourhood


def _soft_rank_l2(x, eps):
    """The l2 soft rank (Blondel et al. 2020) in float64: projection by isotonic regression."""
    n = len(x)
    order = np.argsort(-x, kind="stable")
    s = x[order] / eps
    out = np.empty(n)
    out[order] = s - isotonic_regression(s - np.arange(n, 0, -1.0), increasing=False)
    return out


def _reference_loss_of_definition(student, teacher, mask, eps, objective, neighbourhood):
    """The documented loss, one reference at a time in float64 (l2 soft ranks)."""
    points = np.flatnonzero(mask)
    student, teacher = (np.asarray(x, np.float64)[points] for x in (student, teacher))
    d_s, d_t = distance.cdist(student, student), distance.cdist(teacher, teacher)
    rows = []
    for i in range(len(points)):
        others = np.arange(len(points)) != i
        n = others.sum()
        tau = rankdata(d_t[i, others])
        u = (d_s[i, others] - d_s[i, others].mean()) / d_s[i, others].std()
        sigma = _soft_rank_l2(u * np.sqrt((n * n - 1) / 12), eps) / n
        scored = tau <= (n if neighbourhood is None else neighbourhood)
        tau = tau / n
        if objective == "mse":
            rows.append(np.mean((sigma[scored] - tau[scored]) ** 2))
        else:
            rows.append(1 - np.corrcoef(sigma[scored], tau[scored])[0, 1])
    return np.mean(rows)


@pytest.mark.parametrize(
    "objective, neighbourhood", [("mse", None), ("mse", 1), ("mse", 4), ("spearman", 4)]
)
@pytest.mark.parametrize("masked", [False, True])
def test_neighbourhood_loss_matches_numpy_evaluation_of_its_definition(
    features, mask, objective, neighbourhood, masked
):
    student, teacher = features
    valid = mask if masked else np.ones(B, bool)
    loss = perception_coherence_loss(
        student, teacher, objective=objective, neighbourhood=neighbourhood,
        mask=valid if masked else None, regularization_strength=0.5,
    )
    expected = _reference_loss_of_definition(student, teacher, valid, 0.5, objective,
                                              neighbourhood)
    assert_close(loss, expected)


def test_neighbourhood_with_teacher_ties_scores_whole_tie_groups(features):
    student, _ = features
    teacher = np.zeros((B, 5), np.float32)
    teacher[:, 0] = np.arange(B) % 4  # four clusters of four equal points: tied distances
    for k in (2, 3, 4, 6):
        assert_close(
            perception_coherence_loss(student, teacher, neighbourhood=k),
            _reference_loss_of_definition(student, teacher, np.ones(B, bool), 1.0, "mse", k),
        )


def test_neighbourhood_covering_every_sample_is_the_default_loss(features, mask):
    student, teacher = features
    default = jax.value_and_grad(perception_coherence_loss)(student, teacher, mask=mask)
    covering = jax.value_and_grad(perception_coherence_loss)(
        student, teacher, mask=mask, neighbourhood=B
    )
    np.testing.assert_array_equal(covering[0], default[0])
    np.testing.assert_array_equal(covering[1], default[1])


@pytest.mark.parametrize(
    "neighbourhood, objective", [(0, "mse"), (-2, "mse"), (2.0, "mse"), (True, "mse"),
                                 (1, "spearman")]
)
def test_bad_neighbourhood_raises_value_error_naming_it(features, neighbourhood, objective):
    with pytest.raises(ValueError, match="neighbourhood must be None or an integer >="):
        perception_coherence_loss(*features, neighbourhood=neighbourhood, objective=objective)
