"""Run outputs: metrics as JSON lines and TensorBoard events, the resolved config, a progress bar.

Only process 0 writes. TensorBoard events are written by tensorboardX (no TensorFlow needed), one
run per phase (``tensorboard/<phase>``), so that resuming one phase purges only its own events.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import ml_collections
import tqdm
from tensorboardX import SummaryWriter


def _is_writer() -> bool:
    return jax.process_index() == 0


def saved_config(workdir: str) -> dict | None:
    """The config.json a previous run wrote into `workdir`, or None for a new workdir."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes the resolved config to ``<workdir>/config.json`` and returns the path."""
    path = os.path.join(workdir, "config.json")
    if _is_writer():
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    return path


class MetricWriter:
    """Appends ``{"phase", "step", "split", name: value...}`` records to ``<workdir>/metrics.jsonl``
    and the same scalars to TensorBoard under ``<workdir>/tensorboard/<phase>`` as
    ``<phase>/<split>/<name>``.

    A resumed phase calls `rewind` first, so that both hold each step of a phase once.
    """

    def __init__(self, workdir: str):
        self.enabled = _is_writer()
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tensorboard_dir = os.path.join(workdir, "tensorboard")
        self._boards: dict[str, SummaryWriter] = {}
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)

    def rewind(self, phase: str, step: int) -> None:
        """Forgets the records of `phase` after `step`, the step it resumes from.

        They are dropped from metrics.jsonl (so is a line cut short by a killed process), and the
        phase's TensorBoard run is reopened with ``purge_step=step + 1``, which makes TensorBoard
        discard that run's older events from that step on.
        """
        if not self.enabled:
            return
        if os.path.exists(self.path):
            with open(self.path) as f:
                lines = f.readlines()
            kept = [line for line in lines if _keeps(line, phase, step)]
            if kept != lines:
                with open(self.path + ".tmp", "w") as f:
                    f.writelines(kept)
                os.replace(self.path + ".tmp", self.path)
        if phase in self._boards:
            self._boards.pop(phase).close()
        self._boards[phase] = SummaryWriter(
            os.path.join(self._tensorboard_dir, phase), purge_step=step + 1
        )

    def write(self, phase: str, split: str, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in scalars.items()}
        record = {"phase": phase, "split": split, "step": int(step), "time": time.time(), **scalars}
        with open(self.path, "a") as f:
            f.write(
                json.dumps(
                    {
                        k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
                        for k, v in record.items()
                    }
                )
                + "\n"
            )
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


def _keeps(line: str, phase: str, step: int) -> bool:
    """Whether a metrics.jsonl line stays when `phase` resumes from `step`."""
    if not line.endswith("\n"):
        return False  # Cut short by a killed process.
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return False
    return record.get("phase") != phase or record.get("step", 0) <= step


class Progress:
    """A tqdm bar over a phase's steps showing steps/s and the last logged loss."""

    def __init__(self, phase: str, total: int, initial: int):
        self._bar = tqdm.tqdm(
            total=total,
            initial=initial,
            desc=phase,
            unit="step",
            disable=not _is_writer(),
            dynamic_ncols=True,
            mininterval=1.0,
        )

    def update(self, n: int = 1, loss: float | None = None) -> None:
        if loss is not None:
            self._bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()
