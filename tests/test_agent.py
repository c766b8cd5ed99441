"""The agent end to end on a real DMC task: train, write the run directory, get killed, resume."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from agents.train import Trainer
from bayes_planet.config import load_config

TINY_RUN = [
    "env.task=dmc:cartpole-swingup", "env.action_repeat=8",
    "model.cnn_depth=4", "model.deter_size=16", "model.stoch_size=4", "model.hidden_size=16",
    "model.reward_hidden=16", "model.reward_layers=1", "model.conv_chunk=0",
    "planner.horizon=4", "planner.iterations=2", "planner.candidates=16", "planner.top_k=4",
    "planner.weight_samples=2",
    "train.seed_episodes=2", "train.train_steps=3", "train.batch_size=2", "train.sequence_length=8",
    "train.eval_every=1", "train.eval_episodes=1",
]
EPISODE_ENV_STEPS = 1000


def _records(logdir, kind):
    with open(os.path.join(logdir, "metrics.jsonl")) as handle:
        return [r for r in map(json.loads, handle) if r["kind"] == kind]


def test_training_run_writes_its_run_directory(tmp_path):
    logdir = str(tmp_path / "run")
    config = load_config("default", TINY_RUN + [f"train.env_steps={3 * EPISODE_ENV_STEPS}"])
    result = Trainer(logdir, config, progress=False).run()
    for name in ("config.yaml", "checkpoint.pkl", "metrics.jsonl", "learning_curve.png", "tensorboard"):
        assert os.path.exists(os.path.join(logdir, name)), name
    episodes = sorted(os.listdir(os.path.join(logdir, "episodes")))
    assert len(episodes) == 3 and all(e.endswith(".npz") for e in episodes)  # 2 random + 1 collected
    with np.load(os.path.join(logdir, "episodes", episodes[-1])) as data:
        assert data["observation"].shape == (126, 64, 64, 3) and data["observation"].dtype == np.uint8
        assert data["velocity"].shape[0] == 126
    assert len(_records(logdir, "random")) == 2 and len(_records(logdir, "episode")) == 1
    (train,) = _records(logdir, "train")
    assert train["updates"] == 3 and np.isfinite(train["loss"])
    (evaluation,) = _records(logdir, "eval")
    assert evaluation["step"] == 3 * EPISODE_ENV_STEPS and result["eval_return"] == evaluation["return"]
    assert result["random_return"] == pytest.approx(np.mean([r["return"] for r in _records(logdir, "random")]))
    with open(os.path.join(logdir, "checkpoint.pkl"), "rb") as handle:
        assert pickle.load(handle)["updates"] == 3


def _cli(logdir, *extra):
    return [sys.executable, "-m", "agents.cli", "train", "--logdir", logdir, "--no-progress", *extra]


def test_killed_run_resumes_from_its_checkpoint_with_the_same_counters(tmp_path):
    logdir = str(tmp_path / "run")
    overrides = [arg for item in TINY_RUN + [f"train.env_steps={4 * EPISODE_ENV_STEPS}"] for arg in ("--set", item)]
    process = subprocess.Popen(_cli(logdir, *overrides), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = os.path.join(logdir, "checkpoint.pkl")
    deadline, updates_at_kill = time.time() + 300, None
    # kill -9 as soon as the first collected episode is checkpointed (the run wants two)
    while time.time() < deadline and process.poll() is None and updates_at_kill != 3:
        time.sleep(0.1)
        if os.path.exists(checkpoint):
            with open(checkpoint, "rb") as handle:  # written atomically: never seen half-written
                updates_at_kill = pickle.load(handle)["updates"]
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert updates_at_kill == 3, "killed after the first collected episode's checkpoint"
    # the same command again: resumes, does not redo the random episodes or the first round of updates
    finished = subprocess.run(_cli(logdir, *overrides), capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert len(_records(logdir, "random")) == 2
    assert [r["updates"] for r in _records(logdir, "train")][-1] == 6
    assert len(os.listdir(os.path.join(logdir, "episodes"))) == 4
    assert "evaluation return" in finished.stdout
    # a different config on the same run directory is refused, naming the option
    refused = subprocess.run(_cli(logdir, *overrides, "--set", "planner.horizon=5"), capture_output=True, text=True)
    assert refused.returncode == 2 and "planner.horizon: 4 -> 5" in refused.stderr
