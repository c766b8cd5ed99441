"""The benchmark suite: one table of medians for PlaNet's sizes and the quickstart's.

    python bench/run.py [--sizes planet quickstart] [--repeats 5] [--skip env rss] [--set model.conv_engine=plain]
                        [--peer /path/to/python-with-torch]

Rows: world-model train step (with GFLOP/s and its share of a float32 matmul measured in the same run),
CEM planning call under K weight samples and with the posterior mean (K = 0, plain PlaNet), filtering
one observation (encode + posterior step), env step (action repeat + one 64x64 render) next to a bare
dm_control step and render, replay sampling from 100 episodes on disk, and the peak RSS of a training
process (a fresh one, 100 episodes in replay, five train steps compiled ahead as the trainer does). Every
time is a median over `repeats` calls after one warm-up call. `--peer PYTHON` also runs
`bench/peer_torch.py` (PlaNet's step and CEM call in PyTorch, the peer's design) with that interpreter right
after our PlaNet-size rows, and prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("MUJOCO_GL", "egl")

from bayes_planet import memory  # noqa: E402

if __name__ == "__main__":  # before JAX loads; the peer, the RSS child and `bayes-planet` run the same way
    memory.restart_with_huge_pages()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bayes_planet.agents.agent import make_planner  # noqa: E402
from timing import alternating_medians, median_seconds  # noqa: E402
from train_step import PRESETS, matmul_gflops  # noqa: E402
from train_step import bench as bench_train_step  # noqa: E402

from bayes_planet.config import load_config  # noqa: E402
from bayes_planet.objectives import make_objective  # noqa: E402
from bayes_planet.planners import world_model_scorer  # noqa: E402
from bayes_planet.replay import Replay  # noqa: E402
from bayes_planet.world_model import WorldModel, make_optimizer, make_train_step  # noqa: E402

ACTION_DIM = 6  # cheetah-run
EPISODE_STEPS = 250  # 1000 env steps at action repeat 4
REPLAY_EPISODES = 100
RSS_STEPS = 5  # train steps in the peak-RSS process (the peak settles after 3)
SMALL_SHADOW_MAP = load_config("small").env.shadow_size  # the CPU presets' shadow map (small, quickstart)


def random_batch(batch_size: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"observation": rng.integers(0, 256, (batch_size, length, 64, 64, 3), dtype=np.uint8),
            "action": rng.uniform(-1, 1, (batch_size, length, ACTION_DIM)).astype(np.float32),
            "reward": rng.uniform(0, 1, (batch_size, length)).astype(np.float32)}


def untrained_model(model_config):
    """``(WorldModel, params)`` at `model_config`'s sizes with freshly initialised weights (cheetah's actions)."""
    model = WorldModel(model_config, ACTION_DIM)
    return model, model.init(jax.random.PRNGKey(0), random_batch(1, 2))


def planner_call(config, model, params, samples: int, matmul_dtype: str):
    """A blocking no-argument function that runs `config`'s planner once (compiled, from a fresh plan) on
    `model` under `samples` weight samples (0: the posterior mean) with `matmul_dtype` rollouts."""
    planner = make_planner(config)
    state = model.initial_state(1)
    plan0 = planner.initial_plan(ACTION_DIM)
    p = config.planner
    score = world_model_scorer(model, params, jax.random.PRNGKey(1), make_objective(p.objective, p.beta, p.alpha),
                               samples, matmul_dtype=matmul_dtype)
    compiled = jax.jit(lambda key, state, plan: planner(key, score, state, plan))
    return lambda: jax.block_until_ready(compiled(jax.random.PRNGKey(2), state, plan0))


def planning_rows(preset: str, repeats: int, overrides: tuple[str, ...] = ()):
    """CEM call (K weight samples, and the posterior mean; float32 and bfloat16 matmuls) and one filter step,
    at a preset's sizes. Returns the rows and the posterior-mean calls by matmul dtype."""
    config = load_config(PRESETS[preset], overrides)
    model, params = untrained_model(config.model)
    state = model.initial_state(1)
    p = config.planner
    rows, mean_calls = [], {}
    for samples, dtype in ((p.weight_samples, "float32"), (p.weight_samples, "bfloat16"), (0, "float32"),
                           (0, "bfloat16")):
        call = planner_call(config, model, params, samples, dtype)
        if not samples:
            mean_calls[dtype] = call
        seconds = median_seconds(call, repeats)
        label = f"K={samples} weight samples" if samples else "posterior mean (K=0)"
        rows.append((f"CEM call, {label}" + (f", {dtype} matmuls" if dtype != "float32" else ""),
                     f"{seconds * 1e3:.1f} ms"))
    frame = jnp.asarray(random_batch(1, 1)["observation"][0, 0])
    observe = jax.jit(lambda key, state, frame: model.observe(params, key, state, frame[None],
                                                             jnp.zeros((1, ACTION_DIM))))
    seconds = median_seconds(lambda: jax.block_until_ready(observe(jax.random.PRNGKey(3), state, frame)), repeats)
    rows.append(("filter one observation", f"{seconds * 1e3:.2f} ms"))
    header = f"  [{p.name.upper()} {p.horizon} / {p.iterations} / {p.candidates} / {p.top_k}]"
    return [(rows[0][0] + header, rows[0][1])] + rows[1:], mean_calls


def peer_rows(python: str, repeats: int, ours: dict[str, object]) -> list[tuple[str, str]]:
    """Time the peer (`bench/peer_torch.py --serve`, run by `python`, an interpreter with torch) call by call,
    alternating with our own calls in `ours` ({"train": fn, "plan": fn, "plan_bfloat16": fn}), and print both
    medians and the ratio (`alternating_medians`, half a second's pause before each call)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_torch.py")
    peer = subprocess.Popen([python, script, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    header = peer.stdout.readline()
    if not header:
        raise SystemExit(f"--peer {python}: bench/peer_torch.py did not start (is torch installed there?)")
    info = json.loads(header)

    def peer_call(kind: str) -> float:
        peer.stdin.write(kind + "\n")
        peer.stdin.flush()
        return float(peer.stdout.readline())

    rows = []
    try:
        for kind, peer_kind, label in (("train", "train", "train step"),
                                       ("plan", "plan", "CEM call (ours: posterior mean, K=0)"),
                                       ("plan_bfloat16", "plan", "CEM call (ours: K=0, bfloat16 matmuls)")):
            if kind not in ours:
                continue
            medians = alternating_medians({"ours": ours[kind], "peer": lambda kind=peer_kind: peer_call(kind)},
                                          repeats, pause=0.5, self_timed=("peer",))
            mine, theirs = medians["ours"], medians["peer"]
            rows.append((f"{label}, alternating with the peer: ours / peer",
                         f"{mine:.3f} s / {theirs:.3f} s = {mine / theirs:.2f}x"))
    finally:
        peer.stdin.close()
        peer.wait()
    name = f"peer: PyTorch {info['torch']} PlaNet, {info['threads']} threads (bench/peer_torch.py)"
    return [(name, "")] + [("  " + label, value) for label, value in rows]


def env_rows(repeats: int) -> list[tuple[str, str]]:
    """Our env step (action repeat 4, one render from a held camera) against the bare dm_control calls it
    replaces (the same steps, then ``physics.render``, which builds a camera per frame), and both with the CPU
    presets' smaller shadow map, the four taking turns."""
    from dm_control import suite

    from bayes_planet import envs

    steps = max(50, 20 * repeats)
    env = envs.make("dmc:cheetah-run", seed=0)
    env.reset(seed=0)
    action = np.zeros(env.action_space.shape, np.float32)
    repeat = env.unwrapped.action_repeat

    def bare_step_with(shadow_size: int | None):
        """The bare suite env's step: the same physics steps, then ``physics.render``."""
        bare = suite.load("cheetah", "run", task_kwargs={"random": 0})
        if shadow_size:
            bare.physics.model.vis.quality.shadowsize = shadow_size
        bare.reset()

        def step():
            for _ in range(repeat):
                bare.step(action)
            bare.physics.render(64, 64, camera_id=0)
        return step

    small_shadows = envs.make("dmc:cheetah-run", seed=0, shadow_size=SMALL_SHADOW_MAP)
    small_shadows.reset(seed=0)
    medians = alternating_medians({"ours": lambda: env.step(action), "bare": bare_step_with(None),
                                   "small shadows": lambda: small_shadows.step(action),
                                   "bare small shadows": bare_step_with(SMALL_SHADOW_MAP)}, steps)
    ours, reference, small = medians["ours"], medians["bare"], medians["small shadows"]
    small_reference = medians["bare small shadows"]
    sequences = np.random.default_rng(0).uniform(-1, 1, (16, 12, *env.action_space.shape))
    simulated = median_seconds(lambda: env.unwrapped.simulate_returns(sequences), max(3, repeats)) / len(sequences)
    return [(f"env step (cheetah-run, repeat {repeat} + one 64x64 render)", f"{ours * 1e3:.2f} ms"),
            ("  bare dm_control: 4 physics steps + physics.render",
             f"{reference * 1e3:.2f} ms (ours {ours / reference:.2f}x)"),
            (f"  with env.shadow_size={SMALL_SHADOW_MAP} (the suite's: 2048)",
             f"{small * 1e3:.2f} ms ({small / ours:.2f}x)"),
            ("    bare dm_control with that shadow map",
             f"{small_reference * 1e3:.2f} ms (ours {small / small_reference:.2f}x)"),
            ("true return of a 12-step action sequence (plan check)", f"{simulated * 1e3:.2f} ms")]


def fill_replay(directory: str, episodes: int = REPLAY_EPISODES) -> Replay:
    """A replay of `episodes` cheetah-sized episodes (random pixels, 251 frames each) on disk."""
    replay = Replay(directory)
    rng = np.random.default_rng(0)
    for _ in range(episodes):
        replay.add({"observation": rng.integers(0, 256, (EPISODE_STEPS + 1, 64, 64, 3), dtype=np.uint8),
                    "action": rng.uniform(-1, 1, (EPISODE_STEPS + 1, ACTION_DIM)).astype(np.float32),
                    "reward": rng.uniform(0, 1, EPISODE_STEPS + 1).astype(np.float32),
                    "velocity": rng.normal(size=(EPISODE_STEPS + 1, 9)).astype(np.float32)})
    return replay


def replay_row(directory: str, repeats: int) -> tuple[str, str]:
    replay = Replay(directory)
    rng = np.random.default_rng(0)
    for index in range(len(replay)):
        replay.episode(index)  # loaded once, as in a long run
    seconds = median_seconds(lambda: replay.sample(50, 50, rng), repeats)
    return (f"replay sample 50 x 50 ({len(replay)} episodes)", f"{seconds * 1e3:.1f} ms")


def rss_child(directory: str, preset: str) -> None:
    """Body of the peak-RSS measurement: a fresh process that trains like the trainer does."""
    config = load_config(PRESETS[preset])
    replay = Replay(directory, config.train.replay_in_memory or None)
    model = WorldModel(config.model, ACTION_DIM)
    optimizer = make_optimizer()
    step = make_train_step(model, optimizer, donate=True)  # as the trainer does
    rng = np.random.default_rng(0)
    keys = ("observation", "action", "reward")
    sample = lambda: {k: v for k, v in replay.sample(config.train.batch_size, config.train.sequence_length,
                                                      rng).items() if k in keys}
    params = model.init(jax.random.PRNGKey(0), {k: v[:1, :2] for k, v in sample().items()})  # as the trainer does
    opt_state = optimizer.init(params)
    data_steps = np.float32(replay.num_steps)
    memory.compile_ahead(step, params, opt_state, jax.random.PRNGKey(0), sample(), data_steps)  # as the trainer does
    for index in range(RSS_STEPS):
        params, opt_state, metrics = step(params, opt_state, jax.random.PRNGKey(index), sample(), data_steps)
        jax.block_until_ready(metrics)
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the forking parent across exec
    with open("/proc/self/status") as status:
        peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(peak_kib / 2**20)  # KiB -> GiB


def rss_row(directory: str, preset: str) -> tuple[str, str]:
    done = subprocess.run([sys.executable, __file__, "--rss-child", directory, preset], capture_output=True,
                          text=True, check=True)
    peak = float(done.stdout.strip().splitlines()[-1])
    return (f"peak RSS of training ({REPLAY_EPISODES} episodes in replay, {preset} sizes)", f"{peak:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["planet", "quickstart"], choices=sorted(PRESETS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip", nargs="*", default=[], choices=["train", "plan", "env", "replay", "rss"])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every preset, e.g. model.conv_engine=plain")
    parser.add_argument("--peer", metavar="PYTHON", help="an interpreter with torch: also time bench/peer_torch.py")
    parser.add_argument("--rss-child", nargs=2, metavar=("DIRECTORY", "PRESET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child)
        return
    peak = matmul_gflops()
    device = jax.devices()[0]
    if args.set:
        print("overrides:", " ".join(args.set))
    print(f"device: {device.platform} {device.device_kind} x{jax.device_count()}, {os.cpu_count()} CPU threads; "
          f"float32 4096^2 matmul: {peak:.0f} GFLOP/s; GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}",
          flush=True)
    rows: list[tuple[str, str]] = []

    def show(new_rows, prefix=""):
        new_rows = [(prefix + name, value) for name, value in new_rows]
        for name, value in new_rows:
            print(f"  {name:<66} {value}", flush=True)
        rows.extend(new_rows)

    for preset in args.sizes:
        print(f"{preset} sizes ({PRESETS[preset]} preset)", flush=True)
        ours = {}
        if "train" not in args.skip:
            r = bench_train_step(preset, args.repeats, tuple(args.set))
            ours["train"] = r["call"]
            show([(f"train step, {r['sizes']}", f"{r['median_s']:.3f} s"),
                  ("  GFLOP per step / achieved GFLOP/s / share of matmul",
                   f"{r['gflop']:.1f} / {r['gflops_per_s']:.1f} / {r['gflops_per_s'] / peak:.1%}")], f"{preset}: ")
        if "plan" not in args.skip:
            plan, mean_calls = planning_rows(preset, args.repeats, tuple(args.set))
            ours["plan"], ours["plan_bfloat16"] = mean_calls["float32"], mean_calls["bfloat16"]
            show(plan, f"{preset}: ")
        if args.peer and preset == "planet":
            show(peer_rows(args.peer, args.repeats, ours))
    with tempfile.TemporaryDirectory() as directory:
        if not {"replay", "rss"} <= set(args.skip):
            fill_replay(directory)
        print("every size", flush=True)
        if "env" not in args.skip:
            show(env_rows(args.repeats))
        if "replay" not in args.skip:
            show([replay_row(directory, args.repeats)])
        if "rss" not in args.skip:
            show([rss_row(directory, preset) for preset in args.sizes])

    print(f"\n| {'measure':<72} | {'median':>22} |\n|{'-' * 74}|{'-' * 24}:|")
    for name, value in rows:
        print(f"| {name:<72} | {value:>22} |")


if __name__ == "__main__":
    main()
