"""Planners and uncertainty objectives: CEM finds known optima; objectives steer by the weight posterior."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from bayes_planet import bayes, objectives
from bayes_planet.objectives import make_objective
from bayes_planet.planners import CEM, MPPI, PLANNERS, RandomShooting, world_model_scorer
from bayes_planet.world_model import WorldModel

KEY = jax.random.PRNGKey(0)
TARGET = jnp.array([[0.5, -0.3], [0.2, 0.7], [-0.6, 0.1], [0.0, -0.9], [0.4, 0.4]])


def quadratic_score(key, state, actions):
    """A smooth reward of the actions alone, with its optimum at TARGET."""
    del key, state
    return -jnp.sum((actions - TARGET) ** 2, axis=(1, 2))


@pytest.mark.parametrize("warm_start", [False, True])
def test_cem_finds_the_optimum_of_a_smooth_reward(warm_start):
    cem = CEM(horizon=5, iterations=10, candidates=500, top_k=50, warm_start=warm_start)
    plan_fn = jax.jit(functools.partial(cem, score_fn=quadratic_score))
    action, plan = plan_fn(KEY, state=None, previous_plan=cem.initial_plan(2))
    assert plan.shape == (5, 2) and action.shape == (2,)
    np.testing.assert_allclose(plan, TARGET, atol=0.05)  # tolerance: 0.05 per action dimension
    np.testing.assert_array_equal(action, plan[0])


def test_random_shooting_runs_through_the_same_protocol():
    shooter = RandomShooting(horizon=5, candidates=4000)
    action, plan = jax.jit(functools.partial(shooter, score_fn=quadratic_score))(
        KEY, state=None, previous_plan=shooter.initial_plan(2))
    assert action.shape == (2,) and plan.shape == (5, 2)
    random_plans = jax.random.uniform(KEY, (4000, 5, 2), minval=-1, maxval=1)
    # the best of 4000 uniform draws beats the median draw by far
    assert float(quadratic_score(None, None, plan[None])[0]) > float(jnp.median(quadratic_score(None, None,
                                                                                               random_plans))) + 2


def test_planner_sizes_are_validated():
    with pytest.raises(ValueError, match="planner.horizon must be >= 1, got 0"):
        CEM(horizon=0)
    with pytest.raises(ValueError, match="planner.top_k must be <= planner.candidates"):
        CEM(candidates=10, top_k=20)
    with pytest.raises(ValueError, match="planner.candidates must be >= 1"):
        RandomShooting(candidates=0)


def test_objectives_on_known_returns():
    returns = jnp.array([[1.0, 2.0, 3.0, 6.0], [3.0, 3.0, 3.0, 3.0]])
    np.testing.assert_allclose(objectives.mean(returns), [3.0, 3.0])
    np.testing.assert_allclose(objectives.optimistic(returns, 1.0), [3.0 + np.std([1, 2, 3, 6]), 3.0], rtol=1e-6)
    np.testing.assert_allclose(objectives.risk_averse(returns, 2.0), [3.0 - 2 * np.std([1, 2, 3, 6]), 3.0], rtol=1e-6)
    np.testing.assert_allclose(objectives.cvar(returns, 0.5), [1.5, 3.0])
    np.testing.assert_allclose(objectives.thompson(returns), [1.0, 3.0])
    with pytest.raises(ValueError, match="planner.objective must be one of"):
        make_objective("greedy")
    with pytest.raises(ValueError, match=r"planner.alpha must be in \(0, 1\]"):
        make_objective("cvar", alpha=0.0)


class RiskyActionModel:
    """A constructed world model with one action dimension: pushing right (a > 0) earns a higher mean
    return (1.0 against 0.5) whose value depends strongly on the weight sample; pushing left earns 0.5 under
    every sample. Follows the WorldModel contract: rows form K contiguous groups, group k uses sample k."""

    SPREAD = jnp.array([-1.5, -1.0, -0.5, 0.0, 0.0, 0.5, 1.0, 1.5]) * 2.0  # mean 0 across 8 samples

    def sample_weights(self, params, key, n):
        return bayes.sample_weights(key, n)

    def mean_weights(self, params):
        return bayes.Weights.mean()

    def imagine(self, params, key, state, actions, weights):
        rows, samples = actions.shape[0], weights.key.shape[0]
        sample_index = jnp.arange(rows) // (rows // samples)
        right = jax.nn.sigmoid(10 * actions[:, 0, 0])
        reward = 0.5 + right * (0.5 + self.SPREAD[sample_index])
        return jnp.broadcast_to(reward[:, None], actions.shape[:2]), None


@pytest.mark.parametrize("name,goes_right", [("mean", True), ("optimistic", True), ("risk_averse", False),
                                             ("cvar", False)])
def test_objectives_steer_toward_or_away_from_uncertain_actions(name, goes_right):
    score = world_model_scorer(RiskyActionModel(), None, jax.random.PRNGKey(1),
                               make_objective(name, beta=1.0, alpha=0.25), weight_samples=8)
    cem = CEM(horizon=1, iterations=5, candidates=200, top_k=20)
    action, _ = jax.jit(functools.partial(cem, score_fn=score))(KEY, state=None, previous_plan=cem.initial_plan(1))
    assert (float(action[0]) > 0.3) if goes_right else (float(action[0]) < -0.3), float(action[0])


@pytest.mark.parametrize("kind", ["deterministic", "flipout"])
def test_world_model_scorer_on_a_real_model(kind):
    """With a deterministic model every objective is the plain return (PlaNet's planner); a Bayesian one
    spreads returns across weight samples, so optimistic > mean > risk-averse."""
    model = WorldModel(tiny_config(observation="state", transition=kind, posterior_std_init=0.3), 2, (5,))
    batch = {"observation": np.zeros((1, 2, 5), np.float32), "action": np.zeros((1, 2, 2), np.float32),
             "reward": np.zeros((1, 2), np.float32)}
    params = model.init(KEY, batch)
    actions = jax.random.uniform(KEY, (16, 4, 2), minval=-1, maxval=1)
    state = model.initial_state(1)
    scores = {name: world_model_scorer(model, params, jax.random.PRNGKey(2), make_objective(name, beta=1.0), 6)(
        KEY, state, actions) for name in ("mean", "optimistic", "risk_averse")}
    assert scores["mean"].shape == (16,)
    if kind == "deterministic":
        np.testing.assert_allclose(scores["optimistic"], scores["mean"], atol=1e-5)
        np.testing.assert_allclose(scores["risk_averse"], scores["mean"], atol=1e-5)
    else:
        assert bool(jnp.all(scores["optimistic"] > scores["mean"]))
        assert bool(jnp.all(scores["risk_averse"] < scores["mean"]))
    cem = CEM(horizon=4, iterations=2, candidates=32, top_k=4)
    score_fn = world_model_scorer(model, params, jax.random.PRNGKey(2), make_objective("mean"), 2)
    action, plan = jax.jit(lambda k, s, p: cem(k, score_fn, s, p))(KEY, state, cem.initial_plan(2))
    assert action.shape == (2,) and bool(jnp.all(jnp.abs(action) <= 1))


def test_mppi_finds_the_optimum_of_a_smooth_reward():
    mppi = MPPI(horizon=5, iterations=20, candidates=1000, temperature=0.1, noise_std=0.3)
    action, plan = jax.jit(functools.partial(mppi, score_fn=quadratic_score))(
        KEY, state=None, previous_plan=mppi.initial_plan(2))
    assert plan.shape == (5, 2) and action.shape == (2,)
    np.testing.assert_allclose(plan, TARGET, atol=0.1)
    np.testing.assert_array_equal(action, plan[0])


def test_mppi_improves_its_world_models_score_over_the_initial_plan():
    """A third kind of planner through the same seam: MPPI on a real (randomly initialized) world model
    raises the expected imagined return of its plan (the mean over 256 latent-noise draws) above that of
    the plan it started from."""
    model = WorldModel(tiny_config(observation="state", transition="reparameterization"), 2, (5,))
    batch = {"observation": np.zeros((1, 2, 5), np.float32), "action": np.zeros((1, 2, 2), np.float32),
             "reward": np.zeros((1, 2), np.float32)}
    params = model.init(KEY, batch)
    state = model.initial_state(1)
    score_fn = world_model_scorer(model, params, jax.random.PRNGKey(2), make_objective("mean"), 2)
    expected_return = jax.jit(lambda plan: score_fn(KEY, state, jnp.repeat(plan[None], 256, axis=0)).mean())
    mppi = MPPI(horizon=6, iterations=8, candidates=256)
    plan_fn = jax.jit(lambda k, s, p: mppi(k, score_fn, s, p))
    for seed in range(3):
        start = jax.random.uniform(jax.random.PRNGKey(seed), (6, 2), minval=-1, maxval=1)
        _, plan = plan_fn(jax.random.PRNGKey(10 + seed), state, start)
        shifted = jnp.concatenate([start[1:], jnp.zeros((1, 2))])  # MPPI's starting mean
        assert float(expected_return(plan)) > float(expected_return(shifted)), seed


@pytest.mark.parametrize("name", sorted(PLANNERS))
def test_a_default_config_builds_each_built_in_planner_with_its_own_defaults(name):
    """The common options' defaults live once (`planners.base`): the config and every planner agree."""
    from bayes_planet.agents.agent import make_planner

    from bayes_planet.config import load_config

    assert make_planner(load_config(None, [f"planner.name={name}"])) == PLANNERS[name]()
