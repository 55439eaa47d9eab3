"""Is ViLT faster than VisualBERT at inference? Detector features vs patches, timed stage by stage.

The lecture's claim (Kim et al. 2021, Table 6): ViLT-B/32 is about 60x faster than VisualBERT-style
models, whose Faster R-CNN region extraction costs hundreds of milliseconds per image while a
linear patch embedding costs well under one. Here both models have the same transformer (width,
depth, heads) and read a batch of world scenes with their captions;
`mmcourse.experiments.alignment.single_stream.pipeline_timings` times, in eval mode without
gradients (median of the repeats after a warm-up):

- visual: VisualBERT's `RegionEncoder` (CNN + RoI-Align over the world's boxes, the course's stand-in
  for a detector) vs ViLT's patch embedding;
- transformer: the joint encoder alone, on L + K tokens (VisualBERT) vs L + 1 + N (ViLT);
- total: the whole image-text matching call.

Our stand-in detector is a three-stage CNN over given boxes, not a region proposal network with
non-maximum suppression over a ResNet-101, so the gap is far below 60x; ViLT pays instead for its
longer sequence of patches.

    python bench/vilt_speed.py [--width 64] [--depth 2] [--batch-size 32] [--repeats 10] [--device cpu]
"""
from __future__ import annotations

import argparse

import torch

from mmcourse.device import get_device
from mmcourse.experiments.alignment.single_stream import pipeline_timings

CASES = ((32, 8), (64, 8), (64, 16))  # (image size, ViLT patch size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per figure; the median counts")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default=None, help="default: mmcourse.get_device()")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device(args.device)
    print(f"device {device}, width {args.width}, depth {args.depth}, heads {args.heads}, batch {args.batch_size}, "
          f"median of {args.repeats}; ms per batch")
    print(f"{'image':>5} {'patch':>5} | {'model':<10} {'tokens':>6} {'visual':>8} {'transf.':>8} {'total':>8} "
          f"| {'total VisualBERT / ViLT':>23}")
    for image_size, patch_size in CASES:
        t = pipeline_timings(image_size=image_size, width=args.width, depth=args.depth, heads=args.heads,
                             patch_size=patch_size, batch_size=args.batch_size, repeats=args.repeats, device=device)
        for model in ("visualbert", "vilt"):
            ratio = f"{t['total_ratio']:>23.2f}" if model == "visualbert" else ""
            visual, transformer, total = (t[f"{model}_{part}_ms"] for part in ("visual", "transformer", "total"))
            print(f"{image_size:>5} {patch_size:>5} | {model:<10} {t[model + '_tokens']:>6.0f} "
                  f"{visual:>8.2f} {transformer:>8.2f} {total:>8.2f} | {ratio}")


if __name__ == "__main__":
    main()
