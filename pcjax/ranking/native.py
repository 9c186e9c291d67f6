"""The compiled CPU solver: an XLA FFI call built from `_native/soft_op.cc` at install.

The library `_soft_op*.so` is optional: missing or unloadable, `cpu_backend()` is "jax".
`PCJAX_CPU_BACKEND=jax` or `use_cpu_backend("jax")` forces the pure-JAX path. One call solves
rows (R, n) and returns the output and the block structure of the JVP (see `solve._rows`); a
partitioning rule keeps every device of a mesh on its own rows.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

_TARGET = "pcjax_soft_op"
_BACKENDS = ("compiled", "jax")


def _register() -> str | None:
    """Loads and registers the FFI target; returns why not, or None on success."""
    paths = glob.glob(os.path.join(os.path.dirname(__file__), "_soft_op*.so"))
    if not paths:
        return "not built"
    try:
        library = ctypes.CDLL(paths[0])
        library.PcjaxBuiltForJaxlib.restype = ctypes.c_char_p
        built_for = library.PcjaxBuiltForJaxlib().decode()
        if built_for != jaxlib.__version__:
            # Registering a handler of another FFI API version would fail the CPU backend.
            return (f"built for jaxlib {built_for}, running {jaxlib.__version__}; reinstall "
                    "pcjax to rebuild it")
        jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(library.PcjaxSoftOp), platform="cpu")
    except (OSError, AttributeError, RuntimeError, ValueError) as error:
        return f"{type(error).__name__}: {error}"
    return None


_UNAVAILABLE = _register()
_choice = "jax" if os.environ.get("PCJAX_CPU_BACKEND", "").lower() == "jax" else "compiled"


def cpu_backend() -> str:
    """The solver CPU programs use: "compiled" (the C++ FFI call) or "jax" (pure JAX).

    GPU and TPU programs always use the pure-JAX solver. "jax" when the extension was not built,
    failed to load, or was switched off (`use_cpu_backend`, `PCJAX_CPU_BACKEND=jax`).

    Examples:
      >>> import pcjax.ranking
      >>> pcjax.ranking.cpu_backend() in ("compiled", "jax")
      True
    """
    return "jax" if _UNAVAILABLE is not None else _choice


def use_cpu_backend(name: str) -> None:
    """Selects the CPU solver for later calls: "compiled" (if built) or "jax".

    Examples:
      >>> import pcjax.ranking
      >>> before = pcjax.ranking.cpu_backend()
      >>> pcjax.ranking.use_cpu_backend("jax")
      >>> pcjax.ranking.cpu_backend()
      'jax'
      >>> pcjax.ranking.use_cpu_backend("compiled" if before == "compiled" else "jax")
    """
    global _choice
    if name not in _BACKENDS:
        raise ValueError(f"name must be one of {_BACKENDS}; got {name!r}.")
    if name == "compiled" and _UNAVAILABLE is not None:
        raise ValueError(f"the compiled CPU solver is unavailable ({_UNAVAILABLE}).")
    _choice = name


def _ffi_rows(x, inv_eps, kind, reg):
    """The FFI call on rows x (..., n) and one 1/ε per row (...,)."""
    out_shape, int_shape = (jax.ShapeDtypeStruct(x.shape, t) for t in (x.dtype, jnp.int32))
    call = jax.ffi.ffi_call(
        _TARGET, (out_shape, int_shape, out_shape, int_shape), vmap_method="broadcast_all"
    )
    return tuple(call(x, inv_eps, kind=np.int32(kind == "sort"), reg=np.int32(reg == "kl")))


def _row_shardings(mesh, arg_shapes):
    """Rows keep the input's sharding of axis 0; the ranked axis is whole on every device."""
    spec = arg_shapes[0].sharding.spec
    rows = spec[0] if len(spec) else None
    return NamedSharding(mesh, PartitionSpec(rows, None)), NamedSharding(mesh, PartitionSpec(rows))


def _infer(kind, reg, mesh, arg_shapes, result_shape):
    return (_row_shardings(mesh, arg_shapes)[0],) * 4


def _partition(kind, reg, mesh, arg_shapes, result_shape):
    x_sharding, eps_sharding = _row_shardings(mesh, arg_shapes)
    lower = functools.partial(_ffi_rows, kind=kind, reg=reg)
    return mesh, lower, (x_sharding,) * 4, (x_sharding, eps_sharding)


@functools.partial(custom_partitioning, static_argnums=(2, 3))
def _partitioned(x, inv_eps, kind, reg):
    return _ffi_rows(x, inv_eps, kind, reg)


_partitioned.def_partition(
    _partition, infer_sharding_from_operands=_infer,
    sharding_rule="i j, i -> i j, i j, i j, i j", need_replication_factors=("j",),
)


@functools.cache
def _batched(kind, reg):
    """`_partitioned` with a batching rule: vmapped rows are more rows."""

    @jax.custom_batching.custom_vmap
    def solve(x, inv_eps):
        return _partitioned(x, inv_eps, kind, reg)

    @solve.def_vmap
    def _(axis_size, in_batched, x, inv_eps):
        x = x if in_batched[0] else jnp.broadcast_to(x, (axis_size,) + x.shape)
        inv_eps = inv_eps if in_batched[1] else jnp.broadcast_to(inv_eps, x.shape[:-1])
        outs = solve(x.reshape(-1, x.shape[-1]), inv_eps.reshape(-1))
        return tuple(o.reshape(x.shape) for o in outs), (True,) * 4

    return solve


def solve_rows(x, inv_eps, kind, reg):
    """(out, start_in, weight_in, start_sorted) of the rows x (R, n), each (R, n); see `solve`."""
    inv_eps = jnp.broadcast_to(jnp.asarray(inv_eps, x.dtype), x.shape[:1])
    outs = _batched(kind, reg)(x, inv_eps)
    # Inside shard_map the outputs vary over the manual axes x varies over, which the custom
    # partitioning call does not record on its own.
    return tuple(_varying_like(o, x) for o in outs)


def _varying_like(out, x):
    axes = (getattr(jax.typeof(a), "manual_axis_type", None) for a in (x, out))
    varying = [frozenset() if t is None else t.varying for t in axes]
    missing = tuple(varying[0] - varying[1])
    return jax.lax.pcast(out, missing, to="varying") if missing else out
