"""Smoke tests of every config file (digits, mnist1d, the 13 CIFAR-100 pairs, ImageNet).

Each config imports only ml_collections, completes the schema, resolves, and documents its run
command; its distillation step traces
under ``jax.eval_shape`` (teacher and student built, the loss and optimizer constructed, the whole
step traced with abstract arrays: nothing is compiled or run). Every config also runs a real
jitted distillation step on random data; by default only mnist1d and the cheapest CIFAR pair
(vgg13 -> vgg8) do, the others are marked ``slow`` (compiling the big models takes minutes on a
2-core CPU): ``pytest -m slow tests/test_configs.py`` runs them. Steps come from
``pcjax.training.build``, as train.py's do. The teacher's supervised step is run end to end by
the digits tests in test_training.py.
"""

import importlib.util
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcjax import data
from pcjax.losses import transfer
from pcjax.training import build, sharding, spec as spec_lib
from pcjax.training import config as config_lib

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIGS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CIFAR = load("cifar100")
CASES = [("digits", None), ("mnist1d", None), ("imagenet", None)] + [
    ("cifar100", arg) for arg in CIFAR.ARGS
]


def get_config(name, arg):
    module = load(name)
    return config_lib.complete(module.get_config(arg) if arg else module.get_config())


def resolve(config, mesh=None):
    return spec_lib.resolve(config, mesh or sharding.make_mesh(1), num_train_examples=50000)


@pytest.mark.parametrize("name", ["digits", "mnist1d", "cifar100", "imagenet"])
def test_config_files_import_only_ml_collections(name):
    with open(os.path.join(CONFIGS, f"{name}.py")) as f:
        imports = [line.split()[1] for line in f if line.startswith(("import ", "from "))]
    assert set(imports) <= {"ml_collections", "os", "runpy"}, imports


def test_cifar100_has_the_13_crd_pairs():
    assert len(CIFAR.ARGS) == 13
    assert ("resnet32x4", "resnet8x4") in CIFAR.PAIRS and ("wrn_40_2", "shufflev1") in CIFAR.PAIRS


def test_unknown_cifar100_pair_is_rejected_listing_the_pairs():
    with pytest.raises(ValueError, match="unknown pair 'resnet32x4_resnet9'.*vgg13_vgg8"):
        CIFAR.get_config("resnet32x4_resnet9")


def test_overrides_take_python_literals_and_keep_text_for_string_keys():
    config = config_lib.base_config()
    config_lib.apply_overrides(config, {
        "seed": "3", "distill.beta": "2", "name": "123", "student.train.augment": "false",
        "teacher.train.schedule.decay_epochs": "(10, 20)", "distill.loss_kwargs.nce_t": "7e-2",
        "distill.loss_kwargs.teacher_dissimilarity": "cosine",
    })
    assert (config.seed, config.distill.beta, config.name) == (3, 2.0, "123")
    assert config.student.train.augment is False
    assert tuple(config.teacher.train.schedule.decay_epochs) == (10, 20)
    assert dict(config.distill.loss_kwargs) == {"nce_t": 0.07, "teacher_dissimilarity": "cosine"}


@pytest.mark.parametrize("overrides, message", [
    ({"distill.los": "rkd"}, "config.distill.los: no such key; did you mean 'loss'?"),
    ({"studnt.model": "x"}, "config.studnt: no such key; did you mean 'student'?"),
    ({"seed": "one"}, "config.seed: expected int, got 'one'"),
    ({"eval.knn_k": "2.5"}, "config.eval.knn_k: expected int, got 2.5"),
])
def test_bad_overrides_are_refused_in_one_line_naming_the_key(overrides, message):
    with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
        config_lib.apply_overrides(config_lib.base_config(), overrides)


def test_complete_lays_a_partial_config_over_the_schema_and_refuses_unknown_keys():
    config = config_lib.complete({"teacher": {"train": {"optimizer": {"learning_rate": 0.1}}}})
    assert config.teacher.train.optimizer.learning_rate == 0.1
    assert config.teacher.train.optimizer.momentum == config_lib.phase_config().optimizer.momentum
    with pytest.raises(config_lib.ConfigError, match=re.escape(
            "config.teacher.train.optimiser: no such key; did you mean 'optimizer'?")):
        config_lib.complete({"teacher": {"train": {"optimiser": {}}}})


@pytest.mark.parametrize("loss, kwargs, message", [
    ("perception_coherence", {"eps": 0.3},
     "loss_kwargs.eps: not an option of perception_coherence; expected some of "
     "student_dissimilarity, teacher_dissimilarity, regularization_strength, regularization, "
     "objective"),
    # Keywords the training step decides are not options.
    ("perception_coherence", {"mask": None}, "loss_kwargs.mask: not an option"),
    ("perception_coherence", {"axis_name": "data"}, "loss_kwargs.axis_name: not an option"),
    ("kd", {"temp": 2.0}, "loss_kwargs.temp: not an option of kd; expected some of temperature"),
    ("fitnet", {"eps": 1.0}, "loss_kwargs.eps: not an option of fitnet; it takes none"),
])
def test_loss_kwargs_are_checked_against_the_loss_signature(loss, kwargs, message):
    config = config_lib.base_config()
    config.distill.loss = loss
    config.distill.loss_kwargs.update(kwargs)
    with pytest.raises(config_lib.ConfigError, match=message):
        resolve(config)
    config.distill.loss_kwargs = {}
    resolve(config)


@pytest.mark.parametrize("name,arg", CASES)
def test_config_validates_and_its_docstring_has_the_run_command(name, arg):
    config = get_config(name, arg)
    resolve(config)
    doc = load(name).__doc__
    command = f"python train.py --config configs/{name}.py" + (
        f":{arg}" if name == "cifar100" and arg == "resnet32x4_resnet8x4" else ""
    )
    assert command in doc
    assert "Time:" in doc


def test_cifar100_follows_the_repdistiller_recipe():
    for arg, (_, student) in CIFAR.ARGS.items():
        config = get_config("cifar100", arg)
        for phase in (config.teacher.train, config.student.train):
            assert (phase.batch_size, phase.num_epochs) == (64, 240.0)
            assert tuple(phase.schedule.decay_epochs) == (150, 180, 210)
            assert (phase.optimizer.momentum, phase.optimizer.weight_decay) == (0.9, 5e-4)
        low = student in ("mobilenetv2", "shufflev1", "shufflev2")
        assert config.student.train.optimizer.learning_rate == (0.01 if low else 0.05)
        assert config.teacher.train.optimizer.learning_rate == 0.05


def _abstract_batch(config, batch_size):
    dataset = data.spec(config.dataset)
    return {
        "image": jax.ShapeDtypeStruct((batch_size, *dataset.image_shape), jnp.float32),
        "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
        "index": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
    }


def _trace_distillation(config, batch_size=4):
    """eval_shape of one distillation step from the abstract state; checks what comes out."""
    spec = resolve(config)
    teacher = build.abstract_teacher(spec)
    phase = build.student_phase(spec, teacher, abstract=True)
    state = phase.state
    new_state, metrics = jax.eval_shape(
        phase.step, state, _abstract_batch(config, batch_size), teacher.variables
    )
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new_state)):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)
    assert all(m.shape == () and m.dtype == jnp.float32 for m in jax.tree.leaves(metrics))
    return metrics


@pytest.mark.parametrize("name,arg", CASES)
def test_config_distillation_step_traces(name, arg):
    metrics = _trace_distillation(get_config(name, arg))
    assert {"loss", "ce", "kd", "transfer"} <= set(metrics)


@pytest.mark.parametrize("loss", sorted(transfer.names()))
def test_every_registered_loss_traces_in_a_distillation_step(loss):
    config = get_config("digits", None)
    config.distill.loss = loss
    assert _trace_distillation(config)["transfer"].shape == ()


def test_mnist1d_accepts_the_conv_student_by_override():
    config = get_config("mnist1d", None)
    config.student.model = "mnist1d_small_cnn"  # as --config.student.model=mnist1d_small_cnn
    resolve(config)
    assert _trace_distillation(config)["transfer"].shape == ()


# Compiling the big CIFAR and ImageNet models takes minutes on a 2-core CPU, so the default suite
# runs a real step for mnist1d and the cheapest CIFAR pair only; `pytest -m slow
# tests/test_configs.py` runs the rest.
CHEAP = (("mnist1d", None), ("cifar100", "vgg13_vgg8"))
REAL_STEP_CASES = [
    case if case in CHEAP else pytest.param(*case, marks=pytest.mark.slow)
    for case in CASES
    if case[0] != "digits"  # test_training.py runs the digits job end to end.
]


@pytest.mark.parametrize("name,arg", REAL_STEP_CASES)
def test_config_runs_a_real_jitted_distillation_step(name, arg):
    """One step of the config's own distillation step, compiled and run on random inputs."""
    spec = resolve(get_config(name, arg))
    mesh = spec.mesh
    teacher = build.teacher_phase(spec).model()
    phase = build.student_phase(spec, teacher)
    state, step = phase.state, build.jit_step(phase.step, mesh)
    dataset = spec.dataset
    r = np.random.default_rng(0)
    batch = {
        "image": r.normal(size=(4, *dataset.image_shape)).astype(np.float32),
        "label": r.integers(0, dataset.num_classes, 4).astype(np.int32),
    }
    before = jax.device_get(state.params)
    with jax.set_mesh(mesh):
        state, metrics = step(state, batch, teacher.variables)
    assert int(state.step) == 1
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert float(metrics["grad_norm"]) > 0
    moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(), state.params, before)
    # A warmup schedule starts at learning rate 0: the first step then moves nothing.
    assert (max(jax.tree.leaves(moved)) > 0) == (float(metrics["learning_rate"]) > 0)
