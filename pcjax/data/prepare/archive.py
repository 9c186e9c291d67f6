"""Reading an official CIFAR python-version archive in place, through a restricted unpickler.

The archives are cifar-10-python.tar.gz and cifar-100-python.tar.gz from
https://www.cs.toronto.edu/~kriz/cifar.html: tar.gz files of pickled dicts of lists and NumPy
arrays. They are read without being extracted, and unpickled by an unpickler that builds nothing
but those, so a damaged or hostile archive cannot run code.
"""

from __future__ import annotations

import dataclasses
import pickle
import tarfile
import zlib

import numpy as np

from pcjax.data.prepare.errors import PrepareError

_CIFAR_SIDE = 32


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
            splits = {split: _read_batches(archive, tar, members, layout, num_classes)
                      for split, members in [("train", layout.train_members),
                                             ("test", layout.test_members)]}
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
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                and data.shape[1] == 3 * _CIFAR_SIDE**2):
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
