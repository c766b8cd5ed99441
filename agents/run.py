"""A run directory in Python, read-only: its config, model, parameters and held-out episodes, and an agent.

    run = load_run("runs/cheetah")
    policy = run.policy()                      # observation -> action, no exploration noise
    episode = run_episode(run.make_env(seed=0), policy)

`load_run` writes nothing into the run directory and needs only read access to it. The report commands
(`eval`, `openloop`, `probe`, `calibrate`) work on a `Run`; the trainer hands its reports a `Run` of itself.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from bayes_planet.agents.agent import PlanetAgent, make_planner
from bayes_planet.agents.rollout import run_episode

from bayes_planet import config as config_lib
from bayes_planet import envs
from bayes_planet.checkpoint import load_checkpoint, previous_path
from bayes_planet.config import Config
from bayes_planet.errors import UsageError
from bayes_planet.replay import Replay
from bayes_planet.world_model import WorldModel

CHECKPOINT_NAME, PICKLED_CHECKPOINT_NAME = "checkpoint.npz", "checkpoint.pkl"
HELD_OUT = "held_out"
EPISODES = "episodes"  # the replay


def make_env(config: Config, seed: int | None = None):
    """The run's environment."""
    c = config.env
    return envs.make(c.task, action_repeat=c.action_repeat or None, camera_id=None if c.camera_id < 0 else c.camera_id,
                     observation=config.model.observation, seed=seed, shadow_size=c.shadow_size or None,
                     episode_steps=c.episode_steps or None)


def make_model(config: Config, env) -> WorldModel:
    """The run's world model for `env`'s action and observation spaces."""
    return WorldModel(config.model, env.action_space.shape[0], env.observation_space.shape)


def example_batch(env) -> dict[str, np.ndarray]:
    """A zero batch ``[1, 2, ...]`` with the env's shapes and dtypes (to initialize or shape a model)."""
    space = env.observation_space
    return {"observation": np.zeros((1, 2, *space.shape), space.dtype),
            "action": np.zeros((1, 2, *env.action_space.shape), np.float32),
            "reward": np.zeros((1, 2), np.float32)}


def refuse_pickled_checkpoint(logdir: str) -> None:
    """Raise a `UsageError` when `logdir` holds only a pickled checkpoint from an older version."""
    pickled = os.path.join(logdir, PICKLED_CHECKPOINT_NAME)
    if os.path.exists(pickled) and not os.path.exists(os.path.join(logdir, CHECKPOINT_NAME)):
        raise UsageError(f"{pickled} is a pickled checkpoint from an older bayes-planet: loading a pickle can "
                         "run any code its author put in it, so it is not read; start a new run")


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained world model with its config. ``updates``: gradient updates behind `params`; ``logdir``:
    where it came from (None for a live trainer's own view)."""

    config: Config
    model: WorldModel
    params: Any
    updates: int = 0
    logdir: str | None = None

    def make_env(self, seed: int | None = None):
        """A new instance of the run's environment."""
        return make_env(self.config, seed)

    def agent(self) -> PlanetAgent:
        """The agent the config describes (planner, objective, weight samples), acting with `params`."""
        return PlanetAgent.from_config(self.model, self.config)

    def policy(self, key: jax.Array | None = None, exploration_noise: float = 0.0):
        """A stateful ``policy(observation) -> action`` for one episode (make a new one per episode)."""
        key = jax.random.PRNGKey(0) if key is None else key
        return self.agent().policy(self.params, key, exploration_noise)

    def held_out(self, count: int) -> list[dict[str, np.ndarray]]:
        """Up to `count` of the latest readable evaluation episodes the trainer kept (never trained on)."""
        if self.logdir is None:
            return []
        return Replay(os.path.join(self.logdir, HELD_OUT), max_in_memory=count, read_only=True).latest(count)

    def training_episodes(self, count: int) -> list[dict[str, np.ndarray]]:
        """Up to `count` of the latest readable episodes of the replay (collected with exploration noise, and
        trained on), read-only."""
        if self.logdir is None:
            return []
        return Replay(os.path.join(self.logdir, EPISODES), max_in_memory=count, read_only=True).latest(count)

    def evaluate(self, count: int, seed: int = 0, on_step=None,
                 exploration_noise: float = 0.0) -> list[dict[str, np.ndarray]]:
        """`count` new episodes, kept in memory only; without exploration noise unless `exploration_noise`
        (the std of the Gaussian added to each planned action, as in training) says otherwise. Episode ``i``
        of ``seed`` always gets the same env seed and planner key, so the same checkpoint gives the same
        returns."""
        agent, episodes = self.agent(), []
        env = self.make_env()
        for index in range(count):
            env_seed = int(np.random.SeedSequence([self.config.seed, seed, index]).generate_state(1)[0])
            key = jax.random.fold_in(jax.random.PRNGKey(seed), index)
            episodes.append(run_episode(env, agent.policy(self.params, key, exploration_noise), env_seed,
                                        on_step).arrays())
        env.close()
        return episodes

    def episodes(self, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
        """`count` agent episodes for the reports: the held-out ones, topped up with `evaluate` in memory."""
        kept = self.held_out(count)
        return kept + (self.evaluate(count - len(kept), seed) if len(kept) < count else [])


def load_run(logdir: str, planner_overrides: Sequence[str] = ()) -> Run:
    """The run in `logdir` at its latest checkpoint, read-only (writes nothing, needs only read access).
    `planner_overrides` (``planner.key=value``, e.g. ``planner.objective=risk_averse``) plan with the trained
    model differently; nothing else can change on a trained model. Raises a `UsageError` naming what is
    wrong: no run, no checkpoint, a pickled checkpoint, an override outside ``planner.``."""
    path = os.path.join(logdir, "config.yaml")
    if not os.path.exists(path):
        raise UsageError(f"{logdir} holds no run (no config.yaml)")
    config = config_lib.read_run_config(path)
    for override in planner_overrides:
        if not override.startswith("planner."):
            raise UsageError(f"--set {override!r}: only planner.* keys can change on a trained model (e.g. "
                             "planner.objective=risk_averse); its model, env and training are fixed")
    config = config_lib.apply_overrides(config, planner_overrides)
    make_planner(config)  # what only the planner checks (top_k <= candidates, ...) fails here, as bad input
    refuse_pickled_checkpoint(logdir)
    checkpoint = os.path.join(logdir, CHECKPOINT_NAME)
    if not (os.path.exists(checkpoint) or os.path.exists(previous_path(checkpoint))):
        raise UsageError(f"{logdir} has no checkpoint yet")
    env = make_env(config)
    model = make_model(config, env)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), example_batch(env))
    env.close()
    params = load_checkpoint(checkpoint, params, subtree="params")
    if params is None:
        raise UsageError(f"{logdir} has no readable checkpoint")
    updates = load_checkpoint(checkpoint, 0, subtree="updates")
    return Run(config, model, params, int(updates), logdir)


__all__ = ["Run", "example_batch", "load_run", "make_env", "make_model"]
