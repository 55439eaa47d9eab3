"""Tests of the notebook-01 exercise checks: right answers pass, typical mistakes fail with a
sentence that says what differs, unfinished answers say so, autograders get an exception."""
import pytest
import torch

import mmcourse.exercises as exercises
from mmcourse.exercises import ExerciseFailed, check_late_fusion, check_lmf_parameter_count, check_tensor_fusion


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


def lmf_parameter_count(dims, rank, out_dim):
    return rank * out_dim * sum(d + 1 for d in dims) + out_dim


def lmf_parameter_count_without_the_ones(dims, rank, out_dim):
    return rank * out_dim * sum(dims) + out_dim


def late_fusion(logits):
    return torch.stack(logits).mean(0)


def late_fusion_summed(logits):
    return torch.stack(logits).sum(0)


def not_implemented(*args):
    raise NotImplementedError


def test_the_checks_are_reachable_from_the_exercises_package():
    for name in ("check_tensor_fusion", "check_lmf_parameter_count", "check_late_fusion"):
        assert callable(getattr(exercises, name))


def test_right_answers_pass():
    for check, answer in ((check_tensor_fusion, tensor_fusion), (check_lmf_parameter_count, lmf_parameter_count),
                          (check_late_fusion, late_fusion)):
        result = check(answer)
        assert result.passed, result.message
        assert "matches the reference" in result.message


def test_tensor_fusion_mistakes_are_named():
    missing_ones = check_tensor_fusion(tensor_fusion_without_ones)
    assert not missing_ones.passed and "shape" in missing_ones.message
    assert "column of ones" in missing_ones.hint
    reversed_order = check_tensor_fusion(tensor_fusion_in_reverse_order)
    assert not reversed_order.passed and "differ" in reversed_order.message
    detached = check_tensor_fusion(tensor_fusion_detached)
    assert not detached.passed and "gradient w.r.t. argument 'text'" in detached.message


def test_lmf_count_mistakes_are_named():
    result = check_lmf_parameter_count(lmf_parameter_count_without_the_ones)
    assert not result.passed and "value" in result.message and "expected" in result.message
    as_float = check_lmf_parameter_count(lambda dims, rank, out_dim: float(lmf_parameter_count(dims, rank, out_dim)))
    assert not as_float.passed and "expected an int" in as_float.message


def test_late_fusion_mistakes_are_named():
    result = check_late_fusion(late_fusion_summed)
    assert not result.passed and "values differ" in result.message
    assert "average over the modality dimension" in result.hint


@pytest.mark.parametrize("check", [check_tensor_fusion, check_lmf_parameter_count, check_late_fusion])
def test_unfinished_answers_are_reported_and_autograders_get_an_exception(check):
    result = check(not_implemented)
    assert not result.passed and "not implemented yet" in result.message
    with pytest.raises(ExerciseFailed):
        check(not_implemented, raise_on_fail=True)
