"""Transfer losses as the distillation step uses them: one protocol, stateless or stateful.

The pure functions (`perception_coherence_loss`, `kd`, `rkd`, ..., `crd.crd_loss`) are the API for
users' own code. A training loop instead asks this module for a `TransferLoss` by name, and every
loss, with or without state across steps, fits the same calls:

    loss = transfer.get("rkd")
    options = loss.resolve_options({"distance_weight": 25.0})  # typed, checked, defaults filled
    bound = loss.bind(options, num_examples=N, labels=None)    # labels: the class-aware split's
    heads = bound.heads(s_dim, t_dim, rngs)    # learned heads trained with the student, or None
    state = bound.init(key)                    # carried across steps (CRD's memory), or None
    value, state = bound.apply(heads, state, student_x, teacher_x, batch, step)

``inputs`` says which model output the loss consumes ("features" or "logits");
``default_weight`` is its weight in CE + weight * loss (RepDistiller's beta; KD's alpha).
``axis_name`` is True when the pure function takes ``axis_name`` and ranks over the global batch:
the step then calls it inside a ``shard_map`` over the batch axis (each device's rows are its
references, so the per-device memory is that of its own rows).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec

from pcjax.losses import crd
from pcjax.losses.baselines import cc, fitnet, kd, pkt, rkd, sp
from pcjax.losses.crd_heads import CRDHeads
from pcjax.losses.perception_coherence import perception_coherence_loss

# Keywords of the pure losses that the step decides, never the configuration.
_SET_BY_THE_STEP = ("mask", "axis_name")
# The shapes a loss's options are checked on: the loss's own checks run when it is traced.
_PROBE_BATCH, _PROBE_WIDTH = 4, 3


class OptionError(ValueError):
    """An option a loss refuses: `key` names it (None when the loss refuses their combination)."""

    def __init__(self, key: str | None, message: str):
        super().__init__(f"{key}: {message}" if key else message)
        self.key, self.message = key, message


@dataclasses.dataclass(frozen=True)
class Bound:
    """A transfer loss with its options and its run's train split fixed.

    Attributes:
      heads: ``(student_dim, teacher_dim, rngs) -> nnx.Module | None``: the learned heads trained
        with the student (saved in its checkpoint), or None.
      init: ``key -> loss state`` (a pytree, or None): what the loss carries across steps.
      apply: ``(heads, state, student_x, teacher_x, batch, step) -> (loss, new state)``; `batch`
        holds "label" and "index" (each example's position in the train split); `step` is the
        number of steps done (a stateful loss folds it into its key, so a resumed run draws what
        an uninterrupted one does). The new state carries no gradient.
    """

    heads: Callable
    init: Callable
    apply: Callable


@dataclasses.dataclass(frozen=True)
class TransferLoss:
    """A stateless transfer loss: ``fn(student_x, teacher_x, **options)``.

    Attributes:
      name: the registry name.
      fn: the pure loss.
      inputs: the model output it consumes, ``"features"`` or ``"logits"``.
      default_weight: its weight in CE + weight * loss.
      projection: the student side first goes through a learned linear map to the teacher's
        width (FitNet's regressor, CC's embedding).
      reads_labels: `bind` takes the train split's labels under the class-aware protocol.
    """

    name: str
    fn: Callable
    inputs: str
    default_weight: float
    projection: bool = False
    reads_labels: bool = False

    @property
    def axis_name(self) -> bool:
        return "axis_name" in inspect.signature(self.fn).parameters

    def defaults(self) -> dict[str, Any]:
        """The options and their defaults: the keyword-only arguments the step does not set."""
        return {name: p.default for name, p in inspect.signature(self.fn).parameters.items()
                if p.kind is p.KEYWORD_ONLY and name not in _SET_BY_THE_STEP}

    def resolve_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Every option with its value: `given` over the defaults, checked by the loss itself.

        An int given where the default is a float becomes a float, so an option set to its
        default equals the option left out. Raises `OptionError`.
        """
        defaults = self.defaults()
        self._check_names(given, defaults)
        options = {**defaults, **given}
        for key, value in options.items():
            default = defaults[key]
            if (isinstance(default, float) and isinstance(value, int)
                    and not isinstance(value, bool)):
                options[key] = float(value)
            elif (default is not None and not callable(value)
                  and type(value) is not type(default)):
                raise OptionError(key, f"expected a {type(default).__name__} like the default "
                                       f"{default!r}, got {value!r}")
        self._probe(options)
        return options

    def _check_names(self, given: Mapping, defaults: Mapping) -> None:
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            expected = f"expected some of {', '.join(defaults)}" if defaults else "it takes none"
            raise OptionError(unknown[0], f"not an option of {self.name}; {expected}")

    def _probe(self, options: dict) -> None:
        """Traces the loss on tiny inputs, so its own argument checks judge the values."""
        x = jax.ShapeDtypeStruct((_PROBE_BATCH, _PROBE_WIDTH), jnp.float32)
        try:
            jax.eval_shape(lambda s, t: self.fn(s, t, **options), x, x)
        except (TypeError, ValueError) as error:
            raise OptionError(None, f"{self.name} refuses them: {error}") from None

    def bind(self, options: Mapping[str, Any], *, num_examples: int, labels=None,
             batch_axis: tuple | None = None) -> Bound:
        """The loss as the step calls it (see the module docstring); stateless here.

        `batch_axis` = (mesh, axis name) the step's batch is split over: a loss that ranks over the
        global batch (``axis_name``) then runs inside a ``shard_map`` over it, each device ranking
        its own rows against the gathered batch.
        """
        del num_examples, labels  # Only a stateful loss reads its split.
        fn = functools.partial(self.fn, **options)
        if batch_axis is not None and self.axis_name and batch_axis[0].shape[batch_axis[1]] > 1:
            fn = _rows_per_device(fn, *batch_axis)

        def heads(student_dim, teacher_dim, rngs):
            return nnx.Linear(student_dim, teacher_dim, rngs=rngs) if self.projection else None

        def apply(heads, state, student_x, teacher_x, batch, step):
            del batch, step
            student_x = student_x if heads is None else heads(student_x)
            return fn(student_x, teacher_x), state

        return Bound(heads, lambda key: None, apply)


def _rows_per_device(fn: Callable, mesh, axis: str) -> Callable:
    """``fn(student_x, teacher_x)`` of the global batch, split over `axis` of `mesh`."""
    rows = PartitionSpec(axis)
    # The loss psums its row sums over the axis: the value is replicated, and shard_map's default
    # replication checks make the transpose of that psum (the gradient) right.
    return jax.shard_map(lambda s, t: fn(s, t, axis_name=axis), mesh=mesh,
                         in_specs=(rows, rows), out_specs=PartitionSpec())


# CRD's options and their defaults (RepDistiller's): embedding size (heads and banks), negatives
# per sample (capped at the train split's size - 1), temperature, bank momentum.
CRD_OPTIONS = {"feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "momentum": 0.5}


@dataclasses.dataclass(frozen=True)
class CRDLoss(TransferLoss):
    """CRD (`pcjax.losses.crd`): its embedding heads, memory banks and negatives.

    The state is {"crd": `crd.CRDState` of the train split's N rows, "key": the PRNG key of the
    negatives}. K negatives per sample come from the step's key, drawn from the other classes of
    the split's labels when they are given (class-aware protocol, RepDistiller's "exact" mode), or
    uniformly from the whole split (class-unaware: no labels); the key is the state's, folded with
    the step. After the loss, `crd.update_banks` writes the stop-gradient embeddings of every row
    of the global batch into the banks.
    """

    def defaults(self) -> dict[str, Any]:
        return dict(CRD_OPTIONS)

    def resolve_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        self._check_names(given, CRD_OPTIONS)
        options = {**CRD_OPTIONS, **given}
        for key in ("feat_dim", "nce_k"):
            value = options[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise OptionError(key, f"must be an integer >= 1, got {value!r}")
        for key, ok, what in (("nce_t", lambda v: v > 0, "positive"),
                              ("momentum", lambda v: 0 <= v <= 1, "in [0, 1]")):
            value = options[key]
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or not ok(value)):
                raise OptionError(key, f"must be a number {what}, got {value!r}")
            options[key] = float(value)
        return options

    def bind(self, options: Mapping[str, Any], *, num_examples: int, labels=None,
             batch_axis: tuple | None = None) -> Bound:
        del batch_axis  # The banks are replicated; XLA gathers the batch to update them.
        options = dict(options)
        classes = None if labels is None else crd.class_index(np.asarray(labels))

        def heads(student_dim, teacher_dim, rngs):
            return CRDHeads(student_dim, teacher_dim, options["feat_dim"], rngs=rngs)

        def init(key):
            return {"crd": crd.init_state(jax.random.fold_in(key, 0), num_examples,
                                          options["feat_dim"]),
                    "key": jax.random.fold_in(key, 1)}

        def apply(heads, state, student_x, teacher_x, batch, step):
            memory, index = state["crd"], batch["index"]
            emb_s, emb_t = heads(student_x, teacher_x)
            contrast_idx = crd.sample_contrast_indices(
                jax.random.fold_in(state["key"], step), index, nce_k=options["nce_k"],
                num_examples=num_examples, label=None if classes is None else batch["label"],
                classes=classes)
            value, memory = crd.crd_loss(memory, emb_s, emb_t, contrast_idx,
                                         nce_t=options["nce_t"])
            memory = crd.update_banks(memory, emb_s, emb_t, index, momentum=options["momentum"])
            return value, {**state, "crd": memory}

        return Bound(heads, init, apply)


# perception_coherence's weight is not from a reference: 10 makes the loss of an unrelated student
# (mse of independent uniform ranks, about 1/6) contribute about 1.7, the order of an early
# cross-entropy, like the RepDistiller betas do for their losses.
_REGISTRY = {
    loss.name: loss for loss in (
        TransferLoss("perception_coherence", perception_coherence_loss, "features", 10.0),
        TransferLoss("kd", kd, "logits", 0.9),
        TransferLoss("fitnet", fitnet, "features", 100.0, projection=True),
        TransferLoss("rkd", rkd, "features", 1.0),
        TransferLoss("pkt", pkt, "features", 30000.0),
        TransferLoss("sp", sp, "features", 3000.0),
        TransferLoss("cc", cc, "features", 0.02, projection=True),
        CRDLoss("crd", crd.crd_loss, "features", 0.8, reads_labels=True),
    )
}


def names() -> tuple[str, ...]:
    """The registered loss names."""
    return tuple(_REGISTRY)


def get(name: str) -> TransferLoss:
    """The loss registered under `name`; ValueError listing the names if unknown."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown loss {name!r}; registered losses: {', '.join(_REGISTRY)}.")
    return _REGISTRY[name]
