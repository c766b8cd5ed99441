"""Shared fixtures: real random episodes from dm_control, and tiny world-model sizes."""

import os
import tempfile

# Compiled XLA programs persist across the test session and its subprocesses (the kill-and-resume tests start
# the same tiny run many times): compile once, then load. Set before JAX is imported.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"bayes-planet-tests-jax-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from bayes_planet.agents.cli import cli_argv
from bayes_planet.agents.rollout import random_policy, run_episode

from bayes_planet import envs  # noqa: E402
from bayes_planet.replay import Replay
from bayes_planet.world_model import ModelConfig, WorldModel, make_optimizer, make_train_step

TINY = dict(cnn_depth=8, deter_size=32, stoch_size=8, hidden_size=32, reward_hidden=32, reward_layers=2, conv_chunk=0)

# A whole training run on real cartpole-swingup in well under a minute: tiny networks and planner, 2 random
# episodes of 400 env steps (50 agent steps, 51 frames: just enough for the open-loop report's 50-frame windows)
# and a 64-pixel shadow map (a frame renders in about half the time of the suite's 2048 on a 2-core Zen 3).
EPISODE_ENV_STEPS = 400
TINY_RUN = [
    "env.task=dmc:cartpole-swingup", "env.action_repeat=8", "env.shadow_size=64",
    f"env.episode_steps={EPISODE_ENV_STEPS}",
    "model.cnn_depth=4", "model.deter_size=16", "model.stoch_size=4", "model.hidden_size=16",
    "model.reward_hidden=16", "model.reward_layers=1", "model.conv_chunk=0",
    "planner.horizon=4", "planner.iterations=2", "planner.candidates=16", "planner.top_k=4",
    "planner.weight_samples=2",
    "train.seed_episodes=2", "train.train_steps=3", "train.batch_size=2", "train.sequence_length=8",
    "train.eval_every=1", "train.eval_episodes=1",
]


def train_command(logdir: str, *extra: str) -> list[str]:
    """The argv of a ``bayes-planet train`` subprocess on `logdir` without progress bars, then `extra`."""
    return cli_argv("train", "--logdir", logdir, "--no-progress", *extra)


def tiny_run_cli_options(*items: str) -> list[str]:
    """``--set`` arguments for the CLI: `TINY_RUN` followed by `items`."""
    return [arg for item in TINY_RUN + list(items) for arg in ("--set", item)]


def tiny_config(**overrides) -> ModelConfig:
    return ModelConfig(**{**TINY, **overrides})


def collect_random_episodes(task: str, count: int, seed: int = 0):
    env = envs.make(task, seed=seed)
    return [run_episode(env, random_policy(env.action_space, seed + i), seed=seed + i).arrays()
            for i in range(count)]


@pytest.fixture(scope="session")
def cartpole_episodes():
    """Four random cartpole-swingup pixel episodes of 126 frames (action repeat 8)."""
    return collect_random_episodes("dmc:cartpole-swingup", 4)


def stack_batch(episodes, length, start=0):
    return {k: np.stack([e[k][start:start + length] for e in episodes]) for k in ("observation", "action", "reward")}


# 1500 updates: the model starts to draw the cart and pole somewhere between 500 and 1500 of them, and when
# depends on the CPU's float rounding (on a Zen 3 EPYC, seed 0 still drew none at 1000; a Zen 4 did).
STEPS, BATCH, LENGTH = 1500, 6, 12


@pytest.fixture(scope="session")
def trained_on_cartpole(cartpole_episodes, tmp_path_factory):
    """A tiny pixel model trained for STEPS updates on 3 random cartpole-swingup episodes (the 4th is held out).
    About 4 minutes on 2 CPU cores."""
    replay = Replay(str(tmp_path_factory.mktemp("replay")))
    for episode in cartpole_episodes[:3]:
        replay.add(episode)
    model = WorldModel(tiny_config(), 1)
    rng = np.random.default_rng(int(os.environ.get("BAYES_PLANET_TEST_SEED", 0)))
    params = model.init(jax.random.PRNGKey(0), replay.sample(BATCH, LENGTH, rng))
    optimizer = make_optimizer(3e-3)
    opt_state, step = optimizer.init(params), make_train_step(model, optimizer)
    history = []
    for i in range(STEPS):
        batch = replay.sample(BATCH, LENGTH, rng)
        params, opt_state, metrics = step(params, opt_state, jax.random.PRNGKey(i), batch, replay.num_steps)
        history.append({k: float(v) for k, v in metrics.items()})
    return model, params, history


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config, items):
    """For pytest-xdist's ``--dist loadgroup`` (the README's test command): the tests that use the trained
    cartpole model run on one worker, and so do a module's tests that share a module-scoped fixture, so each
    such fixture is built once; every other test goes to whichever worker is free."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        scopes = {name: definitions[-1].scope for name, definitions in (info.name2fixturedefs.items() if info else ())}
        if "trained_on_cartpole" in scopes:
            item.add_marker(pytest.mark.xdist_group("trained_on_cartpole"))
        elif "module" in scopes.values():
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
