"""Shared fixtures: real random episodes from dm_control, and tiny world-model sizes."""

import numpy as np
import pytest

import envs
from agents.rollout import random_policy, run_episode
from bayes_planet.world_model import ModelConfig

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
