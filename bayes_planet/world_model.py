"""`WorldModel`: PlaNet's world model with Bayesian transition layers, and its public API.

Every method is a pure function of explicit ``params`` and PRNG keys, jit-able and batched. Batches
are dicts: ``observation`` ``[B, T, 64, 64, 3]`` uint8 (or ``[B, T, D]`` float states), ``action``
``[B, T, A]`` (the action that led to each observation; zero at t = 0) and ``reward`` ``[B, T]``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from bayes_planet import bayes, parallel
from bayes_planet.bayes import Weights
from bayes_planet.distributions import DiagGaussian, gaussian_nll, unit_gaussian_nll
from bayes_planet.networks import REWARD_NOISE, ConvDecoder, ConvEncoder, RewardHead, vector_decoder, vector_encoder
from bayes_planet.rssm import RSSM, RSSMState, zero_state

PIXEL_SHAPE = (64, 64, 3)
TRAIN_WEIGHTS = ("fresh", "per_sequence")
FREE_NATS_SIDES = ("posterior", "both")
WEIGHT_KL_SCHEDULES = ("constant", "elbo")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """World-model options; defaults are PlaNet's (Hafner et al., 2019) with Bayesian transition layers.

    conv_engine: "fast" (convolutions as matmuls, chunked over frames; for CPUs) or "plain" (haiku's conv
      layers); same parameters and function. conv_chunk: frames per checkpointed chunk (0: one chunk).
    transition: posterior family of the transition's dense layers ("deterministic" is plain PlaNet).
    train_weights: "fresh" (a new draw per call, per the estimator) or "per_sequence" (one weight sample
      held along each training sequence).
    weight_kl_schedule: how the weight KL is weighted against the data term, a mean per sequence step:
      "elbo" (the default: `weight_kl_temperature` / the number of sequence steps in the training data, the
      ELBO's own weighting at temperature 1, so the posterior narrows as data comes in and widens where
      data is scarce) or "constant"
      (`weight_kl_scale` at every update).
    weight_kl_temperature: T in the "elbo" schedule's weight, T / data_steps. 1 is the ELBO; T < 1 is a
      cold posterior (Wenzel et al., 2020): narrower, still narrowing with data. The default 0.1 learned
      cartpole-swingup faster than the ELBO and cheetah-run as well (README, Results; issue 20).
    weight_kl_scale: the KL weight under the "constant" schedule. 4e-6 is PlaNet's schedule in these units
      (1 / (100 updates x 50 sequences x 50 steps) per collected episode); it keeps the posterior at its
      init, a point mass whose spread does not follow the data. The original 2e-4 walked the prior layers'
      posterior to the weight prior (issue 17).
    prior_std, prior_scaling: the weight prior of the transition's Bayesian layers, N(0, prior_std^2)
      ("none") or N(0, prior_std^2 / fan_in) ("fan_in": the scale of the layers' initialization).
    reward_noise: the reward likelihood's std: "fixed" (`reward_std` everywhere; PlaNet's unit variance
      with the default 1.0), "learned" (one trainable scalar starting at `reward_std`) or "predicted" (per
      state, a second output of the reward head). Trainable stds stay above `reward_min_std`. With PlaNet's
      unit variance the calibration report can only call a small-reward task underconfident (cheetah's
      rewards are 0 to 0.6); a trainable std lets the intervals mean something (issue 20).
    free_nats_side: which side of the latent KL free nats switch off at steps whose KL is below
      `free_nats`: "posterior" (the default: the posterior is not pulled toward the prior there, but the
      prior always learns to predict it; see `free_nats_kl`) or "both" (PlaNet: neither gets a gradient).
      With "both", the transition's prior layers (`prior_hidden`, `prior_out`) learn from nothing but the
      weight KL while the latent KL sits under the free nats, so their posterior becomes the weight prior
      and imagination under sampled weights becomes noise (issue 17; `bench/epistemic.py` and
      `tests/test_transition_posterior.py` measure both failure modes). PlaNet's deterministic model is
      ``transition="deterministic", free_nats_side="both"``.
    """

    observation: str = "pixels"
    cnn_depth: int = 32
    conv_engine: str = "fast"
    conv_chunk: int = 32
    state_embed_size: int = 300
    deter_size: int = 200
    stoch_size: int = 30
    hidden_size: int = 200
    min_std: float = 0.1
    reward_hidden: int = 300
    reward_layers: int = 3
    reward_noise: str = "fixed"
    reward_std: float = 1.0
    reward_min_std: float = 0.01
    transition: str = "reparameterization"
    prior_std: float = 1.0
    prior_scaling: str = "none"
    posterior_std_init: float = 0.01
    dropout_rate: float = 0.1
    weight_kl_scale: float = 4e-6
    weight_kl_schedule: str = "elbo"
    weight_kl_temperature: float = 0.1
    train_weights: str = "fresh"
    free_nats: float = 3.0
    free_nats_side: str = "posterior"
    reward_scale: float = 10.0
    image_bits: int = 5


def dither(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform noise in (0, 1) with 256 levels (``(u + 0.5) / 256`` for a random byte ``u``), float32 `shape`.

    Each 32-bit draw of the PRNG gives four bytes, so this costs a quarter of `jax.random.uniform`'s
    hashing and intermediates (PlaNet's 50 x 50 frames: 0.13 s and 92 MB against 0.55 s and 369 MB on a
    2-core CPU). A dither needs no finer levels: in `preprocess_pixels` they are 2^-13 of the pixel range."""
    size = math.prod(shape)
    words = jax.random.bits(key, (-(-size // 4),), jnp.uint32)
    random_bytes = jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(-1)[:size].reshape(shape)
    return (random_bytes.astype(jnp.float32) + 0.5) / 256


def preprocess_pixels(image: jax.Array, key: jax.Array | None, bits: int = 5) -> jax.Array:
    """uint8 pixels -> floats in [-0.5, 0.5): reduced to `bits` of depth, plus uniform dequantization noise
    within a bin (`dither`) when `key` is given (else the bin centre). The one place pixels are preprocessed."""
    bins = 2**bits
    x = jnp.floor(image.astype(jnp.float32) / 2 ** (8 - bits)) / bins
    noise = 0.5 if key is None else dither(key, x.shape)
    return x + noise / bins - 0.5


def free_nats_kl(posterior: DiagGaussian, prior: DiagGaussian, free_nats: float, side: str = "both"):
    """Mean over ``[B, T]`` of ``max(KL(posterior || prior), free_nats)``, in nats per step (its value).

    Its gradient depends on `side` (one of `FREE_NATS_SIDES`). "both" (PlaNet): a step whose KL is below
    `free_nats` sends no gradient to either distribution. "posterior": such a step sends none to the
    posterior (free nats keep it from collapsing onto the prior) but the prior, through a stop-gradient on
    the posterior, always gets the gradient of ``KL(sg(posterior) || prior)``: above free nats both sides
    get exactly PlaNet's gradient, and the transition never stops learning from the data.
    """
    if side not in FREE_NATS_SIDES:
        raise ValueError(f"model.free_nats_side must be one of {FREE_NATS_SIDES}, got {side!r}")
    if side == "both":
        return jnp.mean(jnp.maximum(posterior.kl(prior), free_nats))
    frozen = lambda distribution: jax.tree.map(jax.lax.stop_gradient, distribution)
    clipped = jnp.mean(jnp.maximum(posterior.kl(frozen(prior)), free_nats))
    prior_side = jnp.mean(frozen(posterior).kl(prior))
    return clipped + prior_side - jax.lax.stop_gradient(prior_side)


def pixels_to_uint8(image: jax.Array) -> jax.Array:
    """Model-space pixels in [-0.5, 0.5] -> uint8 ``[..., 64, 64, 3]``."""
    return jnp.clip(jnp.round((image + 0.5) * 255.0), 0, 255).astype(jnp.uint8)


class ModelFunctions(NamedTuple):
    """The world model's functions, transformed together so that they share parameters."""

    loss: Callable
    observe_step: Callable
    observe_sequence: Callable
    imagine: Callable
    decode: Callable
    predict_reward: Callable
    reward_std: Callable


class WorldModel:
    """PlaNet's RSSM world model learned from pixels (or states), with variational transition layers.

    Args:
      config: `ModelConfig`.
      action_dim: size A of the action vector.
      obs_shape: ``(64, 64, 3)`` for pixels, ``(D,)`` for states.
    """

    def __init__(self, config: ModelConfig, action_dim: int, obs_shape: tuple[int, ...] = PIXEL_SHAPE):
        if config.observation == "pixels" and tuple(obs_shape) != PIXEL_SHAPE:
            raise ValueError(f"pixel observations must have shape {PIXEL_SHAPE}, got {tuple(obs_shape)}")
        if config.free_nats_side not in FREE_NATS_SIDES:
            raise ValueError(f"model.free_nats_side must be one of {FREE_NATS_SIDES}, got {config.free_nats_side!r}")
        if config.weight_kl_schedule not in WEIGHT_KL_SCHEDULES:
            raise ValueError(f"model.weight_kl_schedule must be one of {WEIGHT_KL_SCHEDULES}, "
                             f"got {config.weight_kl_schedule!r}")
        if config.prior_scaling not in bayes.PRIOR_SCALINGS:
            raise ValueError(f"model.prior_scaling must be one of {bayes.PRIOR_SCALINGS}, "
                             f"got {config.prior_scaling!r}")
        if config.train_weights not in TRAIN_WEIGHTS:
            raise ValueError(f"model.train_weights must be one of {TRAIN_WEIGHTS}, got {config.train_weights!r}")
        if config.reward_noise not in REWARD_NOISE:
            raise ValueError(f"model.reward_noise must be one of {REWARD_NOISE}, got {config.reward_noise!r}")
        if not config.reward_std > config.reward_min_std >= 0:
            raise ValueError(f"model.reward_std ({config.reward_std}) must be above model.reward_min_std "
                             f"({config.reward_min_std})")
        self.config, self.action_dim, self.obs_shape = config, action_dim, tuple(obs_shape)
        self._obs_ndim = len(self.obs_shape)
        self._fns = hk.multi_transform(self._build)  # ._fns.apply is a ModelFunctions of apply functions

    # ----------------------------------------------------------------------------------------- build
    def _build(self):
        c = self.config
        if c.observation == "pixels":
            encoder = ConvEncoder(c.cnn_depth, c.conv_engine, c.conv_chunk)
            decoder = ConvDecoder(c.cnn_depth, engine=c.conv_engine, chunk=c.conv_chunk)
            observation_nll = decoder.nll  # chunk by chunk: the decoded batch is never held whole
        else:
            encoder = vector_encoder(c.state_embed_size, c.state_embed_size)
            decoder = vector_decoder(self.obs_shape[0], c.state_embed_size)
            observation_nll = lambda features, target: unit_gaussian_nll(target, decoder(features), 1)
        reward = RewardHead(c.reward_hidden, c.reward_layers, c.reward_noise, c.reward_std, c.reward_min_std)
        rssm = RSSM(c.deter_size, c.stoch_size, c.hidden_size, c.min_std, c.transition,
                    c.posterior_std_init, c.dropout_rate)
        predict_reward = lambda features: reward(features)[0]
        reward_std = lambda features: reward(features)[1]

        def loss(observation, action, reward_target, weights):
            posts, priors = rssm.observe(zero_state(action.shape[0], c.deter_size, c.stoch_size),
                                         action, encoder(observation), weights)
            features = posts.features
            obs_nll = observation_nll(features, observation)
            reward_nll = gaussian_nll(reward_target, *reward(features))
            kl = posts.distribution.kl(priors.distribution)
            terms = {
                "image_loss": jnp.mean(obs_nll),
                "reward_loss": jnp.mean(reward_nll),
                "kl": jnp.mean(kl),
                "kl_loss": free_nats_kl(posts.distribution, priors.distribution, c.free_nats, c.free_nats_side),
                "prior_entropy": jnp.mean(priors.distribution.entropy()),
                "posterior_entropy": jnp.mean(posts.distribution.entropy()),
            }
            total = terms["image_loss"] + c.reward_scale * terms["reward_loss"] + terms["kl_loss"]
            return total, terms

        def init(observation, action, reward_target):
            return loss(observation, action, reward_target, None)

        def observe_step(state, observation, action, weights):
            return rssm.observe_step(state, action, encoder(observation), weights)[0]

        def observe_sequence(state, observation, action, weights):
            return rssm.observe(state, action, encoder(observation), weights)[0]

        def imagine(state, actions, weights):
            states = rssm.imagine(state, actions, weights)
            return predict_reward(states.features), states

        def decode(features):
            return decoder(features)

        return init, ModelFunctions(loss, observe_step, observe_sequence, imagine, decode, predict_reward,
                                    reward_std)

    def _preprocess(self, observation, key):
        if self.config.observation == "pixels":
            return preprocess_pixels(observation, key, self.config.image_bits)
        return observation.astype(jnp.float32)

    # ------------------------------------------------------------------------------------ public API
    def init(self, key: jax.Array, batch: Mapping[str, jax.Array]) -> hk.Params:
        """Parameters for a batch like `batch` (any ``[B, T]``; tiny ones are enough)."""
        obs = self._preprocess(jnp.asarray(batch["observation"]), None)
        return jax.jit(self._fns.init)(key, obs, jnp.asarray(batch["action"]), jnp.asarray(batch["reward"]))

    def loss(self, params: hk.Params, key: jax.Array, batch: Mapping[str, jax.Array],
             data_steps: jax.Array | float | None = None):
        """Negative ELBO per time step, averaged over ``[B, T]``: image and reward NLL (unit variance,
        constants dropped; reward scaled by `reward_scale`), the latent KL with free nats, plus the
        weights' KL times `weight_kl_scale`, or times `weight_kl_temperature` / `data_steps` (sequence
        steps in the training data; a Bayesian model needs it) under ``weight_kl_schedule="elbo"``.
        Returns ``(loss, metrics)``."""
        c = self.config
        if c.weight_kl_schedule == "elbo" and data_steps is None:
            if c.transition != "deterministic":
                raise ValueError("model.weight_kl_schedule='elbo' needs data_steps, the number of sequence "
                                 "steps in the training data")
            kl_scale = jnp.zeros((), jnp.float32)  # no weights to weigh
        elif c.weight_kl_schedule == "elbo":
            kl_scale = c.weight_kl_temperature / jnp.maximum(jnp.asarray(data_steps, jnp.float32), 1.0)
        else:
            kl_scale = jnp.asarray(c.weight_kl_scale, jnp.float32)
        key_noise, key_weights, key_apply = jax.random.split(key, 3)
        observation = self._preprocess(batch["observation"], key_noise)
        batch_size = batch["action"].shape[0]
        weights = bayes.sample_weights(key_weights, batch_size) if c.train_weights == "per_sequence" else None
        model_loss, metrics = self._fns.apply.loss(params, key_apply, observation, batch["action"],
                                                 batch["reward"].astype(jnp.float32), weights)
        weight_kl = bayes.weight_kl(params, c.prior_std, c.prior_scaling)
        total = model_loss + kl_scale * weight_kl
        metrics = dict(metrics, weight_kl=weight_kl, weight_kl_scale=kl_scale,
                       weight_std=bayes.posterior_std_mean(params), loss=total)
        return total, metrics

    def initial_state(self, batch_size: int) -> RSSMState:
        """The all-zero latent state ``[batch_size, ...]`` that filtering starts from."""
        return zero_state(batch_size, self.config.deter_size, self.config.stoch_size)

    def observe(self, params: hk.Params, key: jax.Array, state: RSSMState, observation: jax.Array,
                action: jax.Array, weights: Weights | None = None) -> RSSMState:
        """Filter with the posterior. One step: observation ``[B, *obs]``, action ``[B, A]`` -> state ``[B, ...]``.
        A sequence: ``[B, T, *obs]``, ``[B, T, A]`` -> states ``[B, T, ...]`` (the last is ``[:, -1]``).
        Transition weights default to the posterior mean."""
        weights = Weights.mean() if weights is None else weights
        key_noise, key_apply = jax.random.split(key)
        obs = self._preprocess(observation, key_noise)
        sequence = observation.ndim == self._obs_ndim + 2
        fn = self._fns.apply.observe_sequence if sequence else self._fns.apply.observe_step
        return fn(params, key_apply, state, obs, action, weights)

    def imagine(self, params: hk.Params, key: jax.Array, state: RSSMState, actions: jax.Array,
                weights: Weights | None = None) -> tuple[jax.Array, RSSMState]:
        """Open loop from `state` (``[N, ...]`` or ``[1, ...]``, broadcast) for actions ``[N, H, A]``.

        Returns predicted rewards ``[N, H]`` and prior states ``[N, H, ...]``. With `sample_weights(params,
        key, K)` the N rows form K contiguous groups, group k using weight sample k for all H steps.
        """
        weights = Weights.mean() if weights is None else weights
        n, rows = actions.shape[0], jax.tree.leaves(state)[0].shape[0]
        if rows not in (1, n):
            raise ValueError(f"imagine: the state has {rows} rows and the actions {n}; give one state (broadcast "
                             f"to every row of actions [N, H, A]) or N, e.g. jnp.repeat(state_leaf, {n} // {rows}, "
                             "axis=0) with the actions in the same order")
        state = jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape[1:])), state)
        return self._fns.apply.imagine(params, key, state, actions, weights)

    def sample_weights(self, params: hk.Params, key: jax.Array, n: int) -> Weights:
        """`n` weight samples of the transition, each to be held fixed along a whole trajectory."""
        del params  # samples are drawn inside the layers from the held keys
        return bayes.sample_weights(key, n)

    def mean_weights(self, params: hk.Params) -> Weights:
        """The posterior-mean transition (deterministic; plain PlaNet when the model is deterministic)."""
        del params
        return Weights.mean()

    @staticmethod
    def features(latents: RSSMState) -> jax.Array:
        """``[..., deter + stoch]`` features of latent states (what the heads and probes read)."""
        return latents.features

    def decode(self, params: hk.Params, latents: RSSMState) -> jax.Array:
        """Mean predicted observation of latent states ``[...]``: model-space pixels ``[..., 64, 64, 3]`` in
        about [-0.5, 0.5] (see `pixels_to_uint8`), or state vectors."""
        return self._fns.apply.decode(params, None, latents.features)

    def reward(self, params: hk.Params, latents: RSSMState) -> jax.Array:
        """Mean predicted reward ``[...]`` of latent states."""
        return self._fns.apply.predict_reward(params, None, latents.features)

    def reward_std(self, params: hk.Params, latents: RSSMState) -> jax.Array:
        """Std ``[...]`` of the reward likelihood at latent states (`model.reward_noise`; 1 for PlaNet's)."""
        return self._fns.apply.reward_std(params, None, latents.features)


def imagine_under_samples(model, params: hk.Params, key: jax.Array, state: RSSMState, actions: jax.Array,
                          weights_key: jax.Array | None, samples: int,
                          constrain: Callable[[jax.Array], jax.Array] | None = None) -> tuple[jax.Array, RSSMState]:
    """Roll actions ``[N, H, A]`` out from `state` (``[1, ...]``, broadcast, or ``[N, ...]``) under each of
    `samples` transition weight samples drawn from `weights_key`, every sample held for all H steps (0: once,
    under the posterior mean). The one place where rows are laid out as ``K`` contiguous groups of ``N``;
    `constrain` sees the ``[K * N, H, A]`` actions (e.g. to shard them). Needs only the model's `imagine`,
    `sample_weights` and `mean_weights`. Returns rewards ``[max(K, 1), N, H]`` and prior states
    ``[max(K, 1), N, H, ...]``."""
    groups = max(samples, 1)
    weights = model.sample_weights(params, weights_key, samples) if samples else model.mean_weights(params)
    tile = lambda x: jnp.tile(x, (groups,) + (1,) * (x.ndim - 1))
    if jax.tree.leaves(state) and jax.tree.leaves(state)[0].shape[0] != 1:
        state = jax.tree.map(tile, state)
    rows = tile(actions)
    rows = rows if constrain is None else constrain(rows)
    rewards, states = model.imagine(params, key, state, rows, weights)
    regroup = lambda x: x.reshape(groups, actions.shape[0], *x.shape[1:])
    return regroup(rewards), jax.tree.map(regroup, states)


@functools.partial(jax.jit, static_argnums=0)
def filter_sequences(model: WorldModel, params: hk.Params, key: jax.Array, observation: jax.Array,
                     action: jax.Array) -> RSSMState:
    """Posterior states ``[B, T, ...]`` of whole sequences from the zero state (observation ``[B, T, ...]``,
    action ``[B, T, A]``; mean transition weights), jit-compiled once per model and shapes."""
    return model.observe(params, key, model.initial_state(action.shape[0]), observation, action)


def make_optimizer(learning_rate: float = 1e-3, eps: float = 1e-4, grad_clip: float = 1000.0,
                   warmup_steps: int = 0) -> optax.GradientTransformation:
    """PlaNet's optimizer: global-norm clipping, then Adam (with an optional linear warm-up)."""
    schedule = (optax.linear_schedule(0.0, learning_rate, warmup_steps) if warmup_steps else learning_rate)
    return optax.chain(optax.clip_by_global_norm(grad_clip), optax.adam(schedule, eps=eps))


def make_train_step(model: WorldModel, optimizer: optax.GradientTransformation, mesh: Mesh | None = None,
                    donate: bool = False):
    """A jit-compiled ``step(params, opt_state, key, batch, data_steps=None) -> (params, opt_state, metrics)``
    (`data_steps`: sequence steps in the training data, for ``weight_kl_schedule="elbo"``; see `loss`).

    An update whose loss or gradient is not finite is skipped (params and optimizer state come back
    unchanged) and reported as ``metrics["nonfinite"] == 1``. With a `mesh` (see `bayes_planet.parallel`)
    the batch is split over its devices along ``B`` and everything else is replicated: data parallelism,
    the same function as without. With `donate`, the returned params and optimizer state take the memory
    of those passed in, which are deleted by the call (rebind them to the results): one copy of each
    instead of two at the peak.
    """
    jit_options = dict(donate_argnums=(0, 1)) if donate else {}
    if mesh is not None:
        everywhere = parallel.replicated(mesh)
        jit_options.update(in_shardings=(everywhere, everywhere, everywhere, parallel.split_leading(mesh),
                                         everywhere), out_shardings=everywhere)

    @functools.partial(jax.jit, **jit_options)
    def step(params, opt_state, key, batch, data_steps):
        (loss, metrics), grads = jax.value_and_grad(model.loss, has_aux=True)(params, key, batch, data_steps)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        metrics = dict(metrics, grad_norm=grad_norm, nonfinite=(~finite).astype(jnp.float32))
        return keep(optax.apply_updates(params, updates), params), keep(new_opt_state, opt_state), metrics

    return _TrainStep(step)


class _TrainStep:
    """`make_train_step`'s jitted step with `data_steps` optional: every call passes all five arguments,
    as a sharded jit needs (None when not given; `WorldModel.loss` says when the schedule needs it), and
    the count is a traced value, so a growing replay never recompiles it."""

    def __init__(self, jitted):
        self._jitted = jitted

    @staticmethod
    def _arguments(params, opt_state, key, batch, data_steps=None):
        if data_steps is not None and not isinstance(data_steps, jax.Array):
            data_steps = np.float32(data_steps)
        return params, opt_state, key, batch, data_steps

    def __call__(self, *args, **kwargs):
        return self._jitted(*self._arguments(*args, **kwargs))

    def lower(self, *args, **kwargs):
        """`jax.jit`'s ahead-of-time lowering, for `memory.compile_ahead`."""
        return self._jitted.lower(*self._arguments(*args, **kwargs))

    def _cache_size(self) -> int:
        return self._jitted._cache_size()
