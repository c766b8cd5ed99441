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
from bayes_planet.agents.train import Trainer

from bayes_planet import envs, parallel
from bayes_planet.config import load_config
from bayes_planet.planners import CEM
from bayes_planet.world_model import ModelConfig, WorldModel, make_optimizer, make_train_step


def max_relative_difference(a, b) -> float:
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(y)) + 1e-12)) for x, y in leaves)


def main(logdir: str, tiny_run: list[str]) -> None:
    env = envs.make("dmc:cartpole-swingup", seed=0)
    episodes = [run_episode(env, random_policy(env.action_space, seed), seed=seed).arrays() for seed in (0, 1)]
    batch = {k: np.concatenate([np.stack([e[k][s:s + 10] for e in episodes]) for s in (0, 40)])
             for k in ("observation", "action", "reward")}  # 4 sequences of 10 real frames
    model = WorldModel(ModelConfig(cnn_depth=4, deter_size=16, stoch_size=4, hidden_size=16, reward_hidden=16,
                                   reward_layers=1, conv_chunk=0), action_dim=1)
    params = model.init(jax.random.PRNGKey(0), batch)
    optimizer = make_optimizer()
    opt_state = optimizer.init(params)
    mesh = parallel.device_mesh()
    key, data_steps = jax.random.PRNGKey(1), np.float32(1000)

    single = make_train_step(model, optimizer)(params, opt_state, key, batch, data_steps)
    sharded_step = make_train_step(model, optimizer, mesh)
    sharded_batch = parallel.shard_batch(batch, mesh)
    sharded = sharded_step(params, opt_state, key, sharded_batch, data_steps)
    grad = jax.jit(jax.grad(lambda p, b: model.loss(p, key, b, data_steps)[0]))
    grad_sharded = jax.jit(jax.grad(lambda p, b: model.loss(p, key, b, data_steps)[0]),
                           in_shardings=(parallel.replicated(mesh), parallel.split_leading(mesh)))
    hlo = sharded_step.lower(params, opt_state, key, sharded_batch, data_steps).compile().as_text()

    planner = CEM(horizon=5, iterations=3, candidates=32, top_k=4)
    frame = episodes[0]["observation"][3]
    actions = {}
    for dtype in ("float32", "bfloat16"):
        agents = [PlanetAgent(model, planner, "optimistic", weight_samples=2, mesh=m, matmul_dtype=dtype)
                  for m in (None, mesh)]
        actions[dtype] = [np.asarray(agent.step(params, jax.random.PRNGKey(7), agent.reset(jax.random.PRNGKey(3)),
                                                frame)[0]).tolist() for agent in agents]

    config = load_config("default", tiny_run + ["parallel.data=true", "parallel.candidates=true",
                                                "train.batch_size=4", "train.eval_episodes=0",
                                                "train.train_steps=1"])
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
