"""PlaNet's observation encoders and decoders and its reward head, as haiku modules.

Pixel images are ``[..., 64, 64, 3]`` floats in ``[-0.5, 0.5]``; any number of leading axes is allowed.
"""

from __future__ import annotations

from collections.abc import Sequence

import haiku as hk
import jax
import numpy as np

ENCODER_KERNELS = (4, 4, 4, 4)
DECODER_KERNELS = (5, 5, 6, 6)


def _flatten_leading(x: jax.Array, event_ndims: int) -> tuple[jax.Array, tuple[int, ...]]:
    lead = x.shape[: x.ndim - event_ndims]
    return x.reshape((int(np.prod(lead)),) + x.shape[x.ndim - event_ndims:]), lead


class ConvEncoder(hk.Module):
    """Four stride-2 VALID convolutions (depth x 1, 2, 4, 8 channels, kernel 4, ReLU), flattened.

    ``[..., 64, 64, 3] -> [..., 32 * depth]`` (1024 for PlaNet's depth 32).
    """

    def __init__(self, depth: int = 32, name: str | None = None):
        super().__init__(name=name)
        self.depth = depth

    def __call__(self, image: jax.Array) -> jax.Array:
        x, lead = _flatten_leading(image, 3)
        for index, kernel in enumerate(ENCODER_KERNELS):
            x = hk.Conv2D(self.depth * 2**index, kernel, stride=2, padding="VALID", name=f"conv{index}")(x)
            x = jax.nn.relu(x)
        return x.reshape(*lead, -1)


class ConvDecoder(hk.Module):
    """Dense to ``embed_size``, then four stride-2 VALID transposed convolutions (depth x 4, 2, 1 channels,
    then 3; kernels 5, 5, 6, 6; ReLU between). ``[..., F] -> [..., 64, 64, 3]``: the mean of a unit-variance
    Gaussian over pixels."""

    def __init__(self, depth: int = 32, embed_size: int | None = None, channels: int = 3,
                 name: str | None = None):
        super().__init__(name=name)
        self.depth = depth
        self.embed_size = embed_size or 32 * depth
        self.channels = channels

    def __call__(self, features: jax.Array) -> jax.Array:
        x, lead = _flatten_leading(features, 1)
        x = hk.Linear(self.embed_size, name="dense")(x)[:, None, None, :]
        widths = (self.depth * 4, self.depth * 2, self.depth, self.channels)
        for index, (width, kernel) in enumerate(zip(widths, DECODER_KERNELS, strict=True)):
            x = hk.Conv2DTranspose(width, kernel, stride=2, padding="VALID", name=f"deconv{index}")(x)
            if index < len(widths) - 1:
                x = jax.nn.relu(x)
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

