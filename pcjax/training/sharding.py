"""The device mesh and the two shardings a run uses: batch split on "data", state replicated.

Data parallelism over every device of every host: one global-view ``jax.jit`` whose inputs are
global ``jax.Array``s; XLA (GSPMD) inserts the cross-device reductions, so a loss that ranks
over the whole batch (the perception coherence loss) sees the global batch exactly as on one device.
The trainer runs its steps under ``jax.set_mesh(mesh)``, where that loss splits its reference
rows over the devices instead of letting GSPMD replicate its (B, B) matrices.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}: expected an integer, got {value!r}") from None


def maybe_initialize_distributed(enabled: bool, *, heartbeat_timeout_seconds: int = 60) -> bool:
    """Starts multi-process JAX when asked by the config or by the environment.

    JAX_COORDINATOR_ADDRESS (``host:port`` of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID
    are read here and passed to ``jax.distributed.initialize`` (which itself reads only the
    address); what they leave unset is auto-detected from the cluster (Cloud TPU, SLURM, ...).
    When a process dies, the others stop with an error after `heartbeat_timeout_seconds`
    instead of waiting on it. (The shutdown barrier keeps JAX's default timeout: processes may
    finish minutes apart, e.g. while process 0 writes the results.)
    Must run before anything touches a device. Returns whether it was called.
    """
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not (enabled or address):
        return False
    if heartbeat_timeout_seconds <= 0:
        raise ValueError("heartbeat_timeout_seconds (config.heartbeat_timeout_seconds): expected "
                         f"a positive number of seconds, got {heartbeat_timeout_seconds}")
    jax.distributed.initialize(coordinator_address=address,
                               num_processes=_env_int("JAX_NUM_PROCESSES"),
                               process_id=_env_int("JAX_PROCESS_ID"),
                               heartbeat_timeout_seconds=heartbeat_timeout_seconds)
    open_collectives()
    return True


def open_collectives(timeout_seconds: int = 300) -> None:
    """Opens the cross-process collectives once every process is ready for them.

    On CPU the collectives are gloo's, which connect the processes at the first collective and
    give a late process a fixed 30 s to join. Processes that import, build and compile at
    different speeds (a loaded machine, a slow host) can miss that window and fail. So every
    process first compiles a tiny all-process reduction, then waits at a barrier of the
    coordination service (deadline `timeout_seconds`), and only then runs it: the processes
    meet the first collective together. A no-op in a single process.
    """
    if jax.process_count() == 1:
        return
    from orbax.checkpoint import multihost  # Heavy; only pods need it.

    mesh = make_mesh()
    ones = np.ones((jax.local_device_count(),), np.int32)
    x = jax.make_array_from_process_local_data(batch_sharded(mesh), ones)
    total = jax.jit(lambda v: v.sum(), out_shardings=replicated(mesh)).lower(x).compile()
    multihost.get_barrier_sync_fn()(key="pcjax_open_collectives", timeout_ms=timeout_seconds * 1000)
    if int(total(x)) != jax.device_count():
        raise RuntimeError(f"the {jax.process_count()} processes do not see one device mesh")


def make_mesh(num_devices: int = 0, devices=None) -> Mesh:
    """A 1-D mesh with axis "data" over ``num_devices`` devices (0 = all of ``devices``).

    Auto axis types: sharding is propagated by the compiler rather than typed into every array, so
    model and loss code need no sharding annotations.
    """
    devices = list(jax.devices() if devices is None else devices)
    if num_devices:
        if num_devices > len(devices):
            raise ValueError(f"num_devices: asked for {num_devices} devices, "
                             f"only {len(devices)} exist")
        devices = devices[:num_devices]
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                         devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimizer state, metrics)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over "data"."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def to_host(tree):
    """NumPy copy of a tree of (possibly multi-host) arrays, gathered on every process."""

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(get, tree)
