"""Bayesian dense layers for haiku: mean-field variational (Bayes by Backprop) and MC dropout.

How a layer uses randomness is explicit and passed at call time as a `Weights` value:

* ``Weights.fresh()``: a new weight sample is drawn from ``hk.next_rng_key()`` for this call and
  shared by every row of the batch (the default when no ``weights`` argument is given, except for
  Flipout, whose fresh draws are always per row).
* ``Weights.fresh(per_row=True)``: every row gets its own (pseudo-)independent sample. Variational
  layers use the local reparameterization trick (reparameterization) or sign flips (Flipout);
  MC dropout draws one mask per row.
* ``Weights.held(key)``: the sample is a deterministic function of ``key`` (and the layer's name),
  so passing the same key to every call holds one weight sample fixed across calls, e.g. all 12
  steps of an imagined trajectory. With ``key`` of shape ``[n]`` (from ``sample_weights(key, n)``)
  the leading axis of the input is split into ``n`` contiguous groups and group ``g`` uses sample
  ``g``: rows ``[n * c, ...]`` laid out as ``[n, c, ...]``.
* ``Weights.mean()``: the posterior mean (deterministic evaluation; dropout off).

The weight KL is collected by :func:`weight_kl` from a params tree; users never write a KL by hand::

    loss = nll + kl_scale * bayes.weight_kl(params, prior_std=1.0)
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

ESTIMATORS = ("reparameterization", "flipout")
# How the weight prior's std depends on a layer: "none" (N(0, prior_std^2) for every kernel entry) or
# "fan_in" (N(0, prior_std^2 / fan_in), the scale of a standard initialization, so a prior sample is a
# sensible network rather than one whose pre-activations grow with sqrt(fan_in)).
PRIOR_SCALINGS = ("none", "fan_in")

# Parameter names that mark a layer's family inside a params tree (see `weight_kl`).
VARIATIONAL_MEAN, VARIATIONAL_RHO = "w_mean", "w_rho"
DROPOUT_KERNEL, DROPOUT_RATE = "w_dropout", "dropout_rate"

_FRESH, _MEAN, _HELD = "fresh", "mean", "held"


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Weights:
    """How the Bayesian layers of one call draw their weights (a pytree, so it passes through jit).

    Build it with `Weights.fresh`, `Weights.held`, `Weights.mean` or `sample_weights`.
    """

    mode: str = _FRESH
    per_row: bool = False
    key: jax.Array | None = None

    @classmethod
    def fresh(cls, per_row: bool = False) -> Weights:
        """A new sample for this call from ``hk.next_rng_key()``; shared by the batch unless `per_row`."""
        return cls(_FRESH, per_row, None)

    @classmethod
    def mean(cls) -> Weights:
        """The posterior mean: deterministic."""
        return cls(_MEAN, False, None)

    @classmethod
    def held(cls, key: jax.Array) -> Weights:
        """A sample fixed by `key`: shape ``[]`` (one for all rows) or ``[n]`` (one per row group)."""
        return cls(_HELD, False, key)

    @property
    def num_samples(self) -> int | None:
        """Number of held samples (row groups), or None when there is no held key batch."""
        if self.mode != _HELD or self.key is None or _key_batch_ndim(self.key) == 0:
            return None
        return _key_batch_shape(self.key)[0]

    def tree_flatten(self):
        return (self.key,), (self.mode, self.per_row)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(aux[0], aux[1], children[0])


def sample_weights(key: jax.Array, n: int | None = None) -> Weights:
    """`n` independent weight samples to hold fixed across calls (one per row group), or one if None."""
    if n is None:
        return Weights.held(key)
    if n < 1:
        raise ValueError(f"sample_weights: n must be >= 1, got {n}")
    return Weights.held(jax.random.split(key, n))


def _key_batch_shape(key: jax.Array) -> tuple[int, ...]:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.shape
    return key.shape[:-1]  # raw uint32 keys carry a trailing [2]


def _key_batch_ndim(key: jax.Array) -> int:
    return len(_key_batch_shape(key))


def _layer_key(key: jax.Array) -> jax.Array:
    """Derive this layer's key from a held key, so every layer of a model gets its own noise."""
    salt = zlib.crc32(hk.experimental.current_name().encode()) & 0x7FFFFFFF
    if _key_batch_ndim(key) == 0:
        return jax.random.fold_in(key, salt)
    return jax.vmap(lambda k: jax.random.fold_in(k, salt))(key)


def _next_key(layer: str) -> jax.Array:
    key = hk.maybe_next_rng_key()
    if key is None:
        raise ValueError(
            f"{layer}: drawing fresh weights needs an rng key; pass `rng` to apply(), "
            "or call the layer with weights=Weights.mean() for the deterministic posterior mean"
        )
    return key


def _grouped(x: jax.Array, n: int) -> jax.Array:
    """[n * c, ..., d] -> [n, c * ..., d]: rows split into n contiguous groups."""
    if x.ndim < 2 or x.shape[0] % n:
        raise ValueError(
            f"held weights with {n} samples need inputs whose leading axis is a multiple of {n}; "
            f"got input shape {x.shape}"
        )
    return x.reshape(n, -1, x.shape[-1])


def _kernel_init(w_init, input_size: int):
    return w_init or hk.initializers.TruncatedNormal(1.0 / np.sqrt(input_size))


def softplus_inverse(y: float) -> float:
    """x with softplus(x) = y, for initializing a std through softplus."""
    return float(y + np.log(-np.expm1(-y)))


class _BayesianDense(hk.Module):
    """What the Bayesian dense layers share with `hk.Linear`: constructor arguments and the bias."""

    def __init__(self, output_size: int, with_bias: bool, w_init, b_init, name: str | None):
        super().__init__(name=name)
        self.output_size = output_size
        self.with_bias = with_bias
        self.w_init = w_init
        self.b_init = b_init or jnp.zeros

    def _add_bias(self, out: jax.Array) -> jax.Array:
        if not self.with_bias:
            return out
        return out + hk.get_parameter("b", (self.output_size,), out.dtype, init=self.b_init)


class VariationalDense(_BayesianDense):
    """Dense layer with a mean-field Gaussian posterior on its kernel (Bayes by Backprop).

    A drop-in swap for `hk.Linear`: same constructor arguments and call signature, plus
    `estimator`, `posterior_std_init` and an optional `weights` call argument (see module docs).
    Parameters: ``w_mean [in, out]``, ``w_rho [in, out]`` (std = softplus(rho)), deterministic ``b``.

    Args:
      output_size: number of output units.
      with_bias: add a deterministic bias.
      w_init: initializer of the posterior mean (hk.Linear's default when None).
      b_init: bias initializer (zeros when None).
      estimator: "reparameterization" or "flipout", used for fresh draws.
      posterior_std_init: initial posterior std of every kernel entry.
      name: module name.
    """

    def __init__(
        self,
        output_size: int,
        with_bias: bool = True,
        w_init: hk.initializers.Initializer | None = None,
        b_init: hk.initializers.Initializer | None = None,
        name: str | None = None,
        *,
        estimator: str = "reparameterization",
        posterior_std_init: float = 1e-2,
    ):
        super().__init__(output_size, with_bias, w_init, b_init, name)
        if estimator not in ESTIMATORS:
            raise ValueError(f"VariationalDense: estimator must be one of {ESTIMATORS}, got {estimator!r}")
        if posterior_std_init <= 0:
            raise ValueError(f"VariationalDense: posterior_std_init must be > 0, got {posterior_std_init}")
        self.estimator = estimator
        self.posterior_std_init = posterior_std_init

    def __call__(self, inputs: jax.Array, weights: Weights | None = None) -> jax.Array:
        """inputs ``[..., in]`` -> ``[..., out]``."""
        input_size = inputs.shape[-1]
        shape = (input_size, self.output_size)
        dtype = inputs.dtype
        mean = hk.get_parameter(VARIATIONAL_MEAN, shape, dtype, init=_kernel_init(self.w_init, input_size))
        rho = hk.get_parameter(
            VARIATIONAL_RHO, shape, dtype,
            init=hk.initializers.Constant(softplus_inverse(self.posterior_std_init)),
        )
        std = jax.nn.softplus(rho)
        if weights is None:
            weights = Weights.fresh(per_row=self.estimator == "flipout")

        if weights.mode == _MEAN:
            out = inputs @ mean
        elif weights.mode == _HELD:
            out = self._held(inputs, mean, std, weights.key)
        elif self.estimator == "flipout":
            out = self._flipout(inputs, mean, std, _next_key(self.name))
        elif weights.per_row:
            out = self._local_reparameterization(inputs, mean, std, _next_key(self.name))
        else:
            eps = jax.random.normal(_next_key(self.name), shape, dtype)
            out = inputs @ (mean + std * eps)
        return self._add_bias(out)

    @staticmethod
    def _held(inputs, mean, std, key):
        key = _layer_key(key)
        if _key_batch_ndim(key) == 0:
            return inputs @ (mean + std * jax.random.normal(key, mean.shape, mean.dtype))
        n = _key_batch_shape(key)[0]
        eps = jax.vmap(lambda k: jax.random.normal(k, mean.shape, mean.dtype))(key)
        grouped = _grouped(inputs, n)
        out = jnp.einsum("ngi,nio->ngo", grouped, mean + std * eps)
        return out.reshape(*inputs.shape[:-1], mean.shape[1])

    @staticmethod
    def _flipout(inputs, mean, std, key):
        """Wen et al. (2018): one shared perturbation, decorrelated per row by random sign flips."""
        k_eps, k_in, k_out = jax.random.split(key, 3)
        eps = jax.random.normal(k_eps, mean.shape, mean.dtype)
        sign_in = jax.random.rademacher(k_in, inputs.shape, inputs.dtype)
        sign_out = jax.random.rademacher(k_out, (*inputs.shape[:-1], mean.shape[1]), inputs.dtype)
        return inputs @ mean + ((inputs * sign_in) @ (std * eps)) * sign_out

    @staticmethod
    def _local_reparameterization(inputs, mean, std, key):
        """Per-row independent samples of the pre-activations (Kingma et al., 2015): exact marginals."""
        out_mean = inputs @ mean
        out_std = jnp.sqrt(jnp.square(inputs) @ jnp.square(std) + 1e-16)
        return out_mean + out_std * jax.random.normal(key, out_mean.shape, out_mean.dtype)


class MCDropoutDense(_BayesianDense):
    """Dense layer with dropout on its inputs kept on at prediction time (Gal and Ghahramani, 2016).

    The approximate posterior is the kernel with whole input rows dropped with probability `rate`
    (inverted scaling, so `Weights.mean()` is the plain layer). Same signature as `hk.Linear` plus
    `rate`. Parameters: ``w_dropout [in, out]``, ``b``, and ``dropout_rate []``: the layer's rate, recorded
    in the params so that `weight_kl` uses each layer's own (it gets no gradient, so Adam leaves it as it
    is; mask it out of any weight decay, e.g. with `optax.masked`, or the KL would drift from the layer's rate).
    """

    def __init__(
        self,
        output_size: int,
        with_bias: bool = True,
        w_init: hk.initializers.Initializer | None = None,
        b_init: hk.initializers.Initializer | None = None,
        name: str | None = None,
        *,
        rate: float = 0.1,
    ):
        super().__init__(output_size, with_bias, w_init, b_init, name)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"MCDropoutDense: rate must be in [0, 1), got {rate}")
        self.rate = rate

    def __call__(self, inputs: jax.Array, weights: Weights | None = None) -> jax.Array:
        """inputs ``[..., in]`` -> ``[..., out]``."""
        input_size = inputs.shape[-1]
        kernel = hk.get_parameter(
            DROPOUT_KERNEL, (input_size, self.output_size), inputs.dtype,
            init=_kernel_init(self.w_init, input_size),
        )
        hk.get_parameter(DROPOUT_RATE, (), jnp.float32, init=hk.initializers.Constant(self.rate))
        if weights is None:
            weights = Weights.fresh()
        keep = 1.0 - self.rate
        if weights.mode == _MEAN or self.rate == 0.0:
            out = inputs @ kernel
        elif weights.mode == _HELD:
            key = _layer_key(weights.key)
            if _key_batch_ndim(key) == 0:
                mask = jax.random.bernoulli(key, keep, (input_size,))
                out = (inputs * mask / keep) @ kernel
            else:
                n = _key_batch_shape(key)[0]
                masks = jax.vmap(lambda k: jax.random.bernoulli(k, keep, (input_size,)))(key)
                grouped = _grouped(inputs, n) * masks[:, None, :] / keep
                out = (grouped @ kernel).reshape(*inputs.shape[:-1], self.output_size)
        else:
            mask_shape = inputs.shape if weights.per_row else (input_size,)
            mask = jax.random.bernoulli(_next_key(self.name), keep, mask_shape)
            out = (inputs * mask / keep) @ kernel
        return self._add_bias(out)


class Dense(hk.Linear):
    """`hk.Linear` that accepts (and ignores) a `weights` argument, so a deterministic layer can stand
    wherever a Bayesian one does."""

    def __call__(self, inputs: jax.Array, weights: Weights | None = None, *, precision=None) -> jax.Array:
        return super().__call__(inputs, precision=precision)


LAYER_KINDS = ("deterministic", "reparameterization", "flipout", "mc_dropout")


def make_dense(kind: str, output_size: int, name: str, *, posterior_std_init: float = 1e-2,
               dropout_rate: float = 0.1) -> hk.Module:
    """A dense layer of the given posterior family; every kind is called as ``layer(x, weights)``."""
    if kind == "deterministic":
        return Dense(output_size, name=name)
    if kind in ESTIMATORS:
        return VariationalDense(output_size, name=name, estimator=kind, posterior_std_init=posterior_std_init)
    if kind == "mc_dropout":
        return MCDropoutDense(output_size, name=name, rate=dropout_rate)
    raise ValueError(f"layer kind must be one of {LAYER_KINDS}, got {kind!r}")


def gaussian_kl_to_zero_mean(mean: jax.Array, std: jax.Array, prior_std: float) -> jax.Array:
    """Sum over entries of KL(N(mean, std^2) || N(0, prior_std^2)), in nats."""
    var_ratio = jnp.square(std / prior_std)
    return 0.5 * jnp.sum(var_ratio + jnp.square(mean / prior_std) - 1.0 - jnp.log(var_ratio))


def kernel_prior_std(prior_std: float, fan_in: int, prior_scaling: str = "none") -> float:
    """The prior std of one kernel entry of a layer with `fan_in` inputs (see `PRIOR_SCALINGS`)."""
    if prior_scaling not in PRIOR_SCALINGS:
        raise ValueError(f"prior_scaling must be one of {PRIOR_SCALINGS}, got {prior_scaling!r}")
    return prior_std / np.sqrt(fan_in) if prior_scaling == "fan_in" else prior_std


def weight_kl(params: Mapping[str, Mapping[str, Any]], prior_std: float = 1.0, prior_scaling: str = "none"):
    """Total weight KL of every Bayesian layer in a haiku params tree, in nats.

    Variational layers: the closed-form KL(q(W) || N(0, s^2)). MC-dropout layers: Gal's approximation,
    (1 - rate) / (2 s^2) * ||W||^2 with each layer's own rate (its constant entropy term dropped). The
    prior std s is `prior_std`, divided by sqrt(fan_in) with ``prior_scaling="fan_in"``. Deterministic
    layers contribute nothing, so a deterministic model gives exactly 0.
    """
    total = jnp.zeros(())
    for module in params.values():
        if VARIATIONAL_MEAN in module:
            mean = module[VARIATIONAL_MEAN]
            std = jax.nn.softplus(module[VARIATIONAL_RHO])
            scale = kernel_prior_std(prior_std, mean.shape[0], prior_scaling)
            total = total + gaussian_kl_to_zero_mean(mean, std, scale)
        if DROPOUT_KERNEL in module:
            kernel = module[DROPOUT_KERNEL]
            scale = kernel_prior_std(prior_std, kernel.shape[0], prior_scaling)
            keep = 1.0 - jax.lax.stop_gradient(module[DROPOUT_RATE])
            total = total + keep / (2.0 * scale**2) * jnp.sum(jnp.square(kernel))
    return total


def posterior_std_mean(params: Mapping[str, Mapping[str, Any]]) -> jax.Array:
    """Average posterior std over the kernels of every variational layer (NaN-free 0 if none)."""
    stds = [jax.nn.softplus(m[VARIATIONAL_RHO]).ravel() for m in params.values() if VARIATIONAL_RHO in m]
    return jnp.mean(jnp.concatenate(stds)) if stds else jnp.zeros(())
