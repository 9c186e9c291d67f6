"""Transfer on the offline datasets under both protocols: every method, same budget, mean ± std.

One teacher per dataset is trained with cross-entropy; then one student per method learns from it
(the protocols of docs/evaluation.md):

  class_unaware: the method's transfer loss alone (inputs and teacher features, no labels), for
    perception coherence (objective "mse" and "spearman"), RKD, PKT, SP, CC, FitNet and CRD
    (``pcjax.losses.get(name)``, each at its registry weight; FitNet and CC train a linear
    projection head, CRD its embedding heads and memory banks, with the student), plus two
    references: "no transfer" (the student at initialization) and "supervised" (cross-entropy on
    the labels). Scored on the test split by a linear probe and kNN on the frozen features (both
    fitted on the training part) and by ``pc_score`` against the teacher's test features; the
    learning rate is picked by validation linear-probe accuracy.
  class_aware: cross-entropy + beta * transfer loss (beta = the registry's RepDistiller weight;
    CRD 0.8), plus "CE only", KD (0.1 * CE + 0.9 * KD, temperature 4, RepDistiller's KD
    command) and "CRD + KD" (CE + KD + 0.8 * CRD, RepDistiller's CRD+KD command). Scored and
    selected by top-1.

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

    python benchmarks/transfer.py --dataset digits --seeds 5 [--protocol class_aware]
    python benchmarks/transfer.py --dataset mnist1d --seeds 5 [--protocol class_aware]

The markdown table is printed and written to benchmarks/results/transfer_<dataset>[_<protocol>].md
(no suffix for class_unaware). With ``--workdir``, the teacher and each finished row are kept
there and a rerun reuses them, so rows can run as separate processes (``--rows``) and a last run
without ``--rows`` writes the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import time

import jax
import jax.numpy as jnp
import numpy as np

from pcjax import data
from pcjax.training import build, evaluation, population, sharding
from pcjax.training import config as config_lib
from pcjax.training import state as state_lib
from pcjax.training.spec import RunSpec, resolve

MODELS = {"digits": ("digits_cnn", "digits_student"),
          "mnist1d": ("mnist1d_cnn", "mnist1d_small_cnn")}
TRAIN, VALIDATION, TEST = "train[:90%]", "train[90%:]", "test"
SPLITS = {"train": TRAIN, "validation": VALIDATION, "test": TEST}
TEACHER_SEED, TEACHER_LR = 1000, 1e-3
PROTOCOLS = ("class_unaware", "class_aware")


@dataclasses.dataclass(frozen=True)
class Method:
    """A row of the table: a transfer loss (with keyword arguments), or a reference student.

    ``weights`` overrides the class_aware (gamma, alpha, beta) (default: 1, 0, registry beta);
    ``loss=None`` is cross-entropy alone.
    """

    label: str
    loss: str | None = None
    kwargs: tuple = ()
    trained: bool = True
    weights: tuple | None = None

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "_" for c in self.label.lower()).strip("_")


_LOSSES = (
    Method("perception coherence (mse)", "perception_coherence", (("objective", "mse"),)),
    Method("perception coherence (spearman)", "perception_coherence",
           (("objective", "spearman"),)),
    Method("RKD", "rkd"),
    Method("PKT", "pkt"),
    Method("SP", "sp"),
    Method("CC", "cc"),
    Method("FitNet", "fitnet"),
    Method("CRD", "crd"),
)
METHODS = {
    "class_unaware": (*_LOSSES, Method("no transfer", trained=False),
                      Method("supervised (CE, labels)")),
    "class_aware": (Method("CE only"), Method("KD", "kd", weights=(0.1, 0.9, 0.0)), *_LOSSES,
                    Method("CRD + KD", "crd", weights=(1.0, 1.0, 0.8))),
}


def method_config(dataset: str, method: Method, *, seed: int, steps: int, teacher_steps: int,
                  batch_size: int, protocol: str = "class_unaware"):
    """The train.py config of one run: `method`'s student at `seed` (learning rate 1, scaled per
    population member), the teacher at TEACHER_SEED and TEACHER_LR."""
    config = config_lib.base_config()
    config.dataset, config.seed = dataset, seed
    config.teacher.model, config.student.model = MODELS[dataset]
    config.train_split, config.eval_split, config.eval.probe_train_split = TRAIN, TEST, TRAIN
    for role, n, lr in (("teacher", teacher_steps, TEACHER_LR), ("student", steps, 1.0)):
        config[role].train = config_lib.phase_config(
            batch_size=batch_size, num_steps=n, augment=False, schedule=dict(name="constant"),
            optimizer=dict(name="adamw", learning_rate=lr, weight_decay=0.0),
        )
    if method.loss is None:  # Cross-entropy alone (the KD term is weighted 0).
        config.distill.update(protocol="class_aware", loss="kd", gamma=1.0, alpha=0.0, beta=0.0)
    else:
        config.distill.update(protocol=protocol, loss=method.loss)
        if method.weights is not None:
            config.distill.update(dict(zip(("gamma", "alpha", "beta"), method.weights)))
        config.distill.loss_kwargs.update(dict(method.kwargs))
    return config


def train(phase: build.Phase, spec: RunSpec, seeds, repeat: int):
    """Trains a population (member j: ``seeds[j // repeat]``'s batch order); the final state."""
    step, state = jax.jit(phase.step, donate_argnums=0), phase.state
    pipelines = [data.train_batches(spec.dataset.name, data_dir=spec.data_dir, split=TRAIN,
                                    global_batch_size=phase.spec.train.batch_size, seed=seed,
                                    sharding=sharding.batch_sharded(spec.mesh), augment=False)
                 for seed in seeds]
    try:
        for _ in range(phase.spec.steps.total):
            batches = [next(p) for p in pipelines for _ in range(repeat)]
            batch = {k: jnp.stack([b[k] for b in batches]) for k in ("image", "label", "index")}
            state, _ = step(state, batch, phase.teacher)
    finally:
        for p in pipelines:
            p.close()
    return state


def score(phase: build.Phase, state, spec: RunSpec, teacher_test=None, pc_kwargs=None) -> dict:
    """Per-member scores (each (P,)) of a population's frozen models, as train.py evaluates.

    pc_score uses `pc_kwargs`' dissimilarities (default: those of the config's loss)."""
    forward = build.jit_forward(phase.forward, spec.mesh)
    pc_kwargs = spec.pc_dissimilarities if pc_kwargs is None else pc_kwargs
    scores = []
    for i in range(jax.tree.leaves(state)[0].shape[0]):
        variables = state_lib.export_variables(jax.tree.map(lambda x, i=i: x[i], state))
        pred = {k: evaluation.predict(forward, variables, data.eval_batches(
            spec.dataset.name, split, data_dir=spec.data_dir,
            global_batch_size=spec.eval_batch_size, sharding=sharding.batch_sharded(spec.mesh)))
            for k, split in SPLITS.items()}
        quality = {k: evaluation.feature_quality(
            pred["train"], pred[k], knn_k=spec.knn_k, num_classes=spec.dataset.num_classes)
            for k in ("validation", "test")}
        scores.append({
            "validation_probe": quality["validation"]["linear_probe"],
            "validation_top1": evaluation.top1(pred["validation"]),
            "probe": quality["test"]["linear_probe"],
            "knn": quality["test"]["knn"],
            "top1": evaluation.top1(pred["test"]),
            "pc_score": np.nan if teacher_test is None else evaluation.coherence(
                pred["test"], teacher_test, chunk_size=spec.pc_chunk_size, **pc_kwargs),
            "test": pred["test"],
        })
    return {k: np.array([s[k] for s in scores]) if k != "test" else [s[k] for s in scores]
            for k in scores[0]}


def cached(path: str | None, compute):
    """``compute()``, kept in the pickle file `path` (None: not kept) and reused from it."""
    if path and os.path.exists(path):
        with open(path, "rb") as f:
            return pickle.load(f)
    value = compute()
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "wb") as f:
            pickle.dump(value, f)
        os.replace(path + ".tmp", path)
    return value


def check_workdir(parser, args, workdir: str | None, name: str, keys: tuple[str, ...]) -> None:
    """Kept rows are only valid for the budget they were trained with: the first run of `name`
    in `workdir` records it, later runs must match it."""
    if not workdir:
        return
    for file, names in (("teacher", ("teacher_steps", "batch_size")), (name, ("steps", *keys))):
        settings = {k: getattr(args, k) for k in names}
        kept = cached(os.path.join(workdir, f"{file}_settings.pkl"), lambda s=settings: s)
        if kept != settings:
            parser.error(f"--workdir {args.workdir} holds {file} runs of {kept}, not {settings}")


def train_teacher(dataset: str, budget: dict, mesh, workdir: str | None = None):
    """The dataset's teacher: {"model": `build.Model` (host arrays), "scores", "test", ...}."""

    def compute():
        start = time.perf_counter()
        spec = resolve(method_config(dataset, _LOSSES[0], seed=TEACHER_SEED, **budget), mesh)
        phase = population.stack([build.teacher_phase(spec, population=True)], [1.0])
        state = train(phase, spec, [spec.teacher.seed], 1)
        scores = score(phase, state, spec)
        variables = state_lib.export_variables(jax.tree.map(lambda x: np.asarray(x[0]), state))
        return {"model": build.Model(phase.graphdef, variables), "test": scores.pop("test")[0],
                "scores": scores, "lr": TEACHER_LR, "seconds": time.perf_counter() - start}

    teacher = cached(workdir and os.path.join(workdir, "teacher.pkl"), compute)
    print(f"teacher {MODELS[dataset][0]}: test top-1 {100 * teacher['scores']['top1'][0]:.2f}% "
          f"({teacher['seconds']:.0f} s)", flush=True)
    return teacher


def run_method(method: Method, teacher: dict, dataset: str, seeds: int,
               learning_rates: tuple[float, ...], budget: dict, mesh, *,
               protocol: str = "class_unaware", pc_kwargs=None) -> dict:
    """One row: every (seed, learning rate) member of `method` trained as one population; the
    scores of the learning rate with the best mean validation score, per seed."""
    start = time.perf_counter()
    specs = [resolve(method_config(dataset, method, seed=s, protocol=protocol, **budget), mesh)
             for s in range(seeds)]
    # Member (s, lr) of the seed-major population; the untrained reference has the same shape.
    members = [build.student_phase(s, teacher["model"], population=True) for s in specs]
    phase = population.stack([m for m in members for _ in learning_rates],
                             list(learning_rates) * seeds)
    state = phase.state
    if method.trained:
        state = train(phase, specs[0], [s.student.seed for s in specs], len(learning_rates))
    scores = score(phase, state, specs[0], teacher["test"], pc_kwargs)
    del scores["test"]
    scores = {k: v.reshape(seeds, len(learning_rates)) for k, v in scores.items()}
    by_labels = protocol == "class_aware" or method.loss is None
    selection = "validation_top1" if by_labels else "validation_probe"
    best = int(np.argmax(scores[selection].mean(axis=0))) if method.trained else 0
    row = {"scores": {k: v[:, best] for k, v in scores.items()},
           "lr": learning_rates[best] if method.trained else None,
           "seconds": time.perf_counter() - start, "device": jax.devices()[0].device_kind}
    print(f"{method.label}: lr {row['lr']}, test top-1 {100 * row['scores']['top1'].mean():.2f}%"
          f", probe {100 * row['scores']['probe'].mean():.2f}%, pc_score "
          f"{row['scores']['pc_score'].mean():.4f} ({row['seconds']:.0f} s)", flush=True)
    return row


def run(dataset: str, seeds: int, learning_rates: tuple[float, ...], steps: int,
        teacher_steps: int, batch_size: int, *, protocol: str = "class_unaware",
        rows: list[str] | None = None, workdir: str | None = None,
        kept_only: bool = False) -> dict:
    """Trains the teacher and every method (or the `rows` slugs); returns the table's numbers.

    With a `workdir`, the teacher and each row are kept there and reused by later runs;
    `kept_only` reports only the rows kept there and trains none."""
    mesh = sharding.make_mesh(1)
    budget = dict(steps=steps, teacher_steps=teacher_steps, batch_size=batch_size)
    teacher = train_teacher(dataset, budget, mesh, workdir)
    results = {"teacher": {k: teacher[k] for k in ("scores", "lr", "seconds")}}
    for method in METHODS[protocol]:
        if rows is not None and method.slug not in rows:
            continue
        path = workdir and os.path.join(workdir, protocol, f"{method.slug}.pkl")
        if kept_only and not os.path.exists(path):
            continue
        results[method.label] = cached(path, lambda m=method: run_method(
            m, teacher, dataset, seeds, learning_rates, budget, mesh, protocol=protocol))
    return results


# ----------------------------------------------------------------------------- the report


def cell(values, percent: bool) -> str:
    values = np.asarray(values, np.float64)
    scale = 100.0 if percent else 1.0
    digits = 2 if percent else 4
    if values.size == 1:
        return f"{scale * values[0]:.{digits}f}"
    return f"{scale * values.mean():.{digits}f} ± {scale * values.std(ddof=1):.{digits}f}"


def compare(ours: dict, theirs: dict, key: str) -> str:
    """"wins over", "ties with" or "loses to": a difference of means larger than
    sqrt(std_a^2 + std_b^2) (the spread of the difference of two single runs) decides."""
    diff = ours[key].mean() - theirs[key].mean()
    noise = np.hypot(ours[key].std(ddof=1), theirs[key].std(ddof=1))
    return "wins over" if diff > noise else "loses to" if diff < -noise else "ties with"


def verdicts(results: dict, protocol: str) -> list[str]:
    """Where each perception coherence variant wins, ties or loses against each other method."""
    keys = ({"top1": "top-1"} if protocol == "class_aware"
            else {"probe": "linear probe", "knn": "kNN", "pc_score": "pc_score"})
    ours = [label for label in results if label.startswith("perception coherence")]
    others = [label for label in results if label != "teacher" and label not in ours
              and not label.startswith("supervised")]
    lines = []
    for label in ours:
        for key, name in keys.items():
            outcome = {"wins over": [], "ties with": [], "loses to": []}
            for other in others:
                outcome[compare(results[label]["scores"], results[other]["scores"], key)].append(
                    other)
            parts = [f"{word} {', '.join(names)}" for word, names in outcome.items() if names]
            lines.append(f"- {label}, {name}: {'; '.join(parts)}.")
    return lines


def timing(results: dict, seconds: float, load: tuple[float, float]) -> str:
    """Where and how long the rows ran (rows kept in a workdir keep their own timings)."""
    rows = [r for label, r in results.items() if label != "teacher"]
    devices = sorted({r.get("device", "?") for r in rows})
    return (f"Rows trained and scored in {sum(r['seconds'] for r in rows) / 60:.1f} min in all "
            f"on {', '.join(devices)} (this run: {seconds / 60:.1f} min on {os.cpu_count()} CPU "
            f"cores, load average {load[0]:.2f} at the start, {load[1]:.2f} at the end).")


def markdown(dataset: str, results: dict, args, load: tuple[float, float], seconds: float) -> str:
    teacher_name, student_name = MODELS[dataset]
    knn_k = config_lib.base_config().eval.knn_k  # train.py's
    aware = args.protocol == "class_aware"
    lrs = ", ".join(str(lr) for lr in args.learning_rates)
    lines = [
        f"## {'Class-aware' if aware else 'Class-unaware'} transfer, {dataset}: "
        f"{teacher_name} -> {student_name}",
        "",
        f"`python benchmarks/transfer.py --dataset {dataset} --protocol {args.protocol} --seeds "
        f"{args.seeds} --steps {args.steps} --teacher_steps {args.teacher_steps} --batch_size "
        f"{args.batch_size} --learning_rates {lrs.replace(',', '')}`",
        "",
        f"Students train on {TRAIN} for {args.steps} adamw steps of batch {args.batch_size} "
        + ("with cross-entropy + beta * their transfer loss; " if aware else
           "with their transfer loss alone (no labels); ")
        + f"the learning rate is chosen per method from {{{lrs}}} by mean validation "
        + ("top-1" if aware else "linear-probe accuracy (top-1 for the supervised student)")
        + f" on {VALIDATION}. Test split: {TEST}. Mean ± std (ddof=1) over {args.seeds} seeds; "
        f"the teacher is one model ({args.teacher_steps} steps, lr {TEACHER_LR}). Linear probe: "
        f"L-BFGS logistic regression on standardized frozen features; kNN: k={knn_k}, cosine, "
        "weighted vote; pc_score: mean Spearman correlation of the student's and teacher's "
        "test-set dissimilarity rankings. Top-1 is only meaningful for models trained with labels.",
        "",
        "| model | lr | top-1 % | linear probe % | kNN % | pc_score | val. "
        f"{'top-1' if aware else 'linear probe'} % |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, result in results.items():
        scores = result["scores"]
        with_labels = aware or label in ("teacher", "supervised (CE, labels)")
        lines.append(
            f"| {label} | {result['lr'] if result['lr'] is not None else '—'} | "
            f"{cell(scores['top1'], True) if with_labels else '—'} | "
            f"{cell(scores['probe'], True)} | {cell(scores['knn'], True)} | "
            f"{'—' if label == 'teacher' else cell(scores['pc_score'], False)} | "
            f"{cell(scores['validation_top1' if aware else 'validation_probe'], True)} |"
        )
    lines += [
        "",
        "Perception coherence against the other methods (win/loss: difference of means larger "
        "than the root sum of squares of the two stds):",
        "",
        *verdicts(results, args.protocol),
        "",
        timing(results, seconds, load),
    ]
    missing = [m.label for m in METHODS[args.protocol] if m.label not in results]
    if missing:
        lines += ["", f"Not run (no kept row): {', '.join(missing)}."]
    return "\n".join(lines)


DEFAULT_STEPS = {"digits": 600, "mnist1d": 1000}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(MODELS), required=True)
    parser.add_argument("--protocol", choices=PROTOCOLS, default="class_unaware")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None,
                        help="student steps (default: %s)" % DEFAULT_STEPS)
    parser.add_argument("--teacher_steps", type=int, default=1500)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rates", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    parser.add_argument("--workdir", default=None,
                        help="keeps the teacher and the finished rows; a rerun reuses them")
    parser.add_argument("--rows", nargs="*", default=None,
                        help="only the teacher and these rows (slugs, e.g. rkd "
                             "perception_coherence__mse); needs --workdir, writes no table")
    parser.add_argument("--kept_only", action="store_true",
                        help="write the table of the rows kept in --workdir; train nothing")
    parser.add_argument("--output", default=None, help="markdown file (default: "
                        "benchmarks/results/transfer_<dataset>[_class_aware].md)")
    args = parser.parse_args()
    args.steps = args.steps or DEFAULT_STEPS[args.dataset]
    if args.seeds < 2:
        parser.error("--seeds must be at least 2 (the table reports a standard deviation)")
    slugs = [m.slug for m in METHODS[args.protocol]]
    if args.rows is not None and (not args.workdir or set(args.rows) - set(slugs)):
        parser.error(f"--rows needs --workdir and names from {slugs}")
    if args.kept_only and not args.workdir:
        parser.error("--kept_only needs --workdir")
    workdir = args.workdir and os.path.join(args.workdir, args.dataset)
    check_workdir(parser, args, workdir, args.protocol, ("seeds", "learning_rates"))
    load_start = os.getloadavg()[0]
    start = time.perf_counter()
    results = run(args.dataset, args.seeds, tuple(args.learning_rates), args.steps,
                  args.teacher_steps, args.batch_size, protocol=args.protocol, rows=args.rows,
                  workdir=workdir, kept_only=args.kept_only)
    if args.rows is not None:
        return
    table = markdown(args.dataset, results, args, (load_start, os.getloadavg()[0]),
                     time.perf_counter() - start)
    print(table)
    suffix = "" if args.protocol == "class_unaware" else f"_{args.protocol}"
    output = args.output or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                         f"transfer_{args.dataset}{suffix}.md")
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with open(output, "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
