"""Class-unaware transfer on the offline datasets: every method, same budget, mean ± std over seeds.

The class-unaware transfer protocol (README, "Class-unaware transfer"). One teacher per dataset is trained with cross-entropy; then one
student per method learns from the teacher's features alone (inputs and teacher features, no
labels), with the method's transfer loss alone:

    perception coherence (objective "mse" and "spearman"), RKD, PKT, SP, CC, FitNet
    (``pcjax.losses.get(name)``, each at its registry weight; FitNet and CC train their linear
    projection head to the teacher's width with the student);

plus two references: "no transfer" (the student at initialization, trained on nothing) and
"supervised" (the student trained with cross-entropy on the labels). Each student's frozen
features are then scored on the test split by a linear probe and by kNN (both fitted on the
training part) and by ``pc_score`` against the teacher's test features.

Splits: models train on "train[:90%]"; "train[90%:]" is the validation split that picks each
method's learning rate (best mean validation linear-probe accuracy over the seeds; top-1 accuracy
for the supervised student); the test split is only used for the reported numbers.

Budget: every student gets the same number of Adam steps at the same batch size, at each of the
learning rates of the sweep, for every seed. Seed s fixes the student's initialization and its
batch order. All (seed, learning rate) pairs of one method train together as one vmapped
population: one compiled step per method.

    python benchmarks/transfer.py --dataset digits --seeds 5
    python benchmarks/transfer.py --dataset mnist1d --seeds 5

The markdown table is printed and written to benchmarks/results/transfer_<dataset>.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pcjax import data, losses, metrics, models
from pcjax.training.state import Student, TrainState, merge, split
from pcjax.training.steps import cross_entropy

MODELS = {"digits": ("digits_cnn", "digits_student"), "mnist1d": ("mnist1d_cnn", "mnist1d_student")}
TRAIN, VALIDATION, TEST = "train[:90%]", "train[90%:]", "test"
TEACHER_SEED = 1000
KNN_K = 20


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


# ----------------------------------------------------------------------------- data


def load_split(dataset: str, split: str) -> tuple[jax.Array, jax.Array]:
    """The whole split as normalized (N, *image_shape) float32 images and (N,) int32 labels."""
    size = len(data.source(dataset, split))
    batch = next(data.eval_batches(dataset, split, global_batch_size=size))
    return jnp.asarray(batch["image"]), jnp.asarray(batch["label"])


# ----------------------------------------------------------------------------- training


def make_optimizer(learning_rate: float) -> optax.GradientTransformation:
    # The learning rate lives in the optimizer state, so one vmapped population can sweep it.
    return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)


def init_population(model_fn, seeds, learning_rates):
    """Stacked (len(seeds) * len(learning_rates)) train states, seed-major, and the graph."""
    tx = make_optimizer(0.0)
    states = []
    for seed in seeds:
        graphdef, params, rng_state, model_state = split(model_fn(seed))
        for learning_rate in learning_rates:
            opt_state = tx.init(params)
            opt_state.hyperparams["learning_rate"] = jnp.asarray(learning_rate, jnp.float32)
            states.append(TrainState(jnp.zeros((), jnp.int32), params, model_state, opt_state))
    return graphdef, rng_state, jax.tree.map(lambda *x: jnp.stack(x), *states)


def make_population_step(graphdef, loss_fn, batch_size: int):
    """``step(states, keys, rng_state, images, targets) -> states``: one Adam step of every member.

    Args of the step:
      states: stacked TrainStates (P members), donated.
      keys: (P,) keys; member p draws its batch k (without replacement) from
        ``fold_in(keys[p], k)``.
      rng_state: the model's rng state (shared; the models draw no random numbers).
      images: (N, ...) training inputs.
      targets: (N, ...) what ``loss_fn(student, images, targets) -> scalar`` compares the student
        with (teacher features or labels).
    """
    tx = make_optimizer(0.0)

    def step(state, key, rng_state, images, targets):
        index = jax.random.permutation(jax.random.fold_in(key, state.step), images.shape[0])
        index = index[:batch_size]

        def objective(params):
            student = merge(graphdef, params, rng_state, state.model_state)
            return loss_fn(student, images[index], targets[index]), split(student)[3]

        (_, model_state), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(state.step + 1, params, model_state, opt_state)

    return jax.jit(jax.vmap(step, in_axes=(0, 0, None, None, None)), donate_argnums=0)


def train_population(states, rng_state, keys, images, targets, *, graphdef, loss_fn, steps,
                     batch_size):
    """Trains every member of a population for `steps` Adam steps; returns the final states.

    The steps run from Python, one jitted call each: XLA:CPU runs the convolutions of a
    ``lax.fori_loop`` body far slower (about 30x for these nets) than those of a top-level program.
    """
    step = make_population_step(graphdef, loss_fn, batch_size)
    for _ in range(steps):
        states = step(states, keys, rng_state, images, targets)
    return states


def transfer_loss(student, images, teacher_features, *, spec, kwargs):
    """weight * transfer(project(student features), teacher features): no labels involved."""
    out = student(images, train=True)
    return spec.default_weight * spec.fn(student.project(out.features), teacher_features,
                                         **dict(kwargs))


def supervised_loss(model, images, labels):
    return cross_entropy(model(images, train=True).logits, labels)


# ----------------------------------------------------------------------------- evaluation


@functools.partial(jax.jit, static_argnames=("graphdef",))
def population_outputs(states, rng_state, images, *, graphdef):
    """Eval-mode ModelOutput of every member: features (P, N, D), logits (P, N, C)."""

    def one(state):
        return merge(graphdef, state.params, rng_state, state.model_state)(images, train=False)

    return jax.vmap(one)(states)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def score_population(outputs, labels, teacher_test_features, *, num_classes):
    """Per-member scores (each (P,)) from the eval outputs of the three splits.

    Args:
      outputs: {"train", "validation", "test"} -> ModelOutput with a leading member axis.
      labels: {"train", "validation", "test"} -> (N,) labels.
      teacher_test_features: (N_test, D_T).
    """

    def one(train, validation, test):
        probe = functools.partial(metrics.linear_probe_accuracy, train.features, labels["train"],
                                  num_classes=num_classes)
        knn = functools.partial(metrics.knn_accuracy, train.features, labels["train"], k=KNN_K,
                                num_classes=num_classes)
        return {
            "validation_probe": probe(validation.features, labels["validation"]),
            "validation_top1": metrics.accuracy(validation.logits, labels["validation"]),
            "probe": probe(test.features, labels["test"]),
            "knn": knn(test.features, labels["test"]),
            "pc_score": metrics.pc_score(test.features, teacher_test_features),
            "top1": metrics.accuracy(test.logits, labels["test"]),
        }

    return jax.vmap(one)(outputs["train"], outputs["validation"], outputs["test"])


# ----------------------------------------------------------------------------- the benchmark


def run(dataset: str, seeds: int, learning_rates: tuple[float, ...], steps: int,
        teacher_steps: int, batch_size: int) -> dict:
    """Trains the teacher and every method; returns the table's numbers."""
    teacher_name, student_name = MODELS[dataset]
    num_classes = data.spec(dataset).num_classes
    splits = {"train": TRAIN, "validation": VALIDATION, "test": TEST}
    images, labels = {}, {}
    for key, split_name in splits.items():
        images[key], labels[key] = load_split(dataset, split_name)

    def evaluate(graphdef, rng_state, states):
        outputs = {k: population_outputs(states, rng_state, images[k], graphdef=graphdef)
                   for k in splits}
        return outputs, jax.device_get(score_population(
            outputs, labels, teacher_test_features, num_classes=num_classes))

    start = time.perf_counter()
    teacher_fn = lambda seed: models.create(teacher_name, num_classes=num_classes,  # noqa: E731
                                            rngs=nnx.Rngs(seed))
    graphdef, rng_state, teacher = init_population(teacher_fn, [TEACHER_SEED], [1e-3])
    teacher = train_population(
        teacher, rng_state, jax.random.key(TEACHER_SEED)[None], images["train"], labels["train"],
        graphdef=graphdef, loss_fn=supervised_loss, steps=teacher_steps, batch_size=batch_size)
    teacher_features = {k: population_outputs(teacher, rng_state, images[k],
                                              graphdef=graphdef).features[0] for k in splits}
    teacher_test_features = teacher_features["test"]
    _, teacher_scores = evaluate(graphdef, rng_state, teacher)
    results = {"teacher": {"scores": teacher_scores, "lr": 1e-3,
                           "seconds": time.perf_counter() - start}}
    print(f"teacher {teacher_name}: test top-1 {100 * teacher_scores['top1'][0]:.2f}% "
          f"({results['teacher']['seconds']:.0f} s)", flush=True)

    seed_list = list(range(seeds))
    keys = jnp.stack([jax.random.key(seed) for seed in seed_list for _ in learning_rates])
    student_width = nnx.eval_shape(
        lambda: models.create(student_name, num_classes=num_classes, rngs=nnx.Rngs(0))(
            images["test"][:1], train=False)).features.shape[-1]
    for method in METHODS:
        start = time.perf_counter()
        spec = losses.get(method.loss) if method.loss else None
        head_dims = None
        if spec is not None and spec.projection == "linear":
            head_dims = (student_width, teacher_test_features.shape[-1])

        def student_fn(seed, head_dims=head_dims):
            net = models.create(student_name, num_classes=num_classes, rngs=nnx.Rngs(seed))
            return Student(net, head_dims, rngs=nnx.Rngs(seed + 1))

        # The untrained population has the sweep's shape too (identical copies per seed), so the
        # evaluation compiled for the trained students is reused.
        graphdef, rng_state, states = init_population(student_fn, seed_list, learning_rates)
        if method.trained:
            if spec is None:
                loss_fn, targets = supervised_loss, labels["train"]
            else:
                loss_fn = functools.partial(transfer_loss, spec=spec, kwargs=method.kwargs)
                targets = teacher_features["train"]
            states = train_population(states, rng_state, keys, images["train"], targets,
                                      graphdef=graphdef, loss_fn=loss_fn, steps=steps,
                                      batch_size=batch_size)
        _, scores = evaluate(graphdef, rng_state, states)
        scores = {k: np.asarray(v).reshape(seeds, len(learning_rates)) for k, v in scores.items()}
        selection = "validation_top1" if method.trained and spec is None else "validation_probe"
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
    lines = [
        f"## Class-unaware transfer, {dataset}: {teacher_name} -> {student_name}",
        "",
        f"`python benchmarks/transfer.py --dataset {dataset} --seeds {args.seeds} --steps "
        f"{args.steps} --teacher_steps {args.teacher_steps} --batch_size {args.batch_size} "
        f"--learning_rates {' '.join(str(lr) for lr in args.learning_rates)}`",
        "",
        f"Students train on {TRAIN} for {args.steps} Adam steps of batch {args.batch_size} with "
        "their transfer loss alone (no labels); the learning rate is chosen per method from "
        f"{{{', '.join(str(lr) for lr in args.learning_rates)}}} by mean validation "
        f"linear-probe accuracy on {VALIDATION} (validation top-1 for the supervised student). "
        f"Test split: {TEST}. Mean ± std (ddof=1) over {args.seeds} seeds; the teacher is one "
        f"model ({args.teacher_steps} steps, lr 0.001). Linear probe: L-BFGS logistic "
        f"regression on standardized frozen features; kNN: k={KNN_K}, cosine, weighted vote; "
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
