"""Dreamer-4 speed: imagination with and without the KV cache, and training throughput.

    python benchmarks/dreamer4_speed.py [--threads 2] [--plans 64] [--horizon 16]

Prints, side by side in one run: imagined steps per second (plans x horizon / time) at
horizon 16 from a 4-frame context, cached and uncached, for the tiny and small presets;
and training samples (frames) per second of each phase of the small preset on random
frames (the speed does not depend on the content).
"""
import argparse
import time

import torch

import world_models
from envs import MAX_ACTION_DIM, task_index


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def fake_batch(cfg, batch: int, seq_len: int) -> dict:
    s = cfg.image_size
    return {"frames": torch.randint(0, 256, (batch, seq_len, 3, s, s), dtype=torch.uint8),
            "actions": torch.rand(batch, seq_len - 1, MAX_ACTION_DIM) * 2 - 1,
            "rewards": torch.rand(batch, seq_len - 1),
            "action_mask": torch.ones(batch, MAX_ACTION_DIM, dtype=torch.bool),
            "task_id": torch.full((batch,), task_index("toy-reach"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--plans", type=int, default=64)
    p.add_argument("--horizon", type=int, default=16)
    p.add_argument("--train-steps", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"imagination, {args.plans} plans x horizon {args.horizon} from a 4-frame context, "
          f"{args.threads} threads")
    print(f"{'preset':<8}{'cached steps/s':>16}{'uncached steps/s':>18}{'cached / uncached':>19}")
    for preset in ("tiny", "small"):
        model = world_models.make("dreamer4", preset).eval()
        s = model.cfg.image_size
        obs = torch.randint(0, 256, (1, 4, 3, s, s), dtype=torch.uint8)
        ctx_actions = torch.zeros(1, 3, 2)
        plans = torch.rand(args.plans, args.horizon, 2) * 2 - 1
        rate = {}
        for cached in (True, False):
            with torch.no_grad():
                sec = timed(lambda: model.imagine(obs, plans, context_actions=ctx_actions, cached=cached), 2)
            rate[cached] = args.plans * args.horizon / sec
        print(f"{preset:<8}{rate[True]:>16.0f}{rate[False]:>18.0f}{rate[True] / rate[False]:>18.2f}x")
    model = world_models.make("dreamer4", "small").train()
    cfg = model.cfg
    print(f"\ntraining, small preset ({cfg.image_size} px, batch {cfg.batch} x {cfg.seq_len} frames), "
          f"{args.threads} threads")
    print(f"{'phase':<12}{'s / step':>10}{'frames / s':>12}")
    for phase in model.phases:
        opt = torch.optim.AdamW(model.phase_parameters(phase), lr=1e-4)
        batch = fake_batch(cfg, cfg.batch, cfg.seq_len)

        def step():
            loss, _ = model.loss(batch, phase)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sec = timed(step, args.train_steps)
        print(f"{phase:<12}{sec:>10.2f}{cfg.batch * cfg.seq_len / sec:>12.0f}")


if __name__ == "__main__":
    main()
