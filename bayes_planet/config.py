"""Typed configuration: dataclasses with PlaNet's defaults, YAML presets, dotted overrides, validation.

A run's config is ``Config(env, model, planner, train, seed)``. It is built from the defaults, then a
preset (``configs/<name>.yaml`` or a path), then ``section.key=value`` overrides; any unknown key, wrong
type or value out of range fails at once with a ValueError that names the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import math
import os
import typing
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from bayes_planet.bayes import LAYER_KINDS, PRIOR_SCALINGS
from bayes_planet.envs.dmc import EPISODE_ENV_STEPS
from bayes_planet.errors import UsageError
from bayes_planet.networks import CONV_ENGINES, REWARD_NOISE
from bayes_planet.objectives import OBJECTIVES
from bayes_planet.planners import base as planners_base
from bayes_planet.precision import MATMUL_DTYPES
from bayes_planet.world_model import FREE_NATS_SIDES, TRAIN_WEIGHTS, WEIGHT_KL_SCHEDULES, ModelConfig

PRESET_DIR = str(importlib.resources.files("bayes_planet.configs"))  # the repository's configs/, installed there


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """task: 'dmc:<domain>-<task>' or a gymnasium id. action_repeat: 0 means PlaNet's for the task.
    camera_id: -1 means the task's default camera (0 except quadruped). shadow_size: the side of the
    rendered shadow map in pixels (DeepMind Control only), 0 for the task's own (2048 in the suite).
    episode_steps: env steps per episode (DeepMind Control only, at most 1000), 0 for the suite's 1000."""

    task: str = "dmc:cheetah-run"
    action_repeat: int = 0
    camera_id: int = -1
    shadow_size: int = 0
    episode_steps: int = 0


@dataclasses.dataclass(frozen=True)
class PlannerConfig:
    """name: "cem", "random_shooting", "mppi" (`bayes_planet.planners.PLANNERS`) or the import path of a user's
    planner ("package.module:Class"). horizon, iterations, candidates, top_k, warm_start: the planners' common
    fields, passed to those that have them; options: any other field of the named planner (e.g.
    ``{temperature: 0.3}`` for MPPI), checked against its fields. objective: how returns under
    `weight_samples` transition samples are scored (see `bayes_planet.objectives`); weight_samples 0 plans
    with the posterior-mean weights.
    thompson_every: "plan" (a new sample per plan call) or "episode". matmul_dtype: "float32", or
    "bfloat16" for matmul inputs while scoring candidates (float32 results; a 1.5-1.8x faster CEM call on a
    CPU with AVX512-BF16, slower on one without), or "auto": bfloat16 on a CPU with bfloat16 instructions,
    float32 elsewhere (see `bayes_planet.precision`)."""

    name: str = "cem"
    horizon: int = planners_base.HORIZON
    iterations: int = planners_base.ITERATIONS
    candidates: int = planners_base.CANDIDATES
    top_k: int = planners_base.TOP_K
    warm_start: bool = False
    objective: str = "mean"
    weight_samples: int = 4
    beta: float = 1.0
    alpha: float = 0.1
    thompson_every: str = "plan"
    matmul_dtype: str = "float32"
    options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """PlaNet's loop: `seed_episodes` random episodes, then repeatedly `train_steps` updates on
    ``[batch_size, sequence_length]`` chunks and one collected episode, until `env_steps` env steps.
    Evaluation (no exploration noise) every `eval_every` collected episodes. replay_in_memory: how many
    episodes the replay keeps loaded (0: all). max_nonfinite_updates: consecutive updates with a
    non-finite loss or gradient (each one skipped) after which the run stops. collect_while_training: run
    each phase's updates in a second thread while the next episode is collected with the model from before
    them (PlaNet's loop collects with the updated model): env stepping and rendering use one core, so on a
    small CPU part of the updates' time is hidden; the updates still train on the same episodes."""

    env_steps: int = 1_000_000
    seed_episodes: int = 5
    train_steps: int = 100
    batch_size: int = 50
    sequence_length: int = 50
    learning_rate: float = 1e-3
    adam_eps: float = 1e-4
    grad_clip: float = 1000.0
    warmup_steps: int = 0
    exploration_noise: float = 0.3
    eval_every: int = 10
    eval_episodes: int = 1
    replay_in_memory: int = 0
    max_nonfinite_updates: int = 20
    collect_while_training: bool = False


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    """Sharding over JAX devices (`bayes_planet.parallel`). data: split each training batch over all
    devices (params replicated; the same update as on one device). candidates: split the planner's
    rollouts over this process's devices. distributed: call `jax.distributed.initialize()` first, so that
    `data` spans every host (each host then samples its share of `train.batch_size`)."""

    data: bool = False
    candidates: bool = False
    distributed: bool = False


@dataclasses.dataclass(frozen=True)
class Config:
    """A run's whole configuration: ``seed`` plus the env, model, planner and train sections (and
    parallel), read from a preset with `load_config` and written beside the run as ``config.yaml``."""

    seed: int = 0
    env: EnvConfig = dataclasses.field(default_factory=EnvConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    planner: PlannerConfig = dataclasses.field(default_factory=PlannerConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)


# what values are allowed, beyond the types: one table
CHOICES = {
    "model.observation": ("pixels", "state"),
    "model.conv_engine": CONV_ENGINES,
    "model.transition": LAYER_KINDS,
    "model.train_weights": TRAIN_WEIGHTS,
    "model.free_nats_side": FREE_NATS_SIDES,
    "model.prior_scaling": PRIOR_SCALINGS,
    "model.weight_kl_schedule": WEIGHT_KL_SCHEDULES,
    "model.reward_noise": REWARD_NOISE,
    "planner.objective": OBJECTIVES,
    "planner.thompson_every": ("plan", "episode"),
    "planner.matmul_dtype": MATMUL_DTYPES,
}
INT_MAX = 2**31 - 1  # array sizes and counters are int32 inside JAX
# integers are in [1, INT_MAX] and floats >= 0 unless listed here as (lowest, highest) with None for unbounded
RANGES = {
    "seed": (0, 42_000),  # env seeds are seed * 100_003 + episode index (< 2**32, dm_control's range)
    "env.action_repeat": (0, 1000),
    "env.camera_id": (-1, None),
    "env.shadow_size": (0, 16384),
    "env.episode_steps": (0, EPISODE_ENV_STEPS),
    "model.conv_chunk": (0, None),
    "model.image_bits": (1, 8),
    "model.dropout_rate": (0.0, 0.99),
    "model.prior_std": (1e-6, None),
    "model.posterior_std_init": (1e-6, None),
    "model.weight_kl_temperature": (1e-6, None),
    "model.reward_std": (1e-6, None),
    "planner.weight_samples": (0, None),
    "planner.alpha": (1e-6, 1.0),
    "planner.beta": (0, None),
    "train.warmup_steps": (0, None),
    "train.replay_in_memory": (0, None),
    "train.eval_episodes": (0, None),
    "train.seed_episodes": (1, None),
    "train.learning_rate": (1e-12, None),
}


def to_dict(config: Any) -> dict:
    """Nested plain dict of a config (what is written to YAML)."""
    return dataclasses.asdict(config)


def _fail(message: str) -> typing.NoReturn:
    raise UsageError(message)


def _as_float(value: Any) -> Any:
    """Numbers as people write them: ints, and strings such as ``1e-4`` that YAML 1.1 reads as text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def check_value(path: str, value: Any, kind: type) -> Any:
    """`value` for the option `path` of type `kind`, checked against its type, `CHOICES` and `RANGES` (ints
    widened to floats, numbers written as text read as numbers); raises a `UsageError` naming `path`."""
    if kind is float:
        value = _as_float(value)
        if isinstance(value, float) and not math.isfinite(value):
            _fail(f"config key {path!r} must be a finite number, got {value!r}")
    if kind is bool and not isinstance(value, bool) or kind is not bool and isinstance(value, bool) \
            or not isinstance(value, kind):
        _fail(f"config key {path!r} must be {kind.__name__}, got {value!r} ({type(value).__name__})")
    if path in CHOICES and value not in CHOICES[path]:
        _fail(f"config key {path!r} must be one of {CHOICES[path]}, got {value!r}")
    if kind in (int, float):
        low, high = RANGES.get(path, (1 if kind is int else 0.0, None))
        if (low is not None and value < low) or (high is not None and value > high):
            allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
            _fail(f"config key {path!r} must be {allowed}, got {value!r}")
        if kind is int and value > INT_MAX:
            _fail(f"config key {path!r} must be <= {INT_MAX}, got {value!r}")
    return value


def _build(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    if not isinstance(values, Mapping):
        _fail(f"config section {prefix.rstrip('.') or 'top level'!r} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [field.name for field in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
            _fail(f"unknown config key {prefix + str(key)!r}{hint}; allowed keys here: {', '.join(names)}")
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = _build(kind, value, f"{prefix}{key}.")
        else:
            kwargs[key] = check_value(prefix + key, value, kind)
    return cls(**kwargs)


def from_dict(values: Mapping[str, Any]) -> Config:
    """A validated `Config` from a nested dict; missing keys take their defaults."""
    config = _build(Config, values)
    for key in ("shadow_size", "episode_steps"):
        value = getattr(config.env, key)
        if value and not config.env.task.startswith(("dmc:", "dmc/")):
            _fail(f"config key 'env.{key}' ({value}) applies to DeepMind Control tasks ('dmc:<domain>-<task>') "
                  f"only; set it to 0 for {config.env.task!r}")
    if not config.model.reward_std > config.model.reward_min_std:
        _fail(f"config key 'model.reward_std' ({config.model.reward_std}) must be above 'model.reward_min_std' "
              f"({config.model.reward_min_std}), the lower bound of a trainable reward std")
    return config


def _merge(base: dict, update: Mapping[str, Any]) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def preset_names() -> list[str]:
    """The presets shipped in ``configs/`` (file names without ``.yaml``)."""
    return sorted(name[:-5] for name in os.listdir(PRESET_DIR) if name.endswith(".yaml"))


def read_yaml(path_or_preset: str) -> dict:
    """The mapping in a preset's YAML file (by name, e.g. ``cheetah_run``, or by path)."""
    path = path_or_preset
    if not os.path.exists(path):
        path = os.path.join(PRESET_DIR, f"{path_or_preset}.yaml")
        if not os.path.exists(path):
            _fail(f"unknown config {path_or_preset!r}: use a YAML path or one of {', '.join(preset_names())}")
    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle)
    except IsADirectoryError:
        _fail(f"config file {path} is a directory, not a YAML file")
    except (OSError, UnicodeDecodeError) as error:
        _fail(f"cannot read config file {path}: {getattr(error, 'strerror', None) or error}")
    except yaml.YAMLError as error:
        _fail(f"config file {path} is not valid YAML ({_yaml_problem(error)})")
    values = {} if values is None else values
    if not isinstance(values, Mapping):
        _fail(f"config file {path} must hold a mapping, got {type(values).__name__}")
    return values


def _yaml_problem(error: yaml.YAMLError) -> str:
    """One line from a YAML error: what went wrong and where."""
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(error, 'problem', None) or type(error).__name__}{where}"


def parse_override(text: str) -> dict:
    """``"planner.beta=1.0"`` -> ``{"planner": {"beta": 1.0}}`` (the value is parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        _fail(f"override {text!r} must look like section.key=value (e.g. planner.objective=optimistic)")
    try:
        value: Any = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        _fail(f"override {text!r}: the value is not valid YAML ({_yaml_problem(error)}); quote it if it is text")
    return _nested(key.strip(), value)


def _nested(dotted_key: str, value: Any) -> dict:
    """``("planner.beta", 1.0)`` -> ``{"planner": {"beta": 1.0}}``."""
    for part in reversed(dotted_key.split(".")):
        value = {part: value}
    return value


def load_config(preset: str | None = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults, then the preset (name or path; ``default`` is the defaults), then the overrides."""
    values = to_dict(Config())
    if preset is not None:
        values = _merge(values, read_yaml(preset))
    for override in overrides:
        values = _merge(values, parse_override(override))
    return from_dict(values)


def _flat(values: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def changes(old: Config, new: Config) -> dict[str, str]:
    """Dotted keys whose values differ, each with ``key: old -> new``."""
    old_flat, new_flat = dict(_flat(to_dict(old))), dict(_flat(to_dict(new)))
    return {key: f"{key}: {old_flat[key]!r} -> {new_flat[key]!r}" for key in old_flat
            if old_flat[key] != new_flat[key]}


def differences(old: Config, new: Config) -> list[str]:
    """Dotted keys whose values differ, as ``key: old -> new``."""
    return list(changes(old, new).values())


# What a run may change when it resumes: how long it runs, how it evaluates, explores and plans, and the
# shadow map's size (its frames differ by under one 5-bit level). Nothing here shapes the checkpoint or the
# replay. (A key ending in "." names a whole section.)
CHANGEABLE_ON_RESUME = ("env.shadow_size", "train.env_steps", "train.eval_every", "train.eval_episodes",
                        "train.exploration_noise", "train.max_nonfinite_updates", "train.replay_in_memory",
                        "train.collect_while_training",
                        "planner.", "parallel.candidates")


def changeable_on_resume(key: str) -> bool:
    """Whether an override of dotted ``key`` may differ from a run's stored config when it is resumed."""
    return any(key == allowed or (allowed.endswith(".") and key.startswith(allowed))
               for allowed in CHANGEABLE_ON_RESUME)


def apply_overrides(config: Config, overrides: Iterable[str]) -> Config:
    """`config` with ``section.key=value`` overrides applied (validated like `load_config`)."""
    values = to_dict(config)
    for override in overrides:
        values = _merge(values, parse_override(override))
    return from_dict(values)


# Options added after runs were first recorded whose default is not what a run without the key did: a stored
# config that lacks one gets the value it was trained with, not today's default (a resumed run keeps its
# objective). Keys added with a default that matches the old behaviour need no entry.
BEFORE_THE_KEY_EXISTED = {
    "model.weight_kl_schedule": "constant",  # issue 17 added the ELBO schedule and made it the default
    "model.weight_kl_temperature": 1.0,  # the ELBO's weight; 0.1 (a cold posterior) is the default since issue 20
}


def read_run_config(path: str) -> Config:
    """A run's stored ``config.yaml`` as a validated `Config`. Keys it lacks take today's defaults, except those
    of `BEFORE_THE_KEY_EXISTED`, which take the value that reproduces the run as it was trained. Raises a
    `UsageError` naming the file when it is empty, damaged or invalid."""
    values = read_yaml(path)
    if not values:
        raise UsageError(f"{path} is empty or damaged: restore it, or start a new run with a new --logdir")
    stored_keys = {key for key, _ in _flat(values)}
    for key, value in BEFORE_THE_KEY_EXISTED.items():
        if key not in stored_keys:
            values = _merge(values, _nested(key, value))
    try:
        return from_dict(values)
    except UsageError as error:
        raise UsageError(f"{path}: {error}") from None


def save_config(config: Config, path: str) -> None:
    """Write ``config`` as YAML to ``path`` atomically (a kill leaves the old file or the new one)."""
    from bayes_planet.files import atomic_write

    atomic_write(path, lambda handle: handle.write(yaml.safe_dump(to_dict(config), sort_keys=False).encode()))
