"""Reads ``torch.save`` files with the standard library and NumPy, never running their code.

A ``.pth`` file is a pickle whose tensors point at storages (flat typed buffers) kept beside it:

* zip (torch >= 1.6): ``<name>/data.pkl`` is the pickle, ``<name>/data/<key>`` the bytes of
  storage ``key`` in the writer's byte order (``<name>/byteorder``; little when absent);
* legacy (``torch.save(..., _use_new_zipfile_serialization=False)``, torch < 1.6): five pickles
  in a row (the magic number, the format version 1001, the writer's ``sys_info``, the object,
  the sorted storage keys), then for each key an 8-byte element count and the bytes, both
  little-endian.

A tensor is pickled as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``,
a strided view of a storage; it is read as a NumPy array copied out of that view.

The unpickler resolves only the globals a checkpoint of tensors needs (``OrderedDict``, the
tensor and parameter rebuilders, the storage types, ``torch.Size`` and ``argparse.Namespace``)
and refuses any other before anything is called, so a hostile file runs none of its code.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import io
import os
import pickle
import sys
import zipfile
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

# torch's storage types (the global named in each persistent id) -> element type.
_STORAGES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "UntypedStorage": np.uint8,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_VERSION = 1001
_ZIP_MAGIC = b"PK\x03\x04"
# What a damaged or foreign file makes the unpickler, zipfile or NumPy raise.
_DAMAGE = (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, TypeError, KeyError,
           IndexError, AttributeError, OverflowError, RecursionError, MemoryError, OSError)


class PthError(ValueError):
    """The file is not a PyTorch checkpoint this reader accepts (damaged, foreign or hostile)."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Storage:
    key: str
    dtype: type
    numel: int


@dataclasses.dataclass(frozen=True, slots=True)
class _Tensor:
    """A pickled tensor, resolved once the bytes of every storage are read."""

    storage: _Storage
    offset: int
    size: tuple
    stride: tuple

    def array(self, buffers: dict[str, np.ndarray]) -> np.ndarray:
        """A copy of the view ``buffers[key][offset + sum(index * stride)]`` of shape `size`."""
        buffer = buffers[self.storage.key]
        numbers = (self.offset, *self.size, *self.stride)
        well_formed = all(type(n) is int and n >= 0 for n in numbers)
        if not well_formed or len(self.size) != len(self.stride):
            raise PthError(f"a tensor view with offset {self.offset}, size {self.size} and "
                           f"stride {self.stride} is malformed")
        if 0 in self.size:
            return np.zeros(self.size, buffer.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= buffer.size:  # as_strided does not check: it would read past the buffer
            raise PthError(f"a tensor view reaches element {last} of storage {self.storage.key}, "
                           f"which has {buffer.size}")
        strides = [s * buffer.itemsize for s in self.stride]
        view = np.lib.stride_tricks.as_strided(buffer[self.offset:], self.size, strides)
        return view.copy()


class _Unpickler(pickle.Unpickler):
    """Resolves the globals of a tensor checkpoint and refuses every other one.

    The rebuilders are bound methods and ``Namespace`` a fresh subclass per file: a pickle can set
    attributes on what it is handed (BUILD), and must not change anything beyond this read.
    """

    def __init__(self, file: BinaryIO):
        super().__init__(file)
        self.storages: dict[str, _Storage] = {}
        self._namespace = type("Namespace", (argparse.Namespace,), {})

    def find_class(self, module: str, name: str) -> Any:
        allowed = {
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): self._rebuild_parameter,
            ("torch", "Size"): tuple,
            ("argparse", "Namespace"): self._namespace,
        }
        if (module, name) in allowed:
            return allowed[module, name]
        if module in ("torch", "torch.storage") and name in _STORAGES:
            return name  # a string: nothing to call or change
        raise PthError(f"refuses global {module}.{name} (reads only tensors, storages, "
                       "OrderedDict, torch.Size and argparse.Namespace; nothing was run)")

    def persistent_load(self, pid: Any) -> _Storage:
        # ("storage", type, key, location, numel), plus a view (always None since torch 0.4)
        # in the legacy format; the location (cpu, cuda:0, ...) does not matter here.
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise PthError(f"unknown persistent id {str(pid)[:80]}")
        kind, key, numel = pid[1], pid[2], pid[4]
        if kind not in _STORAGES or not isinstance(key, str) or type(numel) is not int:
            raise PthError(f"malformed storage reference {str(pid)[:80]}")
        if len(pid) == 6 and pid[5] is not None:
            raise PthError(f"storage {key} is a storage view (torch < 0.4): not supported")
        storage = self.storages.setdefault(key, _Storage(key, _STORAGES[kind], numel))
        if storage != _Storage(key, _STORAGES[kind], numel):
            raise PthError(f"storage {key} is referenced with two types or sizes")
        return storage

    def _rebuild_tensor(self, storage, offset, size, stride, *rest) -> _Tensor:
        # _rebuild_tensor_v2's rest: requires_grad, backward_hooks, metadata (neg/conj bits).
        if not isinstance(storage, _Storage):
            raise PthError(f"a tensor is built on a {type(storage).__name__}, not a storage")
        if len(rest) > 2 and rest[2] and any(rest[2].values()):
            raise PthError(f"a tensor of storage {storage.key} has metadata {rest[2]}")
        return _Tensor(storage, offset, tuple(size), tuple(stride))

    def _rebuild_parameter(self, data, requires_grad, backward_hooks) -> Any:
        del requires_grad, backward_hooks
        return data


def _from_bytes(data: bytes, dtype: type, byteorder: str) -> np.ndarray:
    array = np.frombuffer(data, dtype)
    if byteorder != sys.byteorder and array.itemsize > 1:
        array = array.view(f"u{array.itemsize}").byteswap().view(dtype)
    return array


def _read_zip(file: BinaryIO) -> tuple[Any, dict[str, np.ndarray]]:
    with zipfile.ZipFile(file) as archive:
        names = set(archive.namelist())
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise PthError("a zip archive without one <name>/data.pkl: not a torch.save file")
        prefix = pickles[0].removesuffix("data.pkl")
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = archive.read(prefix + "byteorder").decode()
        if byteorder not in ("little", "big"):
            raise PthError(f"unknown byte order {byteorder[:20]!r}")
        unpickler = _Unpickler(io.BytesIO(archive.read(pickles[0])))
        obj = unpickler.load()
        buffers = {}
        for key, storage in unpickler.storages.items():
            name = f"{prefix}data/{key}"
            if name not in names:
                raise PthError(f"storage {key} has no record {name}")
            nbytes = storage.numel * np.dtype(storage.dtype).itemsize
            if archive.getinfo(name).file_size != nbytes:
                raise PthError(f"record {name} holds {archive.getinfo(name).file_size} bytes; "
                               f"storage {key} needs {nbytes}")
            buffers[key] = _from_bytes(archive.read(name), storage.dtype, byteorder)
    return obj, buffers


def _read_exactly(file: BinaryIO, size: int, nbytes: int, what: str) -> bytes:
    left = size - file.tell()
    if nbytes > left:  # checked first: a damaged count must not allocate its bytes
        raise PthError(f"truncated: {what} needs {nbytes} bytes, {left} are left")
    return file.read(nbytes)


def _read_legacy(file: BinaryIO, size: int) -> tuple[Any, dict[str, np.ndarray]]:
    try:
        magic = _Unpickler(file).load()
    except PthError:
        raise
    except _DAMAGE:
        magic = None
    if type(magic) is not int or magic != _LEGACY_MAGIC:
        raise PthError("not a PyTorch checkpoint (neither a zip archive nor a legacy "
                       "torch.save file)")
    version = _Unpickler(file).load()
    if version != _LEGACY_VERSION:
        raise PthError(f"legacy format version {str(version)[:20]}, expected {_LEGACY_VERSION}")
    _Unpickler(file).load()  # sys_info: the writer's byte order; storages are little-endian
    unpickler = _Unpickler(file)
    obj = unpickler.load()
    keys = _Unpickler(file).load()
    if not isinstance(keys, list) or sorted(keys) != sorted(unpickler.storages):
        raise PthError("the storage key list does not match the storages the object uses")
    buffers = {}
    for key in keys:
        storage = unpickler.storages[key]
        count = int.from_bytes(_read_exactly(file, size, 8, f"storage {key}'s count"), "little")
        if count != storage.numel:
            raise PthError(f"storage {key} holds {count} elements; the object uses {storage.numel}")
        nbytes = count * np.dtype(storage.dtype).itemsize
        data = _read_exactly(file, size, nbytes, f"storage {key}")
        buffers[key] = _from_bytes(data, storage.dtype, "little")
    return obj, buffers


def _resolve(obj: Any, buffers: dict[str, np.ndarray]) -> Any:
    """`obj` with every tensor replaced by its array (dicts, lists, namespaces in place)."""
    if isinstance(obj, _Tensor):
        return obj.array(buffers)
    if isinstance(obj, tuple):
        return tuple(_resolve(item, buffers) for item in obj)
    if isinstance(obj, list):
        obj[:] = [_resolve(item, buffers) for item in obj]
    elif isinstance(obj, dict):
        for key, value in obj.items():
            obj[key] = _resolve(value, buffers)
    elif isinstance(obj, argparse.Namespace):
        _resolve(vars(obj), buffers)
    return obj


def read_pth(path: str) -> Any:
    """The object ``torch.save`` wrote to `path`, every tensor a NumPy array.

    Tensors come back as owned, C-contiguous arrays in their storage's type (float64, float32,
    float16, ``ml_dtypes.bfloat16``, int64, ..., bool) and shape; a ``torch.nn.Parameter`` as its
    data. Containers, numbers, strings and ``argparse.Namespace`` come back as themselves.

    Raises:
      FileNotFoundError: no file at `path`.
      PthError: anything else, in one line naming `path`: an empty, truncated, damaged or
        foreign file, or a pickle that names a global other than the few a tensor checkpoint
        needs (refused before anything in the file is called).

    Examples:
      >>> import os, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "empty.pth")
      >>> open(path, "wb").close()
      >>> try:
      ...     read_pth(path)
      ... except PthError as e:
      ...     print(str(e).removeprefix(path))
      : empty file, not a PyTorch checkpoint
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size == 0:
                raise PthError("empty file, not a PyTorch checkpoint")
            is_zip = file.read(4) == _ZIP_MAGIC
            file.seek(0)
            obj, buffers = _read_zip(file) if is_zip else _read_legacy(file, size)
            return _resolve(obj, buffers)
    except PthError as e:
        raise PthError(f"{path}: {e}") from None
    except _DAMAGE as e:
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        what = ("a truncated or damaged zip archive" if isinstance(e, zipfile.BadZipFile)
                else "not a readable PyTorch checkpoint")
        raise PthError(f"{path}: {what} ({reason})") from None
