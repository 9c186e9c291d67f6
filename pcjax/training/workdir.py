"""One run per workdir: an exclusive lock held while a run uses it.

The lock is ``flock`` on ``<workdir>/.lock``, which the operating system releases when the holding
process ends however it ends, so a workdir left by a killed run is taken over without a stale
lock to delete. The file holds the holder's process id, for the message that refuses a second
run. The processes of one multi-process run are one run: process 0 takes the lock and every
process learns the outcome from it. On a filesystem without file locks the run goes on unlocked,
with a warning.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from pcjax.training.config import ConfigError

LOCK_FILE = ".lock"
# flock errors of filesystems without locks (some network filesystems).
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)

log = logging.getLogger(__name__)


class WorkdirBusyError(ConfigError):
    """Another run holds the workdir; the message names its process id."""


class WorkdirLock:
    """A context manager holding the lock of `workdir` (created if missing).

    Raises `WorkdirBusyError` on entry, on every process, if another run holds it.

    Examples:
        >>> import tempfile
        >>> workdir = tempfile.mkdtemp()
        >>> with WorkdirLock(workdir):
        ...     try:
        ...         WorkdirLock(workdir).__enter__()
        ...     except WorkdirBusyError as error:
        ...         print(str(error).split(" (")[0] == f"the workdir {workdir} is in use")
        True
        >>> with WorkdirLock(workdir):  # Released on exit.
        ...     pass
    """

    def __init__(self, workdir: str):
        self.workdir = os.path.abspath(workdir)
        self._file = None

    def _acquire(self) -> int:
        """0 once this process holds the lock, else the holder's pid (-1 if unknown)."""
        os.makedirs(self.workdir, exist_ok=True)
        # Held open while the run holds the lock: closing the file would release it.
        f = open(os.path.join(self.workdir, LOCK_FILE), "a+")  # noqa: SIM115
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in _UNSUPPORTED:
                f.close()
                log.warning("%s does not support file locks (%s); running without the lock",
                            self.workdir, os.strerror(error.errno))
                return 0
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                f.close()
                raise
            f.seek(0)
            holder = f.read().strip()
            f.close()
            return int(holder) if holder.isdigit() else -1
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        return 0

    def __enter__(self):
        holder = self._acquire() if jax.process_index() == 0 else 0
        if jax.process_count() > 1:
            holder = int(multihost_utils.broadcast_one_to_all(np.int32(holder)))
        if holder:
            self.__exit__()
            pid = f"process {holder}" if holder > 0 else "another process"
            raise WorkdirBusyError(f"the workdir {self.workdir} is in use ({pid} holds "
                                   f"{LOCK_FILE}); wait for that run to end or use another "
                                   "--workdir")
        return self

    def __exit__(self, *exc):
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        return False
