"""Which perception coherence settings work: one-at-a-time sweep around the defaults.

Class-unaware transfer (docs/evaluation.md) on digits and mnist1d with the teacher, student,
splits and budget of ``benchmarks/transfer.py`` (its code trains and scores every run). From the
default loss (objective "mse", regularization "l2", eps = regularization_strength 1, euclidean
dissimilarities on both sides) one setting changes at a time:

    eps in {0.1, 0.3, 3, 10}; objective "spearman"; regularization "kl";
    cosine dissimilarity on the student side, the teacher side, or both.

Every setting trains the same seeds at one learning rate. pc_score is always measured with
euclidean dissimilarities on both sides, so that the rows compare.

    python benchmarks/sweep.py --datasets digits mnist1d --seeds 5

Writes benchmarks/results/sweep.md and sweep.png (linear probe and pc_score per setting).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

import paired
import transfer
from pcjax.training import sharding

DEFAULT = (("objective", "mse"), ("regularization", "l2"), ("regularization_strength", 1.0),
           ("student_dissimilarity", "euclidean"), ("teacher_dissimilarity", "euclidean"))
CHANGES = (
    ("default", ()),
    *((f"eps {eps}", (("regularization_strength", eps),)) for eps in (0.1, 0.3, 3.0, 10.0)),
    ("spearman", (("objective", "spearman"),)),
    ("kl", (("regularization", "kl"),)),
    ("cosine student", (("student_dissimilarity", "cosine"),)),
    ("cosine teacher", (("teacher_dissimilarity", "cosine"),)),
    ("cosine both", (("student_dissimilarity", "cosine"), ("teacher_dissimilarity", "cosine"))),
)
SETTINGS = tuple(transfer.Method(label, "perception_coherence", tuple({**dict(DEFAULT),
                                                                       **dict(change)}.items()))
                 for label, change in CHANGES)
EUCLIDEAN = {"student_dissimilarity": "euclidean", "teacher_dissimilarity": "euclidean"}
LEARNING_RATES = {"digits": 0.003, "mnist1d": 0.03}


def run(dataset: str, args, rows=None, workdir=None) -> dict:
    mesh = sharding.make_mesh(1)
    budget = dict(steps=args.steps, teacher_steps=args.teacher_steps, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as temporary:
        workdir = workdir or temporary
        teacher = transfer.train_teacher(dataset, budget, mesh, workdir, args.teacher_seed)
        return {s.label: transfer.run_method(
            s, teacher, dataset, args.seeds, (args.learning_rate,), budget, mesh,
            os.path.join(workdir, "sweep", s.slug), pc_kwargs=EUCLIDEAN)
            for s in SETTINGS if rows is None or s.slug in rows}


def markdown(all_results: dict, args, seconds: float) -> str:
    lines = [
        "## Perception coherence settings (class-unaware transfer)",
        "",
        f"`python benchmarks/sweep.py --datasets {' '.join(all_results)} --seeds "
        f"{args.seeds_text} --teacher_seed {args.teacher_seed}`",
        "",
        "One setting changed at a time from the default (mse, l2, eps 1, euclidean / euclidean); "
        f"mean ± std over the seeds {', '.join(map(str, args.seeds))}; learning rate "
        f"{LEARNING_RATES} (adamw, constant); budget and splits of benchmarks/transfer.py; "
        "pc_score with euclidean dissimilarities. 'vs default': the setting minus the default, "
        "paired over the same seeds, wins or loses when its 95% t-interval excludes 0 (linear "
        "probe; pc_score).",
    ]
    for dataset, results in all_results.items():
        default = results["default"]["scores"]
        lines += ["", f"### {dataset}", "",
                  "| setting | linear probe % | kNN % | pc_score | vs default (probe; pc_score) |",
                  "|---|---:|---:|---:|---|"]
        for label, row in results.items():
            s = row["scores"]
            verdict = "—" if label == "default" else "; ".join(
                paired.verdict(*paired.interval(s[k], default[k])[1:])
                for k in ("probe", "pc_score"))
            lines.append(f"| {label} | {transfer.cell(s['probe'], True)} | "
                         f"{transfer.cell(s['knn'], True)} | "
                         f"{transfer.cell(s['pc_score'], False)} | {verdict} |")
    rows = {f"{d}/{k}": r for d, results in all_results.items() for k, r in results.items()}
    lines += ["", transfer.timing(rows, seconds, os.getloadavg()[:1] * 2)]
    return "\n".join(lines)


def plot(all_results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (("probe", "linear probe %", 100.0), ("pc_score", "pc_score", 1.0))
    fig, axes = plt.subplots(len(all_results), 2, figsize=(10, 3.2 * len(all_results)),
                             squeeze=False, sharey=True)
    for row, (dataset, results) in zip(axes, all_results.items()):
        labels = list(results)
        for ax, (key, name, scale) in zip(row, keys):
            values = np.array([results[k]["scores"][key] for k in labels]) * scale
            mean, std = values.mean(1), values.std(1, ddof=1)
            ax.errorbar(mean, range(len(labels)), xerr=std, fmt="o", capsize=3)
            ax.axvline(mean[0], color="tab:gray", lw=0.8, ls="--")  # The default setting.
            ax.grid(axis="x", alpha=0.3)
            ax.set_title(f"{dataset}: {name}")
        row[0].set_yticks(range(len(labels)), labels)
        row[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(transfer.MODELS),
                        default=["digits", "mnist1d"])
    parser.add_argument("--seeds", nargs="+", default=["5"], help=transfer.SEEDS_HELP)
    parser.add_argument("--teacher_seed", type=int, default=transfer.TEACHER_SEED)
    parser.add_argument("--steps", type=int, default=None,
                        help=f"student steps (default: {transfer.DEFAULT_STEPS})")
    parser.add_argument("--teacher_steps", type=int, default=1500)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=None,
                        help=f"default: {LEARNING_RATES}")
    parser.add_argument("--workdir", default=None,
                        help="keeps the teacher and the finished rows (as benchmarks/transfer.py)")
    parser.add_argument("--rows", nargs="*", default=None,
                        help=f"only these settings, needs --workdir: {[s.slug for s in SETTINGS]}")
    parser.add_argument("--output_dir", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    transfer.parse_seeds(parser, args)
    if args.rows is not None and not args.workdir:
        parser.error("--rows needs --workdir")
    start = time.perf_counter()
    results = {}
    for dataset in args.datasets:
        workdir = args.workdir and os.path.join(args.workdir, dataset)
        one = argparse.Namespace(**{**vars(args), "steps": args.steps or transfer.DEFAULT_STEPS[
            dataset], "learning_rate": args.learning_rate or LEARNING_RATES[dataset]})
        transfer.check_workdir(parser, one, workdir, "sweep")
        results[dataset] = run(dataset, one, args.rows, workdir)
    if args.rows is not None:
        return
    table = markdown(results, args, time.perf_counter() - start)
    print(table)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "sweep.md"), "w") as f:
        f.write(table + "\n")
    plot(results, os.path.join(args.output_dir, "sweep.png"))


if __name__ == "__main__":
    main()
