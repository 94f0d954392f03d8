"""Offline RL benchmark: BC, model-free learners and MOPO with each uncertainty signal, on
one dataset, over seeds, printed as one table (mean ± std of the final real return).

    python benchmarks/offline.py --task toy-reach --store runs/data --checkpoint <world model> [--seeds 3]
    python benchmarks/offline.py --task toy-reach --store runs/data --state   # the state ensemble
    python benchmarks/offline.py ... --rows bc,iql,mopo                        # a subset of the rows
    python benchmarks/offline.py ... --rows mopo:lam0,mopo:max_std             # single MOPO rows
    python benchmarks/offline.py ... --rows mopo:token_entropy@0.2,mopo:ensemble@1   # each at its own λ
    python benchmarks/offline.py ... --rows td3+bc-pixels                       # DrQ+BC on raw frames

Rows: bc; the model-free anchors (cql, iql, td3+bc on the model's features of real frames);
mopo at λ = 0; mopo with each penalty the model offers (u_r, u_s, knn, u_f or token_entropy, a feature
ensemble's disagreement, and retracing on delta-pose tasks, for pixel models; max_std and disagreement for the state
ensemble; `uncertainty.step_signal_names`); `mopo` is all of these, and
`mopo:lam0` or `mopo:<signal>` one of them (at `--lam`, or at λ with `mopo:<signal>@<λ>`). On request, V-D4RL's model-free pixel anchors:
`<algo>-pixels` (bc, cql, iql, td3+bc) learn from the store's raw frames, `--stack` of them,
with d3rlpy's conv encoder and DrQ's random shifts (`td3+bc-pixels` is DrQ+BC). Every row
learns from the same store; the environment only evaluates. With `--state` the learners read recorded
states and MOPO imagines with a state ensemble trained here; a `--checkpoint` of a state
ensemble (`experiments/train.py world_model=ensemble`) is read the same way, untrained.
"""
import argparse
import time
from pathlib import Path

import numpy as np
import torch

import envs
import world_models
from agents import FeaturePolicyAgent, ObservationPolicyAgent, StackedFramesAgent
from agents.evaluate import evaluate
from agents.learner import Learner
from agents.offline import (MOPOConfig, feature_transitions, features_cache, frame_transitions, learner_hyper, mopo,
                            rollout_scale)
from replay import EpisodeStore
from uncertainty import MotionStats, step_signal, step_signal_names
from world_models.imagined import StartWindows

ROWS = ("bc", "cql", "iql", "td3+bc", "mopo")
PIXEL_ROWS = ("bc-pixels", "cql-pixels", "iql-pixels", "td3+bc-pixels")


def mopo_row(spec: str, lam: float) -> tuple[str, float]:
    """`"<signal>"` or `"<signal>@<λ>"` of a `mopo:` row -> (signal, λ); `lam` when none is given."""
    signal, _, value = spec.partition("@")
    if not value:
        return signal, lam
    try:
        lam = float(value)
    except ValueError:
        lam = 0.0
    if signal == "lam0" or not lam > 0:
        raise SystemExit(f"error: bad MOPO row mopo:{spec}; write mopo:<signal>@<λ > 0>, e.g. mopo:token_entropy@0.2")
    return signal, lam


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="toy-reach")
    p.add_argument("--store", default="runs/data")
    p.add_argument("--checkpoint", default=None, help="a pixel world model (features and imagination), or a trained state ensemble")
    p.add_argument("--state", action="store_true", help="learn on recorded states with a state ensemble")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="run seeds first-seed .. first-seed + seeds - 1")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lam", type=float, default=1.0, help="λ of the penalised rows without their own @λ")
    p.add_argument("--retracing-ks", type=lambda v: tuple(int(k) for k in v.split(",")), default=(1,),
                   help="retracing steps k, comma-separated (WHALE: 1,2,3)")
    p.add_argument("--real-ratio", type=float, default=MOPOConfig.real_ratio,
                   help="share of real transitions in MOPO's batches")
    p.add_argument("--rollout-batch", type=int, default=500, help="imagined rollouts per MOPO round")
    p.add_argument("--algo", default="sac", help="the learner MOPO trains")
    p.add_argument("--reward-scale", type=float, default=1.0,
                   help="multiplies the rewards every learner trains on (Meta-World: 0.1)")
    p.add_argument("--episodes", type=int, default=10, help="evaluation episodes per run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", default=",".join(ROWS), help="the rows to run, comma-separated (mopo: λ = 0 and each signal)")
    p.add_argument("--stack", type=int, default=3, help="frames a pixel row's learner reads (V-D4RL: 3)")
    p.add_argument("--pixel-batch", type=int, default=64, help="batch of the pixel rows (conv nets on a CPU)")
    args = p.parse_args()
    if args.state == bool(args.checkpoint):
        raise SystemExit("error: give --checkpoint (a world model) or --state")
    chosen = set(args.rows.split(","))
    unknown = {r for r in chosen if r not in PIXEL_ROWS and (r.split(":")[0] not in ROWS or
                                                             r.startswith(("bc:", "cql:", "iql:", "td3+bc:")))}
    if unknown:
        raise SystemExit(f"error: unknown rows {sorted(unknown)}; choose from {','.join(ROWS + PIXEL_ROWS)}, "
                         "mopo:lam0, mopo:<signal>[@<λ>]")
    picked = [mopo_row(r.split(":", 1)[1], args.lam) for r in chosen if r.startswith("mopo:")]  # (signal, λ)
    torch.set_num_threads(args.threads)
    store = EpisodeStore(args.store)
    episodes = store.episodes(task=args.task)
    if not episodes:
        raise SystemExit(f"error: no {args.task} episodes in {args.store}")
    spec = envs.task_spec(args.task)
    model = world_models.load(args.checkpoint) if args.checkpoint else None
    if model is not None and args.task not in model.tasks:
        raise SystemExit(f"error: {args.checkpoint} was trained on {list(model.tasks)}, not {args.task}")
    args.state = model is None or model.reads_states
    if model is None:
        model = world_models.make("ensemble", "small", tasks=(args.task,))
        print(f"training the state ensemble on {len(episodes)} episodes")
        model.fit(store, episodes, progress=False)
    if args.state:
        signals, context, motion = ["max_std", "disagreement"], 1, None
    else:
        signals = step_signal_names(model, args.task)
        context = model.max_context
        motion = MotionStats.fit(store, model, episodes, windows=128)
    bad = {s for s, _ in picked} - {"lam0", *signals}
    if bad:
        raise SystemExit(f"error: {model.name} offers no signal {sorted(bad)}; it offers {', '.join(signals)}")
    # pixel features are cached where experiments/offline.py caches them, keyed by the weights
    cache = None if args.state else features_cache(Path("runs/offline") / args.task, args.checkpoint, context, episodes)
    real = feature_transitions(model, store, episodes, args.task, context=context, cache=cache, progress=False)
    dataset = float(np.mean([store.load(e).episode_return for e in episodes]))
    env = envs.make(args.task, obs="state" if args.state else "pixels",
                    size=64 if args.state else model.cfg.image_size)
    starts = StartWindows(store, episodes, task=args.task, context=context,
                          observation="states" if args.state else "frames")

    pixel_rows = [r for r in PIXEL_ROWS if r in chosen]
    frames = frame_transitions(store, episodes, args.task, stack=args.stack, progress=False) if pixel_rows else None
    pixel_env = envs.make(args.task, obs="pixels", size=frames.obs.shape[-1]) if pixel_rows else None

    def agent_for(learner, pixels: bool):
        act = lambda o: learner.act(o[None])[0]  # noqa: E731
        if pixels:
            return lambda s: StackedFramesAgent(act, args.stack)
        return (lambda s: ObservationPolicyAgent(act)) if args.state else \
            (lambda s: FeaturePolicyAgent(model, act, args.task, context=context))

    # (row, algo, imagines with the model, penalty, λ, learns from raw frames)
    rows = [(a, a, False, None, 0.0, False) for a in ("bc", "cql", "iql", "td3+bc") if a in chosen]
    rows += [(r, r.removesuffix("-pixels"), False, None, 0.0, True) for r in pixel_rows]
    if "mopo" in chosen or any(s == "lam0" for s, _ in picked):
        rows.append((f"mopo-{args.algo} λ=0", args.algo, True, None, 0.0, False))
    signal_rows = {(s, args.lam) for s in signals} if "mopo" in chosen else set()
    signal_rows |= {(s, lam) for s, lam in picked if s != "lam0"}
    rows += [(f"mopo-{args.algo} {s} λ={lam:g}", args.algo, True, s, lam, False)
             for s, lam in sorted(signal_rows, key=lambda sl: (signals.index(sl[0]), sl[1]))]
    print(f"{args.task}: {len(episodes)} episodes, {len(real)} transitions, dataset mean return {dataset:.1f}; "
          f"{args.steps} gradient steps, seeds {args.first_seed}-{args.first_seed + args.seeds - 1}, "
          f"{args.episodes} evaluation episodes each, "
          f"rewards x {args.reward_scale:g}, MOPO's real share {args.real_ratio:g}")
    results = {}
    for name, algo, use_model, signal, lam, pixels in rows:
        returns, successes, rollouts, t0 = [], [], [], time.perf_counter()
        data = frames if pixels else real
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            torch.manual_seed(seed)
            learner = Learner(algo, data.obs.shape[1:] if pixels else data.obs_dim, spec.action_dim,
                              **learner_hyper(algo, reward_scale=args.reward_scale))
            penalty = step_signal(signal, model, task=args.task, motion=motion, store=store, episodes=episodes,
                                  retracing_ks=args.retracing_ks, seed=seed,
                                  real=real.sars) if signal else None
            cfg = MOPOConfig(steps=args.steps, eval_every=args.steps, seed=seed, rollout_batch=args.rollout_batch,
                             real_ratio=args.real_ratio, batch=args.pixel_batch if pixels else MOPOConfig.batch)
            ev = mopo(model if use_model else None, learner, data, starts if use_model else None, cfg,
                      penalty=penalty, lam=lam, progress=False, log=lambda step, m: rollouts.append(m),
                      evaluate=lambda lrn: evaluate(pixel_env if pixels else env, agent_for(lrn, pixels), args.episodes,
                                                    seed=1000 * (seed + 1)))
            returns.append(ev[-1]["return"])
            successes += [ev[-1]["success"]] if "success" in ev[-1] else []
        results[name] = returns
        success = f"  success {np.mean(successes):.0%}" if successes else ""
        print(f"{name:<28}{np.mean(returns):>8.1f} ± {np.std(returns):<6.1f}{success} "
              f"({(time.perf_counter() - t0) / 60:.1f} min; seeds: {', '.join(f'{r:.1f}' for r in returns)})"
              + rollout_scale(rollouts), flush=True)
    penalised = [(np.mean(results[name]), name) for name, _, _, signal, lam, _ in rows if signal and lam]
    if not penalised or f"mopo-{args.algo} λ=0" not in results:
        return
    best_penalised = max(penalised)
    print(f"\ndataset mean {dataset:.1f}; best penalty: {best_penalised[1]} ({best_penalised[0]:.1f}) "
          f"vs λ = 0 ({np.mean(results[f'mopo-{args.algo} λ=0']):.1f})")


if __name__ == "__main__":
    main()
