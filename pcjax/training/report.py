"""What a finished job reports: the printed summary table and the workdir's results.json."""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from pcjax.training.spec import STUDENT, TEACHER


def summary_table(config: ml_collections.ConfigDict, results: dict[str, float]) -> str:
    """The printed summary: one row per model, accuracies in %; the student's pc_score in [-1, 1]
    (the ranks its loss trains on), CKA in [0, 1] and recall@10 in % (what it does not train on)."""
    head = (f"{config.dataset}: {config.teacher.model} -> {config.student.model}, loss "
            f"{config.distill.loss}, protocol {config.distill.protocol}")
    cols = ("top1", "linear_probe", "knn", "pc_score", "cka", "neighbourhood_recall")
    titles = ("model", "top-1 %", "linear probe %", f"kNN (k={config.eval.knn_k}) %", "pc_score",
              "CKA", "recall@10 %")
    # A class-unaware student's classifier head never trains: its top-1 is chance, not a result.
    untrained = {f"{STUDENT}/top1"} if config.distill.protocol == "class_unaware" else set()
    rows = [titles]
    for name in (TEACHER, STUDENT):
        cells = [name]
        for c in cols:
            v = None if f"{name}/{c}" in untrained else results.get(f"{name}/{c}")
            cells.append("-" if v is None else (
                f"{v:.4f}" if c in ("pc_score", "cka") else f"{100 * v:.2f}"))
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(titles))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    note = ("\n(class_unaware: the student's classifier head is not trained, so no top-1; judge it "
            "by probe/kNN.)" if config.distill.protocol == "class_unaware" else "")
    return head + "\n" + "\n".join(lines) + note


def write_results(workdir: str, results: dict[str, float]) -> None:
    """``<workdir>/results.json`` (written by process 0 only)."""
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)
