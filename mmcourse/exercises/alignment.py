"""Checks for the exercises of notebook 03 (multimodal alignment).

Each check runs the learner's function and the package's reference on fresh random inputs and says
in one sentence what differs, naming the typical mistake when the learner's values match it:
cross-modal attention with a key mask (Tsai et al. 2019), the MIL-NCE loss (Miech et al. 2020),
ALBEF's hard-negative sampling for image-text matching and its momentum-distilled ITC targets
(Li et al. 2021).
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch

from ..models.albef import distillation_targets, sample_hard_negatives
from ..models.layers import attention
from ..models.milnce import milnce_loss
from .check import CheckResult, Comparison, Exercise, Trial, error_summary, not_implemented

__all__ = ["check_cross_attention", "check_distillation_targets", "check_hard_negative_sampling", "check_milnce_loss"]

HINT_MILNCE = ("scores[i, j, k] = video_features[i] . text_features[j, k] / temperature. The numerator of clip i "
               "is logsumexp over its own bag k of scores[i, i, k]; the denominator adds every score of clip i "
               "with all candidates of the other clips and every score of bag i with the other clips, the "
               "positives once. Loss = mean over i of (denominator - numerator).")
HINT_HARD_NEGATIVES = ("For row i: probabilities = softmax(similarity[i]) with entry i set to zero (mask it to -inf "
                       "before the softmax), then draw one column with torch.multinomial(probabilities, 1, "
                       "generator=generator).")
HINT_DISTILLATION = ("one_hot = torch.eye(B, N) (row i's positive is column i); targets = alpha * "
                     "momentum_similarity.softmax(dim=1) + (1 - alpha) * one_hot.")
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


def _cross_attention_inputs(gen: torch.Generator) -> tuple:
    batch, queries_length, keys_length, dim = (int(v) for v in torch.randint(2, 7, (4,), generator=gen))
    queries = torch.randn(batch, queries_length, dim, generator=gen).requires_grad_()
    keys = torch.randn(batch, keys_length, dim, generator=gen).requires_grad_()
    values = torch.randn(batch, keys_length, dim, generator=gen).requires_grad_()
    lengths = torch.randint(1, keys_length + 1, (batch,), generator=gen)  # every row keeps a key
    lengths[0] = keys_length - 1 if keys_length > 1 else 1  # at least one row is padded
    key_padding_mask = torch.arange(keys_length)[None, :] >= lengths[:, None]  # (B, Lk)
    return queries, keys, values, key_padding_mask


CROSS_ATTENTION = Comparison("cross_attention", _cross_attention_reference, _cross_attention_inputs, check_grad=True,
                             hint=HINT_CROSS_ATTENTION, mistakes=CROSS_ATTENTION_MISTAKES)


def check_cross_attention(cross_attention_fn: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`cross_attention_fn(queries (B, Lq, d), keys (B, Lk, d), values (B, Lk, d), key_padding_mask (B, Lk)
    bool, True at padding)` must return `(output (B, Lq, d), weights (B, Lq, Lk))` as
    `mmcourse.models.layers.attention` does: values and gradients."""
    return CROSS_ATTENTION.check(cross_attention_fn, raise_on_fail=raise_on_fail)


# --------------------------------------------------------------------------------------------
# MIL-NCE
# --------------------------------------------------------------------------------------------


def _milnce_without_other_bags(video_features, text_features, temperature=1.0):
    """A typical mistake: the denominator holds clip i against every candidate, but not bag i
    against the other clips."""
    scores = torch.einsum("id,jkd->ijk", video_features, text_features) / temperature  # (B, B, K)
    batch = len(scores)
    positives = scores[torch.arange(batch), torch.arange(batch)].logsumexp(-1)  # (B,)
    return (scores.flatten(1).logsumexp(-1) - positives).mean()


def _milnce_positives_left_out(video_features, text_features, temperature=1.0):
    """A typical mistake: the positives are missing from the denominator."""
    scores = torch.einsum("id,jkd->ijk", video_features, text_features) / temperature  # (B, B, K)
    batch = len(scores)
    own = torch.eye(batch, dtype=torch.bool)
    positives = scores[torch.arange(batch), torch.arange(batch)].logsumexp(-1)  # (B,)
    rows = scores.masked_fill(own[:, :, None], float("-inf")).flatten(1)  # (B, B * K) clip i, other bags
    columns = scores.masked_fill(own[:, :, None], float("-inf")).transpose(0, 1).flatten(1)  # bag i, other clips
    return (torch.cat([rows, columns], 1).logsumexp(-1) - positives).mean()


MILNCE_MISTAKES: dict[str, Callable] = {
    "the positives are missing from your denominator (MIL-NCE puts them in it, as a softmax does)":
        _milnce_positives_left_out,
    "your denominator lacks bag i scored against the other clips (the column half of the symmetric loss)":
        _milnce_without_other_bags,
}


def _milnce_inputs(gen: torch.Generator) -> tuple:
    batch, bag, dim = (int(v) for v in torch.randint(2, 6, (3,), generator=gen))
    video = torch.randn(batch, dim, generator=gen).requires_grad_()
    text = torch.randn(batch, bag, dim, generator=gen).requires_grad_()
    temperature = float(torch.empty(()).uniform_(0.5, 2.0, generator=gen))
    return video, text, temperature


def _milnce_reference(video_features, text_features, temperature):
    return milnce_loss(video_features, text_features, temperature)  # every bag full: no candidate mask


MILNCE_LOSS = Comparison("milnce_loss", _milnce_reference, _milnce_inputs, check_grad=True, hint=HINT_MILNCE,
                         mistakes=MILNCE_MISTAKES)


def check_milnce_loss(milnce_loss_fn: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`milnce_loss_fn(video_features (B, D), text_features (B, K, D), temperature)` must return
    `mmcourse.models.milnce.milnce_loss`: values and gradients."""
    return MILNCE_LOSS.check(milnce_loss_fn, raise_on_fail=raise_on_fail)


# --------------------------------------------------------------------------------------------
# ALBEF: momentum-distilled ITC targets, hard negatives for ITM
# --------------------------------------------------------------------------------------------


def _targets_softmax_over_columns(momentum_similarity, alpha):
    batch, keys = momentum_similarity.shape
    return alpha * momentum_similarity.softmax(0) + (1 - alpha) * torch.eye(batch, keys)


def _targets_alpha_swapped(momentum_similarity, alpha):
    return distillation_targets(momentum_similarity, 1 - alpha)


DISTILLATION_MISTAKES: dict[str, Callable] = {
    "your softmax runs over the rows (dim 0); each row's targets must sum to one over its N keys":
        _targets_softmax_over_columns,
    "alpha and 1 - alpha are swapped: alpha weighs the momentum model's distribution": _targets_alpha_swapped,
}


def _distillation_inputs(gen: torch.Generator) -> tuple:
    batch = int(torch.randint(2, 6, (1,), generator=gen))
    keys = batch + int(torch.randint(0, 6, (1,), generator=gen))  # the batch, then the queue
    return torch.randn(batch, keys, generator=gen) * 3, float(torch.rand((), generator=gen))


DISTILLATION_TARGETS = Comparison("distillation_targets", distillation_targets, _distillation_inputs,
                                  hint=HINT_DISTILLATION, mistakes=DISTILLATION_MISTAKES)


def check_distillation_targets(distillation_targets_fn: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`distillation_targets_fn(momentum_similarity (B, N), alpha)` must return ALBEF's soft ITC
    targets `mmcourse.models.albef.distillation_targets`."""
    return DISTILLATION_TARGETS.check(distillation_targets_fn, raise_on_fail=raise_on_fail)


HARD_NEGATIVE_DRAWS = 1500  # rows of the statistical check: a frequency's standard error is at most 0.013
HARD_NEGATIVE_SIMILARITY = torch.tensor([[4.0, 2.0, 1.0, 0.0], [0.0, 5.0, 2.0, 2.0], [1.0, 3.0, 0.0, 2.0],
                                         [0.5, 0.0, 3.0, 6.0]])  # (4, 4): diagonals large in rows 1 and 3


def answer_draws(sample_fn: Callable, request: dict) -> dict:
    """`HARD_NEGATIVE_DRAWS` draws of `sample_fn` from one similarity matrix and one generator seeded
    by the request, stacked (draws, B); or the error it raised."""
    generator = torch.Generator().manual_seed(request["seed"])
    try:
        draws = torch.stack([torch.as_tensor(sample_fn(request["similarity"].clone(), generator))
                             for _ in range(HARD_NEGATIVE_DRAWS)])  # (draws, B)
    except NotImplementedError:
        return {"not_implemented": True}
    except Exception as error:  # a learner's bug: one sentence, no traceback
        return {"error": error_summary(error)}
    return {"output": draws}


class HardNegativeSampling(Exercise):
    """A sampler cannot be compared draw by draw, so this exercise draws many times from one similarity
    matrix and compares the frequencies with the probabilities the rule gives (one trial)."""

    name = "sample_hard_negatives"
    answer = staticmethod(answer_draws)

    def draw(self, seed: int) -> Iterator[Trial]:
        diagonal = torch.eye(len(HARD_NEGATIVE_SIMILARITY), dtype=torch.bool)
        expected = HARD_NEGATIVE_SIMILARITY.masked_fill(diagonal, float("-inf")).softmax(1)  # (4, 4)
        yield Trial({"similarity": HARD_NEGATIVE_SIMILARITY.clone(), "seed": seed}, expected)

    def judge(self, trial: Trial, answer: dict) -> CheckResult:
        if answer.get("not_implemented"):
            return not_implemented(self.name, HINT_HARD_NEGATIVES)
        if "error" in answer:
            type_name, message = answer["error"]
            return CheckResult(False, f"{self.name} raised {type_name}: {message}.", HINT_HARD_NEGATIVES)
        return _hard_negative_verdict(answer["output"], trial.expected)


HARD_NEGATIVE_SAMPLING = HardNegativeSampling()


def check_hard_negative_sampling(sample_fn: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`sample_fn(similarity (B, B), generator)` must draw, for each row i, a column j != i with
    probability softmax(similarity[i]) over j != i, as `mmcourse.models.albef.sample_hard_negatives`:
    frequencies over many draws."""
    return HARD_NEGATIVE_SAMPLING.check(sample_fn, raise_on_fail=raise_on_fail)


def _hard_negative_verdict(draws: torch.Tensor, expected: torch.Tensor) -> CheckResult:
    name, batch = "sample_hard_negatives", len(expected)
    if draws.shape[1:] != (batch,) or draws.is_floating_point():
        return CheckResult(False, f"{name}: expected a (B,) integer tensor of column indices, got shape "
                                  f"{tuple(draws.shape[1:])} and dtype {draws.dtype}.", HINT_HARD_NEGATIVES)
    if ((draws < 0) | (draws >= batch)).any():
        return CheckResult(False, f"{name}: a drawn index lies outside 0..{batch - 1}.", HINT_HARD_NEGATIVES)
    if (draws == torch.arange(batch)).any():
        return CheckResult(False, f"{name}: row i sometimes draws column i itself; the diagonal (the true pair) "
                                  "must get probability zero.", HINT_HARD_NEGATIVES)
    frequencies = torch.stack([torch.bincount(draws[:, i], minlength=batch) for i in range(batch)]).float()
    frequencies /= len(draws)  # (B, B)
    if (draws == draws[0]).all():
        return CheckResult(False, f"{name}: every draw is the same; ALBEF samples in proportion to the softmax "
                                  "instead of always taking the most similar caption.", HINT_HARD_NEGATIVES)
    gap = (frequencies - expected).abs().max().item()
    if gap > 0.05:
        uniform = (~torch.eye(batch, dtype=torch.bool)).float() / (batch - 1)
        if (frequencies - uniform).abs().max().item() < 0.05:
            detail = "your draws are uniform over the other columns; weigh them by softmax(similarity[i])"
        else:
            detail = f"your frequencies differ from softmax(similarity[i]) without the diagonal by up to {gap:.2f}"
        return CheckResult(False, f"{name}: {detail}.", HINT_HARD_NEGATIVES)
    return CheckResult(True, f"{name} draws every row's negatives with the right frequencies "
                             f"({HARD_NEGATIVE_DRAWS:,} draws, largest gap {gap:.3f}).")


# What `mmcourse grade` grades: each check of this notebook, by the name its check cell calls.
EXERCISES = {"check_cross_attention": CROSS_ATTENTION, "check_milnce_loss": MILNCE_LOSS,
             "check_hard_negative_sampling": HARD_NEGATIVE_SAMPLING, "check_distillation_targets": DISTILLATION_TARGETS}
