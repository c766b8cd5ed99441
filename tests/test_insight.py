"""Seeing inside the model: probes, calibration, open-loop predictions and the planner's choices."""

import imageio.v3 as iio
import jax
import numpy as np
import pytest

from bayes_planet import calibration, plan_quality, probes
from bayes_planet.openloop import as_uint8, open_loop, squared_error_by_step
from bayes_planet.viz import HEADER_HEIGHT, LABEL_WIDTH, open_loop_grid, write_open_loop_report

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------------------------ probes
def test_probe_recovers_a_linear_map_of_the_targets():
    targets = RNG.normal(size=(1200, 3))
    features = targets @ RNG.normal(size=(3, 20)) + 0.01 * RNG.normal(size=(1200, 20))
    groups = np.arange(1200) // 100  # 12 "episodes" of 100 steps
    train = groups < 9
    fitted = probes.probe_r2(features[train], targets[train], groups[train], features[~train], targets[~train])
    assert fitted["r2"].shape == (3,) and np.all(fitted["r2"] > 0.99), fitted["r2"]


def test_probe_on_pure_noise_is_not_inflated_by_the_fit():
    targets = RNG.normal(size=(1200, 2))
    features = RNG.normal(size=(1200, 40))  # 40 features of noise: an unregularized fit would overfit
    groups = np.arange(1200) // 100
    train = groups < 9
    fitted = probes.probe_r2(features[train], targets[train], groups[train], features[~train], targets[~train])
    assert np.all(np.abs(fitted["r2"]) < 0.03), fitted["r2"]
    assert fitted["strength"] >= 100, "cross-validation should choose strong regularization for noise"
    in_sample = probes.r2_scores(targets[train], probes.ridge_path(features[train], targets[train], [1e-3])[0]
                                 .predict(features[train]))
    assert np.all(in_sample > 0.02), "the unregularized in-sample fit does overfit: the control is meaningful"


def test_probe_targets_take_every_velocity_dimension_and_speed():
    episode = {"velocity": np.zeros((11, 9)), "speed": np.arange(11.0), "observation": np.zeros((11, 2))}
    targets, names = probes.probe_targets(episode)
    assert targets.shape == (11, 10) and names[-1] == "speed" and names[0] == "velocity[0]"
    with pytest.raises(ValueError, match="no true velocities"):
        probes.probe_targets({"observation": np.zeros((3, 2))})


# ------------------------------------------------------------------------------------------- calibration
def test_a_matching_gaussian_predictive_is_calibrated_and_an_overconfident_one_is_reported():
    truth = RNG.normal(1.0, 2.0, size=20000)
    means = np.full((1, truth.size), 1.0)  # one component N(1, 2²): exactly the data's distribution
    pit = calibration.mixture_pit(means, 2.0, truth)
    for level in (0.5, 0.9):
        assert abs(calibration.interval_coverage(pit, level) - level) < 0.015  # binomial sd about 0.0035
        assert calibration.verdict(calibration.interval_coverage(pit, level), level) == "calibrated"
    narrow = calibration.mixture_pit(means, 0.5, truth)
    assert calibration.verdict(calibration.interval_coverage(narrow, 0.9), 0.9) == "overconfident"
    wide = calibration.mixture_pit(means, 8.0, truth)
    assert calibration.verdict(calibration.interval_coverage(wide, 0.5), 0.5) == "underconfident"
    nll = lambda std: calibration.mixture_nll(means, std, truth).mean()
    assert nll(2.0) < nll(0.5) and nll(2.0) < nll(8.0)
    np.testing.assert_allclose(nll(2.0), 0.5 * np.log(2 * np.pi * 4) + 0.5, atol=0.03)  # Gaussian entropy


def test_a_mixture_of_weight_samples_widens_the_predictive():
    truth = RNG.normal(0.0, 1.0, size=5000)  # data: N(0, 1)
    components = RNG.normal(0.0, 0.8, size=(64, 1)) * np.ones((1, 5000))  # 64 samples, spread 0.8
    mixed = calibration.interval_coverage(calibration.mixture_pit(components, 0.6, truth), 0.9)
    single = calibration.interval_coverage(calibration.mixture_pit(components[:1] * 0, 0.6, truth), 0.9)
    assert single < 0.75 and abs(mixed - 0.9) < 0.05, (single, mixed)  # sqrt(0.8² + 0.6²) = 1


def test_calibration_table_per_horizon():
    means, truth = RNG.normal(size=(8, 50, 12)), RNG.normal(size=(50, 12))
    table = calibration.calibration_table(means, truth, reward_std=1.0)
    assert table["horizon"] == list(range(1, 13)) and len(table["nll"]) == 12 and len(table["coverage_90"]) == 12
    assert len(table["reliability"]) == len(table["levels"]) and all(0 <= c <= 1 for c in table["reliability"])


# --------------------------------------------------------------------------------------------- open loop
CONTEXT, HORIZON, SEQUENCES, K = 5, 30, 3, 3


@pytest.fixture(scope="module")
def open_loop_result(trained_on_cartpole, cartpole_episodes):
    model, params, _ = trained_on_cartpole
    held_out = cartpole_episodes[3]
    starts = [10, 40, 80]
    window = CONTEXT + HORIZON
    batch = {k: np.stack([held_out[k][s:s + window] for s in starts]) for k in ("observation", "action", "reward")}
    result = jax.jit(open_loop, static_argnums=(0, 6, 7))(model, params, jax.random.PRNGKey(0),
                                                          batch["observation"], batch["action"], batch["reward"],
                                                          CONTEXT, K)
    return model, params, batch, result


def test_open_loop_context_frames_are_the_filtered_reconstructions(open_loop_result):
    model, params, batch, result = open_loop_result
    assert result.prediction.shape == (SEQUENCES, CONTEXT + HORIZON, 64, 64, 3)
    assert result.sample_images.shape == (K, SEQUENCES, CONTEXT + HORIZON, 64, 64, 3)
    key_filter = jax.random.split(jax.random.PRNGKey(0), 3)[0]
    posts = model.observe(params, key_filter, model.initial_state(SEQUENCES), batch["observation"][:, :CONTEXT],
                          batch["action"][:, :CONTEXT])
    np.testing.assert_allclose(result.prediction[:, :CONTEXT], model.decode(params, posts), atol=1e-5)
    np.testing.assert_allclose(result.reward[:, :CONTEXT], model.reward(params, posts), atol=1e-5)
    # the weight samples disagree only where the model imagines
    spread = np.asarray(result.sample_images.std(0).mean(axis=(0, 2, 3, 4)))
    assert np.all(spread[:CONTEXT] < 1e-6) and np.all(spread[CONTEXT:] > 1e-6)


def test_a_trained_model_predicts_the_context_better_than_the_far_future(open_loop_result):
    """Error on the moving pixels (the cart and pole: those away from the sequence's median frame): the last
    2 filtered context frames (the first ones come from a filter just started at the zero state) against
    the last 10 of 30 imagined frames. After 1500 updates on a Zen 3 CPU the ratio was 0.63, 0.58 and 0.50
    over training seeds 0-2 (`BAYES_PLANET_TEST_SEED`); after 1000, 0.97, 0.73 and 0.67; untrained, 1.11."""
    _, _, _, result = open_loop_result
    truth = np.asarray(result.truth)
    moving = np.max(np.abs(truth - np.median(truth, axis=1, keepdims=True)), axis=-1, keepdims=True) > 0.05
    error = squared_error_by_step(result, moving)
    assert error[CONTEXT - 2:CONTEXT].mean() < 0.85 * error[-10:].mean(), error


def test_open_loop_video_and_strip_have_the_right_frames_and_size(open_loop_result, tmp_path):
    _, _, _, result = open_loop_result
    images = as_uint8(result)
    assert set(images) == {"truth", "prediction", "error", "sample_mean", "sample_std"}
    grid = open_loop_grid(images, CONTEXT)
    assert grid.shape == (CONTEXT + HORIZON, 5 * 66, SEQUENCES * 66, 3) and grid.dtype == np.uint8
    assert tuple(grid[0, 0, 0]) == (40, 200, 80) and tuple(grid[-1, 0, 0]) == (220, 50, 50)  # context / imagined
    paths = write_open_loop_report(result, str(tmp_path), "openloop")
    labelled = (grid.shape[1] + HEADER_HEIGHT, grid.shape[2] + LABEL_WIDTH)  # row names left, step on top
    gif = iio.imread(paths["gif"])
    assert gif.shape[0] == CONTEXT + HORIZON and gif.shape[1:3] == labelled
    tiles = gif[:, HEADER_HEIGHT:, LABEL_WIDTH:].astype(np.float32)  # the tiles themselves, up to GIF's palette
    assert np.abs(tiles - grid).mean() < 3, np.abs(tiles - grid).mean()
    assert not np.array_equal(gif[0, :HEADER_HEIGHT], gif[-1, :HEADER_HEIGHT]), "each frame names its step"
    assert np.any(gif[0, HEADER_HEIGHT:, :LABEL_WIDTH] < 128), "row names are drawn"
    mp4 = iio.imread(paths["mp4"])
    assert mp4.shape[0] == CONTEXT + HORIZON and mp4.shape[1:3] == labelled
    strip = iio.imread(paths["png"])
    assert strip.ndim == 3 and strip.shape[1] > strip.shape[0]  # one sequence, steps along the width
    assert iio.imread(paths["reward"]).ndim == 3


def test_plan_quality_scores_a_perfect_a_reversed_and_an_unsure_model():
    true = np.array([3.0, 5.0, 1.0, 4.0, 2.0])  # the plan (row 0) is third of five
    perfect = plan_quality.plan_quality(true[:, None], true)
    assert perfect["rank_correlation"] == pytest.approx(1.0) and perfect["model_pick_regret"] == 0
    assert perfect["plan_regret"] == 2 and perfect["plan_percentile"] == 0.5 and perfect["true_range"] == 4
    assert perfect["plan_imagined_error"] == 0 and perfect["plan_spread"] == 0 and "plan_percentile_far" not in perfect
    grouped = plan_quality.plan_quality(true[:, None], true, perturbed=2)  # rows 1-2 perturbations, 3-4 others
    assert grouped["plan_percentile_near"] == 0.5 and grouped["plan_percentile_far"] == 0.5
    assert plan_quality.plan_quality(true[:, None], np.array([3.0, 5, 4, 1, 2]), 2)["plan_percentile_far"] == 1
    reversed_ = plan_quality.plan_quality(-true[:, None], true)
    assert reversed_["rank_correlation"] == pytest.approx(-1.0) and reversed_["model_pick_regret"] == 4
    unsure = plan_quality.plan_quality(np.stack([true + 1, true - 1, true + 3], axis=1), true)  # 3 weight samples
    assert unsure["plan_imagined_error"] == pytest.approx(1.0)
    assert unsure["plan_spread"] == pytest.approx(np.std([1, -1, 3]))
    assert unsure["spread_variation"] == 0  # the same spread for every candidate
    assert np.isnan(unsure["spread_two_sample_rank"])  # K < 4
    assert np.isnan(plan_quality.rank_correlation(np.ones(5), true))
    with pytest.raises(ValueError, match="imagined"):
        plan_quality.plan_quality(true, true)
    with pytest.raises(ValueError, match="perturbed must leave"):
        plan_quality.plan_quality(true[:, None], true, perturbed=4)


def test_spread_scores_tell_a_bonus_that_reorders_from_noise_two_samples_cannot_rank():
    rng = np.random.default_rng(0)
    means, spreads = np.linspace(0.0, 10.0, 200), np.linspace(0.1, 5.0, 200)[::-1]  # the best candidate is surest
    imagined = means[:, None] + spreads[:, None] * rng.standard_normal((200, 64))
    scores = plan_quality.spread_scores(imagined)
    assert 0.3 < scores["spread_variation"] < 0.6  # std(spreads) / std(means) = 1.41 / 2.9
    assert 0.3 < scores["spread_two_sample_rank"] < 0.8  # two samples see the trend, noisily
    same_spread = means[:, None] + rng.standard_normal((200, 64))
    assert abs(plan_quality.spread_scores(same_spread)["spread_two_sample_rank"]) < 0.2  # no trend: the ranks are noise
    assert plan_quality.spread_scores(same_spread)["spread_variation"] < 0.05
    assert np.isnan(plan_quality.spread_scores(np.ones((5, 8)))["spread_variation"])  # every candidate alike
    rows = [plan_quality.plan_quality(imagined[:5, :2], means[:5]) for _ in range(2)]
    summary = plan_quality.summarize(rows)
    assert np.isnan(summary["spread_two_sample_rank"]["mean"]) and summary["plan_spread"]["mean"] > 0


def test_candidates_are_the_plan_then_perturbations_then_uniform_actions():
    plan = np.full((12, 2), 0.5, np.float32)
    candidates = plan_quality.candidate_sequences(np.random.default_rng(0), plan, 65, 0.1)
    assert candidates.shape == (65, 12, 2) and np.abs(candidates).max() <= 1
    np.testing.assert_array_equal(candidates[0], plan)
    distance = np.abs(candidates - plan).mean(axis=(1, 2))
    assert distance[1:33].max() < 0.15 < 0.3 < distance[33:].min()  # 32 near the plan, 32 anywhere
    with pytest.raises(ValueError, match="at least 3"):
        plan_quality.candidate_sequences(np.random.default_rng(0), plan, 2, 0.1)
