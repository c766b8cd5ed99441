import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayes_planet.distributions import DiagGaussian, unit_gaussian_nll

KEY = jax.random.PRNGKey(0)


def test_log_prob_and_entropy_match_closed_forms():
    dist = DiagGaussian(jnp.array([0.5, -1.0]), jnp.array([2.0, 0.3]))
    x = jnp.array([1.0, 0.0])
    expected = sum(-0.5 * ((xi - m) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)
                   for xi, m, s in [(1.0, 0.5, 2.0), (0.0, -1.0, 0.3)])
    assert float(dist.log_prob(x)) == pytest.approx(expected, rel=1e-5)
    expected_entropy = sum(0.5 * np.log(2 * np.pi * np.e * s**2) for s in (2.0, 0.3))
    assert float(dist.entropy()) == pytest.approx(expected_entropy, rel=1e-5)


def test_kl_matches_monte_carlo_and_is_zero_for_equal():
    p = DiagGaussian(jnp.array([0.3, -0.2, 1.0]), jnp.array([0.5, 1.5, 0.8]))
    q = DiagGaussian(jnp.array([0.0, 0.4, 0.5]), jnp.array([1.0, 1.0, 0.6]))
    samples = jax.vmap(p.sample)(jax.random.split(KEY, 200000))
    mc = jnp.mean(p.log_prob(samples) - q.log_prob(samples))
    assert float(p.kl(q)) == pytest.approx(float(mc), abs=0.02)
    assert float(p.kl(p)) == pytest.approx(0.0, abs=1e-6)


def test_sample_moments():
    dist = DiagGaussian(jnp.full((4,), 2.0), jnp.full((4,), 0.5))
    samples = jax.vmap(dist.sample)(jax.random.split(KEY, 50000))
    np.testing.assert_allclose(samples.mean(0), 2.0, atol=0.02)
    np.testing.assert_allclose(samples.std(0), 0.5, atol=0.02)


def test_unit_gaussian_nll_is_half_squared_error():
    value, mean = jnp.ones((2, 3, 4)), jnp.zeros((2, 3, 4))
    np.testing.assert_allclose(unit_gaussian_nll(value, mean, 2), jnp.full((2,), 6.0))
