"""The pure step functions: supervised (teacher) step, distillation (student) step, forward.

Every train step has one signature, ``step(state, batch, teacher) -> (state, metrics)``: `state`
a `TrainState`, `batch` {"image": (B, ...) float32, "label": (B,) int, "index": (B,) int},
`teacher` the frozen teacher's variables (the teacher's own phase passes None and ignores it).
Each is a pure function of arrays; `pcjax.training.build` jits it over the mesh with explicit
shardings and donates the state. A step applies one update of the phase's optimizer (``tx``).
The only random numbers a step draws are a stateful transfer loss's (CRD's negatives), from a key
in its state folded with ``state.step``, so a resumed run draws what an uninterrupted one does;
the batch's "index" (each example's position in the train split) addresses its memory.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from pcjax.losses.baselines import kd
from pcjax.losses.transfer import Bound
from pcjax.training.state import TrainState, merge, split


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy (nats) of (B, C) logits and (B,) integer labels, in float32."""
    logits = logits.astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _train(graphdef, tx, schedule, objective: Callable) -> Callable:
    """The step that minimizes ``objective(model, batch, teacher, state) -> (loss, terms, logits,
    loss_state)``; the new ``loss_state`` carries no gradient."""

    def step(state: TrainState, batch, teacher):
        def loss_fn(params):
            model = merge(graphdef, params, state.model_state)
            loss, terms, logits, loss_state = objective(model, batch, teacher, state)
            return loss, (split(model)[2], terms, logits, loss_state)

        (loss, (model_state, terms, logits, loss_state)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = TrainState(state.step + 1, optax.apply_updates(state.params, updates),
                               model_state, opt_state, loss_state)
        return new_state, {"loss": loss, **terms,
                           "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
                           "grad_norm": optax.global_norm(grads),
                           "learning_rate": schedule(state.step)}

    return step


def make_supervised_step(graphdef, tx: optax.GradientTransformation,
                         schedule: optax.Schedule) -> Callable:
    """``step(state, batch, teacher) -> (state, metrics)``: one optimizer step on the cross-entropy
    of the labels (`teacher`: None).

    The model runs in train mode (batch statistics, running averages updated). metrics: loss,
    accuracy (of this batch, before the update), grad_norm, learning_rate — float32 scalars.
    """

    def objective(model, batch, teacher, state):
        del teacher  # The teacher's own phase has none.
        logits = model(batch["image"], train=True).logits
        return cross_entropy(logits, batch["label"]), {}, logits, state.loss_state

    return _train(graphdef, tx, schedule, objective)


def make_distill_step(
    graphdef, teacher_graphdef, tx: optax.GradientTransformation, schedule: optax.Schedule, *,
    transfer: Bound, inputs: str, weights: dict[str, float], kd_temperature: float,
) -> Callable:
    """``step(state, batch, teacher) -> (state, metrics)``: one optimizer step of distillation.

    The frozen teacher (`teacher`: its variables) runs in eval mode (running BatchNorm statistics)
    under ``stop_gradient``; the student (a `Student`, the loss's heads included) in train mode.
    Objective:

            gamma * CE(student logits, labels) + alpha * KD(student logits, teacher logits; T)
            + beta * transfer(student x, teacher x)

    where x is the model output `inputs` names ("features" or "logits"), (gamma, alpha, beta) =
    weights["ce"], weights["kd"], weights["transfer"] (0, 0, beta under class_unaware), and
    `transfer` the bound transfer loss (`pcjax.losses.transfer`): it reads the student's heads,
    ``state.loss_state``, the batch ("label", "index") and the step count, and returns the next
    ``loss_state``. It sees the global batch: under the global-view jit its rankings span every
    device's rows. metrics: loss (the weighted total), ce, kd, transfer, accuracy, grad_norm,
    learning_rate.
    """
    teacher_forward = make_forward(teacher_graphdef)

    def pick(out):
        return out.features if inputs == "features" else out.logits

    def objective(student, batch, teacher, state):
        t_out = jax.lax.stop_gradient(teacher_forward(teacher, batch["image"]))
        s_out = student(batch["image"], train=True)
        transfer_loss, loss_state = transfer.apply(
            student.heads, state.loss_state, pick(s_out), pick(t_out), batch, state.step)
        terms = {"ce": cross_entropy(s_out.logits, batch["label"]),
                 "kd": kd(s_out.logits, t_out.logits, temperature=kd_temperature),
                 "transfer": transfer_loss}
        total = sum(weights[k] * terms[k] for k in terms if weights[k])
        return total, terms, s_out.logits, jax.lax.stop_gradient(loss_state)

    return _train(graphdef, tx, schedule, objective)


def make_forward(graphdef) -> Callable:
    """``forward(variables, images) -> ModelOutput`` in eval mode (running BatchNorm statistics)."""

    def forward(variables, images):
        model = merge(graphdef, variables["params"], variables["model_state"])
        return model(images, train=False)

    return forward
