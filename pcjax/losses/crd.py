"""Contrastive representation distillation (CRD; Tian, Krishnan, Isola, ICLR 2020), functionally.

Definitions follow RepDistiller ``crd/criterion.py`` (CRDLoss, ContrastLoss, Embed) and
``crd/memory.py`` (ContrastMemory). Unlike the other transfer losses CRD keeps state across steps:
two memory banks of N x feat_dim embeddings, one per side (N the training-split size), and one
normalizing constant per side. Each example's row is addressed by its dataset index (the
``"index"`` field of `pcjax.data.train_batches`). A training step:

    heads = crd_heads.CRDHeads(s_dim, t_dim, feat_dim=128, rngs=rngs)  # trained with the student
    state = init_state(key, num_examples=N, feat_dim=128)  # once
    classes = class_index(train_labels)  # once; None under the class-unaware protocol
    ...
    contrast_idx = sample_contrast_indices(key, batch["index"], nce_k=16384, num_examples=N,
                                           label=batch["label"], classes=classes)
    # inside the differentiated function:
    emb_s, emb_t = heads(student_features, teacher_features)
    loss, state = crd_loss(state, emb_s, emb_t, contrast_idx, nce_t=0.07)
    # after the gradient, with the same (stop-gradient) embeddings:
    state = update_banks(state, emb_s, emb_t, batch["index"], momentum=0.5)

Scores (ContrastMemory): for anchor embedding v and candidate bank rows w_0..w_K (w_0 the sample's
own row, the positive), P_k = exp(<w_k, v> / T) / Z. The student-anchor term scores the student
embedding against the TEACHER bank, the teacher-anchor term the teacher embedding against the
STUDENT bank. Z (Z_s, Z_t) is set once, by the first call (while the state's Z is negative), to
mean(exp(<w, v> / T)) * N over that batch's B x (K + 1) scores, then kept; it carries no gradient.

Loss (ContrastLoss, the NCE objective of the paper's eq. 18), with Pn = 1 / N and m = K:

    L(P) = -1/B sum_b [ log(P_b0 / (P_b0 + m Pn + eps)) + sum_k>0 log(m Pn / (P_bk + m Pn + eps)) ]
    crd  = L(P^student-anchor) + L(P^teacher-anchor),    eps = 1e-7.

Gradients reach both embedding heads (the teacher network itself is frozen); bank rows get none.

Sharding. The banks and Z are replicated on every device, and `update_banks` scatters every row of
the global batch into them (under jit with a batch sharded on the data axis, XLA gathers the batch
first). Their memory cost is N x feat_dim x 4 bytes x 2 banks per device: about 51 MB for
N = 50,000 (CIFAR) and 1.3 GB for N = 1.28M (ImageNet) at feat_dim = 128.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pcjax.dissimilarity import l2_normalize

_EPS = 1e-7  # RepDistiller's ContrastLoss eps
_NORM_EPS = 1e-12  # torch.nn.functional.normalize's, as RepDistiller's Normalize and memory


class CRDState(NamedTuple):
    """CRD's memory, a pytree of arrays (jit- and shard-friendly; no flax needed).

    Attributes:
      bank_s: (N, feat_dim) float32, the student embeddings' memory (RepDistiller memory_v1).
      bank_t: (N, feat_dim) float32, the teacher embeddings' memory (memory_v2).
      z_s: () float32, normalizer of the student-anchor scores (Z_v1); negative means unset.
      z_t: () float32, normalizer of the teacher-anchor scores (Z_v2); negative means unset.
    """

    bank_s: jax.Array
    bank_t: jax.Array
    z_s: jax.Array
    z_t: jax.Array


class ClassIndex(NamedTuple):
    """The training split grouped by class, for drawing negatives of other classes.

    Attributes:
      order: (N,) int32, the dataset indices sorted by label (stable).
      start: (C,) int32, where class c begins in ``order``.
      count: (C,) int32, the number of examples of class c.
    """

    order: jax.Array
    start: jax.Array
    count: jax.Array


def init_state(key: jax.Array, num_examples: int, feat_dim: int = 128) -> CRDState:
    """Banks uniform in +-1/sqrt(feat_dim / 3) (ContrastMemory's init, rows of norm ~1), Z unset."""
    _check_positive("num_examples", num_examples, lower=2)
    _check_positive("feat_dim", feat_dim)
    stdv = 1.0 / np.sqrt(feat_dim / 3)
    key_s, key_t = jax.random.split(key)
    bank = lambda k: jax.random.uniform(k, (num_examples, feat_dim), jnp.float32, -stdv, stdv)
    unset = jnp.full((), -1.0, jnp.float32)
    return CRDState(bank(key_s), bank(key_t), unset, unset)


def num_negatives(nce_k: int, num_examples: int) -> int:
    """K: nce_k capped at num_examples - 1."""
    _check_positive("nce_k", nce_k)
    _check_positive("num_examples", num_examples, lower=2)
    return min(nce_k, num_examples - 1)


def class_index(labels, num_classes: int | None = None) -> ClassIndex:
    """Groups the training split's (N,) integer labels by class (host-side, once per run).

    Raises:
      ValueError: labels not 1-D non-negative integers below num_classes, or one class holding
        every example (no negatives to draw).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size < 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array of >= 2 examples, got "
                         f"{labels.dtype} {labels.shape}.")
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, num_classes={num_classes}), got "
                         f"[{labels.min()}, {labels.max()}].")
    count = np.bincount(labels, minlength=num_classes)
    if count.max() == labels.size:
        raise ValueError("labels must hold at least two classes: negatives come from other "
                         "classes.")
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    order = np.argsort(labels, kind="stable")
    return ClassIndex(*(jnp.asarray(a, jnp.int32) for a in (order, start, count)))


def sample_contrast_indices(
    key: jax.Array, index: jax.Array, *, nce_k: int, num_examples: int,
    label: jax.Array | None = None, classes: ClassIndex | None = None,
) -> jax.Array:
    """Each sample's K + 1 bank rows: column 0 its own index (the positive), then K negatives.

    With ``classes`` (RepDistiller's default "exact" mode, class-aware protocol), the negatives
    are drawn uniformly from the examples of the other classes, so they never hold the sample's
    class nor its own index. Without (class-unaware protocol: no labels), they are drawn uniformly
    from all N, as ContrastMemory's own sampler does, so a negative can be the sample itself.
    Draws are with replacement (RepDistiller's exact mode draws without replacement when K is at
    most the number of other-class examples; here every negative is an independent draw from
    the noise distribution, as NCE assumes).

    Args:
      key: PRNG key.
      index: (B,) integer dataset indices of the batch.
      nce_k: negatives per sample (RepDistiller's default 16384), capped at num_examples - 1.
      num_examples: N, the training split's size (the banks' rows).
      label: (B,) integer labels of the batch; required with ``classes``.
      classes: `class_index` of the training split's labels, or None.

    Returns:
      (B, K + 1) int32, K = min(nce_k, N - 1).
    """
    k = num_negatives(nce_k, num_examples)
    index = jnp.asarray(index)
    _check_index("index", index)
    batch = index.shape[0]
    if classes is None:
        negatives = jax.random.randint(key, (batch, k), 0, num_examples, jnp.int32)
    else:
        if label is None:
            raise ValueError("label is required with classes (negatives from other classes).")
        label = jnp.asarray(label)
        if label.shape != index.shape:
            raise ValueError(f"label must have the shape of index {index.shape}, got "
                             f"{label.shape}.")
        if classes.order.shape[0] != num_examples:
            raise ValueError(f"classes covers {classes.order.shape[0]} examples, but "
                             f"num_examples={num_examples}.")
        start, count = classes.start[label][:, None], classes.count[label][:, None]
        # r-th example outside the sample's class: skip the class's block of `order`.
        r = jax.random.randint(key, (batch, k), 0, num_examples - count, jnp.int32)
        negatives = classes.order[jnp.where(r < start, r, r + count)]
    return jnp.concatenate([index.astype(jnp.int32)[:, None], negatives], axis=1)


def crd_loss(state: CRDState, emb_s: jax.Array, emb_t: jax.Array, contrast_idx: jax.Array, *,
             nce_t: float = 0.07) -> tuple[jax.Array, CRDState]:
    """CRD's loss (student-anchor + teacher-anchor NCE terms) and the state with Z set.

    Args:
      state: the banks and normalizers; Z_s / Z_t are set from this batch where still unset.
      emb_s, emb_t: (B, feat_dim) l2-normalized student and teacher embeddings
        (`crd_heads.CRDHeads`).
      contrast_idx: (B, K + 1) bank rows per sample, column 0 the positive
        (`sample_contrast_indices`); K >= 1.
      nce_t: temperature T > 0.

    Returns:
      (scalar float32 loss, ``state`` with z_s and z_t set; banks unchanged).
    """
    num_examples, feat_dim = state.bank_s.shape
    for name, emb in (("emb_s", emb_s), ("emb_t", emb_t)):
        if emb.ndim != 2 or emb.shape[1] != feat_dim:
            raise ValueError(f"{name} must have shape (batch, feat_dim={feat_dim}) to match the "
                             f"banks, got {emb.shape}.")
    if emb_s.shape[0] != emb_t.shape[0]:
        raise ValueError(f"emb_s and emb_t must have the same batch size, got {emb_s.shape[0]} "
                         f"and {emb_t.shape[0]}.")
    if contrast_idx.shape[:1] != emb_s.shape[:1] or contrast_idx.ndim != 2 or (
            contrast_idx.shape[1] < 2):
        raise ValueError(f"contrast_idx must have shape (batch={emb_s.shape[0]}, K + 1) with "
                         f"K >= 1, got {contrast_idx.shape}.")
    if not nce_t > 0:
        raise ValueError(f"nce_t must be positive, got {nce_t}.")

    def scores(bank, emb, z):
        rows = jax.lax.stop_gradient(bank[contrast_idx])  # (B, K + 1, D)
        out = jnp.exp(jnp.einsum("bkd,bd->bk", rows, emb.astype(jnp.float32)) / nce_t)
        z = jnp.where(z < 0, jax.lax.stop_gradient(jnp.mean(out)) * num_examples, z)
        return out / z, z

    p_s, z_s = scores(state.bank_t, emb_s, state.z_s)
    p_t, z_t = scores(state.bank_s, emb_t, state.z_t)
    loss = _nce(p_s, num_examples) + _nce(p_t, num_examples)
    return loss, state._replace(z_s=z_s, z_t=z_t)


def _nce(p: jax.Array, num_examples: int) -> jax.Array:
    """RepDistiller's ContrastLoss of (B, K + 1) normalized scores, column 0 the positive."""
    noise = (p.shape[1] - 1) / num_examples  # m * Pn
    log_d1 = jnp.log(p[:, 0] / (p[:, 0] + noise + _EPS))
    log_d0 = jnp.log(noise / (p[:, 1:] + noise + _EPS))
    return -(jnp.sum(log_d1) + jnp.sum(log_d0)) / p.shape[0]


def update_banks(state: CRDState, emb_s: jax.Array, emb_t: jax.Array, index: jax.Array, *,
                 momentum: float = 0.5) -> CRDState:
    """Writes the batch into the banks: row = l2normalize(momentum * row + (1 - momentum) * emb).

    Each new row is computed from the bank before this call. When an index occurs more than once
    in the batch (a batch that straddles an epoch boundary), the last occurrence's row is written,
    so the result is deterministic. No gradient flows through this update.

    Args:
      state: the banks (Z is kept).
      emb_s, emb_t: (B, feat_dim) student and teacher embeddings, written into bank_s and bank_t.
      index: (B,) integer dataset indices of the batch.
      momentum: in [0, 1]; RepDistiller's nce_m is 0.5.
    """
    index = jnp.asarray(index)
    _check_index("index", index)
    if not 0 <= momentum <= 1:
        raise ValueError(f"momentum must lie in [0, 1], got {momentum}.")
    num_examples, feat_dim = state.bank_s.shape
    for name, emb in (("emb_s", emb_s), ("emb_t", emb_t)):
        if emb.shape != (index.shape[0], feat_dim):
            raise ValueError(f"{name} must have shape (batch={index.shape[0]}, "
                             f"feat_dim={feat_dim}), got {emb.shape}.")
    position = jnp.arange(index.shape[0])
    overwritten = jnp.any(
        (index[:, None] == index[None, :]) & (position[None, :] > position[:, None]), axis=1
    )
    target = jnp.where(overwritten, num_examples, index)  # out of range: dropped

    def update(bank, emb):
        emb = jax.lax.stop_gradient(emb).astype(bank.dtype)
        rows = l2_normalize(momentum * bank[index] + (1 - momentum) * emb, eps=_NORM_EPS)
        return bank.at[target].set(rows, mode="drop")

    return state._replace(bank_s=update(state.bank_s, emb_s), bank_t=update(state.bank_t, emb_t))


def _check_index(name: str, index: jax.Array) -> None:
    if index.ndim != 1 or not jnp.issubdtype(index.dtype, jnp.integer):
        raise ValueError(f"{name} must be a (batch,) integer array, got {index.dtype} "
                         f"{index.shape}.")


def _check_positive(name: str, value: int, lower: int = 1) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < lower:
        raise ValueError(f"{name} must be an integer >= {lower}, got {value!r}.")
