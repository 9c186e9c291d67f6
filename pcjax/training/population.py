"""A population: one phase's step vmapped over members that differ in seed and learning rate.

The benchmarks train every (seed, learning rate) member of a method at once::

    members = [build.student_phase(spec, teacher, population=True) for spec in specs]
    phase = population.stack(members, lr_factors)   # one Phase; its state has a member axis
    state, metrics = jax.jit(phase.step)(phase.state, batch, phase.teacher)   # batch: (P, B, ...)

Members are independent in exact arithmetic; the vmapped program computes each member with the
batched kernels, whose float32 sums are ordered otherwise than one member's program.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from pcjax.training.build import Phase


def population_step(step: Callable) -> Callable:
    """`step` over a leading member axis of the state and the batch; the teacher is shared.

    Every member's optimizer ends in its learning-rate factor (phases built with
    ``population=True``); its metrics' learning_rate includes it. sgd and adamw updates are
    linear in the learning rate, so a member equals a run with the factor times the base rate.
    """
    members = jax.vmap(step, in_axes=(0, 0, None))

    def population(state, batch, teacher):
        new_state, metrics = members(state, batch, teacher)
        factor = state.opt_state[-1].hyperparams["step_size"]
        return new_state, {**metrics, "learning_rate": metrics["learning_rate"] * factor}

    return population


def stack(phases: Sequence[Phase], lr_factors: Sequence[float]) -> Phase:
    """One phase of the members `phases` (built with ``population=True`` from configs that
    differ at most in the seed), member i training at ``lr_factors[i]`` times its rate.

    The state stacks the members' states on a leading axis (CRD's memory and key included: each
    member keeps its own); the step is `population_step`, whose batch has that axis too (member i
    reads row i of every batch array).
    """
    states = []
    for phase, factor in zip(phases, lr_factors, strict=True):
        *opt_state, scale = phase.state.opt_state
        if not isinstance(scale, optax.InjectStatefulHyperparamsState):
            raise ValueError("stack: build the member phases with population=True")
        scale = scale._replace(hyperparams={"step_size": jnp.asarray(factor, jnp.float32)})
        states.append(phase.state.replace(opt_state=(*opt_state, scale)))
    state = jax.tree.map(lambda *x: jnp.stack(x), *states)
    return dataclasses.replace(phases[0], state=state, step=population_step(phases[0].step))
