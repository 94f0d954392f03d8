"""The coverage experiment on toy-reach, for any world model (run by hand; CPU is fine).

Trains a tiny model on mixed-behaviour episodes confined to the left half of the arena,
then scores every hallucination predictor and baseline on held-out windows from both
halves: the mean on the uncovered (right) half over the covered one, Spearman ρ against
rollout PSNR, and the AUROCs of `uncertainty.evaluation.score_signals`.

`--gap` picks which stage of the model has the coverage gap (the hallucination paper ties
each failure mode to one stage): `all` trains every phase on the left half, so the
tokenizer has never seen the right half either (perceptual hallucination, the round-trip
residual's target); `dynamics` trains the earlier phases (tokenizer, WHALE's behaviour
model) on both halves and only the dynamics on the left (the gap flow instability and
inter-seed variance target).

    python benchmarks/coverage.py --model dreamer4          # ~2 min on 2 cores
    python benchmarks/coverage.py --model whale --ensemble 2  # + 2 more dynamics on its tokenizer
    python benchmarks/coverage.py --model dreamer4 --gap dynamics
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


def trained_models(name: str, store: EpisodeStore, covered: list, root: Path, members: int) -> list:
    """The tiny model and `members` more dynamics trained on its tokenizer. The dynamics
    (the last phase) trains on the `covered` episodes, the earlier phases on all of `store`."""
    torch.manual_seed(0)
    model = world_models.make(name, "tiny")
    cfg = model.cfg
    tc = TrainConfig(steps=cfg.phase_steps, batch=cfg.batch, seq_len=cfg.seq_len, lr=cfg.lr,
                     weight_decay=cfg.weight_decay, progress=False)
    train(model, store, {**{p: store.episodes() for p in model.phases}, model.phases[-1]: covered}, root / "run", tc)
    return [model] + [train_member(model, k, store, covered, root / f"member{k}", tc) for k in range(1, members + 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="dreamer4", choices=world_models.MODELS)
    parser.add_argument("--episodes", type=int, default=300, help="left-half training episodes")
    parser.add_argument("--ensemble", type=int, default=0,
                        help="extra dynamics trained on the same tokenizer: the ensemble baseline")
    parser.add_argument("--gap", default="all", choices=("all", "dynamics"),
                        help="which phases never see the right half: all of them, or only the dynamics")
    parser.add_argument("--windows", type=int, default=128, help="held-out windows per half")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="coverage-"))
    stores = {name: EpisodeStore(root / name) for name in ("train", "left", "right")}
    collect("toy-reach", "mixed", stores["train"].root, args.episodes, size=16, seed=0, progress=False, **LEFT)
    covered = stores["train"].episodes()
    if args.gap == "dynamics":  # the earlier phases also see as many right-half episodes
        collect("toy-reach", "mixed", stores["train"].root, args.episodes, size=16, seed=1, progress=False, **RIGHT)
    collect("toy-reach", "mixed", stores["left"].root, 30, size=16, seed=7, progress=False, **LEFT)
    # the same seeds as the left half: the same behaviour draws and actions, every start and goal
    # moved right by 0.9, so both halves see the same motion and only coverage differs
    collect("toy-reach", "mixed", stores["right"].root, 30, size=16, seed=7, progress=False, **RIGHT)
    t0 = time.perf_counter()
    models = trained_models(args.model, stores["train"], covered, root, args.ensemble)
    minutes = (time.perf_counter() - t0) / 60
    model = models[0]
    motion = MotionStats.fit(stores["train"], model, windows=128)
    knn = KNNDistance.fit(stores["train"], model, covered, size=2048)
    halves = {half: window_signals(model, stores[half], stores[half].episodes(), "toy-reach", windows=args.windows,
                                   motion=motion, knn=knn, ensemble=models[1:], seed=1) for half in ("left", "right")}
    left, right = halves["left"], halves["right"]
    both = {k: np.concatenate([left[k], right[k]]) for k in left}
    print(f"{args.model}/tiny, dynamics on {args.episodes} left-half episodes, gap in {args.gap} phases "
          f"({len(models)} dynamics, {minutes:.1f} min of training); "
          f"rollout PSNR {left['rollout_psnr'].mean():.2f} dB covered, {right['rollout_psnr'].mean():.2f} dB uncovered")
    header = ("right/left", "rho_psnr", "auroc_ignored", "auroc_divergent", "rho_perceptual")
    print(f"{'signal':<14}" + "".join(f"{h:>16}" for h in header))
    for name, s in score_signals(both).items():
        values = (right[name].mean() / left[name].mean(), *s.values())
        print(f"{name:<14}" + "".join(f"{v:>16.3f}" for v in values))
    print("true_motion is a reference, not a predictor: the latent motion of the real future frames")


if __name__ == "__main__":
    main()
