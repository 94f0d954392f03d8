"""WHALE behaviour-conditioning ablation on toy-reach (run by hand; CPU is fine).

Trains the WHALE model with and without behaviour conditioning on the same episodes
(expert and OU-noise behaviours) for the same steps, then rolls both out for 8 steps on
held-out trajectories of a behaviour neither saw (uniform random actions) and prints the
rollout PSNR side by side, with the repeat-last-frame baseline.

    python benchmarks/whale_conditioning.py                # tiny preset, ~5 min on 2 cores
    python benchmarks/whale_conditioning.py --preset small --size 64 --episodes 300
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import world_models
from replay import EpisodeStore, collect
from uncertainty.metrics import rollout_mse
from world_models.base import psnr_from_mse
from world_models.training import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--size", type=int, default=16, help="frame size (the preset's image_size)")
    parser.add_argument("--episodes", type=int, default=150, help="per training behaviour")
    parser.add_argument("--unseen", default="random", help="held-out behaviour")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="whale-bc-"))
    store = EpisodeStore(root / "data")
    for i, behavior in enumerate(("expert", "noise-ou", args.unseen)):
        n = args.episodes if behavior != args.unseen else 40
        collect("toy-reach", behavior, store.root, n, size=args.size, seed=args.seed + 1000 * i, progress=False)
    seen = [e for e in store.episodes(task="toy-reach") if e.behavior in ("expert", "noise-ou")]
    unseen = store.episodes(task="toy-reach", behavior=args.unseen)
    held = store.sample(64, 9, episodes=unseen, rng=np.random.default_rng(args.seed + 1))
    rows = []
    for conditioned in (True, False):
        torch.manual_seed(args.seed)
        model = world_models.make("whale", args.preset, behavior_conditioning=conditioned)
        cfg = model.cfg
        t0 = time.perf_counter()
        train(model, store, seen, root / f"run-{conditioned}", TrainConfig(
            steps=cfg.phase_steps, batch=cfg.batch, seq_len=cfg.seq_len, lr=cfg.lr,
            weight_decay=cfg.weight_decay, seed=args.seed, progress=False))
        minutes = (time.perf_counter() - t0) / 60
        model_err, base_err = rollout_mse(model, held, generator=torch.Generator().manual_seed(args.seed))
        rows.append((conditioned, psnr_from_mse(model_err.mean()).item(), psnr_from_mse(base_err.mean()).item(),
                     psnr_from_mse(model_err.mean(0)).tolist(), minutes))
    print(f"toy-reach, preset {args.preset}, {len(seen)} training episodes (expert + noise-ou), "
          f"8-step rollouts on 64 held-out windows of '{args.unseen}' trajectories")
    print(f"{'behaviour conditioning':<24}{'rollout PSNR':>14}{'repeat-frame':>14}{'gain':>8}{'train min':>11}   per-step PSNR")
    for conditioned, psnr, base, per_step, minutes in rows:
        print(f"{str(conditioned):<24}{psnr:>11.2f} dB{base:>11.2f} dB{psnr - base:>8.2f}{minutes:>11.1f}   "
              + " ".join(f"{p:.1f}" for p in per_step))


if __name__ == "__main__":
    main()
