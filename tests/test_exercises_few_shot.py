"""Notebook 05's exercise checks and the applied exam: the equations written out pass, each typical mistake
fails with its own sentence, an unwritten answer, a crash and a wrong shape each get one sentence, the
episode sampler is judged by its properties, and `mmcourse grade` knows every check."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmcourse import exercises
from mmcourse.exercises import few_shot as checks
from mmcourse.experiments.few_shot import sample_episode
from mmcourse.models.colearning import UNLABELLED, confident_labels
from mmcourse.models.protonet import class_prototypes


# -------------------------------------------------------------------------- the equations written out


def prototypes(support_embeddings, n_way, n_support):
    return support_embeddings.reshape(n_way, n_support, -1).mean(1)  # (n_way, D)


def squared_distances(queries, prototypes):
    return (queries.pow(2).sum(1, keepdim=True) - 2 * queries @ prototypes.T
            + prototypes.pow(2).sum(1)[None, :])  # (Q, N) |q|^2 - 2 q.p + |p|^2


def confident(probs, unlabelled, per_class):
    labels = torch.full((len(probs),), -1)
    predicted = probs.argmax(1)
    for c in range(probs.shape[1]):
        candidates = torch.nonzero(unlabelled & (predicted == c)).squeeze(1)
        labels[candidates[probs[candidates, c].argsort(descending=True)[:per_class]]] = c
    return labels


def clip_loss(similarity, temperature):
    logits, targets = similarity / temperature, torch.arange(len(similarity))
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def modality_gap(image_features, text_features):
    return float((F.normalize(image_features, dim=-1).mean(0) - F.normalize(text_features, dim=-1).mean(0)).norm())


def protonet_prediction(support, query, n_way, n_support):
    centres = support.reshape(n_way, n_support, -1).mean(1)  # (n_way, D)
    return ((query[:, None] - centres[None]) ** 2).sum(-1).argmin(1)


def zero_shot(image_features, class_text_features):
    return (F.normalize(image_features, dim=-1) @ F.normalize(class_text_features, dim=-1).T).argmax(1)


def cross_attention(queries, keys, values):
    return (queries @ keys.T / math.sqrt(queries.shape[-1])).softmax(-1) @ values


CASES = [  # check, the equation written out, its mistakes, a wrong-shaped (or wrong-typed) answer
    (exercises.check_prototypes, prototypes, checks.PROTOTYPES_MISTAKES, lambda s, n, k: prototypes(s, n, k).T),
    (exercises.check_squared_distances, squared_distances, checks.DISTANCES_MISTAKES,
     lambda q, p: squared_distances(q, p).T),
    (exercises.check_confident_labels, confident, checks.CONFIDENT_MISTAKES,
     lambda probs, unlabelled, k: confident(probs, unlabelled, k)[:-1]),
    (exercises.check_exam_clip_loss, clip_loss, checks.EXAM_CLIP_LOSS.mistakes,
     lambda s, t: clip_loss(s, t)[None]),
    (exercises.check_exam_modality_gap, modality_gap, checks.EXAM_MODALITY_GAP.mistakes,
     lambda i, t: F.normalize(i, dim=-1).mean(0) - F.normalize(t, dim=-1).mean(0)),
    (exercises.check_exam_protonet_prediction, protonet_prediction, checks.EXAM_PROTONET_PREDICTION.mistakes,
     lambda *args: protonet_prediction(*args)[:, None]),
    (exercises.check_exam_zero_shot, zero_shot, checks.EXAM_ZERO_SHOT.mistakes,
     lambda i, t: zero_shot(i, t)[:-1]),
    (exercises.check_exam_cross_attention, cross_attention, checks.EXAM_CROSS_ATTENTION.mistakes,
     lambda q, k, v: cross_attention(q, k, v)[None]),
]
IDS = [case[0].__name__ for case in CASES]
EXAM = [check for check in (case[0] for case in CASES) if check.__name__.startswith("check_exam_")]


def one_sentence(message: str) -> bool:
    return message.endswith(".") and "\n" not in message and message.count(". ") == 0


def test_the_package_references_pass():
    assert exercises.check_prototypes(class_prototypes).passed
    assert exercises.check_confident_labels(
        lambda probs, unlabelled, k: torch.as_tensor(confident_labels(probs, unlabelled, k))).passed


@pytest.mark.parametrize("check, solution, mistakes, wrong_shape", CASES, ids=IDS)
def test_the_equation_passes_and_each_mistake_is_named(check, solution, mistakes, wrong_shape):
    verdict = check(solution)
    assert verdict.passed, verdict.message
    assert mistakes
    for sentence, mistake in mistakes.items():
        verdict = check(mistake)
        assert not verdict.passed and sentence in verdict.message, (sentence, verdict.message)
        assert verdict.hint


@pytest.mark.parametrize("check, solution, mistakes, wrong_shape", CASES, ids=IDS)
def test_unwritten_answer_crash_and_wrong_shape_get_one_sentence(check, solution, mistakes, wrong_shape):
    def not_yet(*args):
        raise NotImplementedError

    def crashes(*args):
        raise ValueError("boom")

    verdict = check(not_yet)
    assert not verdict.passed and "is not implemented yet" in verdict.message and one_sentence(verdict.message)
    verdict = check(crashes)
    assert not verdict.passed and "raised ValueError: boom" in verdict.message and one_sentence(verdict.message)
    verdict = check(wrong_shape)
    assert not verdict.passed and ("shape" in verdict.message or "expected a float" in verdict.message)
    assert one_sentence(verdict.message.split(" Why: ")[0])
    with pytest.raises(exercises.ExerciseFailed):
        check(wrong_shape, raise_on_fail=True)


@pytest.mark.parametrize("check", EXAM, ids=lambda check: check.__name__)
def test_exam_verdicts_explain_the_idea(check):
    solution = next(case[1] for case in CASES if case[0] is check)
    verdict = check(solution)
    assert verdict.passed and " Why: " in verdict.message
    mistake = next(iter(next(case[2] for case in CASES if case[0] is check).values()))
    assert " Why: " in check(mistake).message


def test_gradients_are_checked():
    verdict = exercises.check_squared_distances(lambda q, p: squared_distances(q.detach(), p.detach()))
    assert not verdict.passed and "gradient" in verdict.message


def test_confident_labels_leaves_everything_else_unlabelled():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])  # (5, 2)
    unlabelled = np.array([True, True, False, True, True])
    assert confident_labels(probs, unlabelled, 1).tolist() == [0, UNLABELLED, UNLABELLED, 1, UNLABELLED]
    assert confident_labels(probs, unlabelled, 5).tolist() == [0, 0, UNLABELLED, 1, 1]


# ------------------------------------------------------------------------------------ the XOR question


def test_xor_weights_pass_and_the_feature_order_is_named():
    for answer in ([-2.0, 1.0, 1.0, 0.0], np.array([-2, 1, 1, 0]), torch.tensor([-2, 1, 1, 0])):
        verdict = exercises.check_exam_xor_fusion(lambda: answer)
        assert verdict.passed and " Why: " in verdict.message, verdict.message
    verdict = exercises.check_exam_xor_fusion(lambda: [0.0, 1.0, 1.0, -2.0])
    assert not verdict.passed and "[ab, a, b, 1]" in verdict.message and " Why: " in verdict.message
    verdict = exercises.check_exam_xor_fusion(lambda: [0.0, 1.0, 1.0, 0.0])  # a + b: additive
    assert not verdict.passed and "[0, 1, 1, 2]" in verdict.message
    verdict = exercises.check_exam_xor_fusion(lambda: [1.0, 1.0])
    assert not verdict.passed and "expected 4 weights" in verdict.message
    assert "expected 4 weights" in exercises.check_exam_xor_fusion(lambda: None).message


def test_xor_unwritten_and_crash():
    def not_yet():
        raise NotImplementedError

    assert "is not implemented yet" in exercises.check_exam_xor_fusion(not_yet).message
    verdict = exercises.check_exam_xor_fusion(lambda: 1 / 0)
    assert "raised ZeroDivisionError" in verdict.message and one_sentence(verdict.message)
    with pytest.raises(exercises.ExerciseFailed):
        exercises.check_exam_xor_fusion(not_yet, raise_on_fail=True)


# ---------------------------------------------------------------------------------- the episode sampler


def first_items(labels, classes, n_way, n_support, n_query, rng):
    """Draws the classes with rng but always takes each class's first items."""
    chosen = rng.choice(classes, size=n_way, replace=False)
    items = [np.flatnonzero(labels == c)[:n_support + n_query] for c in chosen]
    return chosen, np.concatenate([i[:n_support] for i in items]), np.concatenate([i[n_support:] for i in items])


def ignores_rng(labels, classes, n_way, n_support, n_query, rng):
    return first_items(labels, classes[:n_way], n_way, n_support, n_query, np.random.default_rng(0))


def shot_major(labels, classes, n_way, n_support, n_query, rng):
    chosen, support, query = sample_episode(labels, classes, n_way, n_support, n_query, rng)
    return chosen, support.reshape(n_way, n_support).T.flatten(), query


def repeats_an_image(labels, classes, n_way, n_support, n_query, rng):
    chosen, support, query = sample_episode(labels, classes, n_way, n_support, n_query, rng)
    query = query.copy()
    query[:n_query] = support[0]  # the first class's queries repeat its first support image
    return chosen, support, query


def outside_classes(labels, classes, n_way, n_support, n_query, rng):
    others = np.setdiff1d(np.unique(labels), classes)
    return sample_episode(labels, [*classes[:n_way - 1], int(others[0])], n_way, n_support, n_query, rng)


def unseeded(labels, classes, n_way, n_support, n_query, rng):
    return sample_episode(labels, classes, n_way, n_support, n_query, np.random.default_rng())


@pytest.mark.parametrize("sampler, named", [
    (first_items, "same images in every episode"),
    (ignores_rng, "was never chosen"),
    (shot_major, "shot-major"),
    (repeats_an_image, "appears twice"),
    (outside_classes, "not in `classes`"),
    (unseeded, "same seed gave two different episodes"),
    (lambda *args: sample_episode(*args)[:2], "expected a tuple (chosen, support, query)"),
    (lambda *args: tuple(part.astype(float) for part in sample_episode(*args)), "integer array"),
], ids=["first_items", "ignores_rng", "shot_major", "repeats", "outside", "unseeded", "two_arrays", "floats"])
def test_episode_sampler_names_each_mistake(sampler, named):
    verdict = exercises.check_episode_sampler(sampler)
    assert not verdict.passed and named in verdict.message, verdict.message
    assert one_sentence(verdict.message) and verdict.hint


def test_episode_sampler_passes_the_package_sampler():
    verdict = exercises.check_episode_sampler(sample_episode)
    assert verdict.passed, verdict.message
    as_tensors = exercises.check_episode_sampler(lambda *args: tuple(map(torch.as_tensor, sample_episode(*args))))
    assert as_tensors.passed, as_tensors.message


def test_episode_sampler_unwritten_and_crash():
    def not_yet(*args):
        raise NotImplementedError

    assert "is not implemented yet" in exercises.check_episode_sampler(not_yet).message
    verdict = exercises.check_episode_sampler(lambda *args: np.random.choice([], 1))
    assert not verdict.passed and "raised ValueError" in verdict.message and one_sentence(verdict.message)
    with pytest.raises(exercises.ExerciseFailed):
        exercises.check_episode_sampler(not_yet, raise_on_fail=True)
