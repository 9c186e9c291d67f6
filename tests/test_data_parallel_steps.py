"""Data-parallel train steps: the trainer's distillation step ranks per device under the mesh, and
a user's pmap step with pmean'd gradients is the single-device step on the global batch."""

import functools
import os
import sys

import chex
import jax
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from pcjax import ranking
from pcjax.losses import perception_coherence_loss
from pcjax.training import build, sharding, spec as spec_lib
from pcjax.training import config as config_lib

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from configs import digits  # noqa: E402

# (B, B) float32 matrices (4 MiB at B = 1024) then dominate the digits student's activations
# (B x 8 x 8 x 32 floats per layer, split over the devices in both compiles).
BATCH = 1024


def _temp_bytes_of_digits_distill_step(mesh, *, under_mesh: bool) -> int:
    """Per-device XLA temporaries of the default config's real distillation step at BATCH."""
    spec = spec_lib.resolve(config_lib.complete(digits.get_config()), mesh,
                            num_train_examples=1797)
    teacher = build.abstract_teacher(spec)
    phase = build.student_phase(spec, teacher, abstract=True)
    step = build.jit_step(phase.step, mesh)
    rows = sharding.batch_sharded(mesh)
    batch = {
        "image": jax.ShapeDtypeStruct((BATCH, 8, 8, 1), np.float32, sharding=rows),
        "label": jax.ShapeDtypeStruct((BATCH,), np.int32, sharding=rows),
    }
    args = (phase.state, batch, teacher.variables)
    if under_mesh:
        with jax.set_mesh(mesh):  # As loop.run_phase runs the step.
            compiled = step.lower(*args).compile()
    else:
        compiled = step.lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_distill_step_ranks_each_devices_rows_with_or_without_the_mesh(monkeypatch):
    # Three compiles of the real step (~10 s each on a quiet CPU): the only check that the
    # trainer's step, not just the bare loss, takes the loss's row-sharded path. On the pure-JAX
    # CPU solver, whose memory the figures below were calibrated on (the compiled solver also
    # partitions its rows over the mesh by itself).
    monkeypatch.setattr(ranking.native, "_choice", "jax")
    pairwise = BATCH * BATCH * 4  # One (B, B) float32 matrix.
    one_device = _temp_bytes_of_digits_distill_step(sharding.make_mesh(1), under_mesh=True)
    mesh = sharding.make_mesh(8)
    sharded = [_temp_bytes_of_digits_distill_step(mesh, under_mesh=m) for m in (True, False)]
    # On one device the loss's temporaries are ~26 (B, B) matrices (benchmarks/loss_memory.py).
    # The step runs the loss in a shard_map over the batch axis, so each of the 8 devices holds
    # (B/8, B) slices: ~26/8 matrices' worth, plus the student's activations, whether or not
    # the caller set the mesh.
    assert one_device > 6 * pairwise, one_device
    for temp in sharded:
        assert temp < 6 * pairwise and temp < one_device / 3, (temp, one_device)


# ----------------------------------------------------------------------------- pmap

DEVICES = 4
GLOBAL_BATCH, IN_DIM, OUT_DIM, TEACHER_DIM = 16, 5, 3, 6


def _loss(params, x, teacher, axis_name=None):
    student = x @ params["w"] + params["b"]
    return perception_coherence_loss(student, teacher, axis_name=axis_name)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    params = {
        "w": rng.normal(size=(IN_DIM, OUT_DIM)).astype(np.float32),
        "b": rng.normal(size=(OUT_DIM,)).astype(np.float32),
    }
    x = rng.normal(size=(GLOBAL_BATCH, IN_DIM)).astype(np.float32)
    teacher = rng.normal(size=(GLOBAL_BATCH, TEACHER_DIM)).astype(np.float32)
    return params, x, teacher


def _per_device(a):
    return a.reshape(DEVICES, GLOBAL_BATCH // DEVICES, *a.shape[1:])


def _replicate(tree):
    return jax.tree.map(lambda a: np.broadcast_to(a, (DEVICES, *a.shape)), tree)


def test_pmap_step_with_pmean_gradients_is_the_global_batch_step(problem):
    params, x, teacher = problem
    tx = optax.sgd(0.1)

    def step(params, opt_state, x, teacher, axis_name=None):
        loss, grads = jax.value_and_grad(_loss)(params, x, teacher, axis_name)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), loss, grads

    expected_params, expected_loss, expected_grads = jax.jit(step)(
        params, tx.init(params), x, teacher
    )
    pmapped = jax.pmap(
        functools.partial(step, axis_name="batch"), axis_name="batch",
        devices=jax.devices()[:DEVICES],
    )
    new_params, loss, grads = pmapped(
        _replicate(params), _replicate(tx.init(params)), _per_device(x), _per_device(teacher)
    )
    np.testing.assert_allclose(loss, np.full(DEVICES, expected_loss), rtol=1e-5)
    # float32 sums over the batch in another order: absolute error ~1e-5 of the largest entry.
    # (The bias gradient is 0 up to rounding: distances do not see a shift.)
    atol = 1e-5 * max(float(np.max(np.abs(g))) for g in expected_grads.values())
    for name in params:
        np.testing.assert_allclose(
            grads[name], _replicate(expected_grads[name]), rtol=1e-5, atol=atol
        )
        np.testing.assert_allclose(
            new_params[name], _replicate(expected_params[name]), rtol=1e-5, atol=0.1 * atol
        )


def test_pmap_feature_gradient_is_device_count_times_the_global_one(problem):
    # Under pmap the transpose of the loss's psum is a psum: each device's gradient of its rows
    # is N times their share of the global-batch gradient (which the pmean above divides out).
    _, x, teacher = problem
    expected = jax.grad(perception_coherence_loss)(x[:, :OUT_DIM], teacher)
    per_device = jax.pmap(
        jax.grad(functools.partial(perception_coherence_loss, axis_name="batch")),
        axis_name="batch", devices=jax.devices()[:DEVICES],
    )(_per_device(x[:, :OUT_DIM]), _per_device(teacher))
    chex.assert_shape(per_device, (DEVICES, GLOBAL_BATCH // DEVICES, OUT_DIM))
    atol = 1e-5 * DEVICES * float(np.max(np.abs(expected)))
    np.testing.assert_allclose(
        per_device.reshape(expected.shape), DEVICES * expected, rtol=1e-5, atol=atol
    )


def test_shard_map_parameter_gradient_is_the_global_one_without_reduction(problem):
    # Replicated (P()) parameters enter shard_map as device-invariant values: the transpose of
    # their broadcast sums the per-device contributions, so no pmean or psum is needed.
    params, x, teacher = problem
    expected = jax.grad(_loss)(params, x, teacher)
    mesh = jax.make_mesh((DEVICES,), ("batch",), axis_types=(AxisType.Auto,),
                         devices=jax.devices()[:DEVICES])
    grads = jax.jit(
        jax.shard_map(
            lambda p, x, t: jax.grad(_loss)(p, x, t, "batch"), mesh=mesh,
            in_specs=(P(), P("batch"), P("batch")), out_specs=P(),
        )
    )(params, x, teacher)
    atol = 1e-5 * max(float(np.max(np.abs(g))) for g in expected.values())
    chex.assert_trees_all_close(grads, expected, rtol=1e-5, atol=atol)
