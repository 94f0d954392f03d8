"""Training throughput of each phase through the trainer's own step (DDP under torchrun,
bf16 autocast on CUDA): frames and image tokens per second, and peak memory.

    python benchmarks/train_throughput.py [--model dreamer4] [--preset small] [--steps 10] [--device auto] [--compile inductor]
    torchrun --standalone --nproc_per_node=8 benchmarks/train_throughput.py --preset paper --device cuda

Batches are random frames at the preset's size (the speed does not depend on the content);
a phase that reads a frozen encoder's latents gets them precomputed, as the trainer gives them.
Frames are those sampled per step (windows x frames; Dreamer-4's tokenizer reads one per
window, WHALE's at most `tok_batch`); an image token is one patch of a frame
(`(image_size / patch)^2` per frame). `warm-up s` is the first two steps, which compile
under `--compile`. Under `torchrun` the figures are the whole job's (every rank's frames), printed by rank 0.
"""
import argparse
import resource
import time
from pathlib import Path

import torch

import world_models
from envs import MAX_ACTION_DIM, task_index
from world_models import distributed
from world_models.training import TrainConfig, phase_step


def random_batch(image_size: int, batch: int, seq_len: int, device: torch.device) -> dict:
    return {"frames": torch.randint(0, 256, (batch, seq_len, 3, image_size, image_size), dtype=torch.uint8, device=device),
            "actions": torch.rand(batch, seq_len - 1, MAX_ACTION_DIM, device=device) * 2 - 1,
            "rewards": torch.rand(batch, seq_len - 1, device=device),
            "action_mask": torch.ones(batch, MAX_ACTION_DIM, dtype=torch.bool, device=device),
            "task_id": torch.full((batch,), task_index("toy-reach"), device=device)}


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux: KiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dreamer4", choices=["dreamer4", "whale"])
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int, default=10, help="timed steps per phase (after 2 warm-up steps)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", default=None, help="a torch.compile backend for the transformer layers (inductor)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    rank = distributed.setup(device)
    if device.type == "cuda":
        device = torch.device("cuda", rank.local_rank)
    torch.manual_seed(0)
    model = world_models.make(args.model, args.preset).to(device)
    cfg = TrainConfig.for_model(model, compile=args.compile)
    c = model.cfg
    tokens_per_frame = (c.image_size // c.patch) ** 2
    if rank.master:
        print(f"{args.model}/{args.preset}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, "
              f"{c.image_size} px, {tokens_per_frame} image tokens a frame, {rank.world} rank(s) on {device.type}"
              f"{' (bf16 autocast)' if device.type == 'cuda' else f', {args.threads} threads'}"
              f"{f', compiled ({args.compile})' if args.compile else ''}")
        print(f"{'phase':<12}{'batch':>10}{'warm-up s':>11}{'s / step':>10}{'frames / s':>12}{'tokens / s':>13}{'peak GiB':>10}")
    for phase in model.phases:
        windows, frames = getattr(c, "phase_batches", {}).get(phase, (cfg.batch, cfg.seq_len))
        batch = random_batch(c.image_size, windows, frames, device)
        encoder = model.frozen_encoder(phase)
        if encoder:  # the trainer encodes every frame once before such a phase (training.LatentCache)
            with torch.no_grad():
                batch["latents"] = encoder(batch["frames"])
        with phase_step(model, phase, cfg, rank) as step_fn:
            t0 = time.perf_counter()
            for s in range(2):
                step_fn(batch, s)
            step_fn.synced_metrics(Path("."))
            warm_up = time.perf_counter() - t0
            t0 = time.perf_counter()
            for s in range(args.steps):
                step_fn(batch, s)
            step_fn.synced_metrics(Path("."))  # waits for the device
            sec = (time.perf_counter() - t0) / args.steps
        seen = windows * frames * rank.world / sec
        if rank.master:
            print(f"{phase:<12}{f'{windows}x{frames}':>10}{warm_up:>11.1f}{sec:>10.3f}{seen:>12.0f}{seen * tokens_per_frame:>13.0f}"
                  f"{peak_memory_gib(device):>10.2f}")


if __name__ == "__main__":
    main()
