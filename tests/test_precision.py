"""bfloat16 matmuls by jaxpr rewriting: every float32 matmul is rewritten, wherever it is nested, and the
results stay close to float32 ones (real world model, real planner)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from bayes_planet.matmul_conv import matmul_rows
from bayes_planet.objectives import make_objective
from bayes_planet.planners import CEM, world_model_scorer
from bayes_planet.precision import cpu_has_bfloat16_matmuls, preferred_matmul_dtype, with_matmul_dtype
from bayes_planet.world_model import WorldModel

KEY = jax.random.PRNGKey(0)


def matmul_input_dtypes(fn, *args) -> list[tuple[str, str]]:
    """The input dtypes of every matmul in `fn`'s jaxpr, sub-jaxprs included."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                found.append(tuple(str(var.aval.dtype) for var in eqn.invars))
            for value in eqn.params.values():
                for item in value if isinstance(value, tuple) else (value,):
                    if hasattr(item, "eqns"):
                        walk(item)
                    elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                        walk(item.jaxpr)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def nested(x, kernel):
    """Matmuls in a jit, a scan, a while loop, both branches of a cond, a custom VJP under jax.checkpoint,
    and a relu (custom JVP) in between."""
    y = jax.jit(lambda a: jax.nn.relu(a @ kernel))(x)
    y, _ = jax.lax.scan(lambda carry, _: (jnp.tanh(carry @ kernel), None), y, None, length=3)
    y = jax.lax.fori_loop(0, jnp.int32(x.shape[0]) - 2, lambda i, carry: carry @ kernel * 0.5, y)  # dynamic: while
    y = jax.lax.cond(jnp.sum(y) > 0, lambda a: a @ kernel, lambda a: a @ kernel.T, y)
    y = jax.checkpoint(lambda a: matmul_rows(a, kernel))(y)
    return {"out": y, "int": jnp.arange(3) @ jnp.arange(3)}  # an integer matmul stays as it is


def test_every_float32_matmul_is_rewritten_wherever_it_is_nested():
    x = jax.random.normal(KEY, (6, 8))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (8, 8)) / 3
    rewritten = with_matmul_dtype(nested, "bfloat16")
    before = matmul_input_dtypes(nested, x, kernel)
    after = matmul_input_dtypes(rewritten, x, kernel)
    assert before.count(("float32", "float32")) == 6
    assert after.count(("bfloat16", "bfloat16")) == 6 and ("float32", "float32") not in after
    assert ("int32", "int32") in after
    reference, result = jax.jit(nested)(x, kernel), jax.jit(rewritten)(x, kernel)
    assert jax.tree.structure(result) == jax.tree.structure(reference)
    assert result["out"].dtype == jnp.float32 and int(result["int"]) == 5
    error = float(jnp.max(jnp.abs(result["out"] - reference["out"])) / jnp.max(jnp.abs(reference["out"])))
    assert 1e-5 < error < 3e-2, error  # bfloat16's 8-bit mantissa: visibly rounded, still close


def test_float32_is_the_function_itself_and_bad_dtypes_fail():
    assert with_matmul_dtype(nested, "float32") is nested
    with pytest.raises(ValueError, match=r"must be one of \('float32', 'bfloat16', 'auto'\), got 'float16'"):
        with_matmul_dtype(nested, "float16")


def test_bfloat16_planning_on_a_real_world_model_keeps_the_scores_and_the_plan():
    """A Bayesian pixel world model: candidates' scores under K=2 weight samples stay within bfloat16
    rounding (about 1%) of the float32 ones and rank the same best candidates; the CEM's plan moves less
    with the precision than with its own sampling key."""
    model = WorldModel(tiny_config(transition="flipout", posterior_std_init=0.3), 2)
    batch = {"observation": np.zeros((1, 2, 64, 64, 3), np.uint8), "action": np.zeros((1, 2, 2), np.float32),
             "reward": np.zeros((1, 2), np.float32)}
    params = model.init(KEY, batch)
    state = model.observe(params, KEY, model.initial_state(1), jnp.asarray(batch["observation"][0, :1]),
                          jnp.zeros((1, 2)))
    actions = jax.random.uniform(jax.random.PRNGKey(3), (64, 6, 2), minval=-1, maxval=1)
    score = {dtype: world_model_scorer(model, params, jax.random.PRNGKey(2), make_objective("optimistic"), 2,
                                       matmul_dtype=dtype) for dtype in ("float32", "bfloat16")}
    scores = {dtype: jax.jit(fn)(KEY, state, actions) for dtype, fn in score.items()}
    assert ("float32", "float32") not in matmul_input_dtypes(score["bfloat16"], KEY, state, actions)
    error = float(jnp.max(jnp.abs(scores["bfloat16"] - scores["float32"])))
    assert 0 < error < 2e-2 * float(jnp.max(jnp.abs(scores["float32"]))), error
    best = {dtype: set(np.argsort(np.asarray(s))[-8:].tolist()) for dtype, s in scores.items()}
    assert len(best["float32"] & best["bfloat16"]) >= 6
    cem = CEM(horizon=6, iterations=3, candidates=64, top_k=8)
    plan = jax.jit(lambda key, fn: cem(key, fn, state, cem.initial_plan(2))[1], static_argnums=1)
    precision_change = jnp.max(jnp.abs(plan(KEY, score["bfloat16"]) - plan(KEY, score["float32"])))
    key_change = jnp.max(jnp.abs(plan(jax.random.PRNGKey(7), score["float32"]) - plan(KEY, score["float32"])))
    assert float(precision_change) < 0.5 * float(key_change), (precision_change, key_change)


@pytest.mark.parametrize("cpuinfo, expected", [
    ("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 avx512_vnni\n", True),  # Zen 4
    ("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\nbugs\t\t: sysret_ss_attrs\n", False),  # Zen 3
    ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", True),  # Arm Neoverse V1
    ("processor\t: 0\nFeatures\t: fp asimd evtstrm\n", False),
    ("processor\t: 0\nmodel name\t: unknown\n", None),
])
def test_cpu_bfloat16_flags_are_read_from_cpuinfo(cpuinfo, expected):
    assert cpu_has_bfloat16_matmuls(cpuinfo) is expected



ZEN4_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 avx512_vnni\n"
ZEN3_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"


@pytest.mark.parametrize("backend, cpuinfo, expected", [
    ("cpu", ZEN4_CPUINFO, "bfloat16"),
    ("cpu", ZEN3_CPUINFO, "float32"),
    ("cpu", "processor\t: 0\n", "float32"),  # cannot be told
    ("gpu", ZEN4_CPUINFO, "float32"),
])
def test_auto_prefers_bfloat16_only_on_a_cpu_with_bfloat16_instructions(backend, cpuinfo, expected):
    assert preferred_matmul_dtype(backend, cpuinfo) == expected


def test_auto_rewrites_exactly_when_this_machine_prefers_bfloat16():
    x, kernel = jnp.ones((6, 8)), jnp.eye(8)
    float_inputs = [pair for pair in matmul_input_dtypes(with_matmul_dtype(nested, "auto"), x, kernel)
                    if pair != ("int32", "int32")]
    preferred = preferred_matmul_dtype()
    assert len(float_inputs) == 6 and set(float_inputs) == {(preferred, preferred)}
