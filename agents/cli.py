"""The `bayes-planet` command line."""

from __future__ import annotations

import argparse
import errno
import os
import sys

import numpy as np

from bayes_planet.errors import UsageError


def _random(args: argparse.Namespace) -> int:
    from bayes_planet.agents.rollout import random_policy, run_episode
    from tqdm import tqdm

    from bayes_planet import envs
    from bayes_planet.viz import write_video

    _positive(args, "episodes")
    try:
        env = envs.make(args.task, seed=args.seed)
    except ValueError as error:
        raise UsageError(f"--task: {error}") from None
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--out {args.out}: cannot create the folder ({error.strerror})") from None
    returns = []
    for index in range(args.episodes):
        with tqdm(total=env.unwrapped.max_episode_steps if hasattr(env.unwrapped, "max_episode_steps")
                  else None, desc=f"episode {index}", leave=False) as bar:
            episode = run_episode(env, random_policy(env.action_space, args.seed + index),
                                  seed=args.seed + index, on_step=lambda r: bar.update(1))
        returns.append(episode.total_reward)
        if index == 0 and np.asarray(episode.observations[0]).ndim == 3:
            path = os.path.join(args.out, "random_episode.gif")
            write_video(path, episode.observations)
            print(f"video: {path}")
    print(f"random policy on {args.task}: return {np.mean(returns):.1f} +- {np.std(returns):.1f} "
          f"over {len(returns)} episodes")
    return 0


def _train(args: argparse.Namespace) -> int:
    from bayes_planet.agents.sweep import PARENT_PID_ENV
    from bayes_planet.agents.train import Diverged, Interrupted, train

    from bayes_planet.config import load_config
    from bayes_planet.files import DiskFull

    if os.path.exists(os.path.join(args.logdir, "config.yaml")) and args.config is None:
        config, overrides = None, args.set  # resume; --set changes what may change on resume
    else:
        config, overrides = load_config(args.config or "default", args.set), ()
    try:
        parent = os.environ.get(PARENT_PID_ENV)  # set by a sweep for the trainers it starts
        result = train(args.logdir, config, progress=not args.no_progress, overrides=overrides,
                       parent_pid=int(parent) if parent else None)
    except Interrupted as stop:
        if stop.saved:
            kept = "checkpoint saved"
        elif stop.forced:
            kept = "the last checkpoint and every finished episode are kept"
        else:
            kept = "no checkpoint yet (stopped before training began); the finished random episodes are kept"
        print(f"{args.logdir}: {stop}; {kept}; rerun the same command to resume", file=sys.stderr)
        return 128 + stop.signum
    except (Diverged, DiskFull) as error:
        print(f"bayes-planet: {error}", file=sys.stderr)
        return 1
    if result["already_finished"]:
        print(f"{args.logdir}: this run is finished; nothing to do")
    episodes = result["eval_returns"]
    print(f"{args.logdir}: evaluation return {result['eval_return']:.1f} (mean of {len(episodes)} episodes without "
          f"exploration noise: {' '.join(f'{r:.1f}' for r in episodes)}); random policy return "
          f"{result['random_return']:.1f} (mean of the seed episodes, same task)")
    print(f"learning curve: {os.path.join(args.logdir, 'learning_curve.png')}")
    return 0


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")


def _eval(args: argparse.Namespace) -> int:
    from bayes_planet.agents.run import load_run
    from bayes_planet.agents.train import episode_return, evaluation_record
    from tqdm import tqdm

    from bayes_planet.files import check_writable
    from bayes_planet.viz import write_video

    _positive(args, "episodes")
    if not 0.0 <= args.exploration_noise < float("inf"):
        raise UsageError(f"--exploration-noise must be a finite std >= 0, got {args.exploration_noise}")
    if args.record and os.path.realpath(args.record) == os.path.realpath(args.logdir):
        raise UsageError("--record must be a folder of its own, not the run directory (eval leaves the run as it was)")
    run = load_run(args.logdir, args.set)
    if args.record:
        os.makedirs(args.record, exist_ok=True)
        check_writable(args.record)
    steps = args.episodes * getattr(run.make_env().unwrapped, "max_episode_steps", 0)
    with tqdm(total=steps or None, desc="eval", leave=False, disable=args.no_progress) as bar:
        episodes = run.evaluate(args.episodes, args.seed, on_step=lambda reward: bar.update(1),
                                exploration_noise=args.exploration_noise)
    returns = [episode_return(e) for e in episodes]
    planner = f"planner {' '.join(args.set)}; " if args.set else ""
    noise = f"exploration noise {args.exploration_noise:g}" if args.exploration_noise else "no exploration noise"
    print(f"{run.config.env.task}: return {np.mean(returns):.1f} +- {np.std(returns):.1f} (worst {min(returns):.1f}) "
          f"over {len(returns)} episodes ({noise}, --seed {args.seed}; {planner}{run.updates} updates): "
          + " ".join(f"{r:.1f}" for r in returns))
    if args.record:
        from bayes_planet.config import save_config
        from bayes_planet.logger import Logger, read_metrics

        step = max((record["step"] for record in read_metrics(args.logdir)), default=0)
        save_config(run.config, os.path.join(args.record, "config.yaml"))
        logger = Logger(args.record)
        logger.write("eval", step, {**evaluation_record(returns), "updates": run.updates, "seed": args.seed,
                                    "exploration_noise": args.exploration_noise})
        logger.close()
        print(f"recorded as an evaluation at env step {step}: {os.path.join(args.record, 'metrics.jsonl')}")
    if args.video and run.config.model.observation == "pixels":
        video = os.path.join(args.logdir, "eval_episode.mp4")
        write_video(video, list(episodes[0]["observation"]))
        print(f"video of the first episode: {video}")
    return 0


def _openloop(args: argparse.Namespace) -> int:
    from bayes_planet.agents.reports import write_open_loop
    from bayes_planet.agents.run import load_run

    _positive(args, "episodes", "sequences", "context", "horizon")
    run = load_run(args.logdir)
    if run.config.model.observation != "pixels":
        raise UsageError("open-loop videos need a pixel model (model.observation=pixels)")
    paths, _ = write_open_loop(run, run.episodes(args.episodes), os.path.join(args.logdir, "openloop"),
                               "openloop", args.sequences, args.context, args.horizon, args.weight_samples)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    from bayes_planet.agents.reports import format_probe_table, probe_report, write_probe_report
    from bayes_planet.agents.run import load_run

    _positive(args, "episodes", "fit_episodes", "context", "horizon")
    run = load_run(args.logdir)
    rows, scatter = probe_report(run, run.training_episodes(args.fit_episodes), run.episodes(args.episodes),
                                 args.context, args.horizon)
    print(format_probe_table(rows))
    for kind, path in write_probe_report(rows, scatter, os.path.join(args.logdir, "probes")).items():
        print(f"{kind}: {path}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from bayes_planet.agents.reports import calibration_report, format_calibration_table, write_calibration
    from bayes_planet.agents.run import load_run

    _positive(args, "episodes", "horizon", "latent_samples")
    tables = {}
    for logdir in args.logdir:
        run = load_run(logdir)
        tables[logdir] = calibration_report(run, run.episodes(args.episodes), args.horizon, args.weight_samples,
                                            args.latent_samples)
    print(format_calibration_table(tables))
    for kind, path in write_calibration(tables, os.path.join(args.logdir[0], "calibration")).items():
        print(f"{kind}: {path}")
    return 0


def _plancheck(args: argparse.Namespace) -> int:
    from bayes_planet.agents.reports import format_plan_check, plan_check_report, write_json
    from bayes_planet.agents.run import load_run
    from tqdm import tqdm

    _positive(args, "states")
    if args.candidates < 3:
        raise UsageError(f"--candidates must be >= 3 (the plan, a perturbed and a random sequence), got "
                         f"{args.candidates}")
    if args.perturbation < 0:
        raise UsageError(f"--perturbation must be >= 0, got {args.perturbation}")
    reports = {}
    for logdir in args.logdir:
        run = load_run(logdir, args.set)
        steps = getattr(run.make_env().unwrapped, "max_episode_steps", None)
        with tqdm(total=steps, desc=f"plan check {logdir}", leave=False, disable=args.no_progress) as bar:
            reports[logdir] = plan_check_report(run, args.states, args.candidates, args.perturbation,
                                                args.weight_samples, args.seed, on_step=lambda: bar.update(1))
    print(format_plan_check(reports))
    path = os.path.join(args.logdir[0], "plancheck", "plan_check.json")
    write_json(path, reports)
    print(f"json: {path}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from bayes_planet.agents.sweep import SweepStopped, grid, parse_variant, ray_submitter, run_grid

    from bayes_planet.config import load_config, read_yaml

    if args.retries < 0:
        raise UsageError(f"--retries must be 0 or more, not {args.retries}")
    variants = dict(parse_variant(text) for text in args.variant)
    if args.variants:
        for name, overrides in read_yaml(args.variants).items():
            if not isinstance(overrides, dict):
                raise UsageError(f"{args.variants}: variant {name!r} must map section.key to a value")
            variants[str(name)] = [f"{key}={value}" for key, value in overrides.items()]
    variants = variants or {"default": []}
    runs = grid(args.out, args.config, args.tasks, variants, args.seeds, args.set)
    for run in runs:  # every config is checked before any run starts
        try:
            load_config(args.config, [*args.set, *variants[run.variant], f"env.task={run.task}", f"seed={run.seed}"])
        except UsageError as error:
            raise UsageError(f"{run.name}: {error}") from None
    submit = ray_submitter(args.ray) if args.ray else None
    print(f"sweep: {len(runs)} runs ({len(args.tasks)} tasks x {len(variants)} variants x {len(args.seeds)} seeds) "
          f"in {args.out}")
    try:
        outcome, stopped_by = run_grid(runs, args.workers, submit, progress=not args.no_progress,
                                       retries=args.retries), None
    except SweepStopped as stop:
        outcome, stopped_by = stop.outcome, stop
    print(f"sweep: {len(outcome['skipped'])} finished before, {len(outcome['finished'])} finished now, "
          f"{len(outcome['failed'])} failed" + (f", {len(outcome['stopped'])} stopped" if stopped_by else "")
          + "".join(f"\n  failed: {run.name} (log: {run.log})" for run in outcome["failed"]))
    if stopped_by:
        print(f"sweep: {stopped_by}; the running trainers checkpointed and stopped, the queued runs did not "
              "start; rerun the same command to resume")
        return 128 + stopped_by.signum
    if outcome["failed"]:
        print("rerun the same command to retry the failed runs (finished ones are skipped)")
    return 1 if outcome["failed"] else 0


def _collect(args: argparse.Namespace) -> int:
    from bayes_planet.agents.sweep import RESULT_FILES, collect_results

    outcome = collect_results(args.source, args.destination)
    for kind in ("copied", "unchanged", "unfinished"):
        for relative in outcome[kind]:
            print(f"{kind:<10} {relative}")
    print(f"collect: {' and '.join(RESULT_FILES)} of {len(outcome['copied'])} finished runs copied to "
          f"{args.destination}, {len(outcome['unchanged'])} already there, {len(outcome['unfinished'])} "
          "unfinished left out")
    return 0


def _compare(args: argparse.Namespace) -> int:
    import csv
    import io

    from bayes_planet.agents.compare import (
        BASELINES,
        aggregate_table,
        find_groups,
        plot_curves,
        plot_reports,
        plot_training,
        probe_table,
        published,
        published_table,
        reports_table,
        results_rows,
        results_table,
        runs_table,
        versus_table,
    )

    from bayes_planet.files import atomic_write

    groups = []
    for folder in args.folder:
        if not os.path.isdir(folder):
            raise UsageError(f"{folder} is not a folder")
        groups += find_groups(folder)
    if not groups:
        raise UsageError(f"{', '.join(args.folder)} holds no run (no metrics.jsonl below it)")
    steps = args.steps or sorted({100_000, 500_000, 1_000_000} | {group.last_step() for group in groups} - {0})
    rows = published({group.task for group in groups}, args.baselines or BASELINES)
    sections = [results_table(groups, steps)]
    if args.aggregate is not None:
        sections.append(versus_table(groups, args.aggregate, rows))
        sections.append(aggregate_table(groups, args.aggregate))
    if args.runs:
        sections.append(runs_table(groups, steps))
    if args.reports:
        sections += [reports_table(groups), probe_table(groups)]
    if rows:
        sections.append(published_table(rows))
    text = "\n\n".join(sections)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        command = " ".join(["bayes-planet compare", *args.folder, "--steps", *map(str, steps)]
                           + (["--aggregate", str(args.aggregate)] if args.aggregate is not None else [])
                           + (["--runs"] if args.runs else []) + (["--reports"] if args.reports else []))
        atomic_write(os.path.join(args.out, "results.md"), lambda h: h.write(f"`{command}`\n\n{text}\n".encode()))
        table = results_rows(groups, steps)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
        atomic_write(os.path.join(args.out, "results.csv"), lambda h: h.write(buffer.getvalue().encode()))
        plot_curves(groups, rows, os.path.join(args.out, "curves.png"))
        written = ["results.md", "results.csv", "curves.png"]
        if args.reports and plot_reports(groups, os.path.join(args.out, "reports.png")):
            written.append("reports.png")
        if args.runs and plot_training(groups, os.path.join(args.out, "training.png")):
            written.append("training.png")
        print(f"\nwritten: {', '.join(os.path.join(args.out, name) for name in written)}")
    return 0


def _planner_overrides_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="planner.KEY=VALUE",
                        help="plan differently with the trained model, e.g. --set planner.objective=risk_averse "
                             "--set planner.weight_samples=8 (planner keys only; repeatable)")


def _side_by_side_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a report that puts several runs side by side: repeatable --logdir, --weight-samples."""
    parser.add_argument("--logdir", required=True, action="append", help="run directory (repeatable)")
    parser.add_argument("--weight-samples", type=int, default=None,
                        help="K weight samples (default: the planner's K for a Bayesian model, 0 otherwise)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from bayes_planet.config import preset_names

    parser = argparse.ArgumentParser(prog="bayes-planet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train", help="train a Bayesian PlaNet agent (or resume the run in --logdir)",
        description="Train a Bayesian PlaNet agent from pixels. Rerunning the same command on the same "
                    "--logdir resumes the run where it stopped.")
    train.add_argument("--config", help=f"a preset ({', '.join(preset_names())}) or a YAML path; "
                                        "default: configs/default.yaml")
    train.add_argument("--logdir", required=True, help="run directory (config, checkpoint, episodes, logs, plots)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override an option, e.g. --set planner.objective=optimistic --set planner.beta=1.0")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.set_defaults(run=_train)
    evaluate = commands.add_parser(
        "eval", help="evaluate a run's latest checkpoint without exploration noise",
        description="Roll out --episodes episodes with the run's agent and no exploration noise (unless "
                    "--exploration-noise), from env seeds and planner keys fixed by --seed; print every return. "
                    "Read-only: the run directory is not changed (except for --video).")
    evaluate.add_argument("--logdir", required=True, help="run directory written by `bayes-planet train`")
    evaluate.add_argument("--episodes", type=int, default=10, help="number of episodes (default 10)")
    evaluate.add_argument("--seed", type=int, default=0,
                          help="evaluation seed: the same seed gives the same episodes and returns (default 0)")
    evaluate.add_argument("--video", action="store_true",
                          help="also write <logdir>/eval_episode.mp4 of the first episode")
    evaluate.add_argument("--exploration-noise", type=float, default=0.0, metavar="STD",
                          help="add N(0, STD^2) to every planned action, clipped to [-1, 1], as training does "
                               "(train.exploration_noise); default 0, the evaluation protocol")
    _planner_overrides_argument(evaluate)
    evaluate.add_argument("--record", default=None, metavar="FOLDER",
                          help="also append the evaluation to FOLDER/metrics.jsonl (at the run's last env step) "
                               "with FOLDER/config.yaml, laid out so `compare` can put planners side by side, "
                               "e.g. --record evals/cheetah-run/risk_averse/seed-0")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bars")
    evaluate.set_defaults(run=_eval)
    random = commands.add_parser("random", help="roll out a uniform random policy; print its return, save a GIF")
    random.add_argument("--task", default="dmc:cartpole-swingup", help="'dmc:<domain>-<task>' or a gymnasium id")
    random.add_argument("--episodes", type=int, default=1, help="number of episodes (default 1)")
    random.add_argument("--seed", type=int, default=0, help="seed of the env and the policy")
    random.add_argument("--out", default="runs/random", help="folder for the GIF")
    random.set_defaults(run=_random)
    openloop = commands.add_parser(
        "openloop", help="videos of the model imagining ahead from a few filtered frames",
        description="Filter --context frames of held-out episodes, imagine --horizon more with the true actions; "
                    "write <logdir>/openloop/openloop.{gif,mp4,png} (rows: truth, prediction, error and, for a "
                    "Bayesian model, the mean and per-pixel std over weight samples) and openloop-reward.png.")
    openloop.add_argument("--logdir", required=True, help="run directory written by `bayes-planet train`")
    openloop.add_argument("--episodes", type=int, default=2, help="held-out episodes to draw from (default 2; "
                          "topped up in memory with new agent episodes when <logdir>/held_out has fewer)")
    openloop.add_argument("--sequences", type=int, default=4, help="sequences side by side (default 4)")
    openloop.add_argument("--context", type=int, default=5, help="filtered frames (default 5)")
    openloop.add_argument("--horizon", type=int, default=45, help="imagined frames (default 45)")
    openloop.add_argument("--weight-samples", type=int, default=None,
                          help="K weight samples (default: the planner's K for a Bayesian model, 0 otherwise)")
    openloop.add_argument("--no-progress", action="store_true", help="no progress bars")
    openloop.set_defaults(run=_openloop)
    probe = commands.add_parser(
        "probe", help="decode the true velocities from latent states: held-out R² table and scatter plot",
        description="Ridge probes (strength by cross-validation over episodes) from latent features to every "
                    "velocity dimension (and cheetah's speed), for posterior and open-loop features, for the "
                    "trained model and a randomly initialized control; held-out R² per target. Writes "
                    "<logdir>/probes/probes.{json,csv} and probes_scatter.png.")
    probe.add_argument("--logdir", required=True, help="run directory written by `bayes-planet train`")
    probe.add_argument("--episodes", type=int, default=6,
                       help="evaluation episodes to test the probes on: the run's held-out ones, topped up with "
                            "new ones in memory (default 6)")
    probe.add_argument("--fit-episodes", type=int, default=15,
                       help="the replay's latest training episodes to fit the probes on (default 15)")
    probe.add_argument("--context", type=int, default=5, help="filtered frames before open-loop features")
    probe.add_argument("--horizon", type=int, default=45, help="imagined steps per open-loop window")
    probe.add_argument("--no-progress", action="store_true", help="no progress bars")
    probe.set_defaults(run=_probe)
    calibrate = commands.add_parser(
        "calibrate", help="calibration of open-loop reward predictions: NLL and interval coverage per horizon",
        description="For open-loop predicted rewards at horizons 1..--horizon on held-out episodes: the NLL of the "
                    "predictive mixture (weight samples x latent samples, each with the reward likelihood's std: "
                    "model.reward_noise, 1 for PlaNet's unit variance) and the "
                    "coverage of its central 50% and 90% intervals against nominal. Several --logdir (say a "
                    "Bayesian and a deterministic run) are reported side by side; files go to the first one's "
                    "calibration/.")
    _side_by_side_arguments(calibrate)
    calibrate.add_argument("--episodes", type=int, default=4, help="held-out episodes (default 4)")
    calibrate.add_argument("--horizon", type=int, default=12, help="open-loop steps (default 12)")
    calibrate.add_argument("--latent-samples", type=int, default=4, help="latent noise draws per weight sample")
    calibrate.set_defaults(run=_calibrate)
    plancheck = commands.add_parser(
        "plancheck", help="the planner's choices against the true dynamics, on a few states of a new episode",
        description="Along one new episode without exploration noise, at --states steps: the planner's plan and "
                    "--candidates minus 1 alternatives (half the plan perturbed, half uniform random) scored by the "
                    "world model (imagined return under K weight samples) and by the simulator from the same "
                    "state. Prints, mean +- std over states: the rank correlation of imagined and true returns, "
                    "the plan's percentile and regret in true return among the candidates, the regret of the "
                    "model's own top pick, the plan's imagined-minus-true return and its spread across weight "
                    "samples. DeepMind Control tasks only; files go to the first --logdir's plancheck/.")
    _side_by_side_arguments(plancheck)
    plancheck.add_argument("--states", type=int, default=8, help="planning states checked (default 8)")
    plancheck.add_argument("--candidates", type=int, default=64, help="sequences per state, the plan included")
    plancheck.add_argument("--perturbation", type=float, default=0.3, help="std of the plan's perturbations")
    plancheck.add_argument("--seed", type=int, default=0, help="env seed and keys of the episode (default 0)")
    _planner_overrides_argument(plancheck)
    plancheck.set_defaults(run=_plancheck)
    sweep = commands.add_parser(
        "sweep", help="train a grid of runs: tasks x variants x seeds, each its own run directory",
        description="Train every run of the grid as SWEEP/<task>/<variant>/seed-<n> (the usual run directory, with "
                    "its output in seed-<n>.log beside it). Rerunning the same command resumes unfinished runs "
                    "and skips finished ones; a failed run never stops the others.")
    sweep.add_argument("--out", required=True, help="the sweep folder")
    sweep.add_argument("--config", default="default", help="preset or YAML path for every run (default: default)")
    sweep.add_argument("--tasks", nargs="+", required=True, help="task ids, e.g. dmc:cartpole-swingup dmc:cheetah-run")
    sweep.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds (default 0)")
    sweep.add_argument("--variant", action="append", default=[], metavar="NAME[:KEY=VALUE,...]",
                       help="a variant and its overrides, e.g. det:model.transition=deterministic (repeatable)")
    sweep.add_argument("--variants", help="YAML file mapping variant names to {section.key: value} overrides")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override for every run")
    sweep.add_argument("--workers", type=int, default=1, help="runs at once on this machine (default 1)")
    sweep.add_argument("--ray", default=None, metavar="ADDRESS",
                       help="run on a Ray cluster ('auto' or an address; pip install 'bayes-planet[ray]')")
    sweep.add_argument("--retries", type=int, default=0,
                       help="start a failed run again up to this many times, resuming from its checkpoint "
                            "(e.g. after a crashed trainer; default 0)")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar")
    sweep.set_defaults(run=_sweep)
    collect = commands.add_parser(
        "collect", help="copy finished runs' config.yaml and metrics.jsonl into a results folder",
        description="For every finished run below SOURCE (e.g. a sweep folder), copy its config.yaml and "
                    "metrics.jsonl to the same relative path below DESTINATION, e.g. results/: what a benchmark "
                    "commits, never episodes, checkpoints or videos. Unfinished runs are listed and left out.")
    collect.add_argument("source", help="a folder of runs, e.g. runs/dmc100k")
    collect.add_argument("destination", help="the results folder, e.g. results/dmc100k")
    collect.set_defaults(run=_collect)
    compare = commands.add_parser(
        "compare", help="evaluation returns of many runs at env-step marks, next to published scores",
        description="Find every run below each FOLDER, laid out as <task>/<variant>/seed-<n>; print the evaluation "
                    "return at each --steps mark (mean +- std across seeds, the number of seeds, and each "
                    "seed's value), then the published scores for the same tasks with their sources.")
    compare.add_argument("folder", nargs="+", help="folders of runs, e.g. results/transition-fix")
    compare.add_argument("--steps", type=int, nargs="+", default=None,
                         help="env-step marks (default: 100k, 500k, 1M and the last step every run of a group reached)")
    compare.add_argument("--out", default=None, help="also write results.md, results.csv and curves.png here")
    compare.add_argument("--baselines", default=None, help="CSV of published scores (default: the shipped one)")
    compare.add_argument("--aggregate", type=int, default=None, metavar="STEP",
                         help="also, at env step STEP: ours next to PlaNet, Dreamer and DreamerV3's published scores "
                              "with the median minutes per run, and IQM, mean and median over tasks and seeds as "
                              "fractions of 1000 with 95%% bootstrap intervals "
                              "(rliable: pip install 'bayes-planet[analysis]')")
    compare.add_argument("--runs", action="store_true",
                         help="also one row per run: its return at each mark, its training episodes that scored "
                              "above 0, the mean, min and max of its last 20, and its minutes in all and per phase "
                              "(with --out, the training episodes' returns and how many scored, against env steps, "
                              "plotted in training.png)")
    compare.add_argument("--reports", action="store_true",
                         help="also the end-of-run reports: reward calibration, velocity-probe R² (per dimension "
                              "too), open-loop errors, the plan check and the last evaluation's worst "
                              "episode, mean +- std across seeds (with --out, plotted in reports.png)")
    compare.set_defaults(run=_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed command; bad input (`UsageError`) becomes one line on stderr and exit status 2."""
    try:
        return args.run(args)
    except UsageError as error:  # bad input; any other exception is a bug and keeps its traceback
        print(f"bayes-planet: error: {error}", file=sys.stderr)
        return 2
    except PermissionError as error:
        print(f"bayes-planet: error: {error.filename or ''}: {error.strerror}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        print(f"bayes-planet: {error.strerror or error}: {error.filename or ''}; free some space and rerun",
              file=sys.stderr)
        return 1


# `python -m` would put the working directory first on sys.path, and in a source checkout its
# `bayes_planet/` folder (which lacks the `agents` package mapped in at install) shadows the installed package
_RUN_INSTALLED_CLI = "import sys; sys.path = [p for p in sys.path if p]; from bayes_planet.agents.cli import run; run()"


def cli_argv(*args: str) -> list[str]:
    """``bayes-planet ARGS`` as an argv for a child process of this interpreter (as `sweep` starts its runs):
    the installed package's command, whatever folder the child starts in."""
    return [sys.executable, "-c", _RUN_INSTALLED_CLI, *args]


def run() -> None:
    """The ``bayes-planet`` command: `main` in a process whose malloc uses transparent huge pages
    (`bayes_planet.memory.restart_with_huge_pages`; ``GLIBC_TUNABLES=glibc.malloc.hugetlb=0`` opts out)."""
    from bayes_planet.memory import restart_with_huge_pages

    restart_with_huge_pages()
    sys.exit(main())


if __name__ == "__main__":
    run()
