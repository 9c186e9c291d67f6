"""Tests of pcjax.ranking against an independent float64 NumPy/scikit-learn reference.

Reference: the soft rank / soft sort are projections onto a permutahedron, reduced after one sort
to an isotonic problem (Blondel et al. 2020, arXiv:2002.08871): for l2 it is solved here by
scikit-learn's isotonic_regression, for kl by a sequential stack-based pool-adjacent-violators
written below in float64 NumPy (independent of the library's two solvers, which are
compared with each other in `test_sequential_and_parallel_solvers_give_the_same_blocks_and_values`).
Every test runs on both CPU solvers: the compiled C++ one (skipped when it is not built) and the
pure-JAX one.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn.isotonic import isotonic_regression

from float32 import assert_close
from pcjax import ranking
from pcjax.ranking import rank, soft_rank, soft_sort

REGULARIZATIONS = ("l2", "kl")
DIRECTIONS = ("ascending", "descending")
OPS = {"rank": soft_rank, "sort": soft_sort}
BACKENDS = [
    pytest.param("compiled", marks=pytest.mark.skipif(
        ranking.native._UNAVAILABLE is not None, reason=f"{ranking.native._UNAVAILABLE}")),
    "jax",
]


@pytest.fixture(autouse=True, params=BACKENDS)
def cpu_backend(request):
    before = ranking.cpu_backend()
    ranking.use_cpu_backend(request.param)
    yield request.param
    ranking.use_cpu_backend(before)


# ----------------------------------------------------------------------------- reference


def _isotonic_kl_decreasing(s, w):
    """argmin_{v_1 >= ... >= v_n} sum exp(s - v) + exp(w) . v, by sequential PAV (stack)."""
    blocks = []  # [logsumexp(s_B), logsumexp(w_B), size]
    for s_i, w_i in zip(s, w):
        blocks.append([s_i, w_i, 1])
        while len(blocks) > 1 and blocks[-2][0] - blocks[-2][1] < blocks[-1][0] - blocks[-1][1]:
            last = blocks.pop()
            blocks[-1] = [
                np.logaddexp(blocks[-1][0], last[0]),
                np.logaddexp(blocks[-1][1], last[1]),
                blocks[-1][2] + last[2],
            ]
    return np.concatenate([np.full(size, ls - lw) for ls, lw, size in blocks])


def _isotonic_decreasing(s, w, regularization):
    if regularization == "l2":
        return isotonic_regression(s - w, increasing=False)
    return _isotonic_kl_decreasing(s, w)


def ref_soft_rank(x, eps, regularization, direction):
    x = np.asarray(x, np.float64)
    n = x.shape[-1]
    rho = np.arange(n, 0, -1.0)
    z = (x if direction == "ascending" else -x) / eps
    order = np.argsort(-z, kind="stable")
    s = z[order]
    w = rho if regularization == "l2" else np.log(rho)
    primal = s - _isotonic_decreasing(s, w, regularization)
    out = np.empty(n)
    out[order] = primal if regularization == "l2" else np.exp(primal)
    return out


def ref_soft_sort(x, eps, regularization, direction):
    x = np.asarray(x, np.float64)
    n = x.shape[-1]
    sign = -1.0 if direction == "ascending" else 1.0
    w = np.sort(sign * x)[::-1]
    s = np.arange(n, 0, -1.0) / eps
    return sign * (s - _isotonic_decreasing(s, w, regularization))


REFERENCES = {"rank": ref_soft_rank, "sort": ref_soft_sort}


def ref_rows(kind, x, eps, regularization, direction):
    x = np.asarray(x, np.float64)
    flat = x.reshape(-1, x.shape[-1])
    out = [REFERENCES[kind](row, eps, regularization, direction) for row in flat]
    return np.stack(out).reshape(x.shape)


# ----------------------------------------------------------------------------- inputs


@pytest.fixture(scope="module")
def rows():
    """(5, 8) float32 rows on a scale where all strengths below are informative, with ties."""
    x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32) * 3
    x[1, 3] = x[1, 5]  # a tie
    x[2, :] = x[2, 0]  # a constant row
    x[3, :4] = x[3, 4:]  # four ties
    return x


@pytest.fixture(scope="module")
def smooth_point():
    """(3, 8) values with distinct, well separated entries: the reference is smooth there."""
    rng = np.random.default_rng(1)
    return np.stack([rng.permutation(8) * 0.9 + rng.uniform(0, 0.3, 8) for _ in range(3)]).astype(
        np.float32
    )


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("kind", OPS)
@pytest.mark.parametrize("regularization", REGULARIZATIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_values_match_reference(rows, kind, regularization, direction):
    for eps in (0.03, 0.5, 2.0, 30.0):
        got = OPS[kind](rows, regularization_strength=eps, regularization=regularization, direction=direction)
        want = ref_rows(kind, rows, eps, regularization, direction)
        assert_close(got, want, err_msg=f"eps={eps}")


@pytest.mark.parametrize("kind", OPS)
@pytest.mark.parametrize("regularization", REGULARIZATIONS)
def test_leading_dims_and_two_element_rows_match_reference(kind, regularization):
    x = np.random.default_rng(2).normal(size=(2, 3, 2)).astype(np.float32)
    for direction in DIRECTIONS:
        got = OPS[kind](x, regularization_strength=0.7, regularization=regularization, direction=direction)
        assert got.shape == x.shape
        want = ref_rows(kind, x, 0.7, regularization, direction)
        assert_close(got, want, err_msg=direction)


def test_single_element_rows_rank_one_and_sort_to_themselves():
    x = jnp.array([[3.0], [-1.0]])
    for regularization in REGULARIZATIONS:
        assert_close(soft_rank(x, regularization=regularization), [[1.0], [1.0]])
        assert_close(soft_sort(x, regularization=regularization), x)


@pytest.mark.parametrize("regularization", REGULARIZATIONS)
def test_soft_ranks_sum_to_triangular_number_and_sorts_are_ordered(rows, regularization):
    n = rows.shape[-1]
    ranks = soft_rank(rows, regularization_strength=1.5, regularization=regularization)
    assert_close(np.sum(ranks, -1), np.full(len(rows), n * (n + 1) / 2))
    assert np.all((ranks >= 1 - 1e-5) & (ranks <= n + 1e-5))
    for direction, sign in (("ascending", 1), ("descending", -1)):
        sorted_ = np.asarray(soft_sort(rows, regularization_strength=1.5, regularization=regularization, direction=direction))
        assert np.all(sign * np.diff(sorted_, axis=-1) >= -1e-5)


# ----------------------------------------------------------------------------- limits


@pytest.mark.parametrize("regularization", REGULARIZATIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_small_strength_gives_hard_ranks_with_ties_averaged(rows, regularization, direction):
    got = soft_rank(rows, regularization_strength=1e-4, regularization=regularization, direction=direction)
    sign = 1 if direction == "ascending" else -1
    want = rankdata(sign * rows, method="average", axis=-1)
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("regularization", REGULARIZATIONS)
def test_small_strength_soft_sort_gives_sorted_values(rows, regularization):
    got = soft_sort(rows, regularization_strength=1e-4, regularization=regularization)
    np.testing.assert_allclose(got, np.sort(rows, -1), atol=1e-4)
    got = soft_sort(rows, regularization_strength=1e-4, regularization=regularization, direction="descending")
    np.testing.assert_allclose(got, -np.sort(-rows, -1), atol=1e-4)


@pytest.mark.parametrize("regularization", REGULARIZATIONS)
def test_large_strength_gives_mean_rank(rows, regularization):
    n = rows.shape[-1]
    got = soft_rank(rows, regularization_strength=1e5, regularization=regularization)
    np.testing.assert_allclose(got, np.full(rows.shape, (n + 1) / 2), atol=1e-3)


def test_large_strength_soft_sort_gives_mean_or_log_mean_exp(rows):
    got = soft_sort(rows, regularization_strength=1e5)
    np.testing.assert_allclose(got, np.broadcast_to(rows.mean(-1, keepdims=True), rows.shape), atol=1e-3)
    got = soft_sort(rows, regularization_strength=1e5, regularization="kl", direction="descending")
    log_mean_exp = np.log(np.mean(np.exp(rows.astype(np.float64)), -1, keepdims=True))
    np.testing.assert_allclose(got, np.broadcast_to(log_mean_exp, rows.shape), atol=1e-3)


# ----------------------------------------------------------------------------- derivatives


def _reference_jvp(kind, x, tangent, eps, regularization, direction, h=1e-6):
    x = np.asarray(x, np.float64)
    plus = ref_rows(kind, x + h * tangent, eps, regularization, direction)
    minus = ref_rows(kind, x - h * tangent, eps, regularization, direction)
    return (plus - minus) / (2 * h)


@pytest.mark.parametrize("kind", OPS)
@pytest.mark.parametrize("regularization", REGULARIZATIONS)
def test_jvp_matches_reference_finite_differences(smooth_point, kind, regularization):
    tangent = np.random.default_rng(3).normal(size=smooth_point.shape).astype(np.float32)
    for eps, direction in ((0.4, "ascending"), (3.0, "descending")):
        op = lambda v: OPS[kind](v, regularization_strength=eps, regularization=regularization, direction=direction)
        _, got = jax.jvp(op, (smooth_point,), (tangent,))
        want = _reference_jvp(kind, smooth_point, tangent, eps, regularization, direction)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"eps={eps}")


@pytest.mark.parametrize("kind", OPS)
@pytest.mark.parametrize("regularization", REGULARIZATIONS)
def test_grad_matches_reference_finite_differences(smooth_point, kind, regularization):
    weights = np.random.default_rng(4).normal(size=smooth_point.shape)
    eps = 0.6
    loss = lambda v: jnp.sum(OPS[kind](v, regularization_strength=eps, regularization=regularization) * weights)
    got = jax.grad(loss)(smooth_point)
    want = np.zeros(smooth_point.shape)
    for index in np.ndindex(smooth_point.shape):
        basis = np.zeros(smooth_point.shape)
        basis[index] = 1.0
        jvp = _reference_jvp(kind, smooth_point, basis, eps, regularization, "ascending")
        want[index] = np.sum(jvp * weights)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_kl_small_strength_gradient_is_finite(rows):
    x = jnp.asarray(rows * 50)
    for kind, op in OPS.items():
        grad = jax.grad(lambda v: jnp.sum(op(v, regularization_strength=1e-3, regularization="kl") ** 2))(x)
        assert np.all(np.isfinite(grad)), kind


def test_jacobian_is_block_averaging_on_ties():
    # l2: within a pooled block r = s − mean_B(s) + mean_B(ρ), s = x/ε, so the block's Jacobian
    # is (I − 11ᵀ/|B|)/ε; a tied pair is one block, the separated entries are single blocks.
    x = jnp.array([0.0, 2.0, 2.0, 5.0])
    eps = 0.1
    jac = jax.jacobian(lambda v: soft_rank(v, regularization_strength=eps))(x)
    want = np.zeros((4, 4))
    want[1:3, 1:3] = (np.eye(2) - 0.5) / eps
    np.testing.assert_allclose(jac, want, atol=1e-5)


# ----------------------------------------------------------------------------- transformations


def test_jit_matches_no_jit(rows):
    op = lambda v: soft_rank(v, regularization_strength=0.5, regularization="kl")
    with jax.disable_jit():
        eager = op(rows[:2])
    assert_close(jax.jit(op)(rows[:2]), eager)


def test_vmap_matches_loop(rows):
    op = jax.jit(lambda v: soft_rank(v, regularization_strength=0.5))
    grad = jax.jit(jax.grad(lambda v: jnp.sum(op(v) ** 2)))
    batched = jax.vmap(op)(rows)
    assert_close(batched, np.stack([op(row) for row in rows]))
    grads = jax.vmap(grad)(rows)
    assert_close(grads, np.stack([grad(row) for row in rows]), rtol=1e-4)


def test_same_shapes_do_not_retrace(rows):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def loss(values, strength):
        return jnp.sum(soft_rank(values, regularization_strength=strength) ** 2)

    grad = jax.jit(jax.grad(loss))
    for seed, strength in ((0, 0.5), (1, 2.0)):
        values = jnp.asarray(np.random.default_rng(seed).normal(size=rows.shape), jnp.float32)
        loss(values, jnp.float32(strength))
    chex.clear_trace_counter()
    grad(values, jnp.float32(0.5))
    grad(values + 1, jnp.float32(0.7))


def test_shard_map_over_rows_matches_unsharded_values_and_grads():
    # Inside shard_map (check_vma=True by default) the solver's loop carry must vary over the
    # mesh axis like the input; each device ranks its own rows.
    assert jax.device_count() == 8, "tests/conftest.py should provide 8 CPU devices"
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    x = np.random.default_rng(8).normal(size=(8, 6)).astype(np.float32)
    weights = np.random.default_rng(9).normal(size=x.shape).astype(np.float32)
    spec = jax.sharding.PartitionSpec("data")

    def value_and_grad(v, w):
        loss = lambda u: jnp.sum(soft_rank(u, regularization_strength=0.5) * w)
        return soft_rank(v, regularization_strength=0.5), jax.grad(loss)(v)

    sharded = jax.jit(jax.shard_map(value_and_grad, mesh=mesh, in_specs=(spec, spec), out_specs=(spec, spec)))
    got_values, got_grads = sharded(x, weights)
    want_values, want_grads = value_and_grad(x, weights)
    assert_close(got_values, want_values)
    assert_close(got_grads, want_grads, rtol=1e-4)


def test_traced_strength_matches_python_float(rows):
    traced = jax.jit(lambda v, e: soft_rank(v, regularization_strength=e, regularization="kl"))
    assert_close(traced(rows, 0.5), soft_rank(rows, regularization_strength=0.5, regularization="kl"))


# ----------------------------------------------------------------------------- dtypes, NaN


@pytest.mark.parametrize("kind", OPS)
def test_bfloat16_input_is_computed_in_float32_and_returned_in_bfloat16(rows, kind):
    x = jnp.asarray(rows, jnp.bfloat16)
    got = OPS[kind](x, regularization_strength=0.5)
    assert got.dtype == jnp.bfloat16
    want = ref_rows(kind, np.asarray(x, np.float32), 0.5, "l2", "ascending")
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("kind", OPS)
def test_nan_row_gives_nan_row_only(rows, kind):
    x = rows.copy()
    x[1, 2] = np.nan
    got = np.asarray(OPS[kind](x, regularization_strength=0.5))
    assert np.all(np.isnan(got[1]))
    keep = np.arange(len(x)) != 1
    want = np.asarray(OPS[kind](rows, regularization_strength=0.5))
    assert_close(got[keep], want[keep])
    grad = jax.grad(lambda v: jnp.sum(jnp.where(jnp.isnan(v), 0.0, OPS[kind](v) * 1.0)[keep]))(x)
    assert np.all(np.isfinite(np.asarray(grad)[keep]))


# ----------------------------------------------------------------------------- hard rank


def test_rank_matches_rankdata_with_ties_and_directions():
    x = np.random.default_rng(6).integers(0, 5, size=(4, 9)).astype(np.float32)
    np.testing.assert_array_equal(rank(x), rankdata(x, method="average", axis=-1))
    np.testing.assert_array_equal(rank(x, direction="descending"), rankdata(-x, method="average", axis=-1))
    np.testing.assert_array_equal(rank(x.astype(np.int32)), rankdata(x, method="average", axis=-1))
    assert rank(jnp.asarray(x, jnp.bfloat16)).dtype == jnp.bfloat16


def test_rank_nan_row_gives_nan_row_only():
    x = np.array([[1.0, np.nan, 0.0], [3.0, 1.0, 2.0]], np.float32)
    got = np.asarray(rank(x))
    assert np.all(np.isnan(got[0]))
    np.testing.assert_array_equal(got[1], [3.0, 1.0, 2.0])


# ----------------------------------------------------------------------------- sorting network

_SPECIAL = np.array([3e38, -3e38, np.inf, -np.inf, -0.0, 0.0, np.nan, 1.0, -np.nan, 1.0], np.float32)


def _network_rows(n):
    """Random, tied, constant and extreme rows (±3e38, ±inf, ±0, NaN of both signs) of length n."""
    rng = np.random.default_rng(n)
    return np.stack([
        rng.normal(size=n),
        rng.integers(0, 3, size=n),
        np.full(n, 2.0),
        np.resize(_SPECIAL, n),
        np.resize(_SPECIAL[::-1], n),
        rng.permutation(np.resize(_SPECIAL, n)),
    ]).astype(np.float32)


_network_sort = jax.jit(functools.partial(ranking._sort_rows, sorter="network"))
_lax_sort = jax.jit(functools.partial(ranking._sort_rows, sorter="lax"))


@pytest.mark.parametrize("n", (1, 2, 3, 5, 8, 13, 33))
def test_sorting_network_is_the_stable_sort_of_lax_sort_and_numpy(n):
    # Permutations are exact, so they are compared for equality: NumPy's stable argsort and
    # lax.sort both order NaN last and keep −0.0 and 0.0 tied in input order.
    x = _network_rows(n)
    values, perm = _network_sort(x)
    want = np.argsort(x, axis=1, kind="stable")
    np.testing.assert_array_equal(perm, want)
    np.testing.assert_array_equal(perm, _lax_sort(x)[1])
    np.testing.assert_array_equal(values, np.take_along_axis(x, want, axis=1))


def test_sorting_network_on_integers_booleans_and_bfloat16():
    # The largest int32 ties with the padding (n = 6 is padded to 8) and must still sort first.
    big = np.iinfo(np.int32).max
    ints = np.array([[big, 3, -big - 1, big, 3, 0], [5, 4, 3, 2, 1, 0]], np.int32)
    for x in (ints, ints > 2, jnp.asarray(_network_rows(6), jnp.bfloat16)):
        values, perm = _network_sort(x)
        as_numpy = np.asarray(x, np.float32) if x.dtype == jnp.bfloat16 else np.asarray(x)
        want = np.argsort(as_numpy, axis=1, kind="stable")
        np.testing.assert_array_equal(perm, want)
        assert values.dtype == x.dtype
        np.testing.assert_array_equal(
            np.asarray(values, as_numpy.dtype), np.take_along_axis(as_numpy, want, axis=1)
        )


def test_cpu_programs_rank_with_the_network_not_an_xla_sort():
    # lax.platform_dependent keeps one branch per platform when the program is lowered.
    for fn in (soft_rank, soft_sort, rank):
        traced = jax.jit(fn).trace(jnp.ones((2, 5)))
        assert "stablehlo.sort" not in traced.lower().as_text(), fn.__name__
        assert "stablehlo.sort" in traced.lower(lowering_platforms=("cuda",)).as_text(), fn.__name__


def test_values_and_grad_match_reference_at_a_non_power_of_two_length():
    # n = 5 is padded to 8 inside the CPU sorting network. Spacing 0.3 < ε pools blocks; the
    # jitter keeps the point away from the kinks where a pool starts or ends.
    rng = np.random.default_rng(5)
    x = (rng.permutation(10).reshape(2, 5) * 0.3 + rng.uniform(0, 0.1, (2, 5))).astype(np.float32)
    weights = np.random.default_rng(10).normal(size=x.shape)
    loss = lambda v: jnp.sum(soft_rank(v, regularization_strength=0.6) * weights)
    np.testing.assert_allclose(
        soft_rank(x, regularization_strength=0.6), ref_rows("rank", x, 0.6, "l2", "ascending"),
        rtol=2e-5, atol=2e-5,
    )
    want = np.zeros(x.shape)
    for index in np.ndindex(x.shape):
        basis = np.zeros(x.shape)
        basis[index] = 1.0
        want[index] = np.sum(_reference_jvp("rank", x, basis, 0.6, "l2", "ascending") * weights)
    np.testing.assert_allclose(jax.grad(loss)(x), want, rtol=1e-4, atol=1e-4)


def test_ranks_of_extreme_values_match_rankdata():
    finite = np.array([3e38, -3e38, 0.0, -0.0, 3e38, 1e38, -1e38], np.float32)
    x = np.stack([np.resize(_SPECIAL[~np.isnan(_SPECIAL)], 7), finite])
    # Ranks of up to 7 elements are small integers or halves: exact in float32.
    np.testing.assert_array_equal(rank(x), rankdata(x, method="average", axis=-1))
    # Gaps of at least 1e38 are 10 strengths wide: the soft rank is hard (ties averaged).
    np.testing.assert_allclose(
        soft_rank(finite, regularization_strength=1e37), rankdata(finite, method="average"), rtol=1e-6
    )


# ----------------------------------------------------------------------------- solver rounds


def test_solver_needs_few_rounds_where_plain_rounds_would_need_many():
    # Rank-unit rows at eps = 1: one big central block grows over the tails. Pooling one
    # neighbour per round would take tens of rounds at n = 255; whole-run absorption does not.
    n = 255
    x = np.random.default_rng(7).normal(size=(2, n)) * np.sqrt((n * n - 1) / 12)
    rounds = int(ranking._solver_rounds(jnp.asarray(x, jnp.float32)))
    assert 1 <= rounds <= 15, rounds
    np.testing.assert_allclose(
        soft_rank(jnp.asarray(x, jnp.float32))[0], ref_soft_rank(x[0], 1.0, "l2", "ascending"), atol=2e-3
    )


@functools.partial(jax.jit, static_argnames=("kind", "regularization", "solver"))
def _solution(x, inv_eps, kind, regularization, solver):
    sol = ranking._solve(x, inv_eps, kind, regularization, solver)
    return sol.out, sol.blocks.start


@pytest.mark.parametrize("kind", ("rank", "sort"))
@pytest.mark.parametrize("regularization", REGULARIZATIONS)
def test_sequential_and_parallel_solvers_give_the_same_blocks_and_values(kind, regularization):
    # Random, tied (few distinct values) and staircase rows (runs of equal values, and a
    # rising line against the descending order), at strengths from hard to fully pooled.
    rng = np.random.default_rng(11)
    n = 40
    staircase = np.repeat(np.arange(8.0), 5)
    x = np.stack([
        rng.normal(size=n) * 10,
        rng.integers(0, 4, size=n).astype(float),
        staircase,
        -staircase,
        np.arange(n) + 0.3 * rng.normal(size=n),
    ]).astype(np.float32)
    for eps in (0.01, 0.3, 1.0, 7.0, 300.0):
        inv_eps = jnp.float32(1.0 / eps)
        out_p, start_p = _solution(x, inv_eps, kind, regularization, "parallel")
        out_s, start_s = _solution(x, inv_eps, kind, regularization, "sequential")
        # The partition is exact on the random row, whose merge decisions are never borderline.
        # On the tied rows a merge of two blocks with equal means is decided by the last bit of
        # sums that the two solvers add in different orders, and either way gives the same values.
        np.testing.assert_array_equal(start_s[0], start_p[0], err_msg=f"eps={eps}")
        # Same formulas, fused differently inside and outside the parallel solver's loop.
        assert_close(out_s, out_p, err_msg=f"eps={eps}")


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"regularization_strength": 0.0}, "regularization_strength"),
        ({"regularization_strength": -1.0}, "regularization_strength"),
        ({"regularization_strength": float("nan")}, "regularization_strength"),
        ({"regularization_strength": np.ones(2)}, "regularization_strength"),
        ({"regularization": "l1"}, "regularization"),
        ({"direction": "up"}, "direction"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, match):
    for op in OPS.values():
        with pytest.raises(ValueError, match=match):
            op(jnp.ones((2, 3)), **kwargs)


def test_bad_values_raise_value_error():
    for op in OPS.values():
        with pytest.raises(ValueError, match="floating dtype"):
            op(jnp.arange(3))
        with pytest.raises(ValueError, match="0-d"):
            op(jnp.float32(1.0))
    with pytest.raises(ValueError, match="0-d"):
        rank(jnp.float32(1.0))
    with pytest.raises(ValueError, match="direction"):
        rank(jnp.ones(3), direction="sideways")


def test_empty_input_gives_empty_output_of_the_same_shape():
    for shape in ((3, 0), (0, 4), (2, 0, 3)):
        x = jnp.ones(shape, jnp.bfloat16)
        for op in (soft_rank, soft_sort, rank):
            got = op(x)
            assert got.shape == shape and got.dtype == x.dtype, (op.__name__, shape)
        grad = jax.grad(lambda v: jnp.sum(soft_rank(v)))(jnp.ones(shape))
        assert grad.shape == shape
