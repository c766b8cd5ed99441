"""Run logs: one JSON object per line in ``metrics.jsonl``, mirrored to TensorBoard."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping


class Logger:
    """Append records ``{"kind": ..., "step": env_steps, name: value, ...}`` to ``<logdir>/metrics.jsonl``
    (flushed at once, so a crash loses nothing written) and scalars to TensorBoard under ``kind/name``."""

    def __init__(self, logdir: str):
        from tensorboardX import SummaryWriter

        self.path = os.path.join(logdir, "metrics.jsonl")
        self._writer = SummaryWriter(os.path.join(logdir, "tensorboard"))

    def write(self, kind: str, step: int, values: Mapping[str, float]) -> None:
        record = {"kind": kind, "step": int(step), **{k: float(v) for k, v in values.items()}}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        for name, value in values.items():
            self._writer.add_scalar(f"{kind}/{name}", float(value), int(step))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


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
