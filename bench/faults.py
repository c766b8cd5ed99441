"""Fault injection on a tiny real run: kill -9 at many moments, and compare with an uninterrupted run.

One tiny cartpole-swingup run (2 random + 4 collected episodes, an evaluation after each) runs to the end
undisturbed, taking T seconds; a second, identical one is killed with SIGKILL `--kills` times, each at a
random moment 0.15 T to 0.6 T after its start (so in start-up, random episodes, updates, collection,
evaluation, reports or a checkpoint write), and rerun after each kill until it finishes. Printed: one row
per kill (where it struck, what the disk held), then what the killed run ended with against the
undisturbed one (updates, episodes, evaluations, parameters).

    python bench/faults.py --kills 10 --out /tmp/faults
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from bayes_planet.agents.cli import cli_argv  # noqa: E402
from conftest import EPISODE_ENV_STEPS, TINY_RUN  # noqa: E402

from bayes_planet.checkpoint import load_checkpoint  # noqa: E402
from bayes_planet.logger import read_metrics  # noqa: E402
from bayes_planet.replay import Replay  # noqa: E402


def command(logdir: str) -> list[str]:
    overrides = TINY_RUN + [f"train.env_steps={6 * EPISODE_ENV_STEPS}"]
    return cli_argv("train", "--logdir", logdir, "--no-progress",
                    *[arg for item in overrides for arg in ("--set", item)])


def summary(logdir: str) -> dict:
    records = read_metrics(logdir)
    saved = load_checkpoint(os.path.join(logdir, "checkpoint.npz"))
    return {"updates": int(saved["updates"]), "episodes": len(Replay(os.path.join(logdir, "episodes"))),
            "eval steps": [r["step"] for r in records if r["kind"] == "eval"],
            "eval returns": [round(r["return"], 2) for r in records if r["kind"] == "eval"],
            "train records": len([r for r in records if r["kind"] == "train"]),
            "random records": len([r for r in records if r["kind"] == "random"]),
            "params": saved["params"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--out", default="/tmp/bayes-planet-faults")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    reference, killed = os.path.join(args.out, "reference"), os.path.join(args.out, "killed")
    start = time.perf_counter()
    subprocess.run(command(reference), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    duration = time.perf_counter() - start
    print(f"undisturbed run: {duration:.0f} s")
    rng = np.random.default_rng(args.seed)
    checkpoint = os.path.join(killed, "checkpoint.npz")
    print("| kill | s after start | episodes on disk | checkpoint: updates / episodes | evals logged |")
    print("|---|---|---|---|---|")
    for kill in range(args.kills):
        process = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        delay = rng.uniform(0.15, 0.6) * duration
        time.sleep(delay)
        if process.poll() is not None:
            print(f"| {kill + 1} | - | the run finished before the kill | | |")
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        saved = load_checkpoint(checkpoint)
        evals = len([r for r in read_metrics(killed) if r["kind"] == "eval"])
        held = "none" if saved is None else f"{saved['updates']} / {saved['episodes']}"
        print(f"| {kill + 1} | {delay:.1f} | {len(Replay(os.path.join(killed, 'episodes')))} | {held} | {evals} |",
              flush=True)
    subprocess.run(command(killed), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    want, got = summary(reference), summary(killed)
    print("\n| | undisturbed | killed and rerun |\n|---|---|---|")
    for key in ("updates", "episodes", "eval steps", "eval returns", "train records", "random records"):
        print(f"| {key} | {want[key]} | {got[key]} |")
    import jax

    same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(want["params"]), jax.tree.leaves(got["params"]),
                                                    strict=True))
    print(f"| final parameters bit-identical | | {same} |")


if __name__ == "__main__":
    main()
