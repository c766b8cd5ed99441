"""The `bayes-planet` command line."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def _random(args: argparse.Namespace) -> int:
    import imageio
    from tqdm import tqdm

    import envs
    from agents.rollout import random_policy, run_episode

    env = envs.make(args.task, seed=args.seed)
    os.makedirs(args.out, exist_ok=True)
    returns = []
    for index in range(args.episodes):
        with tqdm(total=env.unwrapped.max_episode_steps if hasattr(env.unwrapped, "max_episode_steps")
                  else None, desc=f"episode {index}", leave=False) as bar:
            episode = run_episode(env, random_policy(env.action_space, args.seed + index),
                                  seed=args.seed + index, on_step=lambda r: bar.update(1))
        returns.append(episode.total_reward)
        if index == 0 and np.asarray(episode.observations[0]).ndim == 3:
            path = os.path.join(args.out, "random_episode.gif")
            imageio.mimsave(path, np.stack(episode.observations), duration=1000 / 30, loop=0)
            print(f"video: {path}")
    print(f"random policy on {args.task}: return {np.mean(returns):.1f} +- {np.std(returns):.1f} "
          f"over {len(returns)} episodes")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bayes-planet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    random = commands.add_parser("random", help="roll out a uniform random policy; print its return, save a GIF")
    random.add_argument("--task", default="dmc:cartpole-swingup", help="'dmc:<domain>-<task>' or a gymnasium id")
    random.add_argument("--episodes", type=int, default=1, help="number of episodes (default 1)")
    random.add_argument("--seed", type=int, default=0, help="seed of the env and the policy")
    random.add_argument("--out", default="runs/random", help="folder for the GIF")
    random.set_defaults(run=_random)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:
        print(f"bayes-planet: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
