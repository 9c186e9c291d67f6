"""Differentiable sorting and ranking: `soft_rank`, `soft_sort` and the hard `rank`.

Blondel, Teboul, Berthet, Djolonga, "Fast Differentiable Sorting and Ranking", ICML 2020
(arXiv:2002.08871); the method and which solver runs where: docs/soft_rank.md. One sort per row,
then an isotonic regression over the sorted values (pool adjacent violators): `sort` holds the
row sorts, `isotonic` the solvers, `blocks` the pooled-block arithmetic, `solve` the operator and
its block-constant JVP, `native` the compiled CPU solver, `pallas` a Pallas solve, `api` the
public functions.
"""

from pcjax.ranking.api import _solver_rounds, rank, soft_rank, soft_sort
from pcjax.ranking.checks import _check_options
from pcjax.ranking.native import cpu_backend, use_cpu_backend
from pcjax.ranking.solve import _solve
from pcjax.ranking.sort import _sort_rows

__all__ = ["soft_rank", "soft_sort", "rank", "cpu_backend", "use_cpu_backend"]
