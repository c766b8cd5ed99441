"""A user's planner, outside the package, for the test that a config can name one by its import path."""

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ConstantActions:
    """Score `candidates` constant action sequences (one action held for the whole horizon), drawn uniformly
    from ``[-spread, spread]``, and act with the best."""

    horizon: int = 12
    candidates: int = 100
    spread: float = 1.0

    def initial_plan(self, action_dim: int) -> jax.Array:
        return jnp.zeros((self.horizon, action_dim), jnp.float32)

    def __call__(self, key, score_fn, state, previous_plan):
        key_sample, key_score = jax.random.split(key)
        levels = jax.random.uniform(key_sample, (self.candidates, 1, previous_plan.shape[-1]),
                                    minval=-self.spread, maxval=self.spread)
        candidates = jnp.broadcast_to(levels, (self.candidates,) + previous_plan.shape)
        best = candidates[jnp.argmax(score_fn(key_score, state, candidates))]
        return best[0], best
