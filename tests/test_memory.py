import logging
import sys

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
