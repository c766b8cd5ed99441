"""`PlanetAgent`: filter observations with the world model's posterior, plan, explore."""

from __future__ import annotations

import dataclasses
import typing
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from bayes_planet import config as config_lib
from bayes_planet import parallel, precision
from bayes_planet.config import Config
from bayes_planet.errors import UsageError
from bayes_planet.objectives import make_objective
from bayes_planet.planners import Planner, planner_class, world_model_scorer
from bayes_planet.rssm import RSSMState
from bayes_planet.world_model import WorldModel


class AgentState(NamedTuple):
    """What the agent carries between steps of one episode."""

    latent: RSSMState  # filtered belief, [1, ...]
    action: jax.Array  # the last action taken, [1, A] (zero at the start: it "led to" the first frame)
    plan: jax.Array  # the planner's last plan
    weights_key: jax.Array  # the episode's transition sample (Thompson sampling per episode)


def make_planner(config: Config) -> Planner:
    """The planner ``config.planner.name`` names (`planner_class`), built by keyword: each of its fields
    from ``planner.options`` if given there, else from the common ``planner.*`` option of that name, else
    its own default. Raises a `UsageError` naming an unknown option or a bad value."""
    c = config.planner
    try:
        cls = planner_class(c.name)
    except ValueError as error:
        raise UsageError(str(error)) from None
    fields = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(c.options) - fields)
    if unknown:
        raise UsageError(f"config key 'planner.options.{unknown[0]}' is not a field of planner {c.name!r}; its "
                         f"fields: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    common = {name: getattr(c, name) for name in fields & set(dataclasses.asdict(c))}
    options = {name: config_lib.check_value(f"planner.options.{name}", value, hints[name])
               for name, value in c.options.items()}
    try:
        return cls(**{**common, **options})
    except ValueError as error:
        raise UsageError(str(error)) from None


class PlanetAgent:
    """Acts in an env from pixels: posterior filtering, then planning in latent space under the weight
    posterior, then Gaussian exploration noise (training only), clipped to [-1, 1].

    One jit-compiled function per step does filtering, scoring every candidate under K weight samples
    and all planner iterations.
    """

    def __init__(self, model: WorldModel, planner: Planner, objective: str = "mean", weight_samples: int = 4,
                 beta: float = 1.0, alpha: float = 0.1, thompson_every: str = "plan", mesh: Mesh | None = None,
                 matmul_dtype: str = "float32"):
        self.model, self.planner, self.mesh, self.matmul_dtype = model, planner, mesh, matmul_dtype
        self.objective = make_objective(objective, beta, alpha)
        # Thompson sampling rolls out one posterior sample; the other objectives use K of them
        self.weight_samples = 1 if objective == "thompson" else weight_samples
        self.hold_weights_for_episode = objective == "thompson" and thompson_every == "episode"
        if mesh is not None:
            parallel.check_divisible(planner.candidates * max(1, self.weight_samples), mesh,
                                     "planner.candidates x planner.weight_samples")
        self._step = jax.jit(self._step_fn)

    @classmethod
    def from_config(cls, model: WorldModel, config: Config) -> PlanetAgent:
        """The agent ``config.planner`` describes; with ``parallel.candidates`` its rollouts are split over
        this process's devices."""
        c = config.planner
        if (c.matmul_dtype == "bfloat16" and jax.default_backend() == "cpu"
                and precision.cpu_has_bfloat16_matmuls() is False):
            warnings.warn("planner.matmul_dtype=bfloat16 on a CPU without bfloat16 instructions plans more slowly "
                          "than float32 (1.14x on a Zen 3 EPYC); set planner.matmul_dtype=float32 there",
                          stacklevel=2)
        mesh = parallel.device_mesh(jax.local_devices()) if config.parallel.candidates else None
        return cls(model, make_planner(config), c.objective, c.weight_samples, c.beta, c.alpha, c.thompson_every,
                   mesh, c.matmul_dtype)

    def reset(self, key: jax.Array) -> AgentState:
        """The state at the start of an episode; `key` draws the episode's weight sample."""
        action_dim = self.model.action_dim
        return AgentState(self.model.initial_state(1), jnp.zeros((1, action_dim)),
                          self.planner.initial_plan(action_dim), key)

    def _step_fn(self, params: Any, key: jax.Array, state: AgentState, observation: jax.Array,
                 noise_std: jax.Array) -> tuple[jax.Array, AgentState]:
        key_filter, key_plan, key_weights, key_noise = jax.random.split(key, 4)
        latent = self.model.observe(params, key_filter, state.latent, observation[None], state.action)
        weights_key = state.weights_key if self.hold_weights_for_episode else key_weights
        score = world_model_scorer(self.model, params, weights_key, self.objective, self.weight_samples,
                                   self.mesh, self.matmul_dtype)
        action, plan = self.planner(key_plan, score, latent, state.plan)
        action = jnp.clip(action + noise_std * jax.random.normal(key_noise, action.shape), -1.0, 1.0)
        return action, AgentState(latent, action[None], plan, state.weights_key)

    def step(self, params: Any, key: jax.Array, state: AgentState, observation: np.ndarray,
             noise_std: float = 0.0) -> tuple[np.ndarray, AgentState]:
        """Filter `observation` (uint8 ``[64, 64, 3]``, or a state vector), plan, and return the action ``[A]``
        with ``N(0, noise_std^2)`` noise, and the next state."""
        action, state = self._step(params, key, state, jnp.asarray(observation), jnp.float32(noise_std))
        return np.asarray(action), state

    def policy(self, params: Any, key: jax.Array, noise_std: float = 0.0):
        """A stateful ``policy(observation) -> action`` for one episode (for `agents.rollout.run_episode`)."""
        key_episode, key_steps = jax.random.split(key)
        holder = {"state": self.reset(key_episode), "count": 0}

        def act(observation: np.ndarray) -> np.ndarray:
            step_key = jax.random.fold_in(key_steps, holder["count"])
            action, holder["state"] = self.step(params, step_key, holder["state"], observation, noise_std)
            holder["count"] += 1
            return action

        return act


