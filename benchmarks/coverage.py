"""The coverage experiment on toy-reach, for any world model (run by hand; CPU is fine).

Trains a tiny model on mixed-behaviour episodes confined to the left half of the arena,
then scores every hallucination predictor and baseline on held-out windows from both
halves: the mean on the uncovered (right) half over the covered one, Spearman ρ against
rollout PSNR, and the AUROCs of `uncertainty.evaluation.score_signals`.

    python benchmarks/coverage.py --model dreamer4          # ~2 min on 2 cores
    python benchmarks/coverage.py --model whale --ensemble 2  # + 2 more dynamics on its tokenizer
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import world_models
from replay import EpisodeStore, collect
from uncertainty import KNNDistance, MotionStats
from uncertainty.evaluation import score_signals, window_signals
from world_models.training import TrainConfig, train, train_member

LEFT = dict(start_box=((-0.8, -0.8), (-0.1, 0.8)), goal_box=((-0.8, -0.8), (-0.1, 0.8)))
RIGHT = dict(start_box=((0.1, -0.8), (0.8, 0.8)), goal_box=((0.1, -0.8), (0.8, 0.8)))


def trained_models(name: str, store: EpisodeStore, root: Path, members: int) -> list:
    """The tiny model and `members` more dynamics trained on its tokenizer."""
    torch.manual_seed(0)
    model = world_models.make(name, "tiny")
    cfg = model.cfg
    tc = TrainConfig(steps=cfg.phase_steps, batch=cfg.batch, seq_len=cfg.seq_len, lr=cfg.lr,
                     weight_decay=cfg.weight_decay, progress=False)
    train(model, store, store.episodes(), root / "run", tc)
    return [model] + [train_member(model, k, store, store.episodes(), root / f"member{k}", tc)
                      for k in range(1, members + 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="dreamer4", choices=world_models.MODELS)
    parser.add_argument("--episodes", type=int, default=300, help="left-half training episodes")
    parser.add_argument("--ensemble", type=int, default=0,
                        help="extra dynamics trained on the same tokenizer: the ensemble baseline")
    parser.add_argument("--windows", type=int, default=128, help="held-out windows per half")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="coverage-"))
    stores = {name: EpisodeStore(root / name) for name in ("train", "left", "right")}
    collect("toy-reach", "mixed", stores["train"].root, args.episodes, size=16, seed=0, progress=False, **LEFT)
    collect("toy-reach", "mixed", stores["left"].root, 30, size=16, seed=7, progress=False, **LEFT)
    collect("toy-reach", "mixed", stores["right"].root, 30, size=16, seed=8, progress=False, **RIGHT)
    t0 = time.perf_counter()
    models = trained_models(args.model, stores["train"], root, args.ensemble)
    minutes = (time.perf_counter() - t0) / 60
    model = models[0]
    motion = MotionStats.fit(stores["train"], model, windows=128)
    knn = KNNDistance.fit(stores["train"], model, stores["train"].episodes(), size=2048)
    halves = {half: window_signals(model, stores[half], stores[half].episodes(), "toy-reach", windows=args.windows,
                                   motion=motion, knn=knn, ensemble=models[1:], seed=1) for half in ("left", "right")}
    left, right = halves["left"], halves["right"]
    both = {k: np.concatenate([left[k], right[k]]) for k in left}
    print(f"{args.model}/tiny on {args.episodes} left-half episodes ({len(models)} dynamics, {minutes:.1f} min of training); "
          f"rollout PSNR {left['rollout_psnr'].mean():.2f} dB covered, {right['rollout_psnr'].mean():.2f} dB uncovered")
    header = ("right/left", "rho_psnr", "auroc_ignored", "auroc_divergent", "rho_perceptual")
    print(f"{'signal':<14}" + "".join(f"{h:>16}" for h in header))
    for name, s in score_signals(both).items():
        values = (right[name].mean() / left[name].mean(), *s.values())
        print(f"{name:<14}" + "".join(f"{v:>16.3f}" for v in values))


if __name__ == "__main__":
    main()
