"""Environments with PlaNet's interface: DeepMind Control tasks and wrapped gymnasium envs.

Importing this package sets ``MUJOCO_GL=egl`` when unset (headless rendering, Mesa on CPU machines)
and registers every suite task as ``dmc/<domain>-<task>-v0`` with gymnasium.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before dm_control is imported anywhere below

import gymnasium as gym  # noqa: E402
from bayes_planet.envs.dmc import (  # noqa: E402
    DEFAULT_ACTION_REPEAT,
    DOMAIN_ALIASES,
    EPISODE_ENV_STEPS,
    PLANET_ACTION_REPEAT,
    DMCEnv,
    default_action_repeat,
    resolve_task,
)
from bayes_planet.envs.gym_pixels import PlanetInterface, resize_area  # noqa: E402
from dm_control import suite  # noqa: E402

DMC_PREFIX = "dmc:"


def _register_suite() -> None:
    for domain, task in suite.ALL_TASKS:
        env_id = f"dmc/{domain}-{task}-v0"
        if env_id not in gym.registry:
            gym.register(env_id, entry_point="bayes_planet.envs.dmc:DMCEnv", kwargs={"domain": domain, "task": task})


def parse_dmc_name(name: str) -> tuple[str, str]:
    """'dmc:cheetah-run' (or 'cheetah-run') -> ('cheetah', 'run'); the domain is everything before the
    first '-' so that 'ball_in_cup-catch' and 'cup-catch' both work."""
    body = name[len(DMC_PREFIX):] if name.startswith(DMC_PREFIX) else name
    domain, sep, task = body.partition("-")
    if not sep or not task:
        raise ValueError(f"expected a name like 'dmc:cheetah-run' (domain-task), got {name!r}")
    return resolve_task(domain, task.replace("-", "_"))


def effective_action_repeat(name: str, action_repeat: int) -> int:
    """The action repeat `make` gives `name` for a config's `action_repeat`, where 0 means the default:
    PlaNet's for a 'dmc:<domain>-<task>' name (so 0 and 8 are the same for cartpole), 1 for a gymnasium id.
    Other names keep the value they were given."""
    if action_repeat:
        return action_repeat
    if name.startswith(DMC_PREFIX):
        return default_action_repeat(parse_dmc_name(name)[0])
    return action_repeat if name.startswith("dmc/") else 1


def make(
    name: str,
    *,
    action_repeat: int | None = None,
    image_size: int = 64,
    camera_id: int | None = None,
    observation: str = "pixels",
    seed: int | None = None,
    shadow_size: int | None = None,
    episode_steps: int | None = None,
) -> gym.Env:
    """Make an env with PlaNet's interface from 'dmc:<domain>-<task>' or a plain gymnasium id.

    DeepMind Control names use the per-task PlaNet action repeat unless `action_repeat` is given; a
    gymnasium env (e.g. 'Pendulum-v1') is rendered to pixels and uses action_repeat 1 by default.
    `shadow_size` (DeepMind Control only): the shadow map's side in pixels, None for the task's own (see
    `DMCEnv`). `episode_steps` (DeepMind Control only): env steps per episode, None for the suite's 1000.
    """
    if name.startswith(DMC_PREFIX):
        domain, task = parse_dmc_name(name)
        return DMCEnv(domain, task, action_repeat, image_size, camera_id, observation, seed,
                      shadow_size=shadow_size, episode_steps=episode_steps)
    if name not in gym.registry:
        raise ValueError(
            f"unknown environment {name!r}: use 'dmc:<domain>-<task>' (e.g. 'dmc:cheetah-run') "
            "or a registered gymnasium id (e.g. 'Pendulum-v1')"
        )
    if name.startswith("dmc/"):
        return gym.make(name, action_repeat=action_repeat, image_size=image_size, camera_id=camera_id,
                        observation=observation, seed=seed, shadow_size=shadow_size,
                        episode_steps=episode_steps).unwrapped
    for option, value in {"shadow_size": shadow_size, "episode_steps": episode_steps}.items():
        if value is not None:
            raise ValueError(f"{option} applies to DeepMind Control tasks only, not to {name!r}")
    env = gym.make(name, render_mode="rgb_array" if observation == "pixels" else None)
    wrapped = PlanetInterface(env, effective_action_repeat(name, action_repeat or 0), image_size, observation)
    if seed is not None:
        wrapped.reset(seed=seed)
    return wrapped


_register_suite()

__all__ = [
    "DEFAULT_ACTION_REPEAT",
    "DOMAIN_ALIASES",
    "EPISODE_ENV_STEPS",
    "PLANET_ACTION_REPEAT",
    "DMCEnv",
    "PlanetInterface",
    "default_action_repeat",
    "effective_action_repeat",
    "make",
    "parse_dmc_name",
    "resize_area",
]
