"""Checks for the exercises of notebook 03 (multimodal alignment).

Each check runs the learner's function and the package's reference on fresh random inputs and says
in one sentence what differs, naming the typical mistake when the learner's values match it:
cross-modal attention with a key mask (Tsai et al. 2019), the MIL-NCE loss (Miech et al. 2020),
ALBEF's hard-negative sampling for image-text matching and its momentum-distilled ITC targets
(Li et al. 2021).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..models.layers import attention
from .check import CheckResult, compare

__all__ = ["check_cross_attention"]

HINT_CROSS_ATTENTION = ("scores = queries @ keys.transpose(-2, -1) / sqrt(d) is (B, Lq, Lk); set the scores of "
                        "padded keys to -inf with masked_fill(key_padding_mask[:, None, :], float('-inf')), take "
                        "the softmax over the LAST axis (the keys), and return (weights @ values, weights).")


def _cross_attention_reference(queries, keys, values, key_padding_mask):
    return attention(queries, keys, values, key_padding_mask[:, None, :])  # (B, Lq, d), (B, Lq, Lk)


def _softmax_over_queries(queries, keys, values, key_padding_mask):
    scores = (queries @ keys.transpose(-2, -1) / math.sqrt(queries.shape[-1])).masked_fill(
        key_padding_mask[:, None, :], float("-inf"))
    weights = scores.softmax(-2)
    return weights.nan_to_num(0.0) @ values, weights.nan_to_num(0.0)


def _unscaled(queries, keys, values, key_padding_mask):
    return attention(queries * math.sqrt(queries.shape[-1]), keys, values, key_padding_mask[:, None, :])


def _mask_ignored(queries, keys, values, key_padding_mask):
    return attention(queries, keys, values)


CROSS_ATTENTION_MISTAKES: dict[str, Callable] = {
    "your weights are a softmax over the queries (dim -2); each query's weights must sum to one over the keys": _softmax_over_queries,
    "your scores are not divided by sqrt(d), the square root of the feature size": _unscaled,
    "padded keys still get weight: set their scores to -inf before the softmax": _mask_ignored,
}


def check_cross_attention(cross_attention_fn: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`cross_attention_fn(queries (B, Lq, d), keys (B, Lk, d), values (B, Lk, d), key_padding_mask (B, Lk)
    bool, True at padding)` must return `(output (B, Lq, d), weights (B, Lq, Lk))` as
    `mmcourse.models.layers.attention` does: values and gradients."""

    def make_inputs(gen: torch.Generator) -> tuple:
        batch, queries_length, keys_length, dim = (int(v) for v in torch.randint(2, 7, (4,), generator=gen))
        queries = torch.randn(batch, queries_length, dim, generator=gen).requires_grad_()
        keys = torch.randn(batch, keys_length, dim, generator=gen).requires_grad_()
        values = torch.randn(batch, keys_length, dim, generator=gen).requires_grad_()
        lengths = torch.randint(1, keys_length + 1, (batch,), generator=gen)  # every row keeps a key
        lengths[0] = keys_length - 1 if keys_length > 1 else 1  # at least one row is padded
        key_padding_mask = torch.arange(keys_length)[None, :] >= lengths[:, None]  # (B, Lk)
        return queries, keys, values, key_padding_mask

    return compare(cross_attention_fn, _cross_attention_reference, make_inputs, check_grad=True,
                   name="cross_attention", hint=HINT_CROSS_ATTENTION, raise_on_fail=raise_on_fail,
                   mistakes=CROSS_ATTENTION_MISTAKES)
