"""Coverage-aware mid-training (the hallucination paper's first recipe), run by hand.

One multi-task store with an imbalanced mix (by default 10:1: toy-reach common, toy-maze
rare), two tiny models trained for the same steps from the same seed: one samples windows
uniformly over frames (`weighting=frame`), the other uniformly over tasks first
(`weighting=task`). Per task, on held-out episodes: recon PSNR, rollout PSNR and the
three predictors u_r, u_f, u_s, raw and over each model's own scene motion (`/m`: the two
models' latent spaces differ in scale, so the normalised values are the comparable ones). The paper's claim: task-uniform sampling lowers all three on the rare task.

    python benchmarks/mid_training.py                      # ~10 min on 2 cores
    python benchmarks/mid_training.py --common toy-push --rare toy-pong --ratio 10 --seeds 0 1
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import world_models
from replay import EpisodeStore, collect
from uncertainty import MotionStats, recon_psnr
from uncertainty.evaluation import window_signals
from world_models.training import TrainConfig, split_episodes, train

SIGNALS = ("u_r", "u_f", "u_s", "u_r/m", "u_f/m", "u_s/m")
COLUMNS = ("recon_psnr", "rollout_psnr", *SIGNALS)


def task_table(model, checkpoint: Path, store: EpisodeStore, held, tasks, seed: int,
               windows: int) -> dict[str, dict[str, float]]:
    """Per task: recon PSNR, mean rollout PSNR and the mean of each predictor over `windows`
    held-out windows."""
    rows = {}
    for task in tasks:
        eps = [e for e in held if e.task == task]
        sig = window_signals(model, store, eps, task, windows=windows, context=1, seed=seed, retracing_ks=(),
                             motion=MotionStats.load(checkpoint))
        batch = store.sample(64, 2, episodes=eps, rng=np.random.default_rng(seed))
        rows[task] = {"recon_psnr": recon_psnr(model, batch), "rollout_psnr": float(sig["rollout_psnr"].mean()),
                      **{k: float(sig[k].mean()) for k in SIGNALS}}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--common", default="toy-reach")
    parser.add_argument("--rare", default="toy-maze")
    parser.add_argument("--ratio", type=int, default=10, help="common:rare episodes")
    parser.add_argument("--rare-episodes", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--windows", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--root", default=None, help="work folder (default: a new temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.root or tempfile.mkdtemp(prefix="mid-training-"))
    store = EpisodeStore(root / "data")
    tasks = (args.common, args.rare)
    if not store.episodes():
        collect(args.common, "mixed", store, args.ratio * args.rare_episodes, size=16, seed=0, progress=False)
        collect(args.rare, "mixed", store, args.rare_episodes, size=16, seed=1, progress=False)
    results = {}
    for seed in args.seeds:
        train_eps, held = split_episodes(store, tasks, holdout=0.15, seed=seed)
        for weighting in ("frame", "task"):
            torch.manual_seed(seed)
            model = world_models.make("dreamer4", "tiny", tasks=tasks)
            t0 = time.perf_counter()
            train(model, store, train_eps, root / f"{weighting}-{seed}",
                  TrainConfig.for_model(model, weighting=weighting, seed=seed, progress=False))
            minutes = (time.perf_counter() - t0) / 60
            table = task_table(model, root / f"{weighting}-{seed}" / "checkpoint", store, held, tasks, seed, args.windows)
            results[(seed, weighting)] = (table, minutes)
            print(f"seed {seed}, weighting={weighting}: trained in {minutes:.1f} min", flush=True)
    n_common = len(store.episodes(task=args.common))
    print(f"\n{args.common} {n_common} : {args.rare} {len(store.episodes(task=args.rare))} episodes, "
          f"dreamer4/tiny, seeds {args.seeds}; mean over seeds")
    print(f"{'task':<12}{'weighting':<11}" + "".join(f"{c:>13}" for c in COLUMNS))
    for task in tasks:
        for weighting in ("frame", "task"):
            vals = [np.mean([results[(s, weighting)][0][task][c] for s in args.seeds]) for c in COLUMNS]
            print(f"{task:<12}{weighting:<11}" + "".join(f"{v:>13.4f}" for v in vals))
    rare = {w: [np.mean([results[(s, w)][0][args.rare][c] for s in args.seeds]) for c in SIGNALS]
            for w in ("frame", "task")}
    lower = [c for c, f, t in zip(SIGNALS, rare["frame"], rare["task"]) if t < f]
    print(f"\non the rare task, task-uniform sampling lowered: {', '.join(lower) or 'none'} of {', '.join(SIGNALS)}")


if __name__ == "__main__":
    main()
