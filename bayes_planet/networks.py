"""PlaNet's observation encoders and decoders and its reward head, as haiku modules.

Pixel images are ``[..., 64, 64, 3]`` floats in ``[-0.5, 0.5]``; any number of leading axes is allowed.

The conv encoder and decoder have two engines with the same parameters (names, shapes, initializers):
``"plain"`` uses `hk.Conv2D` / `hk.Conv2DTranspose` and is the reference; ``"fast"`` computes the same
functions as patch extraction plus one matmul per layer (stride-2 conv = space-to-depth + stride-1 conv;
stride-2 transposed conv = one stride-1 conv whose output channels are interleaved back into pixels), and
runs over frames in chunks under `jax.checkpoint`. XLA's CPU gradients of strided and transposed
convolutions are 10-20x slower than matmuls of the same FLOPs, hence the fast engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

ENCODER_KERNELS = (4, 4, 4, 4)
DECODER_KERNELS = (5, 5, 6, 6)
CONV_ENGINES = ("fast", "plain")


def _flatten_leading(x: jax.Array, event_ndims: int) -> tuple[jax.Array, tuple[int, ...]]:
    lead = x.shape[: x.ndim - event_ndims]
    return x.reshape((int(np.prod(lead)),) + x.shape[x.ndim - event_ndims:]), lead


# ------------------------------------------------------------------------------ convolutions as matmuls
def extract_patches(x: jax.Array, size: int) -> jax.Array:
    """All ``size x size`` windows (stride 1, VALID): ``[N, H, W, C] -> [N, H-size+1, W-size+1, size*size*C]``,
    features ordered (row offset, column offset, channel)."""
    height, width = x.shape[1] - size + 1, x.shape[2] - size + 1
    return jnp.concatenate([x[:, p:p + height, q:q + width] for p in range(size) for q in range(size)], axis=-1)


def space_to_depth(x: jax.Array) -> jax.Array:
    """``[N, 2H, 2W, C] -> [N, H, W, 4C]``, features ordered (row phase, column phase, channel)."""
    n, h, w, c = x.shape
    x = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h // 2, w // 2, 4 * c)


def depth_to_space(x: jax.Array) -> jax.Array:
    """Inverse of `space_to_depth`: ``[N, H, W, 4C] -> [N, 2H, 2W, C]``."""
    n, h, w, c4 = x.shape
    x = x.reshape(n, h, w, 2, 2, c4 // 4).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, 2 * h, 2 * w, c4 // 4)


def conv2d_stride2(x: jax.Array, w: jax.Array, b: jax.Array | None) -> jax.Array:
    """``hk.Conv2D(stride=2, padding="VALID")`` as space-to-depth + one patch matmul.

    x: ``[N, H, W, C]``; w: ``[k, k, C, O]`` (haiku's layout); returns ``[N, (H-k)//2+1, (W-k)//2+1, O]``.
    With ``k' = ceil(k/2)``, the stride-1 kernel on the space-to-depth input is
    ``w'[p, q, (r, s, c)] = w[2p + r, 2q + s, c]`` (zero where ``2p + r >= k``).
    """
    k, _, channels, out = w.shape
    taps = math.ceil(k / 2)
    out_h, out_w = (x.shape[1] - k) // 2 + 1, (x.shape[2] - k) // 2 + 1
    # crop or pad to the even size that the windows span, then fold 2x2 pixel blocks into channels
    span_h, span_w = 2 * (out_h + taps - 1), 2 * (out_w + taps - 1)
    x = x[:, :span_h, :span_w]
    x = jnp.pad(x, ((0, 0), (0, span_h - x.shape[1]), (0, span_w - x.shape[2]), (0, 0)))
    w = jnp.pad(w, ((0, 2 * taps - k), (0, 2 * taps - k), (0, 0), (0, 0)))
    kernel = w.reshape(taps, 2, taps, 2, channels, out).transpose(0, 2, 1, 3, 4, 5)
    y = extract_patches(space_to_depth(x), taps) @ kernel.reshape(-1, out)
    return y if b is None else y + b


def conv2d_transpose_stride2(x: jax.Array, w: jax.Array, b: jax.Array | None) -> jax.Array:
    """``hk.Conv2DTranspose(stride=2, padding="VALID")`` as one stride-1 patch matmul with 4 phases.

    x: ``[N, H, W, C]``; w: ``[k, k, O, C]`` (haiku's layout); returns ``[N, 2(H-1)+k, 2(W-1)+k, O]``.
    Output pixel ``2e + r`` sums ``x[e - t] * v[2t + r]`` over taps ``t < ceil(k/2)``, with ``v`` the
    spatially flipped kernel (lax.conv_transpose without kernel transposition correlates the dilated input).
    A 1x1 input (the decoder's first layer) is a plain matmul.
    """
    k, _, out, channels = w.shape
    v = w[::-1, ::-1]
    if x.shape[1] == x.shape[2] == 1:
        y = jnp.einsum("nc,pqoc->npqo", x[:, 0, 0], v)
        return y if b is None else y + b
    taps = math.ceil(k / 2)
    height, width = 2 * (x.shape[1] - 1) + k, 2 * (x.shape[2] - 1) + k
    v = jnp.pad(v, ((0, 2 * taps - k), (0, 2 * taps - k), (0, 0), (0, 0)))
    # kernel[p, q, c, (r, s, o)] = v[2(taps-1-p) + r, 2(taps-1-q) + s, o, c]
    kernel = v.reshape(taps, 2, taps, 2, out, channels)[::-1, :, ::-1].transpose(0, 2, 5, 1, 3, 4)
    x = jnp.pad(x, ((0, 0), (taps - 1, taps - 1), (taps - 1, taps - 1), (0, 0)))
    y = depth_to_space(extract_patches(x, taps) @ kernel.reshape(taps * taps * channels, 4 * out))
    y = y[:, :height, :width]
    return y if b is None else y + b


def map_in_chunks(fn: Callable[[jax.Array], jax.Array], x: jax.Array, chunk: int) -> jax.Array:
    """``fn`` over the leading axis of ``x`` in chunks of at most `chunk` rows, each under `jax.checkpoint`
    (the backward pass rebuilds one chunk's patch copies at a time, which bounds memory)."""
    n = x.shape[0]
    if not chunk or n <= chunk:
        return fn(x)
    count = -(-n // chunk)
    size = -(-n // count)  # equal chunks, padding at most count - 1 rows
    padded = jnp.pad(x, ((0, count * size - n),) + ((0, 0),) * (x.ndim - 1))
    # keep the matmul outputs; recompute only the cheap patch copies and activations
    fn = jax.checkpoint(fn, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    y = jax.lax.map(fn, padded.reshape(count, size, *x.shape[1:]))
    return y.reshape(count * size, *y.shape[2:])[:n]


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
        x, lead = _flatten_leading(image, 3)
        widths = [self.depth * 2**index for index in range(len(ENCODER_KERNELS))]
        if self.engine == "plain":
            for index, (width, kernel) in enumerate(zip(widths, ENCODER_KERNELS, strict=True)):
                x = jax.nn.relu(hk.Conv2D(width, kernel, stride=2, padding="VALID", name=f"conv{index}")(x))
        else:
            in_channels = [x.shape[-1]] + widths[:-1]
            shapes = zip(ENCODER_KERNELS, in_channels, widths, strict=True)
            layers = [_ConvWeights(name=f"conv{index}")(kernel, cin, width, False)
                      for index, (kernel, cin, width) in enumerate(shapes)]

            def encode(frames):
                for w, b in layers:
                    frames = jax.nn.relu(conv2d_stride2(frames, w, b))
                return frames

            x = map_in_chunks(encode, x, self.chunk)
        return x.reshape(*lead, -1)


class ConvDecoder(hk.Module):
    """Dense to ``embed_size``, then four stride-2 VALID transposed convolutions (depth x 4, 2, 1 channels,
    then 3; kernels 5, 5, 6, 6; ReLU between). ``[..., F] -> [..., 64, 64, 3]``: the mean of a unit-variance
    Gaussian over pixels. `engine` and `chunk` as in `ConvEncoder`."""

    def __init__(self, depth: int = 32, embed_size: int | None = None, channels: int = 3,
                 engine: str = "fast", chunk: int = 32, name: str | None = None):
        super().__init__(name=name)
        _check_engine(engine)
        self.depth = depth
        self.embed_size = embed_size or 32 * depth
        self.channels = channels
        self.engine, self.chunk = engine, chunk

    def __call__(self, features: jax.Array) -> jax.Array:
        x, lead = _flatten_leading(features, 1)
        x = hk.Linear(self.embed_size, name="dense")(x)
        widths = (self.depth * 4, self.depth * 2, self.depth, self.channels)
        last = len(widths) - 1
        if self.engine == "plain":
            x = x[:, None, None, :]
            for index, (width, kernel) in enumerate(zip(widths, DECODER_KERNELS, strict=True)):
                x = hk.Conv2DTranspose(width, kernel, stride=2, padding="VALID", name=f"deconv{index}")(x)
                x = x if index == last else jax.nn.relu(x)
        else:
            in_channels = (self.embed_size,) + widths[:-1]
            shapes = zip(DECODER_KERNELS, in_channels, widths, strict=True)
            layers = [_ConvWeights(name=f"deconv{index}")(kernel, cin, width, True)
                      for index, (kernel, cin, width) in enumerate(shapes)]

            def decode(rows):
                y = rows[:, None, None, :]
                for index, (w, b) in enumerate(layers):
                    y = conv2d_transpose_stride2(y, w, b)
                    y = y if index == last else jax.nn.relu(y)
                return y

            x = map_in_chunks(decode, x, self.chunk)
        return x.reshape(*lead, *x.shape[1:])


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


def reward_head(hidden: int = 300, layers: int = 3, name: str = "reward") -> MLP:
    """PlaNet's reward model: `layers` ReLU layers of `hidden` units, then a scalar (call and squeeze)."""
    return MLP((hidden,) * layers + (1,), name=name)


def vector_encoder(hidden: int = 300, embed_size: int = 300, layers: int = 2, name: str = "encoder") -> MLP:
    """Encoder for ``"state"`` observations: ``[..., obs_dim] -> [..., embed_size]``."""
    return MLP((hidden,) * (layers - 1) + (embed_size,), name=name)


def vector_decoder(obs_dim: int, hidden: int = 300, layers: int = 2, name: str = "decoder") -> MLP:
    """Decoder for ``"state"`` observations: ``[..., F] -> [..., obs_dim]`` (unit-variance Gaussian mean)."""
    return MLP((hidden,) * (layers - 1) + (obs_dim,), name=name)

