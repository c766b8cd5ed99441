"""Is the model's uncertainty honest? Calibration of open-loop reward predictions.

The predictive distribution of a reward is an equally weighted mixture of Gaussians
``N(mean_m, std_m²)``, one component per (weight sample, latent sample) rollout, `std_m` being the reward
head's likelihood std at that rollout's state (`model.reward_noise`: 1 everywhere for PlaNet's unit-variance
loss, or learned). Scores: the negative
log-likelihood, and the coverage of central intervals read from the probability integral transform
(PIT): a truth lies in the central `level` interval exactly when ``|PIT - 0.5| <= level / 2``.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from scipy.special import logsumexp, ndtr

from bayes_planet.world_model import filter_sequences, imagine_under_samples

DEFAULT_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def mixture_pit(means: np.ndarray, std, truth: np.ndarray) -> np.ndarray:
    """PIT ``[...]`` of `truth` ``[...]`` under the mixture of ``N(means[m], std[m]²)``, means ``[M, ...]``,
    std a float or an array broadcasting with `means`."""
    return np.mean(ndtr((np.asarray(truth)[None] - np.asarray(means)) / std), axis=0)


def mixture_nll(means: np.ndarray, std, truth: np.ndarray) -> np.ndarray:
    """Negative log-likelihood ``[...]`` of `truth` under the mixture (nats)."""
    z = (np.asarray(truth)[None] - np.asarray(means)) / std
    log_components = -0.5 * z ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)
    return -(logsumexp(log_components, axis=0) - np.log(len(means)))


def interval_coverage(pit: np.ndarray, level: float) -> float:
    """Fraction of truths inside the central `level` interval (nominal: `level`)."""
    return float(np.mean(np.abs(np.asarray(pit) - 0.5) <= level / 2))


def reliability(pit: np.ndarray, levels=DEFAULT_LEVELS) -> np.ndarray:
    """Observed coverage ``[len(levels)]`` of the central intervals at each nominal level."""
    return np.array([interval_coverage(pit, level) for level in levels])


def verdict(observed: float, nominal: float, tolerance: float = 0.05) -> str:
    """``"calibrated"`` within `tolerance` of nominal coverage; ``"overconfident"`` when intervals cover too
    little (too narrow), ``"underconfident"`` when they cover too much."""
    if observed < nominal - tolerance:
        return "overconfident"
    if observed > nominal + tolerance:
        return "underconfident"
    return "calibrated"


def open_loop_reward_samples(model, params, key, observation, action, reward, horizon: int = 12,
                             weight_samples: int = 4, latent_samples: int = 4, stride: int = 10,
                             context: int = 5):
    """Predicted reward means from every start ``t0`` in ``context, context + stride, ...`` of each sequence:
    filter up to ``t0 - 1``, imagine `horizon` steps with the true actions under `weight_samples` held
    weight samples (0: the mean weights) x `latent_samples` latent noise draws.

    Args: observation ``[B, T, ...]``, action ``[B, T, A]``, reward ``[B, T]``.
    Returns: means and likelihood stds ``[M, S, horizon]`` (M = rollouts per start, S = B x starts) and truth
    ``[S, horizon]``.
    """
    length = action.shape[1]
    starts = np.arange(context, length - horizon + 1, stride)
    if not len(starts):
        raise ValueError(f"sequences of {length} steps are too short for context {context} + horizon {horizon}")
    key_filter, key_weights, key_latent = jax.random.split(key, 3)
    posts = filter_sequences(model, params, key_filter, observation, action)
    start_state = jax.tree.map(lambda x: x[:, starts - 1].reshape(-1, *x.shape[2:]), posts)
    index = starts[:, None] + np.arange(horizon)[None]  # [starts, H]
    actions = np.asarray(action)[:, index].reshape(-1, horizon, action.shape[-1])
    truth = np.asarray(reward)[:, index].reshape(-1, horizon)
    rollouts = [_rollouts(model, params, start_state, actions, key_weights, jax.random.fold_in(key_latent, s),
                          weight_samples) for s in range(latent_samples)]
    means, stds = (np.concatenate([np.asarray(r[i]) for r in rollouts], 0) for i in (0, 1))
    return means, stds, truth


@functools.partial(jax.jit, static_argnums=(0, 6))
def _rollouts(model, params, start_state, actions, key_weights, key, weight_samples):
    """Predicted reward means and likelihood stds ``[max(K, 1), S, H]`` from start states ``[S, ...]`` with
    actions ``[S, H, A]``."""
    means, states = imagine_under_samples(model, params, key, start_state, actions, key_weights, weight_samples)
    return means, model.reward_std(params, states)


def calibration_table(means: np.ndarray, truth: np.ndarray, reward_std=1.0, levels=DEFAULT_LEVELS) -> dict:
    """Per horizon step h = 1..H: mean NLL, coverage of the central 50% and 90% intervals, and the
    reliability curve. means ``[M, S, H]``, truth ``[S, H]``, reward_std a float or ``[M, S, H]``."""
    pit = mixture_pit(means, reward_std, truth)  # [S, H]
    nll = mixture_nll(means, reward_std, truth)
    return {
        "horizon": list(range(1, truth.shape[1] + 1)),
        "nll": nll.mean(0).tolist(),
        "coverage_50": [interval_coverage(pit[:, h], 0.5) for h in range(truth.shape[1])],
        "coverage_90": [interval_coverage(pit[:, h], 0.9) for h in range(truth.shape[1])],
        "levels": list(levels),
        "reliability": reliability(pit.ravel(), levels).tolist(),
        "predictive_std": float(np.sqrt(means.var(0).mean() + np.mean(np.square(reward_std)))),
        "reward_std": float(np.mean(reward_std)),
    }
