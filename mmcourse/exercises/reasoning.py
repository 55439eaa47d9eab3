"""Checks for the exercises of notebook 04 (multimodal reasoning).

Each check runs the learner's function and the package's reference on fresh random inputs and says
in one sentence what differs, naming the typical mistake when the learner's values match it: one
hop of stacked attention (Yang et al. 2016), one glimpse of BAN's bilinear attention map (Kim et al.
2018), NMN's soft relate module (Andreas et al. 2016) and the REINFORCE loss with a baseline that
trains the program generator (Williams 1992; Johnson et al. 2017b).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

from ..models.bilinear import BilinearAttention
from ..models.layers import masked_softmax
from ..models.nmn import relate
from ..models.program_generator import reinforce_loss
from ..models.vqa import SanHop, san_hop
from .check import CheckResult, Comparison, random_sizes

__all__ = ["check_bilinear_attention", "check_reinforce_loss", "check_relate", "check_san_hop"]

HINT_SAN_HOP = ("h = tanh(cells @ image_weight.T + (query @ question_weight.T + question_bias)[:, None]) is "
                "(B, N, k); p = (h @ score_weight).softmax(dim=1) over the N cells; return "
                "((p[:, :, None] * cells).sum(1) + query, p).")
HINT_BILINEAR = ("logits[b, i, j] = sum_r p[r] relu(objects @ U + u_bias)[b, i, r] relu(words @ V + v_bias)[b, j, r]; "
                 "set the logits of pairs with a padded object or word to -inf, then take ONE softmax over all "
                 "K * L pairs of each example (flatten(1), softmax(-1), view back to (B, K, L)).")
HINT_RELATE = ("Zero relation[b, i, j] where i == j or object j is padding (masked_fill with "
               "~(objects[:, None, :] & ~torch.eye(K, dtype=torch.bool))), then out[b, j] = sum_i "
               "attention[b, i] relation[b, i, j]: torch.einsum('bi,bij->bj', ...).")
HINT_REINFORCE = ("loss = -((rewards - baseline) * log_probs).mean(): minimising it raises the log-probability "
                  "of programs whose reward beats the baseline.")


def _padding(gen: torch.Generator, batch: int, length: int) -> torch.Tensor:
    """(B, length) bool, True at padding: every row keeps at least one item, row 0 has padding."""
    lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    lengths[0] = length - 1
    return torch.arange(length)[None, :] >= lengths[:, None]


# --------------------------------------------------------------------------------------------
# Stacked attention: one hop
# --------------------------------------------------------------------------------------------


def _san_hop_reference(cells, query, image_weight, question_weight, question_bias, score_weight):
    width, attention_width = cells.shape[-1], len(question_bias)
    weights = {"image.weight": image_weight, "question.weight": question_weight, "question.bias": question_bias,
               "score.weight": score_weight[None, :]}
    return functional_call(SanHop(width, attention_width), weights, (cells, query))  # san_hop(cells, query, hop)


def _san_scores(cells, query, image_weight, question_weight, question_bias, score_weight):
    joint = torch.tanh(cells @ image_weight.T + (query @ question_weight.T + question_bias)[:, None])  # (B, N, k)
    return joint @ score_weight  # (B, N)


def _san_softmax_over_batch(cells, query, *weights):
    attention = _san_scores(cells, query, *weights).softmax(0)
    return (attention[:, :, None] * cells).sum(1) + query, attention


def _san_without_residual(cells, query, *weights):
    attention = _san_scores(cells, query, *weights).softmax(1)
    return (attention[:, :, None] * cells).sum(1), attention


def _san_sigmoid(cells, query, *weights):
    attention = torch.sigmoid(_san_scores(cells, query, *weights))
    return (attention[:, :, None] * cells).sum(1) + query, attention


SAN_HOP_MISTAKES: dict[str, Callable] = {
    "your softmax runs over the batch (dim 0); each example's weights must sum to one over its N cells":
        _san_softmax_over_batch,
    "the residual is missing: the refined query is the attended cells PLUS the query":
        _san_without_residual,
    "your weights come from a sigmoid; stacked attention takes a softmax over the cells": _san_sigmoid,
}


def _san_hop_inputs(gen: torch.Generator) -> tuple:
    batch, cells, width, attention_width = random_sizes(gen, 4)
    return (torch.randn(batch, cells, width, generator=gen).requires_grad_(),
            torch.randn(batch, width, generator=gen).requires_grad_(),
            torch.randn(attention_width, width, generator=gen).requires_grad_(),
            torch.randn(attention_width, width, generator=gen).requires_grad_(),
            torch.randn(attention_width, generator=gen).requires_grad_(),
            torch.randn(attention_width, generator=gen).requires_grad_())


SAN_HOP = Comparison("san_hop", _san_hop_reference, _san_hop_inputs, check_grad=True, hint=HINT_SAN_HOP,
                     mistakes=SAN_HOP_MISTAKES)


def check_san_hop(san_hop_fn: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`san_hop_fn(cells (B, N, D), query (B, D), image_weight (k, D), question_weight (k, D), question_bias
    (k,), score_weight (k,))` must return `(refined_query (B, D), attention (B, N))` as
    `mmcourse.models.vqa.san_hop` does with those weights: values and gradients."""
    return SAN_HOP.check(san_hop_fn, raise_on_fail=raise_on_fail)


# --------------------------------------------------------------------------------------------
# BAN: one glimpse of the bilinear attention map
# --------------------------------------------------------------------------------------------


class _AttentionMaps(nn.Module):
    """`BilinearAttention.attention_maps` as a module's forward, so that `functional_call` loads weights."""

    def __init__(self, object_width: int, word_width: int, hidden: int):
        super().__init__()
        self.ban = BilinearAttention(object_width, word_width, hidden, glimpses=1)

    def forward(self, objects, object_padding, words, word_padding):
        return self.ban.attention_maps(objects, object_padding, words, word_padding)


def _bilinear_reference(objects, words, U, u_bias, V, v_bias, p, object_padding, word_padding):
    weights = {"ban.object_projection.weight": U.T, "ban.object_projection.bias": u_bias,
               "ban.word_projection.weight": V.T, "ban.word_projection.bias": v_bias,
               "ban.glimpse_vectors": p[None, :]}
    module = _AttentionMaps(objects.shape[-1], words.shape[-1], len(p))
    maps = functional_call(module, weights, (objects, object_padding, words, word_padding))  # (B, 1, K, L)
    return maps.squeeze(1)  # (B, K, L)


def _bilinear_logits(objects, words, U, u_bias, V, v_bias, p):
    return (torch.relu(objects @ U + u_bias) * p) @ torch.relu(words @ V + v_bias).transpose(1, 2)  # (B, K, L)


def _pair_padding(object_padding, word_padding):
    return object_padding[:, :, None] | word_padding[:, None, :]  # (B, K, L)


def _bilinear_per_object(objects, words, U, u_bias, V, v_bias, p, object_padding, word_padding):
    logits = _bilinear_logits(objects, words, U, u_bias, V, v_bias, p)
    maps = masked_softmax(logits, word_padding[:, None, :], -1)  # each object's row sums to one
    return maps.masked_fill(object_padding[:, :, None], 0.0)


def _bilinear_unmasked(objects, words, U, u_bias, V, v_bias, p, object_padding, word_padding):
    logits = _bilinear_logits(objects, words, U, u_bias, V, v_bias, p)
    return logits.flatten(1).softmax(-1).view_as(logits)


def _bilinear_without_glimpse(objects, words, U, u_bias, V, v_bias, p, object_padding, word_padding):
    logits = _bilinear_logits(objects, words, U, u_bias, V, v_bias, torch.ones_like(p))
    return masked_softmax(logits.flatten(1), _pair_padding(object_padding, word_padding).flatten(1)).view_as(logits)


BILINEAR_MISTAKES: dict[str, Callable] = {
    "your softmax runs over the words of each object; BAN's runs once over all K * L (object, word) pairs":
        _bilinear_per_object,
    "padded objects and words still get weight: set their logits to -inf before the softmax":
        _bilinear_unmasked,
    "the glimpse vector p is missing: weigh each rank r of the product by p[r] before summing over r":
        _bilinear_without_glimpse,
}


def _bilinear_inputs(gen: torch.Generator) -> tuple:
    batch, count, length, object_width, word_width, hidden = random_sizes(gen, 6)
    return (torch.randn(batch, count, object_width, generator=gen).requires_grad_(),
            torch.randn(batch, length, word_width, generator=gen).requires_grad_(),
            torch.randn(object_width, hidden, generator=gen).requires_grad_(),
            torch.randn(hidden, generator=gen).requires_grad_(),
            torch.randn(word_width, hidden, generator=gen).requires_grad_(),
            torch.randn(hidden, generator=gen).requires_grad_(),
            torch.randn(hidden, generator=gen).requires_grad_(),
            _padding(gen, batch, count), _padding(gen, batch, length))


BILINEAR_ATTENTION = Comparison("bilinear_attention", _bilinear_reference, _bilinear_inputs, check_grad=True,
                                hint=HINT_BILINEAR, mistakes=BILINEAR_MISTAKES)


def check_bilinear_attention(bilinear_attention_fn: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`bilinear_attention_fn(objects (B, K, Dx), words (B, L, Dy), U (Dx, H), u_bias (H,), V (Dy, H),
    v_bias (H,), p (H,), object_padding (B, K) bool, word_padding (B, L) bool, True at padding)` must
    return one glimpse's map (B, K, L) as `mmcourse.models.bilinear.BilinearAttention.attention_maps`
    does with those weights: values and gradients."""
    return BILINEAR_ATTENTION.check(bilinear_attention_fn, raise_on_fail=raise_on_fail)


# --------------------------------------------------------------------------------------------
# NMN: relate
# --------------------------------------------------------------------------------------------


def _relate_transposed(attention, relation, objects):
    return relate(attention, relation.transpose(1, 2), objects)


def _relate_with_diagonal(attention, relation, objects):
    return torch.einsum("bi,bij->bj", attention, relation.masked_fill(~objects[:, None, :], 0.0))


def _relate_with_padding(attention, relation, objects):
    diagonal = torch.eye(objects.shape[1], dtype=torch.bool)
    return torch.einsum("bi,bij->bj", attention, relation.masked_fill(diagonal, 0.0))


RELATE_MISTAKES: dict[str, Callable] = {
    "your sum runs over the wrong index: relation[b, i, j] relates object j to object i, so sum over i":
        _relate_transposed,
    "the diagonal still counts: an object is never in a relation to itself (zero relation[b, i, i])":
        _relate_with_diagonal,
    "padded objects still get attention: zero relation[b, i, j] where object j is padding":
        _relate_with_padding,
}


def _relate_inputs(gen: torch.Generator) -> tuple:
    batch, count = random_sizes(gen, 2, 2, 6)
    count += 1  # at least three slots: two objects and padding in row 0
    objects = ~_padding(gen, batch, count)
    objects[:, :2] = True  # every row has two objects at least, so relations exist
    logits = torch.randn(batch, count, generator=gen).masked_fill(~objects, float("-inf"))
    attention = logits.softmax(-1).requires_grad_()  # unique's output: a distribution over the objects
    relation = torch.rand(batch, count, count, generator=gen).requires_grad_()  # diagonal and padding included
    return attention, relation, objects


RELATE = Comparison("relate", relate, _relate_inputs, check_grad=True, hint=HINT_RELATE, mistakes=RELATE_MISTAKES)


def check_relate(relate_fn: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`relate_fn(attention (B, K), relation (B, K, K), objects (B, K) bool)` must return (B, K) as
    `mmcourse.models.nmn.relate`: out[b, j] = sum_{i != j} attention[b, i] relation[b, i, j], 0 at
    padded j; values and gradients."""
    return RELATE.check(relate_fn, raise_on_fail=raise_on_fail)


# --------------------------------------------------------------------------------------------
# REINFORCE with a baseline
# --------------------------------------------------------------------------------------------


def _reinforce_sign_flipped(log_probs, rewards, baseline):
    return ((rewards - baseline) * log_probs).mean()


def _reinforce_without_baseline(log_probs, rewards, baseline):
    return -(rewards * log_probs).mean()


def _reinforce_sum(log_probs, rewards, baseline):
    return -((rewards - baseline) * log_probs).sum()


REINFORCE_MISTAKES: dict[str, Callable] = {
    "your sign is flipped: minimising your loss LOWERS the log-probability of programs that beat the baseline":
        _reinforce_sign_flipped,
    "the baseline is not subtracted: weigh each log-probability by rewards - baseline": _reinforce_without_baseline,
    "your loss sums over the batch; take the mean": _reinforce_sum,
}


def _reinforce_inputs(gen: torch.Generator) -> tuple:
    batch = random_sizes(gen, 1, 3, 8)[0]
    log_probs = (-5 * torch.rand(batch, generator=gen)).requires_grad_()  # log p(program) < 0
    rewards = torch.randint(0, 2, (batch,), generator=gen).float()  # 1 when the program's answer is right
    rewards[:2] = torch.tensor([0.0, 1.0])  # both outcomes in every batch
    baseline = float(torch.empty(()).uniform_(0.2, 0.8, generator=gen))
    return log_probs, rewards, baseline


REINFORCE_LOSS = Comparison("reinforce_loss", reinforce_loss, _reinforce_inputs, check_grad=True,
                            hint=HINT_REINFORCE, mistakes=REINFORCE_MISTAKES)


def check_reinforce_loss(reinforce_loss_fn: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`reinforce_loss_fn(log_probs (B,), rewards (B,), baseline float)` must return the scalar
    -mean((rewards - baseline) * log_probs) as `mmcourse.models.program_generator.reinforce_loss`:
    values and gradients."""
    return REINFORCE_LOSS.check(reinforce_loss_fn, raise_on_fail=raise_on_fail)


# What `mmcourse grade` grades: each check of this notebook, by the name its check cell calls.
EXERCISES = {"check_san_hop": SAN_HOP, "check_bilinear_attention": BILINEAR_ATTENTION, "check_relate": RELATE,
             "check_reinforce_loss": REINFORCE_LOSS}
