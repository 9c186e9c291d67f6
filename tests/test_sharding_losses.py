"""The PC loss on 8 (fake CPU) devices equals the single-device loss on the global batch, with
or without ``jax.set_mesh``, with Explicit or Auto axes, and through ``shard_map``."""

import contextlib
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
@pytest.mark.parametrize("under_set_mesh", [False, True])
@pytest.mark.parametrize("layout", [P(), P("data")], ids=["replicated", "rows"])
def test_jit_on_a_mesh_matches_single_device_with_or_without_set_mesh(
    batch, expected, axis_type, under_set_mesh, layout
):
    # The loss reads no ambient state: only its operands' types decide how it runs.
    student, teacher, mask = batch
    mesh = _mesh(axis_type)
    sharding = NamedSharding(mesh, layout)
    arguments = [jax.device_put(x, sharding) for x in (student, teacher)]
    masked = "masked" if layout == P("data") else "unmasked"
    kwargs = {"mask": jax.device_put(mask, sharding)} if masked == "masked" else {}
    with jax.set_mesh(mesh) if under_set_mesh else contextlib.nullcontext():
        result = jax.jit(loss_and_grad)(*arguments, **kwargs)
    _assert_equal_to_single_device(result, expected[masked])
    assert result[1].sharding.is_equivalent_to(sharding, 2)


@pytest.mark.parametrize("layout", [P(), P("data")], ids=["replicated", "rows"])
def test_eager_call_on_explicit_mesh_outside_set_mesh_matches_single_device(
    batch, expected, layout
):
    student, teacher, _ = batch
    sharding = NamedSharding(_mesh(AxisType.Explicit), layout)
    loss = perception_coherence_loss(*(jax.device_put(x, sharding) for x in (student, teacher)))
    assert_close(loss, expected["unmasked"][0])


PAIRWISE_BATCH = 64


def _temp_bytes(abstract):
    return jax.jit(loss_and_grad).lower(abstract, abstract).compile().memory_analysis()


@pytest.fixture(scope="module")
def single_device_temp_bytes():
    abstract = jax.ShapeDtypeStruct((PAIRWISE_BATCH, 4), np.float32)
    return _temp_bytes(abstract).temp_size_in_bytes


@pytest.mark.parametrize("under_set_mesh", [False, True])
def test_jit_on_explicit_row_sharded_batch_keeps_pairwise_rows_sharded(
    single_device_temp_bytes, under_set_mesh
):
    # Per-device temporary memory must shrink with the device count: the (B, B) matrices are
    # split by reference rows, not replicated on every device. The split is read from the
    # features' Explicit sharding, so it does not need jax.set_mesh.
    mesh = _mesh(AxisType.Explicit)
    rows = NamedSharding(mesh, P("data"))
    sharded = jax.ShapeDtypeStruct((PAIRWISE_BATCH, 4), np.float32, sharding=rows)
    with jax.set_mesh(mesh) if under_set_mesh else contextlib.nullcontext():
        sharded_bytes = _temp_bytes(sharded).temp_size_in_bytes
    assert single_device_temp_bytes > 8 * PAIRWISE_BATCH * PAIRWISE_BATCH
    assert sharded_bytes < single_device_temp_bytes / 3


def test_neighbourhood_loss_sharded_equals_unsharded(batch):
    student, teacher, mask = batch
    loss_fn = functools.partial(perception_coherence_loss, neighbourhood=4)
    expected = jax.value_and_grad(loss_fn)(student, teacher, mask=mask)

    @jax.jit
    @functools.partial(
        jax.shard_map, mesh=_mesh(AxisType.Auto), in_specs=(P("data"), P("data"), P("data")),
        out_specs=(P(), P("data")),
    )
    def through_shard_map(student, teacher, mask):
        return jax.value_and_grad(functools.partial(loss_fn, axis_name="data"))(
            student, teacher, mask=mask
        )

    _assert_equal_to_single_device(through_shard_map(student, teacher, mask), expected)
    rows = NamedSharding(_mesh(AxisType.Explicit), P("data"))  # the loss's own row split
    arguments = [jax.device_put(x, rows) for x in (student, teacher, mask)]
    jitted = jax.jit(lambda s, t, m: jax.value_and_grad(loss_fn)(s, t, mask=m))(*arguments)
    _assert_equal_to_single_device(jitted, expected)
