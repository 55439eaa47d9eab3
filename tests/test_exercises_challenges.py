"""Tests of the notebook-01 exercise checks: right answers pass, typical mistakes fail with a
sentence that says what differs, unfinished answers say so, autograders get an exception."""
import pytest
import torch

import mmcourse.exercises as exercises
from challenge_answers import BEST_ADDITIVE, LMF_WEIGHT, answer
from mmcourse.exercises import ExerciseFailed, check_best_additive_accuracy, check_lmf_weight, check_tensor_fusion


def with_one(x):
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)


def tensor_fusion(video, audio, text):
    return torch.einsum("bi,bj,bk->bijk", with_one(video), with_one(audio), with_one(text)).flatten(1)


def tensor_fusion_without_ones(video, audio, text):
    return torch.einsum("bi,bj,bk->bijk", video, audio, text).flatten(1)


def tensor_fusion_in_reverse_order(video, audio, text):
    return tensor_fusion(text, audio, video)


def tensor_fusion_detached(video, audio, text):
    return tensor_fusion(video, audio, text.detach())


lmf_weight = answer(LMF_WEIGHT)


def lmf_weight_last_modality_slowest(factors):
    return lmf_weight(factors[::-1])


def lmf_weight_first_rank_only(factors):
    return lmf_weight([factor[:1] for factor in factors])


def lmf_weight_per_rank(factors):
    return torch.stack([lmf_weight([factor[r:r + 1] for factor in factors]) for r in range(len(factors[0]))])


def lmf_weight_detached(factors):
    return lmf_weight([*factors[:-1], factors[-1].detach()])


best_additive_accuracy = answer(BEST_ADDITIVE)


def best_additive_accuracy_of_every_labelling(probabilities, labels):
    return 1.0


def best_additive_accuracy_of_a_balanced_xor(probabilities, labels):
    return 0.75


def best_additive_accuracy_as_a_tensor(probabilities, labels):
    return torch.tensor(best_additive_accuracy(probabilities, labels))


def not_implemented(*args):
    raise NotImplementedError


def test_the_checks_are_reachable_from_the_exercises_package():
    for name in ("check_tensor_fusion", "check_lmf_weight", "check_best_additive_accuracy"):
        assert callable(getattr(exercises, name))


def test_right_answers_pass():
    for check, answer in ((check_tensor_fusion, tensor_fusion), (check_lmf_weight, lmf_weight),
                          (check_best_additive_accuracy, best_additive_accuracy)):
        result = check(answer)
        assert result.passed, result.message
        assert "matches the reference" in result.message


def test_tensor_fusion_mistakes_are_named():
    missing_ones = check_tensor_fusion(tensor_fusion_without_ones)
    assert not missing_ones.passed and "shape" in missing_ones.message
    assert "you take the outer product of the inputs themselves; append a 1 to each first" in missing_ones.message
    assert "column of ones" in missing_ones.hint
    reversed_order = check_tensor_fusion(tensor_fusion_in_reverse_order)
    assert not reversed_order.passed and "differ" in reversed_order.message
    detached = check_tensor_fusion(tensor_fusion_detached)
    assert not detached.passed and "gradient w.r.t. argument 'text'" in detached.message


def test_lmf_weight_with_the_last_modality_slowest_is_named():
    result = check_lmf_weight(lmf_weight_last_modality_slowest)
    assert not result.passed and "values differ" in result.message
    assert "your weight lets the last modality vary slowest; the first must" in result.message
    assert "sum the rank-one terms over r" in result.hint


def test_lmf_weight_of_one_rank_term_is_named():
    result = check_lmf_weight(lmf_weight_first_rank_only)
    assert not result.passed and "values differ" in result.message
    assert "your weight holds one rank-one term; sum the terms of every rank r" in result.message


def test_lmf_weight_other_mistakes_fail_on_shape_and_gradients():
    per_rank = check_lmf_weight(lmf_weight_per_rank)
    assert not per_rank.passed and "shape" in per_rank.message and "your weight" not in per_rank.message
    detached = check_lmf_weight(lmf_weight_detached)
    assert not detached.passed and "gradient w.r.t. argument 'factors[" in detached.message


def test_best_additive_accuracy_that_allows_xor_is_named():
    result = check_best_additive_accuracy(best_additive_accuracy_of_every_labelling)
    assert not result.passed and "value 1, expected" in result.message
    assert "you allow every labelling; a sum a_i + b_j cannot make the two diagonals differ (XOR)" in result.message
    assert "14 of the 16" in result.hint
    with pytest.raises(ExerciseFailed, match="you allow every labelling"):
        check_best_additive_accuracy(best_additive_accuracy_of_every_labelling, raise_on_fail=True)


def test_best_additive_accuracy_of_three_quarters_always_is_named():
    result = check_best_additive_accuracy(best_additive_accuracy_of_a_balanced_xor)
    assert not result.passed and "value 0.75, expected" in result.message
    assert "you return 3/4, the answer for equally likely cells; weigh each cell by its probability" in result.message


def test_best_additive_accuracy_must_be_a_float():
    result = check_best_additive_accuracy(best_additive_accuracy_as_a_tensor)
    assert not result.passed and "got a torch.Tensor, expected a float" in result.message


@pytest.mark.parametrize("check", [check_tensor_fusion, check_lmf_weight, check_best_additive_accuracy])
def test_unfinished_answers_are_reported_and_autograders_get_an_exception(check):
    result = check(not_implemented)
    assert not result.passed and "not implemented yet" in result.message
    with pytest.raises(ExerciseFailed):
        check(not_implemented, raise_on_fail=True)
