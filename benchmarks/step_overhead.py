"""Train-step cost of perception coherence next to plain cross-entropy and RKD.

Times one jitted SGD step (momentum 0.9, weight decay 5e-4: the CIFAR recipe of DESIGN.md §4) of
a ``resnet8x4`` student on CIFAR-100 shapes (32x32x3 inputs, 100 classes) with three objectives:

    ce    CE(student logits, labels)
    pc    CE + 10 * perception_coherence_loss(student features, teacher features)
    rkd   CE + 1 * rkd(student features, teacher features)

(the loss weights are ``pcjax.losses.get(name).default_weight``). The teacher is left out of every
variant: its features are a fixed (B, 256) array (the width of ``resnet32x4``, the usual CIFAR-100
teacher of this student) fed to the step, so the ratio isolates what the transfer loss adds to the
student's own step. A real distillation step adds the same teacher forward to all three, which
only lowers the ratios.

Inputs are random (timing does not depend on the values). Each variant is compiled and warmed up
first; then the variants are timed in interleaved rounds (ce, pc, rkd, ce, pc, rkd, ...) so that a
change of machine load during the run hits all of them alike, and the median of the rounds is
reported. Every timed call ends with ``block_until_ready``.

    python benchmarks/step_overhead.py                     # batch 64 and 256, 7 rounds
    python benchmarks/step_overhead.py --batch_sizes 256 --rounds 11
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from pcjax import losses, models
from pcjax.training.state import merge, split
from pcjax.training.steps import cross_entropy

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

    return jax.jit(step, donate_argnums=(0, 1, 2))


def measure(batch_sizes, rounds: int, warmup: int) -> list[dict]:
    """Median step time (seconds) of every variant at every batch size."""
    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.05, momentum=0.9))
    rows = []
    for batch in batch_sizes:
        keys = jax.random.split(jax.random.key(batch), 3)
        images = jax.random.normal(keys[0], (batch, *IMAGE_SHAPE), jnp.float32)
        labels = jax.random.randint(keys[1], (batch,), 0, NUM_CLASSES)
        teacher_features = jax.random.normal(keys[2], (batch, TEACHER_WIDTH), jnp.float32)
        runs = {}
        for name, transfer in VARIANTS.items():
            model = models.create(STUDENT, num_classes=NUM_CLASSES, rngs=nnx.Rngs(0))
            graphdef, params, rng_state, model_state = split(model)
            state = (params, model_state, tx.init(params))
            step = make_step(graphdef, rng_state, tx, transfer)
            for _ in range(warmup):
                *state, loss = step(*state, images, labels, teacher_features)
                loss.block_until_ready()
            runs[name] = [step, state, []]
        for _ in range(rounds):
            for name, run in runs.items():
                step, state, times = run
                start = time.perf_counter()
                *state, loss = step(*state, images, labels, teacher_features)
                loss.block_until_ready()
                times.append(time.perf_counter() - start)
                run[1] = state
        base = statistics.median(runs["ce"][2])
        for name, (_, _, times) in runs.items():
            median = statistics.median(times)
            rows.append({"batch": batch, "variant": name, "median_s": median,
                         "min_s": min(times), "ratio": median / base})
    return rows


def markdown(rows: list[dict], rounds: int) -> str:
    lines = [
        f"Train step of `{STUDENT}` (CIFAR-100 shapes), median of {rounds} interleaved rounds, "
        f"{jax.devices()[0].platform.upper()} x{jax.device_count()}, "
        f"load average {os.getloadavg()[0]:.2f} at the end of the run.",
        "",
        "| batch | objective | median step (ms) | fastest (ms) | vs CE |",
        "|---:|---|---:|---:|---:|",
    ]
    names = {"ce": "CE", "pc": "CE + perception coherence", "rkd": "CE + RKD"}
    for r in rows:
        lines.append(
            f"| {r['batch']} | {names[r['variant']]} | {1e3 * r['median_s']:.1f} | "
            f"{1e3 * r['min_s']:.1f} | {r['ratio']:.3f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results",
                                                         "step_overhead.md"))
    args = parser.parse_args()
    table = markdown(measure(args.batch_sizes, args.rounds, args.warmup), args.rounds)
    print(table)
    if args.output:
        os.makedirs(os.path.dirname(args.output), exist_ok=True)
        with open(args.output, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
