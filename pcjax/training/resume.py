"""The resume policy: whether a workdir's saved run may be continued by this run.

A workdir keeps the config that produced it (config.json, as resolved: the loss's options with
their defaults). A rerun into it may change only the keys that cannot change the training
trajectory (`MAY_DIFFER`: the run name, where the data lives, devices, what is evaluated and how
often, logging and checkpoint cadence); with ``extend=True`` (``train.py --extend``) also the
phase lengths (`LENGTH_KEYS`), to train on from the last checkpoint with the schedule resolved for
the new length, as long as the new length is longer and the phase has not ended. Anything else is
refused by `check_resume`, naming each differing key. A workdir whose run stopped before its first
checkpoint holds nothing to continue, and any config may start in it again.
"""

from __future__ import annotations

import fnmatch
import json

from pcjax.losses import transfer
from pcjax.training import optim
from pcjax.training.config import ConfigError
from pcjax.training.spec import RunSpec

MAY_DIFFER = ("name", "data_dir", "distributed", "heartbeat_timeout_seconds", "num_devices",
              "eval_split", "eval.*", "*.train.log_every", "*.train.eval_every",
              "*.train.checkpoint_every", "*.train.keep_checkpoints")
LENGTH_KEYS = ("*.train.num_steps", "*.train.num_epochs")
_MISSING = "(absent)"


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _matches(key: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)


def _ended_or_shortened(saved: dict, spec: RunSpec, ended: dict[str, bool]) -> list[str]:
    """The phases whose new length `--extend` cannot honour, each as a reason."""
    problems = []
    for phase in (spec.teacher, spec.student):
        old_train = saved.get(phase.name, {}).get("train", {})
        old_len = {k: old_train.get(k) for k in ("num_steps", "num_epochs")}
        if old_len == {k: phase.train[k] for k in old_len}:
            continue
        phase_cfg = spec.config[phase.name].train.to_dict()
        phase_cfg.update({k: v for k, v in old_len.items() if v is not None})
        old_total = optim.resolve_steps(_Attrs(phase_cfg), spec.num_train_examples).total
        if phase.steps.total < old_total:
            problems.append(f"{phase.name}: {phase.steps.total} steps is shorter than the "
                            f"{old_total} it was started with")
        elif ended.get(phase.name):
            problems.append(f"{phase.name}: the phase has ended; its length can no longer change")
    return problems


def _with_option_defaults(saved: dict) -> dict:
    """`saved` with its loss's options completed by their defaults, as `spec.resolve` records
    them (so an option set to its default equals the option left out)."""
    distill = saved.get("distill", {})
    if distill.get("loss") not in transfer.names():
        return saved
    defaults = json.loads(json.dumps(transfer.get(distill["loss"]).defaults()))
    options = {**defaults, **distill.get("loss_kwargs", {})}
    return {**saved, "distill": {**distill, "loss_kwargs": options}}


class _Attrs(dict):
    """A dict read by attribute, as `optim.resolve_steps` reads a phase config."""

    def __getattr__(self, name):
        value = self[name]
        return _Attrs(value) if isinstance(value, dict) else value


def check_resume(saved: dict, spec: RunSpec, *, workdir: str, extend: bool = False,
                 ended: dict[str, bool] | None = None) -> None:
    """Refuses to continue a workdir whose saved config differs where the trajectory depends on it.

    Args:
      saved: the workdir's config.json, as loaded by ``json.load``.
      spec: this run.
      workdir: the workdir (named in the message).
      extend: also accept longer phase lengths (`LENGTH_KEYS`) for phases that have not ended.
      ended: {"teacher": bool, "student": bool}, whether each phase has finished in the workdir.

    Raises:
      ConfigError: listing every refused key as ``key: old -> new`` and the ways out.
    """
    old = _flatten(_with_option_defaults(saved))
    # The JSON round trip gives both sides the same types (tuples become lists).
    new = _flatten(json.loads(spec.config.to_json_best_effort()))
    allowed = MAY_DIFFER + (LENGTH_KEYS if extend else ())
    changed = [
        f"{key}: {old.get(key, _MISSING)!r} -> {new.get(key, _MISSING)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key, _MISSING) != new.get(key, _MISSING) and not _matches(key, allowed)
    ]
    if changed:
        only_lengths = all(_matches(c.split(":")[0], LENGTH_KEYS) for c in changed)
        hint = " (or pass --extend to train on to the new phase length)" if only_lengths else ""
        raise ConfigError(f"config: the workdir {workdir} holds a run with another config "
                          f"({'; '.join(changed)}); resuming it would mix two runs. Use a new "
                          f"--workdir{hint}.")
    if extend:
        problems = _ended_or_shortened(saved, spec, ended or {})
        if problems:
            raise ConfigError(f"--extend: only extends a phase that has not ended "
                              f"({'; '.join(problems)}). Use a new --workdir.")
