"""bayes-planet: Bayesian layers, a Bayesian RSSM world model and uncertainty-aware planners in JAX."""

from __future__ import annotations

import importlib

__all__ = [
    "MCDropoutDense",
    "VariationalDense",
    "Weights",
    "posterior_std_mean",
    "sample_weights",
    "weight_kl",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    # the Bayesian layers load on first use, so that light submodules (bayes_planet.memory, used before a
    # command re-executes itself) do not import JAX
    if name in __all__:
        return getattr(importlib.import_module("bayes_planet.bayes"), name)
    raise AttributeError(f"module 'bayes_planet' has no attribute {name!r}")
