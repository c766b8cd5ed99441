"""PlaNet's observation encoders and decoders and its reward head, as haiku modules.

Pixel images are ``[..., 64, 64, 3]`` floats in ``[-0.5, 0.5]``; any number of leading axes is allowed.

The conv encoder and decoder have two engines with the same parameters (names, shapes, initializers):
``"plain"`` uses `hk.Conv2D` / `hk.Conv2DTranspose` and is the reference; ``"fast"`` computes the same
functions with one matmul per layer (stride-2 conv = space-to-depth + a stride-1 patch matmul; stride-2
transposed conv = a matmul over its 4 output phases, in the "gather" or "scatter" form of
`transposed_conv_form`), and runs over frames in chunks under `jax.checkpoint`. XLA's CPU gradients of
strided and transposed convolutions are 10-20x slower than matmuls of the same FLOPs, hence the fast engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from bayes_planet.distributions import unit_gaussian_nll

ENCODER_KERNELS = (4, 4, 4, 4)
DECODER_KERNELS = (5, 5, 6, 6)
CONV_ENGINES = ("fast", "plain")
LAYER_OUTPUT = "conv_layer_output"  # the name under which `map_in_chunks` keeps a layer's output
MIN_MACS_TO_KEEP = 64


def _flatten_leading(x: jax.Array, event_ndims: int) -> tuple[jax.Array, tuple[int, ...]]:
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
        x, lead = _flatten_leading(features, 1)
        x = hk.Linear(self.embed_size, name="dense")(x)
        if self.engine == "plain":
            decode, chunk = self._plain_decoder(), 0  # haiku modules cannot run inside lax.map
        else:
            x, decode = self._fast_decoder(x)
            chunk = self.chunk
        if target is None:
            images = map_in_chunks(decode, x, chunk)
            return images.reshape(*lead, *images.shape[1:])
        target, _ = _flatten_leading(target, 3)
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

