"""The run configuration: its schema (defaults) and its validation.

A config is an ``ml_collections.ConfigDict``; ``configs/*.py`` build one with `base_config` and
`phase_config` and override what differs. Schema (``phase`` = the teacher's or the student's
training phase):

  name              run name; the default workdir is ``./workdir/<name>``
  seed              seeds init, data order and per-step rng (``fold_in(key, step)``)
  dataset           a ``pcjax.data`` dataset name, or an image folder dataset prepared in
                    ``data_dir`` ("" = the pipeline's default) by ``python -m pcjax.data.prepare``
  train_split, eval_split
                    TFDS split strings ("train", "test", "train[:90%]", ...)
  distributed       call ``jax.distributed.initialize()`` first (also done when the
                    JAX_COORDINATOR_ADDRESS environment variable is set)
  heartbeat_timeout_seconds
                    ``jax.distributed``'s heartbeat timeout: when a process dies, the
                    others stop with an error after about this long
  num_devices       devices of the data mesh; 0 = all
  teacher.model     a ``pcjax.models`` name
  teacher.checkpoint
                    "" = train the teacher into ``<workdir>/teacher``; else the directory of an
                    exported teacher (``<other workdir>/teacher/model``) to load read-only
  student.model     a ``pcjax.models`` name
  teacher.train, student.train   one phase each:
      batch_size (global), num_steps (> 0) or num_epochs, augment, log_every,
      checkpoint_every, keep_checkpoints, eval_every (0 = only the final evaluation)
      optimizer: name (sgd | adamw), learning_rate, momentum, nesterov, weight_decay,
                 b1, b2, grad_clip_norm (0 = off)
      schedule: name (constant | piecewise | cosine), warmup_steps or warmup_epochs,
                decay_steps or decay_epochs (piecewise boundaries), decay_factor,
                end_factor (cosine floor, a fraction of the base rate)
  distill.protocol  class_unaware: beta * transfer
                    class_aware: gamma * CE + alpha * KD + beta * transfer
  distill.loss      a ``pcjax.losses`` name; ``loss_kwargs`` are passed to it as keyword
                    arguments (checked against its signature), except for crd, whose keys are
                    `CRD_OPTIONS` (see `crd_options`). On train.py's command line:
                    ``--config.distill.loss_kwargs.<name>=<value>`` (see `split_loss_kwargs_flags`)
  distill.beta      None = the loss's ``LossSpec.default_weight``; ``alpha``, ``gamma``,
                    ``kd_temperature`` as above
  eval              batch_size, knn_k, probe_train_split ("" = train_split),
                    pc_chunk_size (0 = the pc_score default)

Resume: a workdir keeps the config that produced it (config.json). A rerun into it may change only
the keys that cannot change the training trajectory (`MAY_DIFFER`: the run name, where the data
lives, devices, what is evaluated and how often, logging and checkpoint cadence); with
``extend=True`` (``train.py --extend``) also the phase lengths (`LENGTH_KEYS`), to train on from
the last checkpoint with the schedule resolved for the new length. Anything else is refused by
`check_resume`, naming each differing key.
"""

from __future__ import annotations

import ast
import fnmatch
import inspect
import json

import ml_collections
from ml_collections import config_dict

from pcjax.training import optim

PROTOCOLS = ("class_unaware", "class_aware")
# CRD's distill.loss_kwargs and their defaults (RepDistiller's): embedding size (heads and banks),
# negatives per sample (capped at the train split's size - 1), temperature, bank momentum.
CRD_OPTIONS = {"feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "momentum": 0.5}


def phase_config(**overrides) -> ml_collections.ConfigDict:
    """A training phase with RepDistiller-like SGD defaults; keyword arguments override fields."""
    phase = ml_collections.ConfigDict(
        dict(
            batch_size=64,
            num_steps=0,
            num_epochs=240.0,
            augment=True,
            log_every=100,
            checkpoint_every=1000,
            keep_checkpoints=2,
            eval_every=0,
            optimizer=dict(
                name="sgd",
                learning_rate=0.05,
                momentum=0.9,
                nesterov=False,
                weight_decay=5e-4,
                b1=0.9,
                b2=0.999,
                grad_clip_norm=0.0,
            ),
            schedule=dict(
                name="piecewise",
                warmup_steps=0,
                warmup_epochs=0.0,
                decay_steps=(),
                decay_epochs=(150, 180, 210),
                decay_factor=0.1,
                end_factor=0.0,
            ),
        )
    )
    for key, value in overrides.items():
        if isinstance(value, dict):
            phase[key].update(value)
        else:
            phase[key] = value
    return phase


def base_config() -> ml_collections.ConfigDict:
    """Every key of the schema with its default (configs/*.py override what differs)."""
    return ml_collections.ConfigDict(
        dict(
            name="run",
            seed=0,
            dataset="digits",
            data_dir="",
            train_split="train",
            eval_split="test",
            distributed=False,
            heartbeat_timeout_seconds=60,
            num_devices=0,
            teacher=dict(model="digits_cnn", checkpoint="", train=phase_config()),
            student=dict(model="digits_student", train=phase_config()),
            distill=dict(
                protocol="class_unaware",
                loss="perception_coherence",
                loss_kwargs=ml_collections.ConfigDict(),
                beta=config_dict.placeholder(float),
                alpha=0.0,
                gamma=1.0,
                kd_temperature=4.0,
            ),
            eval=dict(batch_size=256, knn_k=5, probe_train_split="", pc_chunk_size=0),
        )
    )


MAY_DIFFER = (
    "name",
    "data_dir",
    "distributed",
    "heartbeat_timeout_seconds",
    "num_devices",
    "eval_split",
    "eval.*",
    "*.train.log_every",
    "*.train.eval_every",
    "*.train.checkpoint_every",
    "*.train.keep_checkpoints",
)
LENGTH_KEYS = ("*.train.num_steps", "*.train.num_epochs")


class ConfigError(ValueError):
    """A config the run refuses; the message starts with the offending key (``config.<key>: ``)."""


def _fail(key: str, message: str):
    raise ConfigError(f"config.{key}: {message}")


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_resume(
    saved: dict, config: ml_collections.ConfigDict, *, workdir: str, extend: bool = False
) -> None:
    """Refuses to continue a workdir whose saved config differs where the trajectory depends on it.

    Args:
      saved: the workdir's config.json, as loaded by ``json.load``.
      config: the config of this run.
      workdir: the workdir (named in the message).
      extend: also accept changed phase lengths (`LENGTH_KEYS`).

    Raises:
      ConfigError: listing every refused key as ``key: old -> new`` and the ways out.
    """
    old = _flatten(saved)
    # The JSON round trip gives both sides the same types (tuples become lists).
    new = _flatten(json.loads(config.to_json_best_effort()))
    allowed = MAY_DIFFER + (LENGTH_KEYS if extend else ())
    missing = "(absent)"
    changed = [
        f"{key}: {old.get(key, missing)!r} -> {new.get(key, missing)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key, missing) != new.get(key, missing)
        and not any(fnmatch.fnmatchcase(key, pattern) for pattern in allowed)
    ]
    if not changed:
        return
    only_lengths = all(
        any(fnmatch.fnmatchcase(c.split(":")[0], p) for p in LENGTH_KEYS) for c in changed
    )
    hint = " (or pass --extend to train on to the new phase length)" if only_lengths else ""
    raise ConfigError(
        f"config: the workdir {workdir} holds a run with another config ({'; '.join(changed)}); "
        f"resuming it would mix two runs. Use a new --workdir{hint}."
    )


def check_batch_sizes(config: ml_collections.ConfigDict, num_train_examples: int) -> None:
    """Each trained phase's global batch must fit in the train split.

    A larger batch would hold examples twice (their distances tie at 0), and the pipeline would
    decode a whole split per step.
    """
    for role in ("student",) if config.teacher.checkpoint else ("teacher", "student"):
        batch = config[role].train.batch_size
        if batch > num_train_examples:
            _fail(
                f"{role}.train.batch_size",
                f"{batch} is larger than the {num_train_examples} examples of split "
                f"{config.train_split!r} of {config.dataset!r}",
            )


def _check_split(key: str, batch_size: int, num_devices: int):
    from pcjax.training.sharding import check_batch_split  # imports jax: only when validating

    try:
        check_batch_split(batch_size, num_devices, "devices of the data mesh", f"config.{key}")
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _check_phase(prefix: str, phase: ml_collections.ConfigDict, num_devices: int):
    if phase.batch_size <= 0:
        _fail(f"{prefix}.batch_size", f"must be positive, got {phase.batch_size}")
    _check_split(f"{prefix}.batch_size", phase.batch_size, num_devices)
    if (
        phase.num_steps < 0
        or phase.num_epochs < 0
        or (phase.num_steps == 0 and phase.num_epochs == 0)
    ):
        _fail(
            f"{prefix}.num_steps",
            f"set num_steps > 0 or num_epochs > 0 (got {phase.num_steps} and {phase.num_epochs})",
        )
    for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
        if phase[key] <= 0:
            _fail(f"{prefix}.{key}", f"must be positive, got {phase[key]}")
    if phase.eval_every < 0:
        _fail(f"{prefix}.eval_every", f"must be >= 0, got {phase.eval_every}")
    opt, sched = phase.optimizer, phase.schedule
    if opt.name not in optim.OPTIMIZERS:
        _fail(
            f"{prefix}.optimizer.name",
            f"unknown optimizer {opt.name!r}; expected one of {optim.OPTIMIZERS}",
        )
    if not opt.learning_rate > 0:
        _fail(f"{prefix}.optimizer.learning_rate", f"must be positive, got {opt.learning_rate}")
    if opt.weight_decay < 0:
        _fail(f"{prefix}.optimizer.weight_decay", f"must be >= 0, got {opt.weight_decay}")
    if not 0 <= opt.momentum < 1:
        _fail(f"{prefix}.optimizer.momentum", f"must be in [0, 1), got {opt.momentum}")
    if opt.grad_clip_norm < 0:
        _fail(f"{prefix}.optimizer.grad_clip_norm", f"must be >= 0, got {opt.grad_clip_norm}")
    if sched.name not in optim.SCHEDULES:
        _fail(
            f"{prefix}.schedule.name",
            f"unknown schedule {sched.name!r}; expected one of {optim.SCHEDULES}",
        )
    if sched.warmup_steps < 0 or sched.warmup_epochs < 0:
        _fail(f"{prefix}.schedule.warmup_steps", "warmup must be >= 0")
    for key in ("decay_steps", "decay_epochs"):
        values = list(sched[key])
        if any(v <= 0 for v in values) or values != sorted(set(values)):
            _fail(
                f"{prefix}.schedule.{key}",
                f"must be positive and strictly increasing, got {tuple(values)}",
            )
    if not 0 < sched.decay_factor <= 1:
        _fail(f"{prefix}.schedule.decay_factor", f"must be in (0, 1], got {sched.decay_factor}")
    if not 0 <= sched.end_factor <= 1:
        _fail(f"{prefix}.schedule.end_factor", f"must be in [0, 1], got {sched.end_factor}")


def validate(config: ml_collections.ConfigDict, *, num_devices: int) -> None:
    """Checks every value a run depends on, before any training starts.

    Args:
        config: the run config (see the module docstring for the schema).
        num_devices: devices of the data mesh; each phase's global batch must divide evenly.

    Raises:
        ConfigError: naming the offending key (``config.student.train.batch_size: ...``).
    """
    # The registries import TFDS, grain and flax: only a validation pays for them, not a config.
    from pcjax import data, losses, models

    try:
        data.spec(config.dataset, data_dir=config.data_dir or None)
    except (KeyError, ValueError) as e:
        _fail("dataset", f"unknown dataset {config.dataset!r} ({e})")
    known_models = models.names()
    for role in ("teacher", "student"):
        if config[role].model not in known_models:
            _fail(
                f"{role}.model",
                f"unknown model {config[role].model!r}; known: {', '.join(known_models)}",
            )
    if config.distill.protocol not in PROTOCOLS:
        _fail(
            "distill.protocol",
            f"unknown protocol {config.distill.protocol!r}; expected one of {PROTOCOLS}",
        )
    if config.distill.loss not in losses.names():
        _fail(
            "distill.loss",
            f"unknown loss {config.distill.loss!r}; known: {', '.join(losses.names())}",
        )
    elif config.distill.loss == "crd":
        crd_options(config)
    else:
        _check_loss_kwargs(config.distill.loss, dict(config.distill.loss_kwargs))
    for key in ("beta", "alpha", "gamma"):
        value = config.distill[key]
        if value is not None and value < 0:
            _fail(f"distill.{key}", f"loss weights must be >= 0, got {value}")
    if not any(loss_weights(config).values()):
        _fail("distill.beta", "every loss weight is 0: nothing would be trained")
    if config.distill.kd_temperature <= 0:
        _fail("distill.kd_temperature", f"must be positive, got {config.distill.kd_temperature}")
    if config.num_devices < 0:
        _fail("num_devices", f"must be >= 0 (0 = all devices), got {config.num_devices}")
    for role in ("teacher", "student"):
        _check_phase(f"{role}.train", config[role].train, num_devices)
    if config.eval.batch_size <= 0:
        _fail("eval.batch_size", f"must be positive, got {config.eval.batch_size}")
    _check_split("eval.batch_size", config.eval.batch_size, num_devices)
    if config.eval.knn_k <= 0:
        _fail("eval.knn_k", f"must be positive, got {config.eval.knn_k}")
    if config.eval.pc_chunk_size < 0:
        _fail("eval.pc_chunk_size", f"must be >= 0, got {config.eval.pc_chunk_size}")


LOSS_KWARGS_FLAG = "--config.distill.loss_kwargs."


def _flag_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def split_loss_kwargs_flags(argv: list[str]) -> tuple[list[str], dict]:
    """Takes ``--config.distill.loss_kwargs.<name>=<value>`` flags off a command line.

    ml_collections overrides only keys the config file defines, but the keywords a loss takes
    depend on the loss, which the command line may change too (``--config.distill.loss=crd``).
    train.py therefore takes these flags off ``argv`` before ml_collections parses it and sets them
    on the loaded config, where `validate` checks them against the loss. A value is a Python
    literal (``0.3``, ``4096``, ``True``) or else a plain string (``cosine``); ``--flag value``
    works as well as ``--flag=value``.

    Returns:
        ``(the other arguments, {key: value})``.

    Raises:
        ConfigError: a flag without a key or without a value.
    """
    rest, kwargs, args = [], {}, iter(argv)
    for arg in args:
        if not arg.startswith(LOSS_KWARGS_FLAG):
            rest.append(arg)
            continue
        key, has_value, text = arg[len(LOSS_KWARGS_FLAG):].partition("=")
        if not has_value:
            text = next(args, None)
            if text is None:
                _fail(f"distill.loss_kwargs.{key}", "the flag has no value")
        if not key.isidentifier():
            _fail(f"distill.loss_kwargs.{key}", f"expected {LOSS_KWARGS_FLAG}<name>=<value>")
        kwargs[key] = _flag_value(text)
    return rest, kwargs


# Keywords of the pure losses that the training step itself decides, not the config.
_SET_BY_THE_STEP = ("mask", "axis_name")


def _check_loss_kwargs(loss: str, given: dict) -> None:
    from pcjax import losses

    spec = losses.get(loss)
    params = inspect.signature(spec.fn).parameters
    accepted = [name for name, p in params.items()
                if p.kind is p.KEYWORD_ONLY and name not in _SET_BY_THE_STEP]
    for key in sorted(set(given) - set(accepted)):
        expected = f"expected some of {', '.join(accepted)}" if accepted else "it takes none"
        _fail(f"distill.loss_kwargs.{key}", f"not an option of {loss}; {expected}")


def crd_options(config: ml_collections.ConfigDict) -> dict:
    """`CRD_OPTIONS` updated by ``config.distill.loss_kwargs``; ConfigError naming a bad key."""
    given = dict(config.distill.loss_kwargs)
    for key in sorted(set(given) - set(CRD_OPTIONS)):
        _fail(f"distill.loss_kwargs.{key}",
              f"not an option of crd; expected some of {', '.join(CRD_OPTIONS)}")
    options = {**CRD_OPTIONS, **given}
    for key in ("feat_dim", "nce_k"):
        value = options[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            _fail(f"distill.loss_kwargs.{key}", f"must be an integer >= 1, got {value!r}")
    for key, ok, what in (("nce_t", lambda v: v > 0, "positive"),
                          ("momentum", lambda v: 0 <= v <= 1, "in [0, 1]")):
        value = options[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
            _fail(f"distill.loss_kwargs.{key}", f"must be a number {what}, got {value!r}")
    return options


def loss_weights(config: ml_collections.ConfigDict) -> dict[str, float]:
    """The protocol's loss weights ``{"ce", "kd", "transfer"}``.

    class_unaware trains on the transfer loss alone (weights of CE and KD are 0 whatever the config
    says); class_aware uses gamma, alpha and beta. beta defaults to the loss's RepDistiller weight.
    """
    from pcjax import losses

    d = config.distill
    beta = d.beta if d.beta is not None else float(losses.get(d.loss).default_weight)
    if d.protocol == "class_unaware":
        return {"ce": 0.0, "kd": 0.0, "transfer": beta}
    return {"ce": float(d.gamma), "kd": float(d.alpha), "transfer": beta}
