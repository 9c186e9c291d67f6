"""An image folder (one subfolder of images per class) as a TFDS dataset with its own spec.

Class k is the k-th subfolder name in sorted order. Images are decoded with Pillow and converted to
RGB; with `image_size` S (--image_size) each is center-cropped to a square and resized to S x S
(bicubic). The "test" split comes from `test_dir`: class subfolders with the same names, or a flat
folder of images with `test_labels`, a text file of lines "<file name> <class subfolder name>"
(ImageNet's val/ with such a list). Without `test_dir`, one image of every five of each class (in
sorted file order) is held out as "test". Images are stored encoded (PNG; JPEG and PNG files that
need no change are stored as they are), so reading them needs Pillow only. The dataset's spec is
stored with it: model input S x S with the CIFAR augmentation (pad 4, random crop, flip) when
S < 224, else (or without `image_size`) ImageNet's 224 x 224 crops; the normalization is the
per-channel mean and standard deviation of the training images.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from pcjax.data import augment, builders, sources, specs
from pcjax.data.prepare.errors import PrepareError
from pcjax.data.prepare.images import IMAGE_EXTENSIONS, images_in, load_image


@dataclasses.dataclass(frozen=True)
class FolderSplit:
    """Images of one split: paths (absolute), their labels, their ids (paths under the root)."""

    paths: tuple[str, ...]
    labels: np.ndarray
    ids: tuple[str, ...]

    def select(self, mask: np.ndarray) -> FolderSplit:
        keep = np.flatnonzero(mask)
        return FolderSplit(
            tuple(self.paths[i] for i in keep), self.labels[keep], tuple(self.ids[i] for i in keep)
        )


def scan_class_folders(root: str, class_names: Sequence[str] | None = None):
    """Images of the class subfolders of `root`.

    Args:
      root: a directory with one subfolder of images per class.
      class_names: the classes of the training split; None: the sorted subfolders of `root`.

    Returns:
      (class_names, FolderSplit).

    Raises:
      PrepareError: `root` is missing, has fewer than 2 class subfolders (training), a class
        subfolder without images, or a subfolder that is not a training class.
    """
    if not os.path.isdir(root):
        raise PrepareError(f"{root}: no such directory")
    folders = sorted(d for d in os.listdir(root)
                     if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
    if class_names is None:
        if len(folders) < 2:
            raise PrepareError(
                f"{root}: found {len(folders)} class subfolder(s), expected at least 2 (one "
                "subfolder of images per class)"
            )
        class_names = folders
    index = {name: i for i, name in enumerate(class_names)}
    paths, labels = [], []
    for folder in folders:
        if folder not in index:
            raise PrepareError(f"{os.path.join(root, folder)}: not a class of the training folder")
        images = images_in(os.path.join(root, folder))
        if not images:
            raise PrepareError(
                f"{os.path.join(root, folder)}: no images (expected {', '.join(IMAGE_EXTENSIONS)})"
            )
        paths += images
        labels += [index[folder]] * len(images)
    ids = tuple(os.path.relpath(p, root) for p in paths)
    return list(class_names), FolderSplit(tuple(paths), np.asarray(labels, np.int64), ids)


def read_label_file(root: str, labels_file: str, class_names: Sequence[str]) -> FolderSplit:
    """Images of a flat folder `root` labelled by `labels_file`: lines "<file name> <class>".

    Raises:
      PrepareError: a malformed line, an unknown class, a listed file that is not in `root`, or
        an image of `root` the file does not list.
    """
    index = {name: i for i, name in enumerate(class_names)}
    listed = {}
    with open(labels_file) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.split()
            where = f"{labels_file}:{number}"
            if len(fields) != 2:
                raise PrepareError(f"{where}: expected '<file name> <class>', got {line.strip()!r}")
            file, label = fields
            if label not in index:
                raise PrepareError(f"{where}: {label!r} is not a class of the training folder")
            if not os.path.isfile(os.path.join(root, file)):
                raise PrepareError(f"{where}: no image {os.path.join(root, file)}")
            listed[file] = index[label]
    images = {os.path.relpath(p, root) for p in images_in(root)}
    unlisted = sorted(images - set(listed))
    if unlisted:
        raise PrepareError(f"{labels_file}: no label for {os.path.join(root, unlisted[0])}")
    ids = tuple(sorted(listed))
    paths = tuple(os.path.join(root, i) for i in ids)
    return FolderSplit(paths, np.asarray([listed[i] for i in ids], np.int64), ids)


class _Folder(builders.OfflineBuilder, skip_registration=True):
    """An image folder as a TFDS dataset; `prepare_folder` names it."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Prepared by pcjax.data.prepare folder."}

    def __init__(self, *, source_dir: str, class_names, splits, image_size, **kwargs):
        self._source_dir = source_dir
        self._class_names = class_names
        self._splits = splits
        self._image_size = image_size
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        side = self._image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Image folder {self._source_dir}, prepared by pcjax.data.prepare.",
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                "image": tfds.features.Image(shape=(side, side, 3)),
                "label": tfds.features.ClassLabel(names=self._class_names),
            }),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The images are read in place.
        return {
            split: self._generate_examples(images, statistics=split == "train")
            for split, images in self._splits.items()
        }

    def _generate_examples(self, images: FolderSplit, statistics: bool) -> Iterator:
        # Per-channel sums of pixels / 255 and of their squares, for the spec's mean and std.
        sums, count = np.zeros((2, 3)), 0
        for path, label, image_id in zip(images.paths, images.labels, images.ids):
            encoded, pixels = load_image(path, self._image_size)
            if statistics:
                values = pixels.reshape(-1, 3) / 255.0
                sums += (values.sum(0), np.square(values).sum(0))
                count += len(values)
            yield image_id, {"id": image_id, "image": encoded, "label": int(label)}
        if statistics:
            mean = sums[0] / count
            std = np.sqrt(np.maximum(sums[1] / count - mean**2, 0.0))
            small = self._image_size and self._image_size < augment.IMAGENET_SIZE
            side = self._image_size if small else augment.IMAGENET_SIZE
            self.info.metadata[sources.FOLDER_METADATA] = {
                "dir": self._source_dir,
                "image_shape": [side, side, 3],
                "augmentation": "cifar" if small else "imagenet",
                "mean": mean.tolist(),
                # A constant channel would divide by 0 when normalizing.
                "std": np.where(std > 0, std, 1.0).tolist(),
            }


_NAME = re.compile(r"[a-z][a-z0-9_]*")


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise PrepareError(
            f"--name {name!r}: expected lowercase letters, digits and underscores, starting with "
            "a letter (a TFDS dataset name)"
        )
    try:
        tfds.builder_cls(name)
    except tfds.core.DatasetNotFoundError:
        registered = name in specs.names()
    else:
        registered = True
    if registered:
        raise PrepareError(
            f"--name {name!r} is a dataset TFDS or pcjax already defines; choose another name"
        )


def prepare_folder(directory: str, name: str, *, image_size: int | None = None,
                   test_dir: str | None = None, test_labels: str | None = None,
                   data_dir: str | None = None) -> str:
    """Writes the image folder `directory` as TFDS dataset `name`; returns its directory.

    Args:
      directory: one subfolder of images per class.
      name: the dataset's name (`--config.dataset=name`).
      image_size: S: images center-cropped to a square and resized to S x S; None: kept as they
        are (the ImageNet crops bring them to 224 x 224 when read).
      test_dir: the "test" split: class subfolders, or a flat folder with `test_labels`; None:
        every fifth image of each class of `directory` is held out as "test".
      test_labels: lines "<file name> <class subfolder name>" for a flat `test_dir`.
      data_dir: the TFDS data dir (default `pcjax.data.default_data_dir()`).

    Raises:
      PrepareError: see `scan_class_folders`, `read_label_file`, `load_image`; or the name is
        taken, the test split would be empty, or a dataset of that name is already prepared in
        the data dir.
    """
    _check_name(name)
    if image_size is not None and image_size < 1:
        raise PrepareError(f"--image_size must be a positive number of pixels, got {image_size}")
    if test_labels is not None and test_dir is None:
        raise PrepareError("--test_labels needs --test_dir (the folder of the images it lists)")
    if test_labels is not None and not os.path.isfile(test_labels):
        raise PrepareError(f"{test_labels}: no such file (--test_labels)")
    directory = os.path.abspath(directory)
    class_names, train = scan_class_folders(directory)
    if test_dir is None:
        is_test = builders.stratified_holdout(train.labels)
        splits = {"train": train.select(~is_test), "test": train.select(is_test)}
    elif test_labels is not None:
        splits = {"train": train, "test": read_label_file(test_dir, test_labels, class_names)}
    else:
        splits = {"train": train, "test": scan_class_folders(test_dir, class_names)[1]}
    if not splits["test"].paths:  # TFDS cannot write an empty split.
        raise PrepareError(
            f"{directory}: every class has fewer than {builders.HOLDOUT_EVERY} images, so none is "
            "held out for the test split; add images or pass --test_dir"
            if test_dir is None
            else f"{test_dir}: no test images (class subfolders named as those of --dir, or the "
            "images --test_labels lists)"
        )
    data_dir = sources.resolve_data_dir(data_dir)
    builder_cls = types.new_class(
        "Folder", (_Folder,), {"skip_registration": True}, lambda ns: ns.update(name=name)
    )
    builder = builder_cls(source_dir=directory, class_names=class_names, splits=splits,
                          image_size=image_size, data_dir=data_dir, file_format=builders.FORMAT)
    if builders.is_prepared(builder):
        raise PrepareError(
            f"{builder.data_dir}: dataset {name!r} is already prepared; remove that directory to "
            "prepare it again"
        )
    builder.build()
    return os.fspath(builder.data_dir)
