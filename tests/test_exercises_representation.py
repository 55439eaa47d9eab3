"""Tests of the notebook-02 exercise checks: answers written independently of the references pass,
typical mistakes fail with a sentence that says what differs, unfinished answers say so, and
autograders get an exception."""
import pytest
import torch
import torch.nn.functional as F

import mmcourse.exercises as exercises
from mmcourse.exercises import (ExerciseFailed, check_clip_loss, check_hinge_rank_loss, check_recall_at_k,
                                check_zero_shot_classifier)


# --------------------------------------------------------------- learner answers, right and wrong


def clip_loss(image_features, text_features, logit_scale):
    logits = logit_scale * image_features @ text_features.T  # (B, B)
    targets = torch.arange(len(logits))
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def clip_loss_one_direction(image_features, text_features, logit_scale):
    logits = logit_scale * image_features @ text_features.T
    return F.cross_entropy(logits, torch.arange(len(logits)))


def clip_loss_without_scale(image_features, text_features, logit_scale):
    return clip_loss(image_features, text_features, 1.0)


def clip_loss_detached(image_features, text_features, logit_scale):
    return clip_loss(image_features, text_features.detach(), logit_scale)


def zero_shot_classifier(model, classnames, templates):
    columns = []
    with torch.no_grad():
        for name in classnames:
            prompts = model.encode_text(model.tokenize([t.format(name) for t in templates]), normalize=True)
            columns.append(F.normalize(prompts.mean(0), dim=0))
    return torch.stack(columns, dim=1)  # (D, C)


def zero_shot_classifier_without_renormalising(model, classnames, templates):
    columns = []
    with torch.no_grad():
        for name in classnames:
            prompts = model.encode_text(model.tokenize([t.format(name) for t in templates]), normalize=True)
            columns.append(prompts.mean(0))
    return torch.stack(columns, dim=1)


def zero_shot_classifier_transposed(model, classnames, templates):
    return zero_shot_classifier(model, classnames, templates).T


def hinge_rank_loss(image_embeddings, label_vectors, targets, margin=0.1):
    total = 0.0
    for v, y in zip(image_embeddings, targets):
        scores = label_vectors @ v  # (C,)
        for j in range(len(label_vectors)):
            if j != y:
                total = total + torch.clamp(margin - scores[y] + scores[j], min=0)
    return total / len(image_embeddings)


def hinge_rank_loss_including_the_true_label(image_embeddings, label_vectors, targets, margin=0.1):
    scores = image_embeddings @ label_vectors.T
    true = scores.gather(1, targets[:, None])
    return (margin - true + scores).clamp(min=0).sum(1).mean()


def recall_at_k(similarity, k):
    true_scores = similarity.diagonal()
    beaten_by = (similarity >= true_scores[:, None]).sum(1) - 1  # wrong candidates at least as high
    return float((beaten_by < k).float().mean())


def recall_at_k_off_by_one(similarity, k):
    return recall_at_k(similarity, k - 1) if k > 1 else 0.0


def recall_at_k_optimistic_about_ties(similarity, k):
    true_scores = similarity.diagonal()
    beaten_by = (similarity > true_scores[:, None]).sum(1)  # ties counted for the true candidate
    return float((beaten_by < k).float().mean())


def recall_at_k_as_tensor(similarity, k):
    return torch.tensor(recall_at_k(similarity, k))


def not_implemented(*args):
    raise NotImplementedError


CHECKS = {check_clip_loss: clip_loss, check_zero_shot_classifier: zero_shot_classifier,
          check_hinge_rank_loss: hinge_rank_loss, check_recall_at_k: recall_at_k}


# ------------------------------------------------------------------------------------------- tests


def test_the_checks_are_reachable_from_the_exercises_package():
    for name in ("check_clip_loss", "check_zero_shot_classifier", "check_hinge_rank_loss", "check_recall_at_k"):
        assert callable(getattr(exercises, name))


@pytest.mark.parametrize("check", list(CHECKS), ids=lambda check: check.__name__)
def test_right_answers_pass(check):
    result = check(CHECKS[check])
    assert result.passed, result.message
    assert "matches the reference" in result.message


@pytest.mark.parametrize("check, wrong, kind", [
    (check_clip_loss, clip_loss_one_direction, "value"),
    (check_clip_loss, clip_loss_without_scale, "value"),
    (check_clip_loss, clip_loss_detached, "gradient w.r.t. argument 'text_features' is missing"),
    (check_zero_shot_classifier, zero_shot_classifier_without_renormalising, "values differ"),
    (check_zero_shot_classifier, zero_shot_classifier_transposed, "shape"),
    (check_hinge_rank_loss, hinge_rank_loss_including_the_true_label, "value"),
    (check_recall_at_k, recall_at_k_off_by_one, "value"),
    (check_recall_at_k, recall_at_k_optimistic_about_ties, "value"),
    (check_recall_at_k, recall_at_k_as_tensor, "expected a float"),
], ids=lambda item: getattr(item, "__name__", ""))
def test_typical_mistakes_fail_with_a_reason_and_a_hint(check, wrong, kind):
    result = check(wrong)
    assert not result.passed
    assert kind in result.message
    assert result.hint


@pytest.mark.parametrize("check, wrong, sentence", [
    (check_clip_loss, clip_loss_one_direction, "runs over the rows only"),
    (check_clip_loss, clip_loss_without_scale, "ignores logit_scale"),
    (check_zero_shot_classifier, zero_shot_classifier_without_renormalising, "renormalise each class's mean"),
    (check_hinge_rank_loss, hinge_rank_loss_including_the_true_label, "includes the true label"),
    (check_recall_at_k, recall_at_k_optimistic_about_ties, "ties in the true candidate's favour"),
], ids=lambda item: getattr(item, "__name__", ""))
def test_the_typical_mistake_is_named(check, wrong, sentence):
    assert sentence in check(wrong).message


def test_the_hints_explain_the_exercise():
    assert "arange" in check_clip_loss(clip_loss_one_direction).hint
    assert "renormalise" in check_zero_shot_classifier(zero_shot_classifier_without_renormalising).hint
    assert "leave the true label out" in check_hinge_rank_loss(hinge_rank_loss_including_the_true_label).hint
    assert "ties" in check_recall_at_k(recall_at_k_off_by_one).hint


@pytest.mark.parametrize("check", list(CHECKS), ids=lambda check: check.__name__)
def test_unfinished_answers_say_so(check):
    result = check(not_implemented)
    assert not result.passed and "not implemented yet" in result.message


def test_autograders_get_an_exception():
    with pytest.raises(ExerciseFailed, match="clip_loss"):
        check_clip_loss(clip_loss_one_direction, raise_on_fail=True)
    assert check_recall_at_k(recall_at_k, raise_on_fail=True).passed


def test_checks_leave_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_zero_shot_classifier(zero_shot_classifier)
    torch.testing.assert_close(torch.rand(3), expected)

