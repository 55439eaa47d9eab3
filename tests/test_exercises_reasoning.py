"""Notebook 04's exercise checks: the equations written out pass, each typical mistake fails with its own
sentence, an unwritten answer and a wrong shape each get one sentence, and `mmcourse grade` knows them."""
import pytest
import torch

from mmcourse import exercises
from mmcourse.exercises import reasoning as checks
from mmcourse.models.program_generator import reinforce_loss


def san_hop(cells, query, image_weight, question_weight, question_bias, score_weight):
    joint = torch.tanh(cells @ image_weight.T + (query @ question_weight.T + question_bias)[:, None])  # (B, N, k)
    attention = (joint @ score_weight).softmax(1)  # (B, N)
    return (attention[:, :, None] * cells).sum(1) + query, attention


def bilinear_attention(objects, words, U, u_bias, V, v_bias, p, object_padding, word_padding):
    logits = (torch.relu(objects @ U + u_bias) * p) @ torch.relu(words @ V + v_bias).transpose(1, 2)  # (B, K, L)
    logits = logits.masked_fill(object_padding[:, :, None] | word_padding[:, None, :], float("-inf"))
    return logits.flatten(1).softmax(1).view_as(logits)


def relate(attention, relation, objects):
    keep = objects[:, None, :] & ~torch.eye(objects.shape[1], dtype=torch.bool)
    return torch.einsum("bi,bij->bj", attention, relation * keep)


def reinforce(log_probs, rewards, baseline):
    return -((rewards - baseline) * log_probs).mean()


CASES = [  # check, the equation written out, its mistakes, a wrong-shaped answer
    (exercises.check_san_hop, san_hop, checks.SAN_HOP_MISTAKES,
     lambda *args: (san_hop(*args)[0], san_hop(*args)[1][..., None])),
    (exercises.check_bilinear_attention, bilinear_attention, checks.BILINEAR_MISTAKES,
     lambda *args: bilinear_attention(*args)[:, None]),
    (exercises.check_relate, relate, checks.RELATE_MISTAKES, lambda *args: relate(*args)[:, :-1]),
    (exercises.check_reinforce_loss, reinforce, checks.REINFORCE_MISTAKES,
     lambda log_probs, rewards, baseline: -((rewards - baseline) * log_probs)),
]
IDS = [case[0].__name__ for case in CASES]


def test_the_package_references_pass():
    assert exercises.check_reinforce_loss(reinforce_loss).passed
    assert exercises.check_relate(checks.relate).passed


@pytest.mark.parametrize("check, solution, mistakes, wrong_shape", CASES, ids=IDS)
def test_the_equation_passes_and_each_mistake_is_named(check, solution, mistakes, wrong_shape):
    verdict = check(solution)
    assert verdict.passed and "values and gradients" in verdict.message
    assert len(mistakes) == 3
    for sentence, mistake in mistakes.items():
        verdict = check(mistake)
        assert not verdict.passed and sentence in verdict.message, verdict.message
        assert verdict.hint  # the exercise's formula


@pytest.mark.parametrize("check, solution, mistakes, wrong_shape", CASES, ids=IDS)
def test_unwritten_answer_and_wrong_shape_get_one_sentence(check, solution, mistakes, wrong_shape):
    def not_yet(*args):
        raise NotImplementedError

    verdict = check(not_yet)
    assert not verdict.passed and "is not implemented yet" in verdict.message
    verdict = check(wrong_shape)
    assert not verdict.passed and "shape" in verdict.message and verdict.message.count(". ") == 0
    assert verdict.message.endswith(".") and "\n" not in verdict.message
    with pytest.raises(exercises.ExerciseFailed):
        check(wrong_shape, raise_on_fail=True)


def test_a_detached_answer_fails_on_its_gradients():
    verdict = exercises.check_reinforce_loss(lambda log_probs, rewards, baseline: reinforce(log_probs.detach(),
                                                                                          rewards, baseline))
    assert not verdict.passed and "gradient" in verdict.message
