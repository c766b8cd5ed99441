"""Files written atomically: a crash leaves either the old file or the whole new one, never a part."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Callable
from typing import BinaryIO

from bayes_planet.errors import UsageError

PARTIAL_PREFIX, PARTIAL_SUFFIX = ".tmp-", ".partial"


class DiskFull(OSError):
    """No space left on the device while writing `path`; the file that was there is unchanged."""

    def __init__(self, path: str, needed: int | None):
        folder = os.path.dirname(os.path.abspath(path))
        free = shutil.disk_usage(folder).free if os.path.isdir(folder) else 0
        need = f"about {_megabytes(needed)} needed, " if needed else ""
        super().__init__(errno.ENOSPC, f"no space left on the device to write {path} ({need}"
                                       f"{_megabytes(free)} free); free some space and rerun")
        self.path, self.needed, self.free = path, needed, free

    def __str__(self) -> str:
        return self.strerror


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def is_partial(name: str) -> bool:
    """Whether a file name is one of `atomic_write`'s temporary files."""
    return name.startswith(PARTIAL_PREFIX) and name.endswith(PARTIAL_SUFFIX)


def remove_partial_files(folder: str) -> int:
    """Delete the temporary files a killed writer left in `folder` (never complete files); returns how many."""
    names = [name for name in os.listdir(folder) if is_partial(name)] if os.path.isdir(folder) else []
    for name in names:
        os.remove(os.path.join(folder, name))
    return len(names)


def _temporary_file(folder: str) -> tuple[int, str]:
    """A new hidden file in `folder`, created with mode 0666 less the process's umask (as `open` does, so a
    shared run stays readable by its group), unlike `tempfile.mkstemp`'s 0600."""
    while True:
        path = os.path.join(folder, f"{PARTIAL_PREFIX}{secrets.token_hex(6)}{PARTIAL_SUFFIX}")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:
            continue


def check_writable(folder: str) -> None:
    """Raise a `UsageError` naming `folder` when a file cannot be created in it (permissions, a read-only or
    immutable filesystem), before any work is done."""
    try:
        fd, path = _temporary_file(folder)
    except OSError as error:
        raise UsageError(f"cannot write the run directory {folder!r}: {error.strerror}") from None
    os.close(fd)
    os.remove(path)


def _keep_as(path: str, keep: str) -> None:
    """Make `keep` a copy of `path` without `path` ever being absent (a hard link, else a copy), atomically."""
    fd, staged = _temporary_file(os.path.dirname(os.path.abspath(keep)))
    os.close(fd)
    os.remove(staged)
    try:
        os.link(path, staged)
    except OSError:
        shutil.copyfile(path, staged)
    os.replace(staged, keep)


def atomic_write(path: str, write: Callable[[BinaryIO], object], keep_previous: str | None = None,
                 size_hint: int | None = None) -> None:
    """Call ``write(handle)`` on a temporary file next to `path`, flush it to disk, then rename it to `path`.

    The temporary file is hidden (``.tmp-*.partial``) and removed if `write` fails. With `keep_previous`, the
    file at `path` (if any) is kept there once the new file is complete; the file `path` named before stays in
    place until the rename. A full disk raises `DiskFull` naming `path` and `size_hint` (bytes), with the old
    file untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = _temporary_file(folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous is not None and os.path.exists(path):
            _keep_as(path, keep_previous)
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC and not isinstance(error, DiskFull):
            raise DiskFull(path, size_hint) from None
        raise


class RunInUse(UsageError):
    """Another live process holds the run directory's lock."""


class RunLock:
    """An exclusive lock on a run directory (``<folder>/.lock``, holding the owner's PID), so that two
    trainers never write one run. The kernel releases it when its process dies, so the lock of a killed
    run is taken over by the next one. Use as a context manager."""

    def __init__(self, folder: str):
        self.folder, self.path = folder, os.path.join(folder, ".lock")
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunInUse(f"{self.folder} is in use by process {holder} (a trainer on the same run); wait for "
                           "it to finish or stop it, then rerun") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc_info) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None
