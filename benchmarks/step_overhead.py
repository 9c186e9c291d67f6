"""Train-step cost of perception coherence next to plain cross-entropy and RKD.

Times one jitted SGD step (momentum 0.9, weight decay 5e-4: the CIFAR-100 recipe of configs/cifar100.py) of
a ``resnet8x4`` student on CIFAR-100 shapes (32x32x3 inputs, 100 classes) with three objectives:

    ce    CE(student logits, labels)
    pc    CE + 10 * perception_coherence_loss(student features, teacher features)
    rkd   CE + 1 * rkd(student features, teacher features)

(the loss weights are ``pcjax.losses.get(name).default_weight``). The teacher is left out of every
variant: its features are a fixed (B, 256) array (the width of ``resnet32x4``, the usual CIFAR-100
teacher of this student) fed to the step, so the ratio isolates what the transfer loss adds to the
student's own step. A real distillation step adds the same teacher forward to all three, which
only lowers the ratios.

Inputs are random (timing does not depend on the values). Each variant is timed by
``benchmarks/_timing.median_seconds``: warm-up calls absorb compilation, then the median of
several calls, each waited on with ``block_until_ready``. The step is timed on a fixed state (no
buffer donation), so every call does the same work.

    python benchmarks/step_overhead.py                     # batch 64 and 256, median of 7 runs
    python benchmarks/step_overhead.py --batch_sizes 256 --runs 11
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from _timing import median_seconds  # noqa: E402
from flax import nnx  # noqa: E402

from pcjax import losses, models  # noqa: E402
from pcjax.training.state import merge, split  # noqa: E402
from pcjax.training.steps import cross_entropy  # noqa: E402

STUDENT = "resnet8x4"
NUM_CLASSES = 100
IMAGE_SHAPE = (32, 32, 3)
TEACHER_WIDTH = 256
VARIANTS = {"ce": None, "pc": "perception_coherence", "rkd": "rkd"}


def make_step(graphdef, rng_state, tx: optax.GradientTransformation, transfer: str | None):
    """``step(params, model_state, opt_state, images, labels, teacher_features)``, one SGD step.

    Returns the updated ``(params, model_state, opt_state)`` and the loss.
    """
    spec = None if transfer is None else losses.get(transfer)

    def step(params, model_state, opt_state, images, labels, teacher_features):
        def loss_fn(params):
            model = merge(graphdef, params, rng_state, model_state)
            out = model(images, train=True)
            loss = cross_entropy(out.logits, labels)
            if spec is not None:
                loss = loss + spec.default_weight * spec.fn(out.features, teacher_features)
            return loss, split(model)[3]

        (loss, new_model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_model_state, opt_state, loss

    return jax.jit(step)


def measure(batch_sizes, runs: int, warmup: int) -> list[dict]:
    """Median step time (seconds) of every variant at every batch size, and its ratio to CE."""
    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.05, momentum=0.9))
    rows = []
    for batch in batch_sizes:
        keys = jax.random.split(jax.random.key(batch), 3)
        images = jax.random.normal(keys[0], (batch, *IMAGE_SHAPE), jnp.float32)
        labels = jax.random.randint(keys[1], (batch,), 0, NUM_CLASSES)
        teacher_features = jax.random.normal(keys[2], (batch, TEACHER_WIDTH), jnp.float32)
        medians = {}
        for name, transfer in VARIANTS.items():
            model = models.create(STUDENT, num_classes=NUM_CLASSES, rngs=nnx.Rngs(0))
            graphdef, params, rng_state, model_state = split(model)
            step = make_step(graphdef, rng_state, tx, transfer)
            medians[name] = median_seconds(
                step, params, model_state, tx.init(params), images, labels, teacher_features,
                runs=runs, warmup=warmup,
            )
        for name, median in medians.items():
            rows.append({"batch": batch, "variant": name, "median_s": median,
                         "ratio": median / medians["ce"]})
    return rows


def markdown(rows: list[dict], runs: int) -> str:
    lines = [
        f"Train step of `{STUDENT}` (CIFAR-100 shapes), median of {runs} runs, "
        f"{jax.devices()[0].platform.upper()} ({os.cpu_count()} cores), "
        f"load average {os.getloadavg()[0]:.2f} at the end of the run.",
        "",
        "| batch | objective | median step (ms) | vs CE |",
        "|---:|---|---:|---:|",
    ]
    names = {"ce": "CE", "pc": "CE + perception coherence", "rkd": "CE + RKD"}
    for r in rows:
        lines.append(
            f"| {r['batch']} | {names[r['variant']]} | {1e3 * r['median_s']:.1f} | "
            f"{r['ratio']:.3f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results",
                                                         "step_overhead.md"))
    args = parser.parse_args()
    table = markdown(measure(args.batch_sizes, args.runs, args.warmup), args.runs)
    print(table)
    if args.output:
        os.makedirs(os.path.dirname(args.output), exist_ok=True)
        with open(args.output, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
