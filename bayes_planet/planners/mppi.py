"""Model predictive path integral control (MPPI) over action sequences."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from bayes_planet.planners import base
from bayes_planet.planners.base import ScoreFn, check_sizes


@dataclasses.dataclass(frozen=True)
class MPPI:
    """Sample `candidates` sequences around the current mean (Gaussian noise of std `noise_std`, clipped to
    [-1, 1]), score them, and move the mean to their softmax-weighted average with weights
    ``exp((score - max) / (temperature * std(scores)))``, `iterations` times; act with the first action of
    the final mean. Unlike CEM, every candidate counts, in proportion to its exponentiated score
    (`temperature` in units of the scores' spread: small is greedy, large averages everything). The mean
    starts at the previous plan shifted by one step (MPPI's usual warm start)."""

    horizon: int = base.HORIZON
    iterations: int = base.ITERATIONS
    candidates: int = base.CANDIDATES
    temperature: float = 0.5
    noise_std: float = 0.5

    def __post_init__(self):
        check_sizes(self, ("horizon", "iterations", "candidates"))
        for name in ("temperature", "noise_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"planner.{name} must be > 0, got {getattr(self, name)}")

    def initial_plan(self, action_dim: int) -> jax.Array:
        return jnp.zeros((self.horizon, action_dim), jnp.float32)

    def __call__(self, key: jax.Array, score_fn: ScoreFn, state, previous_plan: jax.Array):
        shape = (self.candidates,) + previous_plan.shape
        start = jnp.concatenate([previous_plan[1:], jnp.zeros_like(previous_plan[:1])])

        def iteration(index, mean):
            key_sample, key_score = jax.random.split(jax.random.fold_in(key, index))
            candidates = jnp.clip(mean + self.noise_std * jax.random.normal(key_sample, shape), -1.0, 1.0)
            scores = score_fn(key_score, state, candidates)
            spread = jnp.maximum(jnp.std(scores), 1e-6)
            weights = jax.nn.softmax((scores - jnp.max(scores)) / (self.temperature * spread))
            return jnp.tensordot(weights, candidates, axes=1)

        mean = jax.lax.fori_loop(0, self.iterations, iteration, start)
        return mean[0], mean
