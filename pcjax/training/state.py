"""The train state as a plain pytree, and the NNX split/merge around it.

A model is an ``nnx.Module`` built with ``nnx.Rngs`` for its initialization only; no model of the
library draws random numbers when it runs. For the jitted step it is split once into a static
``graphdef`` and two states: ``params`` (``nnx.Param``, trained) and ``model_state`` (everything
else: BatchNorm statistics). The step function is pure over ``TrainState`` and merges them back.

A model that needs randomness when it runs (dropout) keeps its own ``nnx.Rngs`` as NNX does:
their ``nnx.RngState`` variables then fall into ``model_state``, so the step carries them and the
checkpoint saves them, and a resumed run draws the same numbers as an uninterrupted one.

A stateful transfer loss (CRD) keeps its own arrays in ``TrainState.loss_state``: replicated like
the params, updated by the step, checkpointed with the rest of the state.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx


@flax.struct.dataclass
class TrainState:
    """What a phase trains and checkpoints.

    Attributes:
        step: int32 scalar, number of train steps done.
        params: ``nnx.State`` of the trainable ``nnx.Param``s.
        model_state: ``nnx.State`` of the other variables (BatchNorm running statistics).
        opt_state: the optax state of ``params``.
        loss_state: what a stateful transfer loss carries across steps (CRD: its memory banks and
            normalizers, ``crd.CRDState``, and the PRNG key of its negatives), or None.
    """

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    loss_state: Any = None


class Student(nnx.Module):
    """A student network plus, when the transfer loss has them, its learned heads.

    ``heads`` is the module the loss's ``bind(...).heads`` builds (FitNet's regressor, CC's
    embedding, CRD's embedding heads), trained with the student and saved in its checkpoint, or
    None. Calling the student returns the network's ``ModelOutput``.
    """

    def __init__(self, net: nnx.Module, heads: nnx.Module | None):
        self.net = net
        self.heads = heads

    def __call__(self, x, *, train: bool):
        return self.net(x, train=train)


def split(model: nnx.Module):
    """``(graphdef, params, model_state)`` of `model`."""
    return nnx.split(model, nnx.Param, ...)


def merge(graphdef, params, model_state) -> nnx.Module:
    """Rebuilds the module from `split`'s parts."""
    # Fresh Variables (copy=True) belong to the current trace, so BatchNorm may update them inside
    # jax.grad even when the states were created at the enclosing jit's level.
    return nnx.merge(graphdef, params, model_state, copy=True)


def create(model_fn, tx: optax.GradientTransformation, sharding, *, abstract: bool = False,
           loss_state_fn=None):
    """Builds the model and its optimizer state directly with `sharding` (one jitted init).

    Args:
        model_fn: () -> nnx.Module, deterministic (seeded inside).
        tx: the optimizer.
        sharding: placement of every state array (replicated for data parallelism).
        abstract: only shapes, dtypes and shardings (``jax.ShapeDtypeStruct``s), nothing computed.
        loss_state_fn: () -> the initial ``loss_state`` (deterministic), or None for none.

    Returns:
        ``(graphdef, TrainState)``.
    """
    graphdef = split(nnx.eval_shape(model_fn))[0]

    def init():
        _, params, model_state = split(model_fn())
        loss_state = loss_state_fn() if loss_state_fn else None
        return TrainState(jnp.zeros((), jnp.int32), params, model_state, tx.init(params),
                          loss_state)

    init = jax.jit(init, out_shardings=sharding)
    return graphdef, jax.eval_shape(init) if abstract else init()


def export_variables(state: TrainState) -> dict:
    """The inference variables of a trained model (what the teacher export holds)."""
    return {"params": state.params, "model_state": state.model_state}
