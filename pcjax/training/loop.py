"""The phase loop: input pipeline, jitted step, logging, NaN check, checkpoints, preemption.

Resume: a phase restores its latest checkpoint from the workdir (the newest one that restores,
when a later one is damaged) and asks the input pipeline for the batches from that step on (batch k
depends only on (seed, k)); the metric records past that step are dropped. The steps draw random
numbers only from keys in the state folded with the step count (CRD's negatives), so a killed run
restarted with the same command ends with the same state and metrics as an uninterrupted run.
The step's batch is {"image", "label", "index"} (index: each example's position in the train
split, which CRD's memory is addressed by).

Divergence: the metrics of the steps since the last check (loss, every loss term, the gradient
norm) are fetched every ``log_every`` steps and before every save (one host sync per interval, not
per step), and the parameters are checked before every save. A non-finite value stops the run with
`TrainingDivergedError` naming the step and the value; no checkpoint is written after it, so the
latest checkpoint is the last good one, and its parameters are finite.

Preemption: SIGTERM or SIGINT during a training phase makes every process save a checkpoint at a
common step and raise `preemption.Preempted` (see `pcjax.training.preemption`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from pcjax import data
from pcjax.training import build, checkpoint, preemption, sharding
from pcjax.training import logging as log_lib
from pcjax.training import state as state_lib
from pcjax.training.spec import RunSpec


class TrainingDivergedError(FloatingPointError):
    """A train step produced a non-finite value; the message names the phase, step and
    checkpoint."""


@dataclasses.dataclass
class Context:
    """What both phases share: the run, the workdir and the metric writer."""

    spec: RunSpec
    workdir: str
    writer: log_lib.MetricWriter

    @property
    def mesh(self) -> jax.sharding.Mesh:
        return self.spec.mesh

    def eval_batches(self, split: str):
        return data.eval_batches(self.spec.dataset.name, split, data_dir=self.spec.data_dir,
                                 global_batch_size=self.spec.eval_batch_size,
                                 sharding=sharding.batch_sharded(self.mesh))

    def jit_forward(self, forward: Callable) -> Callable:
        return build.jit_forward(forward, self.mesh)


def _diverged(phase: str, step: int, what: str, ckpt: checkpoint.Checkpointer):
    ckpt.wait()
    last = ckpt.latest_step()
    where = (f"the last good checkpoint (step {last}) in {ckpt.directory} is intact"
             if last is not None else "no checkpoint was written")
    return TrainingDivergedError(
        f"{phase}: {what} at step {step}; stopping ({where}). Lower the learning rate or the "
        "loss weight, or clip gradients (optimizer.grad_clip_norm).")


def _check_finite(phase: str, pending: list, ckpt: checkpoint.Checkpointer) -> dict[str, float]:
    """Host copy of the pending metrics; raises if any is not finite; returns their means."""
    host = jax.device_get([m for _, m in pending])
    for (step, _), m in zip(pending, host):
        for key, value in m.items():
            if not math.isfinite(float(value)):
                raise _diverged(phase, step, f"{key} is {float(value)}", ckpt)
    return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


@jax.jit
def _all_finite(params) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))


def run_phase(ctx: Context, phase: build.Phase,
              eval_fn: Callable | None = None) -> state_lib.TrainState:
    """Trains ``phase.state`` to ``phase.spec.steps.total``, resuming from the latest checkpoint.

    Checkpoints go to ``<workdir>/<phase.spec.name>/checkpoints``; ``eval_fn(state) -> metrics``
    runs every ``eval_every`` steps of the phase config (0: never) and at the end.
    """
    name, cfg, total = phase.spec.name, phase.spec.train, phase.spec.steps.total
    train_step = build.jit_step(phase.step, ctx.mesh)
    ckpt = checkpoint.Checkpointer(os.path.join(ctx.workdir, name, "checkpoints"),
                                   max_to_keep=cfg.keep_checkpoints)
    state = phase.state
    restored = ckpt.restore_latest(checkpoint.abstract_like(state, sharding.replicated(ctx.mesh)))
    if restored is not None:
        state = restored
    start = int(jax.device_get(state.step))
    ctx.writer.rewind(name, start)
    run = ctx.spec
    batches = data.train_batches(
        run.dataset.name, data_dir=run.data_dir, split=run.train_split,
        global_batch_size=cfg.batch_size, seed=phase.spec.seed, start_step=start,
        sharding=sharding.batch_sharded(ctx.mesh), augment=cfg.augment)
    progress = log_lib.Progress(name, total, start)
    pending = []
    context = contextlib.ExitStack()
    context.enter_context(jax.set_mesh(ctx.mesh))  # The step's trace sees the batch axis.
    watch = context.enter_context(preemption.PreemptionWatch())
    try:
        for step in range(start, total):
            batch = next(batches)
            batch = {k: batch[k] for k in ("image", "label", "index")}
            state, metrics = train_step(state, batch, phase.teacher)
            done = step + 1
            pending.append((done, metrics))
            is_last = done == total
            stop = watch.reached(done)
            log_now = done % cfg.log_every == 0 or is_last
            save_now = done % cfg.checkpoint_every == 0 or is_last or stop
            loss = None
            if log_now or save_now:
                means = _check_finite(name, pending, ckpt)
                pending.clear()
                loss = means["loss"]
                ctx.writer.write(name, "train", done, means)
            if save_now:
                if not _all_finite(state.params):
                    raise _diverged(name, done, "a parameter is not finite", ckpt)
                ckpt.save(done, state)
            if stop:
                ckpt.wait()
                raise watch.error(name, done, ckpt.directory)
            if eval_fn is not None and cfg.eval_every and (done % cfg.eval_every == 0 or is_last):
                ctx.writer.write(name, "eval", done, eval_fn(state))
            progress.update(1, loss)
        ckpt.wait()
    finally:
        batches.close()  # Stops the pipeline's reading threads, which would outlive an error.
        context.close()
        progress.close()
        ckpt.close()
    return state
