"""Run outputs: metrics as JSON lines and TensorBoard events, the resolved config, a progress bar.

Only process 0 writes. TensorBoard events are written by tensorboardX (no TensorFlow needed).
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
    and the same scalars to TensorBoard under ``<workdir>/tensorboard`` as
    ``<phase>/<split>/<name>``.
    """

    def __init__(self, workdir: str):
        self.enabled = _is_writer()
        self.path = os.path.join(workdir, "metrics.jsonl")
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

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
        for name, value in scalars.items():
            self._tb.add_scalar(f"{phase}/{split}/{name}", value, int(step))
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()


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
