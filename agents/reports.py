"""Reports on a trained run: open-loop predictions, latent velocity probes, reward calibration, and the
planner's choices against the true dynamics.

Each takes a `Run` (`agents.run`: config, model, params) and held-out episodes as arrays, computes with the
pure functions of `bayes_planet.openloop` / `probes` / `calibration`, and writes files next to the run.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import itertools
import json
import os

import jax
import numpy as np

from bayes_planet import calibration, plan_quality, probes
from bayes_planet.errors import UsageError
from bayes_planet.files import atomic_write
from bayes_planet.openloop import open_loop
from bayes_planet.viz import save_figure, write_open_loop_report
from bayes_planet.world_model import imagine_under_samples


def report_weight_samples(run, weight_samples: int | None = None) -> int:
    """K for the reports: `weight_samples` when given, else the planner's K for a Bayesian model, 0 (mean
    weights only) for a deterministic one."""
    if weight_samples is not None:
        return weight_samples
    bayesian = run.config.model.transition != "deterministic"
    return max(run.config.planner.weight_samples, 2) if bayesian else 0


def windows(episodes: list[dict], count: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`count` windows of `length` steps, window i from episode ``i % len(episodes)`` at a random start,
    stacked ``[count, length, ...]`` for observation, action and reward."""
    rng = np.random.default_rng(seed)
    picked = []
    for index in range(count):
        episode = episodes[index % len(episodes)]
        if len(episode["action"]) < length:
            raise UsageError(f"episodes of {len(episode['action'])} steps are shorter than the {length} needed")
        start = int(rng.integers(0, len(episode["action"]) - length + 1))
        picked.append({k: episode[k][start:start + length] for k in ("observation", "action", "reward")})
    return {k: np.stack([p[k] for p in picked]) for k in picked[0]}


def write_json(path: str, payload) -> None:
    """`payload` as indented JSON at `path`, atomically, its folder made if missing."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_write(path, lambda handle: handle.write(json.dumps(payload, indent=2).encode()))


# ------------------------------------------------------------------------------------------ open loop
def write_open_loop(run, episodes: list[dict], directory: str, name: str = "openloop", sequences: int = 4,
                    context: int = 5, horizon: int = 45, weight_samples: int | None = None) -> dict[str, str]:
    """Open-loop report of `sequences` windows (`context` filtered + `horizon` imagined frames) from
    `episodes`: GIF, MP4, PNG strip and reward plot under `directory`. Returns the paths and the result
    (`bayes_planet.openloop.OpenLoop`; `error_summary` gives its errors by step)."""
    batch = windows(episodes, sequences, context + horizon)
    key = jax.random.PRNGKey(run.config.seed)
    result = open_loop(run.model, run.params, key, batch["observation"], batch["action"], batch["reward"],
                       context, report_weight_samples(run, weight_samples))
    return write_open_loop_report(result, directory, name), result


# ------------------------------------------------------------------------------------------ probes
def probe_report(run, fit_episodes: list[dict], test_episodes: list[dict], context: int = 5,
                 horizon: int = 45) -> tuple[list[dict], dict]:
    """Ridge probes from latent features to the true velocities, fitted on `fit_episodes` (e.g. the replay's
    training episodes, diverse thanks to exploration noise; the strength chosen by cross-validation over
    them) and scored on `test_episodes` (e.g. held-out evaluation episodes, never trained on), for the
    trained model and for a randomly initialized one (the control), with features from posterior filtering
    and from open-loop imagination. Rows: model, features, target, r2, strength; plus the held-out
    predictions of the trained model's posterior probe under key ``"scatter"``."""
    if len(fit_episodes) < 2 or not test_episodes:
        raise UsageError(f"probes need at least 2 episodes to fit and 1 to test, got {len(fit_episodes)} and "
                         f"{len(test_episodes)}")
    episodes = [*fit_episodes, *test_episodes]
    length = min(len(e["action"]) for e in episodes)
    stack = lambda name: np.stack([e[name][:length] for e in episodes])
    observation, action = stack("observation"), stack("action")
    env = run.make_env()
    velocity_names = getattr(env.unwrapped, "velocity_names", None)
    env.close()
    targets, names = zip(*(probes.probe_targets({k: v[:length] for k, v in e.items()}, velocity_names)
                           for e in episodes), strict=True)
    targets, names = np.stack(targets), names[0]  # [E, T, D]
    key = jax.random.PRNGKey(run.config.seed)
    untrained = run.model.init(jax.random.PRNGKey(run.config.seed + 1),
                               {"observation": observation[:1, :2], "action": action[:1, :2],
                                "reward": stack("reward")[:1, :2]})
    rows, scatter = [], None
    split = len(fit_episodes)
    for model_name, params in (("trained", run.params), ("random init", untrained)):
        features = {"posterior": (probes.posterior_features(run.model, params, key, observation, action),
                                  np.arange(length))}
        features["open loop"] = probes.open_loop_features(run.model, params, key, observation, action,
                                                          context, horizon)
        for feature_name, (values, steps) in features.items():
            y = targets[:, steps]
            groups = np.repeat(np.arange(split), len(steps))
            fitted = probes.probe_r2(values[:split].reshape(-1, values.shape[-1]), y[:split].reshape(-1, y.shape[-1]),
                                     groups, values[split:].reshape(-1, values.shape[-1]),
                                     y[split:].reshape(-1, y.shape[-1]))
            for name, r2 in zip([*names, "overall (mean)"], [*fitted["r2"], fitted["overall"]], strict=True):
                rows.append({"model": model_name, "features": feature_name, "target": name, "r2": float(r2),
                             "strength": fitted["strength"], "fit_episodes": split,
                             "test_episodes": len(test_episodes)})
            if model_name == "trained" and feature_name == "posterior":
                scatter = {"names": list(names), "true": y[split:].reshape(-1, y.shape[-1]),
                           "predicted": fitted["prediction"], "r2": [float(r2) for r2 in fitted["r2"]]}
    return rows, scatter


def format_probe_table(rows: list[dict]) -> str:
    """Held-out R² as a text table: one line per target, one column per (model, features)."""
    columns = list(dict.fromkeys((r["model"], r["features"]) for r in rows))
    targets = list(dict.fromkeys(r["target"] for r in rows))
    value = {(r["model"], r["features"], r["target"]): r["r2"] for r in rows}
    header = f"{'held-out R²':<16}" + "".join(f"{m + ', ' + f:>24}" for m, f in columns)
    lines = [header] + [f"{t:<16}" + "".join(f"{value[(m, f, t)]:>24.3f}" for m, f in columns) for t in targets]
    return "\n".join(lines)


def write_probe_report(rows: list[dict], scatter: dict, directory: str) -> dict[str, str]:
    """probes.json, probes.csv and probes_scatter.png (true vs predicted per target, trained model's
    posterior features, held-out episodes) under `directory`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(directory, exist_ok=True)
    paths = {kind: os.path.join(directory, name) for kind, name in
             (("json", "probes.json"), ("csv", "probes.csv"), ("scatter", "probes_scatter.png"))}
    write_json(paths["json"], rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(paths["csv"], lambda handle: handle.write(buffer.getvalue().encode()))
    count = len(scatter["names"])
    columns = min(count, 5)
    figure, axes = plt.subplots((count + columns - 1) // columns, columns, figsize=(2.6 * columns, 2.6 * (
        (count + columns - 1) // columns)), dpi=100, squeeze=False)
    for index, axis in enumerate(axes.ravel()):
        if index >= count:
            axis.axis("off")
            continue
        true, predicted = scatter["true"][:, index], scatter["predicted"][:, index]
        axis.plot(true, predicted, ".", markersize=2, alpha=0.4)
        low, high = float(min(true.min(), predicted.min())), float(max(true.max(), predicted.max()))
        axis.plot([low, high], [low, high], "k--", linewidth=0.8)
        axis.set_title(f"{scatter['names'][index]}\nheld-out R² {scatter['r2'][index]:.2f}", fontsize=8)
        axis.set_xlabel("true", fontsize=8)
        axis.set_ylabel("predicted", fontsize=8)
    figure.suptitle("velocity probes: trained model, posterior features, held-out episodes", fontsize=9)
    save_figure(figure, paths["scatter"])
    return paths


# ------------------------------------------------------------------------------------------ calibration
def calibration_report(run, episodes: list[dict], horizon: int = 12, weight_samples: int | None = None,
                       latent_samples: int = 4, stride: int = 10) -> dict:
    """Open-loop reward calibration at horizons 1..`horizon` over `episodes` (see `bayes_planet.calibration`)."""
    length = min(len(e["action"]) for e in episodes)
    stack = lambda name: np.stack([e[name][:length] for e in episodes])
    k = report_weight_samples(run, weight_samples)
    means, stds, truth = calibration.open_loop_reward_samples(
        run.model, run.params, jax.random.PRNGKey(run.config.seed), stack("observation"),
        stack("action"), stack("reward"), horizon, k, latent_samples, stride)
    table = calibration.calibration_table(means, truth, stds)
    table.update(weight_samples=k, latent_samples=latent_samples, predictions=int(truth.size),
                 transition=run.config.model.transition, reward_noise=run.config.model.reward_noise,
                 verdict_50=calibration.verdict(float(np.mean(table["coverage_50"])), 0.5),
                 verdict_90=calibration.verdict(float(np.mean(table["coverage_90"])), 0.9))
    return table


def format_calibration_table(tables: dict[str, dict]) -> str:
    """Text table, one block per run: NLL and 50% / 90% coverage per horizon step."""
    lines = []
    for run, table in tables.items():
        lines.append(f"{run} ({table['transition']}, reward noise {table.get('reward_noise', 'fixed')} with mean "
                     f"std {table['reward_std']:.3g}, K={table['weight_samples']} weight x "
                     f"{table['latent_samples']} latent samples, {table['predictions']} predictions): "
                     f"50% intervals {table['verdict_50']}, 90% intervals {table['verdict_90']}")
        lines.append(f"  {'horizon':>7} {'NLL':>8} {'cover 50%':>10} {'cover 90%':>10}")
        columns = (table["horizon"], table["nll"], table["coverage_50"], table["coverage_90"])
        for h, nll, c50, c90 in zip(*columns, strict=True):
            lines.append(f"  {h:>7} {nll:>8.3f} {c50:>10.2f} {c90:>10.2f}")
    return "\n".join(lines)


def write_calibration(tables: dict[str, dict], directory: str) -> dict[str, str]:
    """calibration.json and reliability.png under `directory`."""
    os.makedirs(directory, exist_ok=True)
    paths = {"json": os.path.join(directory, "calibration.json"), "plot": os.path.join(directory, "reliability.png")}
    write_json(paths["json"], tables)
    plot_reliability(tables, paths["plot"])
    return paths


def plot_reliability(tables: dict[str, dict], path: str) -> None:
    """Reliability diagram: observed against nominal coverage of central intervals, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 4 + 0.35 * len(tables)), dpi=100)
    axis.plot([0, 1], [0, 1], "k--", linewidth=0.8, label="calibrated")
    for run, table in tables.items():
        # the run's last two path parts: a full logdir would be wider than the figure
        name = os.path.join(*os.path.normpath(run).split(os.sep)[-2:])
        axis.plot(table["levels"], table["reliability"], "o-",
                  label=f"{name} ({table['transition']})\n50% {table['verdict_50']}, 90% {table['verdict_90']}")
    axis.set_xlabel("nominal coverage of the central interval")
    axis.set_ylabel("observed coverage")
    axis.set_title("open-loop reward calibration")
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize=7)
    save_figure(figure, path)


# ------------------------------------------------------------------------------------------ planning
def plan_check_report(run, states: int = 8, candidates: int = 64, perturbation: float = 0.3,
                      weight_samples: int | None = None, seed: int = 0, on_step=None) -> dict:
    """Score the planner's choices against the true dynamics along one new episode (no exploration noise):
    at `states` agent steps spread over the episode, the plan and ``candidates - 1`` alternatives (half
    perturbed by `perturbation`, half uniform; `plan_quality.candidate_sequences`) are scored by the world
    model under K weight samples (`report_weight_samples`) and by the env's own simulator from the same
    state (`DMCEnv.simulate_returns`). Returns the per-state scores (`plan_quality.plan_quality`), their
    mean and std, the episode's return and the settings. `on_step()` is called after every agent step."""
    if states < 1:
        raise UsageError(f"--states must be >= 1, got {states}")
    env = run.make_env(seed=seed)
    simulate = getattr(env.unwrapped, "simulate_returns", None)
    if simulate is None:
        raise UsageError(f"{run.config.env.task}: the plan check needs an env that can simulate from its "
                         "current state (DeepMind Control tasks)")
    agent = run.agent()
    horizon, k = agent.planner.horizon, report_weight_samples(run, weight_samples)
    rollout = jax.jit(functools.partial(imagine_under_samples, run.model, samples=k))
    rng = np.random.default_rng(seed)
    key_episode, key_steps, key_model = jax.random.split(jax.random.PRNGKey(seed), 3)
    last = getattr(env.unwrapped, "max_episode_steps", horizon + 1) - horizon
    checked = set(np.linspace(0, max(last, 0), states).round().astype(int).tolist())
    state, steps, scores, total = agent.reset(key_episode), [], [], 0.0
    observation, _ = env.reset(seed=seed)
    try:
        for step in itertools.count():
            action, state = agent.step(run.params, jax.random.fold_in(key_steps, step), state, observation)
            if step in checked:
                plan = np.asarray(state.plan)
                if plan.shape != (horizon, run.model.action_dim):
                    raise UsageError(f"planner {run.config.planner.name!r} keeps a plan of shape {plan.shape}, "
                                     f"not its action sequence [{horizon}, {run.model.action_dim}]: the plan check "
                                     "needs one")
                sequences = plan_quality.candidate_sequences(rng, plan, candidates, perturbation)
                key_latent, key_weights = jax.random.split(jax.random.fold_in(key_model, step))
                rewards, _ = rollout(run.params, key_latent, state.latent, sequences, key_weights if k else None)
                imagined = np.asarray(rewards).sum(axis=-1).T  # [N, K]
                steps.append(step)
                scores.append(plan_quality.plan_quality(imagined, simulate(sequences),
                                                        plan_quality.perturbed_count(candidates)))
            observation, reward, terminated, truncated, _ = env.step(action)
            total += reward
            if on_step is not None:
                on_step()
            if terminated or truncated:
                break
    finally:
        env.close()
    return {"states": [{"step": step, **score} for step, score in zip(steps, scores, strict=True)],
            "summary": plan_quality.summarize(scores),
            "episode_return": total, "weight_samples": k, "candidates": candidates, "perturbation": perturbation,
            "horizon": horizon, "transition": run.config.model.transition, "updates": run.updates, "seed": seed,
            "planner": dataclasses.asdict(run.config.planner)}


def format_plan_check(reports: dict[str, dict]) -> str:
    """Text table, one line per run: mean +- std over states of the main scores."""
    names = ("rank_correlation", "plan_percentile_near", "plan_percentile_far", "plan_regret", "model_pick_regret",
             "plan_imagined_error", "plan_spread", "true_range", "spread_variation", "spread_two_sample_rank")
    lines = [f"{'run':<40} {'return':>7} " + " ".join(f"{n:>22}" for n in names)]
    for run, report in reports.items():
        cells = " ".join(f"{report['summary'][n]['mean']:>12.3f} +- {report['summary'][n]['std']:<6.3f}" for n in names)
        lines.append(f"{run[-40:]:<40} {report['episode_return']:>7.1f} {cells}")
    return "\n".join(lines)
