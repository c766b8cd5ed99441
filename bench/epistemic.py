"""Is the spread across weight samples epistemic? Where the model has seen less data it should be larger.

Trains small world models on real cartpole-swingup physics (state observations, so each takes seconds)
from episodes whose random actions push the cart one way only (uniform in [-1, 0]). Then, for each
weight-KL scale, it prints the transition layers' median posterior std, the weight KL, and the spread of
imagined returns across held weight samples (std over K samples of the 12-step return, averaged over start
states) and of the predicted states (std over K samples of the imagined features after 12 steps, averaged
over feature dimensions and start states) on held-out windows of three kinds:

* seen: more one-way episodes (the training distribution);
* unseen: episodes pushed the other way (actions in [0, 1]), states the model never trained on
  (`--unseen amplitude`: train on gentle pushes, |action| <= 0.3, and test on hard ones, 0.7 to 1, whose
  states are faster; a mean-field layer's output variance sums x^2 std^2, blind to a mirrored input);
* and "seen" again for a model trained on one episode instead of `--episodes`.

Rows in the weight samples share their latent noise (see `RSSM.prior_step`), so both spreads are the
weights' alone. `--elbo` sets each model's weight-KL scale to 1 / (steps in its training data), the
ELBO's weighting, so the model trained on one episode gets a 6x stronger pull toward the prior than the
one trained on six; `--prior-scalings none fan_in` compares N(0, 1) with N(0, 1 / fan_in) weight priors.

    python bench/epistemic.py --scales 4.0e-6 2.0e-4
    python bench/epistemic.py --elbo --prior-scalings none fan_in --std-inits 0.01 0.1
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from bayes_planet.agents.rollout import run_episode  # noqa: E402
from imagination import sample_batch  # noqa: E402  (bench/ is on the path when run as a script)

from bayes_planet import (
    bayes,  # noqa: E402
    envs,  # noqa: E402
)
from bayes_planet.world_model import ModelConfig, WorldModel, make_optimizer, make_train_step  # noqa: E402

SIZES = dict(observation="state", deter_size=32, stoch_size=8, hidden_size=32, state_embed_size=32,
             reward_hidden=32, reward_layers=2)
CONTEXT, HORIZON = 5, 12


def random_push_episodes(count: int, seed: int, low: float, high: float,
                         both_ways: bool = False) -> list[dict[str, np.ndarray]]:
    """Episodes of random actions uniform in [low, high], negated at random steps when `both_ways`."""
    env = envs.make("dmc:cartpole-swingup", observation="state", seed=seed)
    out = []
    for index in range(count):
        rng = np.random.default_rng(seed + index)

        def policy(_, rng=rng):
            sign = rng.choice([-1.0, 1.0]) if both_ways else 1.0
            return (sign * rng.uniform(low, high, (1,))).astype(np.float32)

        out.append(run_episode(env, policy, seed=seed + index).arrays())
    return out


# (training and "seen" pushes, "unseen" pushes) as (low, high, both_ways)
SPLITS = {
    "direction": ((-1.0, 0.0, False), (0.0, 1.0, False)),  # one way only, then the other way
    "amplitude": ((0.0, 0.3, True), (0.7, 1.0, True)),  # gentle pushes, then hard ones (faster states)
}


def train(episodes, scale: float | None, updates: int, seed: int, std_init: float = 1e-2,
          prior_scaling: str = "none", **model_options):
    """A world model fitted to `episodes`; `scale` None: the ELBO's, T / (steps in `episodes`), with T the
    `weight_kl_temperature` of `model_options` (1 unless given; T < 1 is a cold posterior)."""
    if scale is None:
        temperature = model_options.get("weight_kl_temperature", 1.0)
        scale = temperature / sum(len(episode["reward"]) for episode in episodes)
    config = ModelConfig(**{**SIZES, **model_options}, weight_kl_schedule="constant", weight_kl_scale=scale,
                         posterior_std_init=std_init, prior_scaling=prior_scaling)
    model = WorldModel(config, 1, episodes[0]["observation"].shape[1:])
    rng = np.random.default_rng(seed)
    params = model.init(jax.random.PRNGKey(seed), sample_batch(episodes, 6, 16, rng))
    optimizer = make_optimizer(3e-3)
    opt_state, step = optimizer.init(params), make_train_step(model, optimizer)
    for update in range(updates):
        batch = sample_batch(episodes, 6, 16, rng)
        params, opt_state, metrics = step(params, opt_state, jax.random.PRNGKey(update), batch)
    return model, params, float(metrics["weight_kl"])


def spreads(model, params, windows, samples: int) -> tuple[float, float]:
    """Std across `samples` held weight samples of the imagined HORIZON-step return, and of the imagined
    features at step HORIZON (mean over feature dimensions), each averaged over windows."""
    key = jax.random.PRNGKey(1)
    batch = windows["action"].shape[0]
    posts = model.observe(params, key, model.initial_state(batch), windows["observation"][:, :CONTEXT],
                          windows["action"][:, :CONTEXT])
    tile = lambda x: jnp.tile(x, (samples,) + (1,) * (x.ndim - 1))
    start = jax.tree.map(lambda x: tile(x[:, -1]), posts)
    rewards, states = model.imagine(params, key, start, tile(windows["action"][:, CONTEXT:]),
                                    model.sample_weights(params, jax.random.PRNGKey(2), samples))
    returns = rewards.sum(-1).reshape(samples, batch)
    features = model.features(states)[:, -1].reshape(samples, batch, -1)
    return float(jnp.mean(jnp.std(returns, axis=0))), float(jnp.mean(jnp.std(features, axis=0)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=float, nargs="+", default=[4e-6, 2e-4], help="weight_kl_scale values")
    parser.add_argument("--episodes", type=int, default=6, help="one-way training episodes")
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=16, help="weight samples K")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--std-inits", type=float, nargs="+", default=[1e-2],
                        help="model.posterior_std_init values (the posterior std the weights start from)")
    parser.add_argument("--prior-scalings", nargs="+", default=["none"], choices=bayes.PRIOR_SCALINGS,
                        help="model.prior_scaling values")
    parser.add_argument("--elbo", action="store_true",
                        help="weight-KL scale T / (training steps) per model instead of --scales (T: "
                             "--model weight_kl_temperature=T, default 1)")
    parser.add_argument("--model", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more ModelConfig options for every model, e.g. free_nats_side=posterior")
    parser.add_argument("--unseen", choices=tuple(SPLITS), default="direction",
                        help="what the unseen windows change: the push's direction or its amplitude")
    args = parser.parse_args()
    options = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.model)}
    print(f"model options beyond {SIZES}: {options}")
    seen_pushes, unseen_pushes = SPLITS[args.unseen]
    train_episodes = random_push_episodes(args.episodes, 0, *seen_pushes)
    window = CONTEXT + HORIZON
    seen = sample_batch(random_push_episodes(2, 500, *seen_pushes), 64, window, np.random.default_rng(1))
    unseen = sample_batch(random_push_episodes(2, 600, *unseen_pushes), 64, window, np.random.default_rng(2))
    print("spreads: imagined 12-step return / predicted state, std across weight samples")
    print(f"{'weight_kl_scale':>15} {'prior':>6} {'std init':>8} {'seed':>4} {'std in/hid/out':>22} "
          f"{'weight KL':>10} {'seen':>13} {'unseen':>13} {'seen, 1 episode':>15}")
    scales = [None] if args.elbo else args.scales
    for scale, scaling, std_init in ((a, b, c) for a in scales for b in args.prior_scalings for c in args.std_inits):
        for seed in range(args.seeds):
            model, params, weight_kl = train(train_episodes, scale, args.updates, seed, std_init, scaling, **options)
            stds = [float(jnp.median(jax.nn.softplus(params[f"rssm/~/{layer}"][bayes.VARIATIONAL_RHO])))
                    for layer in ("transition_in", "prior_hidden", "prior_out")]
            few_model, few_params, _ = train(train_episodes[:1], scale, args.updates, seed, std_init, scaling,
                                             **options)
            text = lambda pair: f"{pair[0]:.3f}/{pair[1]:.3f}"
            print(f"{'ELBO' if scale is None else f'{scale:.1e}':>15} {scaling:>6} {std_init:>8.3f} {seed:>4} "
                  f"{'/'.join(f'{s:.3f}' for s in stds):>22} {weight_kl:>10.0f} "
                  f"{text(spreads(model, params, seen, args.samples)):>13} "
                  f"{text(spreads(model, params, unseen, args.samples)):>13} "
                  f"{text(spreads(few_model, few_params, seen, args.samples)):>15}", flush=True)


if __name__ == "__main__":
    main()
