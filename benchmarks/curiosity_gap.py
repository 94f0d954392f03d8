"""Does CEM curiosity reach the half of toy-reach its world model has not seen? (run by hand)

Trains tiny Dreamer-4 models on mixed episodes confined to the left half of the arena,
one per torch seed, then collects `--episodes` curiosity episodes with each (CEM-MPC on
the signal, no finetuning between them) and as many random ones from the same left-half
starts. Reported per model: the share of visited states in the right half (x > 0.1) and
how many cells of an 8 x 8 histogram of that half they reach. The spread across seeds is
the point: one model is an anecdote.

    python benchmarks/curiosity_gap.py --seeds 1,2 --threads 1   # about 4.5 min per model (1 thread)
    python benchmarks/curiosity_gap.py --seeds 1 --steps 900,550 --signal u_r/m
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import world_models
from agents.curiosity import collect_curious, state_coverage
from replay import EpisodeStore, collect
from world_models.training import TrainConfig, train

LEFT = dict(start_box=((-0.8, -0.8), (-0.1, 0.8)), goal_box=((-0.8, -0.8), (-0.1, 0.8)))
PLANNER = dict(horizon=5, population=24, elites=4, iterations=1, replan_every=2)


def right_half(store: EpisodeStore) -> tuple[float, int]:
    """Share of visited states with x > 0.1, and the cells of the right half's 8 x 8 histogram."""
    xy = np.concatenate([store.load(e).states[:, :2] for e in store.episodes()])
    return float(np.mean(xy[:, 0] > 0.1)), state_coverage(xy, (0.1, -1), (1, 1), bins=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="1,2", help="torch seeds of the models, comma-separated")
    parser.add_argument("--steps", default="1800,1100", help="tokenizer,dynamics training steps")
    parser.add_argument("--signal", default="u_f/m")
    parser.add_argument("--episodes", type=int, default=16, help="curiosity and random episodes per model")
    parser.add_argument("--collect-seed", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="folder for stores and models (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tok, dyn = (int(s) for s in args.steps.split(","))
    root = Path(args.out or tempfile.mkdtemp(prefix="curiosity-gap-"))
    data = EpisodeStore(root / "train")
    if not data.episodes():
        collect("toy-reach", "mixed", data, 300, size=16, seed=0, progress=False, **LEFT)
    rand = EpisodeStore(root / f"random-{args.collect_seed}")
    if not rand.episodes():
        collect("toy-reach", "random", rand, args.episodes, size=16, seed=args.collect_seed, progress=False, **LEFT)
    share, cells = right_half(rand)
    print(f"random: share {share:.3f}, {cells} cells of 64 ({args.episodes} episodes, seed {args.collect_seed})")
    for seed in (int(s) for s in args.seeds.split(",")):
        t0 = time.time()
        torch.manual_seed(seed)
        model = world_models.make("dreamer4", "tiny")
        run = root / f"model{seed}-{tok}-{dyn}"
        train(model, data, data.episodes(), run, TrainConfig.for_model(model, {"tokenizer": tok, "dynamics": dyn},
                                                                      progress=False))
        t1 = time.time()
        store = EpisodeStore(root / f"curiosity{seed}-{tok}-{dyn}-{args.signal.replace('/', '')}")
        if not store.episodes():
            collect_curious("toy-reach", run / "checkpoint", store, args.episodes, signal=args.signal,
                            planner=PLANNER, size=16, seed=args.collect_seed, progress=False, **LEFT)
        share, cells = right_half(store)
        print(f"model seed {seed} ({tok} + {dyn} steps, {t1 - t0:.0f} s), curiosity {args.signal}: "
              f"share {share:.3f}, {cells} cells of 64 ({time.time() - t1:.0f} s)")


if __name__ == "__main__":
    main()
