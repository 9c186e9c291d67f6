"""The pure step functions: supervised (teacher) step, distillation (student) step, forward.

Each is a pure function of arrays over a `TrainState`; the trainer jits it once over the mesh with
explicit shardings and donates the state. The rng of step k is ``fold_in(base_key, k)``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from pcjax.training.state import TrainState, merge, split


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy (nats) of (B, C) logits and (B,) integer labels, in float32."""
    return optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels
    ).mean()


def _batch_accuracy(logits, labels):
    return jnp.mean(jnp.argmax(logits, -1) == labels)


def _update(tx, schedule, state: TrainState, grads, model_state, metrics, logits, labels):
    """Applies the optimizer; returns the next state and the step's metrics (+ the shared ones)."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = TrainState(
        state.step + 1, optax.apply_updates(state.params, updates), model_state, opt_state
    )
    metrics = {
        **metrics,
        "accuracy": _batch_accuracy(logits, labels),
        "grad_norm": optax.global_norm(grads),
        "learning_rate": schedule(state.step),
    }
    return new_state, metrics


def make_supervised_step(
    graphdef,
    rng_state,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    base_key: jax.Array,
) -> Callable:
    """``step(state, batch) -> (state, metrics)``: one SGD step on the cross-entropy of the labels.

    batch: {"image": (B, ...) float32, "label": (B,) int}. The model runs in train mode (batch
    statistics, running averages updated). metrics: loss, accuracy (of this batch, before the
    update), grad_norm, learning_rate — float32 scalars.
    """

    def step(state: TrainState, batch):
        key = jax.random.fold_in(base_key, state.step)

        def loss_fn(params):
            model = merge(graphdef, params, rng_state, state.model_state, step_key=key)
            out = model(batch["image"], train=True)
            return cross_entropy(out.logits, batch["label"]), (split(model)[3], out.logits)

        (loss, (model_state, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        return _update(
            tx, schedule, state, grads, model_state, {"loss": loss}, logits, batch["label"]
        )

    return step


def make_distill_step(
    graphdef,
    rng_state,
    teacher_graphdef,
    teacher_rng_state,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    base_key: jax.Array,
    *,
    loss_spec,
    loss_kwargs: dict,
    weights: dict[str, float],
    kd_fn: Callable,
    kd_temperature: float,
) -> Callable:
    """``step(state, teacher_variables, batch) -> (state, metrics)``: one distillation step.

    The frozen teacher runs in eval mode (running BatchNorm statistics) under ``stop_gradient``; the
    student (a `Student`, projection head included) in train mode. Objective:

            gamma * CE(student logits, labels) + alpha * KD(student logits, teacher logits; T)
            + beta * transfer(project(student x), teacher x)

    where x is the features or the logits as ``loss_spec.inputs`` says, and (gamma, alpha, beta) =
    weights["ce"], weights["kd"], weights["transfer"] (0, 0, beta under class_unaware). The transfer
    loss sees the global batch: under the global-view jit its rankings span every device's rows.
    metrics: loss (the weighted total), ce, kd, transfer, accuracy, grad_norm, learning_rate.
    """

    def pick(out):
        return out.features if loss_spec.inputs == "features" else out.logits

    def step(state: TrainState, teacher_variables, batch):
        key = jax.random.fold_in(base_key, state.step)
        teacher = merge(
            teacher_graphdef,
            teacher_variables["params"],
            teacher_rng_state,
            teacher_variables["model_state"],
        )
        t_out = jax.lax.stop_gradient(teacher(batch["image"], train=False))

        def loss_fn(params):
            student = merge(graphdef, params, rng_state, state.model_state, step_key=key)
            s_out = student(batch["image"], train=True)
            terms = {
                "ce": cross_entropy(s_out.logits, batch["label"]),
                "kd": kd_fn(s_out.logits, t_out.logits, temperature=kd_temperature),
                "transfer": loss_spec.fn(student.project(pick(s_out)), pick(t_out), **loss_kwargs),
            }
            total = sum(weights[k] * terms[k] for k in terms if weights[k])
            return total, (split(student)[3], terms, s_out.logits)

        (loss, (model_state, terms, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        return _update(
            tx, schedule, state, grads, model_state, {"loss": loss, **terms}, logits, batch["label"]
        )

    return step


def make_forward(graphdef, rng_state) -> Callable:
    """``forward(variables, images) -> ModelOutput`` in eval mode (running BatchNorm statistics)."""

    def forward(variables, images):
        model = merge(graphdef, variables["params"], rng_state, variables["model_state"])
        return model(images, train=False)

    return forward
