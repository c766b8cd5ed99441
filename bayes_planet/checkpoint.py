"""Checkpoints: a pytree of arrays and Python scalars, pickled as NumPy and written atomically."""

from __future__ import annotations

import logging
import os
import pickle
from typing import Any

import jax
import numpy as np

from bayes_planet.files import atomic_write

LOG = logging.getLogger(__name__)


def previous_path(path: str) -> str:
    """Where `save_checkpoint` keeps the checkpoint before the latest one (``x.pkl`` -> ``x.prev.pkl``)."""
    root, extension = os.path.splitext(path)
    return f"{root}.prev{extension}"


def save_checkpoint(path: str, tree: Any) -> None:
    """Write `tree` (params, optimizer state, counters, PRNG keys, ...) to `path` atomically; the checkpoint
    it replaces is kept at `previous_path(path)` to fall back on."""
    host = jax.tree.map(np.asarray, jax.device_get(tree))
    if os.path.exists(path):
        os.replace(path, previous_path(path))
    atomic_write(path, lambda handle: pickle.dump(host, handle, protocol=pickle.HIGHEST_PROTOCOL))


def load_checkpoint(path: str) -> Any | None:
    """The tree saved at `path`; when that file is missing or unreadable, the previous checkpoint (with one
    warning line naming the file); None when there is neither."""
    for candidate in (path, previous_path(path)):
        if not os.path.exists(candidate):
            continue
        try:
            with open(candidate, "rb") as handle:
                tree = pickle.load(handle)
        except Exception as error:  # truncated or corrupt: any unpickling error
            LOG.warning("skipping unreadable checkpoint %s (%s: %s)", candidate, type(error).__name__, error)
            continue
        if candidate != path:
            LOG.warning("%s is missing or unreadable: resuming from the previous checkpoint %s", path, candidate)
        return tree
    return None


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
