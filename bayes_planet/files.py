"""Files written atomically: a crash leaves either the old file or the whole new one, never a part."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO

PARTIAL_PREFIX, PARTIAL_SUFFIX = ".tmp-", ".partial"


def is_partial(name: str) -> bool:
    """Whether a file name is one of `atomic_write`'s temporary files."""
    return name.startswith(PARTIAL_PREFIX) and name.endswith(PARTIAL_SUFFIX)


def remove_partial_files(folder: str) -> int:
    """Delete the temporary files a killed writer left in `folder` (never complete files); returns how many."""
    names = [name for name in os.listdir(folder) if is_partial(name)] if os.path.isdir(folder) else []
    for name in names:
        os.remove(os.path.join(folder, name))
    return len(names)


def atomic_write(path: str, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(handle)`` on a temporary file next to `path`, flush it to disk, then rename it to `path`.

    The temporary file is hidden (``.tmp-*.partial``) and removed if `write` fails.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=PARTIAL_PREFIX, suffix=PARTIAL_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
