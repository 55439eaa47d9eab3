"""Prototypical networks for few-shot classification (Snell, Swersky & Zemel 2017, "Prototypical
Networks for Few-shot Learning").

An n-way k-shot *episode* gives k labelled support images of each of n classes and some unlabelled
query images. An encoder f maps every image to a vector; the *prototype* of class c is the mean
embedding of its support images, and a query is classified by a softmax over its negative distances
to the prototypes (Eq. 1-2 of the paper):

    c_k = 1 / |S_k|  sum_{x_i in S_k} f(x_i)
    p(y = k | x) = exp(-d(f(x), c_k)) / sum_k' exp(-d(f(x), c_k'))

with d the squared Euclidean distance. Training minimises -log p(y = true class | x) over episodes
drawn from the training classes; testing draws episodes from classes never seen in training. Snell
et al. show that squared Euclidean beats cosine (with it the model is a linear classifier on the
embedding, a Bregman divergence whose class means are the right cluster centres) and that training
with more classes per episode than at test helps.

- `ProtoNet(encoder, distance)`: the lecture's interface, `forward(support_images, query_images,
  n_way, n_support) -> (n_query, n_way)` log-probabilities; the support set is ordered class by
  class (n_support images of class 0, then of class 1, ...). `distance` is "squared_euclidean"
  (the paper), "euclidean" (what `torch.cdist` gives without the square) or "cosine" (1 - cos,
  unscaled as in the paper's comparison).
- `class_prototypes(support_embeddings, n_way, n_support)` and `pairwise_distances(queries,
  prototypes, distance)`: the two steps, usable on any frozen features.
- `ProtoEncoder(in_channels, width, image_size, pooled)`: the paper's encoder, four blocks of 3x3
  convolution (64 filters), batch norm, ReLU and 2x2 max pooling. On 28x28 Omniglot four poolings
  leave 1x1; an 8x8 digit halves at most three times, so by default only the last log2(8) = 3
  blocks pool there. `pooled` keeps more of the map: on the digits one pooling (a 4x4 map, 1,024
  numbers with 64 filters) carries far better to unseen digits than a 1x1 map (64 numbers), and
  `dropout` on the embedding keeps it from fitting the few training classes too closely.
- `protonet_training_loss(model, episode)`: the negative log-probability of the true classes, for
  `mmcourse.train.fit` over episodes (dicts with "support", "query", "query_labels", "n_way",
  "n_support").
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from .encoders import check_positive_int, check_tensor

DISTANCES = ("squared_euclidean", "euclidean", "cosine")
EPSILON = 1e-12  # floor under a squared distance before its square root (the root's slope is infinite at 0)


# --------------------------------------------------------------------------------------------
# The two steps: prototypes, distances
# --------------------------------------------------------------------------------------------


def class_prototypes(support_embeddings: torch.Tensor, n_way: int, n_support: int) -> torch.Tensor:
    """(n_way, D) class means of (n_way * n_support, D) support embeddings ordered class by class."""
    _check_support(support_embeddings, n_way, n_support, "support_embeddings")
    return support_embeddings.reshape(n_way, n_support, -1).mean(1)  # (n_way, n_support, D) -> (n_way, D)


def pairwise_distances(queries: torch.Tensor, prototypes: torch.Tensor,
                       distance: str = "squared_euclidean") -> torch.Tensor:
    """(n_query, n_way) distance d(query i, prototype k) of (n_query, D) queries and (n_way, D) prototypes."""
    _check_features(queries, prototypes)
    _check_distance(distance)
    if distance == "cosine":
        return 1 - F.normalize(queries, dim=-1) @ F.normalize(prototypes, dim=-1).T  # (n_query, n_way)
    squared = (queries[:, None, :] - prototypes[None, :, :]).pow(2).sum(-1)  # (n_query, n_way)
    if distance == "squared_euclidean":
        return squared
    return squared.clamp_min(EPSILON).sqrt()  # "euclidean"


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class ProtoNet(nn.Module):
    """An embedding `encoder` ((B, ...) images -> (B, D)) and nearest-prototype classification."""

    def __init__(self, encoder: nn.Module, distance: str = "squared_euclidean"):
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be an nn.Module mapping (B, ...) images to (B, D), "
                            f"got {type(encoder).__name__}")
        _check_distance(distance)
        self.encoder, self.distance = encoder, distance

    def forward(self, support_images: torch.Tensor, query_images: torch.Tensor, n_way: int,
                n_support: int) -> torch.Tensor:
        """(n_query, n_way) log-probabilities of the query images' classes.

        `support_images` (n_way * n_support, C, H, W), class by class; `query_images` (n_query, C, H, W).
        """
        _check_episode(support_images, query_images, n_way, n_support)
        z = self.embed(torch.cat([support_images, query_images]))  # (n_way * n_support + n_query, D): one pass
        prototypes = class_prototypes(z[:n_way * n_support], n_way, n_support)  # (n_way, D)
        distances = pairwise_distances(z[n_way * n_support:], prototypes, self.distance)  # (n_query, n_way)
        return F.log_softmax(-distances, dim=1)  # closer = more probable

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D) embeddings of (B, C, H, W) images."""
        z = self.encoder(images)
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or len(z) != len(images):
            raise ValueError(f"the encoder must map {len(images)} images to a ({len(images)}, D) tensor, "
                             f"got {tuple(getattr(z, 'shape', ())) or type(z).__name__}")
        return z


def protonet_training_loss(model: ProtoNet, episode: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`fit`'s loss_fn over episodes: the mean -log p(true class | query), and the episode's accuracy."""
    log_probs = model(episode["support"], episode["query"], episode["n_way"], episode["n_support"])  # (Q, n_way)
    labels = episode["query_labels"]  # (Q,) in 0..n_way-1
    loss = F.nll_loss(log_probs, labels)
    return loss, {"accuracy": (log_probs.argmax(1) == labels).float().mean()}


class ProtoEncoder(nn.Module):
    """(B, in_channels, S, S) images -> (B, width * r * r): Snell et al.'s four conv blocks.

    Each block is conv 3x3 (`width` filters, padding 1), batch norm, ReLU; the last `pooled` blocks
    end with 2x2 max pooling (default min(blocks, floor(log2 S)): the map shrinks to r = 1 pixel on
    an 8x8 or 28x28 image, 28 -> 14 -> 7 -> 3 -> 1), and the flattened map is the embedding.
    `dropout` zeroes that fraction of the embedding's numbers while training (none at test time):
    on the digits' few training classes it keeps the embedding from fitting them too closely.
    """

    def __init__(self, in_channels: int = 1, width: int = 64, image_size: int = 8, blocks: int = 4,
                 pooled: int | None = None, dropout: float = 0.0):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("width", width), ("image_size", image_size),
                            ("blocks", blocks)):
            check_positive_int(name, value)
        most = min(blocks, int(math.log2(image_size)))
        pooled = most if pooled is None else pooled
        if isinstance(pooled, bool) or not isinstance(pooled, numbers.Integral) or not 0 <= pooled <= most:
            raise ValueError(f"pooled must be an int in 0..{most} (blocks that halve a {image_size}-pixel map), "
                             f"got {pooled!r}")
        layers, channels, size = [], in_channels, image_size
        for block in range(blocks):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            if block >= blocks - pooled:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            channels = width
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Dropout(dropout))  # dropout: training only
        self.in_channels, self.image_size = in_channels, image_size
        self.width = width * size * size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_tensor("images", images, 4, floating=True)
        expected = (self.in_channels, self.image_size, self.image_size)
        if tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must have shape (B, {', '.join(map(str, expected))}), got {tuple(images.shape)}")
        return self.body(images)  # (B, width)


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------



def _check_distance(distance) -> None:
    if distance not in DISTANCES:
        raise ValueError(f"distance={distance!r} is unknown; expected one of {DISTANCES}")


def _check_support(support: torch.Tensor, n_way, n_support, name: str) -> None:
    n_way, n_support = check_positive_int("n_way", n_way), check_positive_int("n_support", n_support)
    if not isinstance(support, torch.Tensor) or support.dim() < 2:
        raise ValueError(f"{name} must be a tensor with a leading dimension of n_way * n_support, "
                         f"got {tuple(getattr(support, 'shape', ())) or type(support).__name__}")
    if len(support) != n_way * n_support:
        raise ValueError(f"{name} holds {len(support)} items; expected n_way * n_support = {n_way} * {n_support} "
                         f"= {n_way * n_support}, ordered class by class")


def _check_episode(support_images, query_images, n_way, n_support) -> None:
    _check_support(support_images, n_way, n_support, "support_images")
    check_tensor("query_images", query_images, support_images.dim(), floating=True)
    if len(query_images) == 0:
        raise ValueError("query_images is empty; expected at least one query")
    if support_images.shape[1:] != query_images.shape[1:]:
        raise ValueError(f"support_images are {tuple(support_images.shape[1:])} each but query_images are "
                         f"{tuple(query_images.shape[1:])}; expected images of the same shape")


def _check_features(queries, prototypes) -> None:
    check_tensor("queries", queries, 2, floating=True)
    check_tensor("prototypes", prototypes, 2, floating=True)
    if queries.shape[1] != prototypes.shape[1]:
        raise ValueError(f"queries have D={queries.shape[1]} features but prototypes D={prototypes.shape[1]}; "
                         f"expected the same feature width")


__all__ = ["DISTANCES", "ProtoEncoder", "ProtoNet", "class_prototypes", "pairwise_distances",
           "protonet_training_loss"]
