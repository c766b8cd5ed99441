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


ROW_LABELS = {"truth": "truth", "prediction": "prediction", "error": "|error|", "sample_mean": "sample mean",
              "sample_std": "sample std"}
LABEL_WIDTH, HEADER_HEIGHT = 84, 16


def text_image(text: str, height: int, width: int, color=(0, 0, 0)):
    """uint8 ``[height, width, 3]``: `text` centred in `color` on white (matplotlib's renderer)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width / 100, height / 100), dpi=100)
    canvas = FigureCanvasAgg(figure)
    figure.text(0.5, 0.5, text, ha="center", va="center", fontsize=7, color=np.asarray(color) / 255)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:height, :width, :3].copy()


def label_open_loop_frames(grid, rows: Sequence[str], context: int):
    """`open_loop_grid`'s frames with a column naming each row on the left and, on top, the step and
    whether the model is filtering (context, green) or imagining (red): ``[T, 16 + H, 84 + W, 3]``."""
    import numpy as np

    length, height, width, _ = grid.shape
    tile = height // len(rows)
    column = np.concatenate([text_image(ROW_LABELS[name], tile, LABEL_WIDTH) for name in rows], axis=0)
    frames = np.full((length, HEADER_HEIGHT + height, LABEL_WIDTH + width, 3), 255, np.uint8)
    frames[:, HEADER_HEIGHT:, :LABEL_WIDTH] = column
    frames[:, HEADER_HEIGHT:, LABEL_WIDTH:] = grid
    for step in range(length):
        imagined = step >= context
        text = f"step {step + 1}: " + (f"imagined ({step + 1 - context} ahead)" if imagined else "context (filtered)")
        frames[step, :HEADER_HEIGHT] = text_image(text, HEADER_HEIGHT, LABEL_WIDTH + width,
                                                  IMAGINED_COLOR if imagined else CONTEXT_COLOR)
    return frames


def plot_open_loop_strip(images: dict, context: int, path: str, sequence: int = 0, stride: int = 5,
                         title: str = "") -> None:
    """PNG of one sequence: a row per kind (truth, prediction, |error|, and with weight samples their mean
    and per-pixel std), every context frame and every `stride`-th imagined one, step numbers on top, frame
    borders green (context) or red (imagined) with a legend, and a colour bar for the std map. The tiles
    are `open_loop_grid`'s, drawn as one image (one axis: a fraction of the time of an axis per tile)."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch

    length = images["truth"].shape[1]
    steps = sorted(set(range(context)) | set(range(context, length, stride)))
    rows = [name for name in OPEN_LOOP_ROWS if name in images]
    one = {name: images[name][sequence:sequence + 1] for name in rows}
    tiles = open_loop_grid(one, context)[steps]  # [S, rows * tile, tile, 3]
    tile = tiles.shape[2]
    figure, axis = plt.subplots(figsize=(0.75 * len(steps) + 1.6, 0.8 * len(rows) + 0.7), dpi=100)
    axis.imshow(np.concatenate(list(tiles), axis=1), interpolation="nearest")
    axis.set_xticks(tile * np.arange(len(steps)) + tile / 2, [f"t={step + 1}" for step in steps], fontsize=7)
    axis.set_yticks(tile * np.arange(len(rows)) + tile / 2, [ROW_LABELS[name] for name in rows], fontsize=7)
    axis.xaxis.tick_top()
    axis.tick_params(length=0)
    for spine in axis.spines.values():
        spine.set_visible(False)
    if "sample_std" in one:
        scale = max(float(np.max(one["sample_std"])), 1e-8)
        bar = figure.colorbar(ScalarMappable(Normalize(0.0, scale), "viridis"), ax=axis, fraction=0.02, pad=0.01)
        bar.set_label("std over\nweight samples", fontsize=6)
        bar.ax.tick_params(labelsize=6)
    borders = [Patch(edgecolor=np.asarray(color) / 255, facecolor="none", label=label)
               for color, label in ((CONTEXT_COLOR, "context: filtered"), (IMAGINED_COLOR, "imagined"))]
    figure.legend(handles=borders, loc="upper right", fontsize=7, ncol=2, frameon=False)
    figure.suptitle(title or "open-loop prediction", fontsize=8, x=0.02, ha="left")
    save_figure(figure, path, tight=False)  # tight_layout cannot place a colour bar beside an image


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


def save_figure(figure, path: str, tight: bool = True) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    if tight:
        figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


def write_open_loop_report(result, directory: str, name: str, fps: int = 10) -> dict[str, str]:
    """Write `name`.gif, `name`.mp4 (the grid video), `name`.png (strip of the first sequence) and
    `name`-reward.png under `directory`; returns the paths by kind."""
    from bayes_planet.openloop import as_uint8

    os.makedirs(directory, exist_ok=True)
    images = as_uint8(result)
    rows = [row for row in OPEN_LOOP_ROWS if row in images]
    frames = label_open_loop_frames(open_loop_grid(images, result.context), rows, result.context)
    paths = {kind: os.path.join(directory, f"{name}.{kind}") for kind in ("gif", "mp4", "png")}
    paths["reward"] = os.path.join(directory, f"{name}-reward.png")
    write_video(paths["gif"], frames, fps)
    write_video(paths["mp4"], frames, fps)
    plot_open_loop_strip(images, result.context, paths["png"], title=name)
    plot_reward_predictions(result, paths["reward"], name)
    return paths
