"""PlaNet's training loop with a run directory that can always be resumed.

A run directory holds:
  config.yaml          the resolved config (a rerun must match it)
  episodes/            every episode, one ``.npz`` each, written atomically (the replay)
  checkpoint.npz       params, optimizer state, counters, PRNG key, replay-sampler state and where the loop is:
                       arrays and plain values only (`bayes_planet.checkpoint`), written atomically after every
                       phase (updates, collection, evaluation, reports); checkpoint.prev.npz is the one before
  .lock                held by the live trainer (`bayes_planet.files.RunLock`)
  metrics.jsonl        one JSON record per line: train / episode / eval / random
  tensorboard/         the same scalars for TensorBoard
  learning_curve.png   returns against env steps, redrawn at each evaluation
  videos/              the first evaluation episode of each evaluation, as MP4 (what the agent sees)
  held_out/            the evaluation episodes (never trained on), for the reports below
  openloop/            open-loop predictions at each evaluation: GIF, MP4, PNG strip, reward plot
  calibration/         at the end: reward calibration of open-loop predictions (JSON, reliability plot)
  probes/              at the end, with >= 3 held-out episodes: latent velocity probes (JSON, CSV, scatter)
  plancheck/           at the end, DeepMind Control only: the planner's choices against the true dynamics (JSON)
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
from bayes_planet.agents.agent import PlanetAgent
from bayes_planet.agents.rollout import random_policy, run_episode
from bayes_planet.agents.run import (
    CHECKPOINT_NAME,
    EPISODES,
    HELD_OUT,
    Run,
    example_batch,
    make_env,
    make_model,
    refuse_pickled_checkpoint,
)
from tqdm import tqdm

from bayes_planet import config as config_lib
from bayes_planet import envs, memory, parallel
from bayes_planet.checkpoint import is_finite, load_checkpoint, save_checkpoint
from bayes_planet.config import Config
from bayes_planet.errors import UsageError
from bayes_planet.files import RunLock, check_writable, remove_partial_files
from bayes_planet.logger import Logger, read_metrics
from bayes_planet.replay import Replay
from bayes_planet.viz import plot_learning_curve, write_video
from bayes_planet.world_model import make_optimizer, make_train_step

LOG = logging.getLogger(__name__)
BATCH_KEYS = ("observation", "action", "reward")
EVAL_SEED_OFFSET = 1_000_000  # evaluation episodes never share a seed with training episodes
REPORT_FOLDERS = ("videos", "openloop", "calibration", "probes", "plancheck")
PROBE_FIT_EPISODES = 15  # the replay's latest, collected with exploration noise: more diverse than evaluations
# where a run's wall-clock time goes, in seconds: env stepping and rendering (training and random episodes),
# the agent's planning (training episodes), updates, evaluation episodes, reports and plots, checkpoints
TIME_PHASES = ("env", "planning", "updates", "evaluation", "reports", "checkpoints")


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped `Trainer.run` (``signum``: which). ``forced``: a second signal stopped it at
    once, without a new checkpoint; ``saved``: whether a checkpoint was written on the way out."""

    def __init__(self, signum: int, forced: bool = False):
        super().__init__(f"stopped by {signal.Signals(signum).name}" + (" (second signal: at once)" if forced else ""))
        self.signum, self.forced, self.saved = signum, forced, False


class Diverged(RuntimeError):
    """Too many consecutive non-finite updates (``train.max_nonfinite_updates``)."""


def check_feasible(config: Config, env, logdir: str) -> None:
    """Refuse, before anything is written, what the config allows but the run could never do: chunks longer
    than an episode, episodes that end inside an action repeat, a training batch larger than this machine's
    memory, a run directory whose files' paths would be too long."""
    c = config.train
    frames = getattr(env.unwrapped, "max_episode_steps", None)
    if frames is not None and c.sequence_length > frames + 1:
        raise UsageError(f"config key 'train.sequence_length' ({c.sequence_length}) is longer than an episode of "
                         f"{config.env.task} with action repeat {env.unwrapped.action_repeat} ({frames + 1} frames): "
                         "lower it or the action repeat, or raise 'env.episode_steps'")
    episode_steps, repeat = getattr(env.unwrapped, "episode_steps", None), getattr(env.unwrapped, "action_repeat", 1)
    if config.env.episode_steps and episode_steps % repeat:  # env steps are counted as agent steps x repeat
        raise UsageError(f"config key 'env.episode_steps' ({episode_steps}) must be a multiple of the action repeat "
                         f"({repeat}) for {config.env.task}")
    batch_bytes = c.batch_size * c.sequence_length * int(np.prod(env.observation_space.shape)) * 4  # as float32
    memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if batch_bytes > memory_bytes:
        raise UsageError(f"config keys 'train.batch_size' x 'train.sequence_length' ({c.batch_size} x "
                         f"{c.sequence_length}): one batch of observations takes {batch_bytes / 2**30:.1f} GiB, more "
                         f"than this machine's {memory_bytes / 2**30:.1f} GiB")
    longest_file = len(os.path.abspath(logdir)) + len("/held_out/.tmp-000000000000.partial")
    if longest_file > os.pathconf("/", "PC_PATH_MAX") - 1 or \
            any(len(part) > os.pathconf("/", "PC_NAME_MAX") for part in os.path.abspath(logdir).split(os.sep)):
        raise UsageError(f"--logdir {logdir[:60]}... is too long a path for the run's files: use a shorter one")


def check_planner(config: Config) -> None:
    """Build the configured planner once, so that what only it checks (``top_k <= candidates``, ...) fails
    as bad input before a run directory is written."""
    from bayes_planet.agents.agent import make_planner

    try:
        make_planner(config)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _resume_with(logdir: str, stored: Config, overrides: Sequence[str]) -> Config:
    """The stored config with `overrides` applied, when every option they change may change on resume."""
    updated = config_lib.apply_overrides(stored, overrides)
    changed = config_lib.changes(stored, updated)
    fixed = [line for key, line in changed.items() if not config_lib.changeable_on_resume(key)]
    if fixed:
        raise UsageError(f"{logdir} holds a run whose {'; '.join(fixed)} cannot change (its checkpoint or replay "
                         f"depends on it); use a new --logdir. Options that may change on resume: "
                         f"{', '.join(config_lib.CHANGEABLE_ON_RESUME)}")
    if changed:
        check_planner(updated)
        config_lib.save_config(updated, os.path.join(logdir, "config.yaml"))
        LOG.warning("%s: resuming with %s", logdir, "; ".join(changed.values()))
    return updated


def _with_effective_action_repeat(config: Config) -> Config:
    """`config` with ``env.action_repeat`` 0 replaced by the task's default, so that a run recorded with 4 on
    cheetah-run resumes under a preset that says 0 (PlaNet's per task)."""
    repeat = envs.effective_action_repeat(config.env.task, config.env.action_repeat)
    return dataclasses.replace(config, env=dataclasses.replace(config.env, action_repeat=repeat))


def prepare_run(logdir: str, config: Config | str | None, overrides: Sequence[str] = ()) -> Config:
    """Create or reopen a run directory. A new run needs `config` (a `Config`, or a preset name or YAML path
    that `overrides` then apply to). An existing one keeps its own: a different
    `config` is refused with the options that differ, while `overrides` (``section.key=value``) are applied
    to it when they change only what may change on resume (`config.CHANGEABLE_ON_RESUME`: extend a finished
    run with a larger ``train.env_steps``, change the evaluation cadence, exploration or planner). Every
    check runs before anything is written."""
    path = os.path.join(logdir, "config.yaml")
    if isinstance(config, str):
        config = config_lib.load_config(config, overrides)
        overrides = ()
    if os.path.exists(path):
        stored = config_lib.read_run_config(path)
        check_writable(logdir)
        if config is not None and _with_effective_action_repeat(config) != _with_effective_action_repeat(stored):
            changed = "; ".join(config_lib.differences(stored, config))
            raise UsageError(f"{logdir} holds a run with a different config ({changed}); use a new --logdir, or "
                             "rerun without --config (--set alone changes what may change on resume)")
        return _resume_with(logdir, stored, overrides) if overrides else stored
    if config is None:
        raise UsageError(f"{logdir} holds no run (no config.yaml): start one with --config")
    if overrides:
        config = config_lib.apply_overrides(config, overrides)
    check_planner(config)
    try:
        env = make_env(config)  # an unknown task, or one that cannot render, fails here before anything is written
        env.reset(seed=0)
    except ValueError as error:
        raise UsageError(f"config key 'env.task': {error}") from None
    except gym.error.DependencyNotInstalled as error:
        raise UsageError(f"config key 'env.task': {error}") from None
    try:
        check_feasible(config, env, logdir)
    finally:
        env.close()
    try:
        os.makedirs(logdir, exist_ok=True)
        config_lib.save_config(config, path)
    except OSError as error:
        raise UsageError(f"cannot write the run directory {logdir!r}: {error.strerror}") from None
    return config


def episode_return(episode: dict[str, np.ndarray]) -> float:
    """Sum of an episode's rewards (`Episode.arrays` pads a zero reward before the first step)."""
    return float(np.sum(episode["reward"]))


def evaluation_record(returns: Sequence[float]) -> dict:
    """The ``eval`` record's values for evaluation episodes' `returns`: their mean, std, worst, best and
    every return."""
    return {"return": np.mean(returns), "return_std": np.std(returns), "return_min": np.min(returns),
            "return_max": np.max(returns), "returns": list(returns)}


def episode_seed(config: Config, index: int) -> int:
    """The env seed of a run's episode number ``index`` (distinct across run seeds for index < 100,003)."""
    return config.seed * 100_003 + index


class Trainer:
    """Owns one run: env, model, optimizer, replay, agent; `run()` trains until ``train.env_steps``."""

    def __init__(self, logdir: str, config: Config | str | None = None, progress: bool = True,
                 overrides: Sequence[str] = (), parent_pid: int | None = None):
        self.config = prepare_run(logdir, config, overrides)
        self.logdir, self.progress, self.parent_pid = logdir, progress, parent_pid
        c = self.config
        if c.parallel.distributed:
            jax.distributed.initialize()  # before anything touches a device
        self.mesh = parallel.device_mesh() if c.parallel.data else None
        if self.mesh is not None:
            parallel.check_divisible(c.train.batch_size, self.mesh, "train.batch_size")
        self.env = make_env(c)
        self.action_repeat = self.env.unwrapped.action_repeat if hasattr(self.env.unwrapped, "action_repeat") else 1
        self.model = make_model(c, self.env)
        self.optimizer = make_optimizer(c.train.learning_rate, c.train.adam_eps, c.train.grad_clip,
                                        c.train.warmup_steps)
        self.train_step = make_train_step(self.model, self.optimizer, self.mesh, donate=True)
        self._train_step_compiled = False  # compiled ahead of its first call, see `memory.compile_ahead`
        self.agent = PlanetAgent.from_config(self.model, c)
        self.replay = Replay(os.path.join(logdir, EPISODES), c.train.replay_in_memory or None)
        self.held_out = Replay(os.path.join(logdir, HELD_OUT), max_in_memory=8)
        self.logger = Logger(logdir)
        self.checkpoint_path = os.path.join(logdir, CHECKPOINT_NAME)
        self.params = self.opt_state = None
        self.updates = 0
        self.phase_updates = 0  # updates done towards the next collected episode (a stop may cut a phase short)
        self.evaluated_at = -1  # `replay.next_index` at the last completed evaluation
        self.finished = False  # the final reports are written: a rerun has nothing to do
        self.seconds = dict.fromkeys(TIME_PHASES, 0.0)  # summed over every session of the run (in the checkpoint)
        self.key = jax.random.PRNGKey(c.seed)
        self.sampler = np.random.default_rng(c.seed)
        self.nonfinite_streak = 0
        self._signal: int | None = None  # set by SIGINT / SIGTERM while `run` is running
        self._abandon_phase = False  # set when a collection beside the updates failed: they stop early
        self._second_signal: int | None = None  # a second one: stop at once
        self._restore()

    # ------------------------------------------------------------------------------------ state
    def _state(self) -> dict:
        """Everything a checkpoint holds (`params` and `opt_state` may be shape structs, for loading)."""
        return {"params": self.params, "opt_state": self.opt_state, "updates": self.updates, "key": self.key,
                "sampler": self.sampler.bit_generator.state, "episodes": self.replay.next_index,
                "phase_updates": self.phase_updates, "evaluated_at": self.evaluated_at, "finished": self.finished,
                "seconds": dict(self.seconds)}

    def _restore(self) -> None:
        refuse_pickled_checkpoint(self.logdir)
        params = jax.eval_shape(self.model.init, jax.random.PRNGKey(0), example_batch(self.env))  # no compile
        like = dict(self._state(), params=params, opt_state=jax.eval_shape(self.optimizer.init, params))
        saved = load_checkpoint(self.checkpoint_path, like)
        if saved is None:
            if len(self.replay) > self.config.train.seed_episodes:
                LOG.warning("no readable checkpoint in %s: the model starts from scratch on the %d episodes on disk",
                            self.logdir, len(self.replay))
            return
        self.params, self.opt_state, self.updates = saved["params"], saved["opt_state"], int(saved["updates"])
        self.key = saved["key"]
        self.sampler.bit_generator.state = saved["sampler"]
        # an episode collected after the checkpoint starts a new phase
        self.phase_updates = saved["phase_updates"] if saved["episodes"] == self.replay.next_index else 0
        self.evaluated_at, self.finished = saved["evaluated_at"], saved["finished"]
        self.seconds = {phase: float(saved["seconds"][phase]) for phase in TIME_PHASES}

    def _initialize(self) -> None:
        self.key, key_init = jax.random.split(self.key)
        self.params = self.model.init(key_init, example_batch(self.env))
        self.opt_state = self.optimizer.init(self.params)

    def as_run(self) -> Run:
        """The model as it is now, for the reports (`agents.run.Run`)."""
        return Run(self.config, self.model, self.params, self.updates, self.logdir)

    def save(self) -> bool:
        """Write the checkpoint; a model with a non-finite parameter is never written over a finite one (returns
        False, with a warning)."""
        if not is_finite(self.params):
            LOG.warning("not saving a model with non-finite parameters: %s keeps the last finite one",
                        self.checkpoint_path)
            return False
        with self._timed("checkpoints"):
            save_checkpoint(self.checkpoint_path, self._state())
        return True

    @contextlib.contextmanager
    def _timed(self, phase: str):
        """Add the wall-clock time spent inside to ``seconds[phase]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start

    @property
    def env_steps(self) -> int:
        """Environment steps taken so far: agent steps (frames after each reset) x action repeat, counting
        episodes set aside as damaged, so that steps never go backwards."""
        return (self.replay.steps_ever - self.replay.next_index) * self.action_repeat

    # ------------------------------------------------------------------------------------ phases
    def _rollout(self, policy, seed: int, description: str, env=None, timed: bool = True):
        """One episode; with `timed`, the time inside `policy` counts as planning and the rest as env."""
        env = env or self.env
        total = getattr(env.unwrapped, "max_episode_steps", None)

        def timed_policy(observation):
            with self._timed("planning"):
                return policy(observation)

        planning, start = self.seconds["planning"], time.perf_counter()
        with tqdm(total=total, desc=description, leave=False, disable=not self.progress) as bar:
            def on_step(reward, totals=[0.0]):  # noqa: B006  (running return for the bar)
                self._check_stop()
                totals[0] += reward
                bar.set_postfix(ret=f"{totals[0]:.1f}", refresh=False)
                bar.update(1)
            try:
                return run_episode(env, timed_policy if timed else policy, seed=seed, on_step=on_step)
            finally:
                if timed:
                    self.seconds["env"] += time.perf_counter() - start - (self.seconds["planning"] - planning)

    def collect_seed_episodes(self) -> None:
        """Fill the replay with uniform-random episodes up to ``train.seed_episodes`` (a resume adds only
        the missing ones), logging each as a ``random`` record."""
        while len(self.replay) < self.config.train.seed_episodes:
            index = self.replay.next_index  # never reused, so no two episodes share a seed
            seed = episode_seed(self.config, index)
            episode = self._rollout(random_policy(self.env.action_space, seed), seed, f"random episode {index}")
            self.replay.add(episode.arrays())
            self.logger.write("random", self.env_steps, {"return": episode.total_reward})

    def train_phase(self) -> dict[str, float]:
        """`train.train_steps` updates (fewer when a stop signal arrives). Updates with a non-finite loss or
        gradient are skipped and counted; `train.max_nonfinite_updates` in a row raise `Diverged`."""
        with self._timed("updates"):
            return self._train_phase()

    def _train_phase(self, show_progress: bool = True) -> dict[str, float]:
        c = self.config.train
        history, skipped, start = [], 0, time.perf_counter()
        with tqdm(range(c.train_steps - self.phase_updates), desc=f"train (update {self.updates})", leave=False,
                  disable=not (self.progress and show_progress)) as bar:
            for _ in bar:
                if self._signal is not None or self._abandon_phase:
                    break
                batch = {k: v for k, v in self.replay.sample(c.batch_size // jax.process_count(),
                                                              c.sequence_length, self.sampler).items()
                         if k in BATCH_KEYS}
                if self.mesh is not None:
                    batch = parallel.shard_batch(batch, self.mesh)
                self.key, key_step = jax.random.split(self.key)
                data_steps = np.float32(self.replay.num_steps)  # the ELBO's N (model.weight_kl_schedule)
                if not self._train_step_compiled:
                    memory.compile_ahead(self.train_step, self.params, self.opt_state, key_step, batch, data_steps)
                    self._train_step_compiled = True
                self.params, self.opt_state, metrics = self.train_step(self.params, self.opt_state, key_step, batch,
                                                                       data_steps)
                self.updates += 1
                self.phase_updates += 1
                if float(metrics["nonfinite"]):
                    skipped += 1
                    self.nonfinite_streak += 1
                    if self.nonfinite_streak >= c.max_nonfinite_updates:
                        self.logger.write("train", self.env_steps, {"nonfinite_updates": skipped,
                                                                     "updates": self.updates})
                        self.save()
                        raise Diverged(f"stopping: {self.nonfinite_streak} updates in a row had a non-finite loss "
                                       f"or gradient (each was skipped; train.max_nonfinite_updates="
                                       f"{c.max_nonfinite_updates}); the last finite model is in "
                                       f"{self.checkpoint_path}")
                    continue
                self.nonfinite_streak = 0
                history.append(metrics)
                if len(history) % 10 == 0:
                    bar.set_postfix(loss=f"{float(metrics['loss']):.2f}", refresh=False)
        means = {name: float(np.mean([float(m[name]) for m in history])) if history else float("nan")
                 for name in (history[0] if history else ["loss"])}
        if history or skipped:
            self.logger.write("train", self.env_steps, dict(means, nonfinite_updates=skipped, updates=self.updates,
                                                            seconds=time.perf_counter() - start))
        self._check_stop()
        return means

    def collect_episode(self) -> float:
        """One episode with the agent and ``train.exploration_noise``, stored in the replay; returns its return."""
        self.key, key_agent = jax.random.split(self.key)
        return self._store_episode(*self._collect(self.params, key_agent))

    def train_while_collecting(self) -> tuple[dict[str, float], float]:
        """``train.collect_while_training``: the phase's remaining updates in a second thread while this one
        collects the next episode with the model from before them. The episode is stored after the updates, so
        that they train on the episodes PlaNet's loop trains them on. Returns the phase's mean metrics
        (`train_phase`) and the episode's return. The time the updates run past the collection counts as
        ``updates`` (the ``train`` record's ``seconds`` is their own wall time)."""
        self.key, key_agent = jax.random.split(self.key)
        acting_params = jax.tree.map(jnp.copy, self.params)  # the updates donate the buffers of self.params
        outcome: dict = {}

        def update():
            try:
                outcome["means"] = self._train_phase(show_progress=False)
            except BaseException as error:  # re-raised by the calling thread, after the collection
                outcome["error"] = error

        updates = threading.Thread(target=update, name="updates", daemon=True)
        self._abandon_phase = False
        updates.start()
        try:
            collected = self._collect(acting_params, key_agent)
        except BaseException:
            self._abandon_phase = True  # a stop signal ends the updates by itself; any other error does here
            raise
        finally:
            waited_from = time.perf_counter()
            updates.join()
            self.seconds["updates"] += time.perf_counter() - waited_from
            self._abandon_phase = False
        if "error" in outcome:
            raise outcome["error"]
        return outcome["means"], self._store_episode(*collected)

    def _collect(self, params, key: jax.Array):
        """One episode with the agent acting on `params`, not yet stored; returns it and its wall seconds."""
        index = self.replay.next_index
        policy = self.agent.policy(params, key, self.config.train.exploration_noise)
        start = time.perf_counter()
        episode = self._rollout(policy, episode_seed(self.config, index), f"episode {index}")
        return episode, time.perf_counter() - start

    def _store_episode(self, episode, seconds: float) -> float:
        """Add a collected episode to the replay, start a new phase and log it; returns its return."""
        index = self.replay.next_index
        self.replay.add(episode.arrays())
        self.phase_updates = 0
        self.logger.write("episode", self.env_steps, {"return": episode.total_reward, "episode": index,
                                                       "seconds": seconds})
        return episode.total_reward

    def evaluate(self, episodes: int, video: str | None = None) -> list[dict[str, np.ndarray]]:
        """Run `episodes` episodes without exploration noise (a separate env instance) and keep them in
        ``held_out/`` (never trained on; the open-loop, probe and calibration reports read them). Returns the
        episodes as arrays (``reward[1:].sum()`` is the return); the first one's frames go to `video`."""
        env = make_env(self.config)
        collected = []
        first = self.replay.next_index * max(1, self.config.train.eval_episodes)  # the same after a rerun
        for index in range(episodes):
            number = first + index  # every evaluation episode gets its own env seed and planner key
            key = jax.random.fold_in(jax.random.PRNGKey(self.config.seed + EVAL_SEED_OFFSET), number)
            seed = EVAL_SEED_OFFSET + episode_seed(self.config, number)
            episode = self._rollout(self.agent.policy(self.params, key, 0.0), seed, f"eval {index}", env, timed=False)
            if video and index == 0 and self.config.model.observation == "pixels":
                write_video(video, episode.observations)
            arrays = episode.arrays()
            self.held_out.add(arrays)
            collected.append(arrays)
        return collected

    def evaluate_and_report(self) -> float:
        """Evaluate (`evaluate`), write the open-loop report, then log the ``eval`` record and redraw the
        learning curve: the record comes last, so a kill before it redoes the whole evaluation on the rerun."""
        name = f"{self.env_steps:08d}"
        video = os.path.join(self.logdir, "videos", f"eval-{name}.mp4")
        os.makedirs(os.path.dirname(video), exist_ok=True)
        with self._timed("evaluation"):
            episodes = self.evaluate(self.config.train.eval_episodes, video)
        returns = [episode_return(e) for e in episodes]
        with self._timed("reports"):
            if self.config.model.observation == "pixels":
                from bayes_planet.agents.reports import write_open_loop

                from bayes_planet.openloop import error_summary

                _, result = write_open_loop(self.as_run(), episodes, os.path.join(self.logdir, "openloop"),
                                            f"openloop-{name}")
                self.logger.write("openloop", self.env_steps, error_summary(result))
            self.logger.write("eval", self.env_steps, evaluation_record(returns))
            self.plot()
        return float(np.mean(returns))

    def write_final_reports(self, max_episodes: int = 6) -> None:
        """Reward calibration of the final model on the latest held-out episodes (``calibration/``), latent
        velocity probes fitted on the replay's latest `PROBE_FIT_EPISODES` and tested on those held-out
        episodes (``probes/``), and the plan check (``plancheck/``, one new episode; DeepMind Control only);
        summaries go to metrics.jsonl."""
        from bayes_planet.agents.reports import (
            calibration_report,
            plan_check_report,
            probe_report,
            write_calibration,
            write_json,
            write_probe_report,
        )

        episodes = self.held_out.latest(max_episodes)
        count = len(episodes)
        if count == 0 or self.params is None:
            return
        table = calibration_report(self.as_run(), episodes)
        write_calibration({self.logdir: table}, os.path.join(self.logdir, "calibration"))
        self.logger.write("calibration", self.env_steps, {
            "coverage_50": float(np.mean(table["coverage_50"])), "coverage_90": float(np.mean(table["coverage_90"])),
            "nll": float(np.mean(table["nll"])), "reward_std": table["reward_std"],
            **{f"{k}_by_horizon": table[k] for k in ("coverage_50", "coverage_90", "nll")}})
        self._check_stop()
        fit = self.replay.latest(PROBE_FIT_EPISODES)
        if len(fit) >= 2 and any(k in episodes[0] for k in ("velocity", "speed")):
            rows, scatter = probe_report(self.as_run(), fit, episodes)
            write_probe_report(rows, scatter, os.path.join(self.logdir, "probes"))
            # r2/<model>/<features> (the mean over targets), and r2/<model>/<features>/<target> for each
            r2 = {"/".join(["r2", r["model"], r["features"]] + ([] if r["target"] == "overall (mean)" else
                                                                 [r["target"]])).replace(" ", "_"): r["r2"]
                  for r in rows}
            self.logger.write("probe", self.env_steps, dict(r2, fit_episodes=len(fit), test_episodes=count))
        self._check_stop()
        try:
            check = plan_check_report(self.as_run(), seed=self.config.seed)
        except UsageError as error:  # not a DeepMind Control task, or a planner that keeps no action sequence
            self._say(f"plan check skipped: {error}")
        else:
            write_json(os.path.join(self.logdir, "plancheck", "plan_check.json"), {self.logdir: check})
            self.logger.write("plancheck", self.env_steps, {
                "episode_return": check["episode_return"], "states": len(check["states"]),
                **{name: values["mean"] for name, values in check["summary"].items()}})

    def last_eval_returns(self) -> list[float]:
        """Every episode's return in the latest evaluation in ``metrics.jsonl``; empty before the first."""
        evaluations = [r for r in read_metrics(self.logdir) if r["kind"] == "eval"]
        if not evaluations:
            return []
        return [float(r) for r in evaluations[-1].get("returns", [evaluations[-1]["return"]])]  # older runs: mean only

    def random_return(self) -> float:
        """The mean return of this run's random seed episodes: the random-policy reference on its task."""
        returns = [r["return"] for r in read_metrics(self.logdir) if r["kind"] == "random"]
        return float(np.mean(returns)) if returns else float("nan")

    def plot(self) -> None:
        """Write ``learning_curve.png``: training and evaluation returns against env steps, random as a line."""
        plot_learning_curve(read_metrics(self.logdir), os.path.join(self.logdir, "learning_curve.png"),
                            self.config.env.task, self.random_return())

    # ------------------------------------------------------------------------------------ loop
    def _check_stop(self) -> None:
        if self._signal is None and self.parent_pid is not None and os.getppid() != self.parent_pid:
            self._signal = signal.SIGHUP  # the process that started this run (a sweep) is gone: stop as on SIGHUP
        if self._signal is not None:
            raise Interrupted(self._signal)

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """While inside: SIGINT and SIGTERM only set a flag; the loop stops at the next step or update."""
        def request_stop(signum, frame):
            if self._signal is not None:  # a second signal: stop now, keeping the last checkpoint as it is
                # kept as well: raised inside a gc callback or a finalizer, this exception is swallowed
                self._second_signal = signum
                raise Interrupted(signum, forced=True)
            self._signal = signum

        previous = {number: signal.signal(number, request_stop) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def run(self) -> dict[str, float]:
        """Train until ``train.env_steps``, evaluate, write the final reports; returns the last evaluation's and
        the random policy's returns (``already_finished``: 1.0 when a rerun found nothing left to do).

        The run directory is locked while this runs (a second trainer gets a `RunInUse` error). A checkpoint is
        written after every phase, so a kill loses at most the phase in progress, and an evaluation or report
        that did not finish happens on the rerun. SIGINT / SIGTERM stop it at the next env step or update with
        a checkpoint written; a second signal stops it at once (`Interrupted`). With ``parent_pid``, the loss of
        that parent (e.g. a killed sweep) stops it the same way, reported as SIGHUP."""
        with RunLock(self.logdir), self._stop_on_signals():
            try:
                try:
                    return self._run()
                except Interrupted as stop:
                    if not stop.forced and self._second_signal is None:
                        stop.saved = self.params is not None and self.save()
                        if stop.saved:
                            self._write_time(finished=False)
                    raise
            except BaseException as error:
                if self._second_signal is not None and not (isinstance(error, Interrupted) and error.forced):
                    # the second signal's own exception was swallowed (a gc callback, a finalizer) or turned
                    # into another one by the code it landed in (e.g. inspect's TypeError): report the stop
                    raise Interrupted(self._second_signal, forced=True) from None
                raise
            finally:
                self.logger.close()

    def _write_time(self, finished: bool) -> None:
        """A ``time`` record: seconds per phase summed over every session of the run so far, their ``total``,
        and ``finished`` (0 when a stop signal ended this session; `compare` counts only finished runs)."""
        self.logger.write("time", self.env_steps, dict(self.seconds, total=sum(self.seconds.values()),
                                                       finished=float(finished)))

    def _say(self, line: str) -> None:
        """One line of progress: above the progress bars, or plain on stdout without them."""
        if self.progress:
            tqdm.write(line)
        else:
            print(line, flush=True)

    def _evaluation_due(self) -> bool:
        c = self.config.train
        evaluations = [r for r in read_metrics(self.logdir) if r["kind"] == "eval"]
        if evaluations and evaluations[-1]["step"] == self.env_steps:  # logged, then killed before the checkpoint
            self.evaluated_at = self.replay.next_index
        collected = self.replay.next_index - c.seed_episodes
        done = self.env_steps >= c.env_steps
        return (c.eval_episodes > 0 and self.evaluated_at != self.replay.next_index
                and (done or (collected > 0 and collected % c.eval_every == 0)))

    def _run(self) -> dict[str, float]:
        c = self.config.train
        if self.env_steps < c.env_steps:
            self.finished = False  # extended with a larger train.env_steps
        already_finished = self.finished
        for folder in (self.logdir, self.replay.directory, self.held_out.directory,
                       *(os.path.join(self.logdir, name) for name in REPORT_FOLDERS)):
            remove_partial_files(folder)  # left by a killed run (only the lock holder may remove them)
        self.collect_seed_episodes()
        if self.params is None:
            self._initialize()
            self.save()
        while True:
            if self._evaluation_due():
                eval_return = self.evaluate_and_report()
                self.evaluated_at = self.replay.next_index
                self.save()
                self._say(f"env steps {self.env_steps}  eval return {eval_return:.1f}")
            if self.env_steps >= c.env_steps:
                break
            loss_text = ""  # the phase may be done already (a stop during collection): no loss to show
            if self.phase_updates < c.train_steps and c.collect_while_training:
                means, episode_return = self.train_while_collecting()
                loss_text = f"  loss {means['loss']:.2f}"
            else:
                if self.phase_updates < c.train_steps:
                    loss_text = f"  loss {self.train_phase()['loss']:.2f}"
                    self.save()
                episode_return = self.collect_episode()
            self.save()
            self._say(f"episode {self.replay.next_index}  env steps {self.env_steps}  return {episode_return:.1f}"
                      f"{loss_text}  updates {self.updates}")
        if not self.finished:
            with self._timed("reports"):
                self.write_final_reports()
            self.finished = True
            self.save()
            self._write_time(finished=True)
            self._say("where the time went: " + ", ".join(
                f"{phase} {seconds / 60:.1f} min" for phase, seconds in self.seconds.items()))
        returns = self.last_eval_returns()  # read once: metrics.jsonl grows with the run
        return {"eval_return": float(np.mean(returns)) if returns else float("nan"), "eval_returns": returns,
                "random_return": self.random_return(),
                "already_finished": float(already_finished)}


def train(logdir: str, config: Config | str | None = None, progress: bool = True,
          overrides: Sequence[str] = (), parent_pid: int | None = None) -> dict[str, float]:
    """Train (or resume) the run in `logdir`; see `Trainer` and `prepare_run` (what `overrides` may change on
    an existing run); with `parent_pid`, stop (checkpointed) once that process is no longer this one's parent."""
    return Trainer(logdir, config, progress, overrides, parent_pid).run()


__all__ = ["Diverged", "Interrupted", "Trainer", "make_env", "make_model", "prepare_run", "train"]
