"""Tests of mmcourse.experiments.alignment.blip: the CapFilt experiment's data, measurements and pipeline."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from bench_helpers import load_bench
from test_alignment_albef import MICRO as ALBEF_MICRO

from mmcourse.experiments.alignment import blip as experiment
from mmcourse.models.blip import Captioner
from mmcourse.world.language import describe, noisy_captions
from mmcourse.world.scene import sample_scenes

MICRO = replace(experiment.capfilt_recipe("ci"), n_clean=12, n_web=12, captions_per_image=2, image_size=32, patch_size=4,
                width=16, captioner_epochs=1, filter_epochs=1, batch_size=8, retrieval_steps=3, retrieval_batch=8,
                retrieval_width=16, n_test=4, max_caption_length=12)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def test_recipes_name_the_scales():
    assert set(experiment.CAPFILT_RECIPES) == {"ci", "cpu", "gpu"}
    with pytest.raises(ValueError, match="scale='tpu' is unknown"):
        experiment.capfilt_recipe("tpu")


def test_filter_quality_treats_keep_as_the_positive_class_and_clean_as_what_to_keep():
    keep = torch.tensor([True, True, False, False, True])
    is_noisy = torch.tensor([False, True, False, True, False])
    quality = experiment.filter_quality(keep, is_noisy)  # clean: 0, 2, 4; kept: 0, 1, 4
    assert quality == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "kept": 0.6})
    nothing = experiment.filter_quality(torch.zeros(5, dtype=torch.bool), is_noisy)
    assert math.isnan(nothing["precision"]) and nothing["recall"] == 0.0
    with pytest.raises(ValueError, match="bool tensors of the same shape"):
        experiment.filter_quality(keep, is_noisy[:4])
    with pytest.raises(ValueError, match="bool tensors"):
        experiment.filter_quality(keep.long(), is_noisy)


def test_filter_sweep_trades_recall_for_precision():
    scores = torch.tensor([0.9, 0.7, 0.4, 0.2, 0.35])
    is_noisy = torch.tensor([False, True, False, True, False])
    sweep = experiment.filter_sweep(scores, is_noisy, thresholds=(0.3, 0.5))
    assert sweep[0.3] == pytest.approx({"precision": 3 / 4, "recall": 1.0, "kept": 0.8})
    assert sweep[0.5] == pytest.approx({"precision": 1 / 2, "recall": 1 / 3, "kept": 0.4})


def test_caption_truth_reads_true_false_and_ungrammatical_captions():
    scene = sample_scenes(1, 4)[0]
    true_text = describe(scene, 4, 1)[0]
    swapped = next(c for c in noisy_captions(scene, 4, 8, noise_rate=1.0, kinds=("swap",)) if c.noise_kind == "swap")
    true, readable = experiment.caption_truth([scene] * 3, [true_text, swapped.text, "click here for more photos"])
    assert true.tolist() == [True, False, False] and readable.tolist() == [True, True, False]
    with pytest.raises(ValueError, match="one caption per scene"):
        experiment.caption_truth([scene], ["a", "b"])


def test_clean_and_web_sets_hold_what_the_recipe_says():
    clean, web = experiment.clean_and_web_sets(MICRO, 0)
    assert len(clean) == 12 * 2 + 12 and not clean.is_noisy.any()  # world captions and one full caption each
    assert len(web) == 24 and web.spec["noise_rate"] == MICRO.web_noise_rate


def test_retrieval_loader_gives_exactly_the_recipe_steps():
    clean, _ = experiment.clean_and_web_sets(MICRO, 0)
    recipe = replace(MICRO, retrieval_steps=7, retrieval_batch=5)
    loader = experiment.retrieval_loader(clean, recipe, 0)
    batches = list(loader)
    assert len(loader) == 7 and len(batches) == 7 and all(len(b["tokens"]) == 5 for b in batches)


def test_synthetic_captions_are_padded_to_the_recipe_length():
    torch.manual_seed(0)
    captioner = Captioner(image_size=32, patch_size=4, width=16, image_depth=1, decoder_depth=1, heads=2)
    images = torch.rand(3, 3, 32, 32)
    ids, texts = experiment.synthetic_captions(captioner, images, MICRO, seed=1, batch_size=2)
    assert ids.shape == (3, 12) and len(texts) == 3 and (ids[:, 0] == 5).all()
    again, _ = experiment.synthetic_captions(captioner, images, MICRO, seed=1, batch_size=2)
    other, _ = experiment.synthetic_captions(captioner, images, MICRO, seed=2, batch_size=2)
    assert torch.equal(ids, again) and not torch.equal(ids, other)


def test_run_capfilt_measures_every_part_on_a_micro_recipe():
    result = experiment.run_capfilt(MICRO, seed=0)
    assert result.pairs["(a) raw web"] == 24
    assert result.pairs["(c) filtered web + filtered synthetic"] >= result.pairs["(b) filtered web"]
    assert set(result.recall_at_1) == set(result.pairs)
    for value in (result.filter_web["recall"], result.filter_web["kept"], result.filter_synthetic_kept,
                  result.synthetic_true, result.synthetic_readable, result.web_true):
        assert 0.0 <= value <= 1.0
    assert result.synthetic_true <= result.synthetic_readable
    assert all(np.isnan(r) or 0.0 <= r <= 1.0 for r in result.recall_at_1.values())
    assert len(result.examples) == 8 and set(result.seconds) >= {"captioner", "filter", "bootstrap"}


def test_budget_bench_best_precision_is_the_best_threshold_that_keeps_enough_clean_captions():
    bench = load_bench("alignment_budgets")
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    is_noisy = torch.tensor([False, True, False, False, True, False])
    # keeping >= 0.6 keeps 3 of 4 clean (recall 0.75) with one noisy: precision 0.75; the 0.8 floor
    # needs all four clean, i.e. everything, precision 4 / 6
    assert bench.best_precision(scores, is_noisy) == pytest.approx(4 / 6)
    assert bench.best_precision(scores, is_noisy, recall_floor=0.75) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="every caption noisy"):
        bench.best_precision(scores, torch.ones(6, dtype=torch.bool))


def test_budget_bench_prints_one_row_per_budget(capsys):
    """bench/alignment_budgets.py on micro recipes: a header and one row per number of epochs (and,
    for ALBEF, per ITM variant)."""
    bench = load_bench("alignment_budgets")
    bench.filter_rows(MICRO, [1, 2], seed=0)
    bench.albef_rows(ALBEF_MICRO, [1], seed=0)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + 2 + 1 + 2
    assert [line.split()[0] for line in lines[1:3]] == ["1", "2"]
    assert [line.split()[:2] for line in lines[4:]] == [["1", "random"], ["1", "hard"]]
