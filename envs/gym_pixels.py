"""Turn any gymnasium env with a Box action space into PlaNet's interface: pixels, Box(-1, 1), repeats."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from bayes_planet.envs.dmc import OBSERVATION_KINDS, check_action


def resize_area(frame: np.ndarray, size: int) -> np.ndarray:
    """Box-filter resize of a ``[H, W, 3]`` uint8 frame to ``[size, size, 3]`` (each output pixel is the
    mean of the input pixels it covers, so thin features are not aliased away)."""
    out = frame.astype(np.float32)
    for axis in (0, 1):
        edges = np.floor(np.linspace(0, out.shape[axis], size + 1)).astype(int)
        sums = np.add.reduceat(out, edges[:-1], axis=axis)
        counts = np.diff(edges).reshape([-1 if a == axis else 1 for a in range(3)])
        out = sums / counts
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class PlanetInterface(gym.Wrapper):
    """Actions in ``Box(-1, 1)`` rescaled to the env's bounds and repeated `action_repeat` times (rewards
    summed); observations rendered as ``rgb_array`` frames resized to ``[image_size, image_size, 3]``
    uint8 when `observation` is "pixels", else the env's own flattened observation as float32."""

    def __init__(self, env: gym.Env, action_repeat: int = 1, image_size: int = 64, observation: str = "pixels"):
        super().__init__(env)
        if not isinstance(env.action_space, gym.spaces.Box):
            raise ValueError(f"only continuous (Box) action spaces are supported, got {env.action_space}")
        if observation not in OBSERVATION_KINDS:
            raise ValueError(f"observation must be one of {OBSERVATION_KINDS}, got {observation!r}")
        if observation == "pixels" and env.render_mode != "rgb_array":
            raise ValueError("pixel observations need an env made with render_mode='rgb_array'")
        if not isinstance(action_repeat, int) or action_repeat < 1:
            raise ValueError(f"action_repeat must be a positive integer, got {action_repeat!r}")
        self.action_repeat = action_repeat
        self.image_size = image_size
        self.observation_kind = observation
        self._low = env.action_space.low.astype(np.float64)
        self._high = env.action_space.high.astype(np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, env.action_space.shape, dtype=np.float32)
        if observation == "pixels":
            self.observation_space = gym.spaces.Box(0, 255, (image_size, image_size, 3), dtype=np.uint8)
        else:
            size = int(np.prod(env.observation_space.shape))
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), dtype=np.float32)

    def _observe(self, observation) -> np.ndarray:
        if self.observation_kind == "pixels":
            try:
                frame = self.env.render()
            except gym.error.DependencyNotInstalled as error:
                raise gym.error.DependencyNotInstalled(
                    f"{error} For gymnasium's classic-control tasks (Pendulum, MountainCarContinuous): "
                    "pip install 'bayes-planet[classic-control]'") from None
            return resize_area(np.asarray(frame), self.image_size)
        return np.asarray(observation, dtype=np.float32).ravel()

    def reset(self, *, seed=None, options=None):
        observation, info = self.env.reset(seed=seed, options=options)
        return self._observe(observation), info

    def step(self, action):
        action = check_action(action, self.action_space.shape)
        scaled = self._low + (action + 1.0) * 0.5 * (self._high - self._low)
        total = 0.0
        for _ in range(self.action_repeat):
            observation, reward, terminated, truncated, info = self.env.step(scaled.astype(np.float32))
            total += float(reward)
            if terminated or truncated:
                break
        return self._observe(observation), total, terminated, truncated, info
