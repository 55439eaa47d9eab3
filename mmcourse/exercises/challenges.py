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
from .check import CheckResult, compare

__all__ = ["check_late_fusion", "check_lmf_parameter_count", "check_tensor_fusion"]

HINT_TENSOR_FUSION = ("Append a column of ones to each input (torch.cat with torch.ones(B, 1)), take the outer "
                      "product with torch.einsum('bi,bj,bk->bijk', ...) and flatten all but the batch dimension.")
HINT_LMF_COUNT = ("Each modality m has one factor of shape (rank, d_m + 1, out_dim), the +1 for the appended "
                  "one; add the out_dim biases.")
HINT_LATE_FUSION = "Stack the M logit tensors into (M, B, C) and average over the modality dimension."


def check_tensor_fusion(tensor_fusion: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`tensor_fusion(video, audio, text)`, each (B, d_m), must return the (B, prod_m (d_m + 1))
    Tensor Fusion vector of `TensorFusion`, values and gradients."""

    def make_inputs(gen: torch.Generator) -> tuple:
        batch = int(torch.randint(1, 6, (1,), generator=gen))
        dims = torch.randint(1, 5, (3,), generator=gen).tolist()
        return tuple(torch.randn(batch, d, generator=gen).requires_grad_() for d in dims)

    def reference(video, audio, text):
        return TensorFusion([video.shape[1], audio.shape[1], text.shape[1]])([video, audio, text])

    return compare(tensor_fusion, reference, make_inputs, check_grad=True, name="tensor_fusion",
                   hint=HINT_TENSOR_FUSION, raise_on_fail=raise_on_fail)


def check_lmf_parameter_count(lmf_parameter_count: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`lmf_parameter_count(dims, rank, out_dim)` must return the number of parameters of
    `LowRankFusion(dims, out_dim, rank)`, counted on the module itself."""

    def make_inputs(gen: torch.Generator) -> tuple:
        modalities = int(torch.randint(2, 5, (1,), generator=gen))
        dims = tuple(torch.randint(1, 65, (modalities,), generator=gen).tolist())
        rank, out_dim = torch.randint(1, 17, (2,), generator=gen).tolist()
        return dims, rank, out_dim

    def reference(dims, rank, out_dim):
        return sum(p.numel() for p in LowRankFusion(dims, out_dim, rank).parameters())

    return compare(lmf_parameter_count, reference, make_inputs, name="lmf_parameter_count", hint=HINT_LMF_COUNT,
                   raise_on_fail=raise_on_fail)


def check_late_fusion(late_fusion: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`late_fusion(logits)`, a list of M (B, C) tensors, must return their (B, C) average."""

    def make_inputs(gen: torch.Generator) -> tuple:
        modalities, batch, classes = (int(v) for v in torch.randint(2, 6, (3,), generator=gen))
        return ([torch.randn(batch, classes, generator=gen).requires_grad_() for _ in range(modalities)],)

    return compare(late_fusion, average_logits, make_inputs, check_grad=True, name="late_fusion",
                   hint=HINT_LATE_FUSION, raise_on_fail=raise_on_fail)
