"""Typed config: presets, overrides, and one clear message for each kind of bad value."""

import dataclasses

import pytest
import yaml

from bayes_planet import config as config_lib
from bayes_planet.config import Config, load_config, preset_names


def test_default_yaml_lists_every_option_with_the_dataclass_defaults():
    with open(f"{config_lib.PRESET_DIR}/default.yaml") as handle:
        assert yaml.safe_load(handle) == config_lib.to_dict(Config())
    assert load_config("default") == Config()


def test_every_preset_loads_and_task_presets_use_planets_action_repeat():
    repeats = {"cartpole_swingup": 8, "reacher_easy": 4, "cheetah_run": 4, "finger_spin": 2, "cup_catch": 4,
               "walker_walk": 2}
    assert set(repeats) | {"default", "quickstart"} <= set(preset_names())
    for name in preset_names():
        config = load_config(name)
        if name in repeats:
            assert config.env.action_repeat == repeats[name]
            assert config.env.task == "dmc:" + name.replace("_", "-")
            assert config.model == Config().model and config.train == Config().train  # PlaNet's defaults


def test_overrides_are_typed_and_nested():
    config = load_config("cheetah_run", ["planner.objective=optimistic", "planner.beta=0.5", "train.batch_size=8",
                                         "model.transition=flipout", "planner.warm_start=true", "seed=3"])
    assert (config.planner.objective, config.planner.beta, config.train.batch_size) == ("optimistic", 0.5, 8)
    assert config.model.transition == "flipout" and config.planner.warm_start is True and config.seed == 3
    assert load_config(None, ["train.learning_rate=1"]).train.learning_rate == 1.0  # int accepted for float
    assert config_lib.differences(Config(), config)[0] == "seed: 0 -> 3"


@pytest.mark.parametrize("override,message", [
    ("planner.horizn=12", r"unknown config key 'planner.horizn' \(did you mean 'planner.horizon'\?\)"),
    ("trian.batch_size=4", "unknown config key 'trian'"),
    ("train.batch_size=big", r"config key 'train.batch_size' must be int, got 'big' \(str\)"),
    ("train.batch_size=2.5", "config key 'train.batch_size' must be int"),
    ("planner.warm_start=1", "config key 'planner.warm_start' must be bool"),
    ("planner.horizon=0", "config key 'planner.horizon' must be >= 1, got 0"),
    ("model.deter_size=-5", "config key 'model.deter_size' must be >= 1, got -5"),
    ("train.exploration_noise=-0.1", "config key 'train.exploration_noise' must be >= 0.0"),
    ("planner.alpha=2", r"config key 'planner.alpha' must be in \[1e-06, 1.0\], got 2.0"),
    ("planner.objective=greedy", r"config key 'planner.objective' must be one of \('mean', 'optimistic'"),
    ("model.transition=bayes", r"config key 'model.transition' must be one of \('deterministic'"),
    ("planner.matmul_dtype=float16",
     r"config key 'planner.matmul_dtype' must be one of \('float32', 'bfloat16', 'auto'\)"),
    ("model.weight_kl_temperature=0", "config key 'model.weight_kl_temperature' must be >= 1e-06, got 0"),
    ("model.prior_scaling=fan_out", r"config key 'model.prior_scaling' must be one of \('none', 'fan_in'\)"),
    ("env.shadow_size=-1", r"config key 'env.shadow_size' must be in \[0, 16384\], got -1"),
    ("planner=3", "config section 'planner' must be a mapping"),
    ("batch_size", "override 'batch_size' must look like section.key=value"),
])
def test_bad_values_fail_with_a_message_naming_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_a_shadow_size_for_a_gymnasium_task_is_refused():
    with pytest.raises(ValueError, match=r"config key 'env.shadow_size' \(512\) applies to DeepMind Control tasks"):
        load_config(None, ["env.task=Pendulum-v1", "env.shadow_size=512"])
    assert load_config(None, ["env.task=dmc:walker-walk", "env.shadow_size=512"]).env.shadow_size == 512


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match="unknown config 'cheetah'.*cheetah_run"):
        load_config("cheetah")


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().seed = 1


def test_a_stored_config_without_a_later_key_keeps_the_value_it_was_trained_with(tmp_path):
    """A run recorded before `model.weight_kl_temperature` (or `model.weight_kl_schedule`) existed trained
    with T = 1 (or the constant schedule): reading it back must not switch it to today's defaults."""
    results = __file__.replace("tests/test_config.py", "results/bayes/cartpole-swingup-quickstart")
    before_cold = config_lib.read_run_config(f"{results}/reparameterization/seed-0/config.yaml")
    assert before_cold.model.weight_kl_schedule == "elbo" and before_cold.model.weight_kl_temperature == 1.0
    cold = config_lib.read_run_config(f"{results}/cold/seed-0/config.yaml")
    assert cold.model.weight_kl_temperature == 0.1
    values = config_lib.to_dict(load_config("quickstart"))
    for key in ("weight_kl_schedule", "weight_kl_temperature"):
        del values["model"][key]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    before_elbo = config_lib.read_run_config(str(path))
    assert before_elbo.model.weight_kl_schedule == "constant" and before_elbo.model.weight_kl_temperature == 1.0
    assert before_elbo.model.cnn_depth == load_config("quickstart").model.cnn_depth  # the rest as stored
    config_lib.save_config(load_config("quickstart"), str(path))  # today's runs store every key
    assert config_lib.read_run_config(str(path)) == load_config("quickstart")
    path.write_text("")
    with pytest.raises(config_lib.UsageError, match="config.yaml is empty or damaged"):
        config_lib.read_run_config(str(path))
