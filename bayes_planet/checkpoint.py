"""Checkpoints that hold only arrays and plain values, never code.

A checkpoint is one zip file: ``manifest.json`` (format, version, and for every leaf of the saved pytree its
path and either a plain JSON value or the name of an array member) and one ``.npy`` member per array, read
with ``allow_pickle=False``. Loading one therefore cannot run code, unlike a pickle: researchers share
checkpoints. Files are written atomically; the checkpoint a save replaces stays in place until the new one
is complete and is then kept at `previous_path` to fall back on.
"""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile
from typing import Any

import jax
import numpy as np

from bayes_planet.errors import UsageError
from bayes_planet.files import atomic_write

LOG = logging.getLogger(__name__)
FORMAT, VERSION = "bayes-planet-checkpoint", 1
MANIFEST = "manifest.json"
PLAIN_TYPES = (bool, int, float, str, type(None))


class CheckpointError(UsageError):
    """A checkpoint that cannot be used: damaged, of another format, or not matching the model."""


def previous_path(path: str) -> str:
    """Where `save_checkpoint` keeps the checkpoint before the latest one (``x.npz`` -> ``x.prev.npz``)."""
    root, extension = os.path.splitext(path)
    return f"{root}.prev{extension}"


def _encode_path(path: tuple) -> list[list]:
    """A pytree key path as JSON: ``[["key", "params"], ["index", 0], ["attr", "mu"], ...]``."""
    encoded = []
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            if not isinstance(entry.key, (str, int)):
                raise TypeError(f"checkpoint dict keys must be str or int, got {entry.key!r}")
            encoded.append(["key", entry.key])
        elif isinstance(entry, jax.tree_util.SequenceKey):
            encoded.append(["index", entry.idx])
        elif isinstance(entry, jax.tree_util.GetAttrKey):
            encoded.append(["attr", entry.name])
        else:
            raise TypeError(f"unsupported pytree node in a checkpoint: {entry!r}")
    return encoded


def _path_name(encoded: list[list]) -> str:
    return "".join(f".{key}" if kind == "attr" else f"[{key!r}]" for kind, key in encoded)


def checkpoint_size(tree: Any) -> int:
    """Bytes the arrays of `tree` take in a checkpoint (what a save needs on disk, give or take the manifest)."""
    return int(sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(tree) if not isinstance(leaf, PLAIN_TYPES)))


def _write(handle, tree: Any) -> None:
    leaves = []
    with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as archive:
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            entry: dict[str, Any] = {"path": _encode_path(path)}
            if isinstance(leaf, PLAIN_TYPES):
                entry["value"] = leaf
            else:
                member = f"arrays/{len(leaves)}.npy"
                with archive.open(member, "w", force_zip64=True) as stream:
                    np.lib.format.write_array(stream, np.asarray(leaf), allow_pickle=False)
                entry["array"] = member
            leaves.append(entry)
        archive.writestr(MANIFEST, json.dumps({"format": FORMAT, "version": VERSION, "leaves": leaves}))


def save_checkpoint(path: str, tree: Any) -> None:
    """Write `tree` (nested dicts, lists, tuples and named tuples of arrays and plain values: params,
    optimizer state, counters, PRNG keys, ...) to `path` atomically. Until the new file is complete the
    current one stays at `path`; it is then kept at `previous_path(path)`."""
    host = jax.device_get(tree)
    atomic_write(path, lambda handle: _write(handle, host), keep_previous=previous_path(path),
                 size_hint=checkpoint_size(host))


def _read_leaves(path: str) -> dict[str, Any]:
    """Every leaf of the checkpoint at `path` by its JSON-encoded key path. Raises CheckpointError."""
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read(MANIFEST))
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise CheckpointError(f"{path} is not a bayes-planet checkpoint (no {FORMAT!r} manifest)")
            if manifest.get("version") != VERSION:
                raise CheckpointError(f"{path} has checkpoint version {manifest.get('version')!r}; "
                                      f"this bayes-planet reads version {VERSION}")
            leaves = {}
            for entry in manifest["leaves"]:
                key = json.dumps(entry["path"])
                if "array" in entry:
                    with archive.open(entry["array"]) as stream:
                        leaves[key] = np.lib.format.read_array(io.BufferedReader(stream), allow_pickle=False)
                else:
                    leaves[key] = entry["value"]
            return leaves
    except CheckpointError:
        raise
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise CheckpointError(f"{path} is damaged ({type(error).__name__}: {error})") from None


def _nested(leaves: dict[str, Any]) -> Any:
    """Rebuild plain containers from encoded paths: dicts, with lists where every key was an index."""
    if "[]" in leaves:  # a single leaf at the root
        return leaves["[]"]
    root: dict = {}
    for key, value in leaves.items():
        encoded = json.loads(key)
        node = root
        for _, part in encoded[:-1]:
            node = node.setdefault(part, {})
        node[encoded[-1][1]] = value

    def finish(node):
        if not isinstance(node, dict):
            return node
        if node and all(isinstance(k, int) for k in node) and sorted(node) == list(range(len(node))):
            return [finish(node[i]) for i in range(len(node))]
        return {k: finish(v) for k, v in node.items()}

    return finish(root)


def _restore_like(leaves: dict[str, Any], like: Any, path: str) -> Any:
    """`like`'s structure filled with the saved leaves; every leaf present, every array shape equal."""
    expected, treedef = jax.tree_util.tree_flatten_with_path(like)
    if len(expected) != len(leaves):
        raise CheckpointError(f"checkpoint {path} has {len(leaves)} leaves, the model expects {len(expected)}")
    restored = []
    for leaf_path, want in expected:
        encoded = _encode_path(leaf_path)
        key = json.dumps(encoded)
        if key not in leaves:
            raise CheckpointError(f"checkpoint {path} has no {_path_name(encoded)}, which the model expects")
        got = leaves[key]
        if not isinstance(want, PLAIN_TYPES) and np.shape(got) != np.shape(want):
            raise CheckpointError(f"checkpoint {path}: {_path_name(encoded)} has shape {np.shape(got)}, "
                                  f"the model expects {np.shape(want)}")
        restored.append(got)
    return jax.tree_util.tree_unflatten(treedef, restored)


def _subtree(leaves: dict[str, Any], key: str) -> dict[str, Any]:
    """The leaves under the top-level dict key `key`, with that first path entry removed."""
    prefix = ["key", key]
    return {json.dumps(path[1:]): value for path, value in ((json.loads(k), v) for k, v in leaves.items())
            if path and path[0] == prefix}


def load_checkpoint(path: str, like: Any = None, subtree: str | None = None) -> Any | None:
    """The tree saved at `path`; when that file is missing or damaged, the previous checkpoint (with one
    warning line naming the file); None when there is neither. With `subtree`, only the entry of that name
    in the saved top-level dict (e.g. ``"params"``), which `like` then describes.

    With `like` (a pytree of the expected structure: arrays or ``jax.ShapeDtypeStruct`` leaves, plain values
    where plain values were saved) the result has `like`'s structure, named tuples included, and a mismatch
    raises a `CheckpointError` naming the first differing leaf. Without it, containers come back as dicts and
    lists. Nothing in the file is ever executed: arrays are read with ``allow_pickle=False``.
    """
    for candidate in (path, previous_path(path)):
        if not os.path.exists(candidate):
            continue
        try:
            leaves = _read_leaves(candidate)
        except CheckpointError as error:
            LOG.warning("skipping unreadable checkpoint %s (%s)", candidate, error)
            continue
        if candidate != path:
            LOG.warning("%s is missing or unreadable: resuming from the previous checkpoint %s", path, candidate)
        if subtree is not None:
            leaves = _subtree(leaves, subtree)
        return _nested(leaves) if like is None else _restore_like(leaves, like, candidate)
    return None


def is_finite(tree: Any) -> bool:
    """Whether every floating-point array in `tree` is free of NaN and inf."""
    return all(bool(np.all(np.isfinite(leaf))) for leaf in jax.tree.leaves(tree)
               if np.issubdtype(np.asarray(leaf).dtype, np.inexact))
