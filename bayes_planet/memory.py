"""Keeping a training process's peak resident memory and its page faults down.

XLA's CPU compiler frees most of what it allocates, but glibc keeps the freed heap mapped, and the
compiled step then takes its buffers (one block of about 1 GB at PlaNet's sizes) from fresh pages. So the
compiler's leftovers and the step's buffers add up. Compiling ahead of the first call and returning the
freed heap to the OS in between took the peak RSS of a PlaNet-size training process from 2.53 to 1.99 GiB
(`bench/run.py`, 2-core CPU).

That block is mapped anew for every step: 256k page faults of 4 KiB each at PlaNet's sizes, about 0.5 s of
system time per step. With glibc's ``glibc.malloc.hugetlb=1`` tunable, malloc asks for transparent huge
pages (2 MiB) instead: under 1k faults, and a 7-13% faster step on a 2-core CPU. Tunables are read when a
process starts, hence `restart_with_huge_pages` for command-line programs.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Mapping, Sequence

HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def release_freed_heap() -> bool:
    """Return the C heap's free pages to the OS (glibc ``malloc_trim(0)``). False where there is no glibc."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return False
    trim(0)
    return True


def compile_ahead(jitted: Callable, *args) -> None:
    """Compile a `jax.jit` function for `args`' shapes, shardings and dtypes before its first call, then
    `release_freed_heap`. The call that follows reuses the compiled executable."""
    jitted.lower(*args).compile()
    release_freed_heap()


def _glibc_version() -> tuple[int, ...]:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # "glibc 2.36"
    except (AttributeError, OSError, ValueError):
        return ()
    return tuple(int(part) for part in version.split(".")) if name == "glibc" else ()


def _thp_on_request() -> bool:
    """Whether the kernel gives transparent huge pages to memory that asks for them (THP "madvise")."""
    try:
        with open(THP_SETTING) as setting:
            return "[madvise]" in setting.read()
    except OSError:
        return False


def huge_pages_environment(environ: Mapping[str, str]) -> dict[str, str] | None:
    """A copy of `environ` whose ``GLIBC_TUNABLES`` adds ``glibc.malloc.hugetlb=1``; None when nothing is to
    gain: `environ` already sets that tunable (to any value: ``=0`` opts out), the C library is not glibc
    2.35 or later (the first with it), or the kernel's THP mode is not "madvise" ("always" needs no request,
    "never" grants none)."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if HUGE_PAGES_TUNABLE + "=" in tunables or _glibc_version() < (2, 35) or not _thp_on_request():
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, HUGE_PAGES_TUNABLE + "=1"]))}


def restart_with_huge_pages(argv: Sequence[str] | None = None) -> None:
    """Re-execute this process with `huge_pages_environment`, or return when there is nothing to gain or
    the restart cannot be made. `argv` (``[interpreter, ...]``) defaults to this process's own command
    line, interpreter options included (``sys.orig_argv``). Call it first thing in a program's entry
    point: the process is replaced (same PID and open files; pending output is flushed first)."""
    environ = huge_pages_environment(os.environ)
    argv = list(argv) if argv is not None else [sys.executable, *sys.orig_argv[1:]]
    if environ is None or not argv[0]:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(argv[0], argv, environ)
    except OSError:  # e.g. an embedded interpreter without an executable: run on, with 4 KiB pages
        return
