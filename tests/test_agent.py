"""The agent end to end on a real DMC task: train, write the run directory, get killed, resume."""

import json
import os
import signal
import subprocess
import time

import imageio.v3 as iio
import jax
import numpy as np
import pytest
from bayes_planet.agents.cli import main
from bayes_planet.agents.train import TIME_PHASES, Trainer
from conftest import EPISODE_ENV_STEPS, TINY_RUN, tiny_run_cli_options, train_command

from bayes_planet.checkpoint import load_checkpoint
from bayes_planet.config import load_config
from bayes_planet.logger import read_metrics
from bayes_planet.viz import HEADER_HEIGHT, LABEL_WIDTH


def _records(logdir, kind):
    with open(os.path.join(logdir, "metrics.jsonl")) as handle:
        return [r for r in map(json.loads, handle) if r["kind"] == kind]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """2 random episodes, 3 updates, 1 collected episode, 1 evaluation: about a minute. It plans with
    bfloat16 matmuls (the resume test below plans with the default float32 ones)."""
    logdir = str(tmp_path_factory.mktemp("tiny") / "run")
    config = load_config("default", TINY_RUN + [f"train.env_steps={3 * EPISODE_ENV_STEPS}",
                                                "planner.matmul_dtype=bfloat16"])
    return logdir, Trainer(logdir, config, progress=False).run()


def test_training_run_writes_its_run_directory(tiny_run):
    logdir, result = tiny_run
    for name in ("config.yaml", "checkpoint.npz", "metrics.jsonl", "learning_curve.png", "tensorboard"):
        assert os.path.exists(os.path.join(logdir, name)), name
    assert load_config(os.path.join(logdir, "config.yaml")).planner.matmul_dtype == "bfloat16"
    assert os.listdir(os.path.join(logdir, "videos")) == [f"eval-{3 * EPISODE_ENV_STEPS:08d}.mp4"]
    assert len(os.listdir(os.path.join(logdir, "held_out"))) == 1  # the evaluation episode, never trained on
    openloop = sorted(os.listdir(os.path.join(logdir, "openloop")))
    assert openloop == [f"openloop-{3 * EPISODE_ENV_STEPS:08d}{s}" for s in ("-reward.png", ".gif", ".mp4", ".png")]
    (calibration,) = _records(logdir, "calibration")  # the final reports: calibration on the held-out episode
    assert 0 <= calibration["coverage_90"] <= 1 and np.isfinite(calibration["nll"])
    assert len(calibration["nll_by_horizon"]) == 12 and calibration["reward_std"] == 1.0
    assert os.path.exists(os.path.join(logdir, "calibration", "reliability.png"))
    (errors,) = _records(logdir, "openloop")  # the evaluation's open-loop errors, h = 1..45 after 5 frames
    assert len(errors["image_mse"]) == len(errors["reward_mse"]) == 45 and 0 < errors["image_mse"][0] < 0.25
    (probe,) = _records(logdir, "probe")  # fitted on the 3 replay episodes, tested on the held-out one
    assert (probe["fit_episodes"], probe["test_episodes"]) == (3, 1)
    assert {"r2/trained/posterior", "r2/trained/open_loop/slider_velocity_(m/s)"} <= set(probe)
    (plan,) = _records(logdir, "plancheck")  # the plan check: 8 states of one new episode
    assert plan["states"] == 8 and 0 <= plan["plan_percentile_far"] <= 1 and plan["true_range"] > 0
    assert os.path.exists(os.path.join(logdir, "plancheck", "plan_check.json"))

    from bayes_planet.agents.compare import find_groups, plot_reports, probe_table, reports_table
    groups = find_groups(os.path.dirname(logdir))
    assert f"| {calibration['coverage_50']:.2f} (1) | {calibration['coverage_90']:.2f} (1) |" in reports_table(groups)
    last_eval = _records(logdir, "eval")[-1]  # its worst episode is the last column but one
    assert reports_table(groups).endswith(f"| {plan['plan_percentile_far']:.2f} (1) | "
                                          f"{last_eval['return_min']:.0f} (1) | {last_eval['return_std']:.0f} (1) |")
    np.testing.assert_allclose(groups[0].report_series("openloop", "image_mse"), [errors["image_mse"]])
    assert plot_reports(groups, os.path.join(logdir, "reports.png"))
    assert f"| slider velocity (m/s) | {probe['r2/trained/posterior/slider_velocity_(m/s)']:.2f} (1) |" in \
        probe_table(groups)
    episodes = sorted(os.listdir(os.path.join(logdir, "episodes")))
    assert len(episodes) == 3 and all(e.endswith(".npz") for e in episodes)  # 2 random + 1 collected
    with np.load(os.path.join(logdir, "episodes", episodes[-1])) as data:
        assert data["observation"].shape == (51, 64, 64, 3) and data["observation"].dtype == np.uint8  # 50 steps
        assert data["velocity"].shape[0] == 51
    assert len(_records(logdir, "random")) == 2 and len(_records(logdir, "episode")) == 1
    (train,) = _records(logdir, "train")
    assert train["updates"] == 3 and np.isfinite(train["loss"])
    (evaluation,) = _records(logdir, "eval")
    assert evaluation["step"] == 3 * EPISODE_ENV_STEPS and result["eval_return"] == evaluation["return"]
    assert len(evaluation["returns"]) == 1 and evaluation["returns"][0] == pytest.approx(evaluation["return"])
    (spent,) = _records(logdir, "time")  # where the wall-clock time went, every phase measured
    assert all(spent[phase] > 0 for phase in ("env", "planning", "updates", "evaluation", "reports", "checkpoints"))
    assert spent["total"] == pytest.approx(sum(spent[p] for p in TIME_PHASES))
    records = read_metrics(logdir)
    assert all(a["wall_time"] <= b["wall_time"] for a, b in zip(records, records[1:], strict=False))
    assert result["random_return"] == pytest.approx(np.mean([r["return"] for r in _records(logdir, "random")]))
    saved = load_checkpoint(os.path.join(logdir, "checkpoint.npz"))
    assert saved["updates"] == 3 and saved["finished"] and saved["evaluated_at"] == 3


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint_with_the_same_counters(tmp_path):
    logdir = str(tmp_path / "run")
    overrides = tiny_run_cli_options(f"train.env_steps={4 * EPISODE_ENV_STEPS}")
    process = subprocess.Popen(train_command(logdir, *overrides), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = os.path.join(logdir, "checkpoint.npz")
    deadline, updates_at_kill = time.time() + 300, None
    # kill -9 as soon as the first collected episode is checkpointed (the run wants two)
    while time.time() < deadline and process.poll() is None and updates_at_kill != 3:
        time.sleep(0.1)
        if os.path.exists(checkpoint):  # written atomically: never seen half-written
            updates_at_kill = load_checkpoint(checkpoint)["updates"]
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert updates_at_kill == 3, "killed after the first collected episode's checkpoint"
    # the same command again: resumes, does not redo the random episodes or the first round of updates
    finished = subprocess.run(train_command(logdir, *overrides), capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert len(_records(logdir, "random")) == 2
    assert [r["updates"] for r in _records(logdir, "train")][-1] == 6
    assert len(os.listdir(os.path.join(logdir, "episodes"))) == 4
    last = _records(logdir, "eval")[-1]
    assert (f"evaluation return {last['return']:.1f} (mean of {len(last['returns'])} episodes without exploration "
            f"noise: {' '.join(f'{r:.1f}' for r in last['returns'])}); random policy return") in finished.stdout
    # a different config on the same run directory is refused, naming the option
    refused = subprocess.run(train_command(logdir, "--set", "model.deter_size=32"), capture_output=True, text=True)
    assert refused.returncode == 2 and "model.deter_size: 16 -> 32 cannot change" in refused.stderr


def test_report_commands_on_a_trained_run(tiny_run, capsys):
    logdir, _ = tiny_run
    common = ["--logdir", logdir, "--no-progress"]
    assert main(["openloop", *common, "--episodes", "1", "--sequences", "2", "--horizon", "20"]) == 0
    frames = iio.imread(os.path.join(logdir, "openloop", "openloop.gif"))
    assert frames.shape[0] == 25 and frames.shape[2] == LABEL_WIDTH + 2 * 66  # 5 context + 20 imagined; 2 sequences
    assert frames.shape[1] == HEADER_HEIGHT + 5 * 66  # truth, prediction, error, mean and std over 2 weight samples

    assert main(["probe", *common, "--episodes", "2", "--fit-episodes", "3", "--horizon", "20"]) == 0
    assert len(os.listdir(os.path.join(logdir, "held_out"))) == 1  # topped up in memory, the run left as it was
    with open(os.path.join(logdir, "probes", "probes.json")) as handle:
        rows = json.load(handle)
    assert {(r["model"], r["features"]) for r in rows} == {
        (m, f) for m in ("trained", "random init") for f in ("posterior", "open loop")}
    assert {r["target"] for r in rows} == {"slider velocity (m/s)", "hinge_1 angular velocity (rad/s)",
                                           "overall (mean)"}  # cart and pole, named from the physics
    assert {(r["fit_episodes"], r["test_episodes"]) for r in rows} == {(3, 2)}  # fitted on the replay's
    assert all(np.isfinite(r["r2"]) and r["r2"] <= 1 for r in rows)
    assert "held-out R²" in capsys.readouterr().out
    assert os.path.exists(os.path.join(logdir, "probes", "probes_scatter.png"))

    assert main(["calibrate", *common, "--episodes", "2", "--latent-samples", "2"]) == 0
    with open(os.path.join(logdir, "calibration", "calibration.json")) as handle:
        (table,) = json.load(handle).values()
    assert table["horizon"] == list(range(1, 13)) and table["weight_samples"] == 2
    assert all(0 <= c <= 1 for c in table["coverage_50"] + table["coverage_90"])
    assert "cover 90%" in capsys.readouterr().out

    assert main(["plancheck", *common, "--states", "3", "--candidates", "9", "--set", "planner.weight_samples=3"]) == 0
    with open(os.path.join(logdir, "plancheck", "plan_check.json")) as handle:
        (report,) = json.load(handle).values()
    assert [row["step"] for row in report["states"]] == [0, 23, 46]  # spread over the 50 steps, 4-step horizon
    assert report["weight_samples"] == report["planner"]["weight_samples"] == 3  # the run was trained with 2
    assert report["candidates"] == 9 and report["episode_return"] > 0
    for row in report["states"]:  # returns of 4 agent steps of cartpole: at most 8 x 4 env steps' rewards of 1
        assert 0 <= row["plan_true"] <= 32 and 0 <= row["plan_regret"] <= row["true_range"] <= 32
        assert (row["plan_regret"] == 0) == (row["plan_percentile"] == 1) and -1 <= row["rank_correlation"] <= 1
        assert row["plan_percentile"] == (4 * row["plan_percentile_near"] + 4 * row["plan_percentile_far"]) / 8
    assert "rank_correlation" in capsys.readouterr().out
    assert main(["plancheck", *common, "--candidates", "2"]) == 2
    assert "--candidates must be >= 3" in capsys.readouterr().err

    assert main(["probe", *common, "--fit-episodes", "1", "--episodes", "1"]) == 2
    assert "probes need at least 2 episodes to fit and 1 to test, got 1 and 1" in capsys.readouterr().err
    assert main(["openloop", "--logdir", os.path.join(logdir, "missing")]) == 2
    assert "holds no run" in capsys.readouterr().err


def _tree(folder):
    return {os.path.join(root, name): os.path.getmtime(os.path.join(root, name))
            for root, _, names in os.walk(folder) for name in names}


def test_load_run_acts_in_a_real_env_and_writes_nothing(tiny_run, capsys):
    from bayes_planet.agents.rollout import run_episode
    from bayes_planet.agents.run import load_run

    logdir, _ = tiny_run
    before = _tree(logdir)
    folders = [logdir, os.path.join(logdir, "held_out")]
    immutable = subprocess.run(["chattr", "+i", *folders], capture_output=True).returncode == 0
    try:  # where chattr works, not even root can write here: load_run needs no write access
        run = load_run(logdir)
        assert run.updates == 3 and run.config.planner.matmul_dtype == "bfloat16"
        episode = run_episode(run.make_env(seed=5), run.policy(), seed=5)
        assert len(episode.actions) == 50 and np.all(np.abs(np.asarray(episode.actions)) <= 1)
        assert len(run.held_out(4)) == 1 and len(run.episodes(2)) == 2
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", *folders], check=True)
    assert _tree(logdir) == before


def test_eval_with_a_seed_is_reproducible_and_leaves_the_run_unchanged(tiny_run, capsys, tmp_path):
    logdir, _ = tiny_run
    before = _tree(logdir)
    outputs = []
    for seed in (3, 3, 4):
        assert main(["eval", "--logdir", logdir, "--episodes", "2", "--seed", str(seed), "--no-progress"]) == 0
        outputs.append(capsys.readouterr().out.split("updates): ")[1])
    assert outputs[0] == outputs[1] != outputs[2]
    # the same episodes planned differently with the trained model: mean - 2 std across its 2 weight samples
    record = os.path.join(os.path.dirname(logdir), "evals", "cartpole", "risk_averse", "seed-0")
    assert main(["eval", "--logdir", logdir, "--episodes", "2", "--seed", "3", "--no-progress", "--record", record,
                 "--set", "planner.objective=risk_averse", "--set", "planner.beta=2"]) == 0
    printed = capsys.readouterr().out
    assert "planner planner.objective=risk_averse planner.beta=2;" in printed
    returns = [float(r) for r in printed.split("updates): ")[1].split("\n")[0].split()]
    assert printed.split("updates): ")[1] != outputs[0]
    from bayes_planet.agents.compare import find_groups  # the recorded evaluation, as `compare` reads it
    (group,) = find_groups(os.path.dirname(os.path.dirname(os.path.dirname(record))))
    assert (group.task, group.variant) == ("cartpole", "risk_averse")
    np.testing.assert_allclose(group.at(3 * EPISODE_ENV_STEPS), [np.mean(returns)], atol=0.06)
    np.testing.assert_allclose(group.report_values("eval", "return_min"), [min(returns)], atol=0.06)
    assert load_config(os.path.join(record, "config.yaml")).planner.objective == "risk_averse"
    from bayes_planet.agents.sweep import collect_results  # a recorded evaluation is collected like a run

    outcome = collect_results(os.path.dirname(logdir), str(tmp_path))
    assert outcome["copied"] == [os.path.relpath(record, os.path.dirname(logdir)), "run"]
    assert main(["eval", "--logdir", logdir, "--record", logdir]) == 2  # never into the run itself
    for override, message in (("model.deter_size=8", "only planner.* keys can change on a trained model"),
                              ("planner.top_k=1000", "top_k"), ("planner.beta=-1", "planner.beta")):
        assert main(["eval", "--logdir", logdir, "--no-progress", "--set", override]) == 2
        assert message in capsys.readouterr().err, override
    assert _tree(logdir) == before


def test_a_users_planner_named_in_the_config_trains_is_recorded_and_evaluates(tmp_path, capsys):
    from bayes_planet.agents.run import load_run
    from user_planner import ConstantActions

    logdir = str(tmp_path / "run")
    overrides = TINY_RUN + [f"train.env_steps={3 * EPISODE_ENV_STEPS}", "planner.name=user_planner:ConstantActions",
                            "planner.options.spread=0.5"]
    assert main(["train", "--logdir", logdir, "--no-progress", *[a for o in overrides for a in ("--set", o)]]) == 0
    stored = load_config(os.path.join(logdir, "config.yaml"))
    assert stored.planner.name == "user_planner:ConstantActions" and stored.planner.options == {"spread": 0.5}
    run = load_run(logdir)
    assert run.agent().planner == ConstantActions(horizon=4, candidates=16, spread=0.5)
    (episode,) = run.evaluate(1)
    assert 0 < np.max(np.abs(episode["action"])) <= 0.5, "without noise, actions lie in [-spread, spread]"
    (noisy,) = run.evaluate(1, exploration_noise=1.0)  # the same episode with training's noise, clipped
    assert np.max(np.abs(noisy["action"])) == 1.0
    assert main(["eval", "--logdir", logdir, "--episodes", "1", "--no-progress"]) == 0
    assert "(no exploration noise, --seed 0;" in capsys.readouterr().out
    assert main(["eval", "--logdir", logdir, "--episodes", "1", "--no-progress", "--exploration-noise", "0.3"]) == 0
    assert "(exploration noise 0.3, --seed 0;" in capsys.readouterr().out
    assert main(["eval", "--logdir", logdir, "--no-progress", "--exploration-noise", "-1"]) == 2
    assert "--exploration-noise must be a finite std >= 0, got -1.0" in capsys.readouterr().err
    assert main(["train", "--logdir", str(tmp_path / "bad"), "--no-progress", "--set",
                 "planner.name=user_planner:ConstantActions", "--set", "planner.options.sprad=1"]) == 2
    assert "'planner.options.sprad' is not a field of planner" in capsys.readouterr().err


def test_the_python_api_takes_a_preset_and_overrides(tmp_path):
    logdir = str(tmp_path / "run")
    trainer = Trainer(logdir, "default", progress=False, overrides=TINY_RUN)
    assert trainer.config == load_config("default", TINY_RUN)
    again = Trainer(logdir, "default", progress=False, overrides=TINY_RUN)  # the same call resumes the same run
    assert again.config == trainer.config


def _same_arrays(tree, other) -> bool:
    return all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(other), strict=True))


def test_collecting_while_training_acts_with_the_model_from_before_the_updates_and_trains_on_the_same_episodes(
        tmp_path):
    """`train.collect_while_training`: the episode is collected by the model the phase started from while the
    phase's updates run beside it; they sample only the episodes stored before it (as in PlaNet's loop), and
    the part of their time hidden behind the collection does not count as ``updates``."""
    config = load_config("default", TINY_RUN + [f"train.env_steps={4 * EPISODE_ENV_STEPS}", "train.train_steps=20",
                                                "train.eval_every=2", "train.collect_while_training=true"])
    logdir = str(tmp_path / "run")
    trainer = Trainer(logdir, config, progress=False)
    trainer.collect_seed_episodes()
    trainer._initialize()
    before = jax.tree.map(np.array, trainer.params)
    acting, sampled_from = [], []
    collect, sample = trainer._collect, trainer.replay.sample

    def recording_collect(params, key):
        acting.append(jax.tree.map(np.array, params))
        return collect(params, key)

    def recording_sample(*args):
        sampled_from.append(len(trainer.replay))
        return sample(*args)

    trainer._collect, trainer.replay.sample = recording_collect, recording_sample
    means, episode_return = trainer.train_while_collecting()
    assert np.isfinite(means["loss"]) and np.isfinite(episode_return)
    assert trainer.updates == 20 and trainer.phase_updates == 0 and len(trainer.replay) == 3
    assert sampled_from == [2] * 20  # the new episode was stored after the updates
    assert _same_arrays(acting[0], before) and not _same_arrays(trainer.params, before)
    trainer.save()
    result = trainer.run()  # the loop itself: one more phase beside one more episode, then the evaluation
    assert np.isfinite(result["eval_return"]) and len(acting) == 2 and sampled_from[20:] == [3] * 20
    assert [r["updates"] for r in _records(logdir, "train")] == [20, 40]
    assert [r["episode"] for r in _records(logdir, "episode")] == [2, 3]
    (time_record,) = _records(logdir, "time")
    assert time_record["updates"] < sum(r["seconds"] for r in _records(logdir, "train"))
