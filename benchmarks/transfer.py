"""Class-unaware transfer on the offline datasets: every method, same budget, mean ± std over seeds.

The class-unaware transfer protocol (README, "Class-unaware transfer"). One teacher per dataset is
trained with cross-entropy; then one student per method learns from the teacher's features alone
(inputs and teacher features, no labels), with the method's transfer loss alone:

    perception coherence (objective "mse" and "spearman"), RKD, PKT, SP, CC, FitNet
    (``pcjax.losses.get(name)``, each at its registry weight; FitNet and CC train their linear
    projection head to the teacher's width with the student);

plus two references: "no transfer" (the student at initialization, trained on nothing) and
"supervised" (the student trained with cross-entropy on the labels). Each student's frozen
features are then scored on the test split by a linear probe and by kNN (both fitted on the
training part) and by ``pc_score`` against the teacher's test features.

Every run is a train.py config (`method_config`) built, stepped and evaluated by the library's
code: ``pcjax.training.build`` makes the phases and their step, ``pcjax.training.evaluation``
scores the models as train.py's evaluation does (same probe, same kNN k, same pc_score).

Splits: models train on "train[:90%]"; "train[90%:]" is the validation split that picks each
method's learning rate (best mean validation linear-probe accuracy over the seeds; top-1 accuracy
for the supervised student); the test split is only used for the reported numbers.

Budget: every student gets the same number of adamw steps (no weight decay, constant rate) at the
same batch size, at each of the learning rates of the sweep, for every seed. Seed s fixes the
student's initialization and its batch order. All (seed, learning rate) pairs of one method train
together as one population (``build.population``: the library's step vmapped over the members).

    python benchmarks/transfer.py --dataset digits --seeds 5
    python benchmarks/transfer.py --dataset mnist1d --seeds 5

The markdown table is printed and written to benchmarks/results/transfer_<dataset>.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from pcjax import data
from pcjax.training import build, evaluation, sharding, trainer
from pcjax.training import config as config_lib
from pcjax.training import state as state_lib

MODELS = {"digits": ("digits_cnn", "digits_student"), "mnist1d": ("mnist1d_cnn", "mnist1d_student")}
TRAIN, VALIDATION, TEST = "train[:90%]", "train[90%:]", "test"
SPLITS = {"train": TRAIN, "validation": VALIDATION, "test": TEST}
TEACHER_SEED, TEACHER_LR = 1000, 1e-3


@dataclasses.dataclass(frozen=True)
class Method:
    """A row of the table: a transfer loss (with keyword arguments), or a reference student."""

    label: str
    loss: str | None = None
    kwargs: tuple = ()
    trained: bool = True


METHODS = (
    Method("perception coherence (mse)", "perception_coherence", (("objective", "mse"),)),
    Method("perception coherence (spearman)", "perception_coherence",
           (("objective", "spearman"),)),
    Method("RKD", "rkd"),
    Method("PKT", "pkt"),
    Method("SP", "sp"),
    Method("CC", "cc"),
    Method("FitNet", "fitnet"),
    Method("no transfer", trained=False),
    Method("supervised (CE, labels)"),
)


def method_config(dataset: str, method: Method, *, seed: int, steps: int, teacher_steps: int,
                  batch_size: int):
    """The train.py config of one run: `method`'s student at `seed`, the teacher (seeded by
    TEACHER_SEED). Base learning rate 1: each population member scales it by its own."""
    config = config_lib.base_config()
    config.dataset, config.seed = dataset, seed
    config.teacher.model, config.student.model = MODELS[dataset]
    config.train_split, config.eval_split, config.eval.probe_train_split = TRAIN, TEST, TRAIN
    for role, n in (("teacher", teacher_steps), ("student", steps)):
        config[role].train = config_lib.phase_config(
            batch_size=batch_size, num_steps=n, augment=False, schedule=dict(name="constant"),
            optimizer=dict(name="adamw", learning_rate=1.0, weight_decay=0.0),
        )
    if method.loss is None:  # The references: cross-entropy alone (a KD term would be unused).
        config.distill.update(protocol="class_aware", loss="kd", gamma=1.0, alpha=0.0, beta=0.0)
    else:
        config.distill.update(protocol="class_unaware", loss=method.loss)
        config.distill.loss_kwargs.update(dict(method.kwargs))
    return config


def train(phase: build.Phase, config, seeds, repeat: int, mesh):
    """Trains a population (member j: ``seeds[j // repeat]``'s batch order); the final state."""
    step, state = jax.jit(phase.step, donate_argnums=0), phase.state
    pipelines = [data.train_batches(config.dataset, split=TRAIN, global_batch_size=config[
        phase.name].train.batch_size, seed=seed, mesh=mesh, augment=False) for seed in seeds]
    try:
        for _ in range(phase.steps.total):
            batches = [next(p) for p in pipelines for _ in range(repeat)]
            batch = {k: jnp.stack([b[k] for b in batches]) for k in ("image", "label")}
            state, _ = step(state, batch, phase.teacher)
    finally:
        for p in pipelines:
            p.close()
    return state


def score(phase: build.Phase, state, config, mesh, teacher_test=None) -> tuple[dict, list]:
    """Per-member scores (each (P,)) of a population's frozen models, scored as train.py's
    evaluation does, and every member's test-split predictions."""
    forward = build.jit_forward(phase.forward, mesh)
    num_classes = data.spec(config.dataset).num_classes
    scores, tests = [], []
    for i in range(int(state.step.shape[0])):
        variables = state_lib.export_variables(jax.tree.map(lambda x, i=i: x[i], state))
        pred = {k: evaluation.predict(forward, variables, data.eval_batches(
            config.dataset, split, global_batch_size=config.eval.batch_size, mesh=mesh))
            for k, split in SPLITS.items()}
        validation, test = (evaluation.feature_quality(pred["train"], pred[k],
                                                       knn_k=config.eval.knn_k,
                                                       num_classes=num_classes)
                            for k in ("validation", "test"))
        tests.append(pred["test"])
        scores.append({
            "validation_probe": validation["linear_probe"],
            "validation_top1": evaluation.top1(pred["validation"]),
            "probe": test["linear_probe"],
            "knn": test["knn"],
            "top1": evaluation.top1(pred["test"]),
            "pc_score": np.nan if teacher_test is None else evaluation.coherence(
                pred["test"], teacher_test, chunk_size=config.eval.pc_chunk_size,
                **trainer.pc_metrics(config)),
        })
    return {k: np.array([s[k] for s in scores]) for k in scores[0]}, tests


def run(dataset: str, seeds: int, learning_rates: tuple[float, ...], steps: int,
        teacher_steps: int, batch_size: int) -> dict:
    """Trains the teacher and every method; returns the table's numbers."""
    mesh = sharding.make_mesh(1)
    budget = dict(steps=steps, teacher_steps=teacher_steps, batch_size=batch_size)
    start = time.perf_counter()
    config = method_config(dataset, METHODS[0], seed=TEACHER_SEED, **budget)
    # A population of one, so the students' training and scoring code serves the teacher too.
    phase = build.population([build.teacher_phase(config, mesh, population=True)], [TEACHER_LR])
    state = train(phase, config, [config.seed], 1, mesh)
    teacher_scores, (teacher_test,) = score(phase, state, config, mesh)
    teacher = build.Model(phase.graphdef, state_lib.export_variables(
        jax.tree.map(lambda x: x[0], state)))
    results = {"teacher": {"scores": teacher_scores, "lr": TEACHER_LR,
                           "seconds": time.perf_counter() - start}}
    print(f"teacher {config.teacher.model}: test top-1 {100 * teacher_scores['top1'][0]:.2f}% "
          f"({results['teacher']['seconds']:.0f} s)", flush=True)
    for method in METHODS:
        start = time.perf_counter()
        configs = [method_config(dataset, method, seed=s, **budget) for s in range(seeds)]
        # Member (s, lr) of the seed-major population; the untrained references have the same
        # shape (identical copies per seed).
        members = [build.student_phase(c, mesh, teacher, population=True) for c in configs]
        phase = build.population([m for m in members for _ in learning_rates],
                                 list(learning_rates) * seeds)
        state = phase.state
        if method.trained:
            state = train(phase, configs[0], [m.seed for m in members], len(learning_rates), mesh)
        scores, _ = score(phase, state, configs[0], mesh, teacher_test)
        scores = {k: v.reshape(seeds, len(learning_rates)) for k, v in scores.items()}
        selection = "validation_top1" if method.loss is None else "validation_probe"
        best = int(np.argmax(scores[selection].mean(axis=0))) if method.trained else 0
        results[method.label] = {
            "scores": {k: v[:, best] for k, v in scores.items()},
            "lr": learning_rates[best] if method.trained else None,
            "seconds": time.perf_counter() - start,
        }
        chosen = results[method.label]
        print(f"{method.label}: lr {chosen['lr']}, test probe "
              f"{100 * chosen['scores']['probe'].mean():.2f}%, pc_score "
              f"{chosen['scores']['pc_score'].mean():.4f} ({chosen['seconds']:.0f} s)", flush=True)
    return results


# ----------------------------------------------------------------------------- the report


def _cell(values, percent: bool) -> str:
    values = np.asarray(values, np.float64)
    scale = 100.0 if percent else 1.0
    digits = 2 if percent else 4
    if values.size == 1:
        return f"{scale * values[0]:.{digits}f}"
    return f"{scale * values.mean():.{digits}f} ± {scale * values.std(ddof=1):.{digits}f}"


def verdicts(results: dict) -> list[str]:
    """Where each perception coherence variant wins, ties or loses against each baseline.

    A difference of means larger than sqrt(std_a^2 + std_b^2) (the spread of the difference of
    two single runs) counts as a win or a loss; anything closer is a tie.
    """
    metric_names = {"probe": "linear probe", "knn": "kNN", "pc_score": "pc_score"}
    baselines = [m.label for m in METHODS if m.loss not in (None, "perception_coherence")]
    baselines.append("no transfer")
    lines = []
    for method in METHODS:
        if method.loss != "perception_coherence":
            continue
        ours = results[method.label]["scores"]
        for key, name in metric_names.items():
            outcome = {"wins over": [], "ties with": [], "loses to": []}
            for other in baselines:
                theirs = results[other]["scores"]
                diff = ours[key].mean() - theirs[key].mean()
                noise = np.hypot(ours[key].std(ddof=1), theirs[key].std(ddof=1))
                word = "wins over" if diff > noise else "loses to" if diff < -noise else "ties with"
                outcome[word].append(other)
            parts = [f"{word} {', '.join(names)}" for word, names in outcome.items() if names]
            lines.append(f"- {method.label}, {name}: {'; '.join(parts)}.")
    return lines


def markdown(dataset: str, results: dict, args, load: tuple[float, float], seconds: float) -> str:
    teacher_name, student_name = MODELS[dataset]
    knn_k = config_lib.base_config().eval.knn_k  # train.py's
    lines = [
        f"## Class-unaware transfer, {dataset}: {teacher_name} -> {student_name}",
        "",
        f"`python benchmarks/transfer.py --dataset {dataset} --seeds {args.seeds} --steps "
        f"{args.steps} --teacher_steps {args.teacher_steps} --batch_size {args.batch_size} "
        f"--learning_rates {' '.join(str(lr) for lr in args.learning_rates)}`",
        "",
        f"Students train on {TRAIN} for {args.steps} adamw steps of batch {args.batch_size} with "
        "their transfer loss alone (no labels); the learning rate is chosen per method from "
        f"{{{', '.join(str(lr) for lr in args.learning_rates)}}} by mean validation "
        f"linear-probe accuracy on {VALIDATION} (validation top-1 for the supervised student). "
        f"Test split: {TEST}. Mean ± std (ddof=1) over {args.seeds} seeds; the teacher is one "
        f"model ({args.teacher_steps} steps, lr 0.001). Linear probe: L-BFGS logistic "
        f"regression on standardized frozen features; kNN: k={knn_k}, cosine, weighted vote; "
        "pc_score: mean Spearman correlation of the student's and teacher's test-set "
        "dissimilarity rankings. Top-1 is only meaningful for models trained with labels.",
        "",
        "| model | lr | linear probe % | kNN % | pc_score | top-1 % | val. linear probe % |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, result in results.items():
        scores = result["scores"]
        trained_with_labels = label in ("teacher", "supervised (CE, labels)")
        lines.append(
            f"| {label} | {result['lr'] if result['lr'] is not None else '—'} | "
            f"{_cell(scores['probe'], True)} | {_cell(scores['knn'], True)} | "
            f"{'—' if label == 'teacher' else _cell(scores['pc_score'], False)} | "
            f"{_cell(scores['top1'], True) if trained_with_labels else '—'} | "
            f"{_cell(scores['validation_probe'], True)} |"
        )
    lines += [
        "",
        "Perception coherence against the other transfer losses and the untrained student "
        "(win/loss: difference of means larger than the root sum of squares of the two stds):",
        "",
        *verdicts(results),
        "",
        f"Wall time {seconds / 60:.1f} min on {os.cpu_count()} CPU cores; load average "
        f"{load[0]:.2f} at the start, {load[1]:.2f} at the end.",
    ]
    return "\n".join(lines)


DEFAULT_STEPS = {"digits": 600, "mnist1d": 1000}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(MODELS), required=True)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None,
                        help="student steps (default: %s)" % DEFAULT_STEPS)
    parser.add_argument("--teacher_steps", type=int, default=1500)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rates", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    parser.add_argument("--output", default=None,
                        help="markdown file (default: benchmarks/results/transfer_<dataset>.md)")
    args = parser.parse_args()
    args.steps = args.steps or DEFAULT_STEPS[args.dataset]
    if args.seeds < 2:
        parser.error("--seeds must be at least 2 (the table reports a standard deviation)")
    load_start = os.getloadavg()[0]
    start = time.perf_counter()
    results = run(args.dataset, args.seeds, tuple(args.learning_rates), args.steps,
                  args.teacher_steps, args.batch_size)
    table = markdown(args.dataset, results, args, (load_start, os.getloadavg()[0]),
                     time.perf_counter() - start)
    print(table)
    output = args.output or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                         f"transfer_{args.dataset}.md")
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with open(output, "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
