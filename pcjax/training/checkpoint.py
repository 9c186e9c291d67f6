"""orbax checkpoints: the periodic train-state checkpoints of a phase, and the exported teacher.

Layout of a workdir:
    teacher/checkpoints/<step>/   teacher train state (resume of the teacher phase), last K kept
    teacher/model/                the trained teacher's variables, written once, then read-only
    student/checkpoints/<step>/   student train state (params, BatchNorm stats, projection head,
                                                                optimizer state, step), last K kept
orbax writes each checkpoint into a temporary directory and renames it when complete, so a process
killed mid-save leaves the previous checkpoints intact and the partial one invisible.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


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
