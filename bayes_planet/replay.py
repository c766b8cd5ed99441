"""Episodes on disk, one compressed ``.npz`` each, written atomically; uniform ``[B, L]`` chunk sampling.

File names are ``episode-<index:06d>-<length>.npz``. A file is written to a hidden temporary name in the
same folder, flushed to disk and renamed, so a crash never leaves a partial ``.npz`` that loads. Episodes
are loaded lazily on first use and kept in an LRU cache of at most `max_in_memory` episodes. A file that
cannot be read is set aside (renamed ``*.corrupt``) with one warning line, and the replay goes on without it.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from bayes_planet.files import atomic_write

LOG = logging.getLogger(__name__)
EPISODE_PATTERN = re.compile(r"^episode-(\d{6})-(\d+)\.npz$")
CORRUPT_SUFFIX = ".corrupt"


class CorruptEpisode(Exception):
    """An episode file that could not be read; the replay has set it aside."""


def _unreadable(path: str) -> str | None:
    """Why the ``.npz`` at `path` cannot be opened (a truncated file has no zip directory), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (OSError, zipfile.BadZipFile) as error:
        return f"{type(error).__name__}: {error}"
    return None


def write_episode_atomically(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Write `arrays` as a compressed ``.npz`` at `path` via a temporary file and an atomic rename."""
    atomic_write(path, lambda handle: np.savez_compressed(handle, **arrays))


class Replay:
    """Replay of whole episodes stored in `directory`. With `read_only` it writes nothing: no folder is
    created, nothing can be added, and a damaged file is skipped where it lies.

    Each episode is a dict of arrays with the same leading time axis ``[T, ...]`` (``observation``,
    ``action``, ``reward``, and any extras such as ``velocity``).
    """

    def __init__(self, directory: str, max_in_memory: int | None = None, read_only: bool = False):
        if max_in_memory is not None and max_in_memory < 1:
            raise ValueError(f"replay max_in_memory must be >= 1 or None, got {max_in_memory}")
        self.directory, self.read_only = directory, read_only
        if not read_only:
            os.makedirs(directory, exist_ok=True)
        self.max_in_memory = max_in_memory
        self._cache: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self._paths: list[str] = []
        self._lengths: list[int] = []
        self._next_index = 0
        self._set_aside_steps = 0
        for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
            path = os.path.join(directory, name)
            match = EPISODE_PATTERN.match(name.removesuffix(CORRUPT_SUFFIX))
            if not match:
                continue
            if name.endswith(CORRUPT_SUFFIX):
                self._next_index = max(self._next_index, int(match.group(1)) + 1)
                self._set_aside_steps += int(match.group(2))
                continue
            self._next_index = max(self._next_index, int(match.group(1)) + 1)
            problem = _unreadable(path)
            if problem:
                self._set_aside(path, problem, int(match.group(2)))
                continue
            self._paths.append(path)
            self._lengths.append(int(match.group(2)))

    def __len__(self) -> int:
        return len(self._paths)

    @property
    def num_steps(self) -> int:
        """Total time steps over all stored episodes."""
        return int(sum(self._lengths))

    @property
    def next_index(self) -> int:
        """The index the next added episode gets: episodes ever added, set-aside ones included (never reused)."""
        return self._next_index

    @property
    def steps_ever(self) -> int:
        """Time steps over every episode ever added, set-aside ones included (never goes down)."""
        return self.num_steps + self._set_aside_steps

    def add(self, episode: Mapping[str, np.ndarray]) -> str:
        """Store one episode (dict of ``[T, ...]`` arrays); returns its path."""
        if self.read_only:
            raise PermissionError(f"replay {self.directory} was opened read-only")
        lengths = {key: len(value) for key, value in episode.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"every array of an episode needs the same length, got {lengths}")
        length = next(iter(lengths.values()))
        path = os.path.join(self.directory, f"episode-{self._next_index:06d}-{length}.npz")
        write_episode_atomically(path, episode)
        self._next_index += 1
        self._paths.append(path)
        self._lengths.append(length)
        self._remember(path, {key: np.asarray(value) for key, value in episode.items()})
        return path

    def episode(self, index: int) -> dict[str, np.ndarray]:
        """Episode `index` as a dict of arrays (loaded from disk if not cached). Raises `CorruptEpisode` (and
        drops the episode) when its file cannot be read."""
        path = self._paths[index]
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        try:
            with np.load(path) as data:
                arrays = {key: data[key] for key in data.files}
        except Exception as error:  # a damaged archive: bad CRC, truncated member, ...
            length = self._lengths[index]
            del self._paths[index], self._lengths[index]
            self._set_aside(path, f"{type(error).__name__}: {error}", length)
            raise CorruptEpisode(path) from error
        self._remember(path, arrays)
        return arrays

    def latest(self, count: int) -> list[dict[str, np.ndarray]]:
        """Up to `count` of the latest readable episodes, oldest first (a damaged one is set aside and the
        one before it taken instead)."""
        episodes, index = [], len(self) - 1
        while len(episodes) < count and index >= 0:
            try:
                episodes.append(self.episode(index))
            except CorruptEpisode:
                pass
            index = min(index - 1, len(self) - 1)
        return episodes[::-1]

    def _set_aside(self, path: str, problem: str, length: int) -> None:
        self._set_aside_steps += length
        if self.read_only:  # leave the file as it is
            LOG.warning("skipping corrupt episode file %s (%s)", path, problem)
            return
        os.replace(path, path + CORRUPT_SUFFIX)
        LOG.warning("skipping corrupt episode file %s (%s); moved to %s%s", path, problem, path, CORRUPT_SUFFIX)

    def _remember(self, path: str, arrays: dict[str, np.ndarray]) -> None:
        self._cache[path] = arrays
        self._cache.move_to_end(path)
        while self.max_in_memory is not None and len(self._cache) > self.max_in_memory:
            self._cache.popitem(last=False)

    @property
    def num_in_memory(self) -> int:
        """How many episodes are cached in memory now (at most ``max_in_memory``; the rest are read from disk)."""
        return len(self._cache)

    def sample(self, batch_size: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``batch_size`` chunks of ``length`` consecutive steps, uniform over all chunks that lie inside one
        episode (episodes shorter than `length` are never sampled). Returns ``[B, L, ...]`` arrays."""
        starts_per_episode = np.maximum(np.asarray(self._lengths) - length + 1, 0)
        total = starts_per_episode.sum()
        if total == 0:
            raise ValueError(f"no stored episode has {length} steps to sample a chunk from")
        chunk_ids = rng.integers(0, total, batch_size)
        boundaries = np.cumsum(starts_per_episode)
        episode_ids = np.searchsorted(boundaries, chunk_ids, side="right")
        offsets = chunk_ids - (boundaries[episode_ids] - starts_per_episode[episode_ids])
        chunks = []
        for episode_id, start in zip(episode_ids, offsets, strict=True):
            try:
                episode = self.episode(int(episode_id))
            except CorruptEpisode:
                return self.sample(batch_size, length, rng)  # the index changed: draw again without it
            chunks.append({key: value[start: start + length] for key, value in episode.items()})
        return {key: np.stack([chunk[key] for chunk in chunks]) for key in chunks[0]}
