"""orbax checkpoints: the periodic train-state checkpoints of a phase, and the exported teacher.

Layout of a workdir:
    teacher/checkpoints/<step>/   teacher train state (resume of the teacher phase), last K kept
    teacher/model/                the trained teacher's variables, written once, then read-only
    student/checkpoints/<step>/   student train state (params, BatchNorm stats, projection head,
                                                                optimizer state, step), last K kept
orbax writes each checkpoint into a temporary directory and renames it when complete, so a process
killed mid-save leaves the previous checkpoints intact and the partial one invisible. A complete
checkpoint damaged later (a file truncated or lost) is moved aside to ``<step>.damaged`` when an
older one restores; a damaged teacher export is rebuilt by the trainer.
"""

from __future__ import annotations

import os
import shutil

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils


class CheckpointError(RuntimeError):
    """No checkpoint of a phase restores; the message names the directory and what to delete."""


def describe(error: Exception) -> str:
    """The exception's type and the first line of its message: a restore failure in one line."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200] if lines else ''}"


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


class Checkpointer:
    """Periodic train-state checkpoints of one phase, resumed from the latest.

    Args:
        directory: where the step directories live (created on first save).
        max_to_keep: number of most recent checkpoints kept.
    """

    def __init__(self, directory: str, *, max_to_keep: int):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True
            ),
        )

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state) -> None:
        """Saves `state` as `step` (asynchronously; the arrays are copied before this returns)."""
        self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

    def restore(self, step: int, target):
        """Restores `step` into the structure, dtypes and shardings of `target`."""
        return self._manager.restore(step, args=ocp.args.StandardRestore(target))

    def restore_latest(self, target):
        """Restores the newest checkpoint that restores into `target`; None if there is none.

        Newer checkpoints that fail to restore are moved aside (`set_aside`) with one warning line
        each. If none restores, nothing is moved and `CheckpointError` says which directory to
        delete to start the phase over.
        """
        failures = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                state = self.restore(step, target)
            except Exception as error:  # noqa: BLE001 - any failure means "try the older one".
                failures.append((step, error))
                continue
            for bad_step, error in failures:
                damaged = set_aside(os.path.join(self.directory, str(bad_step)))
                logging.warning(
                    "checkpoint step %d in %s does not restore (%s); moved it to %s and resumed "
                    "from step %d",
                    bad_step, self.directory, describe(error), damaged, step,
                )
            if failures:
                self._manager.reload()
            return state
        if not failures:
            return None
        step, error = failures[0]
        raise CheckpointError(
            f"no checkpoint in {self.directory} restores (step {step}: {describe(error)}); "
            f"delete {self.directory} to start this phase over"
        ) from error

    def wait(self) -> None:
        """Blocks until every pending save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def save_model(path: str, variables) -> None:
    """Writes a model's variables once to `path` (atomically; an existing export is an error)."""
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.abspath(path), variables)
    checkpointer.wait_until_finished()


def model_exists(path: str) -> bool:
    """Whether a complete export lives at `path` (a partial write stays in a temporary dir)."""
    return os.path.isdir(path) and ocp.utils.is_checkpoint_finalized(os.path.abspath(path))


def load_model(path: str, target):
    """Reads the variables exported at `path` into the structure and shardings of `target`."""
    checkpointer = ocp.StandardCheckpointer()
    return checkpointer.restore(os.path.abspath(path), target)
