"""Diagonal Gaussian, hand-written: the latent distributions of the RSSM and the output likelihoods."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

_LOG_2PI = float(jnp.log(2.0 * jnp.pi))


class DiagGaussian(NamedTuple):
    """Independent Normal per entry; `mean` and `std` have shape ``[..., D]``. Reductions sum over D."""

    mean: jax.Array
    std: jax.Array

    def sample(self, key: jax.Array) -> jax.Array:
        """Reparameterized sample ``[..., D]``."""
        return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)

    def log_prob(self, value: jax.Array) -> jax.Array:
        """Log density summed over the last axis: ``[...]``, in nats."""
        z = (value - self.mean) / self.std
        return jnp.sum(-0.5 * jnp.square(z) - jnp.log(self.std) - 0.5 * _LOG_2PI, axis=-1)

    def entropy(self) -> jax.Array:
        """Differential entropy summed over the last axis: ``[...]``, in nats."""
        return jnp.sum(0.5 + 0.5 * _LOG_2PI + jnp.log(self.std), axis=-1)

    def kl(self, other: DiagGaussian) -> jax.Array:
        """KL(self || other) summed over the last axis: ``[...]``, in nats."""
        var_ratio = jnp.square(self.std / other.std)
        mahalanobis = jnp.square((self.mean - other.mean) / other.std)
        return jnp.sum(0.5 * (var_ratio + mahalanobis - 1.0 - jnp.log(var_ratio)), axis=-1)



def unit_gaussian_nll(value: jax.Array, mean: jax.Array, event_ndims: int) -> jax.Array:
    """Negative log density of a unit-variance Gaussian without its constant (0.5 log 2 pi per entry):
    half the squared error summed over the last `event_ndims` axes, in nats."""
    axes = tuple(range(-event_ndims, 0)) if event_ndims else ()
    return 0.5 * jnp.sum(jnp.square(value - mean), axis=axes)


def gaussian_nll(value: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """Negative log density ``[...]`` of a Gaussian per entry without its constant (0.5 log 2 pi), in nats:
    ``0.5 ((value - mean) / std)^2 + log std``. With ``std = 1`` it equals ``unit_gaussian_nll(..., 0)``."""
    return 0.5 * jnp.square((value - mean) / std) + jnp.log(std)
