"""Random shooting: the best of uniformly random action sequences."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from bayes_planet.planners import base
from bayes_planet.planners.base import ScoreFn, check_sizes


@dataclasses.dataclass(frozen=True)
class RandomShooting:
    """Score `candidates` sequences drawn uniformly from ``[-1, 1]^(horizon x A)`` and act with the first
    action of the best one (which is also the returned plan)."""

    horizon: int = base.HORIZON
    candidates: int = base.CANDIDATES

    def __post_init__(self):
        check_sizes(self, ("horizon", "candidates"))

    def initial_plan(self, action_dim: int) -> jax.Array:
        return jnp.zeros((self.horizon, action_dim), jnp.float32)

    def __call__(self, key: jax.Array, score_fn: ScoreFn, state, previous_plan: jax.Array):
        key_sample, key_score = jax.random.split(key)
        candidates = jax.random.uniform(key_sample, (self.candidates,) + previous_plan.shape,
                                        minval=-1.0, maxval=1.0)
        best = candidates[jnp.argmax(score_fn(key_score, state, candidates))]
        return best[0], best
