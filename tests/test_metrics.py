"""Tests for mmcourse.metrics: hand-computed cases, independent implementations, bad inputs."""
import itertools
import math

import numpy as np
import pytest
import sklearn.metrics
import torch

from mmcourse.metrics import (
    accuracy,
    best_additive_accuracy,
    attention_grounding,
    confusion_matrix,
    iou_per_class,
    mask_coverage,
    mean_iou,
    recall_at_k,
    retrieval_recalls,
)

# ---------------------------------------------------------------------------------- accuracy


def test_accuracy_from_logits_and_from_predictions_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]])
    targets = torch.tensor([0, 1, 1, 2])
    assert accuracy(logits, targets) == 0.5
    assert accuracy(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])) == 0.75
    assert isinstance(accuracy(logits, targets), float)


def test_accuracy_argmax_ties_pick_the_first_class():
    assert accuracy(np.array([[1.0, 1.0]]), np.array([0])) == 1.0
    assert accuracy(np.array([[1.0, 1.0]]), np.array([1])) == 0.0


def test_accuracy_accepts_bfloat16_logits():
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.bfloat16)
    assert accuracy(logits, torch.tensor([1, 1])) == 0.5


@pytest.mark.parametrize(
    "scores, targets, error, words",
    [
        (np.zeros((3, 2)), np.array([0, 1]), ValueError, "N=3"),
        (np.zeros((2, 2, 2)), np.array([0, 1]), ValueError, "(2, 2, 2)"),
        (np.array([0.0, 1.0]), np.array([0, 1]), TypeError, "integer class predictions"),
        (np.zeros((2, 2)), np.array([0.0, 1.0]), TypeError, "targets"),
        (np.zeros((2, 2)), np.array([0, 2]), ValueError, "C=2"),
        (np.zeros((2, 2)), np.array([[0, 1]]), ValueError, "targets"),
        (np.zeros((0, 2)), np.zeros(0, dtype=int), ValueError, "empty"),
        (np.zeros((2, 2)), np.array([-1, 0]), ValueError, "non-negative"),
    ],
)
def test_accuracy_rejects_bad_inputs(scores, targets, error, words):
    with pytest.raises(error) as info:
        accuracy(scores, targets)
    assert words in str(info.value)


# ---------------------------------------------------------------------------------- confusion matrix


def test_confusion_matrix_by_hand_rows_are_true_classes():
    counts = confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 0, 1, 2]), num_classes=3)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_confusion_matrix_matches_sklearn_on_random_labels():
    rng = np.random.default_rng(0)
    predictions, targets = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    expected = sklearn.metrics.confusion_matrix(targets, predictions, labels=range(5))
    np.testing.assert_array_equal(confusion_matrix(torch.from_numpy(predictions), targets, 5), expected)


@pytest.mark.parametrize(
    "predictions, targets, num_classes, words",
    [
        (np.array([0, 1]), np.array([0, 1, 1]), 2, "shape (2,)"),
        (np.array([0, 3]), np.array([0, 1]), 3, "predictions holds label 3"),
        (np.array([0, 1]), np.array([0, 4]), 3, "targets holds label 4"),
        (np.array([0, 1]), np.array([0, 1]), 0, "num_classes"),
        (np.array([0, 1]), np.array([0, 1]), 2.0, "num_classes"),
    ],
)
def test_confusion_matrix_rejects_bad_inputs(predictions, targets, num_classes, words):
    with pytest.raises(ValueError) as info:
        confusion_matrix(predictions, targets, num_classes)
    assert words in str(info.value)


# ---------------------------------------------------------------------------------- recall@k


def brute_force_recall(similarity, k, true_index):
    """Loop over queries; rank = number of other candidates scoring at least as high."""
    hits = 0
    for query, true in enumerate(true_index):
        true_score = similarity[query, true]
        rank = sum(1 for c in range(similarity.shape[1]) if c != true and similarity[query, c] >= true_score)
        hits += rank < k
    return hits / len(true_index)


def test_recall_at_k_by_hand_with_pessimistic_ties():
    similarity = np.array([[3.0, 1.0, 2.0], [1.0, 1.0, 0.0], [0.0, 5.0, 5.0]])
    # query 0 ranks its match first; queries 1 and 2 tie their match with a wrong candidate.
    assert recall_at_k(similarity, 1) == pytest.approx(1 / 3)
    assert recall_at_k(similarity, 2) == 1.0


def test_recall_at_k_constant_similarity_scores_nothing_below_full_k():
    assert recall_at_k(np.ones((4, 4)), 3) == 0.0
    assert recall_at_k(np.ones((4, 4)), 4) == 1.0


@pytest.mark.parametrize("k", [1, 3, 7])
def test_recall_at_k_matches_brute_force(k):
    rng = np.random.default_rng(k)
    similarity = rng.integers(0, 4, size=(25, 9)).astype(float)  # many ties on purpose
    true_index = rng.integers(0, 9, size=25)
    expected = brute_force_recall(similarity, k, true_index)
    assert recall_at_k(similarity, k, targets=true_index) == pytest.approx(expected)
    square = rng.normal(size=(12, 12))
    assert recall_at_k(torch.from_numpy(square), k) == pytest.approx(brute_force_recall(square, k, range(12)))


def test_recall_at_k_with_several_true_candidates_uses_the_best_one():
    similarity = np.array([[0.9, 0.1, 0.5, 0.8], [0.1, 0.2, 0.3, 0.4]])
    positives = np.array([[False, False, True, True], [True, True, False, False]])
    # query 0: best positive 0.8 is beaten by one negative -> rank 1; query 1: 0.2 beaten by two -> rank 2.
    assert recall_at_k(similarity, 1, targets=positives) == 0.0
    assert recall_at_k(similarity, 2, targets=positives) == 0.5
    assert recall_at_k(similarity, 3, targets=positives) == 1.0


@pytest.mark.parametrize(
    "similarity, k, targets, error, words",
    [
        (np.zeros((2, 3)), 1, None, ValueError, "square"),
        (np.zeros(3), 1, None, ValueError, "(Nq, Nc)"),
        (np.zeros((3, 3)), 0, None, ValueError, "1..3"),
        (np.zeros((3, 3)), 4, None, ValueError, "1..3"),
        (np.zeros((3, 3)), 1.5, None, ValueError, "k must"),
        (np.zeros((2, 3)), 1, np.array([0, 1, 2]), ValueError, "(2,)"),
        (np.zeros((2, 3)), 1, np.array([0, 3]), ValueError, "holds label 3"),
        (np.zeros((2, 3)), 1, np.zeros((2, 2), bool), ValueError, "(2, 3)"),
        (np.zeros((2, 3)), 1, np.array([[True, False, False], [False] * 3]), ValueError, "row 1"),
        (np.array([[0.0, np.nan], [0.0, 1.0]]), 1, None, ValueError, "finite"),
        (np.zeros((0, 0)), 1, None, ValueError, "empty"),
    ],
)
def test_recall_at_k_rejects_bad_inputs(similarity, k, targets, error, words):
    with pytest.raises(error) as info:
        recall_at_k(similarity, k, targets)
    assert words in str(info.value)


def test_retrieval_recalls_both_directions_by_hand():
    similarity = np.array([[3.0, 1.0, 2.0], [1.0, 1.0, 0.0], [0.0, 5.0, 5.0]])
    recalls = retrieval_recalls(similarity, ks=(1, 2))
    assert set(recalls) == {"i2t_R@1", "i2t_R@2", "t2i_R@1", "t2i_R@2"}
    assert recalls["i2t_R@1"] == pytest.approx(1 / 3) and recalls["i2t_R@2"] == 1.0
    # text 1 (column 1) ties image 0 and is beaten by image 2 -> rank 2; the others rank first.
    assert recalls["t2i_R@1"] == pytest.approx(2 / 3) and recalls["t2i_R@2"] == pytest.approx(2 / 3)


def test_retrieval_recalls_agree_with_recall_at_k_on_random_scores():
    similarity = np.random.default_rng(3).normal(size=(20, 20))
    recalls = retrieval_recalls(torch.from_numpy(similarity))
    for k in (1, 5, 10):
        assert recalls[f"i2t_R@{k}"] == recall_at_k(similarity, k)
        assert recalls[f"t2i_R@{k}"] == recall_at_k(similarity.T, k)
        assert recalls[f"t2i_R@{k}"] == pytest.approx(brute_force_recall(similarity.T, k, range(20)))


@pytest.mark.parametrize(
    "similarity, ks, words",
    [(np.zeros((3, 4)), (1,), "square"), (np.zeros((3, 3)), (1, 5), "every k in ks"), (np.zeros((3, 3)), (), "ks"),
     (np.zeros((3, 3)), 1, "ks")],
)
def test_retrieval_recalls_rejects_bad_inputs(similarity, ks, words):
    with pytest.raises(ValueError) as info:
        retrieval_recalls(similarity, ks)
    assert words in str(info.value)


# ---------------------------------------------------------------------------------- IoU


def test_iou_by_hand_with_absent_class_nan():
    target = np.array([[0, 0, 1], [1, 1, 1]])
    predicted = np.array([[0, 1, 1], [1, 1, 0]])
    # class 0: inter 1, union 3; class 1: inter 3, union 5; class 2 absent from both.
    iou = iou_per_class(predicted, target, num_classes=3)
    np.testing.assert_allclose(iou[:2], [1 / 3, 3 / 5])
    assert math.isnan(iou[2])
    assert mean_iou(predicted, target, 3) == pytest.approx((1 / 3 + 3 / 5) / 2)


def test_mean_iou_matches_sklearn_jaccard_with_batch_dims():
    rng = np.random.default_rng(1)
    target = rng.integers(0, 4, size=(3, 2, 8, 8))
    predicted = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, 4, size=target.shape))
    expected = sklearn.metrics.jaccard_score(target.ravel(), predicted.ravel(), labels=range(4), average=None)
    np.testing.assert_allclose(iou_per_class(torch.from_numpy(predicted), torch.from_numpy(target), 4), expected)
    assert mean_iou(predicted, target, 4) == pytest.approx(expected.mean())


def test_mean_iou_ignores_pixels_and_an_ignored_class():
    target = np.array([0, 0, 1, 255, 255])
    predicted = np.array([0, 1, 1, 0, 7])  # the 7 sits on an ignored pixel: never looked at
    np.testing.assert_allclose(iou_per_class(predicted, target, 2, ignore_index=255), [1 / 2, 1 / 2])
    iou = iou_per_class(np.array([0, 1, 1, 2, 1]), np.array([0, 0, 1, 2, 2]), 3, ignore_index=0)
    assert math.isnan(iou[0]) and iou[1] == 0.5 and iou[2] == 0.5


@pytest.mark.parametrize(
    "predicted, target, num_classes, ignore_index, error, words",
    [
        (np.zeros((2, 2), int), np.zeros((2, 3), int), 2, None, ValueError, "(2, 3)"),
        (np.zeros((2, 2)), np.zeros((2, 2), int), 2, None, TypeError, "predicted"),
        (np.full((2, 2), 2), np.zeros((2, 2), int), 2, None, ValueError, "predicted holds label 2"),
        (np.zeros((2, 2), int), np.full((2, 2), 255), 2, None, ValueError, "target holds label 255"),
        (np.zeros((2, 2), int), np.full((2, 2), 255), 2, 255, ValueError, "no class"),
        (np.zeros(0, int), np.zeros(0, int), 2, None, ValueError, "empty"),
    ],
)
def test_mean_iou_rejects_bad_inputs(predicted, target, num_classes, ignore_index, error, words):
    with pytest.raises(error) as info:
        mean_iou(predicted, target, num_classes, ignore_index)
    assert words in str(info.value)


# ---------------------------------------------------------------------------------- attention grounding


def test_attention_grounding_same_grid_by_hand():
    attention = np.zeros((2, 2, 2))
    attention[0] = [[0.6, 0.2], [0.2, 0.0]]  # peak at (0, 0), inside
    attention[1] = [[0.1, 0.7], [0.2, 0.0]]  # peak at (0, 1), outside
    region = np.zeros((2, 2, 2), bool)
    region[:, 0, 0] = True
    scores = attention_grounding(attention, region)
    assert scores["mass_inside"] == pytest.approx((0.6 + 0.1 / 1.0) / 2)
    assert scores["pointing_game"] == 0.5


def test_attention_grounding_area_averages_a_finer_region():
    attention = np.zeros((1, 2, 2))
    attention[0] = [[1.0, 0.0], [0.0, 3.0]]
    region = np.zeros((1, 4, 4), bool)
    region[0, :2, :1] = True  # half of cell (0, 0)
    region[0, 2:, 2:] = True
    region[0, 3, 3] = False  # three quarters of cell (1, 1)
    scores = attention_grounding(torch.from_numpy(attention), torch.from_numpy(region))
    assert scores["mass_inside"] == pytest.approx((1.0 * 0.5 + 3.0 * 0.75) / 4.0)
    assert scores["pointing_game"] == 1.0  # the peak (1, 1) is 75% covered


def test_pointing_game_needs_half_a_cell_and_counts_ties_pessimistically():
    region = np.zeros((1, 4, 4), bool)
    region[0, :1, :1] = True  # a quarter of cell (0, 0)
    peak_there = np.array([[[1.0, 0.0], [0.0, 0.0]]])
    assert attention_grounding(peak_there, region)["pointing_game"] == 0.0
    inside = np.zeros((1, 2, 2), bool)
    inside[0, 0, 0] = True
    assert attention_grounding(np.ones((1, 2, 2)), inside) == {"mass_inside": 0.25, "pointing_game": 0.0}


def test_mask_coverage_matches_supersampling_for_uneven_ratios():
    rng = np.random.default_rng(2)
    region = rng.random((3, 7, 5)) < 0.4
    for h, w in [(3, 2), (7, 5), (14, 10), (4, 4)]:
        fine = np.repeat(np.repeat(region, h, axis=1), w, axis=2)  # (3, 7h, 5w): cells now span whole pixels
        expected = fine.reshape(3, h, 7, w, 5).mean(axis=(2, 4))
        np.testing.assert_allclose(mask_coverage(region, (h, w)), expected, atol=1e-12)


@pytest.mark.parametrize(
    "attention, region, error, words",
    [
        (-np.ones((1, 2, 2)), np.ones((1, 2, 2), bool), ValueError, "non-negative"),
        (np.zeros((2, 2, 2)), np.ones((2, 2, 2), bool), ValueError, "map 0 is all zero"),
        (np.ones((2, 2, 2)), np.array([[[True, False], [False, False]], [[False] * 2] * 2]), ValueError,
         "region mask 1 is empty"),
        (np.ones((2, 2)), np.ones((2, 2, 2), bool), ValueError, "(N, h, w)"),
        (np.ones((1, 2, 2)), np.ones((2, 2), bool), ValueError, "(N, H, W)"),
        (np.ones((1, 2, 2)), np.ones((2, 2, 2), bool), ValueError, "N=1"),
        (np.ones((1, 2, 2)), np.ones((1, 2, 2), int), TypeError, "bool"),
        (np.full((1, 2, 2), np.inf), np.ones((1, 2, 2), bool), ValueError, "finite"),
    ],
)
def test_attention_grounding_rejects_bad_inputs(attention, region, error, words):
    with pytest.raises(error) as info:
        attention_grounding(attention, region)
    assert words in str(info.value)


def test_mask_coverage_rejects_a_bad_grid():
    with pytest.raises(ValueError, match="grid"):
        mask_coverage(np.ones((1, 2, 2), bool), (0, 2))


# --- the best an additive model can do ------------------------------------------------------------

EVEN = np.full((2, 2), 0.25)


@pytest.mark.parametrize("labels, expected", [
    ([[0, 1], [1, 0]], 0.75),  # XOR: three of four corners at best
    ([[1, 0], [0, 1]], 0.75),  # XNOR
    ([[0, 1], [1, 1]], 1.0),   # OR: a sum represents it
    ([[0, 0], [1, 1]], 1.0),   # the first factor alone
    ([[1, 1], [1, 1]], 1.0),
])
def test_best_additive_accuracy_on_equally_likely_cells(labels, expected):
    assert best_additive_accuracy(EVEN, np.array(labels)) == pytest.approx(expected)


def test_best_additive_accuracy_gives_up_the_least_likely_cell_of_an_xor():
    probabilities = torch.tensor([[0.4, 0.1], [0.2, 0.3]], dtype=torch.float64)
    assert best_additive_accuracy(probabilities, torch.tensor([[0, 1], [1, 0]])) == pytest.approx(0.9)


def test_best_additive_accuracy_matches_a_search_over_every_threshold_rule():
    rng = np.random.default_rng(0)
    grid = np.linspace(-3, 3, 13)
    for _ in range(20):
        probabilities = rng.dirichlet(np.ones(4)).reshape(2, 2)
        labels = rng.integers(0, 2, size=(2, 2))
        best = 0.0
        for a0, a1, b0, b1 in itertools.product(grid, repeat=4):
            predictions = (np.array([[a0], [a1]]) + np.array([[b0, b1]]) > 0).astype(int)
            best = max(best, probabilities[predictions == labels].sum())
        assert best_additive_accuracy(probabilities, labels) == pytest.approx(best)


@pytest.mark.parametrize("probabilities, labels, error, words", [
    (np.full((2, 3), 1 / 6), np.zeros((2, 3), dtype=int), ValueError, "probabilities must have shape"),
    (EVEN, np.zeros(4, dtype=int), ValueError, "labels must have shape"),
    (np.full((2, 2), 0.3), np.zeros((2, 2), dtype=int), ValueError, "sum to 1"),
    (EVEN, np.full((2, 2), 2), ValueError, "labels must be 0 or 1"),
    (EVEN, np.full((2, 2), 0.5), TypeError, "labels"),
    (np.array([[0.5, 0.5], [np.nan, 0.0]]), np.zeros((2, 2), dtype=int), ValueError, "probabilities"),
])
def test_best_additive_accuracy_refuses_bad_tables(probabilities, labels, error, words):
    with pytest.raises(error, match=words):
        best_additive_accuracy(probabilities, labels)
