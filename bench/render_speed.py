"""How many scenes per second `mmcourse.world.render.render` draws on one core.

Samples the scenes first (sampling is not timed), then renders them all a few times and keeps the
best wall-clock time, which is the least disturbed by other work on the machine.

    python bench/render_speed.py [--scenes 2000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import time

from mmcourse.world.render import render
from mmcourse.world.scene import Scene, sample_scenes

# (preset, render size): the default preset at three sizes, Sort-of-CLEVR at its own 75x75
CASES = (("default", 64), ("default", 128), ("default", 256), ("sort_of_clevr", 75))


def best_scenes_per_second(scenes: list[Scene], size: int, repeats: int) -> float:
    best_seconds = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for scene in scenes:
            render(scene, size)
        best_seconds = min(best_seconds, time.perf_counter() - start)
    return len(scenes) / best_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=2000, help="scenes per case")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per case; the best counts")
    args = parser.parse_args()
    print(f"{'preset':<14} {'size':>5} {'scenes/s':>10}")
    for preset, size in CASES:
        scenes = sample_scenes(args.scenes, seed=0, preset=preset)
        rate = best_scenes_per_second(scenes, size, args.repeats)
        print(f"{preset:<14} {size:>5} {rate:>10,.0f}")


if __name__ == "__main__":
    main()
