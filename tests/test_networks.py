"""The fast (matmul) convolution engine computes exactly what haiku's conv layers compute."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayes_planet.distributions import unit_gaussian_nll
from bayes_planet.matmul_conv import (
    conv2d_stride2,
    conv2d_transpose_stride2,
    depth_to_space,
    map_in_chunks,
    matmul_rows,
    space_to_depth,
    transposed_conv_form,
)
from bayes_planet.networks import ConvDecoder, ConvEncoder

RNG = np.random.default_rng(0)


def _normal(*shape):
    return jnp.asarray(RNG.normal(size=shape), jnp.float32)


@pytest.mark.parametrize("size,kernel", [(64, 4), (31, 4), (6, 4), (9, 5), (7, 3)])
def test_stride2_conv_matches_lax(size, kernel):
    x, w = _normal(2, size, size, 3), _normal(kernel, kernel, 3, 5)
    reference = jax.lax.conv_general_dilated(x, w, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(conv2d_stride2(x, w, None), reference, atol=1e-4)


@pytest.mark.parametrize("form", ["gather", "scatter"])
@pytest.mark.parametrize("size,kernel", [(1, 5), (5, 5), (13, 6), (4, 3), (3, 4)])
def test_stride2_transposed_conv_matches_haiku(size, kernel, form):
    x = _normal(2, size, size, 4)
    layer = hk.transform(lambda x: hk.Conv2DTranspose(5, kernel, stride=2, padding="VALID", name="t")(x))
    params = layer.init(jax.random.PRNGKey(0), x)
    params = jax.tree.map(lambda p: p + 0.1 * _normal(*p.shape), params)  # nonzero bias too
    expected = layer.apply(params, None, x)
    assert expected.shape == (2, 2 * (size - 1) + kernel, 2 * (size - 1) + kernel, 5)
    w, b = params["t"]["w"], params["t"]["b"]
    np.testing.assert_allclose(conv2d_transpose_stride2(x, w, b, form), expected, atol=1e-5)
    # gradients with respect to input and kernel (the scatter form has its own VJP)
    target = _normal(*expected.shape)
    grads = lambda fn: jax.grad(lambda x, w: jnp.sum((fn(x, w) - target) ** 2), argnums=(0, 1))(x, w)
    reference = grads(lambda x, w: layer.apply({"t": {"w": w, "b": b}}, None, x))
    for ours, theirs in zip(grads(lambda x, w: conv2d_transpose_stride2(x, w, b, form)), reference, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_transposed_conv_form_choice_and_bad_form():
    # PlaNet's decoder: 5x5x128 -> 13x13x64 and 30x30x32 -> 64x64x3 scatter, 13x13x64 -> 30x30x32 gathers
    assert [transposed_conv_form(h, h, k, c, o) for h, k, c, o in [(5, 5, 128, 64), (13, 6, 64, 32), (30, 6, 32, 3)]] \
        == ["scatter", "gather", "scatter"]
    with pytest.raises(ValueError, match="form must be one of"):
        conv2d_transpose_stride2(_normal(1, 3, 3, 2), _normal(4, 4, 2, 2), None, "fft")


def test_space_to_depth_round_trip_and_chunked_map():
    x = _normal(7, 4, 6, 3)
    assert space_to_depth(x).shape == (7, 2, 3, 12)
    np.testing.assert_array_equal(depth_to_space(space_to_depth(x)), x)
    double = lambda v: 2 * v
    np.testing.assert_allclose(map_in_chunks(double, x, 3), 2 * x)  # 7 rows in chunks of <= 3
    grad = jax.grad(lambda v: jnp.sum(map_in_chunks(jnp.sin, v, 2)))(x)
    np.testing.assert_allclose(grad, jnp.cos(x), atol=1e-6)


def _assert_same_gradients(grads, reference):
    """Every leaf equal to `reference`'s to 1e-5 of that leaf's largest entry (which must be nonzero)."""
    for leaf, expected in zip(jax.tree.leaves(grads), jax.tree.leaves(reference), strict=True):
        scale = float(jnp.max(jnp.abs(expected)))
        assert scale > 0
        np.testing.assert_allclose(leaf / scale, expected / scale, atol=1e-5)


def test_matmul_rows_has_the_gradients_of_a_matmul():
    x, kernel, cotangent = _normal(2, 5, 7), _normal(7, 3), _normal(2, 5, 3)
    np.testing.assert_allclose(matmul_rows(x, kernel), x @ kernel, rtol=1e-6)
    ours = jax.vjp(matmul_rows, x, kernel)[1](cotangent)
    reference = jax.vjp(jnp.matmul, x, kernel)[1](cotangent)
    _assert_same_gradients(ours, reference)


@pytest.mark.parametrize("module", ["encoder", "decoder"])
def test_fast_engine_equals_plain_on_outputs_and_gradients(module):
    """Same parameter tree, same outputs, same gradients (the plain haiku layers are the reference)."""
    if module == "encoder":
        inputs = jnp.asarray(RNG.uniform(-0.5, 0.5, (2, 3, 64, 64, 3)), jnp.float32)
        build = lambda engine: ConvEncoder(4, engine=engine, chunk=4)
    else:
        inputs = _normal(2, 3, 10)
        build = lambda engine: ConvDecoder(4, engine=engine, chunk=4)
    plain, fast = (hk.without_apply_rng(hk.transform(lambda x, e=e: build(e)(x))) for e in ("plain", "fast"))
    params = plain.init(jax.random.PRNGKey(1), inputs)
    assert jax.tree.map(jnp.shape, fast.init(jax.random.PRNGKey(1), inputs)) == jax.tree.map(jnp.shape, params)
    target = _normal(*plain.apply(params, inputs).shape)
    loss = lambda fn: lambda p, x: jnp.sum((fn.apply(p, x) - target) ** 2)
    np.testing.assert_allclose(fast.apply(params, inputs), plain.apply(params, inputs), rtol=1e-4, atol=1e-5)
    grads_plain = jax.jit(jax.grad(loss(plain), argnums=(0, 1)))(params, inputs)
    grads_fast = jax.jit(jax.grad(loss(fast), argnums=(0, 1)))(params, inputs)
    _assert_same_gradients(grads_fast, grads_plain)


@pytest.mark.parametrize("engine", ["plain", "fast"])
def test_decoder_nll_in_chunks_equals_the_nll_of_the_decoded_images(engine):
    """`ConvDecoder.nll` (chunk by chunk in the fast engine) is the unit-Gaussian NLL of `ConvDecoder`'s
    images, in value and in gradient, over ``[B, T]`` frames that do not divide into the chunks."""
    features, target = _normal(2, 5, 10), jnp.asarray(RNG.uniform(-0.5, 0.5, (2, 5, 64, 64, 3)), jnp.float32)
    decoder = lambda: ConvDecoder(4, engine=engine, chunk=4)
    images = hk.without_apply_rng(hk.transform(lambda x: decoder()(x)))
    nll = hk.without_apply_rng(hk.transform(lambda x, y: decoder().nll(x, y)))
    params = images.init(jax.random.PRNGKey(1), features)
    separate = lambda p, x: unit_gaussian_nll(target, images.apply(p, x), 3)
    fused = lambda p, x: nll.apply(p, x, target)
    assert fused(params, features).shape == (2, 5)
    np.testing.assert_allclose(fused(params, features), separate(params, features), rtol=1e-5)
    weighted = lambda fn: lambda p, x: jnp.sum(fn(p, x) * jnp.arange(10.0).reshape(2, 5))  # per-frame weights
    grads_separate = jax.jit(jax.grad(weighted(separate), argnums=(0, 1)))(params, features)
    grads_fused = jax.jit(jax.grad(weighted(fused), argnums=(0, 1)))(params, features)
    _assert_same_gradients(grads_fused, grads_separate)


def test_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="conv_engine must be one of"):
        hk.transform(lambda x: ConvEncoder(4, engine="cuda")(x)).init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
