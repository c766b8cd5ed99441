"""Real dm_control physics and rendering behind the gymnasium interface."""

import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from bayes_planet import envs


@pytest.fixture(scope="module")
def cheetah():
    env = envs.make("dmc:cheetah-run", seed=0)
    yield env
    env.close()


def test_mujoco_gl_defaults_to_egl_when_unset():
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}
    code = "import os, envs; envs.make('dmc:cartpole-swingup').reset(seed=0); print(os.environ['MUJOCO_GL'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "egl"


def test_pixel_observations_from_real_rendering(cheetah):
    obs, info = cheetah.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert cheetah.observation_space.contains(obs)
    assert obs.std() > 5, "a rendered frame has structure, not a constant colour"
    frames = [obs]
    for _ in range(10):
        obs, *_ = cheetah.step(np.ones(cheetah.action_space.shape))
        frames.append(obs)
    assert np.abs(frames[-1].astype(int) - frames[0].astype(int)).mean() > 1.0, "frames change as it moves"


@pytest.mark.parametrize("task", ["dmc:walker-walk", "dmc:cheetah-run"])
def test_observations_are_the_frames_physics_render_draws(task):
    """The env renders through one held camera; every frame must equal a fresh ``physics.render``."""
    env = envs.make(task, seed=0, shadow_size=512)
    rng = np.random.default_rng(0)
    observations = [env.reset(seed=0)[0]]
    for _ in range(12):
        observation = env.step(rng.uniform(-1, 1, env.action_space.shape))[0]
        assert np.array_equal(observation, env.physics.render(64, 64, camera_id=env.unwrapped.camera_id))
        observations.append(observation)
    assert np.abs(observations[-1].astype(int) - observations[0].astype(int)).mean() > 1.0, "the body moved"
    env.close()


def test_action_repeat_multiplies_env_steps_and_sums_rewards():
    fast = envs.make("dmc:cartpole-swingup", action_repeat=1, seed=3)
    slow = envs.make("dmc:cartpole-swingup", action_repeat=8, seed=3)
    assert envs.make("dmc:cartpole-swingup").action_repeat == 8  # PlaNet's default
    fast.reset(seed=3)
    slow.reset(seed=3)
    action = np.full(fast.action_space.shape, 0.5)
    single = [fast.step(action)[1] for _ in range(8)]
    _, repeated, _, _, info = slow.step(action)
    assert info["env_steps"] == 8 and fast._info()["env_steps"] == 8
    assert repeated == pytest.approx(sum(single), rel=1e-6)


def test_info_velocity_matches_physics(cheetah):
    cheetah.reset(seed=1)
    _, _, _, _, info = cheetah.step(np.zeros(cheetah.action_space.shape))
    np.testing.assert_allclose(info["velocity"], cheetah.physics.data.qvel)
    np.testing.assert_allclose(info["position"], cheetah.physics.data.qpos)
    assert info["speed"] == pytest.approx(cheetah.physics.speed())
    assert info["velocity"].shape == (9,)
    names = cheetah.velocity_names  # one per qvel entry, from the joints, with units
    assert len(names) == 9 and names[0] == "rootx velocity (m/s)" and names[2] == "rooty angular velocity (rad/s)"


def test_same_seed_same_first_observations():
    a = envs.make("dmc:reacher-easy", seed=7)
    b = envs.make("dmc:reacher-easy", seed=7)
    np.testing.assert_array_equal(a.reset(seed=7)[0], b.reset(seed=7)[0])
    c = envs.make("dmc:reacher-easy")
    assert not np.array_equal(a.reset(seed=7)[0], c.reset(seed=8)[0])


def test_episode_truncates_at_1000_env_steps():
    env = envs.make("dmc:cartpole-swingup", observation="state", seed=0)  # repeat 8 -> 125 agent steps
    env.reset(seed=0)
    for step in range(1, 200):  # noqa: B007 (read after the loop)
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        if terminated or truncated:
            break
    assert truncated and not terminated
    assert step == 125 == env.max_episode_steps and info["env_steps"] == 1000


def test_shorter_episodes_truncate_at_their_env_steps_and_end_on_a_partial_repeat():
    env = envs.make("dmc:cartpole-swingup", observation="state", seed=0, episode_steps=204)  # 25.5 repeats of 8
    env.reset(seed=0)
    steps = [env.step(env.action_space.sample()) for _ in range(env.max_episode_steps)]
    assert env.max_episode_steps == 26 and [s[3] for s in steps] == [False] * 25 + [True]
    assert steps[-1][4]["env_steps"] == 204 and not any(s[2] for s in steps)


@pytest.mark.parametrize("task", ["dmc:walker-walk", "dmc:cartpole-swingup"])  # 10 and 1 physics steps per env step
def test_simulated_returns_are_the_episodes_own_and_leave_it_unchanged(task):
    env, twin = envs.make(task, seed=3), envs.make(task, seed=3)
    rng = np.random.default_rng(0)
    for e in (env, twin):
        e.reset(seed=3)
    for action in rng.uniform(-1, 1, (5, *env.action_space.shape)):
        env.step(action)
        twin.step(action)
    sequences = rng.uniform(-1, 1, (3, 6, *env.action_space.shape))
    simulated = env.simulate_returns(sequences)
    assert len(set(simulated.round(6))) == 3  # different sequences, different returns
    for e in (env, twin):  # the simulation left `env` where `twin` is: same rewards, frames and state from here on
        e.rewards = [e.step(action)[1] for action in sequences[1]]
    assert env.rewards == twin.rewards and env.rewards[0] != 0
    assert np.isclose(sum(env.rewards), simulated[1], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(env.render(), twin.render())
    with pytest.raises(ValueError, match=r"\[N, H, A\]"):
        env.simulate_returns(sequences[0])


def test_state_observations():
    env = envs.make("dmc:walker-walk", observation="state", seed=0)
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == env.observation_space.shape == (24,)


def test_actions_rescaled_to_true_bounds():
    env = envs.make("dmc:cartpole-swingup", action_repeat=1, seed=0)
    low, high = env._action_low, env._action_high
    env.reset(seed=0)
    env.step(np.array([1.0]))
    np.testing.assert_allclose(env.physics.data.ctrl, high)
    env.step(np.array([-1.0]))
    np.testing.assert_allclose(env.physics.data.ctrl, low)


@pytest.mark.parametrize("name", ["dmc:cup-catch", "dmc:finger-spin"])
def test_gymnasium_check_env(name):
    check_env(envs.make(name, seed=0), skip_render_check=True)


def test_gymnasium_registry():
    env = gym.make("dmc/cheetah-run-v0")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64, 64, 3)
    assert "dmc/ball_in_cup-catch-v0" in gym.registry
    assert envs.make("dmc/walker-walk-v0", observation="state").observation_space.shape == (24,)


def test_gymnasium_env_turned_into_pixels():
    env = envs.make("Pendulum-v1", seed=0)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert obs.std() > 5
    first = obs
    for _ in range(15):
        obs, reward, *_ = env.step(np.array([1.0]))
    assert np.abs(obs.astype(int) - first.astype(int)).sum() > 0
    assert reward <= 0.0  # Pendulum's cost-shaped reward


def test_resize_area_averages_blocks():
    frame = np.zeros((4, 4, 3), np.uint8)
    frame[:2, :2] = 200
    np.testing.assert_array_equal(envs.resize_area(frame, 2)[..., 0], [[200, 0], [0, 0]])
    assert envs.resize_area(np.zeros((500, 500, 3), np.uint8), 64).shape == (64, 64, 3)


@pytest.mark.parametrize(
    "name, message",
    [
        ("dmc:cheeta-run", "valid domains: acrobot, ball_in_cup"),
        ("dmc:cheetah-walk", "valid tasks: run"),
        ("dmc:cheetah", "domain-task"),
        ("NoSuchEnv-v9", "unknown environment 'NoSuchEnv-v9'"),
    ],
)
def test_bad_names_list_valid_choices(name, message):
    with pytest.raises(ValueError, match=message):
        envs.make(name)


def test_bad_actions_are_refused(cheetah):
    cheetah.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(5,\), expected \(6,\)"):
        cheetah.step(np.zeros(5))
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
        cheetah.step(np.full(6, 1.5))
    cheetah.step(np.full(6, 1.0 + 1e-7))  # float tolerance


def test_a_smaller_shadow_map_renders_the_same_frames_to_within_a_5_bit_level():
    """Real renders of a moving walker with the suite's 2048-pixel shadow map and with a 512-pixel one."""
    default, small = (envs.make("dmc:walker-walk", seed=0, shadow_size=size) for size in (None, 512))
    assert small.physics.model.vis.quality.shadowsize == 512
    assert default.physics.model.vis.quality.shadowsize == 2048
    rng = np.random.default_rng(0)
    frames = [(default.reset(seed=0)[0], small.reset(seed=0)[0])]
    for _ in range(40):
        action = rng.uniform(-1, 1, default.action_space.shape)
        frames.append((default.step(action)[0], small.step(action)[0]))
    difference = np.abs(np.array([a.astype(int) - b.astype(int) for a, b in frames]))
    assert difference.max() > 0, "the option reaches the renderer"
    assert (difference > 8).mean() < 0.005  # 8: one level of the model's 5-bit pixels
    assert np.abs(frames[-1][0].astype(int) - frames[0][0].astype(int)).mean() > 1.0, "the walker moved"


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="observation must be one of"):
        envs.make("dmc:cheetah-run", observation="rgb")
    with pytest.raises(ValueError, match="action_repeat must be a positive integer"):
        envs.make("dmc:cheetah-run", action_repeat=0)
    with pytest.raises(ValueError, match="shadow_size must be a positive integer"):
        envs.make("dmc:cheetah-run", shadow_size=0)
    with pytest.raises(ValueError, match="shadow_size applies to DeepMind Control tasks only"):
        envs.make("Pendulum-v1", shadow_size=512)
    with pytest.raises(ValueError, match=r"episode_steps must be an integer in \[1, 1000\]"):
        envs.make("dmc:cheetah-run", episode_steps=1001)
    with pytest.raises(ValueError, match="episode_steps applies to DeepMind Control tasks only"):
        envs.make("Pendulum-v1", episode_steps=100)
