"""DeepMind Control Suite tasks as gymnasium environments, with PlaNet's pixel interface."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from dm_control import suite
from dm_control.mujoco import engine

# PlaNet's action repeat per domain (Hafner et al., 2019); other domains default to 4.
PLANET_ACTION_REPEAT = {
    "cartpole": 8,
    "reacher": 4,
    "cheetah": 4,
    "finger": 2,
    "ball_in_cup": 4,
    "walker": 2,
}
DEFAULT_ACTION_REPEAT = 4
EPISODE_ENV_STEPS = 1000
# Short names used by PlaNet and Dreamer for suite domains.
DOMAIN_ALIASES = {"cup": "ball_in_cup"}
OBSERVATION_KINDS = ("pixels", "state")
ACTION_TOLERANCE = 1e-5


def resolve_task(domain: str, task: str) -> tuple[str, str]:
    """Map a (possibly aliased) domain and task to suite names; a clear error lists the valid ones."""
    domain = DOMAIN_ALIASES.get(domain, domain)
    domains = sorted({d for d, _ in suite.ALL_TASKS})
    if domain not in domains:
        raise ValueError(f"unknown DeepMind Control domain {domain!r}; valid domains: {', '.join(domains)}")
    tasks = sorted(t for d, t in suite.ALL_TASKS if d == domain)
    if task not in tasks:
        raise ValueError(f"unknown task {task!r} for domain {domain!r}; valid tasks: {', '.join(tasks)}")
    return domain, task


def default_action_repeat(domain: str) -> int:
    """PlaNet's action repeat for a DeepMind Control domain (e.g. 8 for cartpole), or the default for others."""
    return PLANET_ACTION_REPEAT.get(DOMAIN_ALIASES.get(domain, domain), DEFAULT_ACTION_REPEAT)


def check_action(action: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Validate an agent action for a Box(-1, 1) space: right shape, finite, within float tolerance."""
    action = np.asarray(action, dtype=np.float64)
    if action.shape != shape:
        raise ValueError(f"action has shape {action.shape}, expected {shape}")
    if not np.all(np.isfinite(action)):
        raise ValueError(f"action contains non-finite values: {action}")
    if np.any(np.abs(action) > 1.0 + ACTION_TOLERANCE):
        raise ValueError(f"action must lie in [-1, 1]; got values from {action.min():.4g} to {action.max():.4g}")
    return np.clip(action, -1.0, 1.0)


class DMCEnv(gym.Env):
    """A DeepMind Control task as a gymnasium env.

    Observations: uint8 pixels ``[image_size, image_size, 3]`` from `camera_id`, rendered once per agent
    step (never on the repeated steps), or the flattened float32 proprioceptive state. Actions lie in
    ``Box(-1, 1)`` and are rescaled to the task's true bounds; each is repeated `action_repeat` times and
    the rewards summed. Episodes end by truncation after `episode_steps` env steps (None: the suite's
    1000; fewer make shorter episodes, e.g. for quick tests).

    ``info`` at every step: ``velocity`` (generalized velocities, qvel), ``position`` (qpos),
    ``speed`` where the task defines one (e.g. cheetah's forward speed, m/s), ``env_steps``.

    `shadow_size`: the side of the shadow map in pixels (the suite's models use 2048 when None). Mesa's
    software renderer draws that map for every frame: with 512 an env step takes about 0.67x as long, and
    under 0.1% of a frame's values differ from those of the 2048 frame by more than one 5-bit level.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        domain: str,
        task: str,
        action_repeat: int | None = None,
        image_size: int = 64,
        camera_id: int | None = None,
        observation: str = "pixels",
        seed: int | None = None,
        render_mode: str | None = None,
        shadow_size: int | None = None,
        episode_steps: int | None = None,
    ):
        domain, task = resolve_task(domain, task)
        if observation not in OBSERVATION_KINDS:
            raise ValueError(f"observation must be one of {OBSERVATION_KINDS}, got {observation!r}")
        action_repeat = default_action_repeat(domain) if action_repeat is None else action_repeat
        if not isinstance(action_repeat, int) or action_repeat < 1:
            raise ValueError(f"action_repeat must be a positive integer, got {action_repeat!r}")
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        if shadow_size is not None and (not isinstance(shadow_size, int) or shadow_size < 1):
            raise ValueError(f"shadow_size must be a positive integer (pixels), got {shadow_size!r}")
        episode_steps = EPISODE_ENV_STEPS if episode_steps is None else episode_steps
        if not isinstance(episode_steps, int) or not 1 <= episode_steps <= EPISODE_ENV_STEPS:
            raise ValueError(f"episode_steps must be an integer in [1, {EPISODE_ENV_STEPS}] (env steps), "
                             f"got {episode_steps!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.domain, self.task_name = domain, task
        self.action_repeat = action_repeat
        self.episode_steps = episode_steps
        self.image_size = image_size
        self.camera_id = (2 if domain == "quadruped" else 0) if camera_id is None else camera_id
        self.observation_kind = observation
        self.render_mode = render_mode
        self._env = suite.load(domain, task, task_kwargs={"random": seed})
        if shadow_size is not None:  # read when the first render creates the rendering context
            self._env.physics.model.vis.quality.shadowsize = shadow_size
        self._env_steps = 0
        self._camera: engine.Camera | None = None  # made at the first render, then held (see `_render`)

        spec = self._env.action_spec()
        self._action_low, self._action_high = spec.minimum.astype(np.float64), spec.maximum.astype(np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, spec.shape, dtype=np.float32)
        if observation == "pixels":
            self.observation_space = gym.spaces.Box(0, 255, (image_size, image_size, 3), dtype=np.uint8)
        else:
            size = sum(int(np.prod(v.shape)) for v in self._env.observation_spec().values())
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), dtype=np.float32)

    @property
    def physics(self):
        """The underlying MuJoCo physics (read-only use, e.g. for tests and probes)."""
        return self._env.physics

    @property
    def velocity_names(self) -> list[str]:
        """A name for each entry of ``info["velocity"]`` (qvel), from the joint it belongs to, with units,
        e.g. ``["slider velocity (m/s)", "hinge_1 angular velocity (rad/s)"]`` for cartpole."""
        model = self._env.physics.model
        names = []
        for dof in range(model.nv):
            joint = int(model.dof_jntid[dof])
            name, kind = model.id2name(joint, "joint") or f"joint {joint}", int(model.jnt_type[joint])
            if kind == 2:  # slide
                names.append(f"{name} velocity (m/s)")
            elif kind == 3:  # hinge
                names.append(f"{name} angular velocity (rad/s)")
            else:  # free or ball joints: several entries per joint
                names.append(f"{name}[{dof - int(model.jnt_dofadr[joint])}] velocity")
        return names

    @property
    def max_episode_steps(self) -> int:
        """Agent steps per episode: `episode_steps` env steps divided by the action repeat (rounded up)."""
        return -(-self.episode_steps // self.action_repeat)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._env.task.random.seed(seed)
        time_step = self._env.reset()
        self._env_steps = 0
        return self._observation(time_step), self._info()

    def step(self, action):
        scaled = self._scaled(action)
        reward, terminated = 0.0, False
        for _ in range(self.action_repeat):
            time_step = self._env.step(scaled)
            self._env_steps += 1
            reward += time_step.reward or 0.0
            if time_step.last():
                terminated = time_step.discount == 0.0
                break
            if self._env_steps >= self.episode_steps:
                break
        truncated = not terminated and (time_step.last() or self._env_steps >= self.episode_steps)
        return self._observation(time_step), float(reward), bool(terminated), bool(truncated), self._info()

    def simulate_returns(self, action_sequences) -> np.ndarray:
        """The true return of each action sequence ``[N, H, A]`` (in ``[-1, 1]``) from the current state, as
        `step` would sum it (each action repeated `action_repeat` times), for ``[N]`` returns. Each sequence
        runs on a copy of the physics, so the episode goes on as if this had not been called; nothing is
        rendered, and the sequences may run past the episode's end."""
        action_sequences = np.asarray(action_sequences)
        if action_sequences.ndim != 3:
            raise ValueError(f"action sequences must be [N, H, A], got shape {action_sequences.shape}")
        physics, task = self._env.physics, self._env.task
        sub_steps = max(1, round(self._env.control_timestep() / physics.timestep()))  # as the suite env steps
        returns = np.zeros(len(action_sequences))
        copy = physics.copy(share_model=True)  # once: a copy builds its named indexers (~15 ms)
        for index, sequence in enumerate(action_sequences):
            mujoco.mj_copyData(copy.data.ptr, physics.model.ptr, physics.data.ptr)  # back to the current state
            for action in sequence:
                scaled = self._scaled(action)
                for _ in range(self.action_repeat):
                    task.before_step(scaled, copy)
                    copy.step(sub_steps)
                    task.after_step(copy)
                    returns[index] += task.get_reward(copy)
        return returns

    def _scaled(self, action) -> np.ndarray:
        action = check_action(action, self.action_space.shape)
        return self._action_low + (action + 1.0) * 0.5 * (self._action_high - self._action_low)

    def render(self):
        """An rgb_array frame of the observation camera, at the observation size."""
        return self._render()

    def _render(self) -> np.ndarray:
        # The same pixels as ``physics.render(size, size, camera_id)``, which builds a camera and allocates
        # its scene for every frame: with one held camera a cheetah env step takes 0.85-0.86x as long at the
        # presets' 512-pixel shadow map, 0.91-0.94x at the suite's (bench/run.py, three runs each).
        if self._camera is None:
            self._camera = engine.Camera(self._env.physics, self.image_size, self.image_size, self.camera_id)
        return self._camera.render().copy()  # the camera draws every frame into the same buffer

    def _observation(self, time_step) -> np.ndarray:
        if self.observation_kind == "pixels":
            return self._render()
        parts = [np.asarray(v, dtype=np.float32).ravel() for v in time_step.observation.values()]
        return np.concatenate(parts)

    def _info(self) -> dict[str, Any]:
        physics = self._env.physics
        info = {
            "velocity": physics.data.qvel.copy(),
            "position": physics.data.qpos.copy(),
            "env_steps": self._env_steps,
        }
        if hasattr(physics, "speed"):
            info["speed"] = np.float64(physics.speed())
        return info

    def close(self):
        self._camera = None
        self._env.close()
