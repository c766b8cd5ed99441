"""The `bayes-planet` command line, run as a user would."""

import csv
import os
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
from bayes_planet.agents.cli import cli_argv, main
from bayes_planet.agents.sweep import grid

from bayes_planet.config import load_config


def test_random_command_writes_a_video_and_prints_the_return(tmp_path, capsys):
    assert main(["random", "--task", "dmc:cartpole-swingup", "--out", str(tmp_path)]) == 0
    assert "random policy on dmc:cartpole-swingup: return" in capsys.readouterr().out
    assert (tmp_path / "random_episode.gif").stat().st_size > 1000


def test_bad_task_is_one_line_and_exit_code_2():
    result = subprocess.run(cli_argv("random", "--task", "dmc:foo-bar"), capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("bayes-planet: error: --task: unknown DeepMind Control")


def test_the_install_puts_nothing_generic_at_the_top_level(tmp_path):
    """agents/, envs/ and configs/ install under the package's namespace; run from a folder other than the
    repository's, so that only the installed package is found."""
    probe = ("import importlib.util as u; "
             "print([n for n in ('agents', 'envs', 'configs') if u.find_spec(n)]); "
             "import bayes_planet.agents.cli, bayes_planet.envs, bayes_planet.configs; print('ok')")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["[]", "ok"], result.stdout


def test_the_commands_a_sweep_starts_run_the_installed_package_from_a_folder_with_its_own_bayes_planet(tmp_path):
    """A sweep started in a source checkout: the checkout's `bayes_planet/` (here one that fails on import) must
    not shadow the installed package in the runs the sweep starts, as it would under ``python -m``."""
    shadow = tmp_path / "bayes_planet"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('the working directory shadowed the installed package')\n")
    [run] = grid(str(tmp_path / "sweep"), "quickstart", ["dmc:cartpole-swingup"], {"default": []}, [0])
    assert list(run.command) == cli_argv(*run.command[3:]) and "train" in run.command
    result = subprocess.run(cli_argv("random", "--help"), capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0 and "usage: bayes-planet random" in result.stdout, result.stderr[-2000:]


def test_compare_tabulates_the_committed_results_next_to_published_scores(tmp_path, capsys):
    from bayes_planet.agents.cli import main

    folder = os.path.join(os.path.dirname(__file__), "..", "results", "transition-fix")
    assert main(["compare", folder, "--steps", "25000", "45000", "65000"]) == 0
    out = capsys.readouterr().out
    # the three Bayesian cartpole seeds: 165/260/143, 124/205/274, 124/134/275 (mean, sample std, n)
    assert "| cartpole-swingup | reparameterization | 138 +- 24 (3) | 200 +- 63 (3) | 230 +- 76 (3) |" in out
    assert "| cartpole-swingup | 100k | PlaNet | curl2020 | 297 +- 39 |" in out
    out_dir = str(tmp_path / "compare")
    assert main(["compare", folder, "--steps", "65000", "--aggregate", "65000", "--reports", "--out", out_dir]) == 0
    printed = capsys.readouterr().out
    assert "| reparameterization | 3 x 1 | 0.230 [0.143, 0.275] |" in printed  # rliable's IQM
    assert "| task | variant | reward cover 50% |" in printed  # the end-of-run reports (--reports)
    # the versus table: the deterministic cheetah quickstart's `time` records give its median minutes (14.5,
    # 13.0 and 13.1 minutes)
    assert "| cheetah-run-quickstart | deterministic | - | - | - | - | 13.1 +- 4.7 (random) | 13 | - |" in printed
    with open(os.path.join(out_dir, "results.csv")) as handle:
        rows = {(r["task"], r["variant"]): r for r in csv.DictReader(handle)}
    bayes = rows[("cartpole-swingup", "reparameterization")]
    assert float(bayes["mean"]) == pytest.approx((142.5 + 274.0 + 274.6) / 3, abs=0.1) and bayes["seeds"] == "3"
    assert os.path.getsize(os.path.join(out_dir, "curves.png")) > 10_000
    assert os.path.getsize(os.path.join(out_dir, "reports.png")) > 10_000  # --reports: errors by horizon, probes
    assert "bayes-planet compare" in open(os.path.join(out_dir, "results.md")).read()
    assert main(["compare", os.path.dirname(__file__)]) == 2  # tests/ holds no run


def test_the_bayesian_study_is_regenerated_by_one_compare_command(tmp_path, capsys):
    """Issue 20: every table and plot of the transition-family study from its committed metrics."""
    from bayes_planet.agents.cli import main

    folder = os.path.join(os.path.dirname(__file__), "..", "results", "bayes")
    out_dir = str(tmp_path / "study")
    marks = ["19000", "25000", "45000", "65000"]  # cheetah's one mark, then cartpole's three
    assert main(["compare", folder, "--steps", *marks, "--reports", "--out", out_dir]) == 0
    printed = capsys.readouterr().out
    # returns (mean, sample std, seeds; each seed), the flipout and MC-dropout seeds 0-2 on cheetah
    assert "| cheetah-run-quickstart | flipout | 105 +- 24 (3) | - | - | - | 132/-/-/-; 87/-/-/-; 97/-/-/- |" in printed
    assert "| cheetah-run-quickstart | mc_dropout | 87 +- 16 (3) | - | - | - |" in printed
    # the second task: cartpole-swingup at 25k / 45k / 65k
    assert "| cartpole-swingup-quickstart | deterministic | - | 105 +- 24 (3) | 213 +- 38 (3) | 244 +- 65 (3) |" \
        in printed
    assert "| cartpole-swingup-quickstart | reparameterization | - | 123 +- 16 (3) | 170 +- 50 (3) | 215 +- 24 (3) |" \
        in printed
    # the cold posterior (T = 0.1, today's default): faster at 25k, two seeds dipping at 45k
    assert "| cartpole-swingup-quickstart | cold | - | 209 +- 26 (3) | 121 +- 109 (3) | 238 +- 33 (3) |" in printed
    for variant in ("deterministic", "reparameterization", "flipout", "mc_dropout"):
        rows = [line for line in printed.splitlines() if line.startswith(f"| cheetah-run-quickstart | {variant} |")]
        assert len(rows) == 2 + 10, variant  # returns, reports, and the probe of each of cheetah's 10 targets
    assert "| cheetah-run-quickstart | mc_dropout | rootx velocity (m/s) | 0.72 +- 0.16 (3) |" in printed
    for name in ("curves.png", "reports.png"):
        assert os.path.getsize(os.path.join(out_dir, name)) > 20_000, name


def test_compare_runs_gives_each_runs_training_episodes_and_where_its_time_went(capsys):
    """`--runs`: the per-run figures the README quotes for sparse tasks, from the committed metrics."""
    from bayes_planet.agents.cli import main

    folder = os.path.join(os.path.dirname(__file__), "..", "results", "dmc100k")
    assert main(["compare", folder, "--steps", "30000", "55000", "80000", "100000", "--runs"]) == 0
    printed = capsys.readouterr().out
    assert ("| task | variant | run | 30k | 55k | 80k | 100k | training episodes > 0 | last 20 training: mean (min to "
            "max) | minutes | minutes: env / planning / updates / evaluation / reports / checkpoints |") in printed
    # cup-catch with the collection beside the updates, seed 2: caught in one of 5 evaluation episodes at 30k
    # (967) and at 55k (773), in none after; 15 of its 95 training episodes scored
    assert ("| cup-catch | cold-cem8x75-overlap | seed-2 | 193 | 155 | 0 | 0 | 15 / 95 | 143 (0 to 957) | 64.3 | "
            "24.8 / 19.9 / 8.6 / 7.7 / 3.2 / 0.1 |") in printed
    assert "| cup-catch | cold-optimistic | seed-0 | 0 | 0 | 0 | 492 | 18 / 95 |" in printed


def test_compare_runs_plots_what_each_objective_found_while_training_on_the_sparse_study(tmp_path, capsys):
    """Issue 20, claim 4: from the committed sparse-objectives runs, the training episodes that scored so far
    against env steps (training.png), agreeing with the table's count."""
    from bayes_planet.agents.cli import main
    from bayes_planet.agents.compare import find_groups, training_curves

    folder = os.path.join(os.path.dirname(__file__), "..", "results", "bayes", "sparse-objectives")
    out_dir = str(tmp_path / "sparse")
    assert main(["compare", folder, "--steps", "100000", "--runs", "--out", out_dir]) == 0
    assert "| cartpole-swingup_sparse | mean | seed-0 | 0 | 31 / 95 |" in capsys.readouterr().out
    assert os.path.getsize(os.path.join(out_dir, "training.png")) > 20_000
    mean = next(group for group in find_groups(folder) if group.variant == "mean")
    steps, returns = mean.curve("training_returns")
    (mean_steps, moving_mean), scored = training_curves(steps, returns, window=10)
    assert steps[0] == 6000 and steps[-1] == 100_000 and returns.shape[1] == 95  # after the 5 seed episodes
    assert scored[0, -1] == 31 and np.all(np.diff(scored[0]) >= 0)
    assert mean_steps[0] == 15_000 and moving_mean.shape[1] == 86
    assert moving_mean[0, -1] == pytest.approx(np.mean(returns[0, -10:]))


def test_the_aggregate_table_gives_rliables_iqm_of_normalized_scores():
    from bayes_planet.agents.compare import Group, aggregate_table
    from rliable import metrics

    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 900, size=(5, 3))  # [seeds, tasks]
    groups = [Group(f"task-{t}", "v", {f"s{s}": {100_000: float(scores[s, t])} for s in range(5)}) for t in range(3)]
    row = aggregate_table(groups, 100_000, reps=200).splitlines()[2]
    assert row.startswith(f"| v | 5 x 3 | {metrics.aggregate_iqm(scores / 1000):.3f} [")
    assert f"| {metrics.aggregate_median(scores / 1000):.3f} [" in row


def test_the_versus_table_puts_ours_next_to_every_published_source_at_the_same_steps():
    from bayes_planet.agents.compare import Group, published, versus_table

    # run c was slowed by other jobs on the machine: the median minutes ignore it (the mean would say 46)
    group = Group("cartpole-swingup", "small", {"a": {100_000: 310.0}, "b": {100_000: 290.0}, "c": {100_000: 300.0}},
                  minutes={"a": 20.0, "b": 22.0, "c": 95.0})
    table = versus_table([group], 100_000, published(["cartpole-swingup"]))
    assert table.splitlines()[2] == ("| cartpole-swingup | small | 300 +- 10 (3) | 297 +- 39 (curl2020); 303 +- 71 "
                                     "(drq2021) | 326 +- 27 (curl2020) | 550 (dreamerv3) | 126.4 +- 56.3 (random) | "
                                     "22 | yes |")
    below = Group("cartpole-swingup", "small", {"a": {100_000: 250.0}})
    assert table.splitlines()[:2] == versus_table([below], 100_000, published(["cartpole-swingup"])).splitlines()[:2]
    assert versus_table([below], 100_000, published(["cartpole-swingup"])).endswith("| - | no |")
    never = Group("cup-catch", "small", {"a": {100_000: 0.0}})  # PlaNet's CURL row is 0, the random policy 34.2
    assert versus_table([never], 100_000, published(["cup-catch"])).endswith("| yes, below random |")


def test_a_sweep_runs_its_grid_survives_a_failed_run_and_resumes(tmp_path, capsys):
    """A real grid of tiny cartpole runs (random seed episodes only, so each is seconds): two variants x two
    seeds, one variant failing in every run; a rerun skips what finished and retries what failed."""
    from bayes_planet.agents.cli import main

    from bayes_planet.checkpoint import load_checkpoint

    out = str(tmp_path / "sweep")
    common = _tiny_sweep_options()
    args = ["sweep", "--out", out, "--tasks", "dmc:cartpole-swingup", "--seeds", "0", "1", "--workers", "2",
            "--variant", "mean:planner.objective=mean", "--variant", "broken:train.sequence_length=500",
            "--no-progress", *common]
    assert main(args) == 1
    printed = capsys.readouterr().out
    assert "0 finished before, 2 finished now, 2 failed" in printed
    assert "failed: cartpole-swingup/broken/seed-1" in printed
    assert "start  cartpole-swingup/mean/seed-0" in printed and "done   cartpole-swingup/mean/seed-0" in printed
    for seed in (0, 1):
        run = os.path.join(out, "cartpole-swingup", "mean", f"seed-{seed}")
        assert load_checkpoint(os.path.join(run, "checkpoint.npz"))["finished"]
        assert load_config(os.path.join(run, "config.yaml")).seed == seed
    assert "is longer than an episode" in open(os.path.join(out, "cartpole-swingup", "broken", "seed-0.log")).read()
    # each log names its command as a shell line that splits back into the command the sweep ran
    logged = next(line[2:] for line in open(os.path.join(out, "cartpole-swingup", "mean", "seed-0.log"))
                  if line.startswith("$ "))
    assert shlex.split(logged)[:4] == [*cli_argv(), "train"]
    # --retries: a failed run is started again (here it fails every time: its config is bad), and no more often
    assert main([*args, "--retries", "2"]) == 1
    printed = capsys.readouterr().out
    assert "2 finished before, 0 finished now, 2 failed" in printed
    assert "retry  cartpole-swingup/broken/seed-0  (exit 2" in printed and "retry 2 of 2" in printed
    broken_log = open(os.path.join(out, "cartpole-swingup", "broken", "seed-0.log")).read()
    assert broken_log.count("\n$ ") == 1 + 3  # the first sweep's start, then a start and two retries
    assert main([*args, "--retries", "-1"]) == 2

    # collect: the finished runs' config and metrics, laid out as compare reads them; nothing else
    partial = os.path.join(out, "cartpole-swingup", "partial", "seed-0")  # a run without its final checkpoint
    os.makedirs(partial)
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy(os.path.join(out, "cartpole-swingup", "mean", "seed-0", name), partial)
    results = str(tmp_path / "results")
    assert main(["collect", out, results]) == 0
    assert "2 finished runs copied" in capsys.readouterr().out
    copied = sorted(os.path.relpath(os.path.join(root, name), results)
                    for root, _, names in os.walk(results) for name in names)
    assert copied == [os.path.join("cartpole-swingup", "mean", f"seed-{s}", n)
                      for s in (0, 1) for n in ("config.yaml", "metrics.jsonl")]
    for name in copied:
        assert open(os.path.join(results, name), "rb").read() == open(os.path.join(out, name), "rb").read()
    assert main(["collect", out, results]) == 0
    printed = capsys.readouterr().out
    assert "0 finished runs copied" in printed and "unfinished cartpole-swingup/partial/seed-0" in printed
    assert main(["collect", out, os.path.join(out, "results")]) == 2
    assert main(["sweep", "--out", out, "--tasks", "dmc:cartpole-swingup", "--variant", "bad:planner.horizon=0"]) == 2


def _tiny_sweep_options():
    """--set options for tiny runs of the 2 random seed episodes only."""
    from conftest import EPISODE_ENV_STEPS, tiny_run_cli_options

    return tiny_run_cli_options(f"train.env_steps={2 * EPISODE_ENV_STEPS}", "train.eval_episodes=0")


def _sweep_args(out, *extra):
    return ["sweep", "--out", out, "--seeds", "0", "1", "--no-progress", *_tiny_sweep_options(), *extra]


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_redoing_finished_runs(tmp_path):
    """2 tasks x 2 seeds x 2 variants (tiny runs of random seed episodes); the sweep is killed (its process
    group, runs included) once some runs have finished, then rerun: it finishes all 8 and redoes none."""
    import signal
    import time

    from bayes_planet.agents.sweep import CHECKPOINT_NAME

    out = str(tmp_path / "sweep")
    args = _sweep_args(out, "--tasks", "dmc:cartpole-swingup", "dmc:pendulum-swingup", "--workers", "2",
                       "--variant", "a:planner.objective=mean", "--variant", "b:planner.objective=optimistic")
    command = cli_argv(*args)
    checkpoints = [os.path.join(out, task, variant, f"seed-{seed}", CHECKPOINT_NAME)
                   for task in ("cartpole-swingup", "pendulum-swingup") for variant in "ab" for seed in (0, 1)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and sum(map(os.path.exists, checkpoints)) < 3:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    _wait_until_unlocked([os.path.dirname(path) for path in checkpoints])  # its trainers stop on their own
    before = {path: os.path.getmtime(path) for path in checkpoints if os.path.exists(path)}
    from bayes_planet.agents.cli import main

    from bayes_planet.checkpoint import load_checkpoint

    finished_before = [p for p in before if load_checkpoint(p)["finished"]]
    assert main(args) == 0
    assert all(load_checkpoint(path)["finished"] for path in checkpoints), "all 8 runs finish"
    assert all(os.path.getmtime(path) == before[path] for path in finished_before), "finished runs are not redone"


def _wait_until_unlocked(folders, timeout=120.0):
    """Wait until no trainer holds any of these run folders (those that exist); fails after `timeout` s."""
    import time

    from bayes_planet.files import RunInUse, RunLock

    deadline = time.time() + timeout
    for folder in folders:
        while os.path.isdir(folder):
            try:
                with RunLock(folder):
                    break
            except RunInUse:
                assert time.time() < deadline, f"{folder} is still held by a trainer"
                time.sleep(0.2)


@pytest.mark.slow
def test_ctrl_c_stops_a_sweeps_trainer_once_with_a_checkpoint_and_a_killed_sweeps_trainer_stops_itself(tmp_path):
    """Ctrl-C (SIGINT to the sweep's process group, as a terminal sends it) reaches the running trainer once: it
    checkpoints and stops (not the second signal's stop at once) and the queued run never starts. On the rerun
    the sweep is killed (SIGKILL, its group): the orphaned trainer notices at its next step and stops the same
    way, releasing its run."""
    import signal
    import time

    from conftest import EPISODE_ENV_STEPS, tiny_run_cli_options

    out = str(tmp_path / "sweep")
    command = cli_argv("sweep", "--out", out, "--seeds", "0", "1", "--no-progress", "--tasks", "dmc:cartpole-swingup",
                       *tiny_run_cli_options(f"train.env_steps={8 * EPISODE_ENV_STEPS}", "train.eval_episodes=0"))
    first = os.path.join(out, "cartpole-swingup", "default", "seed-0")
    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not os.path.exists(os.path.join(first, "checkpoint.npz")):
        time.sleep(0.05)
    os.killpg(sweep.pid, signal.SIGINT)
    printed, _ = sweep.communicate(timeout=120)
    assert sweep.returncode == 128 + signal.SIGINT, printed[-2000:]
    assert "0 finished now, 0 failed, 2 stopped" in printed and "rerun the same command to resume" in printed
    log = open(first + ".log").read()
    assert "stopped by SIGINT; checkpoint saved" in log and "second signal" not in log, log[-2000:]
    assert "not started: the sweep was stopping" in open(first.replace("seed-0", "seed-1") + ".log").read()
    assert not os.path.exists(first.replace("seed-0", "seed-1"))

    sweep = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while time.time() < deadline and open(first + ".log").read().count("\n$ ") < 2:
        time.sleep(0.05)
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()
    stop = "stopped by SIGHUP; checkpoint saved; rerun the same command to resume"
    deadline = time.time() + 120
    while time.time() < deadline and not open(first + ".log").read().rstrip().endswith(stop):
        time.sleep(0.2)
    assert open(first + ".log").read().rstrip().endswith(stop), open(first + ".log").read()[-2000:]
    _wait_until_unlocked([first])


def test_the_ray_backend_runs_a_sweep_on_a_local_cluster(tmp_path):
    pytest.importorskip("ray", reason="the Ray backend is an extra: pip install 'bayes-planet[ray]'")
    import ray
    from bayes_planet.agents.cli import main

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        out = str(tmp_path / "sweep")
        assert main(_sweep_args(out, "--tasks", "dmc:cartpole-swingup", "--ray", "auto")) == 0
        assert len(os.listdir(os.path.join(out, "cartpole-swingup", "default"))) == 4  # 2 runs and their logs
    finally:
        ray.shutdown()
