"""bayes-planet: Bayesian layers, a Bayesian RSSM world model and uncertainty-aware planners in JAX."""

from bayes_planet.bayes import (
    MCDropoutDense,
    VariationalDense,
    Weights,
    posterior_std_mean,
    sample_weights,
    weight_kl,
)

__all__ = [
    "MCDropoutDense",
    "VariationalDense",
    "Weights",
    "posterior_std_mean",
    "sample_weights",
    "weight_kl",
]
__version__ = "0.1.0"
