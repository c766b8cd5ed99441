"""Checkpoints: a pytree of arrays and Python scalars, pickled as NumPy and written atomically."""

from __future__ import annotations

import os
import pickle
from typing import Any

import jax
import numpy as np

from bayes_planet.files import atomic_write


def save_checkpoint(path: str, tree: Any) -> None:
    """Write `tree` (params, optimizer state, counters, PRNG keys, ...) to `path` atomically."""
    host = jax.tree.map(np.asarray, jax.device_get(tree))
    atomic_write(path, lambda handle: pickle.dump(host, handle, protocol=pickle.HIGHEST_PROTOCOL))


def load_checkpoint(path: str) -> Any | None:
    """The tree saved at `path`, or None when there is no file there."""
    if not os.path.exists(path):
        return None
    with open(path, "rb") as handle:
        return pickle.load(handle)


def check_compatible(saved: Any, expected: Any, what: str = "checkpoint") -> None:
    """Raise a ValueError naming the first leaf whose shape differs between two pytrees."""
    saved_leaves = jax.tree_util.tree_flatten_with_path(saved)[0]
    expected_leaves = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
    if len(saved_leaves) != len(expected_leaves):
        raise ValueError(f"{what} has {len(saved_leaves)} arrays, the model expects {len(expected_leaves)}")
    for path, leaf in saved_leaves:
        want = expected_leaves.get(path)
        if want is None or np.shape(leaf) != np.shape(want):
            name = jax.tree_util.keystr(path)
            raise ValueError(f"{what}: {name} has shape {np.shape(leaf)}, the model expects "
                             f"{None if want is None else np.shape(want)}")
