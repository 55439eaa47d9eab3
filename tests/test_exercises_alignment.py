"""Notebook 03's exercise checks: the reference passes, each typical mistake fails with its own sentence."""
import math

import torch

from mmcourse import exercises
from mmcourse.exercises import alignment as checks
from mmcourse.models.albef import distillation_targets, sample_hard_negatives
from mmcourse.models.milnce import milnce_loss


def test_checks_are_public():
    for name in ("check_cross_attention", "check_milnce_loss", "check_hard_negative_sampling",
                 "check_distillation_targets"):
        assert callable(getattr(exercises, name))


def test_cross_attention_check_passes_the_equation_and_names_each_mistake():
    def written_out(q, k, v, mask):
        scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(mask[:, None, :], float("-inf"))
        weights = scores.softmax(-1)
        return weights @ v, weights

    assert exercises.check_cross_attention(written_out).passed
    for sentence, mistake in checks.CROSS_ATTENTION_MISTAKES.items():
        verdict = exercises.check_cross_attention(mistake)
        assert not verdict.passed and sentence in verdict.message


def test_milnce_check():
    assert exercises.check_milnce_loss(lambda v, t, temperature: milnce_loss(v, t, temperature)).passed
    for sentence, mistake in checks.MILNCE_MISTAKES.items():
        verdict = exercises.check_milnce_loss(mistake)
        assert not verdict.passed and sentence in verdict.message


def test_distillation_check():
    assert exercises.check_distillation_targets(distillation_targets).passed
    for sentence, mistake in checks.DISTILLATION_MISTAKES.items():
        verdict = exercises.check_distillation_targets(mistake)
        assert not verdict.passed and sentence in verdict.message


def test_hard_negative_check_by_frequencies():
    assert exercises.check_hard_negative_sampling(sample_hard_negatives).passed

    def with_diagonal(similarity, generator):
        return torch.multinomial(similarity.softmax(1), 1, generator=generator).squeeze(1)

    def uniform(similarity, generator):
        others = (~torch.eye(len(similarity), dtype=torch.bool)).float()
        return torch.multinomial(others, 1, generator=generator).squeeze(1)

    def most_similar(similarity, generator):
        return similarity.masked_fill(torch.eye(len(similarity), dtype=torch.bool), float("-inf")).argmax(1)

    def not_yet(similarity, generator):
        raise NotImplementedError

    assert "diagonal" in exercises.check_hard_negative_sampling(with_diagonal).message
    assert "uniform" in exercises.check_hard_negative_sampling(uniform).message
    assert "every draw is the same" in exercises.check_hard_negative_sampling(most_similar).message
    assert "not implemented" in exercises.check_hard_negative_sampling(not_yet).message
