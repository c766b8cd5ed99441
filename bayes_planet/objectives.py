"""Uncertainty objectives: turn returns under several weight samples into one score per candidate.

Every objective is a pure function of ``returns [candidates, K]``, where column k is the return of each
candidate action sequence under weight sample k (held fixed along the whole horizon), and gives scores
``[candidates]``. With one weight sample, or identical samples (a deterministic model), every objective
is the plain return, i.e. PlaNet's planner.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

OBJECTIVES = ("mean", "optimistic", "risk_averse", "cvar", "thompson")


def mean(returns: jax.Array) -> jax.Array:
    """The Bayesian model average of the return."""
    return jnp.mean(returns, axis=-1)


def optimistic(returns: jax.Array, beta: float) -> jax.Array:
    """``mean + beta * std`` across weight samples: prefers sequences the model is unsure about."""
    return jnp.mean(returns, axis=-1) + beta * jnp.std(returns, axis=-1)


def risk_averse(returns: jax.Array, beta: float) -> jax.Array:
    """``mean - beta * std`` across weight samples: avoids sequences the model is unsure about."""
    return jnp.mean(returns, axis=-1) - beta * jnp.std(returns, axis=-1)


def cvar(returns: jax.Array, alpha: float) -> jax.Array:
    """Conditional value at risk: the mean of the worst ``ceil(alpha * K)`` of the K returns."""
    worst = max(1, math.ceil(alpha * returns.shape[-1]))
    return jnp.mean(jnp.sort(returns, axis=-1)[..., :worst], axis=-1)


def thompson(returns: jax.Array) -> jax.Array:
    """Posterior sampling: the return under the first weight sample (the planner's caller decides how
    often that sample is redrawn: each plan call, or once per episode)."""
    return returns[..., 0]


def make_objective(name: str, beta: float = 1.0, alpha: float = 0.1) -> Callable[[jax.Array], jax.Array]:
    """The objective `name` (one of `OBJECTIVES`) as a function ``returns [C, K] -> scores [C]``."""
    if name not in OBJECTIVES:
        raise ValueError(f"planner.objective must be one of {OBJECTIVES}, got {name!r}")
    if name in ("optimistic", "risk_averse") and beta < 0:
        raise ValueError(f"planner.beta must be >= 0, got {beta}")
    if name == "cvar" and not 0 < alpha <= 1:
        raise ValueError(f"planner.alpha must be in (0, 1], got {alpha}")
    return {
        "mean": mean,
        "optimistic": lambda returns: optimistic(returns, beta),
        "risk_averse": lambda returns: risk_averse(returns, beta),
        "cvar": lambda returns: cvar(returns, alpha),
        "thompson": thompson,
    }[name]
