"""Plots and videos of runs and models."""

from __future__ import annotations

import io
from collections.abc import Sequence

from bayes_planet.files import atomic_write


def plot_learning_curve(records: Sequence[dict], path: str, title: str = "", random_return: float | None = None):
    """PNG of episode returns against env steps: training episodes (with exploration noise) and evaluation
    episodes (mean and min-max over the evaluation episodes), and the random policy's mean return."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4), dpi=100)
    train = [r for r in records if r["kind"] == "episode"]
    evals = [r for r in records if r["kind"] == "eval"]
    if train:
        axis.plot([r["step"] for r in train], [r["return"] for r in train], ".", alpha=0.5, label="train episodes")
    if evals:
        steps = [r["step"] for r in evals]
        axis.plot(steps, [r["return"] for r in evals], "o-", label="evaluation (mean)")
        axis.fill_between(steps, [r["return_min"] for r in evals], [r["return_max"] for r in evals], alpha=0.2)
    if random_return is not None:
        axis.axhline(random_return, color="gray", linestyle="--", label="random policy")
    axis.set_xlabel("environment steps")
    axis.set_ylabel("episode return")
    axis.set_title(title)
    axis.legend(loc="best")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
