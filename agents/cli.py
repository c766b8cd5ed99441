"""The `bayes-planet` command line."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def _random(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    import envs
    from agents.rollout import random_policy, run_episode
    from bayes_planet.viz import write_video

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
            write_video(path, episode.observations)
            print(f"video: {path}")
    print(f"random policy on {args.task}: return {np.mean(returns):.1f} +- {np.std(returns):.1f} "
          f"over {len(returns)} episodes")
    return 0


def _train(args: argparse.Namespace) -> int:
    from agents.train import train
    from bayes_planet.config import load_config

    fresh = args.config is not None or args.set
    config = load_config(args.config or "default", args.set) if fresh else None
    if config is None and not os.path.exists(os.path.join(args.logdir, "config.yaml")):
        config = load_config("default")
    result = train(args.logdir, config, progress=not args.no_progress)
    print(f"{args.logdir}: evaluation return {result['eval_return']:.1f}; random policy return "
          f"{result['random_return']:.1f} (mean of the seed episodes, same task)")
    print(f"learning curve: {os.path.join(args.logdir, 'learning_curve.png')}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from agents.train import Trainer

    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    trainer = Trainer(args.logdir, None, progress=not args.no_progress)
    if trainer.params is None:
        raise ValueError(f"{args.logdir} has no checkpoint to evaluate yet")
    video = os.path.join(args.logdir, "eval_episode.mp4") if args.video else None
    returns = trainer.evaluate(args.episodes, video)
    print(f"{trainer.config.env.task}: return {np.mean(returns):.1f} +- {np.std(returns):.1f} over {len(returns)} "
          f"episodes (no exploration noise; {trainer.updates} updates, {trainer.env_steps} env steps)")
    if video:
        print(f"video of the first episode: {video}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from bayes_planet.config import preset_names

    parser = argparse.ArgumentParser(prog="bayes-planet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train", help="train a Bayesian PlaNet agent (or resume the run in --logdir)",
        description="Train a Bayesian PlaNet agent from pixels. Rerunning the same command on the same "
                    "--logdir resumes the run where it stopped.")
    train.add_argument("--config", help=f"a preset ({', '.join(preset_names())}) or a YAML path; "
                                        "default: configs/default.yaml")
    train.add_argument("--logdir", required=True, help="run directory (config, checkpoint, episodes, logs, plots)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override an option, e.g. --set planner.objective=optimistic --set planner.beta=1.0")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.set_defaults(run=_train)
    evaluate = commands.add_parser("eval", help="evaluate a run's latest checkpoint without exploration noise")
    evaluate.add_argument("--logdir", required=True, help="run directory written by `bayes-planet train`")
    evaluate.add_argument("--episodes", type=int, default=10, help="number of episodes (default 10)")
    evaluate.add_argument("--video", action="store_true",
                          help="also write <logdir>/eval_episode.mp4 of the first episode")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bars")
    evaluate.set_defaults(run=_eval)
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
