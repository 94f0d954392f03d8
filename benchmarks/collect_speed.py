"""Pixel frames per second of `replay.collect`, for 1 and 2 environments, side by side.

    python benchmarks/collect_speed.py [--size 64] [--cup-episodes 2] [--toy-episodes 200]

Times whole collection runs (worker start-up, rendering, behaviour, compression and
atomic writes included) into a temporary store, with the random behaviour.
"""
import argparse
import tempfile

from replay import collect


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--toy-episodes", type=int, default=200)
    p.add_argument("--cup-episodes", type=int, default=2)
    args = p.parse_args()
    rows = []
    for task, episodes in (("toy-reach", args.toy_episodes), ("cup-catch", args.cup_episodes)):
        fps = {}
        for n in (1, 2):
            with tempfile.TemporaryDirectory() as root:
                s = collect(task, "random", root, episodes, num_envs=n, size=args.size, progress=False)
            fps[n] = s.frames / s.seconds
        rows.append((task, fps[1], fps[2], fps[2] / fps[1]))
    print(f"pixel frames/s at {args.size}px, random behaviour, writes included")
    print(f"{'task':<12}{'1 env':>10}{'2 envs':>10}{'2 / 1':>8}")
    for task, one, two, ratio in rows:
        print(f"{task:<12}{one:>10.0f}{two:>10.0f}{ratio:>7.2f}x")


if __name__ == "__main__":
    main()
