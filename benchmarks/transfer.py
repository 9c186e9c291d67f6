"""Transfer on the offline datasets under both protocols: every method, same budget, mean ± std.

One teacher per dataset is trained with cross-entropy; then one student per method learns from it
(the protocols of docs/evaluation.md):

  class_unaware: the method's transfer loss alone (inputs and teacher features, no labels), for
    perception coherence (objective "mse" and "spearman"), RKD, PKT, SP, CC, FitNet and CRD
    (``pcjax.losses.transfer.get(name)``, each at its registry weight; FitNet and CC train a linear
    projection head, CRD its embedding heads and memory banks, with the student), plus two
    references: "no transfer" (the student at initialization) and "supervised" (cross-entropy on
    the labels). Scored on the test split by a linear probe and kNN on the frozen features (both
    fitted on the training part) and by ``pc_score`` against the teacher's test features; the
    learning rate is picked by validation linear-probe accuracy.
  class_aware: cross-entropy + beta * transfer loss (beta = the registry's RepDistiller weight;
    CRD 0.8), plus "CE only", KD (0.1 * CE + 0.9 * KD, temperature 4, RepDistiller's KD
    command) and "CRD + KD" (CE + KD + 0.8 * CRD, RepDistiller's CRD+KD command). Scored and
    selected by top-1.

Every run is a train.py config (`method_config`) resolved by ``pcjax.training.spec.resolve``,
built by ``pcjax.training.build``, trained by train.py's loop (``loop.run_phase``: NaN checks,
metrics.jsonl, checkpoints) and scored by train.py's evaluation (``evaluation.evaluate``: same
probe, same kNN k, same pc_score).

Splits: models train on "train[:90%]"; "train[90%:]" is the validation split that picks each
method's learning rate (best mean validation linear-probe accuracy over the seeds; top-1 accuracy
for the supervised student); the test split is only used for the reported numbers.

Budget: every student gets the same number of adamw steps (no weight decay, constant rate) at the
same batch size, at each of the learning rates of the sweep, for every seed. Seed s fixes the
student's initialization and its batch order, so rows compare paired by seed. Every (seed,
learning rate) member trains alone, so its result does not depend on the other members (vmapping
members together would order float sums by their number); the members of a method share one
compiled step (the learning rate is a factor in the optimizer state, ``rate_factor=True``).

    python benchmarks/transfer.py --dataset digits --seeds 10 [--protocol class_aware]
    python benchmarks/transfer.py --dataset mnist1d --seeds 5:15 [--protocol class_aware]

The markdown table is printed and written to benchmarks/results/transfer_<dataset>[_<protocol>].md
(no suffix for class_unaware). With ``--workdir``, the teacher and each finished member are kept
there and a rerun reuses them (more seeds add members), so rows can run as separate processes
(``--rows``) and a last run without ``--rows`` writes the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import shutil
import tempfile
import time

import jax
import numpy as np

import paired
from pcjax.training import build, evaluation, loop, sharding
from pcjax.training import config as config_lib
from pcjax.training import logging as log_lib
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
# The neighbourhood variant of perception coherence (docs/loss.md): each reference row scores only
# its k teacher-nearest pairs, out of batch_size - 1 (63 at the tables' batch of 64).
NEIGHBOURHOOD = tuple(
    Method(f"perception coherence (mse, neighbourhood {k})", "perception_coherence",
           (("objective", "mse"), ("neighbourhood", k))) for k in (8, 16, 32))
METHODS = {
    "class_unaware": (*_LOSSES, *NEIGHBOURHOOD, Method("no transfer", trained=False),
                      Method("supervised (CE, labels)")),
    "class_aware": (Method("CE only"), Method("KD", "kd", weights=(0.1, 0.9, 0.0)), *_LOSSES,
                    Method("CRD + KD", "crd", weights=(1.0, 1.0, 0.8))),
}


def method_config(dataset: str, method: Method, *, seed: int, steps: int, teacher_steps: int,
                  batch_size: int, protocol: str = "class_unaware"):
    """The train.py config of one run: `method`'s student at `seed` (learning rate 1, scaled per
    member), the teacher at TEACHER_SEED and TEACHER_LR."""
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


def train(spec: RunSpec, phase: build.Phase, workdir: str) -> state_lib.TrainState:
    """Trains `phase` with train.py's loop (`loop.run_phase`: NaN checks, metrics.jsonl and
    TensorBoard, checkpoints) in `workdir`; a killed run resumes there."""
    writer = log_lib.MetricWriter(workdir)
    try:
        return loop.run_phase(loop.Context(spec, workdir, writer), phase)
    finally:
        writer.close()


def score(spec: RunSpec, forward, variables, teacher_test=None, pc_kwargs=None):
    """(scores, test predictions) of a frozen model, scored as train.py's final evaluation does
    (`evaluation.evaluate`); pc_score with `pc_kwargs`' dissimilarities (default: the loss's)."""
    ctx = loop.Context(spec, "", None)
    scores, preds = evaluation.evaluate(
        lambda split: evaluation.predict(forward, variables, ctx.eval_batches(split)),
        [VALIDATION, TEST], probe_split=spec.probe_split, knn_k=spec.knn_k,
        num_classes=spec.dataset.num_classes,
        teacher=None if teacher_test is None else {TEST: teacher_test},
        chunk_size=spec.pc_chunk_size,
        dissimilarities=spec.pc_dissimilarities if pc_kwargs is None else pc_kwargs)
    val, test = scores[VALIDATION], scores[TEST]
    return {"validation_probe": val["linear_probe"], "validation_top1": val["top1"],
            "probe": test["linear_probe"], "knn": test["knn"], "top1": test["top1"],
            "pc_score": test.get("pc_score", np.nan), "cka": test.get("cka", np.nan),
            "recall": test.get("neighbourhood_recall", np.nan)}, preds[TEST]


def cached(path: str, compute):
    """``compute()``, kept in the pickle file `path` and reused from it."""
    if os.path.exists(path):
        with open(path, "rb") as f:
            return pickle.load(f)
    value = compute()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "wb") as f:
        pickle.dump(value, f)
    os.replace(path + ".tmp", path)
    return value


def check_workdir(parser, args, workdir: str | None, name: str) -> None:
    """Kept runs are only valid for the budget they were trained with: the first run of `name`
    in `workdir` records it, later runs must match it."""
    if not workdir:
        return
    for file, names in (("teacher", ("teacher_steps", "batch_size", "teacher_seed")),
                        (name, ("steps", "batch_size"))):
        settings = {k: getattr(args, k) for k in names}
        kept = cached(os.path.join(workdir, f"{file}_settings.pkl"), lambda s=settings: s)
        if kept != settings:
            parser.error(f"--workdir {args.workdir} holds {file} runs of {kept}, not {settings}")


def train_teacher(dataset: str, budget: dict, mesh, workdir: str,
                  teacher_seed: int = TEACHER_SEED):
    """The dataset's teacher: {"model": `build.Model` (host arrays), "scores", "test", ...}."""

    def compute():
        start = time.perf_counter()
        spec = resolve(method_config(dataset, _LOSSES[0], seed=teacher_seed, **budget), mesh)
        phase = build.teacher_phase(spec)
        variables = state_lib.export_variables(train(spec, phase, workdir))
        scores, test = score(spec, build.jit_forward(phase.forward, mesh), variables)
        return {"model": build.Model(phase.graphdef, jax.device_get(variables)), "test": test,
                "scores": {k: np.array([v]) for k, v in scores.items()}, "lr": TEACHER_LR,
                "seconds": time.perf_counter() - start}

    teacher = cached(os.path.join(workdir, "teacher.pkl"), compute)
    print(f"teacher {MODELS[dataset][0]}: test top-1 {100 * teacher['scores']['top1'][0]:.2f}% "
          f"({teacher['seconds']:.0f} s)", flush=True)
    return teacher


def at_rate(phase: build.Phase, lr: float) -> build.Phase:
    """`phase` (built with ``rate_factor=True`` at learning rate 1) training at rate `lr`."""
    *opt_state, scale = phase.state.opt_state
    factor = jax.device_put(np.float32(lr), scale.hyperparams["step_size"].sharding)
    scale = scale._replace(hyperparams={"step_size": factor})
    return dataclasses.replace(phase, state=phase.state.replace(opt_state=(*opt_state, scale)))


def member_path(workdir: str, seed: int, lr: float | None) -> str:
    return os.path.join(workdir, f"seed{seed}_lr{lr}", "scores.pkl")


def run_method(method: Method, teacher: dict, dataset: str, seeds, learning_rates, budget: dict,
               mesh, workdir: str, *, protocol: str = "class_unaware", pc_kwargs=None) -> dict:
    """One row: every (seed, learning rate) member of `method` trained alone, each in its own
    directory of `workdir` (kept there: a rerun reuses finished members); the scores of the
    learning rate with the best mean validation score, per seed."""
    lrs = tuple(learning_rates) if method.trained else (None,)
    shared = {}

    def member(seed, lr):
        start = time.perf_counter()
        spec = resolve(method_config(dataset, method, seed=seed, protocol=protocol, **budget),
                       mesh)
        phase = build.student_phase(spec, teacher["model"], rate_factor=True)
        # The members' configs differ only in the seed (the rate is a factor in the state), so
        # they share one step and one forward, each compiled once.
        shared.setdefault("step", phase.step)
        shared.setdefault("forward", build.jit_forward(phase.forward, mesh))
        state = phase.state
        if lr is not None:
            directory = os.path.dirname(member_path(workdir, seed, lr))
            state = train(spec, dataclasses.replace(at_rate(phase, lr), step=shared["step"]),
                          directory)
            shutil.rmtree(os.path.join(directory, phase.spec.name, "checkpoints"))
        scores, _ = score(spec, shared["forward"], state_lib.export_variables(state),
                          teacher["test"], pc_kwargs)
        return {"scores": scores, "seconds": time.perf_counter() - start}

    members = {(s, lr): cached(member_path(workdir, s, lr), lambda s=s, lr=lr: member(s, lr))
               for s in seeds for lr in lrs}
    scores = {k: np.array([[members[s, lr]["scores"][k] for lr in lrs] for s in seeds])
              for k in members[seeds[0], lrs[0]]["scores"]}
    by_labels = protocol == "class_aware" or method.loss is None
    selection = "validation_top1" if by_labels else "validation_probe"
    best = int(np.argmax(scores[selection].mean(axis=0)))
    row = {"scores": {k: v[:, best] for k, v in scores.items()}, "lr": lrs[best],
           "seeds": tuple(seeds), "seconds": sum(m["seconds"] for m in members.values()),
           "device": jax.devices()[0].device_kind}
    print(f"{method.label}: lr {row['lr']}, test top-1 {100 * row['scores']['top1'].mean():.2f}%"
          f", probe {100 * row['scores']['probe'].mean():.2f}%, pc_score "
          f"{row['scores']['pc_score'].mean():.4f} ({row['seconds']:.0f} s)", flush=True)
    return row


def run(dataset: str, seeds, learning_rates: tuple[float, ...], steps: int,
        teacher_steps: int, batch_size: int, *, protocol: str = "class_unaware",
        rows: list[str] | None = None, workdir: str | None = None,
        kept_only: bool = False, teacher_seed: int = TEACHER_SEED) -> dict:
    """Trains the teacher and every method (or the `rows` slugs); returns the table's numbers.

    Every run lives in `workdir` (default: a temporary directory), where later runs reuse it;
    `kept_only` reports only the rows whose runs are all kept there and trains none."""
    mesh = sharding.make_mesh(1)
    budget = dict(steps=steps, teacher_steps=teacher_steps, batch_size=batch_size)
    with tempfile.TemporaryDirectory() as temporary:
        workdir = workdir or temporary
        teacher = train_teacher(dataset, budget, mesh, workdir, teacher_seed)
        results = {"teacher": {k: teacher[k] for k in ("scores", "lr", "seconds")}}
        for method in METHODS[protocol]:
            directory = os.path.join(workdir, protocol, method.slug)
            lrs = learning_rates if method.trained else (None,)
            if (rows is not None and method.slug not in rows) or (kept_only and not all(
                    os.path.exists(member_path(directory, s, lr)) for s in seeds for lr in lrs)):
                continue
            results[method.label] = run_method(method, teacher, dataset, seeds, learning_rates,
                                               budget, mesh, directory, protocol=protocol)
    return results


# ----------------------------------------------------------------------------- the report


def cell(values, percent: bool) -> str:
    values = np.asarray(values, np.float64)
    scale = 100.0 if percent else 1.0
    digits = 2 if percent else 4
    if values.size == 1:
        return f"{scale * values[0]:.{digits}f}"
    return f"{scale * values.mean():.{digits}f} ± {scale * values.std(ddof=1):.{digits}f}"


REFERENCE = "perception coherence (mse)"


def against(results: dict, keys: dict[str, str]) -> list[str]:
    """The paired table: for every row, REFERENCE minus the row over their common seeds (mean and
    95% t-interval, in points for percentages) and REFERENCE's verdict."""
    if REFERENCE not in results:
        return [f"No {REFERENCE} row to compare with."]
    ref = results[REFERENCE]
    lines = [f"| {REFERENCE} minus | " + " | ".join(keys.values()) + " |",
             "|---|" + "---|" * len(keys)]
    for label, row in results.items():
        if label in ("teacher", REFERENCE):
            continue
        seeds = [s for s in ref["seeds"] if s in row["seeds"]]
        cells = []
        for key in keys:
            a, b = ([r["scores"][key][list(r["seeds"]).index(s)] for s in seeds]
                    for r in (ref, row))
            scale, digits = (100.0, 2) if key in ("probe", "knn", "top1") else (1.0, 4)
            mean, low, high = (scale * x for x in paired.interval(a, b))
            cells.append(f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}] "
                         f"{paired.verdict(low, high)}")
        lines.append(f"| {label} ({len(seeds)} seeds) | " + " | ".join(cells) + " |")
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
        f"{args.seeds_text} --teacher_seed {args.teacher_seed} --steps {args.steps} "
        f"--teacher_steps {args.teacher_steps} --batch_size {args.batch_size} --learning_rates "
        f"{lrs.replace(',', '')}`",
        "",
        f"Students train on {TRAIN} for {args.steps} adamw steps of batch {args.batch_size} "
        + ("with cross-entropy + beta * their transfer loss; " if aware else
           "with their transfer loss alone (no labels); ")
        + f"the learning rate is chosen per method from {{{lrs}}} by mean validation "
        + ("top-1" if aware else "linear-probe accuracy (top-1 for the supervised student)")
        + f" on {VALIDATION}. Test split: {TEST}. Mean ± std (ddof=1) over the "
        f"{len(args.seeds)} seeds {', '.join(map(str, args.seeds))}; the teacher is one model "
        f"(seed {args.teacher_seed}, {args.teacher_steps} steps, lr {TEACHER_LR}). Linear probe: "
        f"L-BFGS logistic regression on standardized frozen features; kNN: k={knn_k}, cosine, "
        "weighted vote; pc_score: mean Spearman correlation of the student's and teacher's "
        "test-set dissimilarity rankings (what PC trains on); CKA: linear CKA of the student's "
        "and teacher's test features; recall@10: mean fraction of each test point's 10 teacher "
        "nearest neighbours among its 10 student nearest neighbours. Top-1 is only meaningful "
        "for models trained with labels.",
        "",
        "| model | lr | top-1 % | linear probe % | kNN % | pc_score | CKA | recall@10 | val. "
        f"{'top-1' if aware else 'linear probe'} % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, result in results.items():
        scores = result["scores"]
        with_labels = aware or label in ("teacher", "supervised (CE, labels)")
        lines.append(
            f"| {label} | {result['lr'] if result['lr'] is not None else '—'} | "
            f"{cell(scores['top1'], True) if with_labels else '—'} | "
            f"{cell(scores['probe'], True)} | {cell(scores['knn'], True)} | "
            + "".join(f"{'—' if label == 'teacher' else cell(scores[k], False)} | "
                      for k in ("pc_score", "cka", "recall")) +
            f"{cell(scores['validation_top1' if aware else 'validation_probe'], True)} |"
        )
    keys = ({"top1": "top-1 (points)"} if aware else {
        "probe": "linear probe (points)", "knn": "kNN (points)", "pc_score": "pc_score",
        "cka": "CKA", "recall": "recall@10"})
    lines += [
        "",
        f"{REFERENCE} against every row, paired over the same seeds (same initialization and "
        "batch order): the mean difference with its 95% t-interval; it wins or loses only when "
        "the interval excludes 0, else it ties.",
        "",
        *against(results, keys),
        "",
        timing(results, seconds, load),
    ]
    missing = [m.label for m in METHODS[args.protocol] if m.label not in results]
    if missing:
        lines += ["", f"Not run (no kept row): {', '.join(missing)}."]
    return "\n".join(lines)


DEFAULT_STEPS = {"digits": 600, "mnist1d": 1000}
SEEDS_HELP = "a count N (seeds 0..N-1), a range a:b (seeds a..b-1) or a list of seeds"


def parse_seeds(parser, args) -> None:
    """Sets ``args.seeds`` (a tuple) and ``args.seeds_text`` (as given) from ``--seeds``."""
    text = " ".join(args.seeds)
    try:
        if len(args.seeds) > 1:
            seeds = tuple(int(t) for t in args.seeds)
        elif ":" in text:
            seeds = tuple(range(*(int(t) for t in text.split(":"))))
        else:
            seeds = tuple(range(int(text)))
    except (TypeError, ValueError):
        parser.error(f"--seeds: {SEEDS_HELP}; got {text!r}")
    if len(set(seeds)) != len(seeds) or len(seeds) < 2 or min(seeds) < 0:
        parser.error(f"--seeds must name at least 2 distinct seeds >= 0 (the table reports a "
                     f"standard deviation and a t-interval), got {text!r}")
    args.seeds, args.seeds_text = seeds, text


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(MODELS), required=True)
    parser.add_argument("--protocol", choices=PROTOCOLS, default="class_unaware")
    parser.add_argument("--seeds", nargs="+", default=["5"], help=SEEDS_HELP)
    parser.add_argument("--teacher_seed", type=int, default=TEACHER_SEED)
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
    parse_seeds(parser, args)
    slugs = [m.slug for m in METHODS[args.protocol]]
    if args.rows is not None and (not args.workdir or set(args.rows) - set(slugs)):
        parser.error(f"--rows needs --workdir and names from {slugs}")
    if args.kept_only and not args.workdir:
        parser.error("--kept_only needs --workdir")
    workdir = args.workdir and os.path.join(args.workdir, args.dataset)
    check_workdir(parser, args, workdir, args.protocol)
    load_start = os.getloadavg()[0]
    start = time.perf_counter()
    results = run(args.dataset, args.seeds, tuple(args.learning_rates), args.steps,
                  args.teacher_steps, args.batch_size, protocol=args.protocol, rows=args.rows,
                  workdir=workdir, kept_only=args.kept_only, teacher_seed=args.teacher_seed)
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
