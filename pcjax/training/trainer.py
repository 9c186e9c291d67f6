"""The training job: teacher phase, student (distillation) phase, evaluation.

`run` checks the config and the workdir, then runs `teacher_phase`, `student_phase` and
`evaluate`. What a phase trains comes from `pcjax.training.build`, the loop that trains it (resume,
NaN stop, preemption) from `pcjax.training.loop`, the summary and results.json from
`pcjax.training.report`. `run` refuses a workdir whose config.json differs from the config in a
key that changes training (`config_lib.check_resume`).
"""

from __future__ import annotations

import os

import jax
import ml_collections
from absl import logging

from pcjax import data
from pcjax.training import build, checkpoint, evaluation, report, sharding
from pcjax.training import config as config_lib
from pcjax.training import logging as log_lib
from pcjax.training import state as state_lib
from pcjax.training.build import STUDENT, TEACHER, Model
from pcjax.training.loop import Context, TrainingDivergedError, last_checkpoint, run_phase
from pcjax.training.report import summary_table
from pcjax.training.workdir import WorkdirLock

__all__ = ["Context", "Model", "TrainingDivergedError", "default_workdir", "evaluate",
           "last_checkpoint", "pc_dissimilarities", "run", "student_phase", "summary_table",
           "teacher_phase"]


def pc_dissimilarities(cfg) -> dict[str, str]:
    """The dissimilarities pc_score uses: those of the perception coherence loss if configured.

    ``{"student_dissimilarity": ..., "teacher_dissimilarity": ...}``, keyword arguments of
    `evaluation.coherence`; "euclidean" where the loss keywords do not set them.
    """
    kwargs = cfg.distill.loss_kwargs
    names = ("student_dissimilarity", "teacher_dissimilarity")
    return {k: kwargs.get(k, "euclidean") for k in names}


def _eval_fn(ctx: Context, phase: build.Phase, teacher: Model | None):
    """``eval_fn(state)`` of a phase: eval-split top-1, and pc_score against `teacher` if given."""
    cfg = ctx.config
    forward = ctx.jit_forward(phase.forward)
    teacher_test = None

    def eval_fn(state):
        nonlocal teacher_test
        batches = ctx.eval_batches(cfg.eval_split)
        pred = evaluation.predict(forward, state_lib.export_variables(state), batches)
        if teacher is None:
            return {"top1": evaluation.top1(pred)}
        if teacher_test is None:
            teacher_test = evaluation.predict(ctx.jit_forward(teacher.forward), teacher.variables,
                                              ctx.eval_batches(cfg.eval_split))
        return {
            "top1": evaluation.top1(pred),
            "pc_score": evaluation.coherence(
                pred, teacher_test, chunk_size=cfg.eval.pc_chunk_size, **pc_dissimilarities(cfg)
            ),
        }

    return eval_fn


def teacher_phase(ctx: Context) -> Model:
    """Loads the exported teacher, or trains it with cross-entropy and exports it once.

    The export lives at ``config.teacher.checkpoint`` if set (it must exist), else at
    ``<workdir>/teacher/model``; training state checkpoints go to ``<workdir>/teacher/checkpoints``.
    A teacher from ``config.teacher.checkpoint`` has its eval-split top-1 printed first.
    """
    cfg = ctx.config
    export = cfg.teacher.checkpoint or os.path.join(ctx.workdir, TEACHER, "model")
    if cfg.teacher.checkpoint and not checkpoint.model_exists(export):
        raise FileNotFoundError(f"config.teacher.checkpoint: no exported teacher at {export}")
    teacher = build.abstract_teacher(cfg, ctx.mesh)
    variables = _load_export(ctx, export, teacher.variables)
    if variables is None:
        phase = build.teacher_phase(cfg, ctx.mesh)
        state = run_phase(ctx, phase, _eval_fn(ctx, phase, None))
        checkpoint.save_model(export, state_lib.export_variables(state))
        variables = checkpoint.load_model(export, teacher.variables)
    teacher.variables = variables
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


def student_phase(ctx: Context, teacher: Model) -> Model:
    """Distills the student from the frozen teacher with the configured loss and protocol.

    The student (with the loss's linear projection head when ``LossSpec.projection == "linear"``,
    CRD's embedding heads and memory with CRD) resumes from ``<workdir>/student/checkpoints``;
    the teacher's variables are only read.
    """
    phase = build.student_phase(ctx.config, ctx.mesh, teacher)
    state = run_phase(ctx, phase, _eval_fn(ctx, phase, teacher))
    return Model(phase.graphdef, state_lib.export_variables(state))


def evaluate(ctx: Context, teacher: Model, student: Model) -> dict[str, float]:
    """Teacher and student top-1, linear probe and kNN of frozen features, student pc_score.

    Probes fit on ``eval.probe_train_split`` (default: the train split, without augmentation) and
    score on the eval split; pc_score compares student and teacher features over the eval split.
    """
    cfg = ctx.config
    probe_split = cfg.eval.probe_train_split or cfg.train_split
    num_classes = data.spec(cfg.dataset, data_dir=ctx.data_dir).num_classes
    results, preds = {}, {}
    for name, model in ((TEACHER, teacher), (STUDENT, student)):
        forward = ctx.jit_forward(model.forward)
        test = evaluation.predict(forward, model.variables, ctx.eval_batches(cfg.eval_split))
        train = evaluation.predict(forward, model.variables, ctx.eval_batches(probe_split))
        preds[name] = test
        results[f"{name}/top1"] = evaluation.top1(test)
        for k, v in evaluation.feature_quality(
            train, test, knn_k=cfg.eval.knn_k, num_classes=num_classes
        ).items():
            results[f"{name}/{k}"] = v
    results["student/pc_score"] = evaluation.coherence(
        preds[STUDENT], preds[TEACHER], chunk_size=cfg.eval.pc_chunk_size, **pc_dissimilarities(cfg)
    )
    return results


def default_workdir(config: ml_collections.ConfigDict) -> str:
    """``./workdir/<config.name>``, used when train.py gets no --workdir."""
    return os.path.join("workdir", config.name)


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
    config_lib.check_batch_sizes(config, build.num_train_examples(config))
    with WorkdirLock(workdir):  # One run per workdir; the lock file creates the workdir.
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
        report.write_results(workdir, results)
        return results
