"""Co-learning: a resource-poor modality learns with the help of a resource-rich one (the lecture's
fifth challenge), by the two oldest recipes.

- Co-training (Blum & Mitchell 1998, "Combining Labeled and Unlabeled Data with Co-Training"): two
  views of each example (here an image and its caption), each enough to tell the class, and a few
  labels. A classifier is trained on each view; in every round each classifier labels the
  unlabelled examples it is most confident about, `per_class` for each class, and these join the
  shared labelled pool that both classifiers train on next. What one view finds easy becomes
  training data for the other. `co_training(fit_a, fit_b, labels, rounds, per_class)` runs the
  rounds over any two learners: `fit_v(indices, labels) -> (N, C)` trains view v's classifier on
  the pool and returns its class probabilities for all N examples.
- Cross-modal distillation (Gupta, Hoffman & Malik 2016, "Cross Modal Distillation for Supervision
  Transfer"; the soft targets of Hinton, Vinyals & Dean 2015): a teacher on the rich modality scores
  every paired example, and the student on the poor modality is trained to match the teacher's
  softened distribution through the pairs, no labels needed:

      L_distill = T^2 * KL( softmax(teacher / T) || softmax(student / T) )

  (the T^2 keeps its gradients on the scale of a cross-entropy as T varies). `distillation_loss`.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .encoders import check_positive_int, check_tensor

UNLABELLED = -1  # the label of an example nobody has labelled (yet)
GIVEN, BY_VIEW_A, BY_VIEW_B = 0, 1, 2  # who labelled an example (`CoTraining.labelled_by`)

# (indices (L,), labels (L,)) -> probabilities (N, C): an array, or a tensor on any device
Learner = Callable[[np.ndarray, np.ndarray], np.ndarray]


# --------------------------------------------------------------------------------------------
# Cross-modal distillation
# --------------------------------------------------------------------------------------------


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the (B, C) batch."""
    _check_logits(student_logits, teacher_logits, temperature)
    teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=1)  # (B, C) no gradient to the teacher
    student = F.log_softmax(student_logits / temperature, dim=1)  # (B, C)
    return temperature ** 2 * F.kl_div(student, teacher, log_target=True, reduction="batchmean")


# --------------------------------------------------------------------------------------------
# Co-training
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoTraining:
    """The pool after co-training: `labels` (N,) (`UNLABELLED` where nobody labelled), `labelled_by`
    (N,) `GIVEN` / `BY_VIEW_A` / `BY_VIEW_B` (-1 where unlabelled), `round` (N,) the round an example
    was labelled in (0 for the given labels, -1 where unlabelled)."""

    labels: np.ndarray
    labelled_by: np.ndarray
    round: np.ndarray


def co_training(fit_a: Learner, fit_b: Learner, labels, rounds: int, per_class: int) -> CoTraining:
    """Blum & Mitchell's co-training from `labels` (N,) (class index, `UNLABELLED` for unlabelled).

    Each round trains both views on the labelled pool; view a then labels, for every class c, the
    `per_class` unlabelled examples it gives the highest probability of c among those it predicts
    as c, and view b does the same among those still unlabelled. Given labels never change.
    """
    pool = _check_pool(labels)
    rounds, per_class = check_positive_int("rounds", rounds), check_positive_int("per_class", per_class)
    labelled_by = np.where(pool == UNLABELLED, -1, GIVEN)
    labelled_round = np.where(pool == UNLABELLED, -1, 0)
    for step in range(1, rounds + 1):
        known = np.flatnonzero(pool != UNLABELLED)
        probabilities = [fit(known, pool[known]) for fit in (fit_a, fit_b)]  # both trained on the same pool
        for view, probs in zip((BY_VIEW_A, BY_VIEW_B), probabilities):
            probs = _check_probabilities(probs, len(pool), "fit_a" if view == BY_VIEW_A else "fit_b")
            picked = confident_labels(probs, pool == UNLABELLED, per_class)  # (N,) UNLABELLED where not picked
            new = picked != UNLABELLED
            pool[new], labelled_by[new], labelled_round[new] = picked[new], view, step
    return CoTraining(pool, labelled_by, labelled_round)


def confident_labels(probs, unlabelled, per_class: int) -> np.ndarray:
    """One view's step of co-training: (N,) int64 labels, `UNLABELLED` except where it labels.

    For every class c, the `per_class` examples among the `unlabelled` (N,) bool ones that the
    view predicts as c (argmax of `probs` (N, C)) with the highest probability of c get label c;
    fewer when fewer are predicted as c. `probs` and `unlabelled` may be arrays or tensors on any device.
    """
    probs, unlabelled = _numpy(probs), _numpy(unlabelled, bool)
    if probs.ndim != 2 or unlabelled.shape != probs.shape[:1]:
        raise ValueError(f"probs must be (N, C) and unlabelled (N,), got shapes {probs.shape} and {unlabelled.shape}")
    per_class = check_positive_int("per_class", per_class)
    predicted = probs.argmax(1)  # (N,)
    picked = np.full(len(probs), UNLABELLED, dtype=np.int64)  # (N,)
    for label in range(probs.shape[1]):
        candidates = np.flatnonzero(unlabelled & (predicted == label))  # unlabelled, predicted as this class
        best = candidates[np.argsort(-probs[candidates, label], kind="stable")[:per_class]]  # most confident first
        picked[best] = label
    return picked


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------



def _check_pool(labels) -> np.ndarray:
    pool = np.array(labels.cpu() if isinstance(labels, torch.Tensor) else labels)  # a copy: the caller's stays
    if pool.ndim != 1 or pool.dtype.kind not in "iu":
        raise ValueError(f"labels must be a 1-d array of class indices ({UNLABELLED} for unlabelled), "
                         f"got shape {pool.shape} dtype {pool.dtype}")
    if (pool < UNLABELLED).any() or not (pool != UNLABELLED).any():
        raise ValueError(f"labels must hold class indices >= 0, at least one, and {UNLABELLED} for unlabelled "
                         f"examples; got values in [{pool.min()}, {pool.max()}]")
    return pool.astype(np.int64)


def _numpy(values, dtype=None) -> np.ndarray:
    """`values` (a list, an array, or a tensor on any device, with or without grad) as a NumPy array."""
    return np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=dtype)


def _check_probabilities(probs, n: int, name: str) -> np.ndarray:
    probs = _numpy(probs, np.float64)
    if probs.ndim != 2 or len(probs) != n:
        raise ValueError(f"{name} must return (N, C) = ({n}, C) class probabilities for every example, "
                         f"got shape {probs.shape}")
    return probs


def _check_logits(student_logits, teacher_logits, temperature) -> None:
    check_tensor("student_logits", student_logits, 2, floating=True)
    check_tensor("teacher_logits", teacher_logits, 2, floating=True)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits has shape {tuple(student_logits.shape)} but teacher_logits "
                         f"{tuple(teacher_logits.shape)}; expected the same (B, C)")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature > 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")


__all__ = ["BY_VIEW_A", "BY_VIEW_B", "CoTraining", "GIVEN", "UNLABELLED", "co_training", "confident_labels",
           "distillation_loss"]
