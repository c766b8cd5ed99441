"""Run by tests/test_parallel.py in a process with two forced host devices (XLA_FLAGS is read when JAX
starts): compare the sharded train step and CEM call with the single-device ones, then train a tiny
run with `parallel.data` and `parallel.candidates` on. Prints one JSON object."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from bayes_planet.agents.agent import PlanetAgent
from bayes_planet.agents.rollout import random_policy, run_episode
from bayes_planet.agents.run import example_batch, make_env, make_model
from bayes_planet.agents.train import Trainer

from bayes_planet import parallel
from bayes_planet.config import apply_overrides, load_config
from bayes_planet.world_model import make_optimizer, make_train_step


def max_relative_difference(a, b) -> float:
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(y)) + 1e-12)) for x, y in leaves)


def main(logdir: str, tiny_run: list[str]) -> None:
    # The checks below use the run's own config, env, model, optimizer and batch shape, so that the run at the
    # end loads their sharded train step and planner from the compilation cache instead of compiling its own.
    config = load_config("default", tiny_run + ["parallel.data=true", "parallel.candidates=true",
                                                "planner.objective=optimistic", "train.batch_size=4",
                                                "train.eval_episodes=0", "train.train_steps=1"])
    env = make_env(config, seed=0)
    episodes = [run_episode(env, random_policy(env.action_space, seed), seed=seed).arrays() for seed in (0, 1)]
    length = config.train.sequence_length
    batch = {k: np.concatenate([np.stack([e[k][s:s + length] for e in episodes]) for s in (0, 30)])
             for k in ("observation", "action", "reward")}  # 4 sequences of real frames, as the run samples
    model = make_model(config, env)
    params = model.init(jax.random.PRNGKey(0), example_batch(env))
    c = config.train
    optimizer = make_optimizer(c.learning_rate, c.adam_eps, c.grad_clip, c.warmup_steps)
    opt_state = optimizer.init(params)
    mesh = parallel.device_mesh()
    key, data_steps = jax.random.PRNGKey(1), np.float32(1000)
    fresh = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731 (the donating steps delete their inputs)

    single = make_train_step(model, optimizer, donate=True)(fresh(params), fresh(opt_state), key, batch, data_steps)
    sharded_step = make_train_step(model, optimizer, mesh, donate=True)
    sharded_batch = parallel.shard_batch(batch, mesh)
    sharded = sharded_step(fresh(params), fresh(opt_state), key, sharded_batch, data_steps)
    grad = jax.jit(jax.grad(lambda p, b: model.loss(p, key, b, data_steps)[0]))
    grad_sharded = jax.jit(jax.grad(lambda p, b: model.loss(p, key, b, data_steps)[0]),
                           in_shardings=(parallel.replicated(mesh), parallel.split_leading(mesh)))
    hlo = sharded_step.lower(params, opt_state, key, sharded_batch, data_steps).compile().as_text()

    frames = episodes[0]["observation"][3:5]
    replicated = jax.device_put(params, parallel.replicated(mesh))  # as the run's, after its sharded update
    actions = {}
    for dtype in ("float32", "bfloat16"):
        actions[dtype] = []
        for on, agent_params in (("false", params), ("true", replicated)):
            agent = PlanetAgent.from_config(model, apply_overrides(config, [f"planner.matmul_dtype={dtype}",
                                                                             f"parallel.candidates={on}"]))
            state, chosen = agent.reset(jax.random.PRNGKey(3)), []
            # float32 takes the run's two programs: the first step's, and the one planning from a sharded state
            for index, frame in enumerate(frames if dtype == "float32" else frames[:1]):
                action, state = agent.step(agent_params, jax.random.PRNGKey(7 + index), state, frame)
                chosen.append(np.asarray(action).tolist())
            actions[dtype].append(chosen)

    trainer = Trainer(logdir, config, progress=False)
    trainer.run()

    print(json.dumps({
        "devices": jax.device_count(),
        "batch_devices": len(sharded_batch["observation"].sharding.device_set),
        "all_reduce": "all-reduce" in hlo,
        "loss": [float(single[2]["loss"]), float(sharded[2]["loss"])],
        "metrics_difference": max_relative_difference(sharded[2], single[2]),
        "params_difference": max_relative_difference(sharded[0], single[0]),
        "grad_difference": max_relative_difference(grad_sharded(params, batch), grad(params, batch)),
        "actions": actions,
        "run_updates": trainer.updates,
        "run_train_batch_devices": len(trainer.mesh.devices.flat),
        "run_episodes": len(trainer.replay),
    }))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
