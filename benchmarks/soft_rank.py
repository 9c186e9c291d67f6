"""Speed of pcjax.soft_rank (forward + backward) against jnp.sort and torchsort.

    python benchmarks/soft_rank.py            # all shapes, l2 and kl (minutes on 2 CPU cores)
    python benchmarks/soft_rank.py --quick    # (256, 255) and (1024, 1023) only
    python benchmarks/soft_rank.py --sorts    # the CPU sorting network against lax.sort
    python benchmarks/soft_rank.py --rankdata # pcjax.rank against jax.scipy.stats.rankdata

Input: B rows of n standard-normal values scaled to rank units (std of the ranks 1..n), the
scaling pcjax.perception_coherence_loss applies before its soft rank, with ε = 1 (its default):
the regime the loss runs in. Every timing is the median of several runs after a warm-up, with
block_until_ready, all in this process; "fwd+bwd" is jax.grad of sum(op(x) * w) for a fixed
random w (a VJP with a dense cotangent), and the torchsort column times the same workload,
torchsort.soft_rank(x) * w summed and backpropagated, with the same warm-up and runs, on
--torch-threads threads (2 by default). soft_rank is timed on both CPU solvers
(`pcjax.ranking.use_cpu_backend`): "compiled", the C++ XLA FFI call built at install, and "jax",
the pure-JAX path (a sorting network and the sequential pool-adjacent-violators). The torchsort
column appears only when torchsort is importable.

torchsort is an optional benchmark dependency, not a dependency of pcjax. It builds a C++
extension from source against the installed torch (torch 2.13.0 here, run on CPU):

    pip install torch==2.13.0
    PATH=$VIRTUAL_ENV/bin:/usr/bin:/bin pip install --no-build-isolation torchsort

torchsort also tries to build its CUDA kernel when it finds any `nvcc` on PATH (a stub is
enough), hence the PATH above: check that `PATH=$VIRTUAL_ENV/bin:/usr/bin:/bin which -a nvcc`
prints nothing and that CUDA_HOME is unset (`env -u CUDA_HOME ...`) before building. The build
above gave torchsort 0.1.10 with its CPU kernel only.
"""

import argparse
import importlib.metadata
import importlib.util
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.scipy.stats  # noqa: E402
import numpy as np  # noqa: E402
from _timing import median_seconds  # noqa: E402

from pcjax import ranking  # noqa: E402

SHAPES = ((256, 255), (1024, 1023), (4096, 4095))
SORT_SHAPES = (
    (4096, 8), (1024, 64), (256, 255), (1024, 1023), (4096, 4095), (64, 16383), (4, 262143)
)
STRENGTH = 1.0


def rank_unit_rows(shape, seed=0):
    n = shape[-1]
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return jnp.asarray(x * np.sqrt((n * n - 1) / 12.0))


def fwd_bwd(op):
    """jit(grad(x -> sum(op(x) * w)))."""
    return jax.jit(jax.grad(lambda x, w: jnp.sum(op(x) * w)))


def torchsort_seconds(x, w, reg, runs, warmup):
    """Median seconds of torchsort's soft_rank forward + backward, the workload of `fwd_bwd`."""
    import torch
    import torchsort

    xt = torch.tensor(np.asarray(x), requires_grad=True)
    wt = torch.tensor(np.asarray(w))

    def step():
        xt.grad = None
        out = torchsort.soft_rank(xt, regularization=reg, regularization_strength=STRENGTH)
        (out * wt).sum().backward()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(runs):
        begin = time.perf_counter()
        step()
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def soft_rank_table(shapes, args):
    """fwd+bwd of soft_rank on both CPU solvers, jnp.sort and torchsort, l2 and kl."""
    has_torchsort = importlib.util.find_spec("torchsort") is not None
    backends = ["jax"] if ranking.cpu_backend() == "jax" else ["compiled", "jax"]
    print(f"pcjax.ranking.cpu_backend(): {ranking.cpu_backend()}; columns: {', '.join(backends)}")
    if has_torchsort:
        import torch

        torch.set_num_threads(args.torch_threads)
        print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), torchsort "
              f"{importlib.metadata.version('torchsort')}; ratio: pcjax compiled / torchsort.")
    print()
    header = "| shape | reg | " + " | ".join(f"pcjax {b} (ms)" for b in backends)
    header += " | jnp.sort (ms) |"
    if has_torchsort:
        header += " torchsort (ms) | ratio |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    hard = fwd_bwd(jnp.sort)
    for shape in shapes:
        x = rank_unit_rows(shape)
        w = jnp.asarray(np.random.default_rng(1).standard_normal(shape).astype(np.float32))
        t_sort = median_seconds(hard, x, w, runs=args.runs, warmup=args.warmup)
        for reg in ("l2", "kl"):
            times = []
            for backend in backends:
                # The backend is read when soft_rank is traced: a fresh jit per backend.
                ranking.use_cpu_backend(backend)
                soft = fwd_bwd(lambda v: ranking.soft_rank(
                    v, regularization_strength=STRENGTH, regularization=reg))
                times.append(median_seconds(soft, x, w, runs=args.runs, warmup=args.warmup))
            row = f"| {shape} | {reg} | " + " | ".join(f"{t * 1e3:.1f}" for t in times)
            row += f" | {t_sort * 1e3:.1f} |"
            if has_torchsort:
                t_torch = torchsort_seconds(x, w, reg, args.runs, args.warmup)
                row += f" {t_torch * 1e3:.1f} | {times[0] / t_torch:.2f} |"
            print(row, flush=True)


def sort_table(args):
    """The sort inside soft_rank and rank on this backend: the network against lax.sort."""
    network = jax.jit(lambda x: ranking._sort_rows(x, "network"))
    lax_sort = jax.jit(lambda x: ranking._sort_rows(x, "lax"))
    print("Stable sort with positions of every row (values and permutation), forward only.")
    print()
    print("| shape | sorting network (ms) | lax.sort (ms) | network / lax.sort |")
    print("|---|---|---|---|")
    for shape in SORT_SHAPES:
        x = rank_unit_rows(shape)
        if not np.array_equal(network(x)[1], lax_sort(x)[1]):
            raise AssertionError(f"the network and lax.sort disagree at {shape}")
        t_net = median_seconds(network, x, runs=args.runs, warmup=args.warmup)
        t_lax = median_seconds(lax_sort, x, runs=args.runs, warmup=args.warmup)
        print(f"| {shape} | {t_net * 1e3:.2f} | {t_lax * 1e3:.2f} | {t_net / t_lax:.2f} |", flush=True)


def rankdata_table(shapes, args):
    """pcjax.rank against jax.scipy.stats.rankdata (method="average"): values, then speed."""
    ours = jax.jit(ranking.rank)
    scipy_like = jax.jit(lambda x: jax.scipy.stats.rankdata(x, method="average", axis=-1))
    print("Hard ranks with ties averaged, forward only; inputs rounded to 1/4 so that rows tie.")
    print()
    print("| shape | pcjax.rank (ms) | jax.scipy.stats.rankdata (ms) | rank / rankdata | same values |")
    print("|---|---|---|---|---|")
    for shape in shapes:
        x = jnp.round(rank_unit_rows(shape) * 4) / 4
        same = np.array_equal(ours(x), scipy_like(x))
        t_ours = median_seconds(ours, x, runs=args.runs, warmup=args.warmup)
        t_scipy = median_seconds(scipy_like, x, runs=args.runs, warmup=args.warmup)
        print(f"| {shape} | {t_ours * 1e3:.2f} | {t_scipy * 1e3:.2f} | {t_ours / t_scipy:.2f} | {same} |",
              flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="skip (4096, 4095)")
    parser.add_argument("--sorts", action="store_true", help="time the sort alone instead")
    parser.add_argument("--rankdata", action="store_true", help="time pcjax.rank and rankdata instead")
    parser.add_argument(
        "--torch-threads", type=int, default=2,
        help="torch.set_num_threads for the torchsort column",
    )
    parser.add_argument("--runs", type=int, default=5)
    # One warm-up call compiles; the first few calls after it still run slower (seen: 19 against
    # 16 ms for soft_rank at (256, 255)), hence a few more before timing.
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    shapes = SHAPES[:2] if args.quick else SHAPES

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPU cores")
    if args.sorts:
        sort_table(args)
    elif args.rankdata:
        rankdata_table(shapes, args)
    else:
        soft_rank_table(shapes, args)


if __name__ == "__main__":
    main()
