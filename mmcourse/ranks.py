"""The process group as `fit` sees it under `torchrun`: who this rank is, and the small collectives
that keep every rank's numbers alike.

`rank`, `gather_objects` (every rank's Python value), `mean_over_ranks` (so that every rank logs the
same numbers) and `broadcast_buffers` (rank 0's BatchNorm statistics and queues on every rank). Each
is the identity (rank 0) outside a process group of several ranks, so code written for many ranks
runs unchanged in a notebook. The contrastive loss across ranks is in `mmcourse.distributed`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in its process group; 0 outside a process group of several ranks."""
    return dist.get_rank() if is_distributed() else 0


def gather_objects(value: Any) -> list[Any]:
    """Every rank's `value` (anything picklable), in rank order, on every rank; `[value]` outside a
    process group of several ranks. Every rank must call it."""
    if not is_distributed():
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def mean_over_ranks(values: Mapping[str, float]) -> dict[str, float]:
    """Each of `values` averaged over the ranks: the same numbers on every rank. Every rank must call
    it with the same names (ValueError on every rank otherwise). Outside a process group of several
    ranks, `values` unchanged."""
    if not is_distributed():
        return dict(values)
    everyone = gather_objects(dict(values))
    if any(other.keys() != everyone[0].keys() for other in everyone):
        seen = ", ".join(f"rank {index}: {sorted(other)}" for index, other in enumerate(everyone))
        raise ValueError(f"mean_over_ranks needs the same names on every rank, got {seen}")
    return {name: sum(other[name] for other in everyone) / len(everyone) for name in everyone[0]}


def broadcast_buffers(module: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics, queues, ...) into every rank's `module`,
    which DistributedDataParallel only does at the start of each forward. Every rank must call it;
    nothing happens outside a process group of several ranks."""
    if not is_distributed():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


__all__ = ["broadcast_buffers", "gather_objects", "is_distributed", "mean_over_ranks", "rank"]
