"""orbax checkpoints that prove their integrity: the train-state checkpoints of a phase and the
exported teacher.

Layout of a workdir:
    teacher/checkpoints/<step>/   teacher train state (resume of the teacher phase), last K kept
    teacher/model/                the trained teacher's variables, written once, then read-only
    student/checkpoints/<step>/   student train state (params, BatchNorm stats, projection head,
                                                                optimizer state, step), last K kept
Each checkpoint holds two orbax items: ``default``, the arrays, and ``digest``, the SHA-256 of each
array's bytes computed from the arrays being saved (`digest`). A restore recomputes the digests
from the arrays it read and compares (`verify`), so a flipped bit, a truncated or lost file, or a
missing item is a damaged checkpoint rather than silently wrong weights.

orbax writes each checkpoint into a temporary directory and renames it when complete, so a process
killed mid-save leaves the previous checkpoints intact and the partial one invisible. A complete
checkpoint damaged later is moved aside to ``<step>.damaged`` when an older one restores; a
damaged teacher export is rebuilt by the trainer.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import os
import shutil
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

# The item names inside a checkpoint directory.
ARRAYS, DIGEST = "default", "digest"

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No checkpoint of a phase restores; the message names the directory and what to delete."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint's arrays differ from the digest saved with them, or it has no digest."""


def describe(error: Exception) -> str:
    """The exception's type and the first line of its message: a restore failure in one line.

    Examples:
        >>> describe(ValueError("bad read. See full TensorStore details: <bound method>"))
        'ValueError: bad read.'
    """
    lines = str(error).strip().splitlines()
    first = lines[0].split(" See full TensorStore details")[0] if lines else ""
    return f"{type(error).__name__}: {first[:200]}"


def set_aside(path: str) -> str:
    """Renames a damaged checkpoint to ``<path>.damaged`` (replacing an older one); returns it."""
    damaged = path.rstrip(os.sep) + ".damaged"
    if jax.process_index() == 0:
        shutil.rmtree(damaged, ignore_errors=True)
        os.rename(path, damaged)
    multihost_utils.sync_global_devices(f"pcjax set aside {path}")
    return damaged


def abstract_like(tree, sharding):
    """`jax.ShapeDtypeStruct`s of `tree` placed with `sharding`: the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _host_array(x) -> np.ndarray | None:
    """`x` on the host, or None when this process does not hold all of it."""
    if isinstance(x, jax.Array):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        if not x.is_fully_addressable:
            if not x.is_fully_replicated:
                return None  # Sharded over processes: no process sees the whole array.
            x = x.addressable_shards[0].data
    return np.ascontiguousarray(np.asarray(x))


def digest(tree) -> dict[str, str]:
    """SHA-256 (hex) of each array leaf of `tree`, keyed by the leaf's path.

    The hash covers the dtype, the shape and the bytes (row-major). Leaves sharded over several
    processes are left out: no process can hash them whole.

    Examples:
        >>> import numpy as np
        >>> d = digest({"w": np.zeros((2, 3), np.float32)})
        >>> list(d), len(d["['w']"])
        (["['w']"], 64)
        >>> d == digest({"w": np.zeros((3, 2), np.float32)})
        False
    """
    hashes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        array = _host_array(leaf)
        if array is None:
            continue
        h = hashlib.sha256(f"{array.dtype.str} {array.shape}".encode())
        h.update(array.reshape(-1).view(np.uint8))
        hashes[jax.tree_util.keystr(path)] = h.hexdigest()
    return hashes


def verify(tree, expected: dict[str, str], where: str) -> None:
    """Raises `CorruptCheckpointError` if an array of `tree` does not match its digest.

    Args:
        tree: the restored arrays.
        expected: `digest` of the arrays when they were saved.
        where: the checkpoint's path, for the message.

    Examples:
        >>> import numpy as np
        >>> w = {"w": np.arange(4.0)}
        >>> verify(w, digest(w), "ckpt")
        >>> try:
        ...     verify({"w": np.arange(4.0) + 1}, digest(w), "ckpt")
        ... except CorruptCheckpointError as error:
        ...     print(error)
        ckpt: 1 of 1 arrays differ from the digest saved with them (first: ['w'])
    """
    actual = digest(tree)
    bad = [key for key, value in actual.items() if expected.get(key) != value]
    if bad:
        raise CorruptCheckpointError(f"{where}: {len(bad)} of {len(actual)} arrays differ from "
                                     f"the digest saved with them (first: {bad[0]})")


def _all_processes_agree(ok: bool) -> bool:
    """Whether `ok` holds on every process (a collective when there are several)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


@contextlib.contextmanager
def _quiet_abandoned_reads():
    """Drops the "Exception ignored in <coroutine ...>" tracebacks of a failed restore.

    When one array fails to read, orbax abandons the reads of the others; Python reports each
    abandoned coroutine with a traceback when it is collected. The failure itself is reported
    by the caller, in one line.
    """
    previous = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        gc.collect()
        sys.unraisablehook = previous


def _read(path: str, target):
    """The arrays saved at `path` (a checkpoint directory), checked against their digest."""
    if not os.path.isdir(os.path.join(path, DIGEST)):
        raise CorruptCheckpointError(f"{path} has no digest of its arrays")
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as reader:
        restored = reader.restore(path, args=ocp.args.Composite(
            **{ARRAYS: ocp.args.StandardRestore(target), DIGEST: ocp.args.JsonRestore()}))
    verify(restored[ARRAYS], restored[DIGEST], path)
    return restored[ARRAYS]


def _read_everywhere(path: str, target):
    """`_read` on every process; the arrays, or the error (the same verdict on every process)."""
    error = None
    with _quiet_abandoned_reads():
        try:
            arrays = _read(path, target)
        except Exception as e:  # noqa: BLE001 - any failure means the checkpoint is damaged.
            error = e
    if not _all_processes_agree(error is None):
        return None, error or CorruptCheckpointError(f"{path} does not restore on another process")
    return arrays, None


def _composite(tree) -> ocp.args.Composite:
    return ocp.args.Composite(**{ARRAYS: ocp.args.StandardSave(tree),
                                 DIGEST: ocp.args.JsonSave(digest(tree))})


class Checkpointer:
    """Periodic train-state checkpoints of one phase, resumed from the latest that is intact.

    Args:
        directory: where the step directories live (created on first save).
        max_to_keep: number of most recent checkpoints kept.
    """

    def __init__(self, directory: str, *, max_to_keep: int):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True))

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state) -> None:
        """Saves `state` and its digest as `step` (asynchronously; the arrays are copied and
        hashed before this returns)."""
        self._manager.save(step, args=_composite(state), force=True)

    def restore(self, step: int, target):
        """Restores `step` into the structure, dtypes and shardings of `target`, verified.

        Raises `CorruptCheckpointError` if the arrays read differ from their digest.
        """
        arrays, error = _read_everywhere(os.path.join(self.directory, str(step)), target)
        if error is not None:
            raise error
        return arrays

    def restore_latest(self, target):
        """Restores the newest checkpoint that restores into `target` intact; None if none.

        Each step is read by a checkpointer of its own, so a damaged step (a file changed, lost,
        unreadable, or the step directory emptied) cannot spoil the reads of the older ones.
        Newer checkpoints that fail are moved aside (`set_aside`) with one warning line each.
        If none restores, nothing is moved and `CheckpointError` says which directory to
        delete to start the phase over.
        """
        failures = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            state, error = _read_everywhere(os.path.join(self.directory, str(step)), target)
            if error is not None:
                failures.append((step, error))
                continue
            for bad_step, bad in failures:
                damaged = set_aside(os.path.join(self.directory, str(bad_step)))
                log.warning("checkpoint step %d in %s does not restore (%s); moved it to %s and "
                            "resumed from step %d", bad_step, self.directory, describe(bad),
                            damaged, step)
            if failures:
                self._manager.reload()
            return state
        if not failures:
            return None
        step, error = failures[0]
        raise CheckpointError(f"no checkpoint in {self.directory} restores (step {step}: "
                              f"{describe(error)}); delete {self.directory} to start this phase "
                              "over") from error

    def wait(self) -> None:
        """Blocks until every pending save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def save_model(path: str, variables) -> None:
    """Writes a model's variables and their digest once to `path` (atomically; an existing
    export is an error)."""
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as writer:
        writer.save(os.path.abspath(path), args=_composite(variables))


def model_exists(path: str) -> bool:
    """Whether a complete export lives at `path` (a partial write stays in a temporary dir)."""
    return os.path.isdir(path) and ocp.utils.is_checkpoint_finalized(os.path.abspath(path))


def load_model(path: str, target):
    """Reads the variables exported at `path` into the structure and shardings of `target`.

    Raises `CorruptCheckpointError` if they differ from their digest (or it is missing), and
    orbax's error if they do not read at all.
    """
    arrays, error = _read_everywhere(os.path.abspath(path), target)
    if error is not None:
        raise error
    return arrays
