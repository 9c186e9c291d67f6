"""From a config to what a phase trains: models, optimizer, train state, step, jitted step.

The one path from a config to a training step, shared by the trainer, the benchmarks and the
tests::

    teacher = build.teacher_phase(config, mesh)        # a Phase: state, pure step, lengths
    step = build.jit_step(teacher.step, mesh)          # step(state, batch, None), under the mesh
    student = build.student_phase(config, mesh, build.Model(teacher.graphdef, variables))

Sections: models (teacher; student with the loss's projection head or CRD's embedding heads);
phases (optimizer and schedule, train state, step); jit; population (one step vmapped over a stack
of members that differ in seed and learning rate).

CRD's memory (``TrainState.loss_state``: two N x feat_dim banks, N the train split's size, and
their normalizers) is replicated over the mesh like the params, and every row of the global batch
updates it: it costs N x feat_dim x 4 bytes x 2 per device, ~51 MB at N = 50,000 and ~1.3 GB at
N = 1.28M (feat_dim 128). Under the class-aware protocol its negatives come from the other
classes, so `student_phase` reads the train split's labels once (every example is decoded).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from pcjax import data, losses, models
from pcjax.losses import crd, crd_heads
from pcjax.training import checkpoint, optim, sharding
from pcjax.training import config as config_lib
from pcjax.training import state as state_lib
from pcjax.training import steps as steps_lib

TEACHER, STUDENT = "teacher", "student"


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


def num_train_examples(cfg: ml_collections.ConfigDict) -> int:
    return len(data.source(cfg.dataset, cfg.train_split, data_dir=cfg.data_dir or None))


def teacher_fn(cfg: ml_collections.ConfigDict) -> Callable[[], nnx.Module]:
    """Builds the teacher network (seeded by ``cfg.seed``)."""
    num_classes = data.spec(cfg.dataset, data_dir=cfg.data_dir or None).num_classes
    return lambda: models.create(
        cfg.teacher.model, num_classes=num_classes, rngs=nnx.Rngs(cfg.seed)
    )


def _loss_input_dim(model_fn: Callable, image_shape, inputs: str) -> int:
    out = nnx.eval_shape(lambda: model_fn()(np.zeros((1, *image_shape), np.float32), train=False))
    return (out.features if inputs == "features" else out.logits).shape[-1]


def student_fn(cfg: ml_collections.ConfigDict) -> Callable[[], state_lib.Student]:
    """Builds the student network plus the loss's projection head or CRD's embedding heads.

    The projection head maps the student's loss input (features or logits) to the teacher's width;
    CRD's heads map each side's features to ``feat_dim``. Their sizes are read from the models'
    output shapes (``nnx.eval_shape``, nothing is computed).
    """
    spec = losses.get(cfg.distill.loss)
    dataset = data.spec(cfg.dataset, data_dir=cfg.data_dir or None)
    net_fn = lambda: models.create(  # noqa: E731
        cfg.student.model, num_classes=dataset.num_classes, rngs=nnx.Rngs(cfg.seed + 1)
    )
    head_dims = None
    if spec.projection == "linear" or spec.stateful:
        head_dims = (
            _loss_input_dim(net_fn, dataset.image_shape, spec.inputs),
            _loss_input_dim(teacher_fn(cfg), dataset.image_shape, spec.inputs),
        )
    elif spec.projection is not None:
        raise ValueError(
            f"config.distill.loss: projection {spec.projection!r} of loss "
            f"{cfg.distill.loss!r} is not supported (expected None or 'linear')"
        )
    if spec.stateful:  # CRD: its embedding heads instead of a projection.
        feat_dim = config_lib.crd_options(cfg)["feat_dim"]
        return lambda: state_lib.Student(net_fn(), None, rngs=nnx.Rngs(0), embed=(
            crd_heads.CRDHeads(*head_dims, feat_dim, rngs=nnx.Rngs(cfg.seed + 2))))
    return lambda: state_lib.Student(net_fn(), head_dims, rngs=nnx.Rngs(cfg.seed + 2))


def abstract_teacher(cfg: ml_collections.ConfigDict, mesh) -> Model:
    """The teacher's graph with the shapes, dtypes and (replicated) shardings of its variables."""
    graphdef, params, model_state = state_lib.split(nnx.eval_shape(teacher_fn(cfg)))
    variables = {"params": params, "model_state": model_state}
    return Model(graphdef, checkpoint.abstract_like(variables, sharding.replicated(mesh)))


# ----------------------------------------------------------------------------- phases


@dataclasses.dataclass(frozen=True)
class Phase:
    """What a phase trains, ready for `pcjax.training.loop.run_phase` or a step of one's own.

    Attributes:
        name: "teacher" or "student": its workdir subdirectory and metric prefix.
        config: the phase config (``config.teacher.train`` or ``config.student.train``).
        steps: the phase's lengths.
        seed: the seed of its batch order.
        graphdef: the trained model's graph.
        state: the initial `TrainState`.
        step: the pure ``step(state, batch, teacher) -> (state, metrics)`` (`pcjax.training.steps`).
        teacher: the frozen teacher's variables the step reads (None in the teacher phase).
    """

    name: str
    config: ml_collections.ConfigDict
    steps: optim.PhaseSteps
    seed: int
    graphdef: Any
    state: state_lib.TrainState
    step: Callable
    teacher: Any = None

    @functools.cached_property
    def forward(self) -> Callable:
        """``forward(variables, images)`` of the trained model, built once."""
        return steps_lib.make_forward(self.graphdef)


def _phase(name, phase_cfg, seed, model_fn, make_step, teacher, mesh, num_examples, abstract,
           population, loss_state_fn=None) -> Phase:
    steps = optim.resolve_steps(phase_cfg, num_examples)
    tx, schedule = optim.make_optimizer(phase_cfg, steps)
    if population:  # A last factor on the update: the member's learning-rate factor.
        tx = optax.chain(tx, optax.inject_hyperparams(optax.scale)(step_size=1.0))
    rep = sharding.replicated(mesh)
    graphdef, state = state_lib.create(model_fn, tx, rep, abstract=abstract,
                                       loss_state_fn=loss_state_fn)
    return Phase(name, phase_cfg, steps, seed, graphdef, state, make_step(graphdef, tx, schedule),
                 teacher)


def teacher_phase(cfg: ml_collections.ConfigDict, mesh, *, num_examples: int | None = None,
                  abstract: bool = False, population: bool = False) -> Phase:
    """The teacher phase: `teacher_fn`'s network, cross-entropy on the labels.

    Args:
        cfg: the job config.
        mesh: the device mesh; the state is replicated over it.
        num_examples: size of the train split (default: read from the dataset), for the lengths.
        abstract: a state of ``jax.ShapeDtypeStruct``s (nothing computed), for tracing.
        population: the optimizer ends in a learning-rate factor, for `population`.
    """
    return _phase(TEACHER, cfg.teacher.train, cfg.seed, teacher_fn(cfg),
                  steps_lib.make_supervised_step, None, mesh,
                  num_examples or num_train_examples(cfg), abstract, population)


@functools.lru_cache(maxsize=4)
def _train_labels(dataset: str, split: str, data_dir) -> tuple[int, ...]:
    """The labels of a split, decoded once per process (a population's members share them)."""
    return tuple(int(example["label"]) for example in data.source(dataset, split,
                                                                  data_dir=data_dir))


def student_phase(cfg: ml_collections.ConfigDict, mesh, teacher: Model, *,
                  num_examples: int | None = None, abstract: bool = False,
                  population: bool = False) -> Phase:
    """The distillation phase: `student_fn`'s student learns from the frozen `teacher` with the
    configured loss, protocol weights and KD temperature. Arguments as `teacher_phase`.

    With CRD the state's ``loss_state`` is {"crd": `crd.init_state` of N = num_examples rows,
    "key": the PRNG key of the negatives, from ``cfg.seed``}, and the step's batch must carry
    "index" (see `steps_lib.make_distill_step`)."""
    d = cfg.distill
    num_examples = num_examples or num_train_examples(cfg)
    loss_kwargs, classes, loss_state_fn = dict(d.loss_kwargs), None, None
    if losses.get(d.loss).stateful:
        loss_kwargs = config_lib.crd_options(cfg)
        if d.protocol == "class_aware":
            labels = _train_labels(cfg.dataset, cfg.train_split, cfg.data_dir or None)
            if len(labels) != num_examples:
                raise ValueError(f"num_examples={num_examples}, but the train split "
                                 f"{cfg.train_split!r} holds {len(labels)} examples")
            classes = crd.class_index(list(labels))

        def loss_state_fn():
            key = jax.random.PRNGKey(cfg.seed + 3)
            return {"crd": crd.init_state(jax.random.fold_in(key, 0), num_examples,
                                          loss_kwargs["feat_dim"]),
                    "key": jax.random.fold_in(key, 1)}

    def make_step(graphdef, tx, schedule):
        return steps_lib.make_distill_step(
            graphdef, teacher.graphdef, tx, schedule, loss_spec=losses.get(d.loss),
            loss_kwargs=loss_kwargs, weights=config_lib.loss_weights(cfg),
            kd_fn=losses.get("kd").fn, kd_temperature=d.kd_temperature, classes=classes,
        )

    return _phase(STUDENT, cfg.student.train, cfg.seed + 1, student_fn(cfg), make_step,
                  teacher.variables, mesh, num_examples, abstract, population, loss_state_fn)


# ----------------------------------------------------------------------------- jit


def jit_step(step: Callable, mesh) -> Callable:
    """``step(state, batch, teacher)`` jitted over `mesh`: the batch split on "data", the state
    and the teacher replicated, the state donated. Trace and call it under ``jax.set_mesh(mesh)``,
    where the perception coherence loss ranks each device's reference rows only.
    """
    rep = sharding.replicated(mesh)
    return jax.jit(step, in_shardings=(rep, sharding.batch_sharded(mesh), rep),
                   out_shardings=(rep, rep), donate_argnums=0)


def jit_forward(forward: Callable, mesh) -> Callable:
    """``forward(variables, images)`` jitted over `mesh`: variables replicated, images split."""
    return jax.jit(forward, in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)))


# ----------------------------------------------------------------------------- population


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


def population(phases: Sequence[Phase], lr_factors: Sequence[float]) -> Phase:
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
            raise ValueError("population: build the member phases with population=True")
        scale = scale._replace(hyperparams={"step_size": jnp.asarray(factor, jnp.float32)})
        states.append(phase.state.replace(opt_state=(*opt_state, scale)))
    state = jax.tree.map(lambda *x: jnp.stack(x), *states)
    return dataclasses.replace(phases[0], state=state, step=population_step(phases[0].step))
