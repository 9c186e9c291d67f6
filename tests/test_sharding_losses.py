"""The PC loss on 8 (fake CPU) devices equals the single-device loss on the global batch."""

import functools

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from float32 import assert_close
from pcjax.losses import perception_coherence_loss

B = 16
loss_and_grad = jax.value_and_grad(perception_coherence_loss)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    student = rng.normal(size=(B, 3)).astype(np.float32)
    teacher = rng.normal(size=(B, 5)).astype(np.float32)
    mask = np.ones(B, bool)
    mask[[1, 2, 9, 15]] = False  # device 0 keeps one valid row, device 7 none
    return student, teacher, mask


@pytest.fixture(scope="module")
def expected(batch):
    student, teacher, mask = batch
    return {
        "unmasked": loss_and_grad(student, teacher),
        "masked": loss_and_grad(student, teacher, mask=mask),
    }


def _mesh(axis_type):
    assert jax.device_count() == 8, "tests/conftest.py should provide 8 CPU devices"
    return jax.make_mesh((8,), ("data",), axis_types=(axis_type,))


def _assert_equal_to_single_device(result, expected):
    # The sharded program sums in another order (the transpose of the all-gather is a
    # reduce-scatter), so agreement is to float32 rounding, not to the bit.
    assert_close(result[0], expected[0])
    assert_close(result[1], expected[1], rtol=1e-4)


@pytest.mark.parametrize("masked", ["unmasked", "masked"])
def test_shard_map_with_axis_name_matches_single_device(batch, expected, masked):
    student, teacher, mask = batch
    mesh = _mesh(AxisType.Auto)
    loss_fn = functools.partial(perception_coherence_loss, axis_name="data")

    @jax.jit
    @functools.partial(
        jax.shard_map, mesh=mesh, in_specs=(P("data"), P("data"), P("data")),
        out_specs=(P(), P("data")),
    )
    def sharded(student, teacher, mask):
        return jax.value_and_grad(loss_fn)(student, teacher, mask=mask)

    valid = mask if masked == "masked" else np.ones(B, bool)
    _assert_equal_to_single_device(sharded(student, teacher, valid), expected[masked])


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
@pytest.mark.parametrize("masked", ["unmasked", "masked"])
def test_jit_on_sharded_batch_matches_single_device(batch, expected, axis_type, masked):
    student, teacher, mask = batch
    mesh = _mesh(axis_type)
    rows = NamedSharding(mesh, P("data"))
    with jax.set_mesh(mesh):
        arguments = [jax.device_put(x, rows) for x in (student, teacher)]
        kwargs = {"mask": jax.device_put(mask, rows)} if masked == "masked" else {}
        result = jax.jit(loss_and_grad)(*arguments, **kwargs)
    _assert_equal_to_single_device(result, expected[masked])
    assert result[1].sharding.is_equivalent_to(rows, 2)


PAIRWISE_BATCH = 64


def _temp_bytes(abstract):
    return jax.jit(loss_and_grad).lower(abstract, abstract).compile().memory_analysis()


@pytest.fixture(scope="module")
def single_device_temp_bytes():
    abstract = jax.ShapeDtypeStruct((PAIRWISE_BATCH, 4), np.float32)
    return _temp_bytes(abstract).temp_size_in_bytes


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
def test_jit_on_sharded_batch_keeps_pairwise_rows_sharded(single_device_temp_bytes, axis_type):
    # Per-device temporary memory must shrink with the device count: the (B, B) matrices are
    # split by reference rows, not replicated on every device.
    mesh = _mesh(axis_type)
    with jax.set_mesh(mesh):
        rows = NamedSharding(mesh, P("data"))
        sharded = jax.ShapeDtypeStruct((PAIRWISE_BATCH, 4), np.float32, sharding=rows)
        sharded_bytes = _temp_bytes(sharded).temp_size_in_bytes
    assert single_device_temp_bytes > 8 * PAIRWISE_BATCH * PAIRWISE_BATCH
    assert sharded_bytes < single_device_temp_bytes / 3
