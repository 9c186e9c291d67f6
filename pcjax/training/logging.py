"""Run outputs: metrics as JSON lines and TensorBoard events, the resolved config, a progress bar.

Only process 0 writes. TensorBoard events are written by tensorboardX (no TensorFlow needed), one
run per phase (``tensorboard/<phase>``), so that resuming one phase purges only its own events.
`quiet_library_output` keeps the libraries' own log records and background tracebacks (orbax,
absl, tensorstore) out of the terminal, where a failure is reported in one line.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
import warnings

import jax
import ml_collections
import tqdm
from jax.experimental import multihost_utils
from tensorboardX import SummaryWriter

from pcjax.training.config import ConfigError

def tracebacks_requested() -> bool:
    """Whether the environment variable PCJAX_TRACEBACK asks for full tracebacks ("1", "true" or
    "yes", any case; "0", "false", "no" and empty mean no).

    Examples:
        >>> import os
        >>> os.environ["PCJAX_TRACEBACK"] = "0"
        >>> tracebacks_requested()
        False
        >>> os.environ["PCJAX_TRACEBACK"] = "True"
        >>> tracebacks_requested()
        True
        >>> del os.environ["PCJAX_TRACEBACK"]
    """
    return os.environ.get("PCJAX_TRACEBACK", "").strip().lower() in ("1", "true", "yes")


class _OwnRecords(logging.Filter):
    """Passes the log records of pcjax and of the main script; drops the libraries' ones."""

    def __init__(self):
        super().__init__()
        self._package = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
        main = getattr(sys.modules.get("__main__"), "__file__", None)
        self._main = os.path.abspath(main) if main else None

    def filter(self, record: logging.LogRecord) -> bool:
        path = os.path.abspath(record.pathname)
        return path.startswith(self._package) or path == self._main


def _drop_background(hook):
    """`hook` (an excepthook) for the main thread; other threads' exceptions are dropped."""
    def quiet(*args):
        if threading.current_thread() is threading.main_thread():
            hook(*args)
    return quiet


def quiet_library_output() -> None:
    """Keeps library log records, warnings and background tracebacks out of the terminal.

    A failing save or restore makes orbax log errors with tracebacks from its threads and leaves
    coroutines whose collection prints more; the failure reaches the main thread as one
    exception, which the caller reports. Kept: pcjax's own log records (its warnings) and those
    of the main script. Call it once logging is set up (inside ``absl.app.run``).
    """
    own = _OwnRecords()
    for handler in logging.getLogger().handlers:
        handler.addFilter(own)
    warnings.filterwarnings("ignore", module=r"(orbax|absl|tensorstore)(\.|$)")
    sys.excepthook = _drop_background(sys.excepthook)
    threading.excepthook = lambda args: None
    sys.unraisablehook = lambda unraisable: None


def saved_config(workdir: str) -> dict | None:
    """The config.json a previous run wrote into `workdir`, or None for a new workdir.

    Raises `ConfigError` naming the file if it is not a JSON object (cut short, emptied, not
    UTF-8).
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    saved, cause = None, ""
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError.
        cause = f" ({str(error).splitlines()[0]})"
    if not isinstance(saved, dict):
        raise ConfigError(f"config: {path} is damaged: not the JSON object a run writes{cause}; "
                          "restore it, or use a new --workdir")
    return saved


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes the resolved config to ``<workdir>/config.json`` and returns the path.

    Called by every process after each has read the previous config.json (`saved_config`):
    process 0 rewrites the file only once all of them have, so none reads it half written.
    """
    path = os.path.join(workdir, "config.json")
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("pcjax config.json read")
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    return path


class MetricWriter:
    """Appends ``{"phase", "step", "split", name: value...}`` records to ``<workdir>/metrics.jsonl``
    and the same scalars to TensorBoard under ``<workdir>/tensorboard/<phase>`` as
    ``<phase>/<split>/<name>``.

    A resumed phase calls `rewind` first, so that both hold each step of a phase once (and
    metrics.jsonl each (phase, split, step) once, even after runs that overlapped).
    """

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tensorboard_dir = os.path.join(workdir, "tensorboard")
        self._boards: dict[str, SummaryWriter] = {}
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)

    def rewind(self, phase: str, step: int) -> None:
        """Forgets the records of `phase` after `step`, the step it resumes from.

        They are dropped from metrics.jsonl (so are a line cut short by a killed process, a line
        that is not UTF-8 JSON, and all but the last record of a repeated (phase, split, step)),
        and the phase's TensorBoard run is reopened with ``purge_step=step + 1``, which makes
        TensorBoard discard that run's older events from that step on.
        """
        if not self.enabled:
            return
        if os.path.exists(self.path):
            with open(self.path, "rb") as f:
                lines = f.readlines()
            kept = _kept_lines(lines, phase, step)
            if kept != lines:
                with open(self.path + ".tmp", "wb") as f:
                    f.writelines(kept)
                os.replace(self.path + ".tmp", self.path)
        if phase in self._boards:
            self._boards.pop(phase).close()
        self._boards[phase] = SummaryWriter(os.path.join(self._tensorboard_dir, phase),
                                            purge_step=step + 1)

    def write(self, phase: str, split: str, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in scalars.items()}
        record = {"phase": phase, "split": split, "step": int(step), "time": time.time(), **scalars}
        record = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
                  for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if phase not in self._boards:
            self._boards[phase] = SummaryWriter(os.path.join(self._tensorboard_dir, phase))
        board = self._boards[phase]
        for name, value in scalars.items():
            board.add_scalar(f"{phase}/{split}/{name}", value, int(step))
        board.flush()

    def close(self) -> None:
        for board in self._boards.values():
            board.close()
        self._boards.clear()


def _kept_lines(lines: list[bytes], phase: str, step: int) -> list[bytes]:
    """The metrics.jsonl lines that stay when `phase` resumes from `step`, in their order."""
    records = {}  # (phase, split, step) -> index of its last line.
    for i, line in enumerate(lines):
        if not line.endswith(b"\n"):
            continue  # Cut short by a killed process.
        try:
            record = json.loads(line.decode("utf-8"))
        except ValueError:  # Not UTF-8, or not JSON.
            continue
        if not isinstance(record, dict):
            continue
        if record.get("phase") == phase and record.get("step", 0) > step:
            continue
        records[(record.get("phase"), record.get("split"), record.get("step"))] = i
    return [lines[i] for i in sorted(records.values())]


class Progress:
    """A tqdm bar over a phase's steps showing steps/s and the last logged loss."""

    def __init__(self, phase: str, total: int, initial: int):
        self._bar = tqdm.tqdm(total=total, initial=initial, desc=phase, unit="step",
                              disable=jax.process_index() != 0, dynamic_ncols=True, mininterval=1.0)

    def update(self, n: int = 1, loss: float | None = None) -> None:
        if loss is not None:
            self._bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()
