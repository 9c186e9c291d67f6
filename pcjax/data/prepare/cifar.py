"""CIFAR-10/100 as TFDS's own datasets, written from the python-version archive.

The output is what `tfds build cifar10|cifar100` writes: TFDS's own builder (same name, version
3.0.2, splits train 50,000 / test 10,000, features "id", "image" (32, 32, 3) PNG, "label" (and
"coarse_label" for CIFAR-100) with the archive's class names, examples keyed by their index so TFDS
stores them in the same order). TFDS's builder reads the binary-version archive instead; the
pixels and labels are the same data.
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import cifar

from pcjax.data import builders, sources
from pcjax.data.prepare.archive import CIFAR, read_cifar
from pcjax.data.prepare.download import download
from pcjax.data.prepare.errors import PrepareError
from pcjax.data.prepare.images import png


class _FromArchive(builders.OfflineBuilder, skip_registration=True):
    """TFDS's own CIFAR builder (its `_info`: features, version, description) fed from the
    python-version archive instead of the binary one, which it would download with TensorFlow."""

    def __init__(self, *, archive: str, **kwargs):
        self._archive = archive
        super().__init__(**kwargs)

    def _split_generators(self, dl_manager):
        del dl_manager  # The archive is read in place.
        features = self.info.features
        layout = CIFAR[self.name]
        num_classes = {f: features[f].num_classes for f in layout.labels}
        splits, names = read_cifar(self._archive, layout, num_classes)
        for feature, label_names in names.items():
            features[feature].names = label_names
        return {
            split: self._generate_examples(f"{split}_", arrays) for split, arrays in splits.items()
        }

    def _generate_examples(self, split_prefix, arrays):
        # As TFDS's builder: the index is the key (it fixes the stored order), "id" names it.
        for index, image in enumerate(arrays["image"]):
            record = {f: int(arrays[f][index]) for f in CIFAR[self.name].labels}
            record["id"] = f"{split_prefix}{index:05d}"
            # Encoded with Pillow here: TFDS encodes NumPy images with TensorFlow.
            record["image"] = png(image)
            yield index, record


class Cifar10(_FromArchive, cifar.Cifar10, skip_registration=True):
    """cifar10 from cifar-10-python.tar.gz."""


class Cifar100(_FromArchive, cifar.Cifar100, skip_registration=True):
    """cifar100 from cifar-100-python.tar.gz."""


_CIFAR_BUILDERS = {"cifar10": Cifar10, "cifar100": Cifar100}


def prepare_cifar(name: str, *, archive: str | None = None, data_dir: str | None = None) -> str:
    """Writes TFDS `name` ("cifar10" or "cifar100") into the data dir; returns its directory.

    Args:
      name: "cifar10" or "cifar100".
      archive: the official python-version .tar.gz; None downloads it.
      data_dir: the TFDS data dir (default `pcjax.data.default_data_dir()`).

    An already prepared dataset is kept as it is.
    """
    if name not in CIFAR:
        raise PrepareError(f"unknown CIFAR dataset {name!r}; expected one of {tuple(CIFAR)}")
    data_dir = sources.resolve_data_dir(data_dir)
    if archive is not None and not os.path.isfile(archive):
        raise PrepareError(f"{archive}: no such file (--archive)")
    # TFDS's registered builder is the one that reads the dataset: ask it whether it is there.
    formats = {"data_dir": data_dir, "file_format": builders.FORMAT}
    prepared = tfds.builder(name, try_gcs=False, **formats)
    if not builders.is_prepared(prepared):
        _CIFAR_BUILDERS[name](archive=archive or download(name, data_dir), **formats).build()
    return os.fspath(prepared.data_dir)
