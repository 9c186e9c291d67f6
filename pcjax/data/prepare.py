r"""Prepare CIFAR-10/100 and image folders as TFDS array_record datasets, without TensorFlow.

  python -m pcjax.data.prepare cifar100 [--archive cifar-100-python.tar.gz] [--data_dir DIR]
  python -m pcjax.data.prepare folder --dir DIR --name NAME [--image_size S] [--test_dir DIR
      [--test_labels FILE]] [--data_dir DIR]

The data dir defaults to `pcjax.data.default_data_dir()` (TFDS_DATA_DIR, else
~/tensorflow_datasets).

CIFAR. The input is the official python-version archive (cifar-10-python.tar.gz or
cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html), downloaded into
<data_dir>/downloads/ when --archive is not given. The output is what `tfds build cifar10|cifar100`
writes: TFDS's own builder (same name, version 3.0.2, splits train 50,000 / test 10,000, features
"id", "image" (32, 32, 3) PNG, "label" (and "coarse_label" for CIFAR-100) with the archive's class
names, examples keyed by their index so TFDS stores them in the same order). TFDS's builder reads
the binary-version archive instead; the pixels and labels are the same data.

Folders. --dir holds one subfolder of images per class (ImageNet's train/ layout); class k is the
k-th subfolder name in sorted order. Images are decoded with Pillow and converted to RGB; with
--image_size S each is center-cropped to a square and resized to S x S (bicubic). The "test" split
comes from --test_dir: class subfolders with the same names, or a flat folder of images with
--test_labels, a text file of lines "<file name> <class subfolder name>" (ImageNet's val/ with
such a list). Without --test_dir, one image of every five of each class (in sorted file order) is
held out as "test". Images are stored encoded (PNG; JPEG and PNG files that need no change are
stored as they are), so reading them needs Pillow only. The dataset's spec is stored with it: model
input S x S with the CIFAR augmentation (pad 4, random crop, flip) when S < 224, else (or without
--image_size) ImageNet's 224 x 224 crops; the normalization is the per-channel mean and standard
deviation of the training images, so `--config.dataset=NAME --config.data_dir=DIR` trains on it.

Every error is one line naming the file at fault (`PrepareError`; the command line prints it and
exits with status 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import os
import pickle
import re
import shutil
import sys
import tarfile
import types
import urllib.request
import zlib
from collections.abc import Iterator, Sequence

import numpy as np
from absl import logging
import tensorflow_datasets as tfds
from PIL import Image, ImageOps
from tensorflow_datasets.image_classification import cifar

from pcjax.data import augment, builders, sources, specs

_FORMAT = tfds.core.FileFormat.ARRAY_RECORD
_DOWNLOAD_CONFIG = tfds.download.DownloadConfig(
    try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_CIFAR_SIDE = 32


class PrepareError(ValueError):
    """Input that cannot be prepared; the message is one line naming the file at fault."""


# ----------------------------------------------------------------------------- CIFAR archives


@dataclasses.dataclass(frozen=True)
class CifarArchive:
    """Layout of an official CIFAR python-version archive.

    Attributes:
      url: where the official archive is downloaded from.
      md5: its checksum (the one torchvision checks as well).
      train_members, test_members: pickled batches, paths inside the archive.
      meta_member: the pickled class names.
      labels: TFDS feature -> (key of the labels in a batch, key of the class names in the meta).
    """

    url: str
    md5: str
    train_members: tuple[str, ...]
    test_members: tuple[str, ...]
    meta_member: str
    labels: dict[str, tuple[bytes, bytes]]

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[1]


CIFAR = {
    "cifar10": CifarArchive(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train_members=tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)),
        test_members=("cifar-10-batches-py/test_batch",),
        meta_member="cifar-10-batches-py/batches.meta",
        labels={"label": (b"labels", b"label_names")},
    ),
    "cifar100": CifarArchive(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_members=("cifar-100-python/train",),
        test_members=("cifar-100-python/test",),
        meta_member="cifar-100-python/meta",
        labels={
            "label": (b"fine_labels", b"fine_label_names"),
            "coarse_label": (b"coarse_labels", b"coarse_label_names"),
        },
    ),
}


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts of lists and NumPy arrays, nothing that could run code from the archive."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def read_cifar(archive: str, layout: CifarArchive, num_classes: dict[str, int]):
    """Reads and checks an official CIFAR python-version archive, without extracting it.

    Args:
      archive: path of the .tar.gz.
      layout: `CIFAR[name]`.
      num_classes: TFDS feature -> its number of classes ({"label": 100, "coarse_label": 20}).

    Returns:
      (splits, names): splits["train" | "test"] = {"image": uint8 (N, 32, 32, 3), feature: int64
      (N,) per label feature}, in archive order; names[feature] = the class names.

    Raises:
      PrepareError: not a readable tar archive, a missing member, or a member that is not a
        pickled dict with the official keys, dtypes and shapes.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            meta = _load_member(archive, tar, layout.meta_member)
            names = {}
            for feature, (_, names_key) in layout.labels.items():
                names[feature] = _class_names(archive, layout.meta_member, meta, names_key)
                if len(names[feature]) != num_classes[feature]:
                    raise PrepareError(
                        f"{archive}: {layout.meta_member}[{names_key!r}] has "
                        f"{len(names[feature])} names, expected {num_classes[feature]}"
                    )
            splits = {
                split: _read_batches(archive, tar, members, layout, num_classes)
                for split, members in (
                    ("train", layout.train_members),
                    ("test", layout.test_members),
                )
            }
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        detail = " ".join(str(e).split()) or type(e).__name__
        raise PrepareError(
            f"{archive}: not a readable {layout.filename} archive (damaged, truncated or not a "
            f"tar.gz: {detail})"
        ) from None
    return splits, names


def _load_member(archive: str, tar: tarfile.TarFile, member: str):
    try:
        file = tar.extractfile(member)
    except KeyError:
        raise PrepareError(
            f"{archive}: no member {member} (is it the official {member.split('/')[0]} "
            "python-version archive?)"
        ) from None
    if file is None:
        raise PrepareError(f"{archive}: member {member} is not a regular file")
    try:
        content = _ArraysOnly(file, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise PrepareError(f"{archive}: member {member} is not a CIFAR pickle ({e})") from None
    if not isinstance(content, dict):
        raise PrepareError(
            f"{archive}: member {member} holds a {type(content).__name__}, expected a dict"
        )
    return content


def _class_names(archive: str, member: str, meta: dict, key: bytes) -> list[str]:
    names = meta.get(key)
    if not isinstance(names, list) or not all(isinstance(n, bytes) for n in names):
        raise PrepareError(f"{archive}: {member} has no list of class names {key!r}")
    return [n.decode() for n in names]


def _read_batches(archive, tar, members, layout: CifarArchive, num_classes) -> dict:
    parts = []
    for member in members:
        batch = _load_member(archive, tar, member)
        data = batch.get(b"data")
        if not (
            isinstance(data, np.ndarray)
            and data.dtype == np.uint8
            and data.ndim == 2
            and data.shape[1] == 3 * _CIFAR_SIDE**2
        ):
            got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else repr(type(data))
            raise PrepareError(
                f"{archive}: {member}[b'data'] must be uint8 of shape (N, 3072), got {got}"
            )
        # Each row holds the red, green and blue 32x32 planes, each row-major.
        part = {"image": data.reshape(-1, 3, _CIFAR_SIDE, _CIFAR_SIDE).transpose(0, 2, 3, 1)}
        for feature, (key, _) in layout.labels.items():
            labels = np.asarray(batch.get(key, []))
            if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
                raise PrepareError(
                    f"{archive}: {member}[{key!r}] must hold {len(data)} integer labels, got "
                    f"shape {labels.shape}"
                )
            if len(labels) and not 0 <= labels.min() <= labels.max() < num_classes[feature]:
                raise PrepareError(
                    f"{archive}: {member}[{key!r}] has labels outside [0, {num_classes[feature]})"
                )
            part[feature] = labels.astype(np.int64)
        parts.append(part)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _png(image: np.ndarray | Image.Image) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, "PNG")
    return buffer.getvalue()


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
        splits, names = read_cifar(
            self._archive, layout, {f: features[f].num_classes for f in layout.labels}
        )
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
            record["image"] = _png(image)
            yield index, record


class Cifar10(_FromArchive, cifar.Cifar10, skip_registration=True):
    """cifar10 from cifar-10-python.tar.gz."""


class Cifar100(_FromArchive, cifar.Cifar100, skip_registration=True):
    """cifar100 from cifar-100-python.tar.gz."""


_CIFAR_BUILDERS = {"cifar10": Cifar10, "cifar100": Cifar100}


def download(name: str, data_dir: str) -> str:
    """The official archive of `name`, downloaded into <data_dir>/downloads/ unless already there.

    Raises:
      PrepareError: offline or the download failed (the message says to pass --archive), or the
        downloaded file's checksum is wrong.
    """
    layout = CIFAR[name]
    target = os.path.join(data_dir, "downloads", layout.filename)
    if os.path.exists(target):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    partial = target + ".part"
    try:
        with urllib.request.urlopen(layout.url, timeout=60) as response, open(partial, "wb") as f:
            shutil.copyfileobj(response, f)
    except OSError as e:
        reason = getattr(e, "reason", e)
        raise PrepareError(
            f"cannot download {layout.url} ({reason}); on a machine without internet, copy "
            f"{layout.filename} from one that has it and pass --archive PATH"
        ) from None
    with open(partial, "rb") as f:
        md5 = hashlib.file_digest(f, "md5").hexdigest()
    if md5 != layout.md5:
        os.remove(partial)
        raise PrepareError(f"{layout.url}: downloaded file has md5 {md5}, expected {layout.md5}")
    os.replace(partial, target)
    return target


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
    prepared = tfds.builder(name, data_dir=data_dir, try_gcs=False, file_format=_FORMAT)
    if not prepared.is_prepared():
        builder = _CIFAR_BUILDERS[name](
            archive=archive or download(name, data_dir), data_dir=data_dir, file_format=_FORMAT
        )
        builder.download_and_prepare(download_config=_DOWNLOAD_CONFIG)
    return os.fspath(prepared.data_dir)


# ----------------------------------------------------------------------------- image folders


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


def _images_in(folder: str) -> list[str]:
    """Image files directly or deeper under `folder`, sorted, hidden files left out."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            os.path.join(root, f)
            for f in sorted(files)
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return found


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
    folders = sorted(
        d
        for d in os.listdir(root)
        if not d.startswith(".") and os.path.isdir(os.path.join(root, d))
    )
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
            raise PrepareError(
                f"{os.path.join(root, folder)}: not a class of the training folder"
            )
        images = _images_in(os.path.join(root, folder))
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
    images = {os.path.relpath(p, root) for p in _images_in(root)}
    unlisted = sorted(images - set(listed))
    if unlisted:
        raise PrepareError(f"{labels_file}: no label for {os.path.join(root, unlisted[0])}")
    ids = tuple(sorted(listed))
    paths = tuple(os.path.join(root, i) for i in ids)
    return FolderSplit(paths, np.asarray([listed[i] for i in ids], np.int64), ids)


def load_image(path: str, image_size: int | None) -> tuple[bytes, np.ndarray]:
    """One image file -> (the bytes to store, its RGB pixels uint8 (H, W, 3) as stored).

    Raises:
      PrepareError: Pillow cannot decode the file.
    """
    try:
        with Image.open(path) as image:
            file_format = image.format
            rgb = image.convert("RGB")
            unchanged = image.mode == "RGB" and file_format in ("JPEG", "PNG")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise PrepareError(f"{path}: not a readable image ({e})") from None
    if image_size:
        rgb = ImageOps.fit(rgb, (image_size, image_size), Image.BICUBIC)
    elif unchanged:
        with open(path, "rb") as f:
            return f.read(), np.asarray(rgb)
    return _png(rgb), np.asarray(rgb)


class _Folder(builders.OfflineBuilder, skip_registration=True):
    """An image folder as a TFDS dataset; `folder_builder` names it."""

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
            features=tfds.features.FeaturesDict(
                {
                    "id": tfds.features.Text(),
                    "image": tfds.features.Image(shape=(side, side, 3)),
                    "label": tfds.features.ClassLabel(names=self._class_names),
                }
            ),
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


def prepare_folder(
    directory: str,
    name: str,
    *,
    image_size: int | None = None,
    test_dir: str | None = None,
    test_labels: str | None = None,
    data_dir: str | None = None,
) -> str:
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
        taken, or a dataset of that name is already prepared in the data dir.
    """
    _check_name(name)
    if image_size is not None and image_size < 1:
        raise PrepareError(f"--image_size must be a positive number of pixels, got {image_size}")
    if test_labels is not None and test_dir is None:
        raise PrepareError("--test_labels needs --test_dir (the folder of the images it lists)")
    directory = os.path.abspath(directory)
    class_names, train = scan_class_folders(directory)
    if test_dir is None:
        is_test = builders.stratified_holdout(train.labels)
        splits = {"train": train.select(~is_test), "test": train.select(is_test)}
    elif test_labels is not None:
        splits = {"train": train, "test": read_label_file(test_dir, test_labels, class_names)}
    else:
        splits = {"train": train, "test": scan_class_folders(test_dir, class_names)[1]}
    data_dir = sources.resolve_data_dir(data_dir)
    builder_cls = types.new_class(
        "Folder", (_Folder,), {"skip_registration": True}, lambda ns: ns.update(name=name)
    )
    builder = builder_cls(
        source_dir=directory,
        class_names=class_names,
        splits=splits,
        image_size=image_size,
        data_dir=data_dir,
        file_format=_FORMAT,
    )
    if builder.is_prepared():
        raise PrepareError(
            f"{builder.data_dir}: dataset {name!r} is already prepared; remove that directory to "
            "prepare it again"
        )
    builder.download_and_prepare(download_config=_DOWNLOAD_CONFIG)
    return os.fspath(builder.data_dir)


# ----------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pcjax.data.prepare",
        description="Prepare CIFAR or an image folder as a TFDS array_record dataset.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name in CIFAR:
        cifar_parser = commands.add_parser(name, help=f"{name} from {CIFAR[name].filename}")
        cifar_parser.add_argument(
            "--archive", help=f"{CIFAR[name].filename} (default: download it)"
        )
    folder = commands.add_parser("folder", help="a folder of class subfolders of images")
    folder.add_argument("--dir", required=True, help="one subfolder of images per class")
    folder.add_argument("--name", required=True, help="dataset name for --config.dataset")
    folder.add_argument("--image_size", type=int, help="resize to S x S (default: keep)")
    folder.add_argument("--test_dir", help="test images (default: hold out 1 in 5 per class)")
    folder.add_argument("--test_labels", help="'<file name> <class>' lines for a flat --test_dir")
    for sub in commands.choices.values():
        sub.add_argument("--data_dir", help="TFDS data dir (default: $TFDS_DATA_DIR or "
                         "~/tensorflow_datasets)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        if args.command == "folder":
            where = prepare_folder(
                args.dir,
                args.name,
                image_size=args.image_size,
                test_dir=args.test_dir,
                test_labels=args.test_labels,
                data_dir=args.data_dir,
            )
        else:
            where = prepare_cifar(args.command, archive=args.archive, data_dir=args.data_dir)
    except PrepareError as e:
        sys.exit(f"error: {e}")
    name = args.name if args.command == "folder" else args.command
    data_dir = sources.resolve_data_dir(args.data_dir)
    print(f"{name} is ready in {where}; train with --config.dataset={name} "
          f"--config.data_dir={data_dir}")


if __name__ == "__main__":
    # TFDS warns about the half-written dataset directory it is about to fill; errors stay one line.
    logging.set_verbosity(logging.ERROR)
    main()
