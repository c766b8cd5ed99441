"""Nothing lost: faults injected for real (SIGKILL, SIGINT, truncated files, NaN data, bad input)."""

import json
import logging
import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from bayes_planet.agents.cli import main
from bayes_planet.agents.train import Trainer
from conftest import EPISODE_ENV_STEPS, TINY_RUN, tiny_config, tiny_run_cli_options, train_command

from bayes_planet.checkpoint import load_checkpoint, previous_path, save_checkpoint
from bayes_planet.config import load_config
from bayes_planet.files import is_partial
from bayes_planet.replay import Replay
from bayes_planet.world_model import WorldModel, make_optimizer, make_train_step


def _episode(length, seed=0):
    rng = np.random.default_rng(seed)
    return {"observation": rng.integers(0, 255, (length, 4), dtype=np.uint8),
            "action": rng.normal(size=(length, 2)).astype(np.float32),
            "reward": rng.normal(size=length).astype(np.float32)}


# ------------------------------------------------------------------------------------------ interruption
def _checkpoint_updates(logdir):
    saved = load_checkpoint(os.path.join(logdir, "checkpoint.npz"))
    return None if saved is None else (saved["updates"], saved["episodes"])


def _episode_files(logdir):
    folder = os.path.join(logdir, "episodes")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def _checkpoint_mtime(logdir):
    path = os.path.join(logdir, "checkpoint.npz")
    return os.path.getmtime(path) if os.path.exists(path) else None


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun_continues_the_run(tmp_path):
    """Kill -9 three times, each at a random moment 0 to 4 s after the run's latest checkpoint (so in
    training, collection, evaluation, report or checkpoint writing); after each kill every file that loads
    is whole and at most the episode in progress is lost; then the same command finishes the run."""
    logdir = str(tmp_path / "run")
    overrides = tiny_run_cli_options(f"train.env_steps={6 * EPISODE_ENV_STEPS}")  # 2 random + 4 collected episodes
    rng = np.random.default_rng(0)
    report = []
    for _ in range(3):
        before, seen = len(_episode_files(logdir)), _checkpoint_mtime(logdir)
        process = subprocess.Popen(train_command(logdir, *overrides),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None and _checkpoint_mtime(logdir) in (None, seen):
            time.sleep(0.05)
        delay = rng.uniform(0, 4)
        time.sleep(delay)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
        files = [f for f in _episode_files(logdir) if not is_partial(f)]  # hidden, never read, removed on rerun
        assert all(f.endswith(".npz") for f in files), files
        replay = Replay(os.path.join(logdir, "episodes"))
        for index in range(len(replay)):
            replay.episode(index)  # every episode on disk loads whole
        updates, episodes = _checkpoint_updates(logdir)
        assert episodes <= len(replay) <= episodes + 1, "the checkpoint lags the replay by at most 1 episode"
        report.append({"after checkpoint s": round(delay, 2), "episodes before": before,
                       "episodes after": len(replay), "checkpoint updates": int(updates),
                       "checkpoint episodes": int(episodes)})
    finished = subprocess.run(train_command(logdir, *overrides), capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert len(_episode_files(logdir)) == 6 and "evaluation return" in finished.stdout
    with open(os.path.join(logdir, "metrics.jsonl")) as handle:
        records = [json.loads(line) for line in handle]
    assert len([r for r in records if r["kind"] == "random"]) == 2, "random episodes never redone"
    assert len([r for r in records if r["kind"] == "episode"]) >= 4
    print("kill points:", report)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_stop_cleanly_with_a_checkpoint(tmp_path, signum):
    logdir = str(tmp_path / "run")
    overrides = tiny_run_cli_options(f"train.env_steps={6 * EPISODE_ENV_STEPS}")
    process = subprocess.Popen(train_command(logdir, *overrides),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and _checkpoint_updates(logdir) is None:
        time.sleep(0.2)
    time.sleep(2.0)  # somewhere in training or collection
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr[-2000:]
    assert f"stopped by {signal.Signals(signum).name}; checkpoint saved" in stderr
    updates, episodes = _checkpoint_updates(logdir)
    assert episodes == len(_episode_files(logdir))
    with open(os.path.join(logdir, "metrics.jsonl")) as handle:
        logged = [json.loads(line) for line in handle if '"train"' in line]
    assert not logged or logged[-1]["updates"] <= updates


# --------------------------------------------------------------------------------------- corrupt files
def test_truncated_and_damaged_episode_files_are_set_aside_with_one_warning(tmp_path, caplog):
    folder = str(tmp_path / "episodes")
    replay = Replay(folder)
    paths = [replay.add(_episode(20, seed)) for seed in range(4)]
    with open(paths[1], "r+b") as handle:  # truncated: the zip directory at the end is gone
        handle.truncate(os.path.getsize(paths[1]) // 2)
    data = bytearray(open(paths[2], "rb").read())
    data[60:90] = bytes(30)  # damaged inside a member: opens, fails when read
    open(paths[2], "wb").write(bytes(data))
    with caplog.at_level(logging.WARNING):
        reopened = Replay(folder)
    assert len(reopened) == 3 and os.path.exists(paths[1] + ".corrupt")
    assert [r.getMessage() for r in caplog.records if paths[1] in r.getMessage()] != []
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        for _ in range(20):
            reopened.sample(4, 10, np.random.default_rng(0))
    assert len(reopened) == 2 and os.path.exists(paths[2] + ".corrupt")
    assert len([r for r in caplog.records if paths[2] in r.getMessage()]) == 1, "one warning line"
    new = reopened.add(_episode(20, 9))
    assert os.path.basename(new) == "episode-000004-20.npz", "a new episode never reuses a set-aside name"


def test_missing_or_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    path = str(tmp_path / "checkpoint.npz")
    save_checkpoint(path, {"updates": 1})
    save_checkpoint(path, {"updates": 2})
    assert load_checkpoint(path)["updates"] == 2 and os.path.exists(previous_path(path))
    with open(path, "r+b") as handle:
        handle.truncate(10)
    with caplog.at_level(logging.WARNING):
        assert load_checkpoint(path)["updates"] == 1
    assert any("skipping unreadable checkpoint" in r.getMessage() and path in r.getMessage() for r in caplog.records)
    os.remove(path)
    assert load_checkpoint(path)["updates"] == 1
    os.remove(previous_path(path))
    assert load_checkpoint(path) is None


# ------------------------------------------------------------------------------------ numerical faults
def test_a_nan_batch_skips_the_update_and_is_counted():
    model = WorldModel(tiny_config(observation="state"), 2, obs_shape=(5,))  # the same step, quick to compile
    rng = np.random.default_rng(0)
    batch = {"observation": rng.normal(size=(2, 4, 5)).astype(np.float32),
             "action": rng.uniform(-1, 1, (2, 4, 2)).astype(np.float32),
             "reward": rng.normal(size=(2, 4)).astype(np.float32)}
    params = model.init(jax.random.PRNGKey(0), batch)
    optimizer = make_optimizer(1e-3)
    step, opt_state = make_train_step(model, optimizer), optimizer.init(params)
    poisoned = dict(batch, reward=batch["reward"].copy())
    poisoned["reward"][1, 2] = np.nan
    kept, kept_state, metrics = step(params, opt_state, jax.random.PRNGKey(1), poisoned, 100.0)
    assert float(metrics["nonfinite"]) == 1.0
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(params), strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(kept_state), jax.tree.leaves(opt_state),
                                                    strict=True))
    moved, _, metrics = step(params, opt_state, jax.random.PRNGKey(1), batch, 100.0)
    assert float(metrics["nonfinite"]) == 0.0
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(params), strict=True))


def test_consecutive_nonfinite_updates_stop_the_run_with_a_message(tmp_path, capsys):
    logdir = str(tmp_path / "run")
    config = load_config("default", TINY_RUN + ["train.max_nonfinite_updates=3", "train.train_steps=5"])
    Trainer(logdir, config, progress=False).collect_seed_episodes()
    folder = os.path.join(logdir, "episodes")
    for name in os.listdir(folder):  # the data on disk goes bad: every reward NaN
        with np.load(os.path.join(folder, name)) as data:
            arrays = {k: data[k] for k in data.files}
        arrays["reward"][:] = np.nan
        np.savez_compressed(os.path.join(folder, name), **arrays)
    assert main(["train", "--logdir", logdir, "--no-progress"]) == 1
    assert "3 updates in a row had a non-finite loss or gradient" in capsys.readouterr().err
    with open(os.path.join(logdir, "metrics.jsonl")) as handle:
        (record,) = [json.loads(line) for line in handle if '"train"' in line]
    assert record["nonfinite_updates"] == 3 and record["updates"] == 3
    assert np.all(np.isfinite(np.concatenate([np.ravel(x) for x in jax.tree.leaves(
        load_checkpoint(os.path.join(logdir, "checkpoint.npz"))["params"])])))


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("override, message", [
    ("env.task=dmc:nope-run", "config key 'env.task': unknown DeepMind Control domain 'nope'"),
    ("env.task=dmc:cheetah-fly", "unknown task 'fly' for domain 'cheetah'; valid tasks: run"),
    ("planner.horizon=0", "config key 'planner.horizon' must be >= 1, got 0"),
    ("train.batch_size=-4", "config key 'train.batch_size' must be >= 1, got -4"),
    ("train.batch_size=big", "train.batch_size"),
    ("model.cnn_dept=8", "model.cnn_depth"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, override, message):
    logdir = str(tmp_path / "run")
    assert main(["train", "--logdir", logdir, "--config", "quickstart", "--set", override]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not os.path.exists(os.path.join(logdir, "config.yaml")), "nothing written for a bad config"


def test_a_run_recorded_with_the_tasks_own_action_repeat_resumes_under_a_preset_that_says_0(tmp_path):
    """The quickstart said action_repeat 4 before it said 0 (PlaNet's per task, 4 on cheetah-run): a run
    recorded then is the same run, while any other repeat is refused by name."""
    from bayes_planet.agents.train import prepare_run

    from bayes_planet import config as config_lib
    from bayes_planet.errors import UsageError

    logdir = str(tmp_path / "run")
    os.makedirs(logdir)
    before = load_config("quickstart", ["env.action_repeat=4"])
    config_lib.save_config(before, os.path.join(logdir, "config.yaml"))
    assert load_config("quickstart").env.action_repeat == 0
    assert prepare_run(logdir, "quickstart") == before  # the stored config, untouched
    with pytest.raises(UsageError, match="env.action_repeat: 4 -> 8"):
        prepare_run(logdir, "quickstart", ["env.action_repeat=8"])
    with pytest.raises(UsageError, match="env.action_repeat: 4 -> 0"):  # 0 is 8 on cartpole, not 4
        prepare_run(logdir, "quickstart", ["env.task=dmc:cartpole-swingup"])


def test_an_unwritable_log_directory_is_one_line_and_exit_code_2(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["train", "--logdir", str(blocker / "run"), "--config", "quickstart"]) == 2
    assert "cannot write the run directory" in capsys.readouterr().err


# ------------------------------------------------------------------------------- reproducibility, memory
def test_same_config_and_seed_give_the_same_seed_episodes_and_first_losses(tmp_path):
    config = load_config("default", TINY_RUN)
    runs = []
    for name in ("a", "b"):
        trainer = Trainer(str(tmp_path / name), config, progress=False)
        trainer.collect_seed_episodes()
        trainer._initialize()
        runs.append((trainer.replay.episode(0), trainer.replay.episode(1), trainer.train_phase()))
    (first_a, second_a, losses_a), (first_b, second_b, losses_b) = runs
    for key in ("observation", "action", "reward", "velocity"):
        np.testing.assert_array_equal(first_a[key], first_b[key])
        np.testing.assert_array_equal(second_a[key], second_b[key])
    assert not np.array_equal(first_a["observation"], second_a["observation"])
    assert losses_a["loss"] == pytest.approx(losses_b["loss"], rel=1e-5)


def test_resume_loads_nothing_twice_and_the_replay_keeps_its_cap(tmp_path):
    config = load_config("default", TINY_RUN + ["train.replay_in_memory=2", "train.seed_episodes=3"])
    logdir = str(tmp_path / "run")
    trainer = Trainer(logdir, config, progress=False)
    trainer.collect_seed_episodes()
    trainer._initialize()
    trainer.train_phase()
    assert trainer.replay.num_in_memory <= 2
    trainer.save()
    resumed = Trainer(logdir, None, progress=False)
    assert len(resumed.replay) == 3 and resumed.replay.num_in_memory == 0  # lazy: nothing loaded yet
    resumed.train_phase()
    assert resumed.updates == config.train.train_steps, "a finished phase of updates is not redone on resume"
    resumed.collect_episode()
    resumed.train_phase()
    assert resumed.replay.num_in_memory <= 2 and resumed.updates == 2 * config.train.train_steps
    assert load_checkpoint(os.path.join(logdir, "checkpoint.npz"))["episodes"] == 3
