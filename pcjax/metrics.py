"""Evaluation metrics: top-1 accuracy, frozen-feature probes, and student-teacher similarity.

Pure JAX and deterministic; each returns a float32 scalar (float64 for float64 features where
noted) and takes optional masks (True marks a real example) for padded evaluation batches. How a
run uses them: docs/evaluation.md.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pcjax.dissimilarity import l2_normalize, max_exponent, pairwise_dissimilarity
from pcjax.losses._checks import check_pair
from pcjax.losses.perception_coherence import _mean_over_references, pc_score

__all__ = [
    "accuracy", "knn_accuracy", "linear_cka", "linear_probe_accuracy", "neighbourhood_recall",
    "pc_score",
]


def _valid(mask: jax.Array | None, num: int, name: str) -> jax.Array:
    if mask is None:
        return jnp.ones((num,), bool)
    mask = jnp.asarray(mask)
    if mask.shape != (num,):
        raise ValueError(f"{name} must have shape ({num},), got {mask.shape}.")
    return jnp.asarray(mask, bool)


def _check_labelled(features, labels, features_name, labels_name):
    if features.ndim != 2:
        raise ValueError(
            f"{features_name} must have shape (examples, features), got {features.shape}."
        )
    if labels.shape != (features.shape[0],):
        raise ValueError(
            f"{labels_name} must have shape ({features.shape[0]},) to match {features_name}, "
            f"got {labels.shape}."
        )


def _check_probe(train_features, train_labels, test_features, test_labels):
    """The four as arrays (Python lists accepted), after checking their shapes."""
    train_features, train_labels, test_features, test_labels = (
        jnp.asarray(x) for x in (train_features, train_labels, test_features, test_labels)
    )
    _check_labelled(train_features, train_labels, "train_features", "train_labels")
    _check_labelled(test_features, test_labels, "test_features", "test_labels")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"train_features and test_features must have the same width, got "
            f"{train_features.shape} and {test_features.shape}."
        )
    return train_features, train_labels, test_features, test_labels


def _num_classes(num_classes, *labels):
    # Inferred from concrete labels only: under jit, pass num_classes.
    if num_classes is not None:
        return num_classes
    return int(max(np.max(np.asarray(x)) for x in labels)) + 1


def _fraction(correct: jax.Array, valid: jax.Array) -> jax.Array:
    count = jnp.sum(valid)
    hits = jnp.sum(jnp.where(valid, correct, False))
    return jnp.where(count > 0, hits / jnp.maximum(count, 1), jnp.nan).astype(jnp.float32)


def accuracy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Top-1 accuracy: the fraction of valid examples whose largest logit is the label.

    Args:
      logits: (N, C) scores.
      labels: (N,) integer labels.
      mask: optional (N,) bool, True for real examples.

    Returns:
      float32 in [0, 1]; NaN if no example is valid.

    Examples:
      >>> import jax.numpy as jnp
      >>> from pcjax import metrics
      >>> logits = jnp.array([[2.0, 0.1], [0.3, 1.0], [1.0, 0.0]])
      >>> labels = jnp.array([0, 1, 1])
      >>> print(f"{metrics.accuracy(logits, labels):.3f}")
      0.667
      >>> print(f"{metrics.accuracy(logits, labels, mask=jnp.array([True, True, False])):.3f}")
      1.000
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    _check_labelled(logits, labels, "logits", "labels")
    valid = _valid(mask, logits.shape[0], "mask")
    return _fraction(jnp.argmax(logits, axis=-1) == labels, valid)


def knn_accuracy(
    train_features: jax.Array, train_labels: jax.Array, test_features: jax.Array,
    test_labels: jax.Array, *, k: int = 20, num_classes: int | None = None,
    vote: str = "weighted", temperature: float = 0.07, train_mask: jax.Array | None = None,
    test_mask: jax.Array | None = None, chunk_size: int = 1024,
) -> jax.Array:
    """k-nearest-neighbour classification accuracy of frozen features, by cosine similarity.

    Each test example takes the k training examples of highest cosine similarity s and predicts
    argmax_c sum_{neighbours of class c} w, with w = exp(s / temperature) for ``vote="weighted"``
    (the kNN monitor of Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance
    Discrimination", CVPR 2018, with their temperature 0.07) or w = 1 for ``vote="majority"`` (ties
    go to the lowest class). The default k = 20 follows common kNN monitors.

    Test examples are processed ``chunk_size`` at a time: memory O(chunk_size * N_train).

    Args:
      train_features: (N, D) features of the labelled set.
      train_labels: (N,) integer labels.
      test_features: (M, D) features to classify.
      test_labels: (M,) integer labels.
      k: neighbours per test example (capped at N).
      num_classes: number of classes; inferred from concrete labels when None.
      vote: ``"weighted"`` or ``"majority"``.
      temperature: the similarity temperature of the weighted vote.
      train_mask: optional (N,) bool; masked training examples are never neighbours.
      test_mask: optional (M,) bool; masked test examples are not scored.
      chunk_size: test examples per chunk.

    Returns:
      float32 accuracy in [0, 1]; NaN if no test example is valid.

    Examples:
      >>> import jax.numpy as jnp
      >>> from pcjax import metrics
      >>> train = jnp.array([[1.0, 0.1], [0.9, -0.1], [-0.1, 1.0], [0.1, 0.8]])
      >>> train_labels = jnp.array([0, 0, 1, 1])
      >>> test, test_labels = jnp.array([[1.0, 0.2], [0.2, 1.0]]), jnp.array([0, 1])
      >>> print(f"{metrics.knn_accuracy(train, train_labels, test, test_labels, k=2):.3f}")
      1.000
    """
    train_features, train_labels, test_features, test_labels = _check_probe(
        train_features, train_labels, test_features, test_labels
    )
    if vote not in ("weighted", "majority"):
        raise ValueError(f"vote must be 'weighted' or 'majority', got {vote!r}.")
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k}.")
    classes = _num_classes(num_classes, train_labels, test_labels)
    num_train, num_test = train_features.shape[0], test_features.shape[0]
    train_valid = _valid(train_mask, num_train, "train_mask")
    test_valid = _valid(test_mask, num_test, "test_mask")
    k = min(k, num_train)
    chunk = max(1, min(chunk_size, num_test))
    num_chunks = -(-num_test // chunk)
    padding = num_chunks * chunk - num_test

    train_unit = l2_normalize(train_features)
    test_unit = jnp.pad(l2_normalize(test_features), ((0, padding), (0, 0)))
    train_onehot = jax.nn.one_hot(train_labels, classes, dtype=train_unit.dtype)

    def predict(queries):
        similarity = jnp.where(train_valid[None, :], queries @ train_unit.T, -jnp.inf)
        top_similarity, top_index = jax.lax.top_k(similarity, k)
        neighbour_valid = jnp.isfinite(top_similarity)
        if vote == "weighted":
            weights = jnp.exp((top_similarity - 1.0) / temperature)
        else:
            weights = jnp.ones_like(top_similarity)
        weights = jnp.where(neighbour_valid, weights, 0.0)
        scores = jnp.einsum("qk,qkc->qc", weights, train_onehot[top_index])
        return jnp.argmax(scores, axis=-1)

    predictions = jax.lax.map(predict, test_unit.reshape(num_chunks, chunk, -1)).reshape(-1)
    return _fraction(predictions[:num_test] == test_labels, test_valid)


def linear_probe_accuracy(
    train_features: jax.Array, train_labels: jax.Array, test_features: jax.Array,
    test_labels: jax.Array, *, num_classes: int | None = None, l2: float = 1e-4,
    steps: int = 200, train_mask: jax.Array | None = None, test_mask: jax.Array | None = None,
) -> jax.Array:
    """Test accuracy of a multinomial logistic regression trained on frozen features.

    Features are standardized with the mean and standard deviation of the valid training
    examples; then (W, b) minimizes, full batch,

        mean_i CE(W x_i + b, y_i) + (l2 / 2) ||W||_F^2       (b unpenalized)

    by ``steps`` iterations of L-BFGS (optax.lbfgs, zoom line search) from zero: deterministic.
    This is scikit-learn's ``LogisticRegression(C=1 / (l2 * N))`` objective up to a factor N.

    Args:
      train_features: (N, D) features to fit on.
      train_labels: (N,) integer labels.
      test_features: (M, D) features to score.
      test_labels: (M,) integer labels.
      num_classes: number of classes; inferred from concrete labels when None.
      l2: L2 penalty on the weights (per example, see the objective).
      steps: L-BFGS iterations.
      train_mask, test_mask: optional (N,) / (M,) bool, True for real examples.

    Returns:
      float32 test accuracy in [0, 1]; NaN if no test example is valid.

    Examples:
      >>> import jax.numpy as jnp
      >>> from pcjax import metrics
      >>> train = jnp.array([[1.0, 0.1], [0.9, -0.1], [-0.1, 1.0], [0.1, 0.8]])
      >>> train_labels = jnp.array([0, 0, 1, 1])
      >>> test, test_labels = jnp.array([[1.0, 0.2], [0.2, 1.0]]), jnp.array([0, 1])
      >>> print(f"{metrics.linear_probe_accuracy(train, train_labels, test, test_labels):.3f}")
      1.000
    """
    train_features, train_labels, test_features, test_labels = _check_probe(
        train_features, train_labels, test_features, test_labels
    )
    classes = _num_classes(num_classes, train_labels, test_labels)
    train_valid = _valid(train_mask, train_features.shape[0], "train_mask")
    test_valid = _valid(test_mask, test_features.shape[0], "test_mask")
    dtype = jnp.promote_types(train_features.dtype, jnp.float32)
    x_train = train_features.astype(dtype)
    weight = train_valid.astype(dtype) / jnp.maximum(jnp.sum(train_valid), 1)
    mean = jnp.sum(weight[:, None] * x_train, axis=0)
    std = jnp.sqrt(jnp.sum(weight[:, None] * (x_train - mean) ** 2, axis=0))
    std = jnp.where(std > 0, std, 1.0)

    def standardize(x):
        return (x.astype(dtype) - mean) / std

    x_train = jnp.where(train_valid[:, None], standardize(x_train), 0.0)
    onehot = jax.nn.one_hot(train_labels, classes, dtype=dtype)

    def objective(params):
        logits = x_train @ params["w"] + params["b"]
        cross_entropy = optax.softmax_cross_entropy(logits, onehot)
        return jnp.sum(weight * cross_entropy) + 0.5 * l2 * jnp.sum(params["w"] ** 2)

    params = {
        "w": jnp.zeros((x_train.shape[1], classes), dtype), "b": jnp.zeros((classes,), dtype)
    }
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry, _):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(
            grad, state, params, value=value, grad=grad, value_fn=objective
        )
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, solver.init(params)), None, length=steps)
    logits = standardize(test_features) @ params["w"] + params["b"]
    return _fraction(jnp.argmax(logits, axis=-1) == test_labels, test_valid)


def _similarity_inputs(x, y, mask, x_name, y_name):
    """Both as float arrays centred over the valid rows (invalid rows zeroed), after an exact
    rescale by a power of two to max|.| in [0.5, 1); the valid mask; and whether every valid
    entry is finite. Centring changes no distance and keeps the distance expansion exact."""
    x, y = check_pair(x, y, student_name=x_name, teacher_name=y_name)
    valid = _valid(mask, x.shape[0], "mask")
    dtype = jnp.promote_types(jnp.result_type(x, y), jnp.float32)
    count = jnp.maximum(jnp.sum(valid), 1).astype(dtype)
    x, y = (jnp.where(valid[:, None], a.astype(dtype), 0.0) for a in (x, y))
    finite = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(y))

    def centred(a):
        a = jnp.ldexp(a, -max_exponent(a))
        # Shifting by one valid row first makes a constant column exactly 0 (its mean would
        # leave rounding noise that a similarity would read as signal).
        a = jnp.where(valid[:, None], a - a[jnp.argmax(valid)], 0.0)
        return jnp.where(valid[:, None], a - jnp.sum(a, axis=0) / count, 0.0)

    return centred(x), centred(y), valid, finite


def linear_cka(x: jax.Array, y: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    """Linear centred kernel alignment between two representations of the same examples.

        CKA(X, Y) = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)

    with X_c, Y_c the features centred over the valid examples (Kornblith, Norouzi, Lee, Hinton,
    "Similarity of Neural Network Representations Revisited", ICML 2019, arXiv:1905.00414,
    eq. 4 with linear kernels). In [0, 1]; 1 when y is x up to a translation, an orthogonal map
    and a scale. It compares the whole feature geometry, not ranks of dissimilarities, so the
    perception coherence loss does not optimize it directly. Computed from the (Dx, Dy)
    cross-covariance: memory O(N D + Dx Dy).

    Args:
      x: (N, Dx) features (e.g. the student's).
      y: (N, Dy) features of the same examples (e.g. the teacher's).
      mask: optional (N,) bool, True for real examples.

    Returns:
      float32 scalar (float64 for float64 input); NaN when either side is constant over the
      valid examples (fewer than 2 of them included) or holds NaN or Inf.

    Examples:
      >>> from pcjax import metrics
      >>> import jax
      >>> key_t, key_s = jax.random.split(jax.random.key(0))
      >>> teacher = jax.random.normal(key_t, (32, 8))
      >>> student = teacher[:, :4] + 0.3 * jax.random.normal(key_s, (32, 4))
      >>> print(f"{metrics.linear_cka(student, teacher):.3f}")
      0.747
      >>> print(f"{metrics.linear_cka(2.0 * teacher + 1.0, teacher):.3f}")
      1.000
    """
    x, y, _, finite = _similarity_inputs(x, y, mask, "x", "y")
    frobenius_squared = lambda a, b: jnp.sum((a.T @ b) ** 2)  # noqa: E731
    denominator = jnp.sqrt(frobenius_squared(x, x)) * jnp.sqrt(frobenius_squared(y, y))
    defined = finite & (denominator > 0)
    return jnp.where(
        defined, frobenius_squared(y, x) / jnp.where(defined, denominator, 1.0), jnp.nan
    )


def neighbourhood_recall(
    student: jax.Array, teacher: jax.Array, *, k: int = 10, mask: jax.Array | None = None,
    chunk_size: int | None = None,
) -> jax.Array:
    """Teacher-neighbourhood recall: how many of each point's teacher neighbours the student keeps.

        recall = mean over valid i of |T_k(i) & S_k(i)| / k_i

    T_k(i) (S_k(i)) is the set of the k_i = min(k, n_i) valid points other than i nearest to i
    in euclidean distance between teacher (student) features, n_i the number of those points;
    equal distances are broken by the lower index (as a stable sort). In [0, 1]: 1 when the
    student keeps every teacher neighbourhood; about k / N for an unrelated student. It counts
    set overlap, not the rank correlation pc_score measures.

    References are processed ``chunk_size`` at a time against all N points (``lax.map``):
    memory O(chunk_size * N), time O(N^2 (D + log k)), fit for a whole evaluation split.

    Args:
      student: (N, Ds) student features.
      teacher: (N, Dt) teacher features of the same examples.
      k: neighbours per point, >= 1 (capped at n_i: at k >= n_i the recall is 1 by definition).
      mask: optional (N,) bool, True for real examples; masked points are never neighbours.
      chunk_size: references per chunk; None means min(N, 512).

    Returns:
      float32 scalar (float64 for float64 input); NaN when no valid point has a valid
      neighbour or a valid feature is NaN or Inf.

    Examples:
      >>> from pcjax import metrics
      >>> import jax
      >>> key_t, key_s = jax.random.split(jax.random.key(0))
      >>> teacher = jax.random.normal(key_t, (32, 8))
      >>> student = teacher[:, :4] + 0.3 * jax.random.normal(key_s, (32, 4))
      >>> print(f"{metrics.neighbourhood_recall(student, teacher, k=5):.3f}")
      0.525
      >>> print(f"{metrics.neighbourhood_recall(teacher, teacher, k=5):.3f}")
      1.000
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}.")
    student, teacher, valid, finite = _similarity_inputs(
        student, teacher, mask, "student", "teacher"
    )
    num = student.shape[0]
    width = max(1, min(k, num - 1))  # A static top_k size; rows use their own k_i <= width.

    def chunk_sums(ref_index):
        refs = jnp.minimum(ref_index, num - 1)
        others = valid[None, :] & (ref_index[:, None] != jnp.arange(num)[None, :])
        count = jnp.sum(others, axis=-1)

        def nearest(x):
            # Squared distances order like distances; top_k puts the lower index first on ties.
            distance = pairwise_dissimilarity(x[refs], x, "sqeuclidean")
            return jax.lax.top_k(jnp.where(others, -distance, -jnp.inf), width)[1]

        k_row = jnp.minimum(k, count)[:, None]
        kept = jnp.arange(width)[None, :] < k_row
        same = nearest(teacher)[:, :, None] == nearest(student)[:, None, :]
        hits = jnp.sum(jnp.any(same & kept[:, None, :], axis=-1) & kept, axis=-1)
        counted = (ref_index < num) & valid[refs] & (count > 0)
        recall = hits / jnp.maximum(k_row[:, 0], 1)
        return jnp.sum(jnp.where(counted, recall, 0.0)), jnp.sum(counted)

    return _mean_over_references(chunk_sums, num, chunk_size, finite, student.dtype)
