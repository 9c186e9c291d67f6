"""Evaluation on frozen models: top-1, linear probe, kNN and pc_score.

Features and logits are computed once per (model, split) in eval mode, in batches padded by the
input pipeline; the padding rows are dropped with the batch mask so every example counts once.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Generator

import jax
import numpy as np

from pcjax import metrics
from pcjax.training import sharding

# Jitted once per process: the compiled probes are reused by every model, phase and run with the
# same feature shapes (teacher and student evaluations, a resumed run in the same process).
_linear_probe = jax.jit(metrics.linear_probe_accuracy, static_argnames=("num_classes",))
_knn = jax.jit(metrics.knn_accuracy, static_argnames=("k", "num_classes"))
_pc_score = jax.jit(
    metrics.pc_score,
    static_argnames=("student_dissimilarity", "teacher_dissimilarity", "chunk_size"),
)


def predict(forward: Callable, variables, batches: Generator[dict]) -> dict[str, np.ndarray]:
    """Runs `forward(variables, images)` over `batches`; host arrays of the real examples only.

    `batches` (an `eval_batches` generator) is closed at the end, also on an error, which stops
    the input pipeline's reading threads.

    Returns:
      {"features": (N, D), "logits": (N, C), "label": (N,)}, N the number of unpadded examples.
    """
    chunks = {"features": [], "logits": [], "label": []}
    with contextlib.closing(batches):
        for batch in batches:
            out = forward(variables, batch["image"])
            host = sharding.to_host(
                {
                    "features": out.features,
                    "logits": out.logits,
                    "label": batch["label"],
                    "mask": batch["mask"],
                }
            )
            keep = host["mask"].astype(bool)
            for key in chunks:
                chunks[key].append(host[key][keep])
    return {k: np.concatenate(v) for k, v in chunks.items()}


def top1(pred: dict[str, np.ndarray]) -> float:
    """Top-1 accuracy of the logits of a `predict` result, in [0, 1]."""
    return float(metrics.accuracy(pred["logits"], pred["label"]))


def feature_quality(
    train: dict[str, np.ndarray], test: dict[str, np.ndarray], *, knn_k: int, num_classes: int
) -> dict[str, float]:
    """Linear-probe and kNN top-1 of frozen features: fit on `train`, score on `test`, in [0, 1].

    The probe is `metrics.linear_probe_accuracy` (L2-regularized multinomial logistic regression
    on standardized features); kNN is `metrics.knn_accuracy` with `knn_k` neighbours.
    """
    args = (train["features"], train["label"], test["features"], test["label"])
    return {
        "linear_probe": float(_linear_probe(*args, num_classes=num_classes)),
        "knn": float(_knn(*args, k=knn_k, num_classes=num_classes)),
    }


def coherence(
    student: dict[str, np.ndarray],
    teacher: dict[str, np.ndarray],
    *,
    chunk_size: int,
    student_dissimilarity: str = "euclidean",
    teacher_dissimilarity: str = "euclidean",
) -> float:
    """`pc_score` of student vs teacher features over the same examples, in [-1, 1].

    `chunk_size` references at a time (0: the pc_score default).
    """
    return float(
        _pc_score(
            student["features"],
            teacher["features"],
            student_dissimilarity=student_dissimilarity,
            teacher_dissimilarity=teacher_dissimilarity,
            chunk_size=chunk_size or None,
        )
    )
