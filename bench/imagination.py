"""How well a world model imagines, as training goes on: open-loop reward and image error under the
posterior-mean transition and under held weight samples, the spread of imagined returns across samples,
and the posterior std of each Bayesian transition layer.

Trains quickstart-size models on real random cartpole-swingup episodes (the same data and batches for every
variant) and prints one table row per measurement. Each variant is a list of `--set`-style model/train
overrides on top of the quickstart preset::

    python bench/imagination.py --updates 2000 --every 500 \
        --variant deterministic model.transition=deterministic \
        --variant bayes model.transition=reparameterization

Numbers: reward MSE is per agent step over the `horizon` imagined steps after 5 context frames; image MSE is
per pixel in model units ([-0.5, 0.5]); "spread" is the std across weight samples of the imagined return
over the horizon, averaged over start states.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bayes_planet.agents.rollout import random_policy, run_episode  # noqa: E402

from bayes_planet import (
    bayes,  # noqa: E402
    envs,  # noqa: E402
)
from bayes_planet.config import load_config  # noqa: E402
from bayes_planet.openloop import open_loop  # noqa: E402
from bayes_planet.world_model import WorldModel, make_optimizer, make_train_step  # noqa: E402

TRANSITION_LAYERS = ("transition_in", "prior_hidden", "prior_out")


def collect(task: str, count: int, seed: int, action_repeat: int) -> list[dict[str, np.ndarray]]:
    env = envs.make(task, action_repeat=action_repeat, seed=seed)
    return [run_episode(env, random_policy(env.action_space, seed + i), seed=seed + i).arrays() for i in range(count)]


def windows(episodes, length: int, stride: int) -> dict[str, np.ndarray]:
    """Every `stride`-th window of `length` steps of every episode, stacked ``[B, length, ...]``."""
    out = {k: [] for k in ("observation", "action", "reward")}
    for episode in episodes:
        for start in range(1, len(episode["reward"]) - length + 1, stride):
            for k in out:
                out[k].append(episode[k][start:start + length])
    return {k: np.stack(v) for k, v in out.items()}


def sample_batch(episodes, batch_size: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    picks = rng.integers(len(episodes), size=batch_size)
    starts = [rng.integers(len(episodes[i]["reward"]) - length + 1) for i in picks]
    return {k: np.stack([episodes[i][k][s:s + length] for i, s in zip(picks, starts, strict=True)])
            for k in ("observation", "action", "reward")}


def layer_stds(params) -> dict[str, float]:
    """Median posterior std of each variational transition layer's kernel."""
    out = {}
    for name, module in params.items():
        short = name.split("/")[-1]
        if short in TRANSITION_LAYERS and bayes.VARIATIONAL_RHO in module:
            out[short] = float(jnp.median(jax.nn.softplus(module[bayes.VARIATIONAL_RHO])))
    return out


def measure(model: WorldModel, params, data: dict[str, np.ndarray], context: int, samples: int,
            prefix: str = "") -> dict[str, float]:
    """Open-loop errors on the windows `data` ``[B, context + horizon, ...]``, keys prefixed by `prefix`."""
    result = open_loop(model, params, jax.random.PRNGKey(1), data["observation"], data["action"], data["reward"],
                       context=context, weight_samples=samples)
    future = slice(context, None)
    true_reward = np.asarray(result.true_reward[:, future])
    row = {
        "reward_mse_mean": float(np.mean((np.asarray(result.reward[:, future]) - true_reward) ** 2)),
        "image_mse_mean": float(np.mean((np.asarray(result.prediction[:, future] - result.truth[:, future])) ** 2)),
    }
    if samples:
        sample_rewards = np.asarray(result.sample_rewards[:, :, future])
        row["reward_mse_sampled"] = float(np.mean((sample_rewards - true_reward[None]) ** 2))
        row["image_mse_sampled"] = float(np.mean(
            (np.asarray(result.sample_images[:, :, future]) - np.asarray(result.truth[None, :, future])) ** 2))
        row["return_spread"] = float(np.mean(np.std(sample_rewards.sum(-1), axis=0)))
    return {prefix + k: v for k, v in row.items()}


def train_variant(name: str, overrides: list[str], train_episodes, train_windows, test, args) -> list[dict[str, float]]:
    config = load_config("quickstart", [f"env.task={args.task}", *overrides])
    model = WorldModel(config.model, train_episodes[0]["action"].shape[-1])
    rng = np.random.default_rng(args.seed)
    c = config.train
    params = model.init(jax.random.PRNGKey(args.seed), sample_batch(train_episodes, 1, 2, rng))
    optimizer = make_optimizer(c.learning_rate, c.adam_eps, c.grad_clip, c.warmup_steps)
    opt_state, step = optimizer.init(params), make_train_step(model, optimizer)
    data_steps = np.float32(sum(len(episode["reward"]) for episode in train_episodes))
    rows, history, start = [], [], time.perf_counter()
    for update in range(1, args.updates + 1):
        batch = sample_batch(train_episodes, c.batch_size, c.sequence_length, rng)
        params, opt_state, metrics = step(params, opt_state, jax.random.PRNGKey(update), batch, data_steps)
        history.append(metrics)
        if update % args.every == 0:
            recent = {k: float(np.mean([float(m[k]) for m in history[-args.every:]]))
                      for k in ("reward_loss", "image_loss", "kl", "weight_kl")}
            row = dict(variant=name, update=update, **recent, **measure(model, params, test, 5, args.samples),
                       **measure(model, params, train_windows, 5, args.samples, "train/"),
                       **{f"std/{k}": v for k, v in layer_stds(params).items()},
                       seconds=time.perf_counter() - start)
            print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="dmc:cartpole-swingup")
    parser.add_argument("--action-repeat", type=int, default=8)
    parser.add_argument("--train-episodes", type=int, default=8)
    parser.add_argument("--test-episodes", type=int, default=2)
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--samples", type=int, default=4, help="weight samples for the sampled rows")
    parser.add_argument("--horizon", type=int, default=12, help="imagined steps after 5 context frames")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"), required=True)
    args = parser.parse_args()
    episodes = collect(args.task, args.train_episodes + args.test_episodes, 1000 * args.seed, args.action_repeat)
    test = windows(episodes[args.train_episodes:], 5 + args.horizon, stride=10)
    train_windows = windows(episodes[:args.train_episodes], 5 + args.horizon, stride=40)
    future = test["reward"][:, 5:]
    print(f"held-out windows {len(future)}: MSE of predicting their mean reward {np.var(future):.4g}")
    for name, *overrides in args.variant:
        train_variant(name, overrides, episodes[:args.train_episodes], train_windows, test, args)


if __name__ == "__main__":
    main()
