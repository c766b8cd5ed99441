"""PlaNet's recurrent state-space model (Hafner et al., 2019) with Bayesian transition layers.

The state is a deterministic GRU path ``deter [..., H]`` and a stochastic latent ``stoch [..., Z]`` with
its distribution (``mean``, ``std``). The transition's dense layers (into the GRU, the prior's hidden and
output layers) are of the configured kind and take the `weights` argument of `bayes_planet.bayes`; the
posterior's layers are deterministic. Time is scanned with `hk.scan`, never a Python loop.

Alignment: ``action[t]`` is the action that led to ``observation[t]`` (zero at t = 0).
"""

from __future__ import annotations

from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp

from bayes_planet.bayes import Weights, make_dense
from bayes_planet.distributions import DiagGaussian


class RSSMState(NamedTuple):
    """Latent state; every field has a leading batch shape ``[...]`` (and time, for sequences)."""

    deter: jax.Array  # [..., deter_size]
    stoch: jax.Array  # [..., stoch_size]
    mean: jax.Array  # [..., stoch_size]
    std: jax.Array  # [..., stoch_size]

    @property
    def distribution(self) -> DiagGaussian:
        return DiagGaussian(self.mean, self.std)

    @property
    def features(self) -> jax.Array:
        """``[..., deter_size + stoch_size]``: what the decoders, reward head and probes read."""
        return jnp.concatenate([self.deter, self.stoch], -1)


def zero_state(batch_size: int, deter_size: int, stoch_size: int, dtype=jnp.float32) -> RSSMState:
    """All-zero state ``[batch_size, ...]`` (std ones, so the distribution is valid)."""
    zeros = lambda size: jnp.zeros((batch_size, size), dtype)
    return RSSMState(zeros(deter_size), zeros(stoch_size), zeros(stoch_size), jnp.ones((batch_size, stoch_size), dtype))


def _swap_batch_time(tree):
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), tree)


class RSSM(hk.Module):
    """Prior (transition) and posterior (representation) steps, and scans over time.

    Args:
      deter_size, stoch_size, hidden_size: GRU units, latent dims, dense-layer units (PlaNet: 200, 30, 200).
      min_std: added to softplus(.) for the latent std (PlaNet: 0.1).
      transition: "deterministic", "reparameterization", "flipout" or "mc_dropout".
      posterior_std_init, dropout_rate: options of the Bayesian transition layers.
    """

    def __init__(self, deter_size: int = 200, stoch_size: int = 30, hidden_size: int = 200,
                 min_std: float = 0.1, transition: str = "reparameterization",
                 posterior_std_init: float = 1e-2, dropout_rate: float = 0.1, name: str = "rssm"):
        super().__init__(name=name)
        self.deter_size, self.stoch_size, self.hidden_size = deter_size, stoch_size, hidden_size
        self.min_std = min_std
        layer = lambda size, layer_name: make_dense(transition, size, layer_name,
                                                    posterior_std_init=posterior_std_init,
                                                    dropout_rate=dropout_rate)
        self._transition_in = layer(hidden_size, "transition_in")
        self._prior_hidden = layer(hidden_size, "prior_hidden")
        self._prior_out = layer(2 * stoch_size, "prior_out")
        self._cell = hk.GRU(deter_size, name="gru")
        self._posterior_hidden = hk.Linear(hidden_size, name="posterior_hidden")
        self._posterior_out = hk.Linear(2 * stoch_size, name="posterior_out")

    def _distribution(self, raw: jax.Array) -> tuple[jax.Array, jax.Array]:
        mean, std = jnp.split(raw, 2, -1)
        return mean, jax.nn.softplus(std) + self.min_std

    def prior_step(self, state: RSSMState, action: jax.Array, weights: Weights | None = None) -> RSSMState:
        """p(s_t | s_{t-1}, a_t): ``[B, ...]`` state and ``[B, A]`` action -> ``[B, ...]`` prior state."""
        x = jax.nn.relu(self._transition_in(jnp.concatenate([state.stoch, action], -1), weights))
        deter, _ = self._cell(x, state.deter)
        hidden = jax.nn.relu(self._prior_hidden(deter, weights))
        mean, std = self._distribution(self._prior_out(hidden, weights))
        # rows rolled out under different held weight samples share their latent noise (common random
        # numbers), so the spread across weight samples is epistemic only
        groups = (weights.num_samples if weights is not None else None) or 1
        noise = jax.random.normal(hk.next_rng_key(), (mean.shape[0] // groups,) + mean.shape[1:], mean.dtype)
        stoch = mean + std * jnp.tile(noise, (groups,) + (1,) * (mean.ndim - 1))
        return RSSMState(deter, stoch, mean, std)

    def posterior_step(self, prior: RSSMState, embed: jax.Array) -> RSSMState:
        """q(s_t | h_t, o_t): the prior's deterministic path and the observation embedding ``[B, E]``."""
        hidden = jax.nn.relu(self._posterior_hidden(jnp.concatenate([prior.deter, embed], -1)))
        mean, std = self._distribution(self._posterior_out(hidden))
        stoch = DiagGaussian(mean, std).sample(hk.next_rng_key())
        return RSSMState(prior.deter, stoch, mean, std)

    def observe_step(self, state: RSSMState, action: jax.Array, embed: jax.Array,
                     weights: Weights | None = None) -> tuple[RSSMState, RSSMState]:
        """One filtering step: returns (posterior, prior), each ``[B, ...]``."""
        prior = self.prior_step(state, action, weights)
        return self.posterior_step(prior, embed), prior

    def observe(self, state: RSSMState, actions: jax.Array, embeds: jax.Array,
                weights: Weights | None = None) -> tuple[RSSMState, RSSMState]:
        """Filter a sequence: actions ``[B, T, A]``, embeds ``[B, T, E]`` -> (posteriors, priors) ``[B, T, ...]``."""
        def step(carry, inputs):
            posterior, prior = self.observe_step(carry, *inputs, weights)
            return posterior, (posterior, prior)

        _, (posteriors, priors) = hk.scan(step, state, (jnp.swapaxes(actions, 0, 1), jnp.swapaxes(embeds, 0, 1)))
        return _swap_batch_time(posteriors), _swap_batch_time(priors)

    def imagine(self, state: RSSMState, actions: jax.Array, weights: Weights | None = None) -> RSSMState:
        """Open loop from `state` ``[N, ...]`` with actions ``[N, H, A]`` -> prior states ``[N, H, ...]``.

        Pass held weights (`sample_weights`) to keep one weight sample per row group for all H steps.
        """
        def step(carry, action):
            prior = self.prior_step(carry, action, weights)
            return prior, prior

        _, priors = hk.scan(step, state, jnp.swapaxes(actions, 0, 1))
        return _swap_batch_time(priors)
