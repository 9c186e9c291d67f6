"""The Pallas PAV kernel (pcjax.ranking.pallas), run in interpret mode on CPU.

Reference: the sequential pure-JAX solver, itself checked against scikit-learn / NumPy in
test_ranking.py; partitions must agree exactly on rows whose merges are not borderline. Interpret
mode compiles slowly (~20 s per configuration here), so two configurations cover l2 and kl, ranks
and sorts.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from float32 import assert_close
from pcjax.ranking.solve import _solve


@jax.jit
def _rank_l2_and_sort_kl(x, inv_eps):
    def solve(kind, reg, solver):
        sol = _solve(x, inv_eps, kind, reg, solver)
        return sol.out, sol.blocks.start

    return {
        (kind, reg, solver): solve(kind, reg, solver)
        for kind, reg in (("rank", "l2"), ("sort", "kl"))
        for solver in ("sequential", "pallas_interpret")
    }


@pytest.mark.parametrize("eps", (0.05, 1.0, 300.0))
def test_pallas_kernel_gives_the_partition_and_values_of_the_sequential_solver(eps):
    # Random, staircase and rising rows (long runs of merges in both directions), a constant row
    # of zeros and one of 1e9; n = 40 is padded to the kernel's block of 64.
    rng = np.random.default_rng(12)
    n = 40
    staircase = np.repeat(np.arange(8.0), 5)
    x = np.stack([
        rng.normal(size=n) * 10, staircase, -staircase, np.arange(n) + 0.3 * rng.normal(size=n),
        np.zeros(n), np.full(n, 1e9),
    ]).astype(np.float32)
    got = _rank_l2_and_sort_kl(x, jnp.float32(1 / eps))
    for kind, reg in (("rank", "l2"), ("sort", "kl")):
        out_s, start_s = got[kind, reg, "sequential"]
        out_p, start_p = got[kind, reg, "pallas_interpret"]
        np.testing.assert_array_equal(start_p, start_s, err_msg=f"{kind} {reg}")
        assert_close(out_p, out_s, err_msg=f"{kind} {reg}")


def test_pallas_kernel_lowers_to_a_triton_call_for_gpus():
    # Lowering runs the Pallas-to-Triton translation here (compiling it needs a GPU). The loops
    # live inside the kernel: the XLA program around it has no while loop to test on the host.
    for solver, has_loop in (("pallas", False), ("parallel", True)):
        lowered = jax.jit(lambda x: _solve(x, jnp.float32(1.0), "rank", "kl", solver).out)
        text = lowered.trace(jnp.ones((4, 40))).lower(lowering_platforms=("cuda",)).as_text()
        assert ("triton" in text) == (solver == "pallas"), solver
        assert ("stablehlo.while" in text) == has_loop, solver
