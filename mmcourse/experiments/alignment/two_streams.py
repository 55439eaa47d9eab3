"""Notebook 03, section 4: one stream (VisualBERT) against two streams with co-attention (ViLBERT)
on a task that needs fine-grained alignment.

The task: image-text matching against a caption that differs from a true one in ONE attribute
word ("a red circle" vs "a blue circle", `regions.swapped_caption_pairs`). Reading "red" and
"circle" somewhere in the picture is not enough; the model has to bind the colour to the shape.

A fair comparison, as far as a notebook can make one:
- the same data: clean world captions (`CaptionDataset`), each image read with its own caption,
  another image's caption, and its own caption with one word swapped (`SwappedCaptionDataset`:
  the hard negative the test asks about, so both models are trained for the test they take);
- the same regions: both read the same `RegionEncoder`, pretrained to tell each box's shape,
  colour, size and style (`regions.pretrain_region_encoder`, the stand-in for a Faster R-CNN
  trained on Visual Genome's objects and attributes) and then frozen, as both papers keep their
  detector;
- the same losses (MLM + ITM, `visualbert.mlm_itm_loss` / `vilbert.vilbert_loss`), optimiser,
  steps and seeds; trainable parameters within one percent: VisualBERT with two layers, ViLBERT
  with one co-attentional layer (a transformer layer per stream, each with self- and
  cross-attention) whose MLPs are half as wide (2 x width instead of 4 x width).

`compare_streams` trains both and measures, on held-out scenes: the share of true captions that
score above their swapped twin ("pairwise", per swapped attribute too), ITM accuracy on the 2N
decisions, and the word -> region alignment read from each model's attention (`regions.
evaluate_word_alignment`, against the caption spans).
"""
from __future__ import annotations

import copy
import time
import types
from dataclasses import dataclass

import torch
from torch import nn

from ...models.encoders import RegionEncoder
from ...models.vilbert import ViLBERT, vilbert_loss
from ...models.visualbert import VisualBERTPretraining, mlm_itm_loss
from ...train import History, fit
from ...world.datasets import CaptionDataset
from ...world.scene import check_seed
from .regions import (SwappedCaptionDataset, evaluate_word_alignment, itm_swap_accuracy, pretrain_region_encoder,
                      swapped_caption_pairs)
from .single_stream import TEST_SEED_OFFSET, parameter_count, pretraining_loader

KINDS = ("visualbert", "vilbert")
PRETRAIN_SEED_OFFSET = 500  # the detector's scenes: other scenes than the comparison's


@dataclass(frozen=True)
class TwoStreamRecipe:
    """Data, model and optimisation sizes of one scale, the same for both models."""

    n_scenes: int  # training scenes, one caption each
    image_size: int
    width: int
    heads: int
    stages: int  # the region encoder's CNN: feature stride 2**stages
    detector_scenes: int  # scenes for pretraining the region encoder on attributes
    detector_epochs: int
    epochs: int
    batch_size: int
    lr: float
    n_test: int
    visualbert_depth: int = 2
    vilbert_depth: int = 1
    vilbert_mlp_ratio: int = 2  # ViLBERT's MLP width / width: 2 matches VisualBERT's trainable parameters


TWO_STREAM_RECIPES = {
    "ci": TwoStreamRecipe(n_scenes=700, image_size=32, width=64, heads=4, stages=2, detector_scenes=600,
                          detector_epochs=1, epochs=2, batch_size=64, lr=1e-3, n_test=200),
    "cpu": TwoStreamRecipe(n_scenes=3000, image_size=64, width=64, heads=4, stages=2, detector_scenes=2000,
                           detector_epochs=2, epochs=8, batch_size=64, lr=1e-3, n_test=400),
    "gpu": TwoStreamRecipe(n_scenes=20000, image_size=64, width=128, heads=4, stages=2, detector_scenes=5000,
                           detector_epochs=4, epochs=20, batch_size=128, lr=5e-4, n_test=1000),
}


def two_stream_recipe(scale: str) -> TwoStreamRecipe:
    """The recipe of "ci", "cpu" or "gpu"."""
    if scale not in TWO_STREAM_RECIPES:
        raise ValueError(f"scale={scale!r} is unknown; expected one of {tuple(TWO_STREAM_RECIPES)}")
    return TWO_STREAM_RECIPES[scale]


def pretrained_detector(recipe: TwoStreamRecipe, seed: int = 0, device=None,
                        progress: bool = False) -> tuple[RegionEncoder, dict[str, float]]:
    """(region encoder, its training accuracy per attribute): a fresh `RegionEncoder` trained to
    tell the shape, colour, size and style of every box of `recipe.detector_scenes` scenes."""
    seed = check_seed(seed)
    torch.manual_seed(seed)
    encoder = RegionEncoder(recipe.width, stages=recipe.stages)
    if device is not None:
        encoder.to(device)
    scenes = CaptionDataset(recipe.detector_scenes, seed + PRETRAIN_SEED_OFFSET, image_size=recipe.image_size)
    accuracy = pretrain_region_encoder(encoder, scenes, epochs=recipe.detector_epochs, seed=seed, progress=progress)
    return encoder, accuracy


def build_matching_model(kind: str, recipe: TwoStreamRecipe, detector: RegionEncoder, seed: int = 0) -> nn.Module:
    """A fresh VisualBERT ("visualbert") or ViLBERT ("vilbert") of the recipe's sizes, reading a
    frozen copy of `detector`."""
    _check_kind(kind)
    if not isinstance(detector, RegionEncoder):
        raise TypeError(f"detector must be a RegionEncoder, got {type(detector).__name__}")
    torch.manual_seed(check_seed(seed))
    if kind == "visualbert":
        model = VisualBERTPretraining(recipe.width, recipe.visualbert_depth, recipe.heads, stages=recipe.stages)
        model.regions = _frozen_copy(detector)
    else:
        model = ViLBERT(recipe.width, recipe.vilbert_depth, recipe.heads, recipe.vilbert_mlp_ratio * recipe.width,
                        stages=recipe.stages)
        model.region_encoder = _frozen_copy(detector)
    return model.to(next(detector.parameters()).device)


def train_matching_model(kind: str, recipe: TwoStreamRecipe, detector: RegionEncoder,
                         dataset: SwappedCaptionDataset, seed: int = 0, device=None,
                         progress: bool = False) -> tuple[nn.Module, History, float]:
    """(model, history, seconds of training): `build_matching_model` trained with MLM + ITM on
    `dataset` (negatives: another image's caption and the swapped one), AdamW at a constant
    `recipe.lr`, masks and negatives drawn from a generator seeded by `seed`."""
    if not isinstance(dataset, SwappedCaptionDataset):
        raise TypeError(f"dataset must be a SwappedCaptionDataset, got {type(dataset).__name__}")
    seed = check_seed(seed)
    model = build_matching_model(kind, recipe, detector, seed)
    generator = torch.Generator().manual_seed(seed)
    loss = mlm_itm_loss if kind == "visualbert" else vilbert_loss
    started = time.perf_counter()
    history = fit(model, pretraining_loader(dataset, recipe.batch_size, seed), lambda m, b: loss(m, b, generator),
                  epochs=recipe.epochs, lr=recipe.lr, device=device, progress=progress)
    return model, history, time.perf_counter() - started


def compare_streams(recipe: TwoStreamRecipe, seed: int = 0, device=None,
                    progress: bool = False) -> tuple[dict[str, dict], dict[str, nn.Module]]:
    """({kind: measurements}, {kind: trained model}) for VisualBERT and ViLBERT trained as the
    module docstring says. Measurements: "pairwise", "pairwise_<attribute>", "accuracy" (ITM on
    held-out true vs swapped captions), "word_region_accuracy" and "word_region_chance" (each
    word's most attended region against the caption spans), "parameters" (trainable),
    "seconds", "history"; and under "detector" the region encoder's attribute accuracies."""
    seed = check_seed(seed)
    detector, detector_accuracy = pretrained_detector(recipe, seed, device, progress)
    train = SwappedCaptionDataset(CaptionDataset(recipe.n_scenes, seed, image_size=recipe.image_size))
    test_pairs = swapped_caption_pairs(recipe.n_test, seed + TEST_SEED_OFFSET, recipe.image_size)
    test_captions = CaptionDataset(recipe.n_test, seed + TEST_SEED_OFFSET, image_size=recipe.image_size)
    results, models = {"detector": detector_accuracy}, {}
    for kind in KINDS:
        model, history, seconds = train_matching_model(kind, recipe, detector, train, seed, device, progress)
        alignment = evaluate_word_alignment(model, test_captions)
        results[kind] = {**itm_swap_accuracy(model, test_pairs), "word_region_accuracy": alignment["accuracy"],
                         "word_region_chance": alignment["chance"], "parameters": parameter_count(model),
                         "seconds": seconds, "history": history}
        models[kind] = model
    return results, models


def _frozen_copy(detector: RegionEncoder) -> RegionEncoder:
    """A copy of `detector` that no optimiser and no `train()` changes: no gradients, and its
    normalisation keeps the statistics of its pretraining (it stays in eval mode)."""
    copied = copy.deepcopy(detector).eval()
    copied.requires_grad_(False)
    copied.train = types.MethodType(lambda module, mode=True: nn.Module.train(module, False), copied)
    return copied


def _check_kind(kind) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is unknown; expected one of {KINDS}")
