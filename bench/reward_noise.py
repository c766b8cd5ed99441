"""Which reward likelihood calibrates: PlaNet's fixed unit variance, a learned scalar std, or a std per state.

Trains world models from scratch on a finished run's replay (its training episodes, the agent's own data),
one per variant (`--set`-style overrides on top of the run's config, the same batches for each), and scores
their open-loop reward predictions on the run's held-out evaluation episodes with the calibration report
(`bayes_planet.calibration`: K weight samples x latent samples, each a Gaussian with the model's reward std)::

    python bench/reward_noise.py --run ~/runs/dmc100k/cheetah-run/issue-17-defaults/seed-0 --updates 2000 \\
        [--variant NAME KEY=VALUE ...] [--out reward_noise.json]

Default variants: model.transition deterministic and reparameterization, each with model.reward_noise
fixed, learned and predicted. Columns: mean likelihood std, coverage of the central 50% and 90% intervals
(mean over horizons 1..12; nominal 0.5 and 0.9), NLL at horizons 1 and 12 (nats), reward MSE at horizon 1.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from bayes_planet.agents.reports import calibration_report  # noqa: E402
from bayes_planet.agents.run import HELD_OUT, Run, example_batch, make_env, make_model  # noqa: E402

from bayes_planet import calibration  # noqa: E402
from bayes_planet.config import load_config  # noqa: E402
from bayes_planet.replay import Replay  # noqa: E402
from bayes_planet.world_model import make_optimizer, make_train_step  # noqa: E402

DEFAULT_VARIANTS = [(f"{transition[:3]}-{noise}", [f"model.transition={transition}", f"model.reward_noise={noise}"])
                    for transition in ("deterministic", "reparameterization")
                    for noise in ("fixed", "learned", "predicted")]


def train(logdir: str, overrides: list[str], updates: int, seed: int) -> Run:
    """A fresh model of the run's config plus `overrides`, trained for `updates` steps on the run's replay
    (its checkpoint is not read)."""
    config = load_config(os.path.join(logdir, "config.yaml"), overrides)
    env = make_env(config)
    model = make_model(config, env)
    env.close()
    c = config.train
    params = model.init(jax.random.PRNGKey(seed), example_batch(env))
    optimizer = make_optimizer(c.learning_rate, c.adam_eps, c.grad_clip)
    opt_state, step = optimizer.init(params), make_train_step(model, optimizer)
    replay, rng = Replay(os.path.join(logdir, "episodes"), read_only=True), np.random.default_rng(seed)
    for index in range(updates):
        batch = replay.sample(c.batch_size, c.sequence_length, rng)
        params, opt_state, _ = step(params, opt_state, jax.random.PRNGKey(index), batch, replay.num_steps)
    return Run(config, model, params, updates, logdir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished run directory (episodes/ and held_out/)")
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--held-out", type=int, default=10, help="held-out episodes to score on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"),
                        help="a variant and its overrides (repeatable)")
    parser.add_argument("--out", help="write every variant's calibration table to this JSON file")
    args = parser.parse_args()
    episodes = Replay(os.path.join(args.run, HELD_OUT), read_only=True).latest(args.held_out)
    variants = [(v[0], v[1:]) for v in args.variant] if args.variant else DEFAULT_VARIANTS
    print(f"{args.run}: {len(episodes)} held-out episodes; {args.updates} updates per variant")
    print("| variant | std | cover 50% | cover 90% | NLL h=1 | NLL h=12 | reward MSE h=1 | minutes |")
    print("|---|---|---|---|---|---|---|---|")
    tables = {}
    for name, overrides in variants:
        start = time.perf_counter()
        trained = train(args.run, overrides, args.updates, args.seed)
        table = calibration_report(trained, episodes)
        means, _, truth = calibration.open_loop_reward_samples(
            trained.model, trained.params, jax.random.PRNGKey(args.seed),
            *(np.stack([e[k][:min(len(x["action"]) for x in episodes)] for e in episodes])
              for k in ("observation", "action", "reward")), horizon=1)
        table["reward_mse_h1"] = float(np.mean((means.mean(0) - truth) ** 2))
        tables[name] = {**table, "overrides": overrides}
        print(f"| {name} | {table['reward_std']:.3f} | {np.mean(table['coverage_50']):.2f} | "
              f"{np.mean(table['coverage_90']):.2f} | {table['nll'][0]:.3f} | {table['nll'][-1]:.3f} | "
              f"{table['reward_mse_h1']:.4f} | {(time.perf_counter() - start) / 60:.1f} |", flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(tables, handle, indent=1)


if __name__ == "__main__":
    main()
