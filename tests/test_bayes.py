"""Bayesian layers: KL, the four ways of using randomness, Flipout's variance, epistemic uncertainty."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bayes_planet import MCDropoutDense, VariationalDense, Weights, sample_weights, weight_kl
from bayes_planet.bayes import gaussian_kl_to_zero_mean

KEY = jax.random.PRNGKey(0)
LAYERS = {
    "reparameterization": lambda: VariationalDense(8, name="layer", posterior_std_init=0.3),
    "flipout": lambda: VariationalDense(8, name="layer", estimator="flipout", posterior_std_init=0.3),
    "mc_dropout": lambda: MCDropoutDense(8, name="layer", rate=0.3),
}


def _layer_fn(kind):
    return hk.transform(lambda x, weights=None: LAYERS[kind]()(x, weights))


def _init(kind, x):
    fn = _layer_fn(kind)
    return fn, fn.init(KEY, x)


def test_drop_in_signature_of_hk_linear():
    x = jnp.ones((3, 5))
    linear = hk.transform(lambda x: hk.Linear(4, with_bias=False, w_init=jnp.ones, name="l")(x))
    varia = hk.transform(lambda x, w=None: VariationalDense(4, with_bias=False, w_init=jnp.ones, name="l")(x, w))
    p_lin, p_var = linear.init(KEY, x), varia.init(KEY, x)
    assert "b" not in p_var["l"]
    mean_out = varia.apply(p_var, None, x, Weights.mean())
    np.testing.assert_allclose(mean_out, linear.apply(p_lin, None, x), rtol=1e-6)
    assert not np.allclose(varia.apply(p_var, KEY, x), mean_out)  # the default call samples
    std = jax.nn.softplus(p_var["l"]["w_rho"])
    assert 1e-3 <= float(std.mean()) <= 5e-2


def test_kl_matches_closed_form_and_monte_carlo():
    x = jnp.ones((2, 6))
    fn, params = _init("reparameterization", x)
    mean, rho = params["layer"]["w_mean"], params["layer"]["w_rho"]
    std = jax.nn.softplus(rho)
    prior = 0.7
    m, s = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    closed = np.sum(np.log(prior / s) + (s**2 + m**2) / (2 * prior**2) - 0.5)
    assert float(weight_kl(params, prior_std=prior)) == pytest.approx(closed, rel=1e-4)
    # Monte Carlo: E_q[log q(w) - log p(w)] over posterior samples
    eps = jax.random.normal(KEY, (20000, *m.shape))
    w = np.asarray(mean + std * eps, np.float64)
    log_q = -0.5 * ((w - m) / s) ** 2 - np.log(s)
    log_p = -0.5 * (w / prior) ** 2 - np.log(prior)
    per_sample = (log_q - log_p).reshape(len(w), -1).sum(1)
    standard_error = per_sample.std() / np.sqrt(len(w))
    assert abs(per_sample.mean() - closed) < 3 * standard_error


def test_fan_in_prior_divides_each_kernels_prior_std_by_sqrt_fan_in():
    x = jnp.ones((2, 9))

    def two_layers(x):
        hidden = VariationalDense(4, name="wide_in", posterior_std_init=0.05)(x)  # fan_in 9
        return MCDropoutDense(3, name="narrow_in", rate=0.2)(hidden)  # fan_in 4

    params = hk.transform(two_layers).init(KEY, x)
    prior = 0.6
    mean, std = params["wide_in"]["w_mean"], jax.nn.softplus(params["wide_in"]["w_rho"])
    expected = float(gaussian_kl_to_zero_mean(mean, std, prior / 3.0))
    expected += 0.8 / (2 * (prior / 2.0) ** 2) * float(jnp.sum(params["narrow_in"]["w_dropout"] ** 2))
    assert float(weight_kl(params, prior, prior_scaling="fan_in")) == pytest.approx(expected, rel=1e-5)
    assert float(weight_kl(params, prior, prior_scaling="fan_in")) > float(weight_kl(params, prior))
    with pytest.raises(ValueError, match="prior_scaling must be one of"):
        weight_kl(params, prior, prior_scaling="fan_out")


def test_mc_dropout_kl_uses_each_layers_own_rate():
    x = jnp.ones((2, 5))

    def two_layers(x):
        return MCDropoutDense(3, name="low", rate=0.3)(MCDropoutDense(4, name="high", rate=0.8)(x))

    params = hk.transform(two_layers).init(KEY, x)
    prior = 0.5
    closed = sum((1 - rate) / (2 * prior**2) * float(jnp.sum(params[name]["w_dropout"] ** 2))
                 for name, rate in (("low", 0.3), ("high", 0.8)))
    assert float(weight_kl(params, prior_std=prior)) == pytest.approx(closed, rel=1e-5)
    gradient = jax.grad(lambda p: weight_kl(p, prior))(params)
    assert float(gradient["low"]["dropout_rate"]) == 0.0, "the recorded rate is never trained"


def test_kl_is_zero_without_bayesian_layers_and_positive_with():
    x = jnp.ones((2, 3))
    plain = hk.transform(lambda x: hk.Linear(4)(x)).init(KEY, x)
    assert float(weight_kl(plain)) == 0.0
    for kind in LAYERS:
        assert float(weight_kl(_init(kind, x)[1])) > 0.0
    assert float(gaussian_kl_to_zero_mean(jnp.zeros(3), jnp.ones(3), 1.0)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_posterior_mean_is_deterministic(kind):
    x = jax.random.normal(KEY, (4, 6))
    fn, params = _init(kind, x)
    a = fn.apply(params, jax.random.PRNGKey(1), x, Weights.mean())
    b = fn.apply(params, jax.random.PRNGKey(2), x, Weights.mean())
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_per_row_samples_differ_and_average_to_the_mean(kind):
    row = jax.random.normal(KEY, (1, 6))
    x = jnp.repeat(row, 4000, axis=0)
    fn, params = _init(kind, x)
    out = fn.apply(params, jax.random.PRNGKey(3), x, Weights.fresh(per_row=True))
    assert float(jnp.std(out[:, 0])) > 1e-2, "identical rows get different samples"
    mean_out = fn.apply(params, None, row, Weights.mean())[0]
    spread = jnp.std(out, axis=0) / np.sqrt(len(x))
    assert bool(jnp.all(jnp.abs(out.mean(0) - mean_out) < 4 * spread + 1e-6))


@pytest.mark.parametrize("kind", list(LAYERS))
def test_shared_sample_is_one_sample_for_the_batch(kind):
    x = jnp.repeat(jax.random.normal(KEY, (1, 6)), 5, axis=0)
    fn, params = _init(kind, x)
    out = fn.apply(params, jax.random.PRNGKey(4), x, Weights.fresh())
    if kind == "flipout":  # Flipout's fresh draws are per row by construction
        assert float(jnp.std(out[:, 0])) > 0
    else:
        np.testing.assert_allclose(out, jnp.broadcast_to(out[0], out.shape), rtol=1e-6)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_held_sample_is_identical_across_calls(kind):
    x = jax.random.normal(KEY, (6, 6))
    fn, params = _init(kind, x)
    held = sample_weights(jax.random.PRNGKey(5))
    first = fn.apply(params, jax.random.PRNGKey(6), x, held)
    again = jax.jit(fn.apply)(params, jax.random.PRNGKey(7), x, held)
    np.testing.assert_allclose(first, again, rtol=1e-6)
    other = fn.apply(params, None, x, sample_weights(jax.random.PRNGKey(8)))
    assert not np.allclose(first, other)
    # n held samples: rows split into n groups; each group matches a single held sample of its own
    groups = sample_weights(jax.random.PRNGKey(9), 3)
    x_rows = jnp.concatenate([x[:2]] * 3)
    grouped = fn.apply(params, None, x_rows, groups)
    for g in range(3):
        alone = fn.apply(params, None, x[:2], Weights.held(groups.key[g]))
        np.testing.assert_allclose(grouped[2 * g: 2 * g + 2], alone, rtol=1e-5, atol=1e-6)
    assert not np.allclose(grouped[:2], grouped[2:4])


def test_held_samples_need_divisible_rows():
    x = jnp.ones((5, 6))
    fn, params = _init("reparameterization", x)
    with pytest.raises(ValueError, match="multiple of 3"):
        fn.apply(params, None, x, sample_weights(KEY, 3))


def test_fresh_weights_without_rng_say_how_to_fix():
    x = jnp.ones((2, 6))
    fn, params = _init("reparameterization", x)
    with pytest.raises(ValueError, match="needs an rng key"):
        fn.apply(params, None, x)


def test_bad_layer_options():
    with pytest.raises(ValueError, match="estimator must be one of"):
        hk.transform(lambda x: VariationalDense(2, estimator="local")(x)).init(KEY, jnp.ones((1, 2)))
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
        hk.transform(lambda x: MCDropoutDense(2, rate=1.0)(x)).init(KEY, jnp.ones((1, 2)))


def test_flipout_has_lower_gradient_variance_than_shared_reparameterization():
    """Wen et al. (2018): decorrelating the rows of a mini-batch lowers the estimator's variance."""
    x = jax.random.normal(KEY, (128, 16))
    y = x @ jax.random.normal(jax.random.PRNGKey(1), (16, 1))

    def grad_variance(estimator):
        net = hk.transform(
            lambda x: VariationalDense(1, estimator=estimator, posterior_std_init=0.5, name="l")(x)
        )
        params = net.init(KEY, x)
        loss = lambda p, k: jnp.mean(jnp.square(net.apply(p, k, x) - y))
        grads = jax.vmap(jax.grad(loss), (None, 0))(params, jax.random.split(KEY, 500))
        return float(jnp.var(grads["l"]["w_mean"], axis=0).sum())

    flipout, shared = grad_variance("flipout"), grad_variance("reparameterization")
    assert flipout < 0.5 * shared, (flipout, shared)


def test_bayes_by_backprop_regression_shows_epistemic_uncertainty():
    rng = np.random.default_rng(0)
    x_train = rng.uniform(-1.0, 1.0, (64, 1)).astype(np.float32)
    y_train = np.sin(3 * x_train) + 0.05 * rng.normal(size=x_train.shape).astype(np.float32)

    def net(x, weights=None):
        h = jax.nn.relu(VariationalDense(64, name="h1")(x, weights))
        h = jax.nn.relu(VariationalDense(64, name="h2")(h, weights))
        return VariationalDense(1, name="out")(h, weights)

    model = hk.transform(net)
    params = model.init(KEY, x_train)
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(params)

    def loss_fn(p, key):
        pred = model.apply(p, key, x_train)
        nll = 0.5 * jnp.sum(jnp.square(pred - y_train)) / 0.05**2
        return (nll + weight_kl(p, prior_std=1.0)) / len(x_train)

    @jax.jit
    def step(p, s, key):
        g = jax.grad(loss_fn)(p, key)
        updates, s = optimizer.update(g, s)
        return optax.apply_updates(p, updates), s

    for key in jax.random.split(KEY, 3000):
        params, opt_state = step(params, opt_state, key)

    def predictive_std(x):
        outs = jax.vmap(lambda k: model.apply(params, None, x, Weights.held(k)))(jax.random.split(KEY, 200))
        return float(jnp.std(outs, axis=0).mean())

    inside = predictive_std(jnp.linspace(-0.9, 0.9, 50)[:, None])
    outside = predictive_std(jnp.concatenate([jnp.linspace(-4, -3, 25), jnp.linspace(3, 4, 25)])[:, None])
    mean_fit = model.apply(params, None, x_train, Weights.mean())
    assert float(jnp.sqrt(jnp.mean(jnp.square(mean_fit - y_train)))) < 0.2, "the fit is good inside"
    assert outside >= 3 * inside, (inside, outside)
