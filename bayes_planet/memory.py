"""Keeping a training process's peak resident memory down.

XLA's CPU compiler frees most of what it allocates, but glibc keeps the freed heap mapped, and the
compiled step then takes its buffers (one block of about 1 GB at PlaNet's sizes) from fresh pages. So the
compiler's leftovers and the step's buffers add up. Compiling ahead of the first call and returning the
freed heap to the OS in between took the peak RSS of a PlaNet-size training process from 2.53 to 1.99 GiB
(`bench/run.py`, 2-core CPU).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


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
