"""The training job (`run`): teacher phase, student (distillation) phase, evaluation.

The config is resolved (every check, before any work) by `pcjax.training.spec`, the workdir
checked by `pcjax.training.resume`. What a phase trains comes from `pcjax.training.build`, the loop
that trains it (resume, divergence stop, preemption) from `pcjax.training.loop`, the summary and
results.json from `pcjax.training.report`.
"""

from __future__ import annotations

import os

import jax
import ml_collections
from absl import logging

from pcjax.training import build, checkpoint, evaluation, preemption, report, resume
from pcjax.training import logging as log_lib
from pcjax.training import state as state_lib
from pcjax.training.build import Model
from pcjax.training.loop import Context, run_phase
from pcjax.training.spec import STUDENT, TEACHER, RunSpec, resolve, teacher_export
from pcjax.training.workdir import WorkdirLock


def _eval_fn(ctx: Context, phase: build.Phase, teacher: Model | None):
    """``eval_fn(state)`` of a phase: eval-split top-1, and pc_score against `teacher` if given."""
    spec = ctx.spec
    forward = ctx.jit_forward(phase.forward)
    teacher_test = None

    def eval_fn(state):
        nonlocal teacher_test
        batches = ctx.eval_batches(spec.eval_split)
        pred = evaluation.predict(forward, state_lib.export_variables(state), batches)
        if teacher is None:
            return {"top1": evaluation.top1(pred)}
        if teacher_test is None:
            teacher_test = evaluation.predict(ctx.jit_forward(teacher.forward), teacher.variables,
                                              ctx.eval_batches(spec.eval_split))
        return {"top1": evaluation.top1(pred),
                "pc_score": evaluation.coherence(pred, teacher_test, chunk_size=spec.pc_chunk_size,
                                                 **spec.pc_dissimilarities)}

    return eval_fn


def teacher_phase(ctx: Context) -> Model:
    """Loads the exported teacher, or trains it with cross-entropy and exports it once.

    The export lives at ``config.teacher.checkpoint`` if set (it must exist), else at
    ``<workdir>/teacher/model``; training state checkpoints go to ``<workdir>/teacher/checkpoints``.
    A teacher from ``config.teacher.checkpoint`` has its eval-split top-1 printed first.
    """
    spec = ctx.spec
    export = teacher_export(spec, ctx.workdir)
    teacher = build.abstract_teacher(spec)
    variables = _load_export(ctx, export, teacher.variables)
    if variables is None:
        phase = build.teacher_phase(spec)
        state = run_phase(ctx, phase, _eval_fn(ctx, phase, None))
        checkpoint.save_model(export, state_lib.export_variables(state))
        variables = checkpoint.load_model(export, teacher.variables)
    teacher.variables = variables
    if not spec.trains_teacher:
        # A teacher made elsewhere (e.g. converted from PyTorch) is scored before distillation,
        # so a wrong conversion or preprocessing shows now rather than after the student phase.
        pred = evaluation.predict(ctx.jit_forward(teacher.forward), teacher.variables,
                                  ctx.eval_batches(spec.eval_split))
        if jax.process_index() == 0:
            print(f"teacher {spec.teacher.model} from {export}: {spec.eval_split} top-1 "
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
        if not ctx.spec.trains_teacher:
            raise checkpoint.CheckpointError(
                f"config.teacher.checkpoint: {problem}; export it again or point "
                "config.teacher.checkpoint at another export"
            ) from error
        checkpoints = os.path.join(ctx.workdir, TEACHER, "checkpoints")
        if not _has_steps(checkpoints):
            raise checkpoint.CheckpointError(
                f"{problem} and there are no teacher checkpoints to rebuild it from; delete "
                f"{export} to train the teacher again"
            ) from error
        damaged = checkpoint.set_aside(export)
        logging.warning("%s; moved it to %s, rebuilding it from %s", problem, damaged, checkpoints)
        return None


def student_phase(ctx: Context, teacher: Model) -> Model:
    """Distills the student from the frozen teacher with the configured loss and protocol.

    The student (with the transfer loss's heads and state) resumes from
    ``<workdir>/student/checkpoints``; the teacher's variables are only read.
    """
    phase = build.student_phase(ctx.spec, teacher)
    state = run_phase(ctx, phase, _eval_fn(ctx, phase, teacher))
    return phase.model(state)


def evaluate(ctx: Context, teacher: Model, student: Model) -> dict[str, float]:
    """Teacher and student top-1, linear probe and kNN of frozen features, student pc_score.

    Probes fit on ``eval.probe_train_split`` (default: the train split, without augmentation) and
    score on the eval split; pc_score compares student and teacher features over the eval split.
    """
    spec = ctx.spec
    results, teacher_preds = {}, None
    for name, model in ((TEACHER, teacher), (STUDENT, student)):
        forward = ctx.jit_forward(model.forward)
        scores, preds = evaluation.evaluate(
            lambda split, f=forward, m=model: evaluation.predict(f, m.variables,
                                                                 ctx.eval_batches(split)),
            [spec.eval_split], probe_split=spec.probe_split, knn_k=spec.knn_k,
            num_classes=spec.dataset.num_classes, teacher=teacher_preds,
            chunk_size=spec.pc_chunk_size, dissimilarities=spec.pc_dissimilarities)
        results.update({f"{name}/{k}": v for k, v in scores[spec.eval_split].items()})
        teacher_preds = preds
    return results


def _phases_ended(spec: RunSpec, workdir: str) -> dict[str, bool]:
    """Whether each phase has finished in `workdir` (the teacher: its export exists; the student:
    the run wrote its results)."""
    return {TEACHER: checkpoint.model_exists(teacher_export(spec, workdir)),
            STUDENT: os.path.exists(os.path.join(workdir, "results.json"))}


def _has_steps(directory: str) -> bool:
    """Whether `directory` (a phase's checkpoints) holds a step."""
    return os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory))


def _holds_a_checkpoint(workdir: str) -> bool:
    """Whether `workdir` holds anything a rerun would continue: a teacher export or a step."""
    return checkpoint.model_exists(os.path.join(workdir, TEACHER, "model")) or any(
        _has_steps(os.path.join(workdir, phase, "checkpoints")) for phase in (TEACHER, STUDENT))


def run(config: ml_collections.ConfigDict, workdir: str, *, mesh: jax.sharding.Mesh | None = None,
        extend: bool = False) -> dict[str, float]:
    """Resolves the config, trains (or loads) the teacher, distills the student, evaluates.

    Writes into `workdir`: config.json (the resolved config), metrics.jsonl, tensorboard/,
    teacher/, student/ and results.json. Returns the final metrics (also printed as a table). A
    workdir that holds a checkpoint resumes it if its config.json allows (`resume.check_resume`;
    `extend` accepts longer phase lengths); one that holds none starts afresh. Every check runs
    before any work: a refused config raises `pcjax.training.config.ConfigError`.
    """
    spec = resolve(config, mesh)
    with WorkdirLock(workdir):  # One run per workdir; the lock file creates the workdir.
        saved = log_lib.saved_config(workdir)
        if saved is not None and _holds_a_checkpoint(workdir):
            resume.check_resume(saved, spec, workdir=workdir, extend=extend,
                                ended=_phases_ended(spec, workdir))
        writer = log_lib.MetricWriter(workdir)
        log_lib.save_config(spec.config, workdir)
        ctx = Context(spec, workdir, writer)
        try:
            # Between the stages, a multi-process run stops on a notice JAX's notifier took.
            teacher = teacher_phase(ctx)
            preemption.check_pod()
            student = student_phase(ctx, teacher)
            preemption.check_pod()
            results = evaluate(ctx, teacher, student)
            preemption.check_pod()  # Before results.json: a rerun evaluates again.
            writer.rewind("final", -1)  # A rerun of a finished job replaces its final record.
            writer.write("final", "eval", 0, results)
        finally:
            writer.close()
        report.write_results(workdir, results)
        return results
