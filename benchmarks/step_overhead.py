"""Train-step cost of perception coherence next to KD and RKD, in the step train.py runs.

Times the distillation step of ``configs/cifar100.py:resnet32x4_resnet8x4`` (teacher
``resnet32x4``, student ``resnet8x4``, CIFAR-100 shapes; SGD momentum 0.9, weight decay 5e-4),
built by ``pcjax.training.build`` and jitted by ``build.jit_step`` exactly as train.py's loop runs
it (state donated, under the mesh), with three transfer losses at their registry weights:

    kd    CE + 0.9 * KD(student logits, teacher logits)   (the baseline: a loss on the logits)
    pc    CE + 10 * perception_coherence_loss(student features, teacher features)
    rkd   CE + 1 * rkd(student features, teacher features)

Every variant runs the same teacher forward and student forward and backward, so the ratio to
``kd`` is what the feature-transfer loss adds to a real distillation step.

Inputs are random (timing does not depend on the values). Each variant is timed by
``benchmarks/_timing.median_seconds``: warm-up calls absorb compilation, then the median of
several calls, each waited on with ``block_until_ready``; the baseline is measured in the same
process.

    python benchmarks/step_overhead.py                     # batch 64 and 256, median of 7 runs
    python benchmarks/step_overhead.py --batch_sizes 256 --runs 11
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from _timing import median_seconds  # noqa: E402

from configs import cifar100  # noqa: E402
from pcjax.training import build, sharding  # noqa: E402
from pcjax.training import config as config_lib  # noqa: E402
from pcjax.training import spec as spec_lib  # noqa: E402

PAIR = "resnet32x4_resnet8x4"
VARIANTS = {"kd": "kd", "pc": "perception_coherence", "rkd": "rkd"}


def measure(batch_sizes, runs: int, warmup: int) -> list[dict]:
    """Median step time (seconds) of every variant at every batch size, and its ratio to KD."""
    mesh = sharding.make_mesh(1)
    config = config_lib.complete(cifar100.get_config(PAIR))

    def resolve():
        return spec_lib.resolve(config, mesh, num_train_examples=50000)

    spec = resolve().dataset
    teacher = build.teacher_phase(resolve()).model()
    rows = []
    for batch_size in batch_sizes:
        rng = np.random.default_rng(batch_size)
        batch = {
            "image": rng.normal(size=(batch_size, *spec.image_shape)).astype(np.float32),
            "label": rng.integers(0, spec.num_classes, batch_size).astype(np.int32),
        }
        medians = {}
        for name, loss in VARIANTS.items():
            config.distill.loss = loss
            phase = build.student_phase(resolve(), teacher)
            step, carried = build.jit_step(phase.step, mesh), {"state": phase.state}

            def train_step(step=step, carried=carried):  # The donated state is carried on.
                carried["state"], metrics = step(carried["state"], batch, teacher.variables)
                return metrics

            with jax.set_mesh(mesh):
                medians[name] = median_seconds(train_step, runs=runs, warmup=warmup)
        for name, median in medians.items():
            rows.append({"batch": batch_size, "variant": name, "median_s": median,
                         "ratio": median / medians["kd"]})
    return rows


def markdown(rows: list[dict], runs: int) -> str:
    lines = [
        f"Distillation step of `{PAIR}` (CIFAR-100 shapes, configs/cifar100.py), median of "
        f"{runs} runs, {jax.devices()[0].platform.upper()} ({os.cpu_count()} cores), "
        f"load average {os.getloadavg()[0]:.2f} at the end of the run.",
        "",
        "| batch | objective | median step (ms) | vs CE + KD |",
        "|---:|---|---:|---:|",
    ]
    names = {"kd": "CE + KD", "pc": "CE + perception coherence", "rkd": "CE + RKD"}
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
