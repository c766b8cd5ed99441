"""What one turn of the training loop costs (updates, then one collected episode), read from finished runs'
``metrics.jsonl``, e.g. PlaNet's loop against ``train.collect_while_training``:

    for mode in false true; do
      bayes-planet train --config small --logdir runs/cycle-$mode --no-progress --set env.task=dmc:walker-walk \\
        --set train.env_steps=15000 --set train.eval_every=1000 --set train.eval_episodes=1 \\
        --set train.collect_while_training=$mode
    done   # one run at a time, nothing else running
    python bench/loop_cycle.py runs/cycle-false runs/cycle-true

Prints, per run, the median wall seconds between consecutive collected episodes (a whole turn: the updates
and the collection, whether one after the other or side by side), the median collection and update-phase
seconds (each phase's own wall time), and each run's turn as a ratio of the first run's. The first collected
episode is left out: its turn compiles the train step and the planner.
"""

from __future__ import annotations

import argparse
import itertools
import statistics

from bayes_planet.logger import read_metrics


def turn_seconds(logdir: str) -> dict[str, float]:
    """Median seconds of a run's loop turn, collection and update phase (`metrics.jsonl` of `logdir`)."""
    records = read_metrics(logdir)
    episodes = [r for r in records if r["kind"] == "episode"][1:]
    phases = [r for r in records if r["kind"] == "train" and "seconds" in r][1:]
    if len(episodes) < 2:
        raise SystemExit(f"{logdir}: needs at least 3 collected episodes, found {len(episodes) + 1}")
    turns = [after["wall_time"] - before["wall_time"] for before, after in itertools.pairwise(episodes)]
    return {"turn": statistics.median(turns), "turns": len(turns),
            "collection": statistics.median(r["seconds"] for r in episodes),
            "updates": statistics.median(r["seconds"] for r in phases) if phases else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="finished run directories (the first is the reference)")
    args = parser.parse_args()
    first = None
    for logdir in args.runs:
        times = turn_seconds(logdir)
        first = first or times["turn"]
        print(f"{logdir}: turn {times['turn']:.1f} s (median of {times['turns']}; {times['turn'] / first:.2f}x "
              f"the first run's), collection {times['collection']:.1f} s, update phase {times['updates']:.1f} s")


if __name__ == "__main__":
    main()
