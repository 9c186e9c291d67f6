"""The training job: teacher phase, student (distillation) phase, evaluation, summary.

Sections, top to bottom: mesh and config checks; the phase loop (input pipeline, jitted update step,
logging, NaN check, checkpoints); the teacher phase; the student phase; evaluation and summary.

Resume: each phase restores its latest checkpoint from the workdir (the newest one that restores,
when a later one is damaged) and asks the input pipeline for the batches from that step on (batch k
depends only on (seed, k)); the step's rng is ``fold_in(key, step)``; the metric records past that
step are dropped. A killed run restarted with the same command therefore ends with the same state
and metrics as an uninterrupted run. `run` refuses a workdir whose config.json differs from the
config in a key that changes training (`config_lib.check_resume`).

NaN: the losses of the steps since the last check are fetched every ``log_every`` steps and before
every save (one host sync per interval, not per step). A non-finite loss stops the run with
`TrainingDivergedError` naming the step; no checkpoint is written after it, so the last good
checkpoint stays the latest.

Preemption: SIGTERM or SIGINT during a training phase makes every process save a checkpoint at a
common step and raise `preemption.Preempted` (see `pcjax.training.preemption`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from pcjax import data, losses, models
from pcjax.training import checkpoint, evaluation, optim, preemption, sharding
from pcjax.training import config as config_lib
from pcjax.training import logging as log_lib
from pcjax.training import state as state_lib
from pcjax.training import steps as steps_lib

TEACHER, STUDENT = "teacher", "student"


class TrainingDivergedError(FloatingPointError):
    """A train step produced a non-finite loss; the message names the phase, step and checkpoint."""


@dataclasses.dataclass
class Model:
    """A trained (or loaded) model ready for inference: ``forward(variables, images)``."""

    graphdef: Any
    rng_state: Any
    variables: dict

    @property
    def forward(self) -> Callable:
        return steps_lib.make_forward(self.graphdef, self.rng_state)


@dataclasses.dataclass
class Context:
    """What both phases share."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: jax.sharding.Mesh
    writer: log_lib.MetricWriter

    @property
    def data_dir(self):
        return self.config.data_dir or None

    @property
    def replicated(self):
        return sharding.replicated(self.mesh)

    @property
    def num_classes(self) -> int:
        return data.spec(self.config.dataset, data_dir=self.data_dir).num_classes

    def eval_batches(self, split: str):
        return data.eval_batches(
            self.config.dataset,
            split,
            data_dir=self.data_dir,
            global_batch_size=self.config.eval.batch_size,
            mesh=self.mesh,
        )

    def jit_forward(self, forward: Callable) -> Callable:
        return jax.jit(forward, in_shardings=(self.replicated, sharding.batch_sharded(self.mesh)))


# ----------------------------------------------------------------------------- the phase loop


def _check_finite(phase: str, pending: list, ckpt: checkpoint.Checkpointer) -> dict[str, float]:
    """Host copy of the pending metrics; raises if a loss is not finite; returns their means."""
    host = jax.device_get([m for _, m in pending])
    for (step, _), m in zip(pending, host):
        if not math.isfinite(float(m["loss"])):
            ckpt.wait()
            last = ckpt.latest_step()
            where = (
                f"the last good checkpoint (step {last}) in {ckpt.directory} is intact"
                if last is not None
                else "no checkpoint was written"
            )
            raise TrainingDivergedError(
                f"{phase}: loss is {float(m['loss'])} at step {step}; stopping ({where}). "
                "Lower the "
                "learning rate or the loss weight, or clip gradients (optimizer.grad_clip_norm)."
            )
    return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def _run_phase(
    ctx: Context,
    phase: str,
    *,
    step_fn: Callable,
    extra_args: tuple,
    state: state_lib.TrainState,
    steps: optim.PhaseSteps,
    phase_cfg: ml_collections.ConfigDict,
    seed: int,
    eval_fn: Callable | None,
) -> state_lib.TrainState:
    """Trains `state` to ``steps.total``, resuming from the phase's latest checkpoint."""
    train_step = jit_train_step(ctx.mesh, step_fn, len(extra_args))
    rep = ctx.replicated
    ckpt = checkpoint.Checkpointer(
        os.path.join(ctx.workdir, phase, "checkpoints"), max_to_keep=phase_cfg.keep_checkpoints
    )
    restored = ckpt.restore_latest(checkpoint.abstract_like(state, rep))
    if restored is not None:
        state = restored
    start = int(jax.device_get(state.step))
    ctx.writer.rewind(phase, start)
    batches = data.train_batches(
        ctx.config.dataset,
        data_dir=ctx.data_dir,
        split=ctx.config.train_split,
        global_batch_size=phase_cfg.batch_size,
        seed=seed,
        start_step=start,
        mesh=ctx.mesh,
        augment=phase_cfg.augment,
    )
    progress = log_lib.Progress(phase, steps.total, start)
    pending = []
    context = contextlib.ExitStack()
    # Under the mesh, code that asks for it (the perception coherence loss) sees the batch axis
    # and ranks each device's reference rows only.
    context.enter_context(jax.set_mesh(ctx.mesh))
    watch = context.enter_context(preemption.PreemptionWatch())
    try:
        for step in range(start, steps.total):
            batch = next(batches)
            state, metrics = train_step(
                state, *extra_args, {"image": batch["image"], "label": batch["label"]}
            )
            done = step + 1
            pending.append((done, metrics))
            is_last = done == steps.total
            stop = watch.reached(done)
            log_now = done % phase_cfg.log_every == 0 or is_last
            save_now = done % phase_cfg.checkpoint_every == 0 or is_last or stop
            loss = None
            if log_now or save_now:
                means = _check_finite(phase, pending, ckpt)
                pending.clear()
                loss = means["loss"]
                ctx.writer.write(phase, "train", done, means)
            if save_now:
                ckpt.save(done, state)
            if stop:
                ckpt.wait()
                raise watch.error(phase, done, ckpt.directory)
            if (
                eval_fn is not None
                and phase_cfg.eval_every
                and (done % phase_cfg.eval_every == 0 or is_last)
            ):
                ctx.writer.write(phase, "eval", done, eval_fn(state))
            progress.update(1, loss)
        ckpt.wait()
    finally:
        batches.close()  # Stops the pipeline's reading threads, which would outlive an error.
        context.close()
        progress.close()
        ckpt.close()
    return state


def jit_train_step(mesh: jax.sharding.Mesh, step_fn: Callable, num_extra: int) -> Callable:
    """``step_fn(state, *extra, batch)`` jitted over `mesh`: batch split on "data", the rest
    replicated, the state donated. Trace and call it under ``jax.set_mesh(mesh)``.
    """
    rep = sharding.replicated(mesh)
    return jax.jit(
        step_fn,
        in_shardings=(rep,) * (1 + num_extra) + (sharding.batch_sharded(mesh),),
        out_shardings=(rep, rep),
        donate_argnums=0,
    )


# ----------------------------------------------------------------------------- teacher phase


def _num_train_examples(config: ml_collections.ConfigDict) -> int:
    return len(data.source(config.dataset, config.train_split, data_dir=config.data_dir or None))


def teacher_phase(ctx: Context) -> Model:
    """Loads the exported teacher, or trains it with cross-entropy and exports it once.

    The export lives at ``config.teacher.checkpoint`` if set (it must exist), else at
    ``<workdir>/teacher/model``; training state checkpoints go to ``<workdir>/teacher/checkpoints``.
    A teacher from ``config.teacher.checkpoint`` has its eval-split top-1 printed first.
    """
    cfg = ctx.config
    model_fn = teacher_fn(cfg)
    graphdef, abstract_params, _, abstract_model_state = state_lib.split(nnx.eval_shape(model_fn))
    export = cfg.teacher.checkpoint or os.path.join(ctx.workdir, TEACHER, "model")
    if cfg.teacher.checkpoint and not checkpoint.model_exists(export):
        raise FileNotFoundError(f"config.teacher.checkpoint: no exported teacher at {export}")
    target = checkpoint.abstract_like(
        {"params": abstract_params, "model_state": abstract_model_state}, ctx.replicated
    )
    variables = _load_export(ctx, export, target)
    if variables is None:
        phase = cfg.teacher.train
        steps = optim.resolve_steps(phase, _num_train_examples(ctx.config))
        tx, schedule = optim.make_optimizer(phase, steps)
        _, rng_state, state = state_lib.create(model_fn, tx, ctx.replicated)
        base_key = jax.random.fold_in(jax.random.key(cfg.seed), 0)
        step_fn = steps_lib.make_supervised_step(graphdef, rng_state, tx, schedule, base_key)
        forward = ctx.jit_forward(steps_lib.make_forward(graphdef, rng_state))

        def eval_fn(s):
            pred = evaluation.predict(
                forward, state_lib.export_variables(s), ctx.eval_batches(cfg.eval_split)
            )
            return {"top1": evaluation.top1(pred)}

        state = _run_phase(
            ctx,
            TEACHER,
            step_fn=step_fn,
            extra_args=(),
            state=state,
            steps=steps,
            phase_cfg=phase,
            seed=cfg.seed,
            eval_fn=eval_fn,
        )
        checkpoint.save_model(export, state_lib.export_variables(state))
        variables = checkpoint.load_model(export, target)
    teacher = Model(graphdef, _concrete_rng_state(model_fn, ctx), variables)
    if cfg.teacher.checkpoint:
        # A teacher made elsewhere (e.g. converted from PyTorch) is scored before distillation,
        # so a wrong conversion or preprocessing shows now rather than after the student phase.
        pred = evaluation.predict(
            ctx.jit_forward(teacher.forward), teacher.variables, ctx.eval_batches(cfg.eval_split)
        )
        if jax.process_index() == 0:
            print(f"teacher {cfg.teacher.model} from {export}: {cfg.eval_split} top-1 "
                  f"{100 * evaluation.top1(pred):.2f}%", flush=True)
    return teacher


def _load_export(ctx: Context, export: str, target):
    """The exported teacher's variables, or None when the teacher phase must (re)build the export.

    A damaged export of this workdir's own teacher is set aside and rebuilt from the teacher's
    final training checkpoint; a damaged export without those checkpoints, or one given by
    ``config.teacher.checkpoint``, stops the run with a line saying what to do.
    """
    if not checkpoint.model_exists(export):
        return None
    try:
        return checkpoint.load_model(export, target)
    except Exception as error:  # noqa: BLE001 - any failure to read it means the export is damaged.
        cause = checkpoint.describe(error)
        problem = f"the exported teacher at {export} does not restore ({cause})"
        if ctx.config.teacher.checkpoint:
            raise checkpoint.CheckpointError(
                f"config.teacher.checkpoint: {problem}; export it again or point "
                "config.teacher.checkpoint at another export"
            ) from error
        checkpoints = os.path.join(ctx.workdir, TEACHER, "checkpoints")
        if not os.path.isdir(checkpoints) or not any(n.isdigit() for n in os.listdir(checkpoints)):
            raise checkpoint.CheckpointError(
                f"{problem} and there are no teacher checkpoints to rebuild it from; delete "
                f"{export} to train the teacher again"
            ) from error
        damaged = checkpoint.set_aside(export)
        logging.warning("%s; moved it to %s, rebuilding it from %s", problem, damaged, checkpoints)
        return None


def _concrete_rng_state(model_fn: Callable, ctx: Context):
    """The rng variables of a fresh model (eval mode never draws from them, but merge needs them).

    Only the rng outputs are kept, so XLA drops the parameter initializers from this program.
    """
    abstract = state_lib.split(nnx.eval_shape(model_fn))[2]
    if not jax.tree.leaves(abstract):
        return abstract
    return jax.jit(lambda: state_lib.split(model_fn())[2], out_shardings=ctx.replicated)()


# ----------------------------------------------------------------------------- student phase


def teacher_fn(cfg: ml_collections.ConfigDict) -> Callable[[], nnx.Module]:
    """Builds the teacher network (seeded by ``cfg.seed``)."""
    num_classes = data.spec(cfg.dataset, data_dir=cfg.data_dir or None).num_classes
    return lambda: models.create(
        cfg.teacher.model, num_classes=num_classes, rngs=nnx.Rngs(cfg.seed)
    )


def _loss_input_dim(model_fn: Callable, image_shape, inputs: str) -> int:
    out = nnx.eval_shape(lambda: model_fn()(np.zeros((1, *image_shape), np.float32), train=False))
    return (out.features if inputs == "features" else out.logits).shape[-1]


def student_fn(cfg: ml_collections.ConfigDict) -> Callable[[], state_lib.Student]:
    """Builds the student network plus the loss's projection head, if it has one.

    The head maps the student's loss input (features or logits) to the teacher's width; its two
    sizes are read from the models' output shapes (``nnx.eval_shape``, nothing is computed).
    """
    spec = losses.get(cfg.distill.loss)
    dataset = data.spec(cfg.dataset, data_dir=cfg.data_dir or None)
    net_fn = lambda: models.create(
        cfg.student.model, num_classes=dataset.num_classes, rngs=nnx.Rngs(cfg.seed + 1)
    )
    head_dims = None
    if spec.projection == "linear":
        head_dims = (
            _loss_input_dim(net_fn, dataset.image_shape, spec.inputs),
            _loss_input_dim(teacher_fn(cfg), dataset.image_shape, spec.inputs),
        )
    elif spec.projection is not None:
        raise ValueError(
            f"config.distill.loss: projection {spec.projection!r} of loss "
            f"{cfg.distill.loss!r} is not supported (expected None or 'linear')"
        )
    return lambda: state_lib.Student(net_fn(), head_dims, rngs=nnx.Rngs(cfg.seed + 2))


def distill_step_fn(cfg, graphdef, rng_state, teacher: Model, tx, schedule) -> Callable:
    """The configured distillation step (loss, protocol weights, KD temperature) for `graphdef`."""
    return steps_lib.make_distill_step(
        graphdef,
        rng_state,
        teacher.graphdef,
        teacher.rng_state,
        tx,
        schedule,
        jax.random.fold_in(jax.random.key(cfg.seed), 1),
        loss_spec=losses.get(cfg.distill.loss),
        loss_kwargs=dict(cfg.distill.loss_kwargs),
        weights=config_lib.loss_weights(cfg),
        kd_fn=losses.get("kd").fn,
        kd_temperature=cfg.distill.kd_temperature,
    )


def student_phase(ctx: Context, teacher: Model) -> Model:
    """Distills the student from the frozen teacher with the configured loss and protocol.

    The student (with the loss's linear projection head when ``LossSpec.projection == "linear"``)
    resumes from ``<workdir>/student/checkpoints``; the teacher's variables are only read.
    """
    cfg = ctx.config
    model_fn = student_fn(cfg)

    phase = cfg.student.train
    steps = optim.resolve_steps(phase, _num_train_examples(ctx.config))
    tx, schedule = optim.make_optimizer(phase, steps)
    graphdef, rng_state, state = state_lib.create(model_fn, tx, ctx.replicated)
    step_fn = distill_step_fn(cfg, graphdef, rng_state, teacher, tx, schedule)
    forward = ctx.jit_forward(steps_lib.make_forward(graphdef, rng_state))
    teacher_test = None

    def eval_fn(s):
        nonlocal teacher_test
        if teacher_test is None:
            teacher_test = evaluation.predict(
                ctx.jit_forward(teacher.forward),
                teacher.variables,
                ctx.eval_batches(cfg.eval_split),
            )
        pred = evaluation.predict(
            forward, state_lib.export_variables(s), ctx.eval_batches(cfg.eval_split)
        )
        return {
            "top1": evaluation.top1(pred),
            "pc_score": evaluation.coherence(
                pred, teacher_test, chunk_size=cfg.eval.pc_chunk_size, **_pc_metrics(cfg)
            ),
        }

    state = _run_phase(
        ctx,
        STUDENT,
        step_fn=step_fn,
        extra_args=(teacher.variables,),
        state=state,
        steps=steps,
        phase_cfg=phase,
        seed=cfg.seed + 1,
        eval_fn=eval_fn,
    )
    return Model(graphdef, rng_state, state_lib.export_variables(state))


def _pc_metrics(cfg) -> dict[str, str]:
    """The dissimilarities pc_score uses: those of the perception coherence loss if configured."""
    kwargs = cfg.distill.loss_kwargs
    return {k: kwargs.get(k, "euclidean") for k in ("student_metric", "teacher_metric")}


# ----------------------------------------------------------------------------- evaluation


def evaluate(ctx: Context, teacher: Model, student: Model) -> dict[str, float]:
    """Teacher and student top-1, linear probe and kNN of frozen features, student pc_score.

    Probes fit on ``eval.probe_train_split`` (default: the train split, without augmentation) and
    score on the eval split; pc_score compares student and teacher features over the eval split.
    """
    cfg = ctx.config
    probe_split = cfg.eval.probe_train_split or cfg.train_split
    results = {}
    preds = {}
    for name, model in ((TEACHER, teacher), (STUDENT, student)):
        forward = ctx.jit_forward(model.forward)
        test = evaluation.predict(forward, model.variables, ctx.eval_batches(cfg.eval_split))
        train = evaluation.predict(forward, model.variables, ctx.eval_batches(probe_split))
        preds[name] = test
        results[f"{name}/top1"] = evaluation.top1(test)
        for k, v in evaluation.feature_quality(
            train, test, knn_k=cfg.eval.knn_k, num_classes=ctx.num_classes
        ).items():
            results[f"{name}/{k}"] = v
    results["student/pc_score"] = evaluation.coherence(
        preds[STUDENT], preds[TEACHER], chunk_size=cfg.eval.pc_chunk_size, **_pc_metrics(cfg)
    )
    return results


def summary_table(config: ml_collections.ConfigDict, results: dict[str, float]) -> str:
    """The printed summary: one row per model, accuracies in %, pc_score in [-1, 1]."""
    head = (
        f"{config.dataset}: {config.teacher.model} -> {config.student.model}, loss "
        f"{config.distill.loss}, protocol {config.distill.protocol}"
    )
    cols = ("top1", "linear_probe", "knn", "pc_score")
    titles = ("model", "top-1 %", "linear probe %", f"kNN (k={config.eval.knn_k}) %", "pc_score")
    # A class-unaware student's classifier head never trains: its top-1 is chance, not a result.
    untrained = {f"{STUDENT}/top1"} if config.distill.protocol == "class_unaware" else set()
    rows = [titles]
    for name in (TEACHER, STUDENT):
        cells = [name]
        for c in cols:
            v = None if f"{name}/{c}" in untrained else results.get(f"{name}/{c}")
            cells.append(
                "-" if v is None else (f"{v:.4f}" if c == "pc_score" else f"{100 * v:.2f}")
            )
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(titles))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    note = ""
    if config.distill.protocol == "class_unaware":
        note = (
            "\n(class_unaware: the student's classifier head is not trained, so no top-1;"
            " judge it by probe/kNN.)"
        )
    return head + "\n" + "\n".join(lines) + note


# ----------------------------------------------------------------------------- the job


def default_workdir(config: ml_collections.ConfigDict) -> str:
    """``./workdir/<config.name>``, used when train.py gets no --workdir."""
    return os.path.join("workdir", config.name)


def last_checkpoint(workdir: str) -> str | None:
    """Where the newest checkpoint of the job in `workdir` is, in words, or None if it has none."""
    for phase in (STUDENT, TEACHER):
        directory = os.path.abspath(os.path.join(workdir, phase, "checkpoints"))
        names = os.listdir(directory) if os.path.isdir(directory) else []
        steps = [int(n) for n in names if n.isdigit()]
        if steps:
            return (
                f"the last checkpoint is {phase} step {max(steps)} in {directory}; rerun the same "
                "command to resume from it"
            )
    return None


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    mesh: jax.sharding.Mesh | None = None,
    extend: bool = False,
) -> dict[str, float]:
    """Validates the config, trains (or loads) the teacher, distills the student, evaluates.

    Writes into `workdir`: config.json, metrics.jsonl, tensorboard/, teacher/, student/ and
    results.json. Returns the final metrics (also printed as a table). A workdir that holds a run
    resumes it if its config.json allows (`config_lib.check_resume`; `extend` accepts new phase
    lengths). Every check runs before any work: a refused config raises `config_lib.ConfigError`.
    """
    mesh = mesh or sharding.make_mesh(config.num_devices)
    config_lib.validate(config, num_devices=mesh.size)
    # An unprepared dataset raises DatasetNotFoundError (with the command that prepares it) here,
    # before anything is written to the workdir.
    for split in (config.train_split, config.eval_split):
        data.source(config.dataset, split, data_dir=config.data_dir or None)
    config_lib.check_batch_sizes(config, _num_train_examples(config))
    saved = log_lib.saved_config(workdir)
    if saved is not None:
        config_lib.check_resume(saved, config, workdir=workdir, extend=extend)
    writer = log_lib.MetricWriter(workdir)
    log_lib.save_config(config, workdir)
    ctx = Context(config, workdir, mesh, writer)
    try:
        teacher = teacher_phase(ctx)
        student = student_phase(ctx, teacher)
        results = evaluate(ctx, teacher, student)
        writer.rewind("final", -1)  # A rerun of a finished job replaces its final record.
        writer.write("final", "eval", 0, results)
    finally:
        writer.close()
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)
    return results
