"""Reduced-precision matmuls for forward computations such as planning, as a function transformation.

`with_matmul_dtype(fn, "bfloat16")` computes what `fn` computes, but every float32 matmul (``dot_general``)
inside it, in nested jits, scans, loops and conds too, gets bfloat16 inputs and a float32 result.
Everything else stays float32: activations, sums, the GRU's gates, the samples. On a CPU with AVX512-BF16
(the 2-core Zen 4 of the benchmarks), XLA runs such matmuls about twice as fast as float32 ones (2048^2:
379 against 200 GFLOP/s), and PlaNet's CEM is almost all matmuls: its call at PlaNet's sizes runs 1.5-1.8x
faster. A CPU without bfloat16 instructions runs them slower (a Zen 3 EPYC without AVX512: the quickstart's
CEM call 46.8 against 41.1 ms, 1.14x; `cpu_has_bfloat16_matmuls` tells which kind this one is). CPUs
ignore `jax.default_matmul_precision`, hence a transformation. "auto" picks bfloat16 where it is faster
(`preferred_matmul_dtype`).

The rewritten function is meant to be evaluated, not differentiated: custom derivative rules inside it
(e.g. `jax.nn.relu`'s) are inlined as plain functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core

MATMUL_DTYPES = ("float32", "bfloat16", "auto")
BFLOAT16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 AVX512-BF16 and AMX; Arm's BF16


def cpu_has_bfloat16_matmuls(cpuinfo: str | None = None) -> bool | None:
    """Whether the CPU has bfloat16 dot-product instructions (one of `BFLOAT16_CPU_FLAGS` among the
    ``flags`` (x86) or ``Features`` (Arm) of ``/proc/cpuinfo``, or of the text `cpuinfo`). None where that
    cannot be told: no ``/proc/cpuinfo`` (macOS, Windows) or no such line in it."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as file:
                cpuinfo = file.read()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return not BFLOAT16_CPU_FLAGS.isdisjoint(value.split())
    return None

def preferred_matmul_dtype(backend: str | None = None, cpuinfo: str | None = None) -> str:
    """The faster matmul input dtype for planning here: "bfloat16" on a CPU with bfloat16 instructions
    (`cpu_has_bfloat16_matmuls`), "float32" elsewhere: on a CPU without them or that cannot be told, and on
    accelerators, where XLA already chooses its matmul precision. `backend` defaults to JAX's default
    backend, `cpuinfo` to ``/proc/cpuinfo``."""
    backend = jax.default_backend() if backend is None else backend
    return "bfloat16" if backend == "cpu" and cpu_has_bfloat16_matmuls(cpuinfo) else "float32"


# call-like primitives whose body runs inline (jit, custom derivative rules, jax.checkpoint): param name
_INLINED = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
            "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr", "remat2": "jaxpr",
            "checkpoint": "jaxpr"}


def with_matmul_dtype(fn: Callable, dtype: str) -> Callable:
    """`fn` with its float32 matmuls' inputs cast to `dtype` (one of `MATMUL_DTYPES`; results stay float32).
    "float32" returns `fn` itself; "auto" is `preferred_matmul_dtype()`. `fn` takes and returns pytrees of
    arrays (positional arguments)."""
    if dtype not in MATMUL_DTYPES:
        raise ValueError(f"matmul dtype must be one of {MATMUL_DTYPES}, got {dtype!r}")
    if dtype == "auto":
        dtype = preferred_matmul_dtype()
    if dtype == "float32":
        return fn
    input_dtype = jnp.dtype(dtype)

    def rewritten(*args):
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        outputs = _evaluate(closed.jaxpr, closed.consts, jax.tree.leaves(args), input_dtype)
        return jax.tree.unflatten(jax.tree.structure(out_shape), outputs)

    return rewritten


def _evaluate(jaxpr: core.Jaxpr, consts: Sequence[Any], args: Sequence[Any], input_dtype) -> list[Any]:
    """Evaluate (or trace) `jaxpr`, rewriting float32 matmuls; sub-jaxprs of loops and conds are rewritten
    the same way, those of call-like primitives are inlined."""
    env: dict[core.Var, Any] = {}

    def read(var):
        return var.val if isinstance(var, core.Literal) else env[var]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        inputs = [read(var) for var in eqn.invars]
        name = eqn.primitive.name
        if eqn.primitive is lax.dot_general_p and _is_float32_matmul(eqn, inputs):
            lhs, rhs = (x.astype(input_dtype) for x in inputs)
            outputs = [lax.dot_general(lhs, rhs, eqn.params["dimension_numbers"],
                                       preferred_element_type=jnp.float32)]
        elif name in _INLINED and _INLINED[name] in eqn.params:
            body = eqn.params[_INLINED[name]]
            body, body_consts = (body.jaxpr, body.consts) if isinstance(body, core.ClosedJaxpr) else (body, ())
            outputs = _evaluate(body, body_consts, inputs, input_dtype)
        else:
            params = {key: _rewrite_param(value, input_dtype) for key, value in eqn.params.items()}
            outputs = eqn.primitive.bind(*inputs, **params)
            outputs = outputs if eqn.primitive.multiple_results else [outputs]
        env.update(zip(eqn.outvars, outputs, strict=True))
    return [read(var) for var in jaxpr.outvars]


def _is_float32_matmul(eqn: core.JaxprEqn, inputs: Sequence[Any]) -> bool:
    return (all(jnp.dtype(x.dtype) == jnp.float32 for x in inputs)
            and eqn.params.get("preferred_element_type") in (None, jnp.float32))


def _rewrite_param(value: Any, input_dtype) -> Any:
    """A loop's or cond's body (a ClosedJaxpr, or a tuple of them) retraced with its matmuls rewritten;
    any other parameter as it is."""
    if isinstance(value, tuple) and value and all(isinstance(item, core.ClosedJaxpr) for item in value):
        return tuple(_rewrite_param(item, input_dtype) for item in value)
    if not isinstance(value, core.ClosedJaxpr):
        return value
    avals = [jax.ShapeDtypeStruct(var.aval.shape, var.aval.dtype, weak_type=var.aval.weak_type)
             for var in value.jaxpr.invars]
    return jax.make_jaxpr(lambda *args: _evaluate(value.jaxpr, value.consts, args, input_dtype))(*avals)
