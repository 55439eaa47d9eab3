"""Contrastive losses across processes: every rank's features become every rank's negatives.

CLIP (Radford et al. 2021) trained with a batch of 32,768 pairs spread over hundreds of GPUs. Each
GPU encodes only its own shard, yet each image must be contrasted with all 32,768 captions: the
features are gathered from every rank (`torch.distributed.all_gather`) before the loss, as
open_clip's `gather_features` does. `all_gather` returns copies without autograd history, so this
rank's slot of the gathered list is replaced by the local tensor itself: the loss then sends
gradients into the local shard, and treats other ranks' features as constants.

Gradient convention. Say the features of all ranks, concatenated in rank order, give the full-batch
loss L (what one process would compute on the concatenated batch). Every rank computes that same L
from the gathered features, and its backward pass gives exactly dL/d(its own features): the partial
derivatives of L with respect to the local rows, the other rows being constants. So:

- encoder parameters get, on rank r, the part of dL/dtheta that flows through rank r's features;
  the *sum* over ranks is the single-process dL/dtheta. DistributedDataParallel *averages* over
  ranks, so it applies dL/dtheta / world_size (open_clip leaves that factor to the learning rate);
- the logit scale, used after the gather, gets the whole dL/dscale on every rank, and the average
  over ranks keeps it exact.

Without an initialised process group (or with one process) `gather_features` is the identity and
`distributed_clip_loss` the plain loss, so code written for many ranks runs unchanged in a notebook.

`mmcourse.train.fit` trains under `torchrun` with the collectives of `mmcourse.ranks`.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .models.clip import clip_loss
from .models.encoders import check_tensor
from .ranks import is_distributed


def gather_features(image_features: torch.Tensor,
                    text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's (B, D) features concatenated in rank order: (world_size * B, D) each.

    This rank's rows are its own tensors (gradients flow into them); the others are copies. Every
    rank must pass features of the same shape; a mismatch raises ValueError on every rank. Outside
    a multi-process group the features come back unchanged.
    """
    check_tensor("image_features", image_features, 2, floating=True)
    check_tensor("text_features", text_features, 2, floating=True)
    if not is_distributed():
        return image_features, text_features
    _check_same_shape_everywhere(image_features, text_features)
    return _all_gather_keeping_local(image_features), _all_gather_keeping_local(text_features)


def distributed_clip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                          logit_scale: torch.Tensor | float) -> torch.Tensor:
    """`clip_loss` over the features of all ranks: each local pair meets world_size * B - 1 negatives.

    Every rank returns the same value, the loss of the concatenated batch; see the module docstring
    for how its gradients relate to the single-process ones.
    """
    all_image_features, all_text_features = gather_features(image_features, text_features)  # (W * B, D) each
    return clip_loss(all_image_features, all_text_features, logit_scale)


def _all_gather_keeping_local(features: torch.Tensor) -> torch.Tensor:
    """(world_size * B, D): all ranks' `features`, this rank's slot holding the local tensor itself."""
    features = features.contiguous()
    gathered = [torch.empty_like(features) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, features.detach())
    gathered[dist.get_rank()] = features  # the only slot with autograd history
    return torch.cat(gathered)


def _check_same_shape_everywhere(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
    """all_gather needs equal shapes on every rank; compare them first, so that every rank raises."""
    local = torch.tensor([*image_features.shape, *text_features.shape], device=image_features.device)
    shapes = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(shapes, local)
    shapes = [tuple(shape.tolist()) for shape in shapes]
    if len(set(shapes)) > 1:
        seen = ", ".join(f"rank {rank}: image {shape[:len(shape) // 2]}, text {shape[len(shape) // 2:]}"
                         for rank, shape in enumerate(shapes))
        raise ValueError(f"image_features and text_features must have the same shapes on every rank, got {seen}")


__all__ = ["distributed_clip_loss", "gather_features", "is_distributed"]
