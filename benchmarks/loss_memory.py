"""Peak memory and time of perception_coherence_loss forward+backward at B = 4096, 512-d features.

    python benchmarks/loss_memory.py [--batch 4096] [--dim 512] [--repeats 3]

Memory is XLA's own accounting for the compiled program (``memory_analysis()``: temporaries,
arguments, outputs) and the process peak RSS. Time is the median of ``--repeats`` runs after a
warm-up, with block_until_ready. The baseline, measured in the same process, is the
forward+backward of the student's pairwise euclidean distances alone (mean of D_S): the cheapest
loss that touches every pair. Ratios are to one (B, B) float32 matrix; a B^3 intermediate would
show as a ratio near B (4096), not a small constant.
"""

import argparse
import resource

import jax
import jax.numpy as jnp
import numpy as np
from _timing import median_seconds

from pcjax.dissimilarity import pairwise_dissimilarity
from pcjax.losses import perception_coherence_loss


def _measure(fn, args, repeats):
    compiled = jax.jit(jax.value_and_grad(fn)).lower(*args).compile()
    return compiled.memory_analysis(), median_seconds(compiled, *args, runs=repeats, warmup=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    teacher = jnp.asarray(rng.normal(size=(args.batch, args.dim)), jnp.float32)
    student = jnp.asarray(
        teacher + rng.normal(size=(args.batch, args.dim)), jnp.float32
    )
    matrix_bytes = 4 * args.batch * args.batch
    candidates = {
        "pairwise distances only (baseline)": lambda s, t: jnp.mean(pairwise_dissimilarity(s)),
        "perception_coherence_loss (mse, l2)": perception_coherence_loss,
    }
    print(f"device: {jax.devices()[0].device_kind}, B = {args.batch}, D = {args.dim}, "
          f"one (B, B) float32 matrix = {matrix_bytes / 2**20:.0f} MiB, "
          f"B^3 float32 would be {4 * args.batch**3 / 2**30:.0f} GiB\n")
    print("| forward+backward | temp MiB | temp / (B,B) matrix | args+out MiB | median s |")
    print("|---|---|---|---|---|")
    for name, fn in candidates.items():
        memory, seconds = _measure(fn, (student, teacher), args.repeats)
        temp = memory.temp_size_in_bytes
        io = memory.argument_size_in_bytes + memory.output_size_in_bytes
        print(f"| {name} | {temp / 2**20:.0f} | {temp / matrix_bytes:.1f} | {io / 2**20:.0f} | "
              f"{seconds:.2f} |", flush=True)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"\nprocess peak RSS: {peak_rss:.0f} MiB")


if __name__ == "__main__":
    main()
