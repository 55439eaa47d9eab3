"""The course's metrics: accuracy, retrieval recall@k, segmentation IoU and attention grounding.

- Recall@k for image-text retrieval, as reported for visual-semantic embeddings (Kiros et al.
  2014; Faghri et al. 2018, VSE++) and CLIP (Radford et al. 2021): the share of queries whose true
  match is among the k most similar candidates, in both directions (image -> text, text -> image).
- Intersection over union per class and its mean (mIoU), the segmentation score of the PASCAL VOC
  challenge (Everingham et al. 2010), used here for LSeg-style open-vocabulary masks.
- Attention grounding: the share of attention mass inside the ground-truth region, and the
  pointing game of Zhang et al. (2016, "Top-down neural attention by excitation backprop"): does
  the most attended location fall inside the region?
- The best accuracy an additive model can reach on a task of two binary factors: the ceiling of
  late fusion, which scores an example by a sum of one term per modality.

Every function accepts torch tensors (any device) or NumPy arrays, returns Python floats (dicts of
floats) or NumPy arrays, and raises ValueError/TypeError naming the argument and the shape seen
when inputs do not fit.

Ties are counted pessimistically everywhere: a candidate scoring exactly as high as the true one
ranks above it, and the pointing game scores a hit only when every maximal cell is inside the
region. A constant similarity matrix or a uniform attention map therefore earns no credit.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

POINTING_INSIDE = 0.5  # a cell "is inside" the region for the pointing game when this much is covered
_COVERAGE_TOLERANCE = 1e-9  # float slack when comparing area fractions to POINTING_INSIDE


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _to_numpy(values: Any, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.is_floating_point() and values.dtype not in (torch.float32, torch.float64):
            values = values.float()  # NumPy has no bfloat16
        return values.numpy()
    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a numeric tensor or array, got dtype {array.dtype}")
    return array


def _check_ndim(array: np.ndarray, name: str, ndim: int, expected: str) -> None:
    if array.ndim != ndim:
        raise ValueError(f"{name} must have shape {expected}, got shape {array.shape}")


def _labels(values: Any, name: str) -> np.ndarray:
    """`values` as a non-negative integer array (an empty list, which NumPy reads as float, included)."""
    array = _to_numpy(values, name)
    if array.size == 0:
        return array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer labels, got dtype {array.dtype}")
    if array.min() < 0:
        raise ValueError(f"{name} must hold non-negative labels, got minimum {array.min()}")
    return array


def _check_below(labels: np.ndarray, name: str, limit: int, limit_name: str) -> None:
    if labels.size and labels.max() >= limit:
        raise ValueError(f"{name} holds label {labels.max()}, expected labels below {limit_name}={limit}")


def _check_num_classes(num_classes: Any) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")


def _scores(values: Any, name: str, ndim: int, expected: str) -> np.ndarray:
    """`values` as a finite, non-empty float64 array of `ndim` dimensions."""
    array = _to_numpy(values, name)
    _check_ndim(array, name, ndim, expected)
    if array.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {array.shape}")
    return _check_finite(array.astype(np.float64), name)


def _check_finite(array: np.ndarray, name: str) -> np.ndarray:
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite, found nan or inf")
    return array


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------


def accuracy(logits_or_predictions: Any, targets: Any) -> float:
    """Share of correct predictions: (N, C) scores are turned into classes by argmax (the first
    maximum wins ties), (N,) integer predictions are used as they are; `targets` is (N,) ints."""
    scores = _to_numpy(logits_or_predictions, "logits_or_predictions")
    targets = _labels(targets, "targets")
    _check_ndim(targets, "targets", 1, "(N,)")
    if len(targets) == 0:
        raise ValueError("accuracy of zero examples is undefined: targets is empty")
    if scores.ndim == 2:
        _check_below(targets, "targets", scores.shape[1], "the number of logit columns C")
        predictions = _check_finite(scores, "logits_or_predictions").argmax(axis=1)
    elif scores.ndim == 1:
        if scores.dtype.kind not in "iu":
            raise TypeError("logits_or_predictions of shape (N,) must hold integer class predictions, "
                            f"got dtype {scores.dtype}; pass (N, C) logits instead")
        predictions = scores
    else:
        raise ValueError(f"logits_or_predictions must have shape (N, C) or (N,), got shape {scores.shape}")
    if len(predictions) != len(targets):
        raise ValueError(f"logits_or_predictions has N={len(predictions)} rows but targets has N={len(targets)}")
    return float(np.mean(predictions == targets))


def confusion_matrix(predictions: Any, targets: Any, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts; row = true class, column = predicted class (the
    scikit-learn convention). `predictions` and `targets` are integer labels of the same shape."""
    _check_num_classes(num_classes)
    predictions, targets = _labels(predictions, "predictions"), _labels(targets, "targets")
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions has shape {predictions.shape} but targets has shape {targets.shape}; "
                         "expected the same shape")
    _check_below(predictions, "predictions", num_classes, "num_classes")
    _check_below(targets, "targets", num_classes, "num_classes")
    return _count_pairs(predictions, targets, num_classes)


def _count_pairs(predictions: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts of (true, predicted) label pairs; labels already checked to lie in 0..C-1."""
    pair_index = targets.ravel().astype(np.int64) * num_classes + predictions.ravel()
    return np.bincount(pair_index, minlength=num_classes**2).reshape(num_classes, num_classes)


# --------------------------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------------------------


def _positive_mask(targets: Any, n_queries: int, n_candidates: int) -> np.ndarray:
    """(Nq, Nc) bool: which candidates are true matches of each query."""
    if targets is None:
        if n_queries != n_candidates:
            raise ValueError(f"similarity has shape ({n_queries}, {n_candidates}); without targets query i "
                             "matches candidate i, which needs a square matrix (or pass targets=)")
        return np.eye(n_queries, dtype=bool)
    array = _to_numpy(targets, "targets")
    if array.dtype == bool:
        if array.shape != (n_queries, n_candidates):
            raise ValueError(f"targets as a bool mask must have shape ({n_queries}, {n_candidates}), "
                             f"got shape {array.shape}")
        if not array.any(axis=1).all():
            raise ValueError(f"targets row {int(np.argmin(array.any(axis=1)))} has no true candidate")
        return array
    array = _labels(array, "targets")
    if array.shape != (n_queries,):
        raise ValueError(f"targets must have shape ({n_queries},) (candidate index per query) or be a bool "
                         f"mask of shape ({n_queries}, {n_candidates}), got shape {array.shape}")
    _check_below(array, "targets", n_candidates, "the number of candidates Nc")
    return np.arange(n_candidates)[None, :] == array[:, None]


def _pessimistic_ranks(similarity: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """(Nq,) 0-based rank of each query's best true candidate, counting ties against it."""
    best_positive = np.where(positives, similarity, -np.inf).max(axis=1)  # (Nq,)
    return ((similarity >= best_positive[:, None]) & ~positives).sum(axis=1)


def _check_k(k: Any, n_candidates: int, name: str = "k") -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_candidates:
        raise ValueError(f"{name} must be an int in 1..{n_candidates} (the number of candidates), got {k!r}")


def recall_at_k(similarity: Any, k: int, targets: Any = None) -> float:
    """Share of queries whose true candidate is among the `k` most similar.

    `similarity` is (Nq, Nc), higher = more similar. `targets`: None (query i matches candidate i;
    needs Nq == Nc), (Nq,) candidate indices, or an (Nq, Nc) bool mask when a query has several true
    candidates (a hit when any of them is in the top k). Ties are pessimistic: a wrong candidate
    scoring exactly as high as the true one ranks above it.
    """
    similarity = _scores(similarity, "similarity", 2, "(Nq, Nc)")
    _check_k(k, similarity.shape[1])
    ranks = _pessimistic_ranks(similarity, _positive_mask(targets, *similarity.shape))
    return float(np.mean(ranks < k))


def retrieval_recalls(similarity: Any, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """{"i2t_R@k": ..., "t2i_R@k": ...} for an (N, N) image-text similarity whose rows are images
    and columns texts, image i matching text i; text -> image uses the transpose."""
    similarity = _scores(similarity, "similarity", 2, "(N, N)")
    if similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be square (N, N) with image i matching text i, got shape {similarity.shape}")
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Sequence) or len(ks) == 0:
        raise ValueError(f"ks must be a non-empty sequence of ints, got {ks!r}")
    for k in ks:
        _check_k(k, similarity.shape[0], name="every k in ks")
    positives = np.eye(similarity.shape[0], dtype=bool)
    ranks = {"i2t": _pessimistic_ranks(similarity, positives), "t2i": _pessimistic_ranks(similarity.T, positives)}
    return {f"{direction}_R@{k}": float(np.mean(ranks[direction] < k)) for direction in ranks for k in ks}


# --------------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------------


def iou_per_class(predicted: Any, target: Any, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """(num_classes,) intersection over union of each class, NaN for a class absent from both maps.

    `predicted` and `target` are integer label maps of the same shape (any leading batch dims).
    Pixels whose target is `ignore_index` are left out; when `ignore_index` is itself a class
    index, that class's entry is NaN (it is not evaluated).
    """
    _check_num_classes(num_classes)
    predicted, target = _to_numpy(predicted, "predicted"), _to_numpy(target, "target")
    if predicted.shape != target.shape:
        raise ValueError(f"predicted has shape {predicted.shape} but target has shape {target.shape}; "
                         "expected the same shape")
    if predicted.size == 0:
        raise ValueError("predicted and target are empty")
    evaluated = target != ignore_index if ignore_index is not None else np.ones(target.shape, dtype=bool)
    predicted, target = _labels(predicted[evaluated], "predicted"), _labels(target[evaluated], "target")
    _check_below(predicted, "predicted", num_classes, "num_classes")
    _check_below(target, "target", num_classes, "num_classes")
    counts = _count_pairs(predicted, target, num_classes)  # (C, C), row = true class
    intersection = np.diag(counts).astype(np.float64)
    union = counts.sum(axis=0) + counts.sum(axis=1) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = intersection / union
    if ignore_index is not None and 0 <= ignore_index < num_classes:
        iou[ignore_index] = np.nan
    return iou


def mean_iou(predicted: Any, target: Any, num_classes: int, ignore_index: int | None = None) -> float:
    """Mean of `iou_per_class` over the classes present in `predicted` or `target`."""
    iou = iou_per_class(predicted, target, num_classes, ignore_index)
    if np.isnan(iou).all():
        raise ValueError("no class is present in predicted or target (every pixel ignored?)")
    return float(np.nanmean(iou))


# --------------------------------------------------------------------------------------------
# Attention grounding
# --------------------------------------------------------------------------------------------


def _overlap_fractions(n_cells: int, n_pixels: int) -> np.ndarray:
    """(n_cells, n_pixels): the share of each grid cell's extent covered by each pixel, along one
    axis, when both span the same interval (n_cells cells over n_pixels pixels)."""
    cell = n_pixels / n_cells  # pixels per cell, may be fractional or below one
    starts = np.arange(n_cells)[:, None] * cell  # (n_cells, 1)
    pixels = np.arange(n_pixels)[None, :]  # (1, n_pixels)
    overlap = np.minimum(starts + cell, pixels + 1) - np.maximum(starts, pixels)
    return np.clip(overlap, 0, None) / cell


def mask_coverage(region: Any, grid: tuple[int, int]) -> np.ndarray:
    """(N, h, w) share of each cell of an h x w grid covered by the (N, H, W) bool `region`,
    by area averaging; both span the whole image, for any ratio of sizes (exactly 0 or 1 when
    the grid matches the mask)."""
    if len(grid) != 2 or not all(isinstance(n, (int, np.integer)) and n > 0 for n in grid):
        raise ValueError(f"grid must be two positive ints (h, w), got {grid!r}")
    region = _to_numpy(region, "region")
    if region.dtype != bool:
        raise TypeError(f"region must be a bool mask, got dtype {region.dtype} (use e.g. mask > 0)")
    _check_ndim(region, "region", 3, "(N, H, W)")
    rows, cols = _overlap_fractions(grid[0], region.shape[1]), _overlap_fractions(grid[1], region.shape[2])
    return np.einsum("ay,nyx,bx->nab", rows, region.astype(np.float64), cols)  # (N, h, w)


def attention_grounding(attention: Any, region: Any) -> dict[str, float]:
    """How well attention maps land on ground-truth regions.

    `attention` is (N, h, w), non-negative, each map with some mass; `region` is (N, H, W) bool,
    each mask non-empty. When the grid differs from the mask, the mask is averaged over each
    attention cell (`mask_coverage`): a cell counts as inside in proportion to its covered area.

    - "mass_inside": mean over examples of the share of attention mass inside the region.
    - "pointing_game": share of examples whose most attended cell is inside the region, a cell
      being inside when at least half of it is covered; with tied maxima every maximal cell must
      be inside (pessimistic, so a uniform map never scores).
    """
    attention = _scores(attention, "attention", 3, "(N, h, w)")
    coverage = mask_coverage(region, attention.shape[1:])  # (N, h, w) in [0, 1]
    if coverage.shape[0] != attention.shape[0]:
        raise ValueError(f"attention has N={attention.shape[0]} maps but region has N={coverage.shape[0]} masks")
    if (attention < 0).any():
        raise ValueError(f"attention must be non-negative, got minimum {attention.min()}")
    totals = attention.sum(axis=(1, 2))  # (N,)
    if (totals == 0).any():
        raise ValueError(f"attention map {int(np.argmin(totals))} is all zero; each map needs some mass")
    covered = coverage.sum(axis=(1, 2))  # (N,) zero exactly when the mask is empty
    if (covered == 0).any():
        raise ValueError(f"region mask {int(np.argmin(covered))} is empty; each example needs a region")
    mass_inside = (attention * coverage).sum(axis=(1, 2)) / totals  # (N,)
    maximal = attention == attention.max(axis=(1, 2), keepdims=True)  # (N, h, w)
    inside = coverage >= POINTING_INSIDE - _COVERAGE_TOLERANCE  # (N, h, w)
    hits = (inside | ~maximal).all(axis=(1, 2))  # (N,)
    return {"mass_inside": float(mass_inside.mean()), "pointing_game": float(hits.mean())}




# --------------------------------------------------------------------------------------------
# What a sum of per-modality terms can reach
# --------------------------------------------------------------------------------------------

# Term values that make every labelling a sum a_i + b_j > 0 can make on a 2 x 2 table.
_ADDITIVE_TERMS = np.array([-1.5, -0.5, 0.5, 1.5])


def best_additive_accuracy(probabilities: Any, labels: Any) -> float:
    """The highest accuracy of any rule "positive iff a_i + b_j > 0" on a table of two binary factors.

    `probabilities[i, j]` (2, 2) is how often the first factor (e.g. the words) takes value i and the
    second (e.g. the voice) value j, summing to 1; `labels[i, j]` (2, 2) in {0, 1} is the label there.
    Late fusion scores an example by such a sum, so this is its ceiling: 1.0 where the labels follow
    the factors one at a time, 3/4 on a balanced XOR, whose two diagonals no sum can separate.
    """
    probabilities, labels = _check_factor_table(probabilities, labels)
    best = 0.0
    for a0, a1, b0, b1 in itertools.product(_ADDITIVE_TERMS, repeat=4):
        predictions = (np.array([[a0], [a1]]) + np.array([[b0, b1]]) > 0).astype(np.int64)  # (2, 2): a_i + b_j > 0
        best = max(best, float(probabilities[predictions == labels].sum()))
    return best


def _check_factor_table(probabilities: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    probabilities = _check_finite(_to_numpy(probabilities, "probabilities").astype(np.float64), "probabilities")
    labels = _labels(labels, "labels")
    for name, array in (("probabilities", probabilities), ("labels", labels)):
        if array.shape != (2, 2):
            raise ValueError(f"{name} must have shape (2, 2), one entry per pair of factor values, got {array.shape}")
    if np.any(probabilities < 0) or abs(probabilities.sum() - 1.0) > 1e-6:
        raise ValueError(f"probabilities must be >= 0 and sum to 1, got {probabilities.tolist()}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, got {labels.tolist()}")
    return probabilities, labels


__all__ = [
    "accuracy",
    "confusion_matrix",
    "recall_at_k",
    "retrieval_recalls",
    "iou_per_class",
    "mean_iou",
    "mask_coverage",
    "attention_grounding",
    "best_additive_accuracy",
]
