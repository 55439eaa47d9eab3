"""Tests of mmcourse.experiments.alignment.albef: ALBEF's training pairs, held-out sets and measurements."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from mmcourse.experiments.alignment import albef as experiment
from mmcourse.experiments.alignment.scoreboard import referring_examples
from mmcourse.models.albef import ALBEF
from mmcourse.world.datasets import CaptionDataset
from mmcourse.world.language import caption_is_true, default_tokenizer, split_words

TOKENIZER = default_tokenizer()
MICRO = replace(experiment.albef_recipe("ci"), n_scenes=24, image_size=32, patch_size=4, width=16, batch_size=8,
                epochs=1, alpha_warmup_steps=2, n_test=4)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def tiny_albef() -> ALBEF:
    torch.manual_seed(0)
    return ALBEF(image_size=32, patch_size=4, width=16, embed_dim=8, image_depth=1, text_depth=1, fusion_depth=1,
                 heads=2, queue_size=16, pooling="mean")


def test_recipes_name_the_scales():
    assert set(experiment.ALBEF_RECIPES) == {"ci", "cpu", "gpu"}
    assert experiment.albef_recipe("cpu").image_size == 64
    with pytest.raises(ValueError, match="scale='laptop' is unknown"):
        experiment.albef_recipe("laptop")
    assert list(experiment.ALBEF_VARIANTS) == ["ITC", "+ ITM, random negatives", "+ ITM, hard negatives",
                                          "+ momentum distillation + MLM"]


def test_image_caption_pairs_follow_a_caption_dataset():
    dataset = CaptionDataset(4, 5, image_size=32, captions_per_image=2, noise_rate=0.5)
    pairs = experiment.ImageCaptionPairs.from_captions(dataset)
    assert len(pairs) == 8 and pairs.image_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for j in range(8):
        item, expected = pairs[j], dataset[j]
        assert torch.equal(item["tokens"], expected["tokens"]) and torch.equal(item["image"], expected["image"])
        assert item["is_noisy"] == expected["is_noisy"]
    kept = pairs.subset(torch.tensor([True, False] * 4))
    assert kept.image_index.tolist() == [0, 1, 2, 3] and kept.images is pairs.images
    short = experiment.ImageCaptionPairs(pairs.images, torch.tensor([1]), torch.tensor([[5, 21, 6]]))
    both = experiment.ImageCaptionPairs.concat(kept, short)
    assert len(both) == 5 and both.tokens.shape[1] == pairs.tokens.shape[1]
    assert both.tokens[-1, :4].tolist() == [5, 21, 6, TOKENIZER.pad_id]


def test_image_caption_pairs_refuse_bad_input():
    images = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"expected \[0, 2\)"):
        experiment.ImageCaptionPairs(images, torch.tensor([0, 2]), torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="same non-zero number of pairs"):
        experiment.ImageCaptionPairs(images, torch.tensor([0]), torch.ones(2, 3, dtype=torch.long))
    pairs = experiment.ImageCaptionPairs(images, torch.tensor([0, 1]), torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"keep must be a bool tensor of shape \(2,\)"):
        pairs.subset(torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="share the same images"):
        experiment.ImageCaptionPairs.concat(pairs, experiment.ImageCaptionPairs(images.clone(), torch.tensor([0]),
                                                                     torch.ones(1, 3, dtype=torch.long)))


def test_with_full_captions_adds_one_true_listing_caption_per_scene():
    dataset = CaptionDataset(5, 7, image_size=32, captions_per_image=1, noise_rate=0.3)
    pairs = experiment.with_full_captions(dataset, 7)
    assert len(pairs) == 10 and pairs.image_index[5:].tolist() == [0, 1, 2, 3, 4]
    assert not pairs.is_noisy[5:].any()
    for i, scene in enumerate(dataset.scenes):
        text = TOKENIZER.decode(pairs.tokens[5 + i])
        assert text.startswith("the picture shows") and caption_is_true(scene, text)


def test_swap_matching_scores_a_model_that_knows_the_truth():
    model = tiny_albef()
    pairs = experiment.swapped_caption_pairs(4, 3, 32)
    true_ids = {tuple(row[row != 0].tolist()) for row in model.tokenize(pairs.true_texts)}

    def knowing(images, ids, sign=1.0):  # "match" for a true caption, "no match" for a swapped one
        is_true = torch.tensor([tuple(row[row != 0].tolist()) in true_ids for row in ids])
        return torch.stack([torch.zeros(len(ids)), sign * (is_true.float() * 2 - 1)], 1)

    model.itm_logits = knowing
    scores = experiment.swap_matching(model, pairs, batch_size=3)
    assert scores["itm_accuracy"] == 1.0 and scores["itm_pairwise"] == 1.0
    assert 0.0 <= scores["itc_pairwise"] <= 1.0
    model.itm_logits = lambda images, ids: knowing(images, ids, -1.0)
    assert experiment.swap_matching(model, pairs)["itm_pairwise"] == 0.0


def test_gradcam_pointing_gives_scores_between_zero_and_one():
    model = tiny_albef()
    examples = referring_examples(4, 2, 32)
    scores = experiment.gradcam_pointing(model, examples, batch_size=3)
    assert set(scores) >= {"pointing_game", "mass_inside", "chance"}
    assert all(0.0 <= scores[name] <= 1.0 for name in ("pointing_game", "mass_inside", "chance"))
    attention = experiment.gradcam_pointing(model, examples, method="attention")
    assert 0.0 <= attention["pointing_game"] <= 1.0
    with pytest.raises(ValueError, match="method='saliency' is unknown"):
        experiment.gradcam_pointing(model, examples, method="saliency")


def test_train_albef_runs_a_micro_recipe_and_measures_it():
    pairs = experiment.web_training_pairs(MICRO, 0)
    assert len(pairs) == 48  # one world caption and one full caption per scene
    model, history, seconds = experiment.train_albef(pairs, experiment.ALBEF_VARIANTS["+ momentum distillation + MLM"], MICRO)
    assert seconds > 0 and {"itc", "itm", "mlm", "itm_accuracy"} <= set(history.last)
    tests = experiment.albef_test_sets(MICRO.n_test, 100, MICRO.image_size)
    scores = experiment.measure_albef(model, tests)
    assert set(scores) == {"i2t_R@1", "itm_accuracy", "itm_pairwise", "itc_pairwise", "pointing_game",
                           "mass_inside", "mass_chance", "attention_pointing_game", "attention_mass_inside"}
    assert all(0.0 <= value <= 1.0 for value in scores.values())


def test_run_albef_ablation_returns_each_variants_measurements_and_model():
    variants = {name: experiment.ALBEF_VARIANTS[name] for name in ("ITC", "+ ITM, hard negatives")}
    results, models = experiment.run_albef_ablation(MICRO, seed=1, variants=variants)
    assert list(results) == list(models) == list(variants)
    assert all(isinstance(model, ALBEF) for model in models.values())
    assert "itm" not in results["ITC"]["history"].last and "itm" in results["+ ITM, hard negatives"]["history"].last


def test_false_negative_rates_see_true_captions_among_the_negatives(monkeypatch):
    from mmcourse.world import describe, sample_scenes
    n, seed = 64, 5
    scenes = sample_scenes(n, seed)
    texts = [describe(scene, seed, 1)[0] for scene in scenes]
    truth = torch.tensor([[float(caption_is_true(s, t)) for t in texts] for s in scenes])  # (n, n)
    model = tiny_albef()
    # an ITC that knows the truth: similarity[i, j] = 10 / tau * [caption j is true of image i]
    monkeypatch.setattr(experiment, "encode_images", lambda m, images: 10 * truth)
    monkeypatch.setattr(experiment, "encode_texts", lambda m, t: torch.eye(n))
    rates = experiment.false_negative_rates(model, n, seed, image_size=32, batch_size=16, draws=8)
    others = ~torch.eye(n, dtype=torch.bool)
    assert 0.0 < rates["random"] < 0.6  # about the share of true captions among the others
    assert rates["hard"] > rates["random"] + 0.2  # similar captions are true ones: hard negatives are false ones
    assert rates["similarity_gap"] == pytest.approx(10.0 / float(model.temperature.detach()))
    assert truth[others].mean() > 0.0


def test_false_negative_rates_refuse_too_few_scenes():
    with pytest.raises(ValueError, match="n=8 is smaller than batch_size=16"):
        experiment.false_negative_rates(tiny_albef(), 8, 0, image_size=32, batch_size=16)
