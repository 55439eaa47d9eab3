"""Is `mmcourse.models.clip.clip_loss` as fast as open_clip's `ClipLoss`? Forward + backward, timed.

Both get the same L2-normalised (B, D) features and a learnable logit scale. Ours computes one
B x B similarity matrix and reads the text-to-image logits as its transpose, and checks its inputs
(one device sync); open_clip computes two matrix products. The two losses are timed in alternating
rounds and each keeps its best round, the one least disturbed by other work on the machine; the
ratio ours / open_clip must not exceed 1.

    python bench/clip_loss_speed.py [--dim 512] [--rounds 7] [--device cpu]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from mmcourse.device import get_device
from mmcourse.models.clip import LOGIT_SCALE_INIT, clip_loss

BATCH_SIZES = (64, 256, 1024)


def _seconds_per_call(loss_fn, inputs: tuple, calls: int) -> float:
    """Wall-clock seconds of one forward + backward, averaged over `calls` back-to-back calls.
    Reading the last loss waits for an accelerator to finish the queued work."""
    start = time.perf_counter()
    for _ in range(calls):
        loss = loss_fn(*inputs)
        loss.backward()
    loss.item()
    return (time.perf_counter() - start) / calls


def time_ratio(batch_size: int, dim: int = 512, rounds: int = 7, calls: int = 10,
               device: str | torch.device = "cpu") -> tuple[float, float]:
    """(our best seconds per call, open_clip's), each the best of `rounds` alternating rounds."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(batch_size)
    image_features, text_features = (F.normalize(torch.randn(batch_size, dim, generator=generator), dim=-1)
                                     .to(device).requires_grad_() for _ in range(2))  # (B, D) each
    log_scale = torch.tensor(LOGIT_SCALE_INIT, device=device, requires_grad=True)
    open_clip_loss = ClipLoss()

    def ours(image, text, log_scale):
        return clip_loss(image, text, log_scale.exp())

    def theirs(image, text, log_scale):
        return open_clip_loss(image, text, log_scale.exp())

    inputs = (image_features, text_features, log_scale)
    for fn in (ours, theirs):  # warm up: allocator, kernels, thread pools
        _seconds_per_call(fn, inputs, 2)
    best = {ours: float("inf"), theirs: float("inf")}
    for _ in range(rounds):
        for fn in best:
            best[fn] = min(best[fn], _seconds_per_call(fn, inputs, calls))
    return best[ours], best[theirs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512, help="feature dimension D")
    parser.add_argument("--rounds", type=int, default=7, help="alternating timed rounds; the best counts")
    parser.add_argument("--device", default=None, help="default: mmcourse.get_device()")
    args = parser.parse_args()
    device = get_device(args.device)
    print(f"device {device}, D={args.dim}")
    print(f"{'batch':>6} {'ours ms':>9} {'open_clip ms':>13} {'ratio':>6}")
    for batch_size in BATCH_SIZES:
        ours, theirs = time_ratio(batch_size, args.dim, args.rounds, device=device)
        print(f"{batch_size:>6} {ours * 1e3:>9.3f} {theirs * 1e3:>13.3f} {ours / theirs:>6.2f}")


if __name__ == "__main__":
    main()
