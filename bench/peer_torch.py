"""The peer: PlaNet's train step and CEM call written the usual PyTorch way, at PlaNet's sizes.

    python bench/peer_torch.py [--repeats 5] [--threads N]      # needs torch (pip install torch==2.13.0)

This is the design of the PyTorch reimplementation of PlaNet (Kaixhin/PlaNet) written afresh: `nn.Conv2d`
/ `nn.ConvTranspose2d` encoder and decoder (kernels 4,4,4,4 and 5,5,6,6), a GRU cell RSSM stepped by a
Python loop over time, a reward MLP, the unit-Gaussian pixel and reward likelihoods, the KL with free nats,
Adam and gradient clipping. Sizes are ours (batch 50 x 50, GRU 200, latent 30, hidden 200, reward head
3 x 300, CEM 12 / 10 / 1000 / 100), so its times sit next to `bench/run.py`'s. `bench/run.py --peer
PYTHON` runs this script with that interpreter and prints the ratios. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from timing import median_seconds
from torch import nn
from torch.nn import functional as F

BATCH, LENGTH, ACTION_DIM = 50, 50, 6
DETER, STOCH, HIDDEN, EMBED, REWARD_HIDDEN = 200, 30, 200, 1024, 300
HORIZON, ITERATIONS, CANDIDATES, TOP_K = 12, 10, 1000, 100
FREE_NATS, MIN_STD = 3.0, 0.1


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, 32, 4, 2), nn.Conv2d(32, 64, 4, 2), nn.Conv2d(64, 128, 4, 2),
                                    nn.Conv2d(128, 256, 4, 2)])

    def forward(self, x):  # [N, 3, 64, 64] -> [N, 1024]
        for conv in self.convs:
            x = F.relu(conv(x))
        return x.flatten(1)


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(DETER + STOCH, EMBED)
        self.deconvs = nn.ModuleList([nn.ConvTranspose2d(EMBED, 128, 5, 2), nn.ConvTranspose2d(128, 64, 5, 2),
                                      nn.ConvTranspose2d(64, 32, 6, 2), nn.ConvTranspose2d(32, 3, 6, 2)])

    def forward(self, features):  # [N, 230] -> [N, 3, 64, 64]
        x = self.dense(features)[:, :, None, None]
        for index, deconv in enumerate(self.deconvs):
            x = deconv(x)
            x = x if index == len(self.deconvs) - 1 else F.relu(x)
        return x


class RSSM(nn.Module):
    def __init__(self):
        super().__init__()
        self.transition_in = nn.Linear(STOCH + ACTION_DIM, HIDDEN)
        self.cell = nn.GRUCell(HIDDEN, DETER)
        self.prior_hidden = nn.Linear(DETER, HIDDEN)
        self.prior_out = nn.Linear(HIDDEN, 2 * STOCH)
        self.posterior_hidden = nn.Linear(DETER + EMBED, HIDDEN)
        self.posterior_out = nn.Linear(HIDDEN, 2 * STOCH)

    @staticmethod
    def gaussian(raw):
        mean, std = raw.chunk(2, -1)
        return mean, F.softplus(std) + MIN_STD

    def prior(self, deter, stoch, action):
        deter = self.cell(F.relu(self.transition_in(torch.cat([stoch, action], -1))), deter)
        mean, std = self.gaussian(self.prior_out(F.relu(self.prior_hidden(deter))))
        return deter, mean + std * torch.randn_like(mean), mean, std

    def posterior(self, deter, embed):
        mean, std = self.gaussian(self.posterior_out(F.relu(self.posterior_hidden(torch.cat([deter, embed], -1)))))
        return mean + std * torch.randn_like(mean), mean, std


def reward_head() -> nn.Module:
    return nn.Sequential(nn.Linear(DETER + STOCH, REWARD_HIDDEN), nn.ReLU(), nn.Linear(REWARD_HIDDEN, REWARD_HIDDEN),
                         nn.ReLU(), nn.Linear(REWARD_HIDDEN, REWARD_HIDDEN), nn.ReLU(), nn.Linear(REWARD_HIDDEN, 1))


class PlaNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder, self.decoder, self.rssm, self.reward = Encoder(), Decoder(), RSSM(), reward_head()

    def loss(self, observation, action, reward):
        """observation [B, T, 3, 64, 64] floats, action [B, T, A], reward [B, T] -> scalar loss."""
        batch, length = action.shape[:2]
        embeds = self.encoder(observation.flatten(0, 1)).view(batch, length, -1)
        deter, stoch = observation.new_zeros(batch, DETER), observation.new_zeros(batch, STOCH)
        features, kls = [], []
        for t in range(length):  # the Python loop over time of the PyTorch implementations
            deter, _, prior_mean, prior_std = self.rssm.prior(deter, stoch, action[:, t])
            stoch, mean, std = self.rssm.posterior(deter, embeds[:, t])
            kl = (torch.log(prior_std / std) + (std**2 + (mean - prior_mean) ** 2) / (2 * prior_std**2) - 0.5).sum(-1)
            features.append(torch.cat([deter, stoch], -1))
            kls.append(kl)
        features = torch.stack(features, 1).flatten(0, 1)
        image_nll = 0.5 * (self.decoder(features) - observation.flatten(0, 1)).pow(2).sum((1, 2, 3))
        reward_nll = 0.5 * (self.reward(features).squeeze(-1) - reward.flatten()).pow(2)
        kl = torch.clamp(torch.stack(kls, 1), min=FREE_NATS)
        return image_nll.mean() + reward_nll.mean() + kl.mean()

    @torch.no_grad()
    def plan(self, deter, stoch):
        """CEM from one state ``[1, ...]``: the first action of the best mean ``[A]``."""
        mean = deter.new_zeros(HORIZON, ACTION_DIM)
        std = deter.new_ones(HORIZON, ACTION_DIM)
        deter, stoch = deter.expand(CANDIDATES, -1), stoch.expand(CANDIDATES, -1)
        for _ in range(ITERATIONS):
            actions = (mean + std * torch.randn(CANDIDATES, HORIZON, ACTION_DIM)).clamp(-1, 1)
            d, s, returns = deter, stoch, deter.new_zeros(CANDIDATES)
            for t in range(HORIZON):
                d, s, _, _ = self.rssm.prior(d, s, actions[:, t])
                returns += self.reward(torch.cat([d, s], -1)).squeeze(-1)
            best = actions[returns.topk(TOP_K).indices]
            mean, std = best.mean(0), best.std(0, unbiased=False)
        return mean[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--serve", action="store_true", help="time one call per stdin line: train | plan")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = PlaNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-4)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (BATCH, LENGTH, 3, 64, 64), dtype=np.uint8)
    observation = torch.from_numpy(pixels).float() / 255.0 - 0.5
    action = torch.from_numpy(rng.uniform(-1, 1, (BATCH, LENGTH, ACTION_DIM)).astype(np.float32))
    reward = torch.from_numpy(rng.uniform(0, 1, (BATCH, LENGTH)).astype(np.float32))

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        model.loss(observation, action, reward).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1000.0)
        optimizer.step()

    state = (torch.zeros(1, DETER), torch.zeros(1, STOCH))
    calls = {"train": train_step, "plan": lambda: model.plan(*state)}
    if args.serve:
        print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
        for line in sys.stdin:
            start = time.perf_counter()
            calls[line.strip()]()
            print(time.perf_counter() - start, flush=True)
        return
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(),
              "train_step_s": median_seconds(train_step, args.repeats),
              "cem_call_s": median_seconds(lambda: model.plan(*state), args.repeats)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
