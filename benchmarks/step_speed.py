"""Step API speed: ms per imagined step over short and long rollouts.

    python benchmarks/step_speed.py [--threads 2] [--batch 16] [--presets tiny small]

For each model and preset it starts one 4-frame context broadcast over `--batch` rollouts,
then steps H = 8 and H = 200 times, and prints the ms per step side by side:
- `window`: the default sliding window of `max_context` frames (what `step` does);
- `unbounded`: the same rollout with the window as long as the rollout, which is how
  `imagine` grew its context before the step API (every past frame kept and attended to).
The ratio of the per-step time at 200 to that at 8 says whether the cost stays flat.
"""
import argparse
import time

import torch

import world_models


def ms_per_step(model, obs, ctx_actions, batch: int, horizon: int, window: int | None) -> float:
    generator = torch.Generator().manual_seed(0)
    state = model.start(obs, ctx_actions, generator=generator, max_context=window)
    state = state.select(torch.zeros(batch, dtype=torch.long))
    actions = torch.rand(batch, 2, generator=generator) * 2 - 1
    model.step(state, actions)  # warm-up
    t0 = time.perf_counter()
    for _ in range(horizon):
        state, _ = model.step(state, actions)
    return 1e3 * (time.perf_counter() - t0) / horizon


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--models", nargs="+", default=["dreamer4", "whale"])
    p.add_argument("--presets", nargs="+", default=["tiny", "small"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{args.batch} rollouts from one 4-frame context, {args.threads} threads; ms per step")
    print(f"{'model':<16}{'context':<12}{'H=8':>8}{'H=200':>8}{'200 / 8':>9}")
    with torch.no_grad():
        for name in args.models:
            for preset in args.presets:
                model = world_models.make(name, preset).eval()
                s = model.cfg.image_size
                obs = torch.randint(0, 256, (1, 4, 3, s, s), dtype=torch.uint8)
                ctx = torch.zeros(1, 3, 2)
                for label, window in ((f"window {model.max_context}", None), ("unbounded", "grow")):
                    ms = {H: ms_per_step(model, obs, ctx, args.batch, H, 4 + H + 1 if window else None)
                          for H in (8, 200)}
                    print(f"{name + '/' + preset:<16}{label:<12}{ms[8]:>8.1f}{ms[200]:>8.1f}{ms[200] / ms[8]:>8.2f}x")


if __name__ == "__main__":
    main()
