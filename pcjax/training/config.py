"""The run configuration: its schema (defaults) and its validation.

A config is an ``ml_collections.ConfigDict``. A config file (``configs/*.py``, which imports
only ``ml_collections``) returns the keys that differ from `base_config`; `complete` lays them over
the defaults, and `apply_overrides` the command line's ``--config.<key>=<value>`` flags. Schema
(``phase`` = the teacher's or the student's training phase; every phase key defaults to
`phase_config`'s):

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
  distill.loss      a ``pcjax.losses.transfer`` name; ``loss_kwargs`` are its options, checked
                    and completed with their defaults by the loss (``resolve_options``). On
                    train.py's command line: ``--config.distill.loss_kwargs.<name>=<value>``
  distill.beta      None = the loss's ``default_weight``; ``alpha``, ``gamma``,
                    ``kd_temperature`` as above
  eval              batch_size, knn_k, probe_train_split ("" = train_split),
                    pc_chunk_size (0 = the pc_score default)

Checks: `pcjax.training.spec.resolve` checks every value and returns the run it describes;
`pcjax.training.resume` decides whether a workdir's saved config may be continued.
"""

from __future__ import annotations

import ast
import difflib

import ml_collections
from ml_collections import config_dict


class ConfigError(ValueError):
    """A config the run refuses; the message starts with the offending key (``config.<key>: ``)."""


def fail(key: str, message: str):
    raise ConfigError(f"config.{key}: {message}")


def phase_config(**overrides) -> ml_collections.ConfigDict:
    """A training phase with RepDistiller-like SGD defaults; keyword arguments override fields."""
    phase = ml_collections.ConfigDict(dict(
        batch_size=64, num_steps=0, num_epochs=240.0, augment=True, log_every=100,
        checkpoint_every=1000, keep_checkpoints=2, eval_every=0,
        optimizer=dict(name="sgd", learning_rate=0.05, momentum=0.9, nesterov=False,
                       weight_decay=5e-4, b1=0.9, b2=0.999, grad_clip_norm=0.0),
        schedule=dict(name="piecewise", warmup_steps=0, warmup_epochs=0.0, decay_steps=(),
                      decay_epochs=(150, 180, 210), decay_factor=0.1, end_factor=0.0),
    ))
    for key, value in overrides.items():
        if isinstance(value, dict):
            phase[key].update(value)
        else:
            phase[key] = value
    return phase


def base_config() -> ml_collections.ConfigDict:
    """Every key of the schema with its default (configs/*.py override what differs)."""
    return ml_collections.ConfigDict(dict(
        name="run", seed=0, dataset="digits", data_dir="", train_split="train",
        eval_split="test", distributed=False, heartbeat_timeout_seconds=60, num_devices=0,
        teacher=dict(model="digits_cnn", checkpoint="", train=phase_config()),
        student=dict(model="digits_student", train=phase_config()),
        distill=dict(protocol="class_unaware", loss="perception_coherence",
                     loss_kwargs=ml_collections.ConfigDict(),
                     beta=config_dict.placeholder(float), alpha=0.0, gamma=1.0,
                     kd_temperature=4.0),
        eval=dict(batch_size=256, knn_k=5, probe_train_split="", pc_chunk_size=0),
    ))


# Keys whose value is a dict of any keys (the loss's options), not part of the schema.
_OPEN = ("distill.loss_kwargs",)


def _child(config: ml_collections.ConfigDict, key: str, path: str):
    """``config[key]``; ConfigError naming `path` (and the closest key) if the schema lacks it."""
    if key not in config:
        close = difflib.get_close_matches(key, list(config.keys()), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        fail(path, f"no such key{hint}")
    return config[key]


def _set(config: ml_collections.ConfigDict, key: str, value, path: str) -> None:
    current = config[key]
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif isinstance(current, tuple) and isinstance(value, (list, int, float)):
        value = tuple(value) if isinstance(value, list) else (value,)
    try:
        config[key] = value
    except (TypeError, ValueError):
        expected = type(current).__name__ if current is not None else "a number"
        fail(path, f"expected {expected}, got {value!r}")


def _merge(config: ml_collections.ConfigDict, given, prefix: str) -> None:
    for key, value in given.items():
        path = f"{prefix}{key}"
        current = _child(config, key, path)
        if path in _OPEN:
            config[key] = ml_collections.ConfigDict(dict(value))
        elif isinstance(current, ml_collections.ConfigDict):
            if not isinstance(value, (dict, ml_collections.ConfigDict)):
                fail(path, f"expected a dict of keys, got {value!r}")
            _merge(current, value, f"{path}.")
        else:
            _set(config, key, value, path)


def complete(given) -> ml_collections.ConfigDict:
    """`base_config` with the keys of `given` (a config file's dict or ConfigDict) laid over it.

    Raises ConfigError naming a key the schema lacks (with the closest key) or a value of the
    wrong type.
    """
    config = base_config()
    _merge(config, given.to_dict() if isinstance(given, ml_collections.ConfigDict) else given, "")
    return config


def parse_value(text: str, current):
    """A command-line value: text for a string key, else a Python literal (``0.3``, ``(1, 2)``,
    ``True``; ``true``/``false`` too), or the text itself if it is none."""
    if isinstance(current, str):
        return text
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str]) -> None:
    """Sets dotted keys (``{"distill.loss": "rkd", "student.train.batch_size": "32"}``) from
    command-line text; keys under ``distill.loss_kwargs`` may be any name (the loss checks them)."""
    for path, text in overrides.items():
        *parents, key = path.split(".")
        node, prefix = config, ""
        for name in parents:
            node = _child(node, name, prefix + name)
            prefix += name + "."
        if prefix.rstrip(".") in _OPEN:
            node[key] = parse_value(text, None)
        else:
            _set(node, key, parse_value(text, _child(node, key, path)), path)
