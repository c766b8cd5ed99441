"""PlaNet's observation encoders and decoders and its reward head, as haiku modules.

Pixel images are ``[..., 64, 64, 3]`` floats in ``[-0.5, 0.5]``; any number of leading axes is allowed.

The conv encoder and decoder have two engines with the same parameters (names, shapes, initializers):
``"plain"`` uses `hk.Conv2D` / `hk.Conv2DTranspose` and is the reference; ``"fast"`` computes the same
functions with one matmul per layer, over frames in chunks (`bayes_planet.matmul_conv`, 10-20x faster
gradients on CPUs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from bayes_planet.distributions import unit_gaussian_nll
from bayes_planet.matmul_conv import (
    flatten_leading,
    map_in_chunks,
    stride2_conv_by_matmul,
    stride2_conv_kernel,
    transposed_conv_by_matmul,
    transposed_conv_form,
    transposed_conv_kernel,
)

ENCODER_KERNELS = (4, 4, 4, 4)
DECODER_KERNELS = (5, 5, 6, 6)
CONV_ENGINES = ("fast", "plain")


class _ConvWeights(hk.Module):
    """The ``w`` and ``b`` of `hk.Conv2D` / `hk.Conv2DTranspose` (same names, shapes and initializers)."""

    def __call__(self, kernel: int, in_channels: int, out_channels: int, transpose: bool):
        shape = (kernel, kernel) + ((out_channels, in_channels) if transpose else (in_channels, out_channels))
        stddev = 1.0 / np.sqrt(kernel * kernel * in_channels)
        w = hk.get_parameter("w", shape, jnp.float32, init=hk.initializers.TruncatedNormal(stddev))
        b = hk.get_parameter("b", (out_channels,), jnp.float32, init=jnp.zeros)
        return w, b


def _check_engine(engine: str) -> None:
    if engine not in CONV_ENGINES:
        raise ValueError(f"model.conv_engine must be one of {CONV_ENGINES}, got {engine!r}")


class ConvEncoder(hk.Module):
    """Four stride-2 VALID convolutions (depth x 1, 2, 4, 8 channels, kernel 4, ReLU), flattened.

    ``[..., 64, 64, 3] -> [..., 32 * depth]`` (1024 for PlaNet's depth 32). `engine` "fast" | "plain" (same
    parameters and function); `chunk`: frames per checkpointed chunk for the fast engine (0: no chunks).
    """

    def __init__(self, depth: int = 32, engine: str = "fast", chunk: int = 32, name: str | None = None):
        super().__init__(name=name)
        _check_engine(engine)
        self.depth, self.engine, self.chunk = depth, engine, chunk

    def __call__(self, image: jax.Array) -> jax.Array:
        x, lead = flatten_leading(image, 3)
        widths = [self.depth * 2**index for index in range(len(ENCODER_KERNELS))]
        if self.engine == "plain":
            for index, (width, kernel) in enumerate(zip(widths, ENCODER_KERNELS, strict=True)):
                x = jax.nn.relu(hk.Conv2D(width, kernel, stride=2, padding="VALID", name=f"conv{index}")(x))
        else:
            in_channels = [x.shape[-1]] + widths[:-1]
            shapes = zip(ENCODER_KERNELS, in_channels, widths, strict=True)
            weights = [_ConvWeights(name=f"conv{index}")(kernel, cin, width, False)
                       for index, (kernel, cin, width) in enumerate(shapes)]
            # matmul kernels are laid out once, outside the loop over chunks (and so are their gradients)
            layers = [(stride2_conv_kernel(w), b, w.shape[0]) for w, b in weights]

            def encode(frames):
                for kernel, b, size in layers:
                    frames = jax.nn.relu(stride2_conv_by_matmul(frames, kernel, size) + b)
                return frames

            x = map_in_chunks(encode, x, self.chunk)
        return x.reshape(*lead, -1)


class ConvDecoder(hk.Module):
    """Dense to ``embed_size``, then four stride-2 VALID transposed convolutions (depth x 4, 2, 1 channels,
    then 3; kernels 5, 5, 6, 6; ReLU between). ``[..., F] -> [..., 64, 64, 3]``: the mean of a unit-variance
    Gaussian over pixels (`nll` gives its negative log density). `engine` and `chunk` as in `ConvEncoder`."""

    def __init__(self, depth: int = 32, embed_size: int | None = None, channels: int = 3,
                 engine: str = "fast", chunk: int = 32, name: str | None = None):
        super().__init__(name=name)
        _check_engine(engine)
        self.depth = depth
        self.embed_size = embed_size or 32 * depth
        self.channels = channels
        self.engine, self.chunk = engine, chunk

    def nll(self, features: jax.Array, target: jax.Array) -> jax.Array:
        """``unit_gaussian_nll(target, self(features), 3)``: ``[..., F]``, ``[..., 64, 64, 3] -> [...]`` nats.

        The fast engine computes it chunk by chunk, so the decoded images and their gradient never exist
        for all frames at once (PlaNet's 2500 frames: 123 MB each)."""
        return self(features, target)

    def __call__(self, features: jax.Array, target: jax.Array | None = None) -> jax.Array:
        """The decoded images; with a `target`, their `nll` instead (one parameter scope for both)."""
        x, lead = flatten_leading(features, 1)
        x = hk.Linear(self.embed_size, name="dense")(x)
        if self.engine == "plain":
            decode, chunk = self._plain_decoder(), 0  # haiku modules cannot run inside lax.map
        else:
            x, decode = self._fast_decoder(x)
            chunk = self.chunk
        if target is None:
            images = map_in_chunks(decode, x, chunk)
            return images.reshape(*lead, *images.shape[1:])
        target, _ = flatten_leading(target, 3)
        nll = map_in_chunks(lambda rows: unit_gaussian_nll(rows[1], decode(rows[0]), 3), (x, target), chunk)
        return nll.reshape(lead)

    def _widths(self) -> tuple[int, ...]:
        return (self.depth * 4, self.depth * 2, self.depth, self.channels)

    @hk.transparent
    def _plain_decoder(self) -> Callable[[jax.Array], jax.Array]:
        def decode(rows):
            y = rows[:, None, None, :]
            for index, (width, kernel) in enumerate(zip(self._widths(), DECODER_KERNELS, strict=True)):
                y = hk.Conv2DTranspose(width, kernel, stride=2, padding="VALID", name=f"deconv{index}")(y)
                y = y if index == len(DECODER_KERNELS) - 1 else jax.nn.relu(y)
            return y
        return decode

    @hk.transparent
    def _fast_decoder(self, embedded: jax.Array) -> tuple[jax.Array, Callable[[jax.Array], jax.Array]]:
        """Runs the first transposed convolution (1x1 input: a dense matmul) on all ``[N, embed]`` frames at
        once, where its kernel is read once rather than once per chunk; returns its ``[N, k, k, C]`` output
        and the function that decodes chunks of it into images."""
        widths = self._widths()
        shapes = zip(DECODER_KERNELS, (embedded.shape[-1],) + widths[:-1], widths, strict=True)
        layers, height = [], 1
        for index, (kernel, cin, width) in enumerate(shapes):
            w, b = _ConvWeights(name=f"deconv{index}")(kernel, cin, width, True)
            form = transposed_conv_form(height, height, kernel, cin, width)
            layers.append((transposed_conv_kernel(w, form), b, kernel, form))  # laid out once, as in the encoder
            height = 2 * (height - 1) + kernel

        def layer(y, index):
            kernel, b, size, form = layers[index]
            y = transposed_conv_by_matmul(y, kernel, size, form) + b
            return y if index == len(layers) - 1 else jax.nn.relu(y)

        def decode(y):
            for index in range(1, len(layers)):
                y = layer(y, index)
            return y
        return layer(embedded[:, None, None, :], 0), decode


class MLP(hk.Module):
    """Dense layers with ReLU between them; the last layer is linear. ``[..., in] -> [..., sizes[-1]]``."""

    def __init__(self, sizes: Sequence[int], name: str | None = None):
        super().__init__(name=name)
        self.sizes = tuple(sizes)

    def __call__(self, x: jax.Array) -> jax.Array:
        for index, size in enumerate(self.sizes):
            x = hk.Linear(size, name=f"dense{index}")(x)
            if index < len(self.sizes) - 1:
                x = jax.nn.relu(x)
        return x


REWARD_NOISE = ("fixed", "learned", "predicted")


class RewardHead(MLP):
    """PlaNet's reward model with a Gaussian likelihood: `layers` ReLU layers of `hidden` units, then the mean.

    ``[..., F] -> (mean [...], std [...])``. The likelihood's std (`noise`, one of `REWARD_NOISE`):
      "fixed": `std` everywhere (PlaNet: 1, a unit-variance Gaussian);
      "learned": one trainable scalar, `std` at initialization;
      "predicted": a second output of the last layer, per state (`std` when that output is zero).
    Trainable stds are ``min_std + softplus(raw)``, so never below `min_std`. With "fixed" the parameters
    are exactly PlaNet's head (``reward/~/dense0...``), so checkpoints of either kind load.
    """

    def __init__(self, hidden: int = 300, layers: int = 3, noise: str = "fixed", std: float = 1.0,
                 min_std: float = 0.01, name: str = "reward"):
        if noise not in REWARD_NOISE:
            raise ValueError(f"model.reward_noise must be one of {REWARD_NOISE}, got {noise!r}")
        if not std > min_std >= 0:
            raise ValueError(f"model.reward_std ({std}) must be above model.reward_min_std ({min_std}) >= 0")
        super().__init__((hidden,) * layers + (2 if noise == "predicted" else 1,), name=name)
        self.noise, self.std, self.min_std = noise, std, min_std

    def __call__(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
        outputs = super().__call__(features)
        mean = outputs[..., 0]
        if self.noise == "fixed":
            return mean, jnp.full_like(mean, self.std)
        offset = inverse_softplus(self.std - self.min_std)
        if self.noise == "learned":
            raw = hk.get_parameter("std_raw", (), mean.dtype, hk.initializers.Constant(offset))
            return mean, jnp.broadcast_to(self.min_std + jax.nn.softplus(raw), mean.shape)
        return mean, self.min_std + jax.nn.softplus(outputs[..., 1] + offset)


def inverse_softplus(y: float) -> float:
    """x with ``softplus(x) = y`` for y > 0 (float, for initializers)."""
    return float(y + np.log(-np.expm1(-y)))


def vector_encoder(hidden: int = 300, embed_size: int = 300, layers: int = 2, name: str = "encoder") -> MLP:
    """Encoder for ``"state"`` observations: ``[..., obs_dim] -> [..., embed_size]``."""
    return MLP((hidden,) * (layers - 1) + (embed_size,), name=name)


def vector_decoder(obs_dim: int, hidden: int = 300, layers: int = 2, name: str = "decoder") -> MLP:
    """Decoder for ``"state"`` observations: ``[..., F] -> [..., obs_dim]`` (unit-variance Gaussian mean)."""
    return MLP((hidden,) * (layers - 1) + (obs_dim,), name=name)

