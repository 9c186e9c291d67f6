"""Speed of pcjax.soft_rank (forward + backward) against jnp.sort, ott-jax and torchsort.

    python benchmarks/soft_rank.py            # all shapes (a few minutes on 2 CPU cores)
    python benchmarks/soft_rank.py --quick    # (256, 255) and (1024, 1023) only

Input: B rows of n standard-normal values scaled to rank units (std of the ranks 1..n), the
scaling pcjax.perception_coherence_loss applies before its soft rank, with ε = 1 (its default):
the regime the loss runs in. Every timing is the median of several runs after a warm-up, with
block_until_ready, all in this process; "fwd+bwd" is jax.grad of sum(op(x) * w) for a fixed
random w (a VJP with a dense cotangent). soft_rank's isotonic solve is the sequential
pool-adjacent-violators on CPU and the parallel-rounds solver on GPU/TPU (the output says which
one was timed); "rounds" is the number of sequential O(n) passes the parallel solver makes on
that input (the largest over the rows, which are solved together), whichever one was timed.
ott-jax and torchsort columns appear only when those packages are importable.
"""

import argparse
import importlib.util
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _timing import median_seconds  # noqa: E402

from pcjax import ranking  # noqa: E402

SHAPES = ((256, 255), (1024, 1023), (4096, 4095))
STRENGTH = 1.0


def rank_unit_rows(shape, seed=0):
    n = shape[-1]
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return jnp.asarray(x * np.sqrt((n * n - 1) / 12.0))


def fwd_bwd(op):
    """jit(grad(x -> sum(op(x) * w)))."""
    return jax.jit(jax.grad(lambda x, w: jnp.sum(op(x) * w)))


def ott_ranks():
    if importlib.util.find_spec("ott") is None:
        return None
    from ott.tools import soft_sort

    return lambda x: soft_sort.ranks(x, axis=-1, epsilon=STRENGTH)


def torchsort_seconds(x, w, runs):
    if importlib.util.find_spec("torchsort") is None:
        return None
    import time

    import torch
    import torchsort

    xt = torch.tensor(np.asarray(x), requires_grad=True)
    wt = torch.tensor(np.asarray(w))

    def step():
        xt.grad = None
        (torchsort.soft_rank(xt, regularization_strength=STRENGTH) * wt).sum().backward()

    step()
    times = []
    for _ in range(runs):
        begin = time.perf_counter()
        step()
        times.append(time.perf_counter() - begin)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="skip (4096, 4095)")
    parser.add_argument("--runs", type=int, default=5)
    # One warm-up call compiles; the first few calls after it still run slower (seen: 19 against
    # 16 ms for soft_rank at (256, 255)), hence a few more before timing.
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    shapes = SHAPES[:2] if args.quick else SHAPES

    soft = fwd_bwd(lambda x: ranking.soft_rank(x, regularization_strength=STRENGTH))
    hard = fwd_bwd(jnp.sort)
    ott = ott_ranks()
    ott_fn = fwd_bwd(ott) if ott is not None else None

    backend = jax.default_backend()
    solver = "sequential (one step per position)" if backend == "cpu" else "parallel rounds"
    print(f"jax {jax.__version__}, backend {backend}, {os.cpu_count()} CPU cores")
    print(f"soft_rank timed with the {solver} isotonic solver.")
    print("rounds: sequential passes of the parallel solver (the one used on GPU/TPU).")
    print()
    header = "| shape | soft_rank fwd+bwd (ms) | jnp.sort fwd+bwd (ms) | ratio | rounds l2 / kl |"
    rule = "|---|---|---|---|---|"
    if ott_fn is not None:
        header += " ott-jax ranks (ms) |"
        rule += "---|"
    if importlib.util.find_spec("torchsort") is not None:
        header += " torchsort (ms) |"
        rule += "---|"
    print(header)
    print(rule)
    for shape in shapes:
        x = rank_unit_rows(shape)
        w = jnp.asarray(np.random.default_rng(1).standard_normal(shape).astype(np.float32))
        t_soft = median_seconds(soft, x, w, runs=args.runs, warmup=args.warmup)
        t_sort = median_seconds(hard, x, w, runs=args.runs, warmup=args.warmup)
        rounds = [
            int(ranking._solver_rounds(x, regularization_strength=STRENGTH, regularization=reg))
            for reg in ("l2", "kl")
        ]
        row = (
            f"| {shape} | {t_soft * 1e3:.1f} | {t_sort * 1e3:.1f} | {t_soft / t_sort:.2f} "
            f"| {rounds[0]} / {rounds[1]} |"
        )
        if ott_fn is not None:
            row += f" {median_seconds(ott_fn, x, w, runs=args.runs, warmup=args.warmup) * 1e3:.1f} |"
        t_torch = torchsort_seconds(x, w, args.runs)
        if t_torch is not None:
            row += f" {t_torch * 1e3:.1f} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
