"""The reward likelihood: PlaNet's fixed unit variance, a learned scalar std, or a std predicted per state."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bayes_planet.config import load_config
from bayes_planet.distributions import gaussian_nll, unit_gaussian_nll
from bayes_planet.errors import UsageError
from bayes_planet.networks import RewardHead
from bayes_planet.world_model import ModelConfig, WorldModel


def fit_reward_head(noise, features, rewards, steps=1500, std=1.0):
    """Adam on the Gaussian NLL of `rewards` [N] given `features` [N, F]; returns the head's apply and params."""
    head = hk.without_apply_rng(hk.transform(lambda x: RewardHead(32, 2, noise, std, 0.01)(x)))
    params = head.init(jax.random.PRNGKey(0), features[:1])
    optimizer = optax.adam(3e-3)
    state = optimizer.init(params)

    @jax.jit
    def step(params, state):
        loss = lambda p: jnp.mean(gaussian_nll(rewards, *head.apply(p, features)))
        grads = jax.grad(loss)(params)
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    return head.apply, params


def data(noise_std, count=20000, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(count, 4)).astype(np.float32)
    mean = np.sin(features[:, 0]) + 0.5 * features[:, 1]
    return features, (mean + rng.normal(size=count) * noise_std(features)).astype(np.float32)


@pytest.mark.parametrize("true_std", [0.05, 0.3])
def test_a_learned_std_recovers_known_noise_within_ten_percent(true_std):
    features, rewards = data(lambda f: true_std)
    apply, params = fit_reward_head("learned", features, rewards)
    _, std = apply(params, features)
    assert std.shape == rewards.shape and np.ptp(np.asarray(std)) == 0  # one scalar
    assert abs(float(std[0]) / true_std - 1) < 0.1, (true_std, float(std[0]))


def test_a_predicted_std_follows_noise_that_depends_on_the_state():
    features, rewards = data(lambda f: np.where(f[:, 2] > 0, 0.4, 0.1))
    apply, params = fit_reward_head("predicted", features, rewards, steps=2500)
    _, std = apply(params, features)
    high, low = float(np.median(std[features[:, 2] > 0.3])), float(np.median(std[features[:, 2] < -0.3]))
    assert abs(high / 0.4 - 1) < 0.15 and abs(low / 0.1 - 1) < 0.15, (high, low)


def test_the_fixed_std_keeps_planets_loss_and_parameters():
    value, mean = jnp.array([0.3, -1.0, 2.0]), jnp.array([0.0, 0.5, 2.5])
    np.testing.assert_allclose(gaussian_nll(value, mean, 1.0), 0.5 * (value - mean) ** 2)
    np.testing.assert_allclose(gaussian_nll(value, mean, 1.0), unit_gaussian_nll(value, mean, 0))
    shapes = {}
    for noise in ("fixed", "learned", "predicted"):
        config = ModelConfig(observation="state", deter_size=8, stoch_size=4, hidden_size=8, state_embed_size=8,
                             reward_hidden=8, reward_layers=1, reward_noise=noise)
        model = WorldModel(config, 1, (5,))
        batch = {"observation": np.ones((2, 3, 5), np.float32), "action": np.zeros((2, 3, 1), np.float32),
                 "reward": np.full((2, 3), 0.7, np.float32)}
        params = model.init(jax.random.PRNGKey(0), batch)
        shapes[noise] = {f"{module}/{name}": value.shape for module, values in params.items()
                         for name, value in values.items() if module.startswith("reward")}
        _, terms = model.loss(params, jax.random.PRNGKey(1), batch, data_steps=100.0)
        states = model.observe(params, jax.random.PRNGKey(2), model.initial_state(2), batch["observation"],
                               batch["action"])
        predicted, std = model.reward(params, states), model.reward_std(params, states)
        assert std.shape == predicted.shape == (2, 3) and np.all(np.asarray(std) > 0.01)
        assert np.isfinite(float(terms["reward_loss"]))
        if noise == "fixed":
            np.testing.assert_allclose(std, 1.0)
    # PlaNet's head, as checkpoints before the option hold it; the learned std adds one scalar
    assert shapes["fixed"] == {"reward/dense0/w": (12, 8), "reward/dense0/b": (8,),
                               "reward/dense1/w": (8, 1), "reward/dense1/b": (1,)}
    assert shapes["learned"] == {**shapes["fixed"], "reward/std_raw": ()}
    assert shapes["predicted"]["reward/dense1/w"] == (8, 2)


@pytest.mark.parametrize("override,message", [
    ("model.reward_noise=gaussian", r"'model.reward_noise' must be one of \('fixed', 'learned', 'predicted'\)"),
    ("model.reward_std=0.001", r"'model.reward_std' \(0.001\) must be above 'model.reward_min_std' \(0.01\)"),
])
def test_bad_reward_noise_options_name_the_key(override, message):
    with pytest.raises(UsageError, match=message):
        load_config("quickstart", [override])
