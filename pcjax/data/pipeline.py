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

Multi-host. Given the batch's sharding (e.g. `NamedSharding(mesh, P("data"))`), row r of a global
batch is read only by the process whose devices hold row r under it, and
`jax.make_array_from_process_local_data` assembles the global `jax.Array`. Without a sharding,
process p of P yields rows [p B / P, (p + 1) B / P) as NumPy arrays.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Iterator
from typing import Any

import grain
import jax
import numpy as np
from jax.sharding import Sharding

from pcjax.data.augment import example_rng, preprocess
from pcjax.data.sources import source, spec
from pcjax.data.specs import DatasetSpec

Batch = dict[str, Any]

_MAX_SEED = 2**63
# Keeps the epoch shuffle seeds apart from other uses of the same user seed.
_SHUFFLE_STREAM = 0x5EED
# Examples are read and decoded by a few threads of this process, on the host CPU.
_READ_OPTIONS = grain.ReadOptions(num_threads=min(4, os.cpu_count() or 1), prefetch_buffer_size=256)


def train_batches(name: str, *, data_dir: str | os.PathLike | None = None, split: str = "train",
                  global_batch_size: int, seed: int, start_step: int = 0,
                  sharding: Sharding | None = None, augment: bool = True) -> Iterator[Batch]:
    """Endless training batches {"image", "label", "index"}; batch k depends only on (seed, k).

    Close the returned generator (``.close()``) when done with it: that stops the reading threads.

    Args:
      name: dataset name (`pcjax.data.names()`, or a prepared image folder dataset).
      data_dir: TFDS data dir (None or "": `pcjax.data.default_data_dir()`).
      split: TFDS split string, slicing allowed ("train[:90%]").
      global_batch_size: B, examples per step over all processes.
      seed: non-negative integer: fixes the epoch orders and the augmentation.
      start_step: index of the first batch yielded (to resume a run).
      sharding: if given, batches are global `jax.Array`s with this sharding of their leading
        (batch) axis, e.g. `NamedSharding(mesh, P("data"))`; B must split evenly into its
        shards. None: this process's rows as NumPy arrays.
      augment: apply the dataset's training augmentation (`spec(name).augmentation`).

    Yields:
      {"image": float32 (B, *spec(name).image_shape) normalized,
       "label": int32 (B,), "index": int32 (B,) each example's position in the split}: the whole
      global batch with a sharding, else this process's rows.

    Raises:
      ValueError: a bad seed, start_step or global_batch_size, a sharding that is not a
        `jax.sharding.Sharding` or does not split B evenly, or an empty split.

    Examples:
      >>> import tempfile
      >>> from pcjax import data
      >>> batches = data.train_batches(  # doctest: +ELLIPSIS
      ...     "digits", data_dir=tempfile.mkdtemp(), global_batch_size=32, seed=0)
      Building digits in ... (no download)
      >>> batch = next(batches)
      >>> batch["image"].shape, batch["label"].dtype, batch["index"].shape
      ((32, 8, 8, 1), dtype('int32'), (32,))
      >>> batches.close()
    """
    _check_int("seed", seed, lower=0, upper=_MAX_SEED)
    _check_int("start_step", start_step, lower=0)
    rows = _process_rows(global_batch_size, sharding)
    dataset_spec = spec(name, data_dir=data_dir)
    examples = source(name, split, data_dir=data_dir)
    if len(examples) == 0:
        raise ValueError(f"Split {split!r} of {name!r} is empty.")
    shuffle_seed = int(np.random.SeedSequence([seed, _SHUFFLE_STREAM]).generate_state(1)[0])
    # grain reseeds the shuffle of epoch e with shuffle_seed + e. The stream holds split positions
    # (the same permutation as shuffling the examples themselves), read by _load_train_example.
    stream = grain.MapDataset.range(len(examples)).shuffle(seed=shuffle_seed).repeat()
    load = functools.partial(
        _load_train_example, examples=examples, stream=stream, spec=dataset_spec, rows=rows,
        global_batch_size=global_batch_size,
        seed=seed if augment and dataset_spec.augmentation != "none" else None,
    )
    local = len(rows)
    last_step = sys.maxsize // local - 1
    dataset = grain.MapDataset.range(start_step * local, last_step * local).map(load)
    return _iterate(dataset, local, sharding, global_batch_size)


def eval_batches(name: str, split: str, *, data_dir: str | os.PathLike | None = None,
                 global_batch_size: int, sharding: Sharding | None = None) -> Iterator[Batch]:
    """One pass of evaluation batches {"image", "label", "mask"} over `split`, last batch padded.

    Args:
      name, data_dir, sharding: as in `train_batches`.
      split: TFDS split string ("test", "validation", "train[90%:]").
      global_batch_size: B; with a sharding, B splits evenly into its shards.

    Yields:
      ceil(N / B) batches {"image": float32 (B, *image_shape), "label": int32 (B,),
      "mask": bool (B,)}; `mask` is False exactly on the padding rows of the last batch.

    Examples:
      >>> import tempfile
      >>> from pcjax import data
      >>> batches = list(data.eval_batches(  # doctest: +ELLIPSIS
      ...     "digits", "test", data_dir=tempfile.mkdtemp(), global_batch_size=100))
      Building digits in ... (no download)
      >>> len(batches), int(sum(b["mask"].sum() for b in batches))
      (4, 355)
    """
    rows = _process_rows(global_batch_size, sharding)
    dataset_spec = spec(name, data_dir=data_dir)
    examples = source(name, split, data_dir=data_dir)
    num_steps = math.ceil(len(examples) / global_batch_size)
    load = functools.partial(_load_eval_example, examples=examples, spec=dataset_spec, rows=rows,
                             global_batch_size=global_batch_size)
    dataset = grain.MapDataset.range(num_steps * len(rows)).map(load)
    return _iterate(dataset, len(rows), sharding, global_batch_size)


def _stream_position(j: int, rows: np.ndarray, global_batch_size: int) -> int:
    """Local element j -> its position in the global stream (batch j // b, row rows[j % b])."""
    step, r = divmod(j, len(rows))
    return step * global_batch_size + int(rows[r])


def _load_train_example(j, *, examples, stream, spec, rows, global_batch_size, seed):
    position = _stream_position(j, rows, global_batch_size)
    index = stream[position]
    example = examples[index]
    rng = example_rng(seed, position) if seed is not None else None
    return {"image": preprocess(example["image"], spec, rng=rng),
            "label": np.int32(example["label"]), "index": np.int32(index)}


def _load_eval_example(j, *, examples, spec: DatasetSpec, rows, global_batch_size):
    position = _stream_position(j, rows, global_batch_size)
    if position >= len(examples):
        return {"image": np.zeros(spec.image_shape, np.float32), "label": np.int32(0),
                "mask": np.False_}
    example = examples[position]
    return {"image": preprocess(example["image"], spec, rng=None),
            "label": np.int32(example["label"]), "mask": np.True_}


def _iterate(dataset: grain.MapDataset, local_batch_size: int, sharding: Sharding | None,
             global_batch_size: int) -> Iterator[Batch]:
    batches = dataset.batch(local_batch_size, drop_remainder=True)
    iterator = iter(batches.to_iter_dataset(_READ_OPTIONS))
    try:
        if sharding is None:
            yield from iterator
            return
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


def _process_rows(global_batch_size: int, sharding: Sharding | None) -> np.ndarray:
    """Rows of each global batch that this process reads, in the order of its local batch.

    With a sharding, they are the rows its addressable devices hold, in increasing order, which is
    the local layout `jax.make_array_from_process_local_data` expects.
    """
    _check_int("global_batch_size", global_batch_size, lower=1)
    if sharding is None:
        count, index = jax.process_count(), jax.process_index()
        _check_batch_split(global_batch_size, count, "processes")
        local = global_batch_size // count
        return np.arange(index * local, (index + 1) * local)
    if not isinstance(sharding, Sharding):
        raise ValueError(
            "sharding: expected a jax.sharding.Sharding of the batch axis (e.g. "
            f"NamedSharding(mesh, P('data'))) or None, got {type(sharding).__name__}"
        )
    # The number of shards of the batch axis: the distinct row ranges the devices hold of a
    # batch of one row per device (which any sharding of one axis splits evenly).
    probe = len(sharding.device_set)
    try:
        shards = {i[0].indices(probe) for i in sharding.devices_indices_map((probe,)).values()}
    except (IndexError, ValueError):
        raise ValueError(
            f"sharding: {sharding} does not apply to the 1-D labels; expected a sharding of "
            "the batch axis only"
        ) from None
    _check_batch_split(global_batch_size, len(shards), "shards of `sharding`")
    held = sharding.addressable_devices_indices_map((global_batch_size,)).values()
    slices = sorted({(index[0].start or 0, index[0].stop or global_batch_size) for index in held})
    return np.concatenate([np.arange(start, stop) for start, stop in slices])


def _check_batch_split(global_batch_size: int, parts: int, what: str) -> None:
    if global_batch_size % parts:
        raise ValueError(
            f"global_batch_size: {global_batch_size} is not divisible by the {parts} {what}"
        )


def _check_int(name: str, value: int, *, lower: int, upper: int | None = None) -> None:
    if not isinstance(value, (int, np.integer)) or value < lower or (upper and value >= upper):
        bound = f" and < {upper}" if upper else ""
        raise ValueError(f"{name} must be an integer >= {lower}{bound}; got {value!r}.")
