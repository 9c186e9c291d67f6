"""The compiled CPU solver (pcjax.ranking.native): routing, dtypes, sharding, the switch.

Values are checked against the float64 NumPy reference of test_ranking.py and against the pure-JAX
solver; the program checks read the lowered and compiled HLO.
"""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from pcjax import ranking
from pcjax.ranking import soft_rank, soft_sort
from test_ranking import OPS, ref_rows

needs_compiled = pytest.mark.skipif(
    ranking.native._UNAVAILABLE is not None, reason=f"{ranking.native._UNAVAILABLE}"
)


@pytest.fixture
def backend():
    before = ranking.cpu_backend()
    yield ranking.use_cpu_backend
    ranking.use_cpu_backend(before)


def _mixed_rows(shape, seed):
    """Rank-unit normal rows with a run of ties, a constant row, a NaN row and an inf row."""
    n = shape[-1]
    x = np.random.default_rng(seed).normal(size=shape) * np.sqrt((n * n - 1) / 12)
    x[0, : n // 2] = x[0, 0]
    x[1] = -2.0
    x[2, 1] = np.nan
    x[3, 0] = -np.inf
    return x


@needs_compiled
@pytest.mark.parametrize("kind", OPS)
@pytest.mark.parametrize("regularization", ("l2", "kl"))
def test_float64_matches_reference_to_float64_precision(kind, regularization, backend):
    x = _mixed_rows((5, 9), 0)
    finite = np.isfinite(x).all(axis=1)
    want = np.full(x.shape, np.nan)
    want[finite] = ref_rows(kind, x[finite], 0.8, regularization, "ascending")
    with jax.enable_x64(True):
        for name in ("compiled", "jax"):
            backend(name)
            got = OPS[kind](
                jnp.asarray(x), regularization_strength=0.8, regularization=regularization
            )
            assert got.dtype == jnp.float64
            # Sums of 9 rank-unit terms in float64: errors of order 1e-15 relative.
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10, err_msg=name)


@needs_compiled
@pytest.mark.parametrize("kind", OPS)
def test_many_rows_over_the_thread_pool_match_the_jax_solver(kind, backend):
    # 300 rows of 257: several chunks of rows, so several threads write the output.
    x = jnp.asarray(_mixed_rows((300, 257), 1), jnp.float32)
    w = jnp.asarray(np.random.default_rng(2).normal(size=x.shape), jnp.float32)
    results = {}
    for name in ("compiled", "jax"):
        backend(name)
        op = lambda v: OPS[kind](v, regularization_strength=1.0, regularization="kl")
        # The gradient of sum(where(isfinite(op(v)), op(v) * w, 0)): one vjp gives the values and
        # the gradient from one compile of the jax solver's forward pass at n = 257 (seconds).
        out, vjp = jax.vjp(op, x)
        (grad,) = vjp(jnp.where(jnp.isfinite(out), w, 0.0))
        if name == "compiled":  # The undifferentiated call runs the same solver over the pool.
            np.testing.assert_array_equal(op(x), out)
        results[name] = out, grad
    (out_c, grad_c), (out_j, grad_j) = results["compiled"], results["jax"]
    np.testing.assert_array_equal(np.isnan(out_c), np.isnan(out_j))
    # The compiled solver works in double: a few float32 ulps from the float64 reference.
    some = slice(4, 24)
    want = ref_rows(kind, np.asarray(x)[some], 1.0, "kl", "ascending")
    scale = float(np.max(np.abs(want)))
    np.testing.assert_allclose(out_c[some], want, atol=4e-7 * scale, rtol=0)
    # The pure-JAX solver's float32 kl (exp of log Σρ plus the deviation) is off by up to ~1e-5
    # of the scale (8e-6 seen at ranks near 250).
    np.testing.assert_allclose(out_c, out_j, atol=3e-5 * scale, rtol=0)
    finite = np.isfinite(np.asarray(x)).all(axis=1)
    g_scale = float(jnp.max(jnp.abs(grad_j[finite])))
    np.testing.assert_allclose(grad_c[finite], grad_j[finite], atol=1e-5 * g_scale, rtol=0)


@needs_compiled
def test_cpu_programs_call_the_target_and_gpu_programs_never_do(backend):
    backend("compiled")
    for fn in (soft_rank, soft_sort):
        for f in (fn, jax.grad(lambda v: jnp.sum(fn(v) ** 2))):
            traced = jax.jit(f).trace(jnp.ones((2, 5)))
            assert "pcjax_soft_op" in traced.lower().as_text(), fn.__name__
            for platform in ("cuda", "rocm", "tpu"):
                text = traced.lower(lowering_platforms=(platform,)).as_text()
                assert "pcjax_soft_op" not in text, (fn.__name__, platform)


@needs_compiled
@pytest.mark.parametrize("spec", (("data", None), ("data", "model")))
def test_rows_sharded_over_a_mesh_are_solved_where_they_live(spec, backend):
    # Rows sharded over 4 devices (and, second case, the ranked axis over 2 more): every
    # device's call sees only its own rows, whole, and nothing gathers all the rows.
    backend("compiled")
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    sharding = NamedSharding(mesh, PartitionSpec(*spec))
    x = np.random.default_rng(3).normal(size=(16, 6)).astype(np.float32)
    w = np.random.default_rng(4).normal(size=x.shape).astype(np.float32)

    def value_and_grad(v, w):
        loss = lambda u: jnp.sum(soft_rank(u, regularization_strength=0.5, regularization="kl") * w)
        return soft_sort(v, regularization_strength=0.5), jax.grad(loss)(v)

    sharded = jax.jit(value_and_grad, out_shardings=(sharding, sharding))
    args = [jax.device_put(a, sharding) for a in (x, w)]
    hlo = sharded.lower(*args).compile().as_text()
    calls = [line for line in hlo.splitlines() if 'custom_call_target="pcjax_soft_op"' in line]
    assert calls and all("f32[4,6]" in c for c in calls), calls  # 16 rows / 4 devices, n whole.
    if spec[1] is None:  # Otherwise each row is gathered within its "model" pair, as it must.
        assert not re.search(r"all-gather|all-reduce|all-to-all|collective-permute", hlo)
    got = sharded(*args)
    backend("jax")
    want = jax.jit(value_and_grad)(x, w)
    for g, v in zip(got, want):
        np.testing.assert_allclose(g, v, rtol=1e-5, atol=1e-5)


@needs_compiled
def test_vmap_of_jvp_and_of_a_traced_strength(backend):
    backend("compiled")
    x = np.random.default_rng(5).normal(size=(3, 2, 7)).astype(np.float32)
    t = np.random.default_rng(6).normal(size=x.shape).astype(np.float32)
    eps = np.array([0.3, 1.0, 4.0], np.float32)
    op = lambda v, e: soft_rank(v, regularization_strength=e)
    got = jax.vmap(lambda v, dv, e: jax.jvp(lambda u: op(u, e), (v,), (dv,)))(x, t, eps)
    backend("jax")
    for i in range(3):
        want = jax.jvp(lambda u: op(u, eps[i]), (x[i],), (t[i],))
        for g, v in zip(got, want):
            np.testing.assert_allclose(g[i], v, rtol=1e-5, atol=1e-5)


def test_environment_variable_forces_the_jax_solver():
    code = "import pcjax.ranking as r; print(r.cpu_backend())"
    env = dict(os.environ, PCJAX_CPU_BACKEND="jax")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "jax", out.stderr


def test_use_cpu_backend_rejects_unknown_names(backend):
    with pytest.raises(ValueError, match="name must be one of"):
        backend("fast")
    if ranking.native._UNAVAILABLE is not None:
        with pytest.raises(ValueError, match="unavailable"):
            backend("compiled")
