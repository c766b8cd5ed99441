"""Regression tests for issue 17: the default Bayesian transition imagines about as well as a deterministic
one, and its spread across weight samples follows the data.

Small world models trained on real cartpole-swingup physics (state observations, so each trains in seconds)
from random episodes, then asked to imagine 12 steps ahead of 5 context steps on held-out episodes with
their true actions. Two ways the transition failed before the fix, each reproduced as a control:

* PlaNet's free nats on both sides of the latent KL left the prior network (`prior_hidden`, `prior_out`)
  without a data gradient whenever the KL was under 3 nats, so the weight KL walked its posterior to the
  weight prior and imagination under sampled weights turned into noise (the agent stopped learning);
* a tiny constant KL scale (4e-6) kept the posterior at its 0.01 init, a point mass whose spread does not
  grow when the model has seen less data.
"""

import jax
import numpy as np
import pytest
from bayes_planet.agents.reports import windows
from bayes_planet.agents.rollout import random_policy, run_episode

from bayes_planet import envs
from bayes_planet.openloop import open_loop
from bayes_planet.world_model import ModelConfig, WorldModel, make_optimizer, make_train_step

UPDATES, BATCH, LENGTH, CONTEXT, HORIZON, WEIGHT_SAMPLES, SEEDS = 2000, 6, 16, 5, 12, 8, 6
SIZES = dict(observation="state", deter_size=32, stoch_size=8, hidden_size=32, state_embed_size=32,
             reward_hidden=32, reward_layers=2)
# One training seed is not enough: across seeds the deterministic model's error alone varies 3x (0.15 to
# 0.53), and a single seed's ratio ranged from 0.6x to 3.3x. So every condition trains SEEDS models at once
# (vmapped), and the tests compare the median per-seed error ratio and the ratio of mean spreads. Measured
# over two draws of 4 and 6 seeds: the ELBO's weighting (temperature 1) gave an error ratio of 1.3x and 1.5x
# (the original 2e-4 with free nats on both sides: 2.3x and 2.5x; the ELBO weighting with free nats on both
# sides: 5.2x in the mean) and a spread 2.2x larger from one episode than from six (the constant 4e-6: 1.15x
# and 1.04x; the original: 1.3x). Today's default, the cold posterior (temperature 0.1): 0.84x and 2.35x.
ERROR_FACTOR, SPREAD_FACTOR = 1.9, 1.7
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def episodes():
    """Eight random cartpole-swingup episodes with state observations: six to train on, two held out."""
    env = envs.make("dmc:cartpole-swingup", observation="state", seed=0)
    return [run_episode(env, random_policy(env.action_space, i), seed=i).arrays() for i in range(8)]


@pytest.fixture(scope="module")
def held_out(episodes):
    return windows(episodes[6:], 32, CONTEXT + HORIZON, seed=1)


def _imagine(train_episodes, held_out, **overrides) -> tuple[np.ndarray, np.ndarray]:
    """Train SEEDS models on `train_episodes` with ModelConfig `overrides`, each from its own initialization
    and batches (one vmapped train step trains them all); return, per seed ``[SEEDS]``, the held-out
    open-loop reward MSE per step (under the posterior mean for a deterministic model, else averaged over
    weight samples) and the std across weight samples of the imagined HORIZON-step return, averaged over
    windows."""
    model = WorldModel(ModelConfig(**SIZES, **overrides), 1, train_episodes[0]["observation"].shape[1:])
    data_steps = np.float32(sum(len(episode["reward"]) for episode in train_episodes))
    params = jax.vmap(model.init, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(0), SEEDS),
                                                     windows(train_episodes, BATCH, LENGTH))
    optimizer = make_optimizer(3e-3)
    opt_state = jax.vmap(optimizer.init)(params)
    step = jax.jit(jax.vmap(make_train_step(model, optimizer), in_axes=(0, 0, 0, 0, None)))
    for update in range(UPDATES):
        batches = [windows(train_episodes, BATCH, LENGTH, seed=seed * 100_000 + update) for seed in range(SEEDS)]
        batch = jax.tree.map(lambda *leaves: np.stack(leaves), *batches)
        params, opt_state, _ = step(params, opt_state, jax.random.split(jax.random.PRNGKey(update), SEEDS), batch,
                                    data_steps)
    bayesian = model.config.transition != "deterministic"
    errors, spreads = [], []
    for seed in range(SEEDS):
        result = open_loop(model, jax.tree.map(lambda leaf, index=seed: leaf[index], params), jax.random.PRNGKey(1),
                           held_out["observation"], held_out["action"], held_out["reward"], CONTEXT,
                           WEIGHT_SAMPLES if bayesian else 0)
        predicted = np.asarray(result.sample_rewards if bayesian else result.reward[None])[..., CONTEXT:]
        errors.append(np.mean((predicted - np.asarray(result.true_reward)[None, :, CONTEXT:]) ** 2))
        spreads.append(np.mean(np.std(predicted.sum(-1), axis=0)))
    return np.array(errors), np.array(spreads)


@pytest.fixture(scope="module")
def deterministic_error(episodes, held_out):
    return _imagine(episodes[:6], held_out, transition="deterministic")[0]


@pytest.fixture(scope="module")
def default_model(episodes, held_out):
    """(error, spread) of the default Bayesian transition trained on six episodes, then on one."""
    return _imagine(episodes[:6], held_out), _imagine(episodes[:1], held_out)


def error_ratio(errors: np.ndarray, deterministic_errors: np.ndarray) -> float:
    """The median over seeds of a model's open-loop reward error over the deterministic model's."""
    return float(np.median(errors / deterministic_errors))


def test_default_imagines_about_as_well_as_a_deterministic_model(default_model, deterministic_error):
    (errors, _), _ = default_model
    assert error_ratio(errors, deterministic_error) < ERROR_FACTOR, (errors, deterministic_error)


def test_default_spread_grows_where_the_model_has_seen_less_data(default_model):
    (_, spread_six), (_, spread_one) = default_model
    assert spread_one.mean() > SPREAD_FACTOR * spread_six.mean(), (spread_one, spread_six)


def test_the_original_transition_imagines_badly(episodes, held_out, deterministic_error):
    """The transition as issue 17 found it: free nats on both sides and a constant 2e-4 KL scale. (The
    default with free nats on both sides, 5.2x, fails `test_default_imagines_...` the same way.)"""
    errors, _ = _imagine(episodes[:6], held_out, free_nats_side="both", weight_kl_schedule="constant",
                         weight_kl_scale=2e-4)
    assert error_ratio(errors, deterministic_error) > ERROR_FACTOR, (errors, deterministic_error)


def test_a_tiny_constant_kl_scale_gives_a_spread_blind_to_data(episodes, held_out):
    options = dict(weight_kl_schedule="constant", weight_kl_scale=4e-6)
    spread_six, spread_one = (_imagine(data, held_out, **options)[1] for data in (episodes[:6], episodes[:1]))
    assert spread_one.mean() < SPREAD_FACTOR * spread_six.mean(), (spread_one, spread_six)
