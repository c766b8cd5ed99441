"""The planner protocol, and the glue that scores action sequences with a `WorldModel`.

A planner is called as ``planner(key, score_fn, state, previous_plan) -> (action, plan)``:

- ``score_fn(key, state, actions [N, H, A]) -> scores [N]`` scores candidate action sequences in
  ``[-1, 1]`` from the latent `state` (higher is better); `world_model_scorer` builds one from a world
  model, its params and an uncertainty objective, but any jit-able function will do;
- ``previous_plan`` is whatever the planner returned last (``planner.initial_plan(action_dim)`` at the
  start of an episode); the returned ``action`` is ``[A]``.

Planners are frozen dataclasses (hashable, so they can be static arguments to `jax.jit`), and their call
is traceable: the agent jit-compiles filtering, scoring and planning as one function.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from bayes_planet import parallel
from bayes_planet.precision import with_matmul_dtype
from bayes_planet.world_model import imagine_under_samples

ScoreFn = Callable[[jax.Array, Any, jax.Array], jax.Array]

# PlaNet's planning budget: the one place the common options' defaults live (the built-in planners' fields
# and `config.PlannerConfig` take them from here)
HORIZON, ITERATIONS, CANDIDATES, TOP_K = 12, 10, 1000, 100


class Planner(Protocol):
    """What the agent needs of a planner: its `horizon` and the number of `candidates` it scores per call
    (the rows of one `score_fn` call, which ``parallel.candidates`` splits over devices), a first plan, and
    the call itself. Built-ins: `CEM`, `RandomShooting`, `MPPI`; a user's planner is named in the config by
    its import path (``planner.name: mypkg.planners:MyPlanner``), with its own fields in ``planner.options``."""

    horizon: int
    candidates: int

    def initial_plan(self, action_dim: int) -> jax.Array:
        """The plan an episode starts from, ``[horizon, action_dim]`` in ``[-1, 1]``."""
        ...

    def __call__(self, key: jax.Array, score_fn: ScoreFn, state: Any,
                 previous_plan: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Plan from the latent `state` given last step's plan ``[horizon, A]``: return the action
        to take now ``[A]`` and the plan ``[horizon, A]`` to pass back at the next step."""
        ...


def check_sizes(planner: Any, names: tuple[str, ...]) -> None:
    """Raise a ValueError naming the first of `planner`'s size fields in `names` that is below 1."""
    for name in names:
        if getattr(planner, name) < 1:
            raise ValueError(f"planner.{name} must be >= 1, got {getattr(planner, name)}")


def world_model_scorer(model, params, weights_key: jax.Array | None, objective: Callable[[jax.Array], jax.Array],
                       weight_samples: int, mesh: Mesh | None = None, matmul_dtype: str = "float32") -> ScoreFn:
    """Score candidates by their imagined return under `weight_samples` transition samples, each held
    fixed along the whole horizon, reduced by `objective` (``returns [N, K] -> scores [N]``).

    With ``weight_samples == 0`` the posterior-mean transition is used (K = 1; plain PlaNet). The samples
    are drawn from `weights_key`, so the same key gives the same K models (hold it for an episode for
    Thompson sampling per episode). With a `mesh` the ``K x N`` rollouts are split over its devices.
    `matmul_dtype` "bfloat16" runs the rollouts' matmuls on bfloat16 inputs (`precision.with_matmul_dtype`).
    """
    rollouts = with_matmul_dtype(functools.partial(imagine_under_samples, model, samples=weight_samples,
                                                   constrain=functools.partial(parallel.constrain_rows, mesh=mesh)),
                                 matmul_dtype)

    def score(key: jax.Array, state: Any, actions: jax.Array) -> jax.Array:
        rewards, _ = rollouts(params, key, state, actions, weights_key if weight_samples else None)
        return objective(jnp.sum(rewards, axis=-1).T)  # returns [N, K]

    return score
