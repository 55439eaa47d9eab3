"""Checks for the exercises of notebook 01 (the five challenges and the fusion lab).

Each check runs the learner's function and the package's reference on fresh random inputs and says
in one sentence what differs: Tensor Fusion of Zadeh et al. (2017) (`mmcourse.models.fusion`), the
weight that Low-rank Multimodal Fusion's factors stand for (Liu et al. 2018), and the best accuracy
any additive model (late fusion) can reach on a table of two binary factors (`mmcourse.metrics`).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..metrics import best_additive_accuracy
from ..models.fusion import TensorFusion, low_rank_weight
from .check import CheckResult, Comparison, random_sizes

__all__ = ["check_best_additive_accuracy", "check_lmf_weight", "check_tensor_fusion"]

HINT_TENSOR_FUSION = ("Append a column of ones to each input (torch.cat with torch.ones(B, 1)), take the outer "
                      "product with torch.einsum('bi,bj,bk->bijk', ...) and flatten all but the batch dimension.")
HINT_LMF_WEIGHT = ("For each rank r, take the outer product of the M factors' slices factors[m][r] (d_m + 1, h) "
                   "over their first dimension, keeping h apart (einsum 'ik,jk->ijk', then flatten the first two); "
                   "sum the rank-one terms over r.")
HINT_ADDITIVE = ("A rule 'positive iff a_i + b_j > 0' can label the four cells in 14 of the 16 possible ways: "
                 "all but the two where the diagonals differ (XOR). Score each allowed labelling by the probability "
                 "of the cells it gets right, and return the best as a float.")


def _tensor_fusion_inputs(gen: torch.Generator) -> tuple:
    batch = int(torch.randint(1, 6, (1,), generator=gen))
    dims = torch.randint(1, 5, (3,), generator=gen).tolist()
    return tuple(torch.randn(batch, d, generator=gen).requires_grad_() for d in dims)


def _tensor_fusion_reference(video, audio, text):
    return TensorFusion([video.shape[1], audio.shape[1], text.shape[1]])([video, audio, text])


def _tensor_fusion_without_ones(video, audio, text):
    return torch.einsum("bi,bj,bk->bijk", video, audio, text).flatten(1)


def _lmf_weight_inputs(gen: torch.Generator) -> tuple:
    """M = 2..4 factors of shape (rank, d_m + 1, h); rank >= 2, so that every rank-one term counts."""
    modalities, rank, out_dim = random_sizes(gen, 1, 2, 4) + random_sizes(gen, 1, 2, 4) + random_sizes(gen, 1, 1, 4)
    dims = random_sizes(gen, modalities, 2, 5)
    return ([torch.randn(rank, d, out_dim, generator=gen).requires_grad_() for d in dims],)


def _lmf_weight_last_modality_slowest(factors):
    return low_rank_weight(factors[::-1])


def _lmf_weight_first_rank_only(factors):
    return low_rank_weight([factor[:1] for factor in factors])


def _additive_inputs(gen: torch.Generator) -> tuple:
    """A random (2, 2) table of probabilities and labels; XOR labellings half of the time."""
    probabilities = torch.rand(2, 2, generator=gen, dtype=torch.float64) + 0.05
    probabilities = probabilities / probabilities.sum()
    if bool(torch.rand((), generator=gen) < 0.5):
        labels = torch.tensor([[0, 1], [1, 0]]) ^ int(torch.randint(0, 2, (1,), generator=gen))
    else:
        labels = torch.randint(0, 2, (2, 2), generator=gen)
    return probabilities, labels


def _additive_every_labelling(probabilities, labels):
    return 1.0  # any labelling allowed: the XOR one too


def _additive_balanced_xor(probabilities, labels):
    return 0.75


TENSOR_FUSION = Comparison("tensor_fusion", _tensor_fusion_reference, _tensor_fusion_inputs, check_grad=True,
                           hint=HINT_TENSOR_FUSION, mistakes={
                               "you take the outer product of the inputs themselves; append a 1 to each first, "
                               "or the unimodal and bimodal terms are lost": _tensor_fusion_without_ones})
LMF_WEIGHT = Comparison("lmf_weight", low_rank_weight, _lmf_weight_inputs, check_grad=True, hint=HINT_LMF_WEIGHT,
                        mistakes={
                            "your weight lets the last modality vary slowest; the first must, as in Tensor Fusion's "
                            "vector": _lmf_weight_last_modality_slowest,
                            "your weight holds one rank-one term; sum the terms of every rank r":
                                _lmf_weight_first_rank_only})
BEST_ADDITIVE_ACCURACY = Comparison(
    "best_additive_accuracy", best_additive_accuracy, _additive_inputs, hint=HINT_ADDITIVE, mistakes={
        "you allow every labelling; a sum a_i + b_j cannot make the two diagonals differ (XOR)":
            _additive_every_labelling,
        "you return 3/4, the answer for equally likely cells; weigh each cell by its probability":
            _additive_balanced_xor})


def check_tensor_fusion(tensor_fusion: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`tensor_fusion(video, audio, text)`, each (B, d_m), must return the (B, prod_m (d_m + 1))
    Tensor Fusion vector of `TensorFusion`, values and gradients."""
    return TENSOR_FUSION.check(tensor_fusion, raise_on_fail=raise_on_fail)


def check_lmf_weight(lmf_weight: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`lmf_weight(factors)`, M factors of shape (rank, d_m + 1, h), must return the
    (prod_m (d_m + 1), h) weight of `mmcourse.models.fusion.low_rank_weight`: values and gradients."""
    return LMF_WEIGHT.check(lmf_weight, raise_on_fail=raise_on_fail)


def check_best_additive_accuracy(best_additive_accuracy_fn: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`best_additive_accuracy_fn(probabilities, labels)`, two (2, 2) tensors, must return
    `mmcourse.metrics.best_additive_accuracy` as a float."""
    return BEST_ADDITIVE_ACCURACY.check(best_additive_accuracy_fn, raise_on_fail=raise_on_fail)


# What `mmcourse grade` grades: each check of this notebook, by the name its check cell calls.
EXERCISES = {"check_tensor_fusion": TENSOR_FUSION, "check_lmf_weight": LMF_WEIGHT,
             "check_best_additive_accuracy": BEST_ADDITIVE_ACCURACY}
