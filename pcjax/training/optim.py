"""Optimizers and learning-rate schedules (optax) built from a phase config.

Schedules are functions of the optimizer step count (one count per train step). Lengths given in
epochs are converted with ``steps_per_epoch = num_train_examples // global_batch_size`` (the input
pipeline drops the remainder), so `decay_epochs=(150, 180, 210)` means the same as in the
RepDistiller PyTorch code, where the scheduler steps once per epoch.
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections
import optax

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "piecewise", "cosine")


@dataclasses.dataclass(frozen=True)
class PhaseSteps:
    """A phase's lengths in optimizer steps.

    Attributes:
        total: number of train steps of the phase.
        warmup: linear warmup steps from 0 to the base learning rate.
        decay_boundaries: steps at which the piecewise schedule multiplies the rate by its factor.
        steps_per_epoch: train steps per pass over the train split.
    """

    total: int
    warmup: int
    decay_boundaries: tuple[int, ...]
    steps_per_epoch: int


def resolve_steps(phase: ml_collections.ConfigDict, num_train_examples: int) -> PhaseSteps:
    """The `PhaseSteps` of `phase` (a phase config: `batch_size`, `num_steps` or `num_epochs`,
    `schedule`) on a train split of `num_train_examples`."""
    steps_per_epoch = max(1, num_train_examples // phase.batch_size)
    if phase.num_steps > 0:
        total = int(phase.num_steps)
    else:
        total = max(1, math.ceil(phase.num_epochs * steps_per_epoch))
    sched = phase.schedule
    warmup = int(sched.warmup_steps) or int(round(sched.warmup_epochs * steps_per_epoch))
    if sched.decay_steps:
        boundaries = tuple(int(s) for s in sched.decay_steps)
    else:
        boundaries = tuple(int(round(e * steps_per_epoch)) for e in sched.decay_epochs)
    return PhaseSteps(total, warmup, boundaries, steps_per_epoch)


def make_schedule(schedule: ml_collections.ConfigDict, base_lr: float,
                  steps: PhaseSteps) -> optax.Schedule:
    """Learning rate as a function of the step count.

    - ``constant``: ``base_lr``.
    - ``piecewise``: ``base_lr * decay_factor**k`` after the k-th boundary (RepDistiller's
      MultiStepLR).
    - ``cosine``: ``base_lr/2 * (1 + cos(pi * t / (total - warmup)))`` after warmup, floored at
        ``base_lr * end_factor`` (Loshchilov & Hutter, SGDR, arXiv:1608.03983).
    Any of them starts with ``warmup`` steps of linear increase from 0 when ``warmup > 0``.
    """
    if schedule.name == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=base_lr, warmup_steps=steps.warmup,
            decay_steps=max(steps.total, steps.warmup + 1), end_value=base_lr * schedule.end_factor)
    if schedule.name == "piecewise":
        factors = {b - steps.warmup: schedule.decay_factor
                   for b in steps.decay_boundaries if b > steps.warmup}
        main = optax.piecewise_constant_schedule(base_lr, factors)
    elif schedule.name == "constant":
        main = optax.constant_schedule(base_lr)
    else:
        raise ValueError(f"schedule.name: unknown schedule {schedule.name!r}; "
                         f"expected one of {SCHEDULES}")
    if steps.warmup == 0:
        return main
    warm = optax.linear_schedule(0.0, base_lr, steps.warmup)
    return optax.join_schedules([warm, main], [steps.warmup])


def make_optimizer(phase: ml_collections.ConfigDict,
                   steps: PhaseSteps) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The phase's optax optimizer and its learning-rate schedule.

    ``sgd`` follows PyTorch's SGD (which RepDistiller uses): the weight decay is added to the
    gradient before the momentum, ``v <- mu v + (g + wd w)``, ``w <- w - lr v`` (Nesterov
    optional). ``adamw`` is decoupled weight decay (Loshchilov & Hutter, arXiv:1711.05101). Both
    decay every parameter, BatchNorm scales and biases included, as RepDistiller does.
    ``grad_clip_norm > 0`` clips the global gradient norm first.
    """
    opt = phase.optimizer
    lr = make_schedule(phase.schedule, opt.learning_rate, steps)
    if opt.name == "sgd":
        tx = optax.chain(optax.add_decayed_weights(opt.weight_decay),
                         optax.sgd(lr, momentum=opt.momentum or None, nesterov=opt.nesterov))
    elif opt.name == "adamw":
        tx = optax.adamw(lr, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay)
    else:
        raise ValueError(f"optimizer.name: unknown optimizer {opt.name!r}; "
                         f"expected one of {OPTIMIZERS}")
    if opt.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
    return tx, lr
