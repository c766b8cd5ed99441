"""Tables of evaluation returns over many runs, next to published scores.

Runs are found under a folder by their ``metrics.jsonl`` and grouped by where they lie: ``<task>/<variant>/
seed-<n>`` (the layout of ``results/``), so a group is one task and one variant over seeds. For each group
and each asked env-step mark the table gives the mean evaluation return over seeds, the std across seeds
(with two or more) and each seed's value; published scores for the same tasks come from a CSV with sources
(``bayes_planet/baselines/dmc_pixels.csv``).
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.resources
import os
from collections.abc import Iterable, Sequence

import numpy as np

from bayes_planet.errors import UsageError
from bayes_planet.logger import read_metrics
from bayes_planet.viz import save_figure

# the trainer's report records that `reports_table` reads
REPORT_KINDS = ("calibration", "probe", "openloop", "plancheck", "eval")
TIME_RECORD_FIELDS = ("kind", "step", "wall_time", "total", "finished")  # a time record's keys besides its phases
BASELINES = str(importlib.resources.files("bayes_planet") / "baselines" / "dmc_pixels.csv")  # with sources


@dataclasses.dataclass(frozen=True)
class Group:
    """The runs of one task and one variant: `evaluations` maps each run's folder to its ``{step: return}``,
    `weight_kl` to its ``{step: weight KL}`` (from the training records), `minutes` to its training wall
    time (the last ``time`` record with ``finished`` set; runs without one are left out) and `phases` to that
    record's minutes per phase (``{phase: minutes}``), `training_returns` to its training episodes'
    ``{env step at the episode's end: return}`` (with exploration noise; the random seed episodes are not
    among them)."""

    task: str
    variant: str
    evaluations: dict[str, dict[int, float]]
    weight_kl: dict[str, dict[int, float]] = dataclasses.field(default_factory=dict)
    minutes: dict[str, float] = dataclasses.field(default_factory=dict)
    reports: dict[str, dict[str, dict]] = dataclasses.field(default_factory=dict)
    phases: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    training_returns: dict[str, dict[int, float]] = dataclasses.field(default_factory=dict)

    def report_values(self, kind: str, key: str, index: int | None = None) -> list[float]:
        """Each run's value of `key` in its last `kind` record (``calibration``, ``probe``, ``openloop``),
        element `index` of a list value (runs without it are left out)."""
        values = []
        for records in self.reports.values():
            value = records.get(kind, {}).get(key)
            if index is not None and isinstance(value, list):
                value = value[index] if -len(value) <= index < len(value) else None
            if isinstance(value, (int, float)):
                values.append(float(value))
        return values

    def report_series(self, kind: str, key: str) -> np.ndarray:
        """Each run's list `key` of its last `kind` record (e.g. the open-loop ``image_mse`` by horizon) as
        ``[runs, H]``, cut to the shortest run's length (``[0, 0]`` when no run has it)."""
        series = [records[kind][key] for records in self.reports.values()
                  if isinstance(records.get(kind, {}).get(key), list)]
        length = min((len(values) for values in series), default=0)
        return np.asarray([values[:length] for values in series], dtype=float).reshape(len(series), length)

    def last_step(self) -> int:
        """The last env step at which every run of the group was evaluated (0 if none)."""
        return min((max(returns, default=0) for returns in self.evaluations.values()), default=0)

    def curve(self, series: str = "evaluations") -> tuple[np.ndarray, np.ndarray]:
        """Steps ``[S]`` that every run has and the values ``[runs, S]`` there."""
        runs = list(getattr(self, series).values())
        steps = sorted(set.intersection(*(set(values) for values in runs))) if runs else []
        return np.asarray(steps), np.asarray([[values[step] for step in steps] for values in runs])

    def at(self, step: int) -> list[float]:
        """Each run's evaluation return at env step `step` (runs that have none there are left out)."""
        return [returns[step] for returns in self.evaluations.values() if step in returns]


def find_groups(folder: str) -> list[Group]:
    """Every run under `folder` (a folder with ``metrics.jsonl``), grouped by ``<task>/<variant>``: the two
    folders above the run's own."""
    groups: dict[tuple[str, str], dict[str, dict[int, float]]] = {}
    for root, _, names in sorted(os.walk(folder)):
        if "metrics.jsonl" not in names:
            continue
        parts = os.path.relpath(root, folder).split(os.sep)
        task, variant = (parts[-3], parts[-2]) if len(parts) >= 3 else (parts[0], "-")
        records = read_metrics(root)
        returns = {int(r["step"]): float(r["return"]) for r in records if r["kind"] == "eval"}
        weight_kl = {int(r["step"]): float(r["weight_kl"]) for r in records
                     if r["kind"] == "train" and "weight_kl" in r}
        times = [r for r in records if r["kind"] == "time" and "total" in r
                 and r.get("finished", 1.0)]  # records before the field existed are finished runs' only
        phases = {key: float(value) / 60 for key, value in times[-1].items()
                  if key not in TIME_RECORD_FIELDS} if times else None
        reports = {r["kind"]: r for r in records if r["kind"] in REPORT_KINDS}  # the last of each kind
        training = {int(r["step"]): float(r["return"]) for r in records if r["kind"] == "episode"}
        groups.setdefault((task, variant), {})[root] = (
            returns, weight_kl, float(times[-1]["total"]) / 60 if times else None, reports or None, phases,
            training or None)
    return [Group(task, variant, *({run: value[i] for run, value in runs.items() if value[i] is not None}
                                   for i in range(6)))
            for (task, variant), runs in sorted(groups.items())]


def summarize(values: Sequence[float], digits: int = 0) -> str:
    """``mean +- std (n)`` over seeds; the mean alone with one seed; ``-`` with none."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (1)"
    return f"{np.mean(values):.{digits}f} +- {np.std(values, ddof=1):.{digits}f} ({len(values)})"


def results_table(groups: Iterable[Group], steps: Sequence[int]) -> str:
    """Markdown: one row per task and variant, one column per env-step mark (mean +- std across seeds, with
    the number of seeds), and every seed's value."""
    header = "| task | variant | " + " | ".join(f"{step // 1000}k" for step in steps) + " | per seed |"
    lines = [header, "|" + "---|" * (len(steps) + 3)]
    for group in groups:
        per_seed = "; ".join("/".join(f"{returns[s]:.0f}" if s in returns else "-" for s in steps)
                             for returns in group.evaluations.values())
        cells = " | ".join(summarize(group.at(step)) for step in steps)
        lines.append(f"| {group.task} | {group.variant} | {cells} | {per_seed} |")
    return "\n".join(lines)


def runs_table(groups: Iterable[Group], steps: Sequence[int], last: int = 20) -> str:
    """Markdown: one row per run (its folder's name), its evaluation return at each of `steps`, how many of
    its training episodes scored above 0 (what a sparse task's exploration found), the mean, min and max of
    its `last` training episodes, and its minutes in all and per phase (from the finished run's ``time``
    record; ``-`` without one)."""
    phases = list(dict.fromkeys(phase for group in groups for run in group.phases.values() for phase in run))
    header = ["task", "variant", "run", *(f"{step // 1000}k" for step in steps), "training episodes > 0",
              f"last {last} training: mean (min to max)", "minutes", f"minutes: {' / '.join(phases) or 'phases'}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group in groups:
        for run, returns in group.evaluations.items():
            training = list(group.training_returns.get(run, {}).values())
            tail = training[-last:]
            scored = f"{sum(r > 0 for r in training)} / {len(training)}" if training else "-"
            spread = f"{np.mean(tail):.0f} ({min(tail):.0f} to {max(tail):.0f})" if tail else "-"
            minutes = f"{group.minutes[run]:.1f}" if run in group.minutes else "-"
            split = (" / ".join(f"{group.phases[run].get(phase, 0.0):.1f}" for phase in phases)
                     if run in group.phases else "-")
            marks = " | ".join(f"{returns[step]:.0f}" if step in returns else "-" for step in steps)
            lines.append(f"| {group.task} | {group.variant} | {os.path.basename(run)} | {marks} | {scored} | "
                         f"{spread} | {minutes} | {split} |")
    return "\n".join(lines)


def results_rows(groups: Iterable[Group], steps: Sequence[int]) -> list[dict]:
    """One row per group and mark: task, variant, env_steps, mean, std (sample, across seeds), seeds, values."""
    rows = []
    for group in groups:
        for step in steps:
            values = group.at(step)
            rows.append({"task": group.task, "variant": group.variant, "env_steps": step,
                         "mean": float(np.mean(values)) if values else "", "seeds": len(values),
                         "std": float(np.std(values, ddof=1)) if len(values) > 1 else "",
                         "values": " ".join(f"{v:.1f}" for v in values)})
    return rows


def _pyplot_and_colours(groups: Sequence[Group]):
    """matplotlib's pyplot on the Agg backend (no display needed), and one colour per variant of `groups`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, {variant: f"C{i}" for i, variant in enumerate(sorted({group.variant for group in groups}))}


def _median_band(axis, steps: np.ndarray, values: np.ndarray, colour: str, variant: str, style: str = "-") -> None:
    """Median over runs of ``values [runs, S]`` against ``steps [S]``, with the 5-95 percentile band."""
    low, median, high = np.percentile(values, [5, 50, 95], axis=0)
    axis.plot(steps, median, style, color=colour, label=f"{variant} (n={len(values)})")
    axis.fill_between(steps, low, high, color=colour, alpha=0.2)


def plot_curves(groups: Sequence[Group], published_rows: Sequence[dict[str, str]], path: str) -> None:
    """PNG per task in a row of panels: evaluation return against env steps (median over seeds, 5-95
    percentile band, one colour per variant, published scores up to the runs' reach (100k at least) as
    markers) and, below, the weight KL of the variants that have one (log scale)."""
    plt, colours = _pyplot_and_colours(groups)
    tasks = sorted({group.task for group in groups})
    with_kl = any(group.curve("weight_kl")[1].size and group.curve("weight_kl")[1].max() > 0 for group in groups)
    figure, axes = plt.subplots(1 + with_kl, len(tasks), figsize=(4.5 * len(tasks), 3.4 * (1 + with_kl)),
                                dpi=100, squeeze=False)
    markers = dict(zip(sorted({row["method"] for row in published_rows}), "osD^v<>ph*", strict=False))
    for column, task in enumerate(tasks):
        axis = axes[0][column]
        for group in (g for g in groups if g.task == task):
            steps, values = group.curve()
            if not steps.size:
                continue
            _median_band(axis, steps, values, colours[group.variant], group.variant, ".-")
            if with_kl:
                kl_steps, kl = group.curve("weight_kl")
                if kl.size and kl.max() > 0:
                    axes[1][column].semilogy(kl_steps, np.median(kl, axis=0), color=colours[group.variant],
                                             label=group.variant)
        reached = max((max(values, default=0) for g in groups if g.task == task for values in g.evaluations.values()),
                      default=0)
        shown = max(reached, 100_000) * 1.05  # published points up to the runs' reach (100k at least)
        for row in published_rows:
            if (row["task"] == task or task.startswith(row["task"] + "-")) and int(row["env_steps"]) <= shown:
                axis.plot(int(row["env_steps"]), float(row["mean"]), markers[row["method"]], color="gray",
                          markerfacecolor="none", label=f"{row['method']} ({row['source']})")
        axis.set_title(f"{task}: evaluation return (median over seeds, 5-95% band)", fontsize=7)
        axis.set_xlabel("environment steps")
        axis.set_ylabel("episode return")
        handles, labels = axis.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        axis.legend(unique.values(), unique.keys(), fontsize=6, loc="best")
        if with_kl:
            axes[1][column].set_title(f"{task}: weight KL (median over seeds)", fontsize=8)
            axes[1][column].set_xlabel("environment steps")
            axes[1][column].set_ylabel("weight KL (nats)")
            if axes[1][column].get_legend_handles_labels()[0]:
                axes[1][column].legend(fontsize=6)
    save_figure(figure, path)


def training_curves(steps: np.ndarray, returns: np.ndarray, window: int = 10):
    """From training episodes' ``returns [runs, S]`` ending at env ``steps [S]``: ``(steps [S'], the moving
    mean over `window` episodes [runs, S'])`` (S' = S - window + 1, or 1 when S < window) and the count of
    episodes that scored above 0 so far ``[runs, S]``."""
    width = min(window, steps.size)
    moving_mean = np.stack([np.convolve(run, np.ones(width) / width, mode="valid") for run in returns])
    return (steps[width - 1:], moving_mean), np.cumsum(returns > 0, axis=1)


def plot_training(groups: Sequence[Group], path: str, window: int = 10) -> bool:
    """PNG with one column of panels per task, from the training episodes (with exploration noise): their
    return, a moving mean over `window` episodes, and how many of them have scored above 0 so far (what
    exploration found on a sparse task), each against env steps as the median over seeds with the 5-95
    percentile band, one colour per variant. Returns False, writing nothing, when no run has training
    episodes."""
    trained = [group for group in groups if group.training_returns]
    tasks = sorted({group.task for group in trained})
    if not tasks:
        return False
    plt, colours = _pyplot_and_colours(groups)
    figure, axes = plt.subplots(2, len(tasks), figsize=(4.5 * len(tasks), 6.8), dpi=100, squeeze=False)
    for column, task in enumerate(tasks):
        for group in (g for g in trained if g.task == task):
            steps, returns = group.curve("training_returns")
            if not steps.size:
                continue
            (mean_steps, moving_mean), scored = training_curves(steps, returns, window)
            _median_band(axes[0][column], mean_steps, moving_mean, colours[group.variant], group.variant)
            _median_band(axes[1][column], steps, scored, colours[group.variant], group.variant)
        titles = (f"training return, mean of the last {window} episodes", "training episodes that scored > 0, so far")
        for axis, title in zip(axes[:, column], titles, strict=True):
            axis.set_title(f"{task}: {title}", fontsize=7)
            axis.set_xlabel("environment steps")
            axis.legend(fontsize=6, loc="best")
        axes[0][column].set_ylabel("episode return (with exploration noise)", fontsize=7)
        axes[1][column].set_ylabel("episodes", fontsize=7)
    save_figure(figure, path)
    return True


def published(tasks: Iterable[str], path: str | None = BASELINES,
              rows: Sequence[dict[str, str]] | None = None) -> list[dict[str, str]]:
    """Rows of the baselines CSV at `path` (method, source, task, env_steps, mean, std), or of `rows`, for
    `tasks` (the part of a group's task before any ``-quickstart``-style suffix is matched too)."""
    wanted = set(tasks)
    if rows is None:
        with open(path) as handle:
            rows = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    return [row for row in rows if row["task"] in wanted or any(t.startswith(row["task"] + "-") for t in wanted)]


def published_table(rows: Sequence[dict[str, str]]) -> str:
    """Markdown of published scores: task, env steps, method, source, mean +- std."""
    lines = ["| task | env steps | method | source | return |", "|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (r["task"], int(r["env_steps"]), r["method"])):
        std = f" +- {row['std']}" if row["std"] else ""
        lines.append(f"| {row['task']} | {int(row['env_steps']) // 1000}k | {row['method']} | {row['source']} | "
                     f"{row['mean']}{std} |")
    return "\n".join(lines)


def versus_table(groups: Iterable[Group], step: int, published_rows: Sequence[dict[str, str]],
                 methods: Sequence[str] = ("PlaNet", "Dreamer", "DreamerV3")) -> str:
    """Markdown: one row per task and variant, ours at env step `step` (mean +- std across seeds) next to
    each of `methods`' published score at the same env steps (every source, named), the random policy, and
    our median minutes of training per run (over the runs that recorded it; a median, so that one run
    slowed by other jobs on the machine does not set the figure). The last column says whether
    ours reaches the first listed source of the first method (PlaNet's row, by default), and whether ours
    is below the random policy's mean."""
    header = ["task", "variant", f"ours at {step // 1000}k", *methods, "random", "median minutes per run",
              f"reaches {methods[0]}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group in groups:
        rows = published([group.task], path=None, rows=published_rows)
        cells = {method: "; ".join(_published_cell(r) for r in rows if r["method"] == method
                                   and int(r["env_steps"]) == step) or "-" for method in methods}
        random_rows = [r for r in rows if r["method"] == "random"]
        ours, floor = group.at(step), [r for r in rows if r["method"] == methods[0] and int(r["env_steps"]) == step]
        reaches = "-" if not (ours and floor) else ("yes" if np.mean(ours) >= float(floor[0]["mean"]) else "no")
        if ours and random_rows and np.mean(ours) < float(random_rows[0]["mean"]):
            reaches += ", below random"  # e.g. PlaNet's 0 on cup-catch is reached by never catching
        minutes = f"{np.median(list(group.minutes.values())):.0f}" if group.minutes else "-"
        lines.append(f"| {group.task} | {group.variant} | {summarize(ours)} | "
                     + " | ".join(cells[m] for m in methods)
                     + f" | {_published_cell(random_rows[0]) if random_rows else '-'} | {minutes} | {reaches} |")
    return "\n".join(lines)


REPORT_COLUMNS = (  # (header, record kind, key, list index, digits)
    ("reward cover 50%", "calibration", "coverage_50", None, 2),
    ("reward cover 90%", "calibration", "coverage_90", None, 2),
    ("reward NLL", "calibration", "nll", None, 2),
    ("reward std", "calibration", "reward_std", None, 3),
    ("probe R² posterior", "probe", "r2/trained/posterior", None, 2),
    ("probe R² open loop", "probe", "r2/trained/open_loop", None, 2),
    ("probe R² random init", "probe", "r2/random_init/posterior", None, 2),
    ("image MSE h=1", "openloop", "image_mse", 0, 4),
    ("image MSE h=10", "openloop", "image_mse", 9, 4),
    ("image MSE h=45", "openloop", "image_mse", 44, 4),
    ("reward MSE h=1", "openloop", "reward_mse", 0, 3),
    ("reward MSE h=10", "openloop", "reward_mse", 9, 3),
    ("plan rank corr", "plancheck", "rank_correlation", None, 2),
    ("plan beats perturbed", "plancheck", "plan_percentile_near", None, 2),
    ("plan beats random", "plancheck", "plan_percentile_far", None, 2),
    ("last eval worst episode", "eval", "return_min", None, 0),
    ("last eval episode std", "eval", "return_std", None, 0),
)


def reports_table(groups: Iterable[Group]) -> str:
    """Markdown of the trainer's end-of-run reports, one row per task and variant (mean +- std across
    seeds): open-loop reward calibration (coverage of the central 50% / 90% intervals, mean over horizons
    1..12, nominal 0.50 / 0.90; NLL in nats; the likelihood's std), held-out R² of the velocity probes
    (mean over velocity dimensions; `probe_table` gives each), and the last evaluation's open-loop errors
    (image MSE per pixel in model units, reward MSE per agent step) h steps after 5 context frames, and the
    plan check (`plan_quality`: rank correlation of imagined and true returns, the fraction of perturbed and
    of random sequences whose true return the plan matches or beats; means over its states), and the last
    evaluation's worst episode and std across its episodes (what risk-averse planning is for)."""
    lines = ["| task | variant | " + " | ".join(c[0] for c in REPORT_COLUMNS) + " |",
             "|" + "---|" * (len(REPORT_COLUMNS) + 2)]
    for group in groups:
        cells = [summarize(group.report_values(kind, key, index), digits)
                 for _, kind, key, index, digits in REPORT_COLUMNS]
        lines.append(f"| {group.task} | {group.variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def probe_table(groups: Iterable[Group]) -> str:
    """Markdown: held-out R² of each velocity probe, one row per task, variant and target, for the trained
    model's posterior and open-loop features and the randomly initialized control (mean +- std across seeds)."""
    features = (("trained", "posterior"), ("trained", "open_loop"), ("random_init", "posterior"))
    lines = ["| task | variant | target | " + " | ".join(f"{m.replace('_', ' ')}, {f.replace('_', ' ')}"
                                                        for m, f in features) + " |", "|" + "---|" * 6]
    for group in groups:
        prefix = "r2/trained/posterior/"
        targets = sorted({key[len(prefix):] for records in group.reports.values()
                          for key in records.get("probe", {}) if key.startswith(prefix)})
        for target in targets:
            cells = [summarize(group.report_values("probe", f"r2/{m}/{f}/{target}"), 2) for m, f in features]
            lines.append(f"| {group.task} | {group.variant} | {target.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


REPORT_PANELS = (  # (title, record kind, keys by horizon, y label)
    ("open-loop image MSE", "openloop", ("image_mse",), "MSE per pixel (model units)"),
    ("open-loop reward MSE", "openloop", ("reward_mse",), "MSE per agent step"),
    ("reward interval coverage", "calibration", ("coverage_50_by_horizon", "coverage_90_by_horizon"),
     "fraction of true rewards inside"),
)


def plot_reports(groups: Sequence[Group], path: str) -> bool:
    """PNG with one row of panels per task that has end-of-run reports: open-loop image and reward MSE
    against the horizon after the context frames, the reward's 50% / 90% interval coverage against the
    horizon (nominal levels dashed), each as the mean over seeds with a +-1 std band, one colour per variant;
    and the velocity probes' held-out R² (mean over velocity dimensions; bars: mean over seeds, whiskers:
    std) for posterior and open-loop features of the trained model and for the random-init control. Returns
    False, writing nothing, when no run has reports."""
    plotted = {kind for _, kind, _, _ in REPORT_PANELS} | {"probe"}
    reported = [group for group in groups if any(plotted & set(records) for records in group.reports.values())]
    tasks = sorted({group.task for group in reported})
    if not tasks:
        return False
    plt, colours = _pyplot_and_colours(groups)
    figure, axes = plt.subplots(len(tasks), len(REPORT_PANELS) + 1, figsize=(4.2 * (len(REPORT_PANELS) + 1),
                                3.2 * len(tasks)), dpi=100, squeeze=False)
    probe_keys = (("posterior", "r2/trained/posterior"), ("open loop", "r2/trained/open_loop"),
                  ("random init", "r2/random_init/posterior"))
    for row, task in enumerate(tasks):
        members = [group for group in reported if group.task == task]
        for column, (title, kind, keys, label) in enumerate(REPORT_PANELS):
            axis = axes[row][column]
            for group in members:
                for key, style in zip(keys, ("-", "--"), strict=False):
                    values = group.report_series(kind, key)
                    if not values.size:
                        continue
                    horizon = np.arange(1, values.shape[1] + 1)
                    mean, std = values.mean(0), values.std(0)
                    name = f"{group.variant} (n={len(values)})" + (f", {key.split('_')[1]}%" if len(keys) > 1 else "")
                    axis.plot(horizon, mean, style, color=colours[group.variant], label=name)
                    axis.fill_between(horizon, mean - std, mean + std, color=colours[group.variant], alpha=0.15)
            if kind == "calibration":
                for level in (0.5, 0.9):
                    axis.axhline(level, color="gray", linestyle=":", linewidth=1)
            axis.set_title(f"{task}: {title}", fontsize=8)
            axis.set_xlabel("steps after the context frames")
            axis.set_ylabel(label, fontsize=7)
            if axis.get_legend_handles_labels()[0]:
                axis.legend(fontsize=6)
        axis = axes[row][-1]
        width = 0.8 / max(len(members), 1)
        for index, group in enumerate(members):
            means = [np.mean(v) if (v := group.report_values("probe", key)) else np.nan for _, key in probe_keys]
            stds = [np.std(v) if (v := group.report_values("probe", key)) else 0.0 for _, key in probe_keys]
            axis.bar(np.arange(len(probe_keys)) + index * width, means, width, yerr=stds,
                     color=colours[group.variant], label=group.variant)
        axis.set_xticks(np.arange(len(probe_keys)) + width * (len(members) - 1) / 2, [n for n, _ in probe_keys],
                        fontsize=7)
        axis.axhline(0, color="gray", linewidth=0.8)
        axis.set_title(f"{task}: velocity probes: held-out R²", fontsize=8)
        axis.legend(fontsize=6)
    save_figure(figure, path)
    return True


def _published_cell(row: dict[str, str]) -> str:
    return f"{row['mean']}{' +- ' + row['std'] if row['std'] else ''} ({row['source']})"


def aggregate_table(groups: Sequence[Group], step: int, max_return: float = 1000.0, reps: int = 2000,
                    seed: int = 0) -> str:
    """Markdown: for each variant, IQM, mean and median of returns at env step `step` over every task and
    seed, as fractions of `max_return` (DeepMind Control's 1000), with 95% stratified-bootstrap intervals
    (rliable, Agarwal et al. 2021). A variant counts the tasks evaluated at `step`, and the seeds that every
    one of those has."""
    try:
        from rliable import library as rly
        from rliable import metrics
    except ImportError:
        raise UsageError("--aggregate needs rliable: pip install 'bayes-planet[analysis]'") from None
    by_variant: dict[str, list[Group]] = {}
    for group in groups:
        by_variant.setdefault(group.variant, []).append(group)
    scores, counts = {}, {}
    for variant, members in by_variant.items():
        per_task = [group.at(step) for group in members if group.at(step)]  # tasks evaluated at `step`
        runs = min((len(values) for values in per_task), default=0)
        if runs:
            scores[variant] = np.array([values[:runs] for values in per_task]).T / max_return  # [runs, tasks]
            counts[variant] = (runs, len(per_task))
    if not scores:
        raise UsageError(f"no variant has an evaluation at env step {step} in every task")
    np.random.seed(seed)  # rliable's bootstrap draws from NumPy's global generator
    aggregate = lambda x: np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x),
                                    metrics.aggregate_median(x)])
    points, intervals = rly.get_interval_estimates(scores, aggregate, reps=reps)
    lines = [f"| variant (at {step // 1000}k, return / {max_return:.0f}) | seeds x tasks | IQM | mean | median |",
             "|---|---|---|---|---|"]
    for variant in scores:
        cells = " | ".join(f"{points[variant][i]:.3f} [{intervals[variant][0, i]:.3f}, {intervals[variant][1, i]:.3f}]"
                           for i in range(3))
        lines.append(f"| {variant} | {counts[variant][0]} x {counts[variant][1]} | {cells} |")
    return "\n".join(lines)


__all__ = ["Group", "aggregate_table", "find_groups", "plot_curves", "plot_reports", "plot_training", "probe_table",
           "published", "published_table", "reports_table", "results_rows", "results_table", "runs_table",
           "summarize", "training_curves", "versus_table"]
