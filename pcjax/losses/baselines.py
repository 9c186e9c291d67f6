"""Distillation baselines, as pure JAX functions of the student's and the teacher's outputs.

Definitions and defaults follow the PyTorch reference implementations the field benchmarks with:
RepDistiller (Tian, Krishnan, Isola, "Contrastive Representation Distillation", ICLR 2020),
``distiller_zoo/*.py``, except where a docstring says otherwise. Every function takes
``(student, teacher)`` with the batch on axis 0, computes in float32 (float64 for float64 input),
returns a scalar and passes no gradient to the teacher side: the teacher is frozen.
"""

import jax
import jax.numpy as jnp
import optax

from pcjax.dissimilarity import l2_normalize, pairwise_dissimilarity
from pcjax.losses._checks import check_pair


def _prepare(student: jax.Array, teacher: jax.Array) -> tuple[jax.Array, jax.Array]:
    dtype = jnp.promote_types(jnp.result_type(student, teacher), jnp.float32)
    return student.astype(dtype), jax.lax.stop_gradient(teacher.astype(dtype))


def _safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """numerator / denominator, and 0 (with zero gradient) where the denominator is 0."""
    nonzero = denominator != 0
    return jnp.where(nonzero, numerator / jnp.where(nonzero, denominator, 1.0), 0.0)


def kd(
    student_logits: jax.Array, teacher_logits: jax.Array, *, temperature: float = 4.0
) -> jax.Array:
    """Knowledge distillation (Hinton, Vinyals, Dean, 2015, arXiv:1503.02531).

        loss = T^2 / B * sum_i KL( softmax(t_i / T) || softmax(s_i / T) )

    The T^2 factor keeps the gradient scale independent of T (RepDistiller ``DistillKL``).

    Args:
      student_logits, teacher_logits: (B, C) logits.
      temperature: T > 0; RepDistiller's default is 4.

    Returns:
      Scalar KL divergence in nats, scaled by T^2.

    Examples:
      >>> from pcjax.losses import kd
      >>> import jax.numpy as jnp
      >>> student = jnp.array([[2.0, 0.5, -1.0], [0.1, 1.5, 0.3]])
      >>> teacher = jnp.array([[3.0, 0.0, -2.0], [0.0, 2.0, 0.0]])
      >>> print(f"{kd(student, teacher):.4f}")
      0.2166
    """
    student, teacher = _prepare(*check_pair(
        student_logits, teacher_logits, student_name="student_logits",
        teacher_name="teacher_logits", same_width=True,
    ))
    log_p_student = jax.nn.log_softmax(student / temperature, axis=-1)
    log_p_teacher = jax.nn.log_softmax(teacher / temperature, axis=-1)
    kl = optax.losses.kl_divergence_with_log_targets(log_p_student, log_p_teacher)
    return jnp.mean(kl) * temperature**2


def fitnet(student_features: jax.Array, teacher_features: jax.Array) -> jax.Array:
    """FitNets hint loss (Romero et al., ICLR 2015, arXiv:1412.6550).

        loss = mean over all B x D entries of (r(s) - t)^2

    where r is the learned regressor: the caller passes the student features already mapped to the
    teacher's width (the registry marks this loss ``projection="linear"``). RepDistiller applies
    it to an intermediate feature map through a conv regressor; here it acts on the (B, D)
    features the models return.

    Args:
      student_features: (B, D) regressed student features.
      teacher_features: (B, D) teacher features.

    Examples:
      >>> from pcjax.losses import fitnet
      >>> import jax.numpy as jnp
      >>> student = jnp.array([[2.0, 0.5, -1.0], [0.1, 1.5, 0.3]])
      >>> teacher = jnp.array([[3.0, 0.0, -2.0], [0.0, 2.0, 0.0]])
      >>> print(f"{fitnet(student, teacher):.4f}")
      0.4333
    """
    student, teacher = _prepare(*check_pair(student_features, teacher_features, same_width=True))
    return jnp.mean((student - teacher) ** 2)


def _rkd_distances(x: jax.Array) -> jax.Array:
    """Euclidean distances with the diagonal exactly 0, divided by the mean nonzero distance."""
    distances = pairwise_dissimilarity(x, kind="euclidean")
    distances = jnp.where(jnp.eye(x.shape[0], dtype=bool), 0.0, distances)
    nonzero = jnp.sum(distances > 0)
    return _safe_divide(distances, jnp.sum(distances) / jnp.maximum(nonzero, 1))


def _rkd_angles(x: jax.Array) -> jax.Array:
    """(B, B, B) cosines cos_ijk of the angle between x_j - x_i and x_k - x_i (0 if j or k is i).

    Computed from the Gram matrix, <x_j - x_i, x_k - x_i> = G_jk - G_ij - G_ik + G_ii, so the
    memory is O(B^3 + B D) instead of the O(B^2 D) of explicit difference vectors. Centering
    first changes no angle and reduces cancellation.
    """
    x = x - jnp.mean(x, axis=0, keepdims=True)
    gram = x @ x.T
    diag = jnp.diagonal(gram)
    inner = gram[None, :, :] - gram[:, :, None] - gram[:, None, :] + diag[:, None, None]
    lengths = jnp.where(
        jnp.eye(x.shape[0], dtype=bool), 0.0, pairwise_dissimilarity(x, kind="euclidean")
    )
    return _safe_divide(inner, lengths[:, :, None] * lengths[:, None, :])


def rkd(
    student_features: jax.Array, teacher_features: jax.Array, *, distance_weight: float = 25.0,
    angle_weight: float = 50.0,
) -> jax.Array:
    """Relational knowledge distillation (Park, Kim, Lu, Cho, CVPR 2019, arXiv:1904.05068).

        psi_D(i, j) = ||x_i - x_j|| / mu,  mu = mean of the nonzero distances in the batch
        psi_A(i, j, k) = cos of the angle at x_i between x_j and x_k
        loss = w_d * Huber(psi_D^S, psi_D^T) + w_a * Huber(psi_A^S, psi_A^T)

    Huber is the mean smooth-L1 loss with threshold 1 over all B^2 (resp. B^3) entries; the
    defaults w_d = 25, w_a = 50 are RepDistiller's. Memory is O(B^3) for the angle term.

    Args:
      student_features: (B, Ds) student features.
      teacher_features: (B, Dt) teacher features (widths may differ).
      distance_weight: w_d.
      angle_weight: w_a.

    Examples:
      >>> from pcjax.losses import rkd
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
      >>> print(f"{rkd(x, 3.0 * x):.4f}, {rkd(x, x[::-1]):.4f}")
      0.0000, 4.3408
    """
    student, teacher = _prepare(*check_pair(student_features, teacher_features, min_batch=2))
    # Huber with delta 1 is torch.nn.functional.smooth_l1_loss with its defaults (beta 1, mean).
    huber = lambda s, t: jnp.mean(optax.losses.huber_loss(s, t))  # noqa: E731
    distance_loss = huber(_rkd_distances(student), _rkd_distances(teacher))
    angle_loss = huber(_rkd_angles(student), _rkd_angles(teacher))
    return distance_weight * distance_loss + angle_weight * angle_loss


def pkt(
    student_features: jax.Array, teacher_features: jax.Array, *, eps: float = 1e-7
) -> jax.Array:
    """Probabilistic knowledge transfer (Passalis, Tefas, ECCV 2018, arXiv:1803.10837).

    With cosine similarities c_ij = <x_i / (||x_i|| + eps), x_j / (||x_j|| + eps)>, conditional
    probabilities p_{j|i} = (c_ij + 1) / sum_k (c_ik + 1), and

        loss = mean over all B^2 pairs of p^T_{j|i} log((p^T_{j|i} + eps) / (p^S_{j|i} + eps))

    (RepDistiller ``PKT.cosine_similarity_loss``, eps = 1e-7; the self pair j = i is included).
    Unlike the reference code, NaN features are not zeroed: they give a NaN loss.

    Args:
      student_features: (B, Ds) student features.
      teacher_features: (B, Dt) teacher features (widths may differ).
      eps: the stabilizer of the norms and of the logarithm.

    Examples:
      >>> from pcjax.losses import pkt
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
      >>> print(f"{pkt(x, x[::-1]):.5f}")
      0.01204
    """
    student, teacher = _prepare(*check_pair(student_features, teacher_features, min_batch=2))

    def probabilities(x: jax.Array) -> jax.Array:
        squared_norm = jnp.sum(x * x, axis=-1, keepdims=True)
        positive = squared_norm > 0
        norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, squared_norm, 1.0)), 0.0)
        unit = x / (norm + eps)
        similarity = (unit @ unit.T + 1.0) / 2.0
        return similarity / jnp.sum(similarity, axis=-1, keepdims=True)

    p_student, p_teacher = probabilities(student), probabilities(teacher)
    return jnp.mean(p_teacher * jnp.log((p_teacher + eps) / (p_student + eps)))


def sp(student_features: jax.Array, teacher_features: jax.Array) -> jax.Array:
    """Similarity-preserving distillation (Tung, Mori, ICCV 2019, arXiv:1907.09682).

        G = row-L2-normalize(f f^T)      (B, B)
        loss = ||G^T - G^S||_F^2 / B^2

    RepDistiller applies it to the last feature map flattened; here it acts on the (B, D) features
    given.

    Args:
      student_features: (B, Ds) student features.
      teacher_features: (B, Dt) teacher features (widths may differ).

    Examples:
      >>> from pcjax.losses import sp
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
      >>> print(f"{sp(x, 2.0 * x):.4f}, {sp(x, x[::-1]):.4f}")
      0.0000, 0.2169
    """
    student, teacher = _prepare(*check_pair(student_features, teacher_features, min_batch=2))

    def similarity(x: jax.Array) -> jax.Array:
        return l2_normalize(x @ x.T, eps=1e-12)

    batch = student.shape[0]
    return jnp.sum((similarity(teacher) - similarity(student)) ** 2) / (batch * batch)


def cc(student_embedding: jax.Array, teacher_embedding: jax.Array) -> jax.Array:
    """Correlation congruence (Peng et al., ICCV 2019, arXiv:1904.01802), as RepDistiller runs it.

    With the per-sample absolute differences delta_i = |s_i - t_i| (a D-vector),

        loss = 1 / (B - 1) * sum_{i=0}^{B-2} sum_d delta_{i,d} delta_{i+1,d}

    i.e. the mean over consecutive pairs of rows of the batch of the inner product of their
    differences (RepDistiller ``distiller_zoo/CC.py``, ``Correlation.forward``, used with beta =
    0.02). This is the code the field's CC numbers come from; it is not the paper's
    Taylor-expanded RBF kernel correlation. The loss depends on the order of the batch.

    Embeddings: RepDistiller maps both networks' features through learned linear embeddings to
    ``feat_dim`` = 128 (``LinearEmbed``, no normalization) and trains both. pcjax embeds only the
    student side, onto the teacher's width (registry ``projection="linear"``), and passes the
    teacher's features as they are: in pcjax the teacher is frozen and the transfer consumes only
    its features, so nothing teacher-side is trained. A trainable teacher embedding would also give
    the loss a trivial minimum (both embeddings constant and equal) that transfers nothing.

    |x| is taken with derivative 0 at x = 0, as ``torch.abs``.

    Args:
      student_embedding: (B, D) student features mapped to the teacher's width, B >= 2.
      teacher_embedding: (B, D) teacher features.

    Returns:
      Scalar, in squared feature units.

    Examples:
      >>> from pcjax.losses import cc
      >>> import jax.numpy as jnp
      >>> student = jnp.array([[2.0, 0.5, -1.0], [0.1, 1.5, 0.3]])
      >>> teacher = jnp.array([[3.0, 0.0, -2.0], [0.0, 2.0, 0.0]])
      >>> print(f"{cc(student, teacher):.4f}")
      0.6500
    """
    student, teacher = _prepare(*check_pair(
        student_embedding, teacher_embedding, student_name="student_embedding",
        teacher_name="teacher_embedding", min_batch=2, same_width=True,
    ))
    difference = student - teacher
    delta = jnp.sign(difference) * difference
    return jnp.mean(jnp.sum(delta[:-1] * delta[1:], axis=-1))
