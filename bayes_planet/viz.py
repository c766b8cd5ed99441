"""Plots and videos of runs and models."""

from __future__ import annotations

import io
import os
import warnings
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
    save_figure(figure, path)


def write_video(path: str, frames, fps: int = 30) -> None:
    """Write uint8 frames ``[T, H, W, 3]`` as a video (``.mp4``) or an animated ``.gif``, atomically."""
    import imageio.v3 as iio
    import numpy as np

    frames = np.asarray(frames, np.uint8)
    extension = os.path.splitext(path)[1].lower()
    if extension == ".gif":
        data = iio.imwrite("<bytes>", frames, extension=".gif", duration=1000 / fps, loop=0)
    else:
        with warnings.catch_warnings():
            # ffmpeg runs as a subprocess: fork followed at once by exec, which JAX's warning about forking a
            # multithreaded process does not concern
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
            data = iio.imwrite("<bytes>", frames, extension=extension, fps=fps, macro_block_size=1)
    atomic_write(path, lambda handle: handle.write(data))


CONTEXT_COLOR = (40, 200, 80)  # border of filtered (context) frames
IMAGINED_COLOR = (220, 50, 50)  # border of open-loop (imagined) frames
OPEN_LOOP_ROWS = ("truth", "prediction", "error", "sample_mean", "sample_std")


def heat_map(values, scale: float | None = None):
    """uint8 RGB ``[..., 3]`` of non-negative `values` ``[...]`` through matplotlib's viridis, 0 to `scale`
    (default: the maximum)."""
    import numpy as np
    from matplotlib import colormaps

    values = np.asarray(values, np.float32)
    scale = float(values.max()) if scale is None else scale
    rgb = colormaps["viridis"](np.clip(values / max(scale, 1e-8), 0.0, 1.0))[..., :3]
    return (rgb * 255).astype(np.uint8)


def open_loop_grid(images: dict, context: int):
    """Video frames ``[T, rows * 66, B * 66, 3]`` uint8 from `openloop.as_uint8`'s images: one row per kind
    (truth, prediction, error, and with weight samples their mean and per-pixel std as a heat map), one
    column per sequence; each tile has a 1-pixel border, green while filtering, red while imagining."""
    import numpy as np

    rows = [images[name] if name != "sample_std" else heat_map(images[name])
            for name in OPEN_LOOP_ROWS if name in images]
    stacked = np.stack(rows, 0)  # [R, B, T, H, W, 3]
    length = stacked.shape[2]
    colors = np.where((np.arange(length) < context)[:, None], CONTEXT_COLOR, IMAGINED_COLOR).astype(np.uint8)
    bordered = np.broadcast_to(colors[None, None, :, None, None, :],
                               (*stacked.shape[:3], stacked.shape[3] + 2, stacked.shape[4] + 2, 3)).copy()
    bordered[:, :, :, 1:-1, 1:-1] = stacked
    rows_, batch, _, height, width, _ = bordered.shape
    return bordered.transpose(2, 0, 3, 1, 4, 5).reshape(length, rows_ * height, batch * width, 3)


def open_loop_strip(images: dict, context: int, sequence: int = 0, stride: int = 5):
    """PNG-ready ``[rows * 66, n * 66, 3]``: one sequence's rows (as in `open_loop_grid`) every `stride`
    steps, the context frames all shown."""
    import numpy as np

    length = images["truth"].shape[1]
    steps = sorted(set(range(context)) | set(range(context, length, stride)))
    one = {name: value[sequence:sequence + 1, steps] for name, value in images.items()}
    grid = open_loop_grid(one, context=sum(s < context for s in steps))  # [n, R*66, 66, 3]
    return np.concatenate(list(grid), axis=1)


def plot_reward_predictions(result, path: str, title: str = "") -> None:
    """PNG: true reward against the posterior-mean prediction and the mean +- std band across weight
    samples, one panel per sequence, the end of the context marked."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    true, predicted, samples = (np.asarray(x) for x in (result.true_reward, result.reward, result.sample_rewards))
    batch, length = true.shape
    figure, axes = plt.subplots(1, batch, figsize=(3.2 * batch, 2.6), dpi=100, squeeze=False)
    steps = np.arange(length)
    for index, axis in enumerate(axes[0]):
        axis.plot(steps, true[index], "k-", label="true")
        axis.plot(steps, predicted[index], "C0-", label="mean weights")
        if samples.shape[0]:
            mean, std = samples[:, index].mean(0), samples[:, index].std(0)
            axis.fill_between(steps, mean - std, mean + std, color="C1", alpha=0.3,
                              label=f"{samples.shape[0]} weight samples, mean +- std")
        axis.axvline(result.context - 0.5, color="gray", linestyle="--")
        axis.set_xlabel("step (context | imagined)")
    axes[0][0].set_ylabel("reward")
    axes[0][0].legend(loc="best", fontsize=7)
    figure.suptitle(title)
    save_figure(figure, path)


def save_figure(figure, path: str) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


def write_png(path: str, image) -> None:
    """Write a uint8 image ``[H, W, 3]`` as PNG, atomically."""
    import imageio.v3 as iio

    data = iio.imwrite("<bytes>", image, extension=".png")
    atomic_write(path, lambda handle: handle.write(data))


def write_open_loop_report(result, directory: str, name: str, fps: int = 10) -> dict[str, str]:
    """Write `name`.gif, `name`.mp4 (the grid video), `name`.png (strip of the first sequence) and
    `name`-reward.png under `directory`; returns the paths by kind."""
    from bayes_planet.openloop import as_uint8

    os.makedirs(directory, exist_ok=True)
    images = as_uint8(result)
    frames = open_loop_grid(images, result.context)
    paths = {kind: os.path.join(directory, f"{name}.{kind}") for kind in ("gif", "mp4", "png")}
    paths["reward"] = os.path.join(directory, f"{name}-reward.png")
    write_video(paths["gif"], frames, fps)
    write_video(paths["mp4"], frames, fps)
    write_png(paths["png"], open_loop_strip(images, result.context))
    plot_reward_predictions(result, paths["reward"], name)
    return paths
