"""Convolutions as matmuls, for CPUs: the machinery behind the conv engine "fast" of `bayes_planet.networks`.

A stride-2 convolution is space-to-depth plus a stride-1 patch matmul; a stride-2 transposed convolution is
a matmul over its 4 output phases, in the "gather" or "scatter" form of `transposed_conv_form`. Frames run in
chunks under `jax.checkpoint` (`map_in_chunks`). XLA's CPU gradients of strided and transposed convolutions
are 10-20x slower than matmuls of the same FLOPs, hence this module; `matmul_rows` (a matmul with a
hand-written gradient) is what the precision rewrite of `bayes_planet.precision` also builds on. Pure
functions of arrays: parameters live in the haiku modules of `networks`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

LAYER_OUTPUT = "conv_layer_output"  # the name under which `map_in_chunks` keeps a layer's output
MIN_MACS_TO_KEEP = 64


def flatten_leading(x: jax.Array, event_ndims: int) -> tuple[jax.Array, tuple[int, ...]]:
    """``[*lead, *event] -> [prod(lead), *event]`` and the `lead` shape, to restore it."""
    lead = x.shape[: x.ndim - event_ndims]
    return x.reshape((int(np.prod(lead)),) + x.shape[x.ndim - event_ndims:]), lead


# ------------------------------------------------------------------------------ convolutions as matmuls
def extract_patches(x: jax.Array, size: int) -> jax.Array:
    """All ``size x size`` windows (stride 1, VALID): ``[N, H, W, C] -> [N, H-size+1, W-size+1, size*size*C]``,
    features ordered (row offset, column offset, channel).

    The windows are stacked on a new axis, then flattened: XLA on a CPU writes that in one pass, where a
    concatenation along the channels first copies out every window (PlaNet-size train step 3-6% faster)."""
    height, width = x.shape[1] - size + 1, x.shape[2] - size + 1
    windows = jnp.stack([x[:, p:p + height, q:q + width] for p in range(size) for q in range(size)], axis=-2)
    return windows.reshape(x.shape[0], height, width, size * size * x.shape[-1])


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


@jax.custom_vjp
def matmul_rows(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``x @ kernel`` for ``x`` ``[..., K]`` and ``kernel`` ``[K, O]``, with the kernel gradient computed as
    ``(g^T x)^T`` over the flattened rows. Written as ``x^T g``, XLA on a CPU first copies the cotangent
    ``g`` into a transposed layout (a [108, 28800] copy per chunk in PlaNet's last decoder layer); this
    way it contracts the rows of both operands where they lie."""
    return x @ kernel


def _matmul_rows_forward(x, kernel):
    return x @ kernel, (x, kernel)


def _matmul_rows_backward(residuals, cotangent):
    x, kernel = residuals
    rows = lambda a: a.reshape(-1, a.shape[-1])
    return cotangent @ kernel.T, (rows(cotangent).T @ rows(x)).T


matmul_rows.defvjp(_matmul_rows_forward, _matmul_rows_backward)


def _keep_for_backward(y: jax.Array, rows: int, kernel: jax.Array) -> jax.Array:
    """Name a layer's matmul output `LAYER_OUTPUT` (kept by `map_in_chunks` for the backward pass) unless
    recomputing it costs fewer than `MIN_MACS_TO_KEEP` multiply-adds per element (the first encoder layer:
    48), where storing and reloading it costs more than recomputing it."""
    return checkpoint_name(y, LAYER_OUTPUT) if rows * kernel.size >= MIN_MACS_TO_KEEP * y.size else y


def stride2_conv_kernel(w: jax.Array) -> jax.Array:
    """`hk.Conv2D` weights ``[k, k, C, O]`` -> the matmul kernel ``[k'*k'*4C, O]`` of `stride2_conv_by_matmul`:
    with ``k' = ceil(k/2)``, ``kernel[(p, q, r, s, c)] = w[2p + r, 2q + s, c]`` (zero where ``2p + r >= k``)."""
    k, _, channels, out = w.shape
    taps = math.ceil(k / 2)
    w = jnp.pad(w, ((0, 2 * taps - k), (0, 2 * taps - k), (0, 0), (0, 0)))
    return w.reshape(taps, 2, taps, 2, channels, out).transpose(0, 2, 1, 3, 4, 5).reshape(-1, out)


def stride2_conv_by_matmul(x: jax.Array, kernel: jax.Array, size: int) -> jax.Array:
    """A stride-2 VALID ``size x size`` convolution without bias, as space-to-depth + one patch matmul.
    x: ``[N, H, W, C]``; kernel from `stride2_conv_kernel`; returns ``[N, (H-size)//2+1, (W-size)//2+1, O]``."""
    taps = math.ceil(size / 2)
    out_h, out_w = (x.shape[1] - size) // 2 + 1, (x.shape[2] - size) // 2 + 1
    # crop or pad to the even size that the windows span, then fold 2x2 pixel blocks into channels
    span_h, span_w = 2 * (out_h + taps - 1), 2 * (out_w + taps - 1)
    x = x[:, :span_h, :span_w]
    x = jnp.pad(x, ((0, 0), (0, span_h - x.shape[1]), (0, span_w - x.shape[2]), (0, 0)))
    y = matmul_rows(extract_patches(space_to_depth(x), taps), kernel)
    return _keep_for_backward(y, x.shape[0] * out_h * out_w, kernel)


def conv2d_stride2(x: jax.Array, w: jax.Array, b: jax.Array | None) -> jax.Array:
    """``hk.Conv2D(stride=2, padding="VALID")``: x ``[N, H, W, C]``, w ``[k, k, C, O]`` (haiku's layout)
    -> ``[N, (H-k)//2+1, (W-k)//2+1, O]``, by `stride2_conv_by_matmul`."""
    y = stride2_conv_by_matmul(x, stride2_conv_kernel(w), w.shape[0])
    return y if b is None else y + b


@jax.custom_vjp
def overlap_add(z: jax.Array) -> jax.Array:
    """Sum per-tap contributions into the pixels they land on:
    ``[N, H, W, t, t, C] -> [N, H+t-1, W+t-1, C]``, ``out[e + p, f + q] += z[e, f, p, q]``.

    Its VJP gathers the cotangent's ``t x t`` windows into one array (the transpose that JAX would derive,
    ``t * t`` zero-padded copies of the whole input, is several times slower on a CPU)."""
    taps = z.shape[3]
    pad = lambda p, q: ((0, 0), (p, taps - 1 - p), (q, taps - 1 - q), (0, 0))
    return sum(jnp.pad(z[:, :, :, p, q], pad(p, q)) for p in range(taps) for q in range(taps))


def _overlap_add_forward(z):
    return overlap_add(z), z.shape


def _overlap_add_backward(shape, cotangent):
    n, height, width, taps, _, channels = shape
    return (extract_patches(cotangent, taps).reshape(n, height, width, taps, taps, channels),)


overlap_add.defvjp(_overlap_add_forward, _overlap_add_backward)

TRANSPOSED_CONV_FORMS = ("auto", "gather", "scatter")


def transposed_conv_form(height: int, width: int, kernel: int, in_channels: int, out_channels: int) -> str:
    """How `conv2d_transpose_stride2` computes a ``[N, height, width, in_channels]`` input by default.

    "dense" for a 1x1 input (one matmul). Otherwise the cheaper of "gather", which multiplies windows of
    the zero-padded input (``(H+t-1)(W+t-1) x t*t*C`` patches), and "scatter", which multiplies each input
    pixel once and overlap-adds its ``t*t`` phase products (``H*W x t*t*4*O``). These layers are bound by
    memory as much as by arithmetic on a CPU, so the cost of a form is its multiply-adds times the elements
    it materializes. At PlaNet's sizes this picks scatter for the 5x5 and the 3-channel layers and gather
    for the 13x13 -> 30x30 one, which measured fastest (decoder forward and backward over 2500 frames:
    5.2 s against 8.1 s all-gather and 5.7 s all-scatter).
    """
    if height == width == 1:
        return "dense"
    taps = math.ceil(kernel / 2)
    gather_elements = (height + taps - 1) * (width + taps - 1) * taps * taps * in_channels
    scatter_elements = height * width * taps * taps * 4 * out_channels
    gather_cost = gather_elements * (gather_elements * 4 * out_channels)
    scatter_cost = scatter_elements * (scatter_elements * in_channels)
    return "scatter" if scatter_cost < gather_cost else "gather"


def transposed_conv_kernel(w: jax.Array, form: str) -> jax.Array:
    """`hk.Conv2DTranspose` weights ``[k, k, O, C]`` -> the matmul kernel of `transposed_conv_by_matmul`:
    ``[C, k*k*O]`` ("dense"), ``[C, t*t*4O]`` ("scatter") or ``[t*t*C, 4O]`` ("gather"), ``t = ceil(k/2)``.

    Output pixel ``2e + r`` sums ``x[e - t] * v[2t + r]`` over taps ``t``, with ``v`` the spatially flipped
    kernel (lax.conv_transpose without kernel transposition correlates the dilated input)."""
    k, _, out, channels = w.shape
    v = w[::-1, ::-1]
    if form == "dense":
        return v.transpose(3, 0, 1, 2).reshape(channels, k * k * out)
    taps = math.ceil(k / 2)
    v = jnp.pad(v, ((0, 2 * taps - k), (0, 2 * taps - k), (0, 0), (0, 0)))
    phases = v.reshape(taps, 2, taps, 2, out, channels)  # [t, r, u, s, o, c] = v[2t + r, 2u + s, o, c]
    if form == "scatter":
        return phases.transpose(5, 0, 2, 1, 3, 4).reshape(channels, taps * taps * 4 * out)
    # kernel[p, q, c, (r, s, o)] = v[2(taps-1-p) + r, 2(taps-1-q) + s, o, c]
    return phases[::-1, :, ::-1].transpose(0, 2, 5, 1, 3, 4).reshape(taps * taps * channels, 4 * out)


def transposed_conv_by_matmul(x: jax.Array, kernel: jax.Array, size: int, form: str) -> jax.Array:
    """A stride-2 VALID ``size x size`` transposed convolution without bias, over 4 output phases.
    x: ``[N, H, W, C]``; kernel from `transposed_conv_kernel` with the same `form`;
    returns ``[N, 2(H-1)+size, 2(W-1)+size, O]``."""
    n, height, width, _ = x.shape
    taps = math.ceil(size / 2)
    if form == "dense":
        y = _keep_for_backward(matmul_rows(x.reshape(n, -1), kernel), n, kernel)
        return y.reshape(n, size, size, -1)
    if form == "scatter":
        y = matmul_rows(x, kernel).reshape(n, height, width, taps, taps, -1)
        y = _keep_for_backward(overlap_add(y), n * height * width, kernel)
    else:
        x = jnp.pad(x, ((0, 0), (taps - 1, taps - 1), (taps - 1, taps - 1), (0, 0)))
        rows = n * (height + taps - 1) * (width + taps - 1)
        y = _keep_for_backward(matmul_rows(extract_patches(x, taps), kernel), rows, kernel)
    return depth_to_space(y)[:, :2 * (height - 1) + size, :2 * (width - 1) + size]


def conv2d_transpose_stride2(x: jax.Array, w: jax.Array, b: jax.Array | None, form: str = "auto") -> jax.Array:
    """``hk.Conv2DTranspose(stride=2, padding="VALID")``: x ``[N, H, W, C]``, w ``[k, k, O, C]`` (haiku's
    layout) -> ``[N, 2(H-1)+k, 2(W-1)+k, O]``, by `transposed_conv_by_matmul`. `form`: "gather",
    "scatter" or "auto" (`transposed_conv_form`); the same function either way (a 1x1 input is dense)."""
    if form not in TRANSPOSED_CONV_FORMS:
        raise ValueError(f"form must be one of {TRANSPOSED_CONV_FORMS}, got {form!r}")
    k, _, out, channels = w.shape
    if form == "auto" or x.shape[1] == x.shape[2] == 1:
        form = transposed_conv_form(x.shape[1], x.shape[2], k, channels, out)
    y = transposed_conv_by_matmul(x, transposed_conv_kernel(w, form), k, form)
    return y if b is None else y + b


def map_in_chunks(fn: Callable, x, chunk: int):
    """``fn`` over the leading axis of ``x`` (an array, or a tuple of arrays with the same leading size) in
    chunks of at most `chunk` rows, each under `jax.checkpoint` (the backward pass rebuilds one chunk's patch
    copies at a time, which bounds memory). `fn` takes and returns what ``x`` is, at any leading size."""
    n = jax.tree.leaves(x)[0].shape[0]
    if not chunk or n <= chunk:
        return fn(x)
    count = -(-n // chunk)
    size = -(-n // count)  # equal chunks, padding at most count - 1 rows
    chunks = jax.tree.map(lambda a: jnp.pad(a, ((0, count * size - n),) + ((0, 0),) * (a.ndim - 1))
                          .reshape(count, size, *a.shape[1:]), x)
    # keep each layer's pre-activation output (`LAYER_OUTPUT`); recompute the patch copies, the scatter
    # form's per-tap products and the activations
    fn = jax.checkpoint(fn, policy=jax.checkpoint_policies.save_only_these_names(LAYER_OUTPUT))
    y = jax.lax.map(fn, chunks)
    return jax.tree.map(lambda a: a.reshape(count * size, *a.shape[2:])[:n], y)
