"""Sharding over devices: the same update and the same plan as on one device (two forced host devices)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import EPISODE_ENV_STEPS, TINY_RUN

from bayes_planet import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def two_devices(tmp_path_factory):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    logdir = str(tmp_path_factory.mktemp("two_devices") / "run")
    tiny = TINY_RUN + [f"train.env_steps={3 * EPISODE_ENV_STEPS}"]
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "two_device_check.py"), logdir, *tiny],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_sharded_train_step_equals_the_single_device_step(two_devices):
    result = two_devices
    assert result["devices"] == 2 and result["batch_devices"] == 2
    assert result["all_reduce"]  # the gradients really are reduced across the two halves of the batch
    single, sharded = result["loss"]
    assert sharded == pytest.approx(single, rel=1e-5)
    assert result["metrics_difference"] < 1e-4
    assert result["grad_difference"] < 1e-4
    assert result["params_difference"] < 1e-4


@pytest.mark.parametrize("matmul_dtype", ["float32", "bfloat16"])
def test_sharded_cem_picks_the_same_action_for_the_same_key(two_devices, matmul_dtype):
    single, sharded = two_devices["actions"][matmul_dtype]
    np.testing.assert_allclose(sharded, single, atol=1e-5)


def test_training_run_with_data_and_candidate_parallelism(two_devices):
    assert two_devices["run_train_batch_devices"] == 2
    assert two_devices["run_updates"] == 1
    assert two_devices["run_episodes"] == 3  # 2 random, 1 collected by the sharded planner


def test_uneven_split_names_the_config_key():
    mesh = parallel.device_mesh(jax.devices() * 3)  # three copies of this process's device(s)
    with pytest.raises(ValueError, match=r"'train.batch_size' must be a multiple of the 3 devices .* got 50"):
        parallel.check_divisible(50, mesh, "train.batch_size")
