"""Run a policy for whole episodes in an env with PlaNet's interface."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Episode:
    """One episode: observations ``[T+1, ...]`` (the reset one first), actions ``[T, A]``, rewards ``[T]``,
    and the true physical state of every observation (``velocity``/``position`` ``[T+1, D]``)."""

    observations: list = field(default_factory=list)
    actions: list = field(default_factory=list)
    rewards: list = field(default_factory=list)
    infos: list = field(default_factory=list)

    @property
    def total_reward(self) -> float:
        """The episode's undiscounted return (sum of its rewards)."""
        return float(np.sum(self.rewards))

    def arrays(self) -> dict[str, np.ndarray]:
        """The episode as arrays; actions and rewards padded with a leading zero to align with obs."""
        action_dim = np.asarray(self.actions[0]).shape
        out = {
            "observation": np.stack(self.observations),
            "action": np.concatenate([np.zeros((1, *action_dim), np.float32),
                                      np.asarray(self.actions, np.float32)]),
            "reward": np.concatenate([[0.0], np.asarray(self.rewards, np.float32)]).astype(np.float32),
        }
        for key in ("velocity", "position", "speed"):
            if key in self.infos[0]:
                out[key] = np.stack([np.asarray(i[key], np.float32) for i in self.infos])
        return out


def run_episode(env, policy: Callable[[np.ndarray], np.ndarray], seed: int | None = None,
                on_step: Callable[[float], None] | None = None) -> Episode:
    """Roll `policy(observation) -> action` until the episode terminates or is truncated."""
    observation, info = env.reset(seed=seed)
    episode = Episode([observation], [], [], [info])
    done = False
    while not done:
        action = np.asarray(policy(observation), np.float32)
        observation, reward, terminated, truncated, info = env.step(action)
        episode.observations.append(observation)
        episode.actions.append(action)
        episode.rewards.append(reward)
        episode.infos.append(info)
        done = terminated or truncated
        if on_step is not None:
            on_step(reward)
    return episode


def random_policy(action_space, seed: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """Uniform random actions in ``[-1, 1]``, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    return lambda _: rng.uniform(-1.0, 1.0, action_space.shape).astype(np.float32)
