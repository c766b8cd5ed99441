"""A grid of runs, tasks x variants x seeds, each an ordinary run directory: ``SWEEP/<task>/<variant>/seed-<n>``.

Every run is the `bayes-planet train` command in its own process (its output in ``seed-<n>.log`` beside the
run directory), so every other command works on each run, a failed run never stops the others, and
rerunning the same sweep resumes the unfinished runs and skips the finished ones. `workers` runs go at once
on this machine; with Ray (``pip install 'bayes-planet[ray]'``) the runs spread over a cluster's machines
instead, writing to the same (shared) folder.

SIGINT or SIGTERM to a local sweep is passed on to its running trainers, which checkpoint and stop; queued
runs do not start, and rerunning the same command resumes them all (a second signal stops the trainers at
once, keeping their last checkpoints). A trainer whose sweep dies (even by SIGKILL) checkpoints and stops at
its next step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from bayes_planet.agents.cli import cli_argv

from bayes_planet.checkpoint import load_checkpoint
from bayes_planet.errors import UsageError
from bayes_planet.logger import read_metrics

CHECKPOINT_NAME = "checkpoint.npz"
PARENT_PID_ENV = "BAYES_PLANET_PARENT_PID"  # a trainer given this stops, checkpointed, once that parent is gone


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of the grid: where it lives and the command that trains (or resumes) it."""

    task: str
    variant: str
    seed: int
    logdir: str
    command: tuple[str, ...]

    @property
    def log(self) -> str:
        return self.logdir + ".log"

    @property
    def name(self) -> str:
        return f"{task_folder(self.task)}/{self.variant}/seed-{self.seed}"


def task_folder(task: str) -> str:
    """A folder name for a task id: ``dmc:cartpole-swingup`` -> ``cartpole-swingup``."""
    return task.removeprefix("dmc:").replace("/", "_").replace(":", "_")


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``"det:model.transition=deterministic,planner.horizon=8"`` -> ``("det", [overrides])``; a bare name
    means no overrides."""
    name, _, rest = text.partition(":")
    if not name or os.sep in name:
        raise UsageError(f"--variant {text!r} must look like NAME or NAME:section.key=value,section.key=value")
    overrides = [item.strip() for item in rest.split(",") if item.strip()]
    return name, overrides


def grid(folder: str, config: str, tasks: Sequence[str], variants: Mapping[str, Sequence[str]],
         seeds: Sequence[int], common: Sequence[str] = ()) -> list[RunSpec]:
    """Every run of the grid with its `bayes-planet train` command (`common` overrides first, then the
    variant's, then the task and seed)."""
    runs = []
    for task in tasks:
        for variant, overrides in variants.items():
            for seed in seeds:
                logdir = os.path.join(folder, task_folder(task), variant, f"seed-{seed}")
                sets = [*common, *overrides, f"env.task={task}", f"seed={seed}"]
                command = tuple(cli_argv("train", "--config", config, "--logdir", logdir, "--no-progress",
                                         *[arg for item in sets for arg in ("--set", item)]))
                runs.append(RunSpec(task, variant, seed, logdir, command))
    return runs


def is_finished(run: RunSpec | str) -> bool:
    """Whether the run's checkpoint (of a `RunSpec` or a run directory) says its final reports are written."""
    path = os.path.join(run if isinstance(run, str) else run.logdir, CHECKPOINT_NAME)
    return os.path.exists(path) and bool(load_checkpoint(path, False, subtree="finished"))


def is_recorded_evaluation(folder: str) -> bool:
    """Whether `folder` was written by ``eval --record``: no checkpoint, and only evaluation records in its
    `metrics.jsonl` (a training run logs its seed episodes before its first checkpoint)."""
    if os.path.exists(os.path.join(folder, CHECKPOINT_NAME)):
        return False
    kinds = {record["kind"] for record in read_metrics(folder)}
    return kinds == {"eval"}


RESULT_FILES = ("config.yaml", "metrics.jsonl")  # what a finished run leaves in a results folder


def _read_bytes(path: str) -> bytes | None:
    if not os.path.exists(path):
        return None
    with open(path, "rb") as handle:
        return handle.read()


def collect_results(source: str, destination: str) -> dict[str, list[str]]:
    """Copy `RESULT_FILES` of every finished run (or ``eval --record`` folder) below `source` to the same
    relative path below `destination` (so a sweep's ``<task>/<variant>/seed-<n>`` becomes a results folder
    that `compare` reads), never episodes, checkpoints or videos. Returns the runs' relative paths by outcome: copied,
    unchanged (already there, byte for byte), unfinished (left out)."""
    from bayes_planet.files import atomic_write

    source, destination = os.path.realpath(source), os.path.realpath(destination)
    if not os.path.isdir(source):
        raise UsageError(f"{source} is not a folder")
    if os.path.commonpath([source, destination]) == source:
        raise UsageError(f"the destination {destination} must not lie inside the source {source}")
    outcome: dict[str, list[str]] = {"copied": [], "unchanged": [], "unfinished": []}
    for root, folders, names in os.walk(source):
        folders.sort()
        if not set(RESULT_FILES) <= set(names):
            continue
        folders[:] = []  # a run directory holds no other run
        relative = os.path.relpath(root, source)
        if not (is_finished(root) or is_recorded_evaluation(root)):
            outcome["unfinished"].append(relative)
            continue
        target = os.path.join(destination, relative)
        contents = {name: _read_bytes(os.path.join(root, name)) for name in RESULT_FILES}
        if contents == {name: _read_bytes(os.path.join(target, name)) for name in RESULT_FILES}:
            outcome["unchanged"].append(relative)
            continue
        os.makedirs(target, exist_ok=True)
        for name, data in contents.items():
            atomic_write(os.path.join(target, name), lambda handle, data=data: handle.write(data))
        outcome["copied"].append(relative)
    return outcome


class SweepStopped(Exception):
    """SIGINT or SIGTERM stopped a local sweep once its running trainers had checkpointed and exited.
    ``outcome``: the runs by outcome as `run_grid` returns them, with ``"stopped"``: the runs interrupted or
    never started."""

    def __init__(self, signum: int, outcome: dict[str, list[RunSpec]]):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum, self.outcome = signum, outcome


class _Trainers:
    """The training processes a local sweep has running, and the stop signal it has passed on to them."""

    def __init__(self):
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self.signum: int | None = None

    def start(self, command: Sequence[str], stdout) -> subprocess.Popen | None:
        """Start `command` (None once a stop was requested: the run is left for the rerun)."""
        with self._lock:
            if self.signum is not None:
                return None
            # its own session: a terminal's Ctrl-C reaches the sweep alone, which passes it on once (a second
            # signal would stop the trainer at once); if the sweep dies, the trainer stops at its next step
            process = subprocess.Popen(list(command), stdout=stdout, stderr=subprocess.STDOUT,
                                       start_new_session=True, env={**os.environ, PARENT_PID_ENV: str(os.getpid())})
            self._running.add(process)
            return process

    def finished(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._running.discard(process)

    def stop(self, signum: int, frame=None) -> None:
        """A signal handler: pass `signum` on to every running trainer; queued runs will not start."""
        with self._lock:
            self.signum = signum if self.signum is None else self.signum
            for process in self._running:
                process.send_signal(signum)  # a no-op for one that has just exited

    @contextlib.contextmanager
    def stopping_on_signals(self):
        """While inside, SIGINT and SIGTERM call `stop` (only from the main thread, where Python delivers
        signals; elsewhere nothing changes)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {number: signal.signal(number, self.stop) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)


def train_one(command: Sequence[str], log: str, trainers: _Trainers | None = None) -> tuple[int | None, float]:
    """Run one training command with its output appended to `log`; returns its exit status (None: not started,
    the sweep was stopping) and its wall time in seconds (from its own start, not from when it was queued)."""
    os.makedirs(os.path.dirname(log) or ".", exist_ok=True)
    trainers = trainers or _Trainers()
    start = time.perf_counter()
    with open(log, "a") as handle:
        handle.write(f"\n$ {shlex.join(command)}\n")  # quoted: the command holds `-c` code
        handle.flush()
        process = trainers.start(command, handle)
        if process is None:
            handle.write("not started: the sweep was stopping\n")
            return None, 0.0
        try:
            status = process.wait()
        finally:
            trainers.finished(process)
    return status, time.perf_counter() - start


def run_grid(runs: Sequence[RunSpec], workers: int = 1, submit: Callable | None = None,
             say: Callable[[str], None] = print, progress: bool = True,
             retries: int = 0) -> dict[str, list[RunSpec]]:
    """Train every unfinished run of `runs`, `workers` at a time (or through `submit(command, log)`, which
    returns a future of `train_one`'s result, e.g. `ray_submitter`); returns the runs by outcome: finished
    before, finished now, failed (nonzero exit). A run that fails is started again up to `retries` times,
    resuming from its last checkpoint (a crashed trainer; a bad config fails every time).

    Run locally, a SIGINT or SIGTERM is passed on to the running trainers (each checkpoints and stops) and the
    queued runs are not started; once the trainers have exited this raises `SweepStopped`."""
    from tqdm import tqdm

    outcome: dict[str, list[RunSpec]] = {"skipped": [], "finished": [], "failed": [], "stopped": []}
    todo = []
    for run in runs:
        (outcome["skipped"] if is_finished(run) else todo).append(run)
    trainers = _Trainers()
    with contextlib.ExitStack() as stack:
        if not submit:
            stack.enter_context(trainers.stopping_on_signals())
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=max(1, workers)))
        bar = stack.enter_context(tqdm(total=len(runs), initial=len(outcome["skipped"]), desc="sweep",
                                       disable=not progress))
        futures = {}
        attempts = {run.name: 0 for run in todo}
        def start_and_train(run: RunSpec):
            if trainers.signum is None:
                say(f"start  {run.name}  (log: {run.log})")
            return train_one(run.command, run.log, trainers)

        def start(run: RunSpec):
            attempts[run.name] += 1
            if submit:  # the cluster starts it when it has room
                future = submit(run.command, run.log)
                say(f"queued {run.name}  (log: {run.log})")
            else:
                future = pool.submit(start_and_train, run)
            futures[future] = run

        for run in todo:
            start(run)
        while futures:
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            for future in done:
                run = futures.pop(future)
                try:
                    status, seconds = future.result()
                except Exception as error:  # a worker that died: the run failed, the others go on
                    status, seconds = f"{type(error).__name__}: {error}", 0.0
                minutes = seconds / 60
                if status == 0:
                    outcome["finished"].append(run)
                    say(f"done   {run.name}  ({minutes:.1f} min)")
                elif trainers.signum is not None and status in (None, 128 + trainers.signum, -trainers.signum):
                    outcome["stopped"].append(run)
                    if status is not None:
                        say(f"stopped {run.name}  ({minutes:.1f} min; log: {run.log})")
                elif attempts[run.name] <= retries and trainers.signum is None:
                    say(f"retry  {run.name}  (exit {status}, {minutes:.1f} min; retry {attempts[run.name]} of "
                        f"{retries}; log: {run.log})")
                    start(run)
                    continue
                else:
                    outcome["failed"].append(run)
                    say(f"FAILED {run.name}  (exit {status}, {minutes:.1f} min; log: {run.log})")
                bar.update(1)
    if trainers.signum is not None:
        raise SweepStopped(trainers.signum, outcome)
    return outcome


def ray_submitter(address: str) -> Callable:
    """`submit(command, log)` that runs each training command as a Ray task on the cluster at `address`
    (``"auto"``: the running one); the run folder must be on a filesystem every machine shares."""
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'bayes-planet[ray]'") from None
    ray.init(address=address, ignore_reinit_error=True)
    remote = ray.remote(num_cpus=1)(train_one)
    return lambda command, log: remote.remote(list(command), log).future()


__all__ = ["RESULT_FILES", "RunSpec", "SweepStopped", "collect_results", "grid", "is_finished",
           "parse_variant", "ray_submitter", "run_grid", "task_folder"]
