"""Plots and videos of runs and models."""

from __future__ import annotations

import io
import os
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


def write_video(path: str, frames, fps: int = 30) -> None:
    """Write uint8 frames ``[T, H, W, 3]`` as a video (``.mp4``) or an animated ``.gif``, atomically."""
    import imageio.v3 as iio
    import numpy as np

    frames = np.asarray(frames, np.uint8)
    extension = os.path.splitext(path)[1].lower()
    if extension == ".gif":
        data = iio.imwrite("<bytes>", frames, extension=".gif", duration=1000 / fps, loop=0)
    else:
        data = iio.imwrite("<bytes>", frames, extension=extension, fps=fps, macro_block_size=1)
    atomic_write(path, lambda handle: handle.write(data))
