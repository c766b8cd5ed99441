"""The Bayesian RSSM world model: API shapes, weight samples along trajectories, gradients, learning."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from bayes_planet.bayes import DROPOUT_RATE
from bayes_planet.distributions import DiagGaussian
from bayes_planet.world_model import (
    WorldModel,
    dither,
    free_nats_kl,
    make_optimizer,
    make_train_step,
    pixels_to_uint8,
    preprocess_pixels,
)

KEY = jax.random.PRNGKey(0)
B, T, A = 3, 5, 2
DATA_STEPS = np.float32(1000)  # sequence steps in the (notional) training data, for the ELBO weighting
KINDS = ("deterministic", "reparameterization", "flipout", "mc_dropout")


def _batch(b=B, t=T, pixels=True):
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 256, (b, t, 64, 64, 3), dtype=np.uint8) if pixels else rng.normal(size=(b, t, 5))
    return {"observation": obs, "action": rng.uniform(-1, 1, (b, t, A)).astype(np.float32),
            "reward": rng.normal(size=(b, t)).astype(np.float32)}


@pytest.fixture(scope="module")
def model_and_params():
    model = WorldModel(tiny_config(), A)
    return model, model.init(KEY, _batch())


def test_api_shapes_and_dtypes(model_and_params):
    model, params = model_and_params
    batch = _batch()
    loss, metrics = jax.jit(model.loss)(params, KEY, batch, DATA_STEPS)
    assert loss.shape == () and loss.dtype == jnp.float32 and np.isfinite(loss)
    for name in ("image_loss", "reward_loss", "kl", "kl_loss", "prior_entropy", "posterior_entropy",
                 "weight_kl", "weight_std", "loss"):
        assert metrics[name].shape == () and np.isfinite(metrics[name]), name
    state = model.initial_state(B)
    assert state.deter.shape == (B, 32) and state.stoch.shape == (B, 8)
    one = model.observe(params, KEY, state, batch["observation"][:, 0], batch["action"][:, 0])
    assert one.deter.shape == (B, 32) and one.stoch.dtype == jnp.float32
    seq = model.observe(params, KEY, state, batch["observation"], batch["action"])
    assert seq.deter.shape == (B, T, 32) and seq.mean.shape == (B, T, 8)
    assert model.features(seq).shape == (B, T, 40)
    assert model.decode(params, seq).shape == (B, T, 64, 64, 3)
    assert model.reward(params, seq).shape == (B, T)
    actions = jnp.zeros((6, 4, A))
    rewards, latents = model.imagine(params, KEY, one, actions[:B])
    assert rewards.shape == (B, 4) and latents.deter.shape == (B, 4, 32)
    start = jax.tree.map(lambda x: x[:1], one)  # one start state, broadcast to every row
    rewards, latents = model.imagine(params, KEY, start, actions, model.sample_weights(params, KEY, 3))
    assert rewards.shape == (6, 4) and latents.stoch.shape == (6, 4, 8)
    assert pixels_to_uint8(model.decode(params, latents)).dtype == jnp.uint8


def test_state_observations():
    model = WorldModel(tiny_config(observation="state"), A, obs_shape=(5,))
    batch = _batch(pixels=False)
    params = model.init(KEY, batch)
    assert np.isfinite(jax.jit(model.loss)(params, KEY, batch, DATA_STEPS)[0])
    seq = model.observe(params, KEY, model.initial_state(B), batch["observation"], batch["action"])
    assert model.decode(params, seq).shape == (B, T, 5)


def test_imagine_is_reproducible_for_the_same_weight_sample_and_key(model_and_params):
    model, params = model_and_params
    start = model.initial_state(1)
    actions = jnp.tile(jnp.linspace(-1, 1, 6 * A).reshape(1, 6, A), (4, 1, 1))
    weights = model.sample_weights(params, jax.random.PRNGKey(1), 4)
    imagine = jax.jit(model.imagine)
    first, states = imagine(params, KEY, start, actions, weights)
    again, _ = imagine(params, KEY, start, actions, weights)
    np.testing.assert_array_equal(first, again)
    other, _ = imagine(params, KEY, start, actions, model.sample_weights(params, jax.random.PRNGKey(2), 4))
    assert not np.allclose(first, other)


@pytest.mark.parametrize("kind", KINDS)
def test_weight_samples_alone_change_trajectories(kind):
    """Rows share the action sequence and the latent noise; only their weight sample differs."""
    model = WorldModel(tiny_config(transition=kind, posterior_std_init=0.2, observation="state"), A, (5,))
    params = model.init(KEY, _batch(pixels=False))
    start, actions = model.initial_state(1), jnp.full((1, 5, A), 0.5)
    weights = model.sample_weights(params, jax.random.PRNGKey(3), 4)
    rows = [model.imagine(params, KEY, start, actions, jax.tree.map(lambda k, i=i: k[i], weights))[1].deter
            for i in range(4)]
    spread = float(jnp.max(jnp.std(jnp.concatenate(rows), axis=0)))
    if kind == "deterministic":
        assert spread == 0.0
    else:
        assert spread > 1e-3, spread


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_parameter_and_weight_kl(kind):
    # free_nats=0: under free nats the prior gets no gradient while KL < free_nats (by design)
    model = WorldModel(tiny_config(transition=kind, free_nats=0.0, observation="state"), A, (5,))
    params = model.init(KEY, _batch(pixels=False))
    _assert_gradients_everywhere(model, params, _batch(pixels=False))
    weight_kl = float(jax.jit(model.loss)(params, KEY, _batch(pixels=False), DATA_STEPS)[1]["weight_kl"])
    assert weight_kl == 0.0 if kind == "deterministic" else weight_kl > 0.0


def test_free_nats_side_decides_whether_the_prior_learns_below_free_nats():
    """Every step below free nats: with free_nats_side="posterior" the transition's prior layers still get a
    gradient (from KL(sg(posterior) || prior)); with PlaNet's "both" they get none at all."""
    batch = _batch(pixels=False)
    prior_layers = ("rssm/~/prior_hidden", "rssm/~/prior_out")
    for side, reaches_prior in (("posterior", True), ("both", False)):
        model = WorldModel(tiny_config(transition="deterministic", free_nats=1e6, free_nats_side=side,
                                       observation="state"), A, (5,))
        params = model.init(KEY, batch)
        grads = jax.jit(jax.grad(lambda p, m=model: m.loss(p, KEY, batch)[0]))(params)
        for layer in prior_layers:
            assert (float(jnp.abs(grads[layer]["w"]).max()) > 0) == reaches_prior, (side, layer)
        # the posterior is never pulled toward the prior below free nats, on either side
        assert float(jnp.abs(grads["rssm/~/posterior_out"]["w"]).max()) > 0  # (image and reward terms only)
    with pytest.raises(ValueError, match="model.free_nats_side must be one of"):
        WorldModel(tiny_config(free_nats_side="prior"), A)


@pytest.mark.parametrize("below", [True, False])
def test_free_nats_kl_value_and_gradients(below):
    """PlaNet's value, max(KL, free nats) averaged over [B, T], on either side; its gradients: "both" is
    PlaNet's; "posterior" differs only below free nats, where the prior gets the unclipped KL's gradient."""
    rng = np.random.default_rng(0)
    gaussian = lambda: DiagGaussian(jnp.asarray(rng.normal(size=(4, 3, 5)), jnp.float32),
                                    jnp.asarray(rng.uniform(0.5, 1.5, (4, 3, 5)), jnp.float32))
    posterior, prior = gaussian(), gaussian()
    kl = posterior.kl(prior)
    free = float(kl.max()) + 1.0 if below else float(kl.min()) - 1.0
    grad = lambda fn: jax.grad(fn, argnums=(0, 1))(posterior, prior)
    zero = jax.tree.map(jnp.zeros_like, (posterior, prior))
    unclipped_posterior, unclipped_prior = grad(lambda q, p: jnp.mean(q.kl(p)))
    for side in ("both", "posterior"):
        value = free_nats_kl(posterior, prior, free, side)
        np.testing.assert_allclose(value, jnp.mean(jnp.maximum(kl, free)), rtol=1e-6)
    planet = grad(lambda q, p: free_nats_kl(q, p, free, "both"))
    ours = grad(lambda q, p: free_nats_kl(q, p, free, "posterior"))
    expected_planet = zero if below else (unclipped_posterior, unclipped_prior)
    expected_ours = (zero[0], unclipped_prior) if below else (unclipped_posterior, unclipped_prior)
    for got, expected in ((planet, expected_planet), (ours, expected_ours)):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8), got, expected)
    assert float(jnp.abs(ours[1].mean).max()) > 0


def test_gradients_reach_every_pixel_model_parameter():
    model = WorldModel(tiny_config(free_nats=0.0), A)
    _assert_gradients_everywhere(model, model.init(KEY, _batch()), _batch())


def _assert_gradients_everywhere(model, params, batch):
    grads = jax.jit(jax.grad(lambda p: model.loss(p, KEY, batch, DATA_STEPS)[0]))(params)
    for module, leaves in grads.items():
        for name, grad in leaves.items():
            if name == DROPOUT_RATE:  # a record of the layer's rate, never trained
                assert float(jnp.abs(grad).max()) == 0, f"{module}/{name} is trained"
                continue
            assert float(jnp.abs(grad).max()) > 0, f"no gradient reaches {module}/{name}"


def test_per_sequence_training_weights():
    model = WorldModel(tiny_config(train_weights="per_sequence"), A)
    params = model.init(KEY, _batch())
    assert np.isfinite(jax.jit(model.loss)(params, KEY, _batch(), DATA_STEPS)[0])
    with pytest.raises(ValueError, match="train_weights must be one of"):
        WorldModel(tiny_config(train_weights="sometimes"), A)


def test_elbo_schedule_weighs_the_weight_kl_by_the_temperature_over_the_data_steps(model_and_params):
    elbo_model, params = model_and_params
    constant_model = WorldModel(tiny_config(weight_kl_schedule="constant"), A)
    constant_loss, terms = constant_model.loss(params, KEY, _batch())
    data_part = float(constant_loss) - constant_model.config.weight_kl_scale * float(terms["weight_kl"])
    temperature = elbo_model.config.weight_kl_temperature  # the default 0.1: a cold posterior
    assert temperature == pytest.approx(0.1)
    for data_steps in (250.0, 5000.0):
        loss, elbo_terms = elbo_model.loss(params, KEY, _batch(), data_steps)
        assert float(elbo_terms["weight_kl_scale"]) == pytest.approx(temperature / data_steps)
        assert float(loss) == pytest.approx(data_part + temperature * float(terms["weight_kl"]) / data_steps,
                                            rel=1e-5)
    true_elbo_model = WorldModel(tiny_config(weight_kl_temperature=1.0), A)  # the ELBO itself: 1 / data_steps
    _, true_elbo_terms = true_elbo_model.loss(params, KEY, _batch(), 250.0)
    assert float(true_elbo_terms["weight_kl_scale"]) == pytest.approx(1.0 / 250.0)
    # a train step takes the count as a traced value: a growing replay does not recompile it
    step = make_train_step(elbo_model, make_optimizer())
    opt_state = make_optimizer().init(params)
    for data_steps in (250.0, 5000.0):
        *_, metrics = step(params, opt_state, KEY, _batch(), np.float32(data_steps))
        assert float(metrics["weight_kl_scale"]) == pytest.approx(temperature / data_steps)
    assert step._cache_size() == 1
    for needs_the_count in (lambda: elbo_model.loss(params, KEY, _batch()),
                            lambda: step(params, opt_state, KEY, _batch())):
        with pytest.raises(ValueError, match="needs data_steps"):
            needs_the_count()
    with pytest.raises(ValueError, match="weight_kl_schedule must be one of"):
        WorldModel(tiny_config(weight_kl_schedule="annealed"), A)


def test_a_donating_train_step_makes_the_same_update_and_consumes_its_inputs(model_and_params):
    model, params = model_and_params
    optimizer = make_optimizer()
    opt_state = optimizer.init(params)
    expected = make_train_step(model, optimizer)(params, opt_state, KEY, _batch(), DATA_STEPS)
    donated = jax.tree.map(jnp.copy, (params, opt_state))
    updated = make_train_step(model, optimizer, donate=True)(*donated, KEY, _batch(), DATA_STEPS)
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(donated))
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves((params, opt_state)))
    for new, old in zip(jax.tree.leaves(updated), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(new, old, rtol=1e-6, atol=1e-7)
    assert float(updated[2]["nonfinite"]) == 0


def test_pixel_preprocessing_is_5_bit_with_dequantization_noise():
    image = jnp.array([0, 7, 8, 255], jnp.uint8)
    centre = preprocess_pixels(image, None, bits=5)
    np.testing.assert_allclose(centre, (np.array([0, 0, 1, 31]) + 0.5) / 32 - 0.5)
    noisy = preprocess_pixels(jnp.tile(image, 1000), KEY, bits=5).reshape(1000, 4)
    assert float(noisy.min()) >= -0.5 and float(noisy.max()) < 0.5
    np.testing.assert_allclose(noisy.mean(0), centre, atol=2e-3)
    assert pixels_to_uint8(jnp.array([-0.5, 0.5])).tolist() == [0, 255]


def test_dither_is_uniform_over_256_levels_for_any_shape():
    noise = np.asarray(dither(KEY, (7, 1001, 3)))  # 21021 values: not a multiple of the 4 bytes per draw
    assert noise.shape == (7, 1001, 3) and noise.dtype == np.float32
    levels = noise * 256 - 0.5
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
    counts = np.bincount(np.round(levels).astype(int).ravel(), minlength=256)
    assert len(counts) == 256 and counts.min() > 40  # 82 expected per level
    assert abs(noise.mean() - 0.5) < 0.01 and abs(noise.std() - 12**-0.5) < 0.01
    assert not np.array_equal(noise, np.asarray(dither(jax.random.PRNGKey(1), (7, 1001, 3))))


# ------------------------------------------------------------------------------- learning on real data
CONTEXT, HORIZON = 5, 10


def _mean(history, key):
    return float(np.mean([h[key] for h in history]))


def test_image_and_reward_losses_fall_on_real_cartpole_pixels(trained_on_cartpole, cartpole_episodes):
    _, _, history = trained_on_cartpole
    # image NLL per frame (half the squared error over 64x64x3 pixels in [-0.5, 0.5]): about 320 at init
    assert _mean(history[-50:], "image_loss") < 0.05 * _mean(history[:5], "image_loss")
    # reward NLL (half the squared error): predicting the mean reward scores half the reward variance
    mean_predictor = 0.5 * np.var(np.concatenate([e["reward"][1:] for e in cartpole_episodes[:3]]))
    assert _mean(history[-50:], "reward_loss") < 0.3 * mean_predictor
    assert _mean(history[-50:], "kl") > 1.0, "the posterior carries information beyond the prior"


def test_filtering_beats_open_loop_prediction_on_held_out_frames(trained_on_cartpole, cartpole_episodes):
    """On a held-out episode: filter CONTEXT frames, then predict HORIZON frames open loop with the true actions;
    the posterior's reconstructions of those same frames, which see them, must be clearly better. The error
    is measured on the moving pixels (those that differ from the episode's median frame: the cart and pole)."""
    model, params, _ = trained_on_cartpole
    held_out = cartpole_episodes[3]
    observation, action = held_out["observation"][None], held_out["action"][None]
    background = np.median(np.asarray(preprocess_pixels(observation, None)), axis=1)

    @jax.jit
    def errors(observation, action):
        posts = model.observe(params, KEY, model.initial_state(1), observation, action)
        _, priors = model.imagine(params, KEY, jax.tree.map(lambda x: x[:, CONTEXT - 1], posts), action[:, CONTEXT:])
        truth = preprocess_pixels(observation[:, CONTEXT:], None)
        moving = jnp.max(jnp.abs(truth - background), axis=-1, keepdims=True) > 0.05
        error = lambda prediction: jnp.sum((prediction - truth) ** 2 * moving) / jnp.sum(moving)
        return error(model.decode(params, posts)[:, CONTEXT:]), error(model.decode(params, priors))

    window = CONTEXT + HORIZON
    starts = range(0, observation.shape[1] - window, window)
    filtered, open_loop = np.mean([errors(observation[:, s:s + window], action[:, s:s + window]) for s in starts], 0)
    assert filtered < 0.85 * open_loop, (filtered, open_loop)


def test_imagine_broadcasts_one_state_and_names_the_shapes_it_cannot_pair():
    model = WorldModel(tiny_config(observation="state"), A, (5,))
    params = model.init(KEY, _batch(pixels=False))
    actions = jnp.zeros((16, 3, A))
    rewards, _ = model.imagine(params, KEY, model.initial_state(1), actions)
    assert rewards.shape == (16, 3)
    with pytest.raises(ValueError, match="the state has 2 rows and the actions 16; give one state"):
        model.imagine(params, KEY, model.initial_state(2), actions)
