"""A run resolved once: `resolve` checks a config and returns the frozen `RunSpec` of the run.

Everything a run depends on is read from the config, the dataset registry, the model zoo and the
loss registry here, before any work: the dataset's spec and split sizes, the models, the transfer
loss with its options typed and checked by the loss itself, the protocol's weights, each phase's
lengths in steps. Build, trainer and loop take the `RunSpec` and never read the config again.
A refused config raises `ConfigError` naming the key (``config.student.train.batch_size: ...``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
from collections.abc import Mapping

import ml_collections
from jax.sharding import Mesh

from pcjax import data, models
from pcjax.losses import transfer
from pcjax.training import optim, sharding
from pcjax.training.checkpoint import model_exists
from pcjax.training.config import fail

PROTOCOLS = ("class_unaware", "class_aware")
TEACHER, STUDENT = "teacher", "student"


@dataclasses.dataclass(frozen=True)
class PhaseSpec:
    """One training phase.

    Attributes:
      name: "teacher" or "student": its workdir subdirectory and metric prefix.
      model: the `pcjax.models` name of the network it trains.
      seed: the seed of the network's initialization and of its batch order.
      train: the phase config (batch size, cadences, optimizer, schedule), frozen.
      steps: its lengths in optimizer steps.
    """

    name: str
    model: str
    seed: int
    train: ml_collections.FrozenConfigDict
    steps: optim.PhaseSteps


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """A checked run. `config` is the config as resolved (the loss's options filled in with
    their defaults): what the workdir's config.json records and a rerun is compared with."""

    config: ml_collections.FrozenConfigDict
    mesh: Mesh
    dataset: data.DatasetSpec
    data_dir: str
    train_split: str
    eval_split: str
    probe_split: str
    num_train_examples: int
    teacher: PhaseSpec
    student: PhaseSpec
    teacher_checkpoint: str
    protocol: str
    loss: transfer.TransferLoss
    loss_options: Mapping
    weights: Mapping[str, float]
    kd_temperature: float
    loss_seed: int
    eval_batch_size: int
    knn_k: int
    pc_chunk_size: int
    pc_dissimilarities: Mapping[str, str]

    @property
    def trains_teacher(self) -> bool:
        return not self.teacher_checkpoint


def _number(key: str, value, *, lower=None, upper=None, integer=False, closed=True) -> None:
    """Refuses a value that is not a finite number (an integer if asked) in the range."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (not integer or float(value).is_integer())
    if ok and lower is not None:
        ok = value >= lower if closed else value > lower
    if ok and upper is not None:
        ok = value <= upper
    if not ok:
        what = "an integer" if integer else "a finite number"
        bound = "" if lower is None else f" {'>=' if closed else '>'} {lower}"
        bound += "" if upper is None else f" and <= {upper}"
        fail(key, f"must be {what}{bound}, got {value!r}")


def _one_of(key: str, what: str, value, choices: tuple) -> None:
    if value not in choices:
        fail(key, f"unknown {what} {value!r}; expected one of {choices}")


def _batch_size(key: str, value, num_devices: int) -> None:
    _number(key, value, lower=1, integer=True)
    if value % num_devices:
        fail(key, f"{value} does not split evenly over the {num_devices} devices of the data mesh")


def _check_phase(prefix: str, phase: ml_collections.ConfigDict, num_devices: int) -> None:
    _batch_size(f"{prefix}.batch_size", phase.batch_size, num_devices)
    _number(f"{prefix}.num_steps", phase.num_steps, lower=0, integer=True)
    _number(f"{prefix}.num_epochs", phase.num_epochs, lower=0)
    if phase.num_steps == 0 and phase.num_epochs == 0:
        fail(f"{prefix}.num_steps", "set num_steps > 0 or num_epochs > 0 (got 0 and 0)")
    for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
        _number(f"{prefix}.{key}", phase[key], lower=1, integer=True)
    _number(f"{prefix}.eval_every", phase.eval_every, lower=0, integer=True)
    opt, sched = phase.optimizer, phase.schedule
    _one_of(f"{prefix}.optimizer.name", "optimizer", opt.name, optim.OPTIMIZERS)
    _number(f"{prefix}.optimizer.learning_rate", opt.learning_rate, lower=0, closed=False)
    _number(f"{prefix}.optimizer.weight_decay", opt.weight_decay, lower=0)
    _number(f"{prefix}.optimizer.momentum", opt.momentum, lower=0, upper=1)
    if opt.momentum == 1:
        fail(f"{prefix}.optimizer.momentum", "must be in [0, 1), got 1")
    for key in ("b1", "b2"):
        _number(f"{prefix}.optimizer.{key}", opt[key], lower=0, upper=1)
    _number(f"{prefix}.optimizer.grad_clip_norm", opt.grad_clip_norm, lower=0)
    _one_of(f"{prefix}.schedule.name", "schedule", sched.name, optim.SCHEDULES)
    _number(f"{prefix}.schedule.warmup_steps", sched.warmup_steps, lower=0, integer=True)
    _number(f"{prefix}.schedule.warmup_epochs", sched.warmup_epochs, lower=0)
    for key in ("decay_steps", "decay_epochs"):
        values = list(sched[key])
        for value in values:
            _number(f"{prefix}.schedule.{key}", value, lower=0, closed=False)
        if values != sorted(set(values)):
            fail(f"{prefix}.schedule.{key}",
                 f"must be positive and strictly increasing, got {tuple(values)}")
    _number(f"{prefix}.schedule.decay_factor", sched.decay_factor, lower=0, upper=1, closed=False)
    _number(f"{prefix}.schedule.end_factor", sched.end_factor, lower=0, upper=1)


def _split_size(config, key: str, split: str) -> int:
    """The number of examples of `split`; an unprepared dataset raises DatasetNotFoundError (with
    the command that prepares it), a bad split name a ConfigError naming `key`."""
    try:
        return len(data.source(config.dataset, split, data_dir=config.data_dir))
    except data.DatasetNotFoundError:
        raise
    except (KeyError, ValueError) as error:
        fail(key, f"split {split!r} of {config.dataset!r} does not load ({error})")


def _loss(config) -> tuple[transfer.TransferLoss, dict]:
    d = config.distill
    if d.loss not in transfer.names():
        fail("distill.loss", f"unknown loss {d.loss!r}; known: {', '.join(transfer.names())}")
    loss = transfer.get(d.loss)
    try:
        return loss, loss.resolve_options(dict(d.loss_kwargs))
    except transfer.OptionError as error:
        fail("distill.loss_kwargs" + (f".{error.key}" if error.key else ""), error.message)


def _weights(config, loss: transfer.TransferLoss) -> dict[str, float]:
    d = config.distill
    _one_of("distill.protocol", "protocol", d.protocol, PROTOCOLS)
    for key in ("beta", "alpha", "gamma"):
        if d[key] is not None:
            _number(f"distill.{key}", d[key], lower=0)
    beta = float(loss.default_weight if d.beta is None else d.beta)
    weights = ({"ce": 0.0, "kd": 0.0, "transfer": beta} if d.protocol == "class_unaware"
               else {"ce": float(d.gamma), "kd": float(d.alpha), "transfer": beta})
    if not any(weights.values()):
        fail("distill.beta", "every loss weight is 0: nothing would be trained")
    _number("distill.kd_temperature", d.kd_temperature, lower=0, closed=False)
    return weights


def resolve(config: ml_collections.ConfigDict, mesh: Mesh | None = None, *,
            num_train_examples: int | None = None) -> RunSpec:
    """Checks `config` and returns the run it describes.

    Args:
      config: a complete run config (`pcjax.training.config.base_config` and overrides).
      mesh: the device mesh (default: `sharding.make_mesh(config.num_devices)`).
      num_train_examples: the train split's size; default: read from the dataset, whose splits
        must then be prepared (an unprepared dataset raises `data.DatasetNotFoundError`, with the
        command that prepares it). Given, no split is opened (for tracing unprepared datasets).

    Raises:
      ConfigError: naming the first offending key.
    """
    try:
        dataset = data.spec(config.dataset, data_dir=config.data_dir)
    except (KeyError, ValueError) as error:
        fail("dataset", f"unknown dataset {config.dataset!r} ({error})")
    for role in (TEACHER, STUDENT):
        if config[role].model not in models.names():
            fail(f"{role}.model", f"unknown model {config[role].model!r}; known: "
                 f"{', '.join(models.names())}")
    loss, options = _loss(config)
    weights = _weights(config, loss)
    _number("seed", config.seed, lower=0, integer=True)
    _number("num_devices", config.num_devices, lower=0, integer=True)
    mesh = mesh or sharding.make_mesh(config.num_devices)
    for role in (TEACHER, STUDENT):
        _check_phase(f"{role}.train", config[role].train, mesh.size)
    _batch_size("eval.batch_size", config.eval.batch_size, mesh.size)
    _number("eval.knn_k", config.eval.knn_k, lower=1, integer=True)
    _number("eval.pc_chunk_size", config.eval.pc_chunk_size, lower=0, integer=True)
    checkpoint = config.teacher.checkpoint
    if checkpoint and not model_exists(checkpoint):
        fail("teacher.checkpoint", f"no exported teacher at {checkpoint}")

    probe_split = config.eval.probe_train_split or config.train_split
    if num_train_examples is None:
        num_train_examples = _split_size(config, "train_split", config.train_split)
        for key, split in (("eval_split", config.eval_split),
                           ("eval.probe_train_split", probe_split)):
            # The evaluation ranks each example against the others and votes among neighbours.
            if (size := _split_size(config, key, split)) <= config.eval.knn_k:
                fail(key, f"split {split!r} holds {size} examples; the evaluation needs more "
                     f"than eval.knn_k = {config.eval.knn_k}")
    for role in (STUDENT,) if checkpoint else (TEACHER, STUDENT):
        batch = config[role].train.batch_size
        # A larger batch would hold examples twice (their distances tie at 0).
        if batch > num_train_examples:
            fail(f"{role}.train.batch_size", f"{batch} is larger than the {num_train_examples} "
                 f"examples of split {config.train_split!r} of {config.dataset!r}")

    resolved = ml_collections.ConfigDict(config.to_dict())
    with resolved.unlocked():
        resolved.distill.loss_kwargs = ml_collections.ConfigDict(options)

    def phase(role, seed):
        train = config[role].train
        return PhaseSpec(role, config[role].model, seed,
                         ml_collections.FrozenConfigDict(train),
                         optim.resolve_steps(train, num_train_examples))

    pc_keys = ("student_dissimilarity", "teacher_dissimilarity")
    return RunSpec(
        config=ml_collections.FrozenConfigDict(resolved), mesh=mesh, dataset=dataset,
        data_dir=config.data_dir, train_split=config.train_split, eval_split=config.eval_split,
        probe_split=probe_split, num_train_examples=num_train_examples,
        # Seeds as the trainer has always drawn them: the teacher's init and batch order from
        # the run seed, the student's from seed + 1, its heads from seed + 2, the loss's from + 3.
        teacher=phase(TEACHER, config.seed), student=phase(STUDENT, config.seed + 1),
        teacher_checkpoint=checkpoint, protocol=config.distill.protocol, loss=loss,
        loss_options=types.MappingProxyType(options), weights=types.MappingProxyType(weights),
        kd_temperature=float(config.distill.kd_temperature), loss_seed=config.seed + 3,
        eval_batch_size=config.eval.batch_size, knn_k=config.eval.knn_k,
        pc_chunk_size=config.eval.pc_chunk_size,
        # pc_score ranks with the perception coherence loss's dissimilarities when it is trained.
        pc_dissimilarities=types.MappingProxyType(
            {k: options.get(k, "euclidean") for k in pc_keys}),
    )


def teacher_export(spec: RunSpec, workdir: str) -> str:
    """Where the teacher's export is: `teacher.checkpoint`, or ``<workdir>/teacher/model``."""
    return spec.teacher_checkpoint or os.path.join(workdir, TEACHER, "model")
