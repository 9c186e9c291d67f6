"""Evaluation on frozen models: top-1, linear probe, kNN; against a teacher, pc_score, linear CKA
and the teacher-neighbourhood recall.

Features and logits are computed once per (model, split) in eval mode, in batches padded by the
input pipeline; the padding rows are dropped with the batch mask so every example counts once.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Generator, Mapping, Sequence

import jax
import numpy as np

from pcjax import metrics
from pcjax.training import sharding

# Jitted once per process: the compiled probes are reused by every model, phase and run with the
# same feature shapes (teacher and student evaluations, a resumed run in the same process).
_linear_probe = jax.jit(metrics.linear_probe_accuracy, static_argnames=("num_classes",))
_knn = jax.jit(metrics.knn_accuracy, static_argnames=("k", "num_classes"))
_pc_score = jax.jit(metrics.pc_score, static_argnames=("student_dissimilarity",
                                                       "teacher_dissimilarity", "chunk_size"))
_cka = jax.jit(metrics.linear_cka)
_recall = jax.jit(metrics.neighbourhood_recall, static_argnames=("k", "chunk_size"))
# The neighbourhood the recall looks at: each point's 10 nearest teacher neighbours.
RECALL_K = 10


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
            host = sharding.to_host({"features": out.features, "logits": out.logits,
                                     "label": batch["label"], "mask": batch["mask"]})
            keep = host["mask"].astype(bool)
            for key in chunks:
                chunks[key].append(host[key][keep])
    return {k: np.concatenate(v) for k, v in chunks.items()}


def top1(pred: dict[str, np.ndarray]) -> float:
    """Top-1 accuracy of the logits of a `predict` result, in [0, 1]."""
    return float(metrics.accuracy(pred["logits"], pred["label"]))


def coherence(student: dict[str, np.ndarray], teacher: dict[str, np.ndarray], *, chunk_size: int,
              student_dissimilarity: str = "euclidean",
              teacher_dissimilarity: str = "euclidean") -> float:
    """`pc_score` of student vs teacher features over the same examples, in [-1, 1].

    `chunk_size` references at a time (0: the pc_score default).
    """
    return float(_pc_score(student["features"], teacher["features"],
                           student_dissimilarity=student_dissimilarity,
                           teacher_dissimilarity=teacher_dissimilarity,
                           chunk_size=chunk_size or None))


def evaluate(
    predict: Callable[[str], dict[str, np.ndarray]], splits: Sequence[str], *, probe_split: str,
    knn_k: int, num_classes: int, teacher: Mapping[str, dict[str, np.ndarray]] | None = None,
    chunk_size: int = 0, dissimilarities: Mapping[str, str] | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, np.ndarray]]]:
    """Scores of one frozen model on each of `splits`, as train.py's final evaluation makes them.

    Args:
      predict: ``predict(split)`` -> the model's `predict` result on that split; called once per
        distinct split (`probe_split` and `splits`).
      splits: the splits to score.
      probe_split: the split the linear probe (`metrics.linear_probe_accuracy`: L2-regularized
        multinomial logistic regression on standardized features) and kNN
        (`metrics.knn_accuracy`, `knn_k` neighbours) are fitted on.
      knn_k, num_classes: the kNN's number of neighbours; the number of classes of the labels.
      teacher: the teacher's `predict` results by split; a split found there also gets pc_score,
        "cka" (`metrics.linear_cka` of the features) and "neighbourhood_recall"
        (`metrics.neighbourhood_recall` with k = `RECALL_K`): two scores of how much of the
        teacher's geometry the student keeps that the perception coherence loss does not train
        on (pc_score measures the ranks it trains on).
      chunk_size, dissimilarities: as in `coherence` (default: euclidean on both sides).

    Returns:
      ({split: {"top1", "linear_probe", "knn"[, "pc_score", "cka", "neighbourhood_recall"]}},
       {split: predict result}).

    Examples:
      >>> rng = np.random.default_rng(0)
      >>> label = np.arange(40) % 2
      >>> def predict(split):
      ...     features = rng.normal(size=(40, 3)) + 5.0 * (2 * label[:, None] - 1)
      ...     return {"features": features, "logits": features[:, :2], "label": label}
      >>> scores, preds = evaluate(predict, ["test"], probe_split="train", knn_k=5,
      ...                          num_classes=2)
      >>> print(sorted(scores["test"]), round(scores["test"]["knn"], 2))
      ['knn', 'linear_probe', 'top1'] 1.0
    """
    preds = {split: predict(split) for split in dict.fromkeys((probe_split, *splits))}
    scores = {}
    for split in splits:
        fit, test = preds[probe_split], preds[split]
        args = (fit["features"], fit["label"], test["features"], test["label"])
        scores[split] = {"top1": top1(test),
                         "linear_probe": float(_linear_probe(*args, num_classes=num_classes)),
                         "knn": float(_knn(*args, k=knn_k, num_classes=num_classes))}
        if teacher is not None and split in teacher:
            pair = (test["features"], teacher[split]["features"])
            scores[split].update(
                pc_score=coherence(test, teacher[split], chunk_size=chunk_size,
                                   **(dissimilarities or {})),
                cka=float(_cka(*pair)),
                neighbourhood_recall=float(_recall(*pair, k=RECALL_K,
                                                   chunk_size=chunk_size or None)))
    return scores, preds
