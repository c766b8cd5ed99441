"""Linear probes: how well do frozen latent features decode the true physical state?

Ridge regression in closed form (one SVD serves every regularization strength), the strength chosen by
cross-validation over groups (episodes), and R² on held-out episodes. The math is numpy; the feature
extraction from a `WorldModel` is at the bottom.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayes_planet.world_model import filter_sequences

DEFAULT_STRENGTHS = tuple(np.logspace(-3, 5, 17))


class RidgeProbe(NamedTuple):
    """``predict(x) = ((x - x_mean) / x_scale) @ weights + y_mean``; `strength` is the ridge penalty on the
    standardized features."""

    weights: np.ndarray  # [F, D]
    x_mean: np.ndarray  # [F]
    x_scale: np.ndarray  # [F]
    y_mean: np.ndarray  # [D]
    strength: float

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Targets ``[N, D]`` for features ``[N, F]``."""
        return ((features - self.x_mean) / self.x_scale) @ self.weights + self.y_mean


def _standardize(features):
    mean, scale = features.mean(0), features.std(0)
    return mean, np.where(scale > 1e-8, scale, 1.0)


def ridge_path(features: np.ndarray, targets: np.ndarray, strengths) -> list[RidgeProbe]:
    """Ridge probes for every strength in `strengths`, from one SVD. features ``[N, F]``, targets ``[N, D]``."""
    x_mean, x_scale = _standardize(features)
    y_mean = targets.mean(0)
    u, s, vt = np.linalg.svd((features - x_mean) / x_scale, full_matrices=False)
    projected = u.T @ (targets - y_mean)  # [r, D]
    return [RidgeProbe(vt.T @ ((s / (s ** 2 + strength))[:, None] * projected), x_mean, x_scale, y_mean,
                       float(strength)) for strength in strengths]


def r2_scores(targets: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Coefficient of determination per target dimension ``[D]``: 1 - SSE / SST (can be negative)."""
    residual = np.sum((targets - predictions) ** 2, 0)
    total = np.sum((targets - targets.mean(0)) ** 2, 0)
    return 1.0 - residual / np.maximum(total, 1e-12)


def fit_ridge_probe(features: np.ndarray, targets: np.ndarray, groups: np.ndarray, strengths=DEFAULT_STRENGTHS,
                    folds: int = 5) -> RidgeProbe:
    """Ridge probe with the strength that minimizes the cross-validated squared error (targets scaled to
    unit variance), the folds split by `groups` ``[N]`` (episode ids) so that no episode is on both sides.
    Refit on all rows with that strength."""
    features, targets = np.asarray(features, np.float64), np.asarray(targets, np.float64)
    if features.shape[0] != targets.shape[0] or targets.ndim != 2:
        raise ValueError(f"features [N, F] and targets [N, D] must share N, got {features.shape}, {targets.shape}")
    unique = np.unique(groups)
    if len(unique) < 2:
        raise ValueError("cross-validation needs at least 2 groups (episodes)")
    target_scale = np.where(targets.std(0) > 1e-8, targets.std(0), 1.0)
    errors = np.zeros(len(strengths))
    for held_out in np.array_split(np.random.default_rng(0).permutation(unique), min(folds, len(unique))):
        test = np.isin(groups, held_out)
        for index, probe in enumerate(ridge_path(features[~test], targets[~test], strengths)):
            errors[index] += np.sum(((probe.predict(features[test]) - targets[test]) / target_scale) ** 2)
    best = float(np.asarray(strengths)[np.argmin(errors)])
    return ridge_path(features, targets, [best])[0]


def probe_r2(train_features, train_targets, train_groups, test_features, test_targets) -> dict:
    """Fit on the training rows (strength by grouped cross-validation) and score on held-out rows.
    Returns ``{"r2": [D] held-out R² per dimension, "overall": their mean, "strength": chosen, "prediction":
    [N_test, D]}``."""
    probe = fit_ridge_probe(train_features, train_targets, train_groups)
    prediction = probe.predict(np.asarray(test_features, np.float64))
    r2 = r2_scores(np.asarray(test_targets, np.float64), prediction)
    return {"r2": r2, "overall": float(np.mean(r2)), "strength": probe.strength, "prediction": prediction}


# ------------------------------------------------------------------------------------- features of a model
def probe_targets(episode: dict, velocity_names: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """True physical targets of an episode ``[T+1, D]``: every velocity dimension, and the forward speed when
    the env reports it (cheetah); with their names (`velocity_names`, e.g. from ``DMCEnv.velocity_names``, or
    ``velocity[i]``)."""
    columns, names = [], []
    if "velocity" in episode:
        velocity = np.asarray(episode["velocity"], np.float32).reshape(len(episode["velocity"]), -1)
        columns.append(velocity)
        if velocity_names is not None and len(velocity_names) == velocity.shape[1]:
            names += list(velocity_names)
        else:
            names += [f"velocity[{i}]" for i in range(velocity.shape[1])]
    if "speed" in episode:
        columns.append(np.asarray(episode["speed"], np.float32).reshape(-1, 1))
        names.append("speed")
    if not columns:
        raise ValueError("the episode has no true velocities ('velocity' / 'speed'): collect it with envs.make")
    return np.concatenate(columns, 1), names


def posterior_features(model, params, key, observation, action) -> np.ndarray:
    """Features ``[B, T, F]`` of the posterior filtering of whole sequences (observation ``[B, T, ...]``,
    action ``[B, T, A]``), transition at its posterior mean."""
    return np.asarray(model.features(filter_sequences(model, params, key, observation, action)))


def open_loop_features(model, params, key, observation, action, context: int = 5, horizon: int = 45):
    """Features of open-loop imagination: windows of `context` filtered frames then `horizon` imagined
    steps (true actions, posterior-mean weights) tile each sequence. Returns features ``[B, W * horizon, F]``
    and the time index ``[W * horizon]`` of each imagined step (to pick the matching targets)."""
    window = context + horizon
    starts = list(range(0, action.shape[1] - window + 1, window))
    if not starts:
        raise ValueError(f"sequences of {action.shape[1]} steps are shorter than context + horizon = {window}")
    features = [_open_loop_window_features(model, params, key, observation[:, s:s + window], action[:, s:s + window],
                                           context) for s in starts]
    steps = np.concatenate([np.arange(s + context, s + window) for s in starts])
    return np.asarray(jnp.concatenate(features, 1)), steps


@functools.partial(jax.jit, static_argnums=(0, 5))
def _open_loop_window_features(model, params, key, observation, action, context):
    posts = model.observe(params, key, model.initial_state(action.shape[0]), observation[:, :context],
                          action[:, :context])
    _, priors = model.imagine(params, key, jax.tree.map(lambda x: x[:, -1], posts), action[:, context:])
    return model.features(priors)
