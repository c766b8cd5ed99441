import ctypes
import logging

import jax
import jax.numpy as jnp

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


def test_release_freed_heap_runs_where_glibc_is():
    has_malloc_trim = hasattr(ctypes.CDLL(None), "malloc_trim")
    assert memory.release_freed_heap() is has_malloc_trim
