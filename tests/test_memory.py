import logging
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

from bayes_planet import memory


def test_compile_ahead_compiles_once_and_the_call_reuses_it(caplog):
    step = jax.jit(lambda x: jnp.sin(x) @ x + 1.0)
    x = jnp.ones((8, 8))
    finished = lambda: [r for r in caplog.records if "Finished XLA compilation of jit(<lambda>)" in r.getMessage()]
    with jax.log_compiles(), caplog.at_level(logging.DEBUG):
        memory.compile_ahead(step, x)
        assert len(finished()) == 1
        caplog.clear()
        result = step(x)
        assert finished() == []
    assert jnp.allclose(result, jnp.sin(x) @ x + 1.0)


def _resident_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and needs glibc")
def test_release_freed_heap_gives_freed_pages_back_to_the_os():
    blocks = [bytearray(100_000) for _ in range(3000)]  # 300 MB in heap chunks (under glibc's mmap threshold)
    last = blocks[-1]  # holds the heap's top, so free() alone cannot shrink it
    del blocks
    before = _resident_mib()
    assert memory.release_freed_heap()
    assert before - _resident_mib() > 200, "the freed 300 MB stayed resident"
    assert len(last) == 100_000


HUGE_PAGE_CHILD = textwrap.dedent("""
    import ctypes, os, sys
    from bayes_planet.memory import restart_with_huge_pages
    restart_with_huge_pages()

    def huge_page_kib():
        with open("/proc/self/smaps_rollup") as rollup:
            return next(int(line.split()[1]) for line in rollup if line.startswith("AnonHugePages:"))

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    before = huge_page_kib()
    block = libc.malloc(64 << 20)
    ctypes.memset(block, 1, 64 << 20)
    print(os.environ.get("GLIBC_TUNABLES", ""))
    print(huge_page_kib() - before)
    print(sys.flags.utf8_mode)  # interpreter options survive the restart
""")


NEEDS_HUGE_PAGES = pytest.mark.skipif(
    memory.huge_pages_environment({}) is None,
    reason="needs glibc >= 2.35 and the kernel's transparent huge pages in 'madvise' mode")
# most of a fresh 64 MiB block (the kernel may lack free 2 MiB pages for some of it); without huge pages: ~0
MOSTLY_HUGE_KIB = 32 * 1024


def _run_huge_page_child(tmp_path, tunables: str | None) -> tuple[str, int]:
    """(GLIBC_TUNABLES after the restart, KiB of a fresh 64 MiB malloc block on huge pages)."""
    script = tmp_path / "child.py"
    script.write_text(HUGE_PAGE_CHILD)
    environ = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    if tunables is not None:
        environ["GLIBC_TUNABLES"] = tunables
    done = subprocess.run([sys.executable, "-X", "utf8", str(script)], env=environ, capture_output=True,
                          text=True, check=True)
    tunables_after, huge_kib, utf8_mode = done.stdout.splitlines()
    assert utf8_mode == "1"
    return tunables_after, int(huge_kib)


@NEEDS_HUGE_PAGES
def test_restart_with_huge_pages_puts_malloc_blocks_on_huge_pages_and_keeps_other_tunables(tmp_path):
    tunables, huge_kib = _run_huge_page_child(tmp_path, "glibc.malloc.arena_max=4")
    assert tunables == "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1"
    assert huge_kib >= MOSTLY_HUGE_KIB, f"only {huge_kib} KiB of the 64 MiB block is on huge pages"
    tunables, huge_kib = _run_huge_page_child(tmp_path, None)
    assert tunables == "glibc.malloc.hugetlb=1" and huge_kib >= MOSTLY_HUGE_KIB


@NEEDS_HUGE_PAGES
def test_a_hugetlb_tunable_already_set_opts_out_of_the_restart(tmp_path):
    assert memory.huge_pages_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
    tunables, huge_kib = _run_huge_page_child(tmp_path, "glibc.malloc.hugetlb=0")
    assert tunables == "glibc.malloc.hugetlb=0"
    assert huge_kib < 4 * 1024, f"{huge_kib} KiB on huge pages after opting out"
