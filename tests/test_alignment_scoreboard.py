"""Notebook 03's data and measurements: referring expressions, attention painted on pixels, scores."""
import numpy as np
import pytest
import torch

from mmcourse.experiments.alignment import scoreboard as al
from mmcourse.world.language import default_tokenizer


@pytest.fixture(scope="module")
def examples():
    return al.referring_examples(60, seed=3, image_size=32)


def test_referring_examples_mark_the_referred_objects_words(examples):
    tokenizer = default_tokenizer()
    assert len(examples) == 60 and examples.images.shape == (60, 3, 32, 32)
    for row in range(len(examples)):
        scene, target = examples.scenes[row], int(examples.targets[row])
        named = tokenizer.decode(examples.ids[row][examples.target_tokens[row]].tolist())
        obj = scene.objects[target]
        words = named.split()
        assert words[0] == "the"
        # every attribute word of the target phrase is true of the referred object
        for word in words[1:]:
            assert word in (obj.shape, obj.color, obj.size, obj.style, "shape", "object", "solid", "hollow",
                            "outline", "filled")
        assert examples.target_masks[row].any()
        assert examples.region_mask[row].sum() == len(scene)


def test_referring_examples_are_reproducible_and_refuse_bad_sizes():
    first = al.referring_examples(5, seed=1, image_size=32)
    again = al.referring_examples(5, seed=1, image_size=32)
    assert first.texts == again.texts and torch.equal(first.images, again.images)
    with pytest.raises(ValueError, match="n must be"):
        al.referring_examples(0, seed=1, image_size=32)


def test_region_maps_put_each_regions_weight_on_its_pixels(examples):
    weights = torch.zeros(len(examples), examples.boxes.shape[1])
    weights[torch.arange(len(examples)), examples.targets] = 1.0
    maps = al.region_attention_maps(weights, examples.masks)
    assert np.allclose(maps.sum((1, 2)), 1.0)
    scores = al.attention_scores(maps, examples.target_masks)
    assert scores["mass_inside"] == pytest.approx(1.0) and scores["pointing_game"] == 1.0
    assert 0 < scores["chance"] < 0.2
    wrong = weights.roll(1, dims=1)  # the weight on another box (or on padding: no pixels)
    assert al.attention_scores(al.region_attention_maps(wrong + 1e-3, examples.masks),
                               examples.target_masks)["mass_inside"] < 0.2


def test_patch_maps_and_expression_attention():
    attention = torch.zeros(2, 3, 4)
    attention[:, 1, 2] = 1.0
    attention[:, 2, 0] = 1.0
    selected = torch.tensor([[False, True, True], [False, True, False]])
    pooled = al.expression_attention(attention, selected)
    assert pooled.tolist() == [[0.5, 0.0, 0.5, 0.0], [0.0, 0.0, 1.0, 0.0]]
    assert al.patch_attention_maps(pooled).shape == (2, 2, 2)
    with pytest.raises(ValueError, match="square number"):
        al.patch_attention_maps(torch.ones(2, 3))
    with pytest.raises(ValueError, match="no token selected"):
        al.expression_attention(attention, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="expected \\(2, 3\\)"):
        al.expression_attention(attention, torch.ones(2, 4, dtype=torch.bool))


def test_score_expressions_for_regions_and_patches(examples):
    n, length = len(examples), examples.ids.shape[1]
    perfect = torch.zeros(n, length, examples.boxes.shape[1])
    perfect[torch.arange(n), :, examples.targets] = 1.0
    scores, maps = al.score_expressions(perfect, examples, "regions")
    assert scores["mass_inside"] == pytest.approx(1.0) and maps.shape == (n, 32, 32)
    assert 0.15 < scores["chance_regions"] < 0.6
    uniform = torch.ones(n, length, 16)
    scores, maps = al.score_expressions(uniform, examples, "patches")
    assert maps.shape == (n, 4, 4) and scores["pointing_game"] == 0.0  # ties are pessimistic
    assert scores["mass_inside"] == pytest.approx(scores["chance"], rel=1e-6)
    with pytest.raises(ValueError, match="units='pixels' is unknown"):
        al.score_expressions(uniform, examples, "pixels")


def test_expressions_of_one_scene():
    scene = al.referring_examples(1, seed=4, image_size=32).scenes[0]
    every = al.expressions_of(scene, seed=4, image_size=32)
    assert len(every) >= 1 and torch.equal(every.images[0], every.images[-1])
    assert sorted(every.targets.tolist()) == every.targets.tolist()
    assert all(every.target_masks[row].any() for row in range(len(every)))
    with pytest.raises(TypeError, match="scene must be a Scene"):
        al.expressions_of("a red circle", seed=4, image_size=32)
