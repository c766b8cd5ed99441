"""Median world-model train-step time at PlaNet's sizes and at the quickstart's, with achieved GFLOP/s
next to a float32 matmul's GFLOP/s measured in the same run.

    python bench/train_step.py [--sizes planet quickstart] [--repeats 5]

FLOPs come from XLA's cost analysis, which counts the body of a scan or `lax.map` once. So they are
counted on an unchunked variant of the step (``conv_chunk=0``, compiled, never run) at two sequence
lengths: the difference gives the per-frame work, the rest is one step of the recurrent scan, which is
then counted once per time step.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from timing import median_seconds

from bayes_planet.config import load_config
from bayes_planet.world_model import WorldModel, make_optimizer, make_train_step

# the train-step sizes of two presets: PlaNet's (every task preset) and the quickstart's
PRESETS = {"planet": "cheetah_run", "quickstart": "quickstart"}
DATA_STEPS = np.float32(100_000 // 4)  # the ELBO's count halfway through a 100k-step run (its value costs nothing)


def preset_sizes(name: str, overrides: tuple[str, ...] = ()):
    """``(ModelConfig, batch_size, sequence_length)`` of a `PRESETS` entry, with dotted `overrides`."""
    config = load_config(PRESETS[name], overrides)
    return config.model, config.train.batch_size, config.train.sequence_length


def matmul_gflops(n: int = 4096, repeats: int = 5) -> float:
    """GFLOP/s of a float32 ``n x n`` matmul (median of `repeats` after a warm-up)."""
    a = jnp.ones((n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    return 2 * n**3 / median_seconds(lambda: dot(a, a).block_until_ready(), repeats) / 1e9


def step_flops(config, action_dim, batch, params, opt_state) -> float:
    """FLOPs of one train step with every scan step counted (see the module docstring)."""
    model = WorldModel(dataclasses.replace(config, conv_chunk=0), action_dim)
    step = make_train_step(model, make_optimizer())
    length = batch["action"].shape[1]
    short = max(1, length // 2)

    def counted(steps):
        chunk = {k: v[:, :steps] for k, v in batch.items()}
        compiled = step.lower(params, opt_state, jax.random.PRNGKey(0), chunk, DATA_STEPS).compile()
        return (compiled.cost_analysis() or {}).get("flops", float("nan"))

    full, half = counted(length), counted(short)
    per_step_of_time = (full - half) / (length - short)  # frames through encoder, decoder, heads, loss
    scan_step = full - per_step_of_time * length  # one recurrent step, counted once by XLA
    return per_step_of_time * length + scan_step * length


def bench(name: str, repeats: int, overrides: tuple[str, ...] = ()) -> dict:
    config, batch_size, length = preset_sizes(name, overrides)
    action_dim = 6
    rng = np.random.default_rng(0)
    batch = {
        "observation": rng.integers(0, 256, (batch_size, length, 64, 64, 3), dtype=np.uint8),
        "action": rng.uniform(-1, 1, (batch_size, length, action_dim)).astype(np.float32),
        "reward": rng.normal(size=(batch_size, length)).astype(np.float32),
    }
    model = WorldModel(config, action_dim)
    params = model.init(jax.random.PRNGKey(0), {k: v[:1, :2] for k, v in batch.items()})
    optimizer = make_optimizer()
    opt_state = optimizer.init(params)
    step = make_train_step(model, optimizer, donate=True)  # as the trainer does
    flops = step_flops(config, action_dim, batch, params, opt_state)
    state = {"params": params, "opt_state": opt_state, "calls": 0}

    def call() -> None:
        """One train step on the same batch (a fresh key each call), blocking until it is done."""
        state["params"], state["opt_state"], metrics = step(state["params"], state["opt_state"],
                                                            jax.random.PRNGKey(state["calls"]), batch, DATA_STEPS)
        state["calls"] += 1
        jax.block_until_ready(metrics)

    median = median_seconds(call, repeats)
    return {"sizes": f"{name} (batch {batch_size} x {length})", "median_s": median, "gflop": flops / 1e9,
            "gflops_per_s": flops / 1e9 / median, "call": call}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["quickstart", "planet"], choices=sorted(PRESETS))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    peak = matmul_gflops()
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; float32 4096^2 matmul: {peak:.0f} GFLOP/s")
    print(f"{'sizes':<28} {'median s/step':>14} {'GFLOP/step':>11} {'GFLOP/s':>9} {'share of matmul':>16}")
    for name in args.sizes:
        row = bench(name, args.repeats)
        print(f"{row['sizes']:<28} {row['median_s']:>14.3f} {row['gflop']:>11.1f} {row['gflops_per_s']:>9.1f} "
              f"{row['gflops_per_s'] / peak:>15.1%}", flush=True)


if __name__ == "__main__":
    main()
