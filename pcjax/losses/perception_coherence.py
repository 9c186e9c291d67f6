"""The perception coherence loss and the pc_score metric (the math: docs/loss.md).

Nguyen, Gamboa, Zhang, Chhaibi, Gratton, Giaccone, "Feature Representation Transferring to
Lightweight Models via Perception Coherence", arXiv:2505.06595.

Excluded entries (the reference itself and masked samples) stay in the arrays, so shapes are
static, but are moved past every compared entry (C_i, see perception_coherence_loss) before
ranking: a hard rank or a soft rank of an entry depends only on the entries below it and its own
(for the soft rank, as long as the gap to the excluded block is wide enough; see
``_excluded_gap``), so the ranks of the compared entries are exactly their ranks within C_i.
"""

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from pcjax.dissimilarity import (
    Dissimilarity, _compute_dtype, check_dissimilarity, max_exponent, pairwise_dissimilarity,
)
from pcjax.losses._checks import check_pair
from pcjax.ranking import _check_options, rank, soft_rank

OBJECTIVES = ("mse", "spearman")
REGULARIZATIONS = ("l2", "kl")

# Smallest batch (valid samples) for which ranks carry information: with 2 samples each
# reference compares a single sample, whose rank is always 1.
MIN_VALID = 3


def _check_common(
    student_features, teacher_features, mask, student_dissimilarity, teacher_dissimilarity
):
    """The features and mask as arrays (Python lists accepted), after checking them."""
    student_features, teacher_features = check_pair(student_features, teacher_features)
    mask = None if mask is None else jnp.asarray(mask)
    # Integer features are refused like soft_rank refuses them: their distances would tie heavily
    # and a gradient with respect to them does not exist.
    for name, value in (
        ("student_features", student_features), ("teacher_features", teacher_features)
    ):
        if not jnp.issubdtype(value.dtype, jnp.floating):
            raise ValueError(f"{name} must have a floating dtype, got {value.dtype}.")
    check_dissimilarity(student_dissimilarity, "student_dissimilarity")
    check_dissimilarity(teacher_dissimilarity, "teacher_dissimilarity")
    if mask is not None and mask.shape != (student_features.shape[0],):
        raise ValueError(
            f"mask must have shape (batch,) = ({student_features.shape[0]},), got {mask.shape}."
        )
    return student_features, teacher_features, mask


def _check_min_batch(batch: int) -> None:
    if batch < MIN_VALID:
        raise ValueError(
            f"student_features must hold at least {MIN_VALID} samples to rank, got a batch of "
            f"{batch}."
        )


def _compared_set(ref_index, valid_all):
    """(r, m) bool: entry j is in C_i (valid and not the reference itself); and n_i, (r,)."""
    columns = jnp.arange(valid_all.shape[0])
    compared = valid_all[None, :] & (ref_index[:, None] != columns[None, :])
    return compared, jnp.sum(compared, axis=-1)


def _masked_mean(x, compared, count):
    return jnp.sum(jnp.where(compared, x, 0.0), axis=-1, keepdims=True) / count


def _masked_pearson(a, b, compared, count):
    """Pearson correlation of a[i] and b[i] over the compared entries, per row; 0 if constant."""
    a = jnp.where(compared, a - _masked_mean(a, compared, count), 0.0)
    b = jnp.where(compared, b - _masked_mean(b, compared, count), 0.0)
    covariance = jnp.sum(a * b, axis=-1)
    variance_product = jnp.sum(a * a, axis=-1) * jnp.sum(b * b, axis=-1)
    positive = variance_product > 0
    return jnp.where(
        positive, covariance * jax.lax.rsqrt(jnp.where(positive, variance_product, 1.0)), 0.0
    )


def _hard_ranks_within(values, compared):
    """1-based ranks (ties averaged) of each row's compared entries among themselves."""
    return rank(jnp.where(compared, values, jnp.inf))


def _rank_scale(values, compared, count):
    """Maps each row to rank units: standardized over C_i, times the std of the ranks 1..n_i.

    u_ij = (d_ij - mean_i) / std_i * sqrt((n_i^2 - 1) / 12), mean and (population) std over C_i.
    A row spread evenly over its range then moves by about 1 per rank step, at any n_i and any
    feature scale. A row whose spread is below float resolution, (float eps * mean)^2, counts as
    constant (a collapsed student): it maps to 0 with zero gradient.
    """
    mean = _masked_mean(values, compared, count)
    centered = jnp.where(compared, values - mean, 0.0)
    variance = jnp.sum(centered * centered, axis=-1, keepdims=True) / count
    spread = variance > (jnp.finfo(values.dtype).eps * mean) ** 2
    inverse_std = jnp.where(spread, jax.lax.rsqrt(jnp.where(spread, variance, 1.0)), 0.0)
    return centered * jnp.sqrt((count * count - 1.0) / 12.0) * inverse_std


def _excluded_gap(num_columns: int, regularization_strength) -> jax.Array:
    """Value that puts excluded entries beyond every compared entry in rank units.

    A rank-unit row has |u_ij| <= sqrt(n_i - 1) sqrt((n_i^2 - 1) / 12) < m^1.5 / sqrt(12)
    (m = row length). The soft rank projects u / eps onto the permutahedron by isotonic regression
    of (sorted u / eps) - (m, ..., 1) (or - log(m, ..., 1) for "kl"), so a block of excluded values
    at u_max + m eps + 1 or above can never pool with a compared entry: the compared entries then
    get exactly their soft ranks within C_i.
    """
    bound = num_columns**1.5 / math.sqrt(12.0)
    return bound + (num_columns + 1.0) * regularization_strength + 1.0


def _scale_free_dissimilarity(ref, everything, kind):
    """pairwise_dissimilarity(ref, everything, kind), exact at any finite feature scale.

    For a named kind both sides are first multiplied by the power of two that brings
    max|everything| into [0.5, 1): the dissimilarity scales with its features (cosine does not
    change), so every rank and every rank-unit row is unchanged, exactly, while distances of huge
    or tiny features neither overflow nor underflow. A callable gets the features as they are:
    it need not scale.
    """
    if not callable(kind):
        exponent = max_exponent(everything)
        ref, everything = jnp.ldexp(ref, -exponent), jnp.ldexp(everything, -exponent)
    return pairwise_dissimilarity(ref, everything, kind)


def _counts(included, dtype):
    """(r, 1) number of included entries per row, at least 1, in dtype."""
    return jnp.maximum(jnp.sum(included, axis=-1), 1).astype(dtype)[:, None]


def _row_losses(
    student_ref, teacher_ref, ref_index, ref_valid, student_all, teacher_all, valid_all,
    *, student_dissimilarity, teacher_dissimilarity, regularization_strength, regularization,
    objective, neighbourhood, dtype,
):
    """Per-reference sums: (sum over valid references of the row loss, number of them)."""
    compared, count = _compared_set(ref_index, valid_all)
    count_safe = _counts(compared, dtype)

    teacher_d = _scale_free_dissimilarity(teacher_ref, teacher_all, teacher_dissimilarity)
    teacher_rank = _hard_ranks_within(teacher_d, compared)
    teacher_ranks = teacher_rank / count_safe

    student_d = _scale_free_dissimilarity(student_ref, student_all, student_dissimilarity)
    scaled = _rank_scale(student_d.astype(dtype), compared, count_safe)
    gap = _excluded_gap(compared.shape[1], regularization_strength)
    student_ranks = soft_rank(jnp.where(compared, scaled, gap), regularization=regularization,
                              regularization_strength=regularization_strength) / count_safe

    # The pairs scored: all of C_i, or the teacher's `neighbourhood` nearest (averaged ranks).
    scored = compared if neighbourhood is None else compared & (teacher_rank <= neighbourhood)
    if objective == "mse":
        squared = jnp.where(scored, (student_ranks - teacher_ranks) ** 2, 0.0)
        row_loss = jnp.sum(squared, axis=-1) / _counts(scored, dtype)[:, 0]
    else:
        row_count = _counts(scored, dtype)
        row_loss = 1.0 - _masked_pearson(student_ranks, teacher_ranks, scored, row_count)
    counted = ref_valid & (count >= MIN_VALID - 1)
    total = jnp.sum(jnp.where(counted, row_loss, 0.0))
    # Inf features would otherwise give ranks, hence a finite loss: a broken batch must show.
    finite = jnp.all(jnp.isfinite(student_all)) & jnp.all(jnp.isfinite(teacher_all))
    return jnp.where(finite, total, jnp.nan), jnp.sum(counted)


def _mean_over_references(chunk_sums, num, chunk_size, finite, dtype):
    """Mean over the references 0..num-1, ``chunk_size`` (None: min(num, 512)) at a time.

    ``chunk_sums(ref_index)`` maps a (chunk,) array of indices (the last chunk padded with
    indices >= num, which it must not count) to (sum, count). NaN unless `finite` and count > 0.
    """
    chunk = min(num, 512 if chunk_size is None else chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}.")
    num_chunks = -(-num // chunk)
    ref_indices = jnp.arange(num_chunks * chunk).reshape(num_chunks, chunk)
    totals, counts = jax.lax.map(chunk_sums, ref_indices)
    count = jnp.sum(counts)
    defined = finite & (count > 0)
    return jnp.where(defined, jnp.sum(totals) / jnp.maximum(count, 1), jnp.nan).astype(dtype)


def _local_sums(student, teacher, valid, axis_name, options):
    """This device's references against the all-gathered batch: (sum of row losses, count)."""
    batch = student.shape[0]
    gather = lambda x: jax.lax.all_gather(x, axis_name, tiled=True)  # noqa: E731
    ref_index = jax.lax.axis_index(axis_name) * batch + jnp.arange(batch)
    return _row_losses(student, teacher, ref_index, valid, gather(student), gather(teacher),
                       gather(valid), **options)


def _explicit_batch_axes(*arrays):
    """(mesh, axes) of the first array whose own type shards its batch over Explicit axes, or None.

    Only the operands' types are read, never the ambient mesh: the loss is a pure function.
    """
    for x in arrays:
        sharding = jax.typeof(x).sharding
        axes = sharding.spec[0] if len(sharding.spec) else None
        if axes is not None:
            return sharding.mesh, tuple(axes) if isinstance(axes, tuple) else (axes,)
    return None


def perception_coherence_loss(
    student_features: jax.Array, teacher_features: jax.Array, *,
    student_dissimilarity: Dissimilarity = "euclidean",
    teacher_dissimilarity: Dissimilarity = "euclidean",
    regularization_strength: float = 1.0, regularization: str = "l2", objective: str = "mse",
    neighbourhood: int | None = None, mask: jax.Array | None = None, axis_name=None,
) -> jax.Array:
    """Perception coherence loss between student and teacher features.

    For every valid reference i and every j in its compared set C_i (the other valid samples,
    n_i = |C_i|):

        tau_ij   = rank_j(D_T[i, C_i]) / n_i              hard, ties averaged, no gradient
        sigma_ij = soft_rank_j(u_i[C_i]; eps) / n_i          soft, differentiable
        u_ij     = (D_S[i, j] - mean_{C_i} D_S[i]) / std_{C_i} D_S[i] * sqrt((n_i^2 - 1) / 12)

    ``"mse"``:      loss = mean_i (1 / |S_i|) sum_{j in S_i} (sigma_ij - tau_ij)^2
    ``"spearman"``: loss = 1 - mean_i pearson_{j in S_i}(sigma_ij, tau_ij)

    The scored pairs S_i are all of C_i by default. With ``neighbourhood=k`` they are the
    teacher's k nearest neighbours of i, S_i = {j in C_i : n_i tau_ij <= k} (a tie group, whose
    rank is averaged, is in or out as a whole); sigma and tau stay ranks within all of C_i, so
    the student is asked to put those neighbours at the teacher's ranks, first, and the far
    pairs only matter through them. k >= n_i gives the default loss.

    The row normalization u puts student dissimilarities in rank units: standardized over C_i
    (population std), then scaled to the standard deviation of the ranks 1..n_i, so that a row
    spread evenly moves by one per rank step whatever the batch size and the feature scale.
    The l2 soft rank pools the stretches of a row where u rises by less than eps per rank step;
    in rank units those stretches are the same fractions of the row at any n_i, so
    ``regularization_strength`` (eps) means the same sharpness at any batch size and any student
    scale: the loss estimates one smoothed PC divergence. eps -> 0 gives hard ranks; at eps = 1
    (the default) a student equal to the teacher scores about 1.5e-3 (features ~ N(0, I_8)).

    Masked samples are neither references nor compared: the loss equals the loss on the valid rows
    alone. With fewer than 3 valid samples no rank carries information and the loss is 0 with zero
    gradient. NaN or Inf features give a NaN loss. Finite features of any scale work: the named
    dissimilarities are computed on features rescaled exactly by a power of two (a callable
    gets them as they are). Python lists are accepted (``jnp.asarray``).

    Multi-device: with ``axis_name`` (inside ``jax.shard_map``, whose default check_vma=True makes
    the gradient of the psum right; batch split over that axis), each device's rows are its
    references and the compared set is the all-gathered global batch; sums and counts are
    ``psum``-ed, so the result (and its gradient) is the loss of the global batch. Without
    ``axis_name`` the loss reads no ambient state (no ``jax.set_mesh`` needed): features whose
    type shards the batch over Explicit mesh axes get the same split through an internal
    ``jax.shard_map`` over those axes of their own mesh; other inputs (replicated, Auto axes) run
    as one global computation that XLA partitions as it sees fit. With the split a device holds
    B/N x B matrices and sorts B/N rows of length B: O(B/N * B log B) time, O(B/N * B) memory.

    Gradients per device (N devices):
      - ``jax.jit`` (any mesh, axis types and shardings): global view; value and gradients are
        the global batch's.
      - ``jax.shard_map`` with ``axis_name``: the gradient of a device's rows is the global-batch
        gradient of those rows; replicated (``P()``) parameters get the global gradient with no
        reduction (shard_map sums the transpose of their broadcast).
      - ``jax.pmap`` with ``axis_name``: pmap transposes the ``psum`` into a ``psum``, so each
        device's row gradient is N x its share of the global-batch gradient; ``pmean`` over the
        axis of the parameter gradients (the usual pmap idiom) gives exactly the global-batch
        gradient, ``psum`` would give N x it.

    Args:
      student_features: (B, Ds) student features (any float dtype; ranks are float32).
      teacher_features: (B, Dt) teacher features; no gradient flows to them.
      student_dissimilarity, teacher_dissimilarity: ``"euclidean"``, ``"sqeuclidean"``,
        ``"cosine"`` or a callable ``d(u, v)`` (see ``pcjax.dissimilarity.pairwise_dissimilarity``).
      regularization_strength: eps > 0 of the soft rank, in rank units (see above).
      regularization: ``"l2"`` or ``"kl"`` (the soft rank's regularizer).
      objective: ``"mse"`` or ``"spearman"``.
      neighbourhood: None (every pair), or k >= 1 (k >= 2 for ``"spearman"``): score only each
        reference's k teacher-nearest pairs (see above).
      mask: optional (B,) bool, True for valid samples (the local rows under ``axis_name``).
      axis_name: mesh axis name (or tuple of names) the batch is split over, or None.

    Returns:
      float32 scalar.

    Examples:
      >>> from pcjax.losses import perception_coherence_loss
      >>> import jax
      >>> key_t, key_s = jax.random.split(jax.random.key(0))
      >>> teacher = jax.random.normal(key_t, (32, 8))
      >>> student = teacher[:, :4] + 0.3 * jax.random.normal(key_s, (32, 4))
      >>> print(f"{perception_coherence_loss(student, teacher):.4f}")
      0.0523
      >>> print(jax.grad(perception_coherence_loss)(student, teacher).shape)
      (32, 4)
      >>> print(f"{perception_coherence_loss(student, teacher, neighbourhood=5):.4f}")
      0.0476
    """
    student_features, teacher_features, mask = _check_common(
        student_features, teacher_features, mask, student_dissimilarity, teacher_dissimilarity
    )
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
    if regularization not in REGULARIZATIONS:
        raise ValueError(
            f"regularization must be one of {REGULARIZATIONS}, got {regularization!r}."
        )
    smallest = 2 if objective == "spearman" else 1
    if neighbourhood is not None and (
        isinstance(neighbourhood, bool) or not isinstance(neighbourhood, int)
        or neighbourhood < smallest
    ):
        raise ValueError(
            f"neighbourhood must be None or an integer >= {smallest} with objective "
            f"{objective!r}, got {neighbourhood!r}."
        )
    # Checked before eps is used in _excluded_gap, so a bad value gets soft_rank's clear error.
    _check_options(regularization_strength, regularization, "ascending")
    batch = student_features.shape[0]
    if axis_name is None:
        _check_min_batch(batch)
    dtype = _compute_dtype(student_features, teacher_features)

    valid = jnp.ones((batch,), bool) if mask is None else jnp.asarray(mask, bool)
    # Padded rows may hold anything: zero them so no NaN/inf reaches a value or a gradient.
    student = jnp.where(valid[:, None], student_features, 0)
    teacher = jax.lax.stop_gradient(jnp.where(valid[:, None], teacher_features, 0))
    options = dict(
        student_dissimilarity=student_dissimilarity, teacher_dissimilarity=teacher_dissimilarity,
        regularization_strength=regularization_strength, regularization=regularization,
        objective=objective, neighbourhood=neighbourhood, dtype=dtype,
    )

    if axis_name is not None:
        total, count = _local_sums(student, teacher, valid, axis_name, options)
        total = jax.lax.psum(total, axis_name)
        count = jax.lax.psum(count, axis_name)
    elif (found := _explicit_batch_axes(student, teacher)) is None:
        rows = jnp.arange(batch)
        total, count = _row_losses(student, teacher, rows, valid, student, teacher, valid,
                                   **options)
    else:
        mesh, axes = found
        spec = PartitionSpec(axes)

        def local(student, teacher, valid):
            return tuple(x[None] for x in _local_sums(student, teacher, valid, axes, options))

        def split(*operands):
            # shard_map's in_specs must match the operands' types, hence the reshard.
            sharding = jax.sharding.NamedSharding(mesh, spec)
            operands = (jax.sharding.reshard(x, sharding) for x in operands)
            # Per-device partial sums leave the map sharded and are added outside: the body
            # needs no psum, hence no replication typing (check_vma), and all_gather's
            # transpose (a reduce-scatter) gives every device the global loss's gradient for
            # its rows.
            return jax.shard_map(
                local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=(spec, spec),
                axis_names=set(axes), check_vma=False,
            )(*operands)

        # jit: the types' mesh is abstract, which eager operations outside jax.set_mesh refuse.
        totals, counts = jax.jit(split)(student, teacher, valid)
        total, count = jnp.sum(totals), jnp.sum(counts)
    # No reference counted: 0, or NaN if the features are not finite (total * 0).
    return jnp.where(count > 0, total / jnp.maximum(count, 1), total * 0.0).astype(dtype)


def pc_score(
    student_features: jax.Array, teacher_features: jax.Array, *,
    student_dissimilarity: Dissimilarity = "euclidean",
    teacher_dissimilarity: Dissimilarity = "euclidean",
    mask: jax.Array | None = None, chunk_size: int | None = None,
) -> jax.Array:
    """Perception coherence score: mean Spearman correlation of the two dissimilarity rankings.

        pc_score = mean over valid references i of
                   spearman_{j in C_i}( D_S[i, j], D_T[i, j] )

    with C_i every other valid sample and Spearman's rho the Pearson correlation of hard ranks
    (ties averaged), as ``scipy.stats.spearmanr``. In [-1, 1]: 1 means the student orders every
    row like the teacher, 0 an unrelated order, -1 the reversed order. A row that is constant on
    either side counts as 0. NaN or Inf in a valid sample gives NaN; finite features of any
    scale are scored exactly (as in the loss).

    Fewer than 3 samples: like the loss, a batch of fewer than 3 rows raises ValueError. With a
    mask leaving fewer than 3 valid samples no correlation exists and the score is NaN (the loss
    is then 0, so that a training step on such a batch changes nothing; a score has no neutral
    value, and NaN is also what ``accuracy`` returns when no example is valid).

    References are processed ``chunk_size`` at a time against the full set (``lax.map``), so
    memory is O(chunk_size * N) and time O(N^2 log N): suitable for a whole evaluation set.

    Args:
      student_features: (N, Ds) student features, N >= 3, floating (as in the loss).
      teacher_features: (N, Dt) teacher features, floating.
      student_dissimilarity, teacher_dissimilarity: as in ``perception_coherence_loss``.
      mask: optional (N,) bool, True for real samples (e.g. padded evaluation batches).
      chunk_size: references per chunk; None means min(N, 512).

    Returns:
      A scalar of the loss's dtype rule: float32, or float64 when a feature array is float64.

    Examples:
      >>> from pcjax.losses import pc_score
      >>> import jax
      >>> key_t, key_s = jax.random.split(jax.random.key(0))
      >>> teacher = jax.random.normal(key_t, (32, 8))
      >>> student = teacher[:, :4] + 0.3 * jax.random.normal(key_s, (32, 4))
      >>> print(f"{pc_score(student, teacher):.3f}, {pc_score(teacher, teacher):.3f}")
      0.659, 1.000
    """
    student_features, teacher_features, mask = _check_common(
        student_features, teacher_features, mask, student_dissimilarity, teacher_dissimilarity
    )
    num = student_features.shape[0]
    _check_min_batch(num)
    dtype = _compute_dtype(student_features, teacher_features)
    valid = jnp.ones((num,), bool) if mask is None else jnp.asarray(mask, bool)
    # Padded rows may hold anything (NaN included): only the valid rows are read.
    student = jnp.where(valid[:, None], student_features, 0)
    teacher = jnp.where(valid[:, None], teacher_features, 0)

    def chunk_sums(ref_index):
        refs = jnp.minimum(ref_index, num - 1)
        ref_valid = (ref_index < num) & valid[refs]
        compared, count = _compared_set(ref_index, valid)
        student_d = _scale_free_dissimilarity(student[refs], student, student_dissimilarity)
        teacher_d = _scale_free_dissimilarity(teacher[refs], teacher, teacher_dissimilarity)
        correlation = _masked_pearson(
            _hard_ranks_within(student_d, compared), _hard_ranks_within(teacher_d, compared),
            compared, _counts(compared, dtype),
        )
        counted = ref_valid & (count >= MIN_VALID - 1)
        return jnp.sum(jnp.where(counted, correlation, 0.0)), jnp.sum(counted)

    # Ranks of NaN or Inf features would correlate as 0 or better: the score is NaN instead.
    finite = jnp.all(jnp.isfinite(student)) & jnp.all(jnp.isfinite(teacher))
    return _mean_over_references(chunk_sums, num, chunk_size, finite, dtype)
