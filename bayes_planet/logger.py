"""Run logs: one JSON object per line in ``metrics.jsonl``, mirrored to TensorBoard."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping

import numpy as np

LOG = logging.getLogger(__name__)


def drop_torn_line(path: str) -> int:
    """Cut a last line that a crash left without its newline (a record never completed) from the file at
    `path`, so the next record starts on a line of its own; returns the bytes removed."""
    if not os.path.exists(path):
        return 0
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return 0
        block = min(size, 1 << 20)
        handle.seek(size - block)
        keep = size - block + handle.read(block).rfind(b"\n") + 1
        handle.truncate(keep)
    LOG.warning("dropped a torn last line (%d bytes, from an interrupted write) from %s", size - keep, path)
    return size - keep


class Logger:
    """Append records ``{"kind": ..., "step": env_steps, "wall_time": unix seconds, name: value or list, ...}``
    to ``<logdir>/metrics.jsonl`` (one whole record per line, flushed at once, so a crash loses nothing
    written) and scalars to TensorBoard under ``kind/name``. Nothing is created before the first record."""

    def __init__(self, logdir: str):
        self.logdir = logdir
        self.path = os.path.join(logdir, "metrics.jsonl")
        self._writer = None

    def write(self, kind: str, step: int, values: Mapping[str, float]) -> None:
        if self._writer is None:
            from tensorboardX import SummaryWriter

            drop_torn_line(self.path)
            self._writer = SummaryWriter(os.path.join(self.logdir, "tensorboard"))
        record = {"kind": kind, "step": int(step), "wall_time": time.time(),
                  **{k: float(v) if np.ndim(v) == 0 else [float(x) for x in np.ravel(v)] for k, v in values.items()}}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        for name, value in values.items():
            if np.ndim(value) == 0:  # lists (e.g. every evaluation return) go to metrics.jsonl only
                self._writer.add_scalar(f"{kind}/{name}", float(value), int(step))
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_metrics(logdir: str) -> list[dict]:
    """Every record of a run's ``metrics.jsonl`` (a torn last line, from a crash, is skipped)."""
    path = os.path.join(logdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as handle:
        for line in handle:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records
