"""What a CEM budget costs: one planning call per budget, the calls taking turns in one process, so that
their ratios are measured under the same load.

    python bench/planner_budget.py [--config small] [--budgets 4x150/15 8x75/8 8x150/15] [--repeats 20]
                                   [--set KEY=VALUE ...]

A budget is ``ITERATIONSxCANDIDATES/TOP_K``; the rest of the planner (horizon, weight samples, matmul dtype)
is the preset's. Prints, per budget, the imagined rollouts per decision (iterations x candidates x weight
samples), the median call in ms, its ratio to the first budget's, and the planning minutes that 100k env
steps of training-episode decisions cost at action repeats 2, 4 and 8 (medians x decisions; evaluation
episodes, updates and the env come on top). The model is untrained: the call's cost does not depend on
its weights.
"""

from __future__ import annotations

import argparse
import os
import re

os.environ.setdefault("MUJOCO_GL", "egl")

from bayes_planet import memory  # noqa: E402

if __name__ == "__main__":  # before JAX loads, as bench/run.py
    memory.restart_with_huge_pages()

from run import planner_call, untrained_model  # noqa: E402
from timing import alternating_medians  # noqa: E402

from bayes_planet.config import load_config  # noqa: E402

BUDGET = re.compile(r"^(\d+)x(\d+)/(\d+)$")
ENV_STEPS = 100_000
ACTION_REPEATS = (2, 4, 8)


def budget_overrides(budget: str) -> tuple[str, ...]:
    """``"8x75/8"`` -> the config overrides for 8 iterations over 75 candidates, refitting to the top 8."""
    match = BUDGET.match(budget)
    if not match:
        raise SystemExit(f"--budgets: {budget!r} is not ITERATIONSxCANDIDATES/TOP_K, e.g. 8x75/8")
    iterations, candidates, top_k = match.groups()
    return (f"planner.iterations={iterations}", f"planner.candidates={candidates}", f"planner.top_k={top_k}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="small", help="the preset whose model and planner are timed")
    parser.add_argument("--budgets", nargs="+", default=["4x150/15", "8x75/8", "8x150/15"],
                        help="ITERATIONSxCANDIDATES/TOP_K, the first one the reference of the ratios")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides")
    args = parser.parse_args()
    configs = {budget: load_config(args.config, (*args.set, *budget_overrides(budget))) for budget in args.budgets}
    first = configs[args.budgets[0]]
    model, params = untrained_model(first.model)
    samples, dtype = first.planner.weight_samples, first.planner.matmul_dtype
    calls = {budget: planner_call(config, model, params, samples, dtype) for budget, config in configs.items()}
    medians = alternating_medians(calls, args.repeats)
    print(f"{args.config} preset, horizon {first.planner.horizon}, K = {samples} weight samples, {dtype} matmuls, "
          f"{os.cpu_count()} CPU threads, medians of {args.repeats} alternating calls")
    repeats_header = " | ".join(f"min / 100k at AR {r}" for r in ACTION_REPEATS)
    print(f"| budget | rollouts | CEM call | ratio | {repeats_header} |\n|---|---|---|---|"
          + "---|" * len(ACTION_REPEATS))
    for budget, config in configs.items():
        p = config.planner
        rollouts = p.iterations * p.candidates * max(samples, 1)
        minutes = " | ".join(f"{medians[budget] * ENV_STEPS / r / 60:.1f}" for r in ACTION_REPEATS)
        print(f"| {budget} | {rollouts} | {medians[budget] * 1e3:.1f} ms | "
              f"{medians[budget] / medians[args.budgets[0]]:.2f}x | {minutes} |")


if __name__ == "__main__":
    main()
