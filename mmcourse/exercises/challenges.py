"""Checks for the exercises of notebook 01 (the five challenges and the fusion lab).

Each check runs the learner's function and the package's reference (`mmcourse.models.fusion`) on
fresh random inputs and says in one sentence what differs: Tensor Fusion of Zadeh et al. (2017),
the parameter count of Low-rank Multimodal Fusion (Liu et al. 2018), and late fusion by logit
averaging.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..models.fusion import LowRankFusion, TensorFusion, average_logits
from .check import CheckResult, Comparison

__all__ = ["check_late_fusion", "check_lmf_parameter_count", "check_tensor_fusion"]

HINT_TENSOR_FUSION = ("Append a column of ones to each input (torch.cat with torch.ones(B, 1)), take the outer "
                      "product with torch.einsum('bi,bj,bk->bijk', ...) and flatten all but the batch dimension.")
HINT_LMF_COUNT = ("Each modality m has one factor of shape (rank, d_m + 1, out_dim), the +1 for the appended "
                  "one; add the out_dim biases.")
HINT_LATE_FUSION = "Stack the M logit tensors into (M, B, C) and average over the modality dimension."


def _tensor_fusion_inputs(gen: torch.Generator) -> tuple:
    batch = int(torch.randint(1, 6, (1,), generator=gen))
    dims = torch.randint(1, 5, (3,), generator=gen).tolist()
    return tuple(torch.randn(batch, d, generator=gen).requires_grad_() for d in dims)


def _tensor_fusion_reference(video, audio, text):
    return TensorFusion([video.shape[1], audio.shape[1], text.shape[1]])([video, audio, text])


def _lmf_inputs(gen: torch.Generator) -> tuple:
    modalities = int(torch.randint(2, 5, (1,), generator=gen))
    dims = tuple(torch.randint(1, 65, (modalities,), generator=gen).tolist())
    rank, out_dim = torch.randint(1, 17, (2,), generator=gen).tolist()
    return dims, rank, out_dim


def _lmf_reference(dims, rank, out_dim):
    return sum(p.numel() for p in LowRankFusion(dims, out_dim, rank).parameters())


def _late_fusion_inputs(gen: torch.Generator) -> tuple:
    modalities, batch, classes = (int(v) for v in torch.randint(2, 6, (3,), generator=gen))
    return ([torch.randn(batch, classes, generator=gen).requires_grad_() for _ in range(modalities)],)


TENSOR_FUSION = Comparison("tensor_fusion", _tensor_fusion_reference, _tensor_fusion_inputs, check_grad=True,
                           hint=HINT_TENSOR_FUSION)
LMF_PARAMETER_COUNT = Comparison("lmf_parameter_count", _lmf_reference, _lmf_inputs, hint=HINT_LMF_COUNT)
LATE_FUSION = Comparison("late_fusion", average_logits, _late_fusion_inputs, check_grad=True, hint=HINT_LATE_FUSION)


def check_tensor_fusion(tensor_fusion: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`tensor_fusion(video, audio, text)`, each (B, d_m), must return the (B, prod_m (d_m + 1))
    Tensor Fusion vector of `TensorFusion`, values and gradients."""
    return TENSOR_FUSION.check(tensor_fusion, raise_on_fail=raise_on_fail)


def check_lmf_parameter_count(lmf_parameter_count: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`lmf_parameter_count(dims, rank, out_dim)` must return the number of parameters of
    `LowRankFusion(dims, out_dim, rank)`, counted on the module itself."""
    return LMF_PARAMETER_COUNT.check(lmf_parameter_count, raise_on_fail=raise_on_fail)


def check_late_fusion(late_fusion: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`late_fusion(logits)`, a list of M (B, C) tensors, must return their (B, C) average."""
    return LATE_FUSION.check(late_fusion, raise_on_fail=raise_on_fail)


# What `mmcourse grade` grades: each check of this notebook, by the name its check cell calls.
EXERCISES = {"check_tensor_fusion": TENSOR_FUSION, "check_lmf_parameter_count": LMF_PARAMETER_COUNT,
             "check_late_fusion": LATE_FUSION}
