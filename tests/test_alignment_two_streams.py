"""mmcourse.experiments.alignment.two_streams: the detector pretrained on attributes, both models reading
a frozen copy of it with equal trainable budgets, and a tiny end-to-end comparison."""
from dataclasses import replace

import pytest
import torch

from mmcourse.experiments.alignment.regions import SwappedCaptionDataset
from mmcourse.experiments.alignment.two_streams import (TWO_STREAM_RECIPES, build_matching_model, compare_streams,
                                                     pretrained_detector, train_matching_model, two_stream_recipe)
from mmcourse.models.encoders import RegionEncoder
from mmcourse.models.vilbert import ViLBERT
from mmcourse.models.visualbert import VisualBERTPretraining
from mmcourse.world.datasets import CaptionDataset

TINY = replace(TWO_STREAM_RECIPES["ci"], n_scenes=64, width=16, heads=2, detector_scenes=48, epochs=1,
               batch_size=16, n_test=24)


def test_recipes_share_sizes_between_the_models_and_refuse_unknown_scales():
    assert two_stream_recipe("cpu") is TWO_STREAM_RECIPES["cpu"]
    with pytest.raises(ValueError, match="scale='tpu' is unknown"):
        two_stream_recipe("tpu")


@pytest.mark.usefixtures("one_torch_thread")
def test_both_models_read_the_same_frozen_detector_and_have_comparable_budgets():
    detector = RegionEncoder(TINY.width, stages=TINY.stages)
    visualbert = build_matching_model("visualbert", TINY, detector)
    vilbert = build_matching_model("vilbert", TINY, detector)
    assert isinstance(visualbert, VisualBERTPretraining) and isinstance(vilbert, ViLBERT)
    for encoder in (visualbert.regions, vilbert.region_encoder):
        assert encoder is not detector and not any(p.requires_grad for p in encoder.parameters())
        for mine, theirs in zip(encoder.state_dict().values(), detector.state_dict().values()):
            assert torch.equal(mine, theirs)
    trainable = [sum(p.numel() for p in m.parameters() if p.requires_grad) for m in (visualbert, vilbert)]
    assert abs(trainable[0] - trainable[1]) / max(trainable) < 0.02
    with pytest.raises(ValueError, match="kind='lxmert' is unknown"):
        build_matching_model("lxmert", TINY, detector)
    with pytest.raises(TypeError, match="detector must be a RegionEncoder"):
        build_matching_model("vilbert", TINY, torch.nn.Linear(2, 2))


@pytest.mark.usefixtures("one_torch_thread")
def test_training_leaves_the_detector_unchanged_and_refuses_plain_captions():
    detector, accuracy = pretrained_detector(TINY, seed=0)
    assert set(accuracy) == {"shape", "color", "size", "style"}
    data = SwappedCaptionDataset(CaptionDataset(32, seed=3, image_size=TINY.image_size))
    model, history, seconds = train_matching_model("vilbert", TINY, detector, data, seed=0)
    for mine, theirs in zip(model.region_encoder.state_dict().values(), detector.state_dict().values()):
        assert torch.equal(mine, theirs)
    assert len(history) == 1 and seconds > 0 and {"itm_loss", "mlm_loss"} <= set(history.last)
    with pytest.raises(TypeError, match="dataset must be a SwappedCaptionDataset"):
        train_matching_model("vilbert", TINY, detector, CaptionDataset(8, seed=3, image_size=32))


@pytest.mark.usefixtures("one_torch_thread")
def test_compare_streams_measures_both_models_on_held_out_swaps():
    results, models = compare_streams(TINY, seed=1)
    assert set(models) == {"visualbert", "vilbert"} and set(results) == {"detector", "visualbert", "vilbert"}
    for kind in models:
        scores = results[kind]
        for key in ("pairwise", "accuracy", "word_region_accuracy", "word_region_chance"):
            assert 0.0 <= scores[key] <= 1.0
        assert scores["parameters"] > 0 and scores["seconds"] > 0
