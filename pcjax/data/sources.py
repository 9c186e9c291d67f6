"""Datasets in a data dir: their specs and random-access sources, never touching the network.

digits and mnist1d are built into the data dir on first use (a few seconds) and reused afterwards.
cifar10, cifar100, imagenet2012 and image folder datasets must already be prepared there as
array_record (`python -m pcjax.data.prepare` prepares CIFAR and image folders); otherwise
`DatasetNotFoundError` is raised at once, naming the dataset, the directory and the command that
prepares it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import tensorflow_datasets as tfds

from pcjax.data import builders  # Registers "digits" and "mnist1d" with TFDS.
from pcjax.data.specs import SPECS, DatasetSpec, names

_BUILD_LOCK = threading.Lock()
# Key of the spec that `pcjax.data.prepare folder` stores in a dataset's TFDS metadata.
FOLDER_METADATA = "pcjax_folder"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset that pcjax cannot build itself is not prepared in the data dir."""


def default_data_dir() -> str:
    """TFDS_DATA_DIR if set, else ~/tensorflow_datasets (TFDS's own default).

    Examples:
      >>> import os
      >>> from pcjax import data
      >>> os.environ["TFDS_DATA_DIR"] = "/data/tfds"
      >>> data.default_data_dir()
      '/data/tfds'
      >>> del os.environ["TFDS_DATA_DIR"]
    """
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str:
    """The data dir actually used: `data_dir`, or `default_data_dir()` when it is None or ""."""
    return os.fspath(data_dir) if data_dir else default_data_dir()


def spec(name: str, *, data_dir: str | os.PathLike | None = None) -> DatasetSpec:
    """The `DatasetSpec` of dataset `name`.

    Args:
      name: one of `names()`, or an image folder dataset prepared in `data_dir` by
        `python -m pcjax.data.prepare folder` (its spec is read from what was prepared).
      data_dir: the TFDS data dir (None or "": `default_data_dir()`); only folder datasets
        depend on it.

    Raises:
      ValueError: `name` is neither a supported dataset nor a folder dataset prepared in
        `data_dir`.

    Examples:
      >>> from pcjax import data
      >>> spec = data.spec("cifar100")
      >>> spec.num_classes, spec.image_shape, spec.splits["train"], spec.augmentation
      (100, (32, 32, 3), 50000, 'cifar')
    """
    if name in SPECS:
        return SPECS[name]
    prepared = folder_spec(name, data_dir)
    if prepared is None:
        raise ValueError(
            f"Unknown dataset {name!r}; expected one of {names()}, or an image folder dataset "
            f"prepared in {resolve_data_dir(data_dir)} with: python -m "
            f"pcjax.data.prepare folder --dir DIR --name {name}"
        )
    return prepared


def source(name: str, split: str, *,
           data_dir: str | os.PathLike | None = None) -> Sequence[dict[str, Any]]:
    """Random-access source of decoded examples {"image", "label", ...} of one split.

    Args:
      name: a dataset of `pcjax.data.names()`.
      split: a TFDS split string, slicing included: "train", "test", "train[:90%]",
        "train[90%:]", "validation[:1000]".
      data_dir: the TFDS data dir (None or "": `default_data_dir()`).

    Returns:
      a `tfds.data_source` (length and integer indexing; examples as NumPy arrays).

    Raises:
      DatasetNotFoundError: `name` is not a locally built dataset and is not prepared in
        `data_dir` as array_record.

    Examples:
      >>> import tempfile
      >>> from pcjax import data
      >>> test = data.source("digits", "test", data_dir=tempfile.mkdtemp())  # doctest: +ELLIPSIS
      Building digits in .../digits/1.0.0 from local files (no download)
      >>> len(test), test[0]["image"].shape, int(test[0]["label"])
      (355, (8, 8, 1), 5)
    """
    dataset_spec = spec(name, data_dir=data_dir)
    data_dir = resolve_data_dir(data_dir)
    builder = tfds.builder(name, data_dir=data_dir, try_gcs=False, file_format=builders.FORMAT)
    if dataset_spec.local:
        _build_once(builder)
    else:
        _check_prepared(builder, data_dir, dataset_spec.prepare_command)
    # `builder.as_data_source` reads prepared files only, whereas `tfds.data_source` may start a
    # download: that must never happen here.
    return builder.as_data_source(split=split, file_format=builders.FORMAT)


def folder_spec(name: str, data_dir: str | os.PathLike | None) -> DatasetSpec | None:
    """The spec of the image folder dataset `name` prepared in `data_dir`, else None.

    `python -m pcjax.data.prepare folder` stores what the spec needs beyond TFDS's own dataset info
    (model input shape, augmentation, per-channel statistics) in the dataset's metadata.
    """
    data_dir = resolve_data_dir(data_dir)
    try:
        # A name that no TFDS builder registers is read from its prepared files, if any.
        builder = tfds.builder(name, data_dir=data_dir, try_gcs=False, file_format=builders.FORMAT)
    except (tfds.core.DatasetNotFoundError, ValueError):
        return None
    stored = (builder.info.metadata or {}).get(FOLDER_METADATA)
    if stored is None:
        return None
    return DatasetSpec(
        name=name, num_classes=builder.info.features["label"].num_classes,
        image_shape=tuple(stored["image_shape"]),
        splits={split: info.num_examples for split, info in builder.info.splits.items()},
        mean=tuple(stored["mean"]), std=tuple(stored["std"]), pixel_scale=255.0,
        augmentation=stored["augmentation"], local=False,
        prepare_command=(
            f"python -m pcjax.data.prepare folder --dir {stored['dir']} --name {name} "
            "--data_dir={data_dir}"
        ),
    )


def _build_once(builder: builders.OfflineBuilder) -> None:
    """Builds a local dataset unless already built.

    TFDS writes into a temporary directory and renames it when complete, so a reader never sees a
    partial dataset; the lock keeps threads of this process from building twice.
    """
    with _BUILD_LOCK:
        if builders.is_prepared(builder):
            return
        try:
            builder.build()
        except OSError:
            # Another process sharing the data dir (multi-host) finished the same build first and
            # our final rename onto its directory failed: its data are identical, use them.
            if not builders.is_prepared(builder):
                raise


def _check_prepared(builder: tfds.core.DatasetBuilder, data_dir: str, prepare_command: str) -> None:
    command = prepare_command.format(data_dir=data_dir)
    if not builders.is_prepared(builder):
        raise DatasetNotFoundError(
            f"Dataset {builder.name!r} is not prepared: no TFDS data in {builder.data_dir} "
            f"(data dir {data_dir}; set it with data_dir=... or TFDS_DATA_DIR). "
            f"Prepare it with: {command}"
        )
    if builders.FORMAT not in builder.info.available_file_formats():
        stored = builder.info.file_format.value
        raise DatasetNotFoundError(
            f"Dataset {builder.name!r} in {builder.data_dir} is stored as {stored}, but "
            "random access needs array_record. Convert it with: tfds convert_format "
            f"--dataset_version_dir={builder.data_dir} --out_file_format=array_record, "
            f"or prepare it again with: {command}"
        )
