"""Preemption: SIGTERM or SIGINT stops training at a step every process agrees on.

Cloud TPU VMs and SLURM send SIGTERM some seconds before they reclaim a machine; Ctrl-C sends
SIGINT. Either one, received by any process, makes every process save a checkpoint at the same
step and stop with `Preempted`, so rerunning the same command resumes where the run stopped.

Multi-process runs use JAX's preemption sync manager (started by ``jax.distributed.initialize``):
its SIGTERM handler tells the coordination service, which picks the next step all processes can
reach, and ``multihost_utils.reached_preemption_sync_point`` is True there on every process. A
SIGINT is forwarded to it as a SIGTERM. A single process needs no agreement: a signal flag is
read at the next step boundary.

Outside the step loops (start-up, compilation, the teacher export, the final evaluation) the
handlers of `install` raise `Interrupted`. A signal whose exception was lost (Python ignores an
exception raised inside a garbage-collector callback) stays recorded: the next phase stops at
its first step and `check` raises it, so an interrupted run never ends as a success. In a
multi-process run JAX's notifier holds SIGTERM there too; it writes the notice to the
coordination service, where `check_pod` finds it between the stages of the run.
"""

from __future__ import annotations

import os
import signal
import threading

import jax
import numpy as np
from jax._src import distributed  # The coordination service's client: no public accessor.
from jax.experimental import multihost_utils

# The key JAX's preemption sync manager writes to the coordination service when any process
# receives a preemption notice (SIGTERM in a multi-process run).
_NOTICE_KEY = "RECEIVED_PREEMPTION_NOTICE"


class Preempted(Exception):
    """Training stopped on a preemption signal after saving a checkpoint.

    ``exit_code`` is 128 + the signal number this process received (SIGTERM when another process
    received it), the shell's convention for a process ended by a signal.
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM outside a phase's step loop; ``exit_code`` is 128 + the signal number.

    Examples:
        >>> error = Interrupted(signal.SIGTERM)
        >>> error.exit_code, error.reason, isinstance(error, KeyboardInterrupt)
        (143, 'terminated by SIGTERM', True)
    """

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        self.reason = ("interrupted" if signum == signal.SIGINT
                       else f"terminated by {signal.Signals(signum).name}")
        super().__init__(self.reason)


_installed = False
_received: list[int] = []


def _interrupt(signum, frame):
    _received.append(signum)
    raise Interrupted(signum)


def install(received=()) -> None:
    """Makes SIGINT and SIGTERM raise `Interrupted` (in the main thread) from now on.

    Args:
        received: signal numbers recorded before this could be called (by handlers that only
            record, installed before pcjax is imported); if there is one, raises it now.
    """
    global _installed
    _received.extend(received)
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _interrupt)
        _installed = True
    check()


def received() -> int | None:
    """The first signal recorded by the handlers of `install`, or None.

    Examples:
        >>> received() is None  # Nothing received in this process.
        True
    """
    return _received[0] if _received else None


def check() -> None:
    """Raises `Interrupted` if the handlers of `install` recorded a signal.

    Examples:
        >>> check()  # Nothing received: returns.
    """
    if _received:
        raise Interrupted(_received[0])


def _notice_received() -> bool:
    client = distributed.global_state.client
    if client is None:
        return False
    try:
        return client.key_value_try_get(_NOTICE_KEY) is not None
    except jax.errors.JaxRuntimeError as error:
        if str(error).startswith("NOT_FOUND"):  # No process received a notice.
            return False
        raise  # The coordination service failed: not a notice, and not to be hidden.


def check_pod() -> None:
    """`check`, and in a multi-process run, raises `Interrupted` (SIGTERM) on every process if any
    of them received a preemption notice.

    A collective: every process calls it at the same point of the run. Each process reads the
    notice from the coordination service (written there within milliseconds of the signal) and
    the processes agree on whether any one saw it, so either all of them stop or none does.

    Examples:
        >>> check_pod()  # One process, nothing received: returns.
    """
    check()
    if jax.process_count() > 1:
        seen = multihost_utils.process_allgather(np.int32(_notice_received()))
        if np.any(seen):
            raise Interrupted(signal.SIGTERM)


class PreemptionWatch:
    """A context manager that catches SIGTERM and SIGINT while a phase trains.

    ``reached(step)`` is called once per step, with increasing steps, by every process; it is
    True on every process at the same step once any of them received a signal (at the first
    step if `install`'s handlers recorded one before). The previous handlers are restored on
    exit, and a signal that arrived after the last step is left recorded for `check`.
    """

    def __init__(self):
        self.signum = received()
        self._synced = jax.process_count() > 1
        self._previous = {}

    def _record(self, signum, frame):
        self.signum = self.signum or signum
        if self._synced and signum == signal.SIGINT:
            os.kill(os.getpid(), signal.SIGTERM)

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self  # Python delivers signals to the main thread only.
        # Multi-process: SIGTERM belongs to JAX's preemption notifier; a Python handler would
        # replace it.
        signums = (signal.SIGINT,) if self._synced else (signal.SIGINT, signal.SIGTERM)
        for signum in signums:
            self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if _installed and self.signum is not None and not _received:
            _received.append(self.signum)
        return False

    def reached(self, step: int) -> bool:
        if self._synced:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.signum is not None

    def error(self, phase: str, step: int, directory: str) -> Preempted:
        """The exception that ends a run stopped at `step`, naming the checkpoint."""
        signum = self.signum or signal.SIGTERM
        return Preempted(f"{phase}: stopped by {signal.Signals(signum).name} after saving the "
                         f"checkpoint of step {step} in {directory}; rerun the same command to "
                         "resume", signum)
