"""Tests of mmcourse.experiments.few_shot: episodes on real digits, baselines, the zero-/few-shot
crossover and the co-learning measurements of notebook 05."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from bench_helpers import load_bench

from mmcourse.experiments import few_shot as fs
from mmcourse.models.protonet import ProtoNet


@pytest.fixture(scope="module")
def digits():
    return fs.digit_scans()


def test_digit_scans_hold_four_turns_of_every_scan_as_it_is_and_mirrored(digits):
    images, labels = digits
    n = 1797
    assert images.shape == (8 * n, 1, 8, 8) and labels.shape == (8 * n,)
    assert 0.0 <= float(images.min()) and float(images.max()) == 1.0
    torch.testing.assert_close(images[n + 5], torch.rot90(images[5], 1, dims=(1, 2)))
    torch.testing.assert_close(images[4 * n + 5], torch.flip(images[5], dims=(2,)))  # mirrored, not turned
    torch.testing.assert_close(images[6 * n + 5], torch.rot90(torch.flip(images[5], dims=(2,)), 2, dims=(1, 2)))
    assert int(labels[2 * n + 5]) == int(labels[5]) + 2 and int(labels[6 * n + 5]) == int(labels[5]) + 42
    assert len(torch.unique(labels)) == 80
    assert fs.class_id(6, 2) == 26 and fs.class_name(26) == "6 @ 180°"
    assert fs.class_id(2, 1, mirrored=True) == 49 and fs.class_name(49) == "2 @ 90° mirrored"
    with pytest.raises(ValueError, match="expected a digit 0-9"):
        fs.class_id(6, 4)


def test_split_keeps_test_digits_out_of_training():
    recipe = fs.PROTO_RECIPES["ci"]
    train = fs.train_classes(recipe)
    assert len(train) == 20 + 4 * len(fs.MIRROR_DIGITS) == 28
    assert len(fs.train_classes(replace(recipe, rotate=False, mirror=()))) == 5
    digit_of = lambda c: (c % fs.MIRRORED) // fs.TURNS  # noqa: E731
    for n_way in (5, 10):
        test = fs.test_classes(n_way)
        assert len(test) == n_way
        assert not {digit_of(c) for c in test} & {digit_of(c) for c in train}  # no digit on both sides
    with pytest.raises(ValueError, match="n_way=3"):
        fs.test_classes(3)
    with pytest.raises(ValueError, match="only training digits"):
        fs.train_classes(replace(recipe, mirror=(5,)))


def test_training_episodes_never_show_a_test_class_nor_repeat_an_image(digits):
    images, labels = digits
    episodes = fs.Episodes(images, labels, fs.train_classes(fs.PROTO_RECIPES["ci"]), 10, 3, 4, 200, seed=3)
    test_digits = set(fs.TEST_DIGITS)
    for episode in episodes:
        rows = torch.cat([episode["support_index"], episode["query_index"]])
        assert len(set(rows.tolist())) == len(rows) == 10 * 7  # no image twice
        assert not {int(label) % fs.MIRRORED // fs.TURNS for label in labels[rows]} & test_digits
        assert len(set(episode["classes"].tolist())) == 10
        # class-major: support and queries of position c are of class classes[c]
        support_classes = labels[episode["support_index"]].reshape(10, 3)
        assert (support_classes == episode["classes"][:, None]).all()
        assert (labels[episode["query_index"]] == episode["classes"][episode["query_labels"]]).all()
        assert torch.equal(episode["support"], images[episode["support_index"]])
    assert episode["n_way"] == 10 and episode["n_support"] == 3 and episode["query"].shape == (40, 1, 8, 8)


def test_episodes_are_reproducible_with_a_seed(digits):
    images, labels = digits
    make = lambda seed: fs.Episodes(images, labels, fs.test_classes(5), 5, 2, 3, 5, seed)  # noqa: E731
    first, again, other = make(7), make(7), make(8)
    for i in range(5):
        assert torch.equal(first[i]["support_index"], again[i]["support_index"])
        assert torch.equal(first[i]["query_index"], again[i]["query_index"])
    assert any(not torch.equal(first[i]["support_index"], other[i]["support_index"]) for i in range(5))
    assert not torch.equal(first[0]["support_index"], first[1]["support_index"])
    with pytest.raises(IndexError):
        first[5]


def test_episodes_refuse_what_cannot_be_drawn(digits):
    images, labels = digits
    with pytest.raises(ValueError, match="an n_way=6 episode needs at least 6"):
        fs.Episodes(images, labels, fs.test_classes(5), 6, 1, 1, 1, 0)
    with pytest.raises(ValueError, match="n_support \\+ n_query = 500"):
        fs.Episodes(images, labels, fs.test_classes(5), 5, 250, 250, 1, 0)
    with pytest.raises(ValueError, match="one row per label"):
        fs.Episodes(images[:10], labels, fs.test_classes(5), 5, 1, 1, 1, 0)
    with pytest.raises(ValueError, match="1-d array of integer class labels"):
        fs.Episodes(images, labels.float(), fs.test_classes(5), 5, 1, 1, 1, 0)
    with pytest.raises(TypeError, match="n_way must be an int"):
        fs.Episodes(images, labels, fs.test_classes(5), 5.0, 1, 1, 1, 0)


def test_evaluate_reports_a_confidence_interval(digits):
    images, labels = digits
    episodes = fs.Episodes(images, labels, fs.test_classes(5), 5, 1, 2, 8, 0)
    perfect = fs.evaluate(lambda episode: episode["query_labels"], episodes)
    assert perfect == {"accuracy": 1.0, "ci95": 0.0, "episodes": 8}
    assert fs.ci95([0.0, 1.0]) == pytest.approx(1.96 * math.sqrt(0.5) / math.sqrt(2))
    with pytest.raises(ValueError, match="at least two"):
        fs.ci95([1.0])


def test_baselines_classify_by_their_rule():
    support = torch.tensor([[0.0], [0.2], [5.0], [5.4]]).reshape(4, 1, 1, 1)
    episode = {"support": support, "query": torch.tensor([0.1, 4.0, 5.3]).reshape(3, 1, 1, 1), "n_way": 2,
               "n_support": 2, "query_labels": torch.tensor([0, 1, 1])}
    assert fs.pixel_nearest_neighbour(episode).tolist() == [0, 1, 1]
    assert fs.linear_probe(torch.nn.Flatten())(episode).tolist() == [0, 1, 1]
    assert fs.protonet_predictor(ProtoNet(torch.nn.Flatten()))(episode).tolist() == [0, 1, 1]


def test_protonet_learns_unseen_digits_at_ci_scale(digits, one_torch_thread):
    images, labels = digits
    recipe = replace(fs.PROTO_RECIPES["ci"], train_episodes=60)
    model = fs.train_protonet(images, labels, recipe, seed=0)
    episodes = fs.Episodes(images, labels, fs.test_classes(5), 5, 5, 5, 30, seed=1)
    result = fs.evaluate(fs.protonet_predictor(model), episodes)
    assert result["accuracy"] > 0.6  # chance: 0.2
    view = fs.embedding_view(model, episodes[0])
    assert view["support"].shape == (25, 2) and view["query"].shape == (25, 2) and view["prototypes"].shape == (5, 2)
    assert view["wrong"].dtype == torch.bool and view["predictions"].shape == (25,)


# ------------------------------------------------------------------------- zero-shot vs few-shot


def test_crossover_reads_between_the_measured_shots():
    assert fs.crossover([1, 2, 4, 8], [0.3, 0.4, 0.6, 0.8], 0.5) == pytest.approx(2 ** 1.5)
    assert fs.crossover([1, 2, 4], [0.6, 0.7, 0.8], 0.5) == 1.0
    assert fs.crossover([1, 2, 4], [0.1, 0.2, 0.3], 0.5) is None
    assert fs.crossover([1, 2], [0.1, 0.5], [0.5, 0.5]) == 2.0
    with pytest.raises(ValueError, match="one accuracy per k"):
        fs.crossover([1, 2], [0.1], 0.5)


def toy_features(per_class=30, n_way=3, dim=8, noise=0.3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(n_way, dim, generator=generator), dim=1)
    labels = torch.arange(n_way * per_class) % n_way
    features = F.normalize(centres[labels] + noise * torch.randn(len(labels), dim, generator=generator), dim=1)
    return features, labels, centres


def test_few_shot_scores_follow_their_definitions():
    features, labels, centres = toy_features()
    support = torch.cat([features[labels == c][:2] for c in range(3)])  # class-major, 2 shots
    query = features[labels == 0][2:5]
    recipe = replace(fs.CROSSOVER_RECIPES["ci"], text_weight=1.0)
    scores = fs.few_shot_scores(support, query, centres, 2, recipe, logit_scale=10.0)
    assert set(scores) == set(fs.METHODS) and all(s.shape == (3, 3) for s in scores.values())
    torch.testing.assert_close(scores["zero-shot"], query @ centres.T)
    combined = F.normalize(centres + support.reshape(3, 2, -1).sum(1), dim=1)
    torch.testing.assert_close(scores["text + shots"], query @ combined.T)
    pure_text = fs.few_shot_scores(support, query, centres, 2, replace(recipe, text_weight=1e6), 10.0)["text + shots"]
    assert torch.equal(pure_text.argmax(1), scores["zero-shot"].argmax(1))


def test_text_prior_probe_moves_from_the_prompts_to_the_shots():
    """A stiff prior keeps the zero-shot classifier, a loose one fits the shots, and the solution is
    the optimum of the MAP objective (its gradient vanishes)."""
    features, labels, centres = toy_features(noise=0.5)
    support = torch.cat([features[labels == c][:4] for c in range(3)])
    support_labels = torch.arange(3).repeat_interleave(4)
    stiff = fs.text_prior_probe(support, support_labels, centres, 10.0, prior_weight=1e6)
    torch.testing.assert_close(stiff, centres, atol=1e-4, rtol=1e-4)
    wrong_text = centres.roll(1, dims=0)  # every class named as its neighbour: zero-shot is always wrong
    loose = fs.text_prior_probe(support, support_labels, wrong_text, 10.0, prior_weight=1e-3)
    assert ((support @ loose.T).argmax(1) == support_labels).all()  # the shots win over a wrong prior
    weights = fs.text_prior_probe(support, support_labels, centres, 10.0, prior_weight=1.0).requires_grad_()
    objective = (F.cross_entropy(10.0 * support @ weights.T, support_labels, reduction="sum")
                 + 0.5 * (weights - centres).pow(2).sum())
    objective.backward()
    assert weights.grad.abs().max() < 1e-3


def test_shot_curves_with_a_perfect_and_a_blind_text():
    features, labels, centres = toy_features(noise=0.8)
    recipe = replace(fs.CROSSOVER_RECIPES["ci"], shots=(1, 4, 16), queries=10, draws=5, text_weight=2.0)
    held = {"features": features, "labels": labels, "text": centres, "logit_scale": torch.tensor(10.0)}
    curves = fs.shot_curves(held, recipe)
    assert set(curves) == set(fs.METHODS) and all(len(v) == 3 for v in curves.values())
    assert len(set(curves["zero-shot"])) == 1  # the shots do not change it
    assert curves["prototypes"][-1] > curves["prototypes"][0]  # more shots help
    blind = fs.shot_curves(dict(held, text=torch.zeros(3, 8) + F.normalize(torch.ones(1, 8))), recipe)
    assert blind["zero-shot"][0] == pytest.approx(1 / 3)  # every class text the same: the first class wins ties
    assert fs.crossover((1, 4, 16), blind["prototypes"], blind["zero-shot"]) == 1.0
    with pytest.raises(ValueError, match="need 36 images of each class"):
        fs.shot_curves(held, replace(recipe, shots=(16,), queries=20, draws=1))


@pytest.mark.parametrize("scale", ["ci", "cpu", "gpu"])
def test_recipes_fit_their_episodes(scale):
    recipe = fs.CROSSOVER_RECIPES[scale]
    assert max(recipe.shots) + recipe.queries <= recipe.per_class
    assert fs.PROTO_RECIPES[scale].train_way <= len(fs.train_classes(fs.PROTO_RECIPES[scale]))
    assert all(budget >= 1 for budget in fs.COLEARNING_RECIPES[scale].budgets)


# ------------------------------------------------------------------------- co-learning


def test_colearning_data_pairs_images_with_captions():
    data = fs.colearning_data(12, 32, seed=0)
    assert data["images"].shape == (12, 3, 32, 32) and len(data["captions"]) == 12
    assert data["words"].shape[0] == 12 and set(data["labels"].tolist()) <= {0, 1, 2}
    shapes = ("circle", "square", "triangle")
    for caption, label, words in zip(data["captions"], data["labels"], data["words"]):
        named = [shape for shape in shapes if shape in caption]
        assert named in ([], [shapes[label]])  # a caption names the true shape or none
        assert words.sum() >= len(caption.split())


def test_labelled_subset_takes_per_class_labels():
    labels = torch.tensor([0, 1, 2] * 10)
    chosen = fs.labelled_subset(labels, 3, seed=0)
    assert sorted(labels[chosen].tolist()) == [0] * 3 + [1] * 3 + [2] * 3
    assert np.array_equal(chosen, fs.labelled_subset(labels, 3, seed=0))


def test_caption_classifier_reads_the_shape_words():
    data = fs.colearning_data(300, 32, seed=1)
    known = fs.labelled_subset(data["labels"], 5, seed=0)
    probs = fs.caption_probabilities(data["words"], known, data["labels"][known])
    assert probs.shape == (300, 3)
    named = np.array([any(s in c for s in ("circle", "square", "triangle")) for c in data["captions"]])
    assert (probs.argmax(1)[named] == data["labels"].numpy()[named]).mean() > 0.9


def test_colearning_curves_run_end_to_end(one_torch_thread):
    recipe = replace(fs.COLEARNING_RECIPES["ci"], pairs=90, test=30, image_size=32, budgets=(2,), steps=3,
                     batch_size=8, rounds=1, per_class=5, width=8)
    curves = fs.colearning_curves(recipe, seed=0)
    assert set(curves) == {"image only", "co-training", "distillation", "caption teacher"}
    assert all(len(values) == 1 and 0.0 <= values[0] <= 1.0 for values in curves.values())


def test_image_classifier_answers_in_eval_mode_what_it_learned(one_torch_thread):
    """The world's near-white pictures once left the encoder's batch-norm estimates behind its
    weights: right in train mode, one class for every picture in eval mode. The input batch norm
    keeps both modes in step after a short training."""
    recipe = replace(fs.COLEARNING_RECIPES["ci"], steps=150)
    data, test = fs.colearning_data(600, 32, seed=0), fs.colearning_data(150, 32, seed=1)
    model = fs.train_image_classifier(data["images"], data["labels"], recipe, 3, seed=0)
    assert fs.image_accuracy(model, test["images"], test["labels"]) > 0.7


def test_distance_bench_compares_both_distances_on_the_same_episodes(digits, one_torch_thread, capsys):
    """bench/protonet_distances.py on a budget of a few episodes: one row per distance and seed,
    then the mean difference per number of shots."""
    bench = load_bench("protonet_distances")
    images, labels = digits
    recipe = replace(fs.ablation_recipe(fs.PROTO_RECIPES["ci"]), train_episodes=2, test_episodes=3)
    bench.compare("tiny", recipe, [0, 1], (1, 5), images, labels)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and "mean over 2 seed(s)" in lines[-1]
    assert [line.split()[3] for line in lines[:4]] == ["squared_euclidean", "euclidean"] * 2
