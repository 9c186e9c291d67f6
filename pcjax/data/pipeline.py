"""The input pipeline of every dataset: TFDS array_record source -> grain -> (sharded) batches.

Training stream. For a split of N examples, the stream is the endless concatenation of epochs; epoch
e is a permutation of the N examples drawn by grain's random-access index shuffle with a seed
derived from (seed, e). Global batch k is the stream positions [k B, (k + 1) B), B the global batch
size, so batches never straddle a gap: every batch is full (nothing to drop) and no example is
skipped at an epoch boundary. The example at stream position g is augmented with randomness keyed
by (seed, g) (`augment.example_rng`). Each training example carries `index`, its position in the
split (the row it was read from), which is global whatever the sharding: stateful losses key
per-example memory on it (`pcjax.losses.crd`). Batch k is a pure function of (seed, k): a run
resumed with `start_step=k` sees exactly the batches an uninterrupted run sees from step k on, for
any number of reading threads or processes.

Evaluation stream. One pass over the split in stored order; global batch k holds positions
[k B, (k + 1) B); the last batch is padded with zero images (label 0) and `mask` is False on the
padding, so summing a per-example metric times `mask` counts every example exactly once.

Multi-host. Row r of a global batch is read only by the process whose devices hold row r under
`NamedSharding(mesh, P("data"))`; `jax.make_array_from_process_local_data` assembles the global
`jax.Array`. Without a mesh, process p of P yields rows [p B / P, (p + 1) B / P) as NumPy arrays.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import grain
from absl import flags
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pcjax.data.augment import example_rng, preprocess
from pcjax.data.sources import source
from pcjax.data.specs import DatasetSpec, spec

Batch = dict[str, Any]

DATA_AXIS = "data"
_MAX_SEED = 2**63
# Keeps the epoch shuffle seeds apart from other uses of the same user seed.
_SHUFFLE_STREAM = 0x5EED


def default_read_options() -> grain.ReadOptions:
    """Reading threads and prefetch buffer: modest, since examples are decoded on the host CPU."""
    return grain.ReadOptions(num_threads=min(4, os.cpu_count() or 1), prefetch_buffer_size=256)


def train_batches(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    split: str = "train",
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    mesh: Mesh | None = None,
    augment: bool = True,
    read_options: grain.ReadOptions | None = None,
    worker_count: int = 0,
) -> Iterator[Batch]:
    """Endless training batches {"image", "label", "index"}; batch k depends only on (seed, k).

    Close the returned generator (``.close()``) when done with it: that stops the reading threads.

    Args:
      name: dataset name (`pcjax.data.names()`).
      data_dir: TFDS data dir (default: `pcjax.data.default_data_dir()`).
      split: TFDS split string, slicing allowed ("train[:90%]").
      global_batch_size: B, examples per step over all processes.
      seed: non-negative integer: fixes the epoch orders and the augmentation.
      start_step: index of the first batch yielded (to resume a run).
      mesh: if given, batches are global `jax.Array`s sharded on its "data" axis; B must be a
        multiple of that axis' size.
      augment: apply the dataset's training augmentation (`spec(name).augmentation`).
      read_options: grain reading threads / prefetch (default `default_read_options()`).
      worker_count: grain worker processes (0: read in this process).

    Yields:
      {"image": float32 (B, *spec(name).image_shape) normalized,
       "label": int32 (B,), "index": int32 (B,) each example's position in the split}: the whole
      global batch with a mesh, else this process's rows.
    """
    _check_int("seed", seed, lower=0, upper=_MAX_SEED)
    _check_int("start_step", start_step, lower=0)
    dataset_spec = spec(name, data_dir=data_dir)
    examples = source(name, split, data_dir=data_dir)
    if len(examples) == 0:
        raise ValueError(f"Split {split!r} of {name!r} is empty.")
    rows = _process_rows(global_batch_size, mesh)
    shuffle_seed = int(np.random.SeedSequence([seed, _SHUFFLE_STREAM]).generate_state(1)[0])
    # grain reseeds the shuffle of epoch e with shuffle_seed + e. The stream holds split positions
    # (the same permutation as shuffling the examples themselves), read by _load_train_example.
    stream = grain.MapDataset.range(len(examples)).shuffle(seed=shuffle_seed).repeat()
    load = functools.partial(
        _load_train_example,
        examples=examples,
        stream=stream,
        spec=dataset_spec,
        rows=rows,
        global_batch_size=global_batch_size,
        seed=seed if augment and dataset_spec.augmentation != "none" else None,
    )
    local = len(rows)
    last_step = sys.maxsize // local - 1
    dataset = grain.MapDataset.range(start_step * local, last_step * local).map(load)
    return _iterate(dataset, local, mesh, global_batch_size, read_options, worker_count)


def eval_batches(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    global_batch_size: int,
    mesh: Mesh | None = None,
    read_options: grain.ReadOptions | None = None,
    worker_count: int = 0,
) -> Iterator[Batch]:
    """One pass of evaluation batches {"image", "label", "mask"} over `split`, last batch padded.

    Args:
      name, data_dir, mesh, read_options, worker_count: as in `train_batches`.
      split: TFDS split string ("test", "validation", "train[90%:]").
      global_batch_size: B; with a mesh, a multiple of the size of its "data" axis.

    Yields:
      ceil(N / B) batches {"image": float32 (B, *image_shape), "label": int32 (B,),
      "mask": bool (B,)}; `mask` is False exactly on the padding rows of the last batch.
    """
    dataset_spec = spec(name, data_dir=data_dir)
    examples = source(name, split, data_dir=data_dir)
    rows = _process_rows(global_batch_size, mesh)
    num_steps = math.ceil(len(examples) / global_batch_size)
    load = functools.partial(
        _load_eval_example,
        examples=examples,
        spec=dataset_spec,
        rows=rows,
        global_batch_size=global_batch_size,
    )
    dataset = grain.MapDataset.range(num_steps * len(rows)).map(load)
    return _iterate(dataset, len(rows), mesh, global_batch_size, read_options, worker_count)


def _stream_position(j: int, rows: np.ndarray, global_batch_size: int) -> int:
    """Local element j -> its position in the global stream (batch j // b, row rows[j % b])."""
    step, r = divmod(j, len(rows))
    return step * global_batch_size + int(rows[r])


def _load_train_example(j, *, examples, stream, spec, rows, global_batch_size, seed):
    position = _stream_position(j, rows, global_batch_size)
    index = stream[position]
    example = examples[index]
    rng = example_rng(seed, position) if seed is not None else None
    return {
        "image": preprocess(example["image"], spec, rng=rng),
        "label": np.int32(example["label"]),
        "index": np.int32(index),
    }


def _load_eval_example(j, *, examples, spec: DatasetSpec, rows, global_batch_size):
    position = _stream_position(j, rows, global_batch_size)
    if position >= len(examples):
        return {
            "image": np.zeros(spec.image_shape, np.float32),
            "label": np.int32(0),
            "mask": np.False_,
        }
    example = examples[position]
    return {
        "image": preprocess(example["image"], spec, rng=None),
        "label": np.int32(example["label"]),
        "mask": np.True_,
    }


def _iterate(
    dataset: grain.MapDataset,
    local_batch_size: int,
    mesh: Mesh | None,
    global_batch_size: int,
    read_options: grain.ReadOptions | None,
    worker_count: int,
) -> Iterator[Batch]:
    batches = dataset.batch(local_batch_size, drop_remainder=True).to_iter_dataset(
        read_options or default_read_options()
    )
    if worker_count > 0:
        # grain's worker processes read absl flags; outside an absl app they are not parsed yet.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    iterator = iter(batches)
    try:
        if mesh is None:
            yield from iterator
            return
        sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
        for batch in iterator:
            yield {
                key: jax.make_array_from_process_local_data(
                    sharding, value, (global_batch_size,) + value.shape[1:]
                )
                for key, value in batch.items()
            }
    finally:
        # grain's reading threads are not daemons: closing the generator (or finishing it) stops
        # them, so that an error elsewhere does not leave the process waiting for them at exit.
        iterator.close()


def _process_rows(global_batch_size: int, mesh: Mesh | None) -> np.ndarray:
    """Rows of each global batch that this process reads, in the order of its local batch.

    With a mesh, they are the rows its addressable devices hold under P("data"), in increasing
    order, which is the local layout `jax.make_array_from_process_local_data` expects.
    """
    _check_int("global_batch_size", global_batch_size, lower=1)
    if mesh is None:
        count, index = jax.process_count(), jax.process_index()
        check_batch_split(global_batch_size, count, "processes", "global_batch_size")
        local = global_batch_size // count
        return np.arange(index * local, (index + 1) * local)
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh must have a {DATA_AXIS!r} axis; its axes are {mesh.axis_names}.")
    check_batch_split(
        global_batch_size, mesh.shape[DATA_AXIS], f"devices of the mesh's {DATA_AXIS!r} axis",
        "global_batch_size",
    )
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    slices: Sequence[tuple[int, int]] = sorted(
        {
            (index[0].start or 0, index[0].stop or global_batch_size)
            for index in sharding.addressable_devices_indices_map((global_batch_size,)).values()
        }
    )
    return np.concatenate([np.arange(start, stop) for start, stop in slices])


def check_batch_split(global_batch_size: int, parts: int, what: str, name: str) -> None:
    """Raises ValueError naming `name` unless the global batch splits evenly into `parts` `what`.

    The one batch divisibility check: the pipeline (over processes or mesh devices), the mesh
    (``pcjax.training.sharding``) and the config validation call it.
    """
    if global_batch_size % parts:
        raise ValueError(
            f"{name}: global batch size {global_batch_size} is not divisible by the {parts} {what}"
        )


def _check_int(name: str, value: int, *, lower: int, upper: int | None = None) -> None:
    if not isinstance(value, (int, np.integer)) or value < lower or (upper and value >= upper):
        bound = f" and < {upper}" if upper else ""
        raise ValueError(f"{name} must be an integer >= {lower}{bound}; got {value!r}.")
