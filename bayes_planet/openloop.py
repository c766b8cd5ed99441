"""Open-loop prediction: filter a few context frames with the posterior, then imagine ahead with the true
actions (PlaNet's and Dreamer's protocol), under the posterior-mean weights and under K weight samples.

Pure functions over a `WorldModel`, explicit params and PRNG keys; `viz.py` turns the result into videos.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayes_planet.world_model import WorldModel, imagine_under_samples, pixels_to_uint8, preprocess_pixels


class OpenLoop(NamedTuple):
    """Predictions for B sequences of T = context + horizon steps. Images are model-space pixels (about
    [-0.5, 0.5]; `pixels_to_uint8` maps them back); rewards are per agent step.

    truth:           ``[B, T, 64, 64, 3]``  the observed frames (5-bit, as the model sees them)
    prediction:      ``[B, T, 64, 64, 3]``  filtered reconstructions for t < context, then the open-loop
                     prediction under the posterior-mean weights
    sample_images:   ``[K, B, T, 64, 64, 3]`` the same under each of K weight samples (K = 0: empty)
    true_reward:     ``[B, T]``
    reward:          ``[B, T]``  posterior-mean-weights predicted reward (filtered, then open loop)
    sample_rewards:  ``[K, B, T]``
    context:         number of filtered frames
    """

    truth: jax.Array
    prediction: jax.Array
    sample_images: jax.Array
    true_reward: jax.Array
    reward: jax.Array
    sample_rewards: jax.Array
    context: int


def open_loop(model: WorldModel, params, key: jax.Array, observation: jax.Array, action: jax.Array,
              reward: jax.Array, context: int = 5, weight_samples: int = 0) -> OpenLoop:
    """Filter ``observation[:, :context]`` and imagine the rest with ``action[:, context:]`` (jit-compiled once
    per model, shapes, `context` and `weight_samples`).

    Args:
      observation: ``[B, T, 64, 64, 3]`` uint8 frames; action ``[B, T, A]`` (action t leads to frame t);
        reward ``[B, T]``. T must exceed `context`.
      weight_samples: K >= 0 weight samples, each held for the whole horizon (their rows share the latent
        noise, so their spread is the model's epistemic uncertainty).
    """
    length = action.shape[1]
    if not 0 < context < length:
        raise ValueError(f"context must be in [1, {length - 1}] for sequences of {length} steps, got {context}")
    if weight_samples < 0:
        raise ValueError(f"weight_samples must be >= 0, got {weight_samples}")
    return OpenLoop(*_open_loop(model, params, key, observation, action, reward, context, weight_samples), context)


@functools.partial(jax.jit, static_argnums=(0, 6, 7))
def _open_loop(model, params, key, observation, action, reward, context, weight_samples):
    batch, length = action.shape[:2]
    key_filter, key_weights, key_imagine = jax.random.split(key, 3)
    posts = model.observe(params, key_filter, model.initial_state(batch), observation[:, :context],
                          action[:, :context])
    start = jax.tree.map(lambda x: x[:, -1], posts)
    filtered_images, filtered_rewards = model.decode(params, posts), model.reward(params, posts)
    future = action[:, context:]

    def rollout(samples):
        rewards, priors = imagine_under_samples(model, params, key_imagine, start, future, key_weights, samples)
        groups = rewards.shape[0]
        images = jnp.concatenate([jnp.broadcast_to(filtered_images, (groups, *filtered_images.shape)),
                                  model.decode(params, priors)], 2)
        rewards = jnp.concatenate([jnp.broadcast_to(filtered_rewards, (groups, *filtered_rewards.shape)), rewards], 2)
        return images, rewards  # [groups, B, T, ...], [groups, B, T]

    images, rewards = rollout(0)
    if weight_samples:
        sample_images, sample_rewards = rollout(weight_samples)
    else:
        sample_images, sample_rewards = images[:0], rewards[:0]
    truth = preprocess_pixels(observation, None, model.config.image_bits)
    return truth, images[0], sample_images, reward.astype(jnp.float32), rewards[0], sample_rewards


def squared_error_by_step(result: OpenLoop, mask: jax.Array | None = None) -> np.ndarray:
    """Mean squared pixel error of the posterior-mean prediction at each step ``[T]``, averaged over the
    batch and pixels, or over the pixels where `mask` (``[B, T, H, W, 1]``, broadcast) is set; steps before
    ``result.context`` are filtered reconstructions."""
    squared = (result.prediction - result.truth) ** 2
    if mask is None:
        return np.asarray(jnp.mean(squared, axis=(0, 2, 3, 4)))
    mask = jnp.broadcast_to(mask, squared.shape).astype(jnp.float32)
    return np.asarray(jnp.sum(squared * mask, axis=(0, 2, 3, 4)) / jnp.maximum(mask.sum(axis=(0, 2, 3, 4)), 1.0))


def reward_error_by_step(result: OpenLoop) -> np.ndarray:
    """Mean squared error of the posterior-mean predicted reward at each step ``[T]`` over the batch."""
    return np.asarray(jnp.mean((result.reward - result.true_reward) ** 2, axis=0))


def error_summary(result: OpenLoop) -> dict[str, list[float]]:
    """Per imagined step h = 1..horizon (the context's filtered steps left out): ``image_mse`` (per pixel,
    model units) and ``reward_mse`` under the posterior-mean weights, for a metrics record."""
    context = result.context
    return {"image_mse": squared_error_by_step(result)[context:].tolist(),
            "reward_mse": reward_error_by_step(result)[context:].tolist()}


def as_uint8(result: OpenLoop) -> dict[str, np.ndarray]:
    """The result's images as uint8 arrays: truth, prediction, error (``|truth - prediction|``) ``[B, T, H, W, 3]``
    and, with weight samples, ``sample_mean`` and ``sample_std`` (the per-pixel std across samples, one
    channel ``[B, T, H, W]`` in model units, for a heat map)."""
    out = {
        "truth": pixels_to_uint8(result.truth),
        "prediction": pixels_to_uint8(result.prediction),
        "error": pixels_to_uint8(jnp.abs(result.truth - result.prediction) - 0.5),
    }
    if result.sample_images.shape[0]:
        out["sample_mean"] = pixels_to_uint8(result.sample_images.mean(0))
        out["sample_std"] = result.sample_images.std(0).mean(-1)
    return {name: np.asarray(value) for name, value in out.items()}
