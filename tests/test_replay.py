import os
import subprocess
import sys

import numpy as np
import pytest

from bayes_planet.files import remove_partial_files
from bayes_planet.replay import Replay


def _episode(length, marker, action_dim=2):
    return {
        "observation": np.full((length, 4, 4, 3), marker, np.uint8),
        "action": np.full((length, action_dim), marker, np.float32),
        "reward": np.arange(length, dtype=np.float32) + 1000 * marker,
    }


def test_round_trip_on_disk(tmp_path):
    replay = Replay(str(tmp_path))
    replay.add(_episode(10, 1))
    replay.add(_episode(7, 2))
    reloaded = Replay(str(tmp_path))
    assert len(reloaded) == 2 and reloaded.num_steps == 17 and reloaded.num_in_memory == 0
    for index, length, marker in [(0, 10, 1), (1, 7, 2)]:
        episode = reloaded.episode(index)
        for key, value in _episode(length, marker).items():
            np.testing.assert_array_equal(episode[key], value)
            assert episode[key].dtype == value.dtype


def test_chunks_never_cross_episode_boundaries_and_cover_all_starts(tmp_path):
    replay = Replay(str(tmp_path))
    for marker, length in enumerate([12, 5, 30, 9], start=1):
        replay.add(_episode(length, marker))
    batch = replay.sample(2000, 8, np.random.default_rng(0))
    assert batch["observation"].shape == (2000, 8, 4, 4, 3) and batch["action"].shape == (2000, 8, 2)
    markers = batch["reward"] // 1000
    assert np.all(markers == markers[:, :1]), "every chunk comes from one episode"
    assert 2 not in markers, "a 5-step episode has no 8-step chunk"
    steps = batch["reward"] % 1000
    assert np.all(np.diff(steps, axis=1) == 1), "consecutive steps"
    starts = {(int(m), int(s)) for m, s in zip(markers[:, 0], steps[:, 0], strict=True)}
    assert len(starts) == (12 - 7) + (30 - 7) + (9 - 7), "uniform over every valid chunk start"
    counts = np.bincount(markers[:, 0].astype(int), minlength=5)
    assert counts[3] > counts[1] > counts[4]  # more chunks in longer episodes


def test_in_memory_cap(tmp_path):
    replay = Replay(str(tmp_path), max_in_memory=2)
    for marker in range(5):
        replay.add(_episode(6, marker))
    assert replay.num_in_memory == 2
    replay.sample(64, 4, np.random.default_rng(0))
    assert replay.num_in_memory <= 2


def test_interrupted_write_leaves_no_file_that_loads(tmp_path):
    """A writer killed in the middle of a large episode leaves only a hidden temporary file."""
    code = f"""
import numpy as np, os, signal
import bayes_planet.replay as replay
real = np.savez_compressed
def dying(handle, **arrays):
    real(handle, **arrays)
    handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)   # dies after writing bytes, before the rename
replay.np.savez_compressed = dying
replay.Replay({str(tmp_path)!r}).add({{"reward": np.zeros(100000, np.float32)}})
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert result.returncode == -9
    leftovers = os.listdir(tmp_path)
    assert leftovers and all(name.startswith(".tmp-") for name in leftovers)
    assert len(Replay(str(tmp_path))) == 0
    assert remove_partial_files(str(tmp_path)) == 1 and os.listdir(tmp_path) == []


def test_sampling_needs_long_enough_episodes(tmp_path):
    replay = Replay(str(tmp_path))
    replay.add(_episode(3, 1))
    with pytest.raises(ValueError, match="no stored episode has 8 steps"):
        replay.sample(1, 8, np.random.default_rng(0))
    with pytest.raises(ValueError, match="same length"):
        replay.add({"reward": np.zeros(3), "action": np.zeros((4, 1))})
