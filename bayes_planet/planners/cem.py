"""The cross-entropy method over action sequences (PlaNet's planner)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from bayes_planet.planners import base
from bayes_planet.planners.base import ScoreFn, check_sizes


@dataclasses.dataclass(frozen=True)
class CEM:
    """Sample `candidates` sequences from a diagonal Gaussian over ``[horizon, A]`` actions (clipped to
    [-1, 1]), score them, refit the Gaussian to the best `top_k`, `iterations` times; act with the first
    action of the final mean. The Gaussian starts at N(0, I), or with `warm_start` at the previous plan
    shifted by one step. One traceable call: `lax.fori_loop` over iterations, candidates batched."""

    horizon: int = base.HORIZON
    iterations: int = base.ITERATIONS
    candidates: int = base.CANDIDATES
    top_k: int = base.TOP_K
    warm_start: bool = False

    def __post_init__(self):
        check_sizes(self, ("horizon", "iterations", "candidates", "top_k"))
        if self.top_k > self.candidates:
            raise ValueError(f"planner.top_k must be <= planner.candidates ({self.candidates}), got {self.top_k}")

    def initial_plan(self, action_dim: int) -> jax.Array:
        return jnp.zeros((self.horizon, action_dim), jnp.float32)

    def __call__(self, key: jax.Array, score_fn: ScoreFn, state, previous_plan: jax.Array):
        shape = (self.candidates,) + previous_plan.shape
        if self.warm_start:
            mean = jnp.concatenate([previous_plan[1:], jnp.zeros_like(previous_plan[:1])])
        else:
            mean = jnp.zeros_like(previous_plan)

        def iteration(index, belief):
            mean, std = belief
            key_sample, key_score = jax.random.split(jax.random.fold_in(key, index))
            candidates = jnp.clip(mean + std * jax.random.normal(key_sample, shape), -1.0, 1.0)
            _, best = jax.lax.top_k(score_fn(key_score, state, candidates), self.top_k)
            elite = candidates[best]
            return jnp.mean(elite, axis=0), jnp.std(elite, axis=0)

        mean, _ = jax.lax.fori_loop(0, self.iterations, iteration, (mean, jnp.ones_like(mean)))
        return mean[0], mean
