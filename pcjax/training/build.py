"""From a `RunSpec` to what a phase trains: models, optimizer, train state, step, jitted step.

The one path from a resolved run to a training step, shared by the trainer, the benchmarks and the
tests::

    spec = pcjax.training.spec.resolve(config, mesh)
    teacher = build.teacher_phase(spec)                # a Phase: state, pure step, lengths
    step = build.jit_step(teacher.step, spec.mesh)     # step(state, batch, None), under the mesh
    student = build.student_phase(spec, build.Model(teacher.graphdef, variables))

A stateful loss's state (CRD's memory) is replicated over the mesh like the params (see
`pcjax.losses.transfer`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import numpy as np
import optax
from flax import nnx

from pcjax import data, models
from pcjax.training import checkpoint, optim, sharding
from pcjax.training import state as state_lib
from pcjax.training import steps as steps_lib
from pcjax.training.spec import PhaseSpec, RunSpec


@dataclasses.dataclass
class Model:
    """A trained (or loaded) model ready for inference: ``forward(variables, images)``."""

    graphdef: Any
    variables: dict

    @functools.cached_property
    def forward(self) -> Callable:
        """Built once, so every ``jax.jit(model.forward)`` shares one compiled program."""
        return steps_lib.make_forward(self.graphdef)


# ----------------------------------------------------------------------------- models


def _network(spec: RunSpec, phase: PhaseSpec) -> Callable[[], nnx.Module]:
    """Builds `phase`'s network, seeded by its seed."""
    return lambda: models.create(phase.model, num_classes=spec.dataset.num_classes,
                                 rngs=nnx.Rngs(phase.seed))


def _output_dim(model_fn: Callable, image_shape, inputs: str) -> int:
    out = nnx.eval_shape(lambda: model_fn()(np.zeros((1, *image_shape), np.float32), train=False))
    return (out.features if inputs == "features" else out.logits).shape[-1]


def _student(spec: RunSpec, heads_fn: Callable) -> Callable[[], state_lib.Student]:
    """The student network plus the transfer loss's heads (`heads_fn(student_dim, teacher_dim,
    rngs)`), whose sizes are read from the models' output shapes (nothing is computed)."""
    net_fn = _network(spec, spec.student)
    dims = [_output_dim(fn, spec.dataset.image_shape, spec.loss.inputs)
            for fn in (net_fn, _network(spec, spec.teacher))]
    return lambda: state_lib.Student(net_fn(), heads_fn(*dims, nnx.Rngs(spec.student.seed + 1)))


def abstract_teacher(spec: RunSpec) -> Model:
    """The teacher's graph with the shapes, dtypes and (replicated) shardings of its variables."""
    graphdef, params, model_state = state_lib.split(nnx.eval_shape(_network(spec, spec.teacher)))
    variables = {"params": params, "model_state": model_state}
    return Model(graphdef, checkpoint.abstract_like(variables, sharding.replicated(spec.mesh)))


# ----------------------------------------------------------------------------- phases


@dataclasses.dataclass(frozen=True)
class Phase:
    """What a phase trains, ready for `pcjax.training.loop.run_phase` or a step of one's own.

    Attributes:
        spec: the phase's `PhaseSpec` (name, seed, phase config, lengths).
        graphdef: the trained model's graph.
        state: the initial `TrainState`.
        step: the pure ``step(state, batch, teacher) -> (state, metrics)`` (`pcjax.training.steps`).
        teacher: the frozen teacher's variables the step reads (None in the teacher phase).
    """

    spec: PhaseSpec
    graphdef: Any
    state: state_lib.TrainState
    step: Callable
    teacher: Any = None

    @functools.cached_property
    def forward(self) -> Callable:
        """``forward(variables, images)`` of the trained model, built once."""
        return steps_lib.make_forward(self.graphdef)

    def model(self, state: state_lib.TrainState | None = None) -> Model:
        """The phase's model with the variables of `state` (default: the initial state)."""
        state = self.state if state is None else state
        return Model(self.graphdef, state_lib.export_variables(state))


def _phase(spec: RunSpec, phase: PhaseSpec, model_fn, make_step, teacher, abstract, rate_factor,
           loss_state_fn=None) -> Phase:
    tx, schedule = optim.make_optimizer(phase.train, phase.steps)
    if rate_factor:  # A last factor on the update, held in the state (opt_state[-1]).
        tx = optax.chain(tx, optax.inject_hyperparams(optax.scale)(step_size=1.0))
    graphdef, state = state_lib.create(model_fn, tx, sharding.replicated(spec.mesh),
                                       abstract=abstract, loss_state_fn=loss_state_fn)
    return Phase(phase, graphdef, state, make_step(graphdef, tx, schedule), teacher)


def teacher_phase(spec: RunSpec, *, abstract: bool = False, rate_factor: bool = False) -> Phase:
    """The teacher phase: the teacher network, cross-entropy on the labels.

    Args:
        spec: the run.
        abstract: a state of ``jax.ShapeDtypeStruct``s (nothing computed), for tracing.
        rate_factor: the optimizer ends in a learning-rate factor held in the state
          (``opt_state[-1].hyperparams["step_size"]``, 1 at first): one compiled step then trains
          at any rate (sgd and adamw updates are linear in the rate), as the benchmarks do.
    """
    return _phase(spec, spec.teacher, _network(spec, spec.teacher),
                  steps_lib.make_supervised_step, None, abstract, rate_factor)


@functools.lru_cache(maxsize=4)
def _train_labels(dataset: str, split: str, data_dir) -> tuple[int, ...]:
    """The labels of a split, decoded once per process (runs of one process share them)."""
    return tuple(int(example["label"]) for example in data.source(dataset, split,
                                                                  data_dir=data_dir))


def student_phase(spec: RunSpec, teacher: Model, *, abstract: bool = False,
                  rate_factor: bool = False) -> Phase:
    """The distillation phase: the student learns from the frozen `teacher` with the run's
    transfer loss, protocol weights and KD temperature. Arguments as `teacher_phase`.

    The loss is bound to the train split (``spec.loss.bind``): a stateful loss sizes its memory by
    the split and, under the class-aware protocol, reads the split's labels once (every example
    is decoded); its state starts from ``spec.loss_seed``."""
    labels = None
    if spec.protocol == "class_aware" and spec.loss.reads_labels:
        labels = _train_labels(spec.dataset.name, spec.train_split, spec.data_dir)
    bound = spec.loss.bind(spec.loss_options, num_examples=spec.num_train_examples,
                           labels=labels, batch_axis=(spec.mesh, sharding.DATA_AXIS))

    def make_step(graphdef, tx, schedule):
        return steps_lib.make_distill_step(
            graphdef, teacher.graphdef, tx, schedule, transfer=bound, inputs=spec.loss.inputs,
            weights=dict(spec.weights), kd_temperature=spec.kd_temperature)

    return _phase(spec, spec.student, _student(spec, bound.heads), make_step, teacher.variables,
                  abstract, rate_factor, lambda: bound.init(jax.random.PRNGKey(spec.loss_seed)))


# ----------------------------------------------------------------------------- jit


def jit_step(step: Callable, mesh) -> Callable:
    """``step(state, batch, teacher)`` jitted over `mesh`: the batch split on "data", the state
    and the teacher replicated, the state donated.
    """
    rep = sharding.replicated(mesh)
    return jax.jit(step, in_shardings=(rep, sharding.batch_sharded(mesh), rep),
                   out_shardings=(rep, rep), donate_argnums=0)


def jit_forward(forward: Callable, mesh) -> Callable:
    """``forward(variables, images)`` jitted over `mesh`: variables replicated, images split."""
    return jax.jit(forward, in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)))
