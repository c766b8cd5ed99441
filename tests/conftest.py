"""Shared fixtures: real random episodes from dm_control, and tiny world-model sizes."""

import os

import jax
import numpy as np
import pytest

import envs
from agents.rollout import random_policy, run_episode
from bayes_planet.replay import Replay
from bayes_planet.world_model import ModelConfig, WorldModel, make_optimizer, make_train_step

TINY = dict(cnn_depth=8, deter_size=32, stoch_size=8, hidden_size=32, reward_hidden=32, reward_layers=2)


def tiny_config(**overrides) -> ModelConfig:
    return ModelConfig(**{**TINY, **overrides})


def collect_random_episodes(task: str, count: int, seed: int = 0):
    env = envs.make(task, seed=seed)
    return [run_episode(env, random_policy(env.action_space, seed + i), seed=seed + i).arrays()
            for i in range(count)]


@pytest.fixture(scope="session")
def cartpole_episodes():
    """Four random cartpole-swingup pixel episodes of 126 frames (action repeat 8)."""
    return collect_random_episodes("dmc:cartpole-swingup", 4)


def stack_batch(episodes, length, start=0):
    return {k: np.stack([e[k][start:start + length] for e in episodes]) for k in ("observation", "action", "reward")}


STEPS, BATCH, LENGTH = 1000, 6, 12


@pytest.fixture(scope="session")
def trained_on_cartpole(cartpole_episodes, tmp_path_factory):
    """A tiny pixel model trained for STEPS updates on 3 random cartpole-swingup episodes (the 4th is held out).
    About 2.5 minutes on 2 CPU cores."""
    replay = Replay(str(tmp_path_factory.mktemp("replay")))
    for episode in cartpole_episodes[:3]:
        replay.add(episode)
    model = WorldModel(tiny_config(), 1)
    rng = np.random.default_rng(int(os.environ.get("BAYES_PLANET_TEST_SEED", 0)))
    params = model.init(jax.random.PRNGKey(0), replay.sample(BATCH, LENGTH, rng))
    optimizer = make_optimizer(3e-3)
    opt_state, step = optimizer.init(params), make_train_step(model, optimizer)
    history = []
    for i in range(STEPS):
        batch = replay.sample(BATCH, LENGTH, rng)
        params, opt_state, metrics = step(params, opt_state, jax.random.PRNGKey(i), batch)
        history.append({k: float(v) for k, v in metrics.items()})
    return model, params, history


