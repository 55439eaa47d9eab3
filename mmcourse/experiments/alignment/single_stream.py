"""Notebook 03, sections 3 and 5: what the notebook measures around the single-stream models.

VisualBERT (Li et al. 2019) and ViLT (Kim et al. 2021) read words and image units in one
transformer; this module holds what the notebook measures around them:

- Data: `pretraining_loader` over a `CaptionDataset`, and `swapped_captions`, for every caption of
  a dataset the same caption with ONE attribute word changed so that it is false ("a red circle"
  -> "a blue circle", the world's "swap" noise), the hard negative of a held-out matching test.
- `itm_accuracy`: image-text matching on held-out pairs, each true caption against a false one,
  either another image's caption ("partner", the training negatives) or the swapped caption
  ("swap"): the classification accuracy over positives and negatives, and the share of pairs
  where the true caption scores higher (ranking, free of the threshold).
- `mlm_accuracy`: masked-word accuracy on held-out captions, on all masked words and on attribute
  words (colours, shapes, sizes, styles: the words that need the image), beside the accuracy of
  always guessing the most frequent masked word.
- `pipeline_timings`: inference time of each model split into its visual embedding (VisualBERT:
  CNN + RoI-Align over the boxes, the detector's stand-in; ViLT: the linear patch embedding) and
  its transformer, at the same transformer size. The lecture's "ViLT is 60x faster" comes from a
  real Faster R-CNN (hundreds of ms per image); our stand-in detector is a small CNN over given
  boxes, so the gap measured here is far smaller.

- Recipes (`SINGLE_STREAM_RECIPES`, `train_single_stream`, `measure_single_stream`): the same data,
  sizes and optimisation for both models at each scale.

Both pretraining models expose `image_side(batch)`, `encode(image_side, ids)`, `mlm_head` and
`itm_head`, so every function here takes either.

What the recipes reach (2 shared CPU cores, one torch thread): masked-word accuracy rises well
above the majority guess within a minute; image-text matching stays near chance for the first
~150-250 steps of 128 pairs (~20-30k pairs) and only then starts to climb (~0.56-0.59 on held-out
partner captions after 300-400 such steps at 32 px), and against swapped captions it stays at
chance at these sizes. The "ci" recipe therefore shows MLM learning only.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ...models.layers import IGNORE_INDEX, mask_tokens, mismatched_partners
from ...models.visualbert import VisualBERTPretraining, seeded_mlm_itm_loss, special_ids
from ...models.vilt import ViLTPretraining
from ...train import History, fit
from ...world.datasets import CaptionDataset, collate
from ...world.language import ATTRIBUTE_WORDS, caption_is_true, default_tokenizer, noisy_captions
from ...world.scene import check_count, check_seed

NEGATIVES = ("partner", "swap")
KINDS = ("visualbert", "vilt")
EVAL_BATCH = 256
TEST_SEED_OFFSET = 1000  # held-out scenes are drawn with seed + this: other scenes than training's


# --------------------------------------------------------------------------------------------
# Recipes: sizes per scale
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SingleStreamRecipe:
    """Data, model and optimisation sizes of one scale, the same for VisualBERT and ViLT."""

    n_scenes: int  # training scenes
    captions_per_image: int
    image_size: int
    patch_size: int  # ViLT's patches
    stages: int  # VisualBERT's detector CNN: feature stride 2**stages
    width: int
    depth: int
    heads: int
    epochs: int
    batch_size: int
    lr: float
    warmup_steps: int  # linear warm-up, then a constant learning rate
    n_test: int  # held-out scenes for the measurements


SINGLE_STREAM_RECIPES = {
    "ci": SingleStreamRecipe(n_scenes=2000, captions_per_image=1, image_size=32, patch_size=8, stages=3, width=64,
                             depth=2, heads=4, epochs=1, batch_size=32, lr=2e-3, warmup_steps=10, n_test=300),
    "cpu": SingleStreamRecipe(n_scenes=4000, captions_per_image=1, image_size=64, patch_size=16, stages=3, width=64,
                              depth=2, heads=4, epochs=3, batch_size=64, lr=2e-3, warmup_steps=20, n_test=500),
    "gpu": SingleStreamRecipe(n_scenes=20000, captions_per_image=3, image_size=64, patch_size=8, stages=3, width=128,
                              depth=4, heads=4, epochs=10, batch_size=128, lr=1e-3, warmup_steps=200, n_test=1000),
}


def single_stream_recipe(scale: str) -> SingleStreamRecipe:
    """The recipe of "ci", "cpu" or "gpu"."""
    if scale not in SINGLE_STREAM_RECIPES:
        raise ValueError(f"scale={scale!r} is unknown; expected one of {tuple(SINGLE_STREAM_RECIPES)}")
    return SINGLE_STREAM_RECIPES[scale]


def build_single_stream(kind: str, recipe: SingleStreamRecipe, seed: int = 0) -> nn.Module:
    """A fresh `VisualBERTPretraining` ("visualbert") or `ViLTPretraining` ("vilt") of the recipe's
    sizes, initialised from `seed`."""
    _check_kind(kind)
    torch.manual_seed(check_seed(seed))
    if kind == "visualbert":
        return VisualBERTPretraining(recipe.width, recipe.depth, recipe.heads, stages=recipe.stages)
    return ViLTPretraining(recipe.image_size, recipe.patch_size, recipe.width, recipe.depth, recipe.heads)


def training_set(recipe: SingleStreamRecipe, seed: int = 0) -> CaptionDataset:
    """The recipe's clean training pairs (scenes of `seed`)."""
    return CaptionDataset(recipe.n_scenes, check_seed(seed), image_size=recipe.image_size,
                          captions_per_image=recipe.captions_per_image)


def held_out_set(recipe: SingleStreamRecipe, seed: int = 0) -> CaptionDataset:
    """`recipe.n_test` held-out scenes (seed + TEST_SEED_OFFSET), one caption each."""
    return CaptionDataset(recipe.n_test, check_seed(seed) + TEST_SEED_OFFSET, image_size=recipe.image_size)


def train_single_stream(kind: str, recipe: SingleStreamRecipe, seed: int = 0, dataset: CaptionDataset | None = None,
                        device: str | torch.device | None = None,
                        progress: bool = False) -> tuple[nn.Module, History, float]:
    """(model, history, seconds): a fresh model of `kind` pretrained with MLM + ITM
    (`mlm_itm_loss`, masks and negatives seeded by `seed`) on `dataset` (default:
    `training_set(recipe, seed)`): AdamW, `recipe.warmup_steps` of linear warm-up, then a constant
    learning rate. `seconds` is the wall-clock time of `fit` alone."""
    model = build_single_stream(kind, recipe, seed)
    dataset = training_set(recipe, seed) if dataset is None else dataset
    loader = pretraining_loader(dataset, recipe.batch_size, seed)

    def warmup(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / recipe.warmup_steps))

    started = time.perf_counter()
    history = fit(model, loader, seeded_mlm_itm_loss(seed), epochs=recipe.epochs, lr=recipe.lr, scheduler=warmup,
                  scheduler_every="batch", device=device, progress=progress)
    return model, history, time.perf_counter() - started


def measure_single_stream(model: nn.Module, dataset: CaptionDataset, seed: int = 0) -> dict[str, float]:
    """The headline figures of a pretrained model on held-out `dataset`: ITM accuracy against
    partner and swapped captions, MLM accuracy (all words, attribute words, majority baseline)."""
    partner = itm_accuracy(model, dataset, "partner", seed)
    swap = itm_accuracy(model, dataset, "swap", seed)
    mlm = mlm_accuracy(model, dataset, seed)
    return {"itm_accuracy_partner": partner["accuracy"], "itm_ranking_partner": partner["ranking"],
            "itm_accuracy_swap": swap["accuracy"], "itm_ranking_swap": swap["ranking"],
            "mlm_accuracy": mlm["accuracy"], "mlm_attribute_accuracy": mlm["attribute_accuracy"],
            "mlm_majority_baseline": mlm["majority_baseline"]}


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def pretraining_loader(dataset: Dataset, batch_size: int, seed: int, shuffle: bool = True) -> DataLoader:
    """Batches of `dataset` (a `CaptionDataset`, or a dataset of its items such as
    `regions.SwappedCaptionDataset`) through `collate`, shuffled by their own seeded generator (so
    `fit`'s checkpoints can resume them exactly); the last, smaller batch is dropped when shuffling
    (ITM needs two pairs or more)."""
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a torch Dataset of CaptionDataset items, got {type(dataset).__name__}")
    check_count("batch_size", batch_size, 2)
    check_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, drop_last=shuffle,
                      generator=torch.Generator().manual_seed(seed))


def swapped_captions(dataset: CaptionDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (len(dataset), max_length), is_swap (len(dataset),) bool): item j's caption with one
    attribute word swapped for another value of the same attribute so that it is false of the
    scene (`world.noisy_captions(..., kinds=("swap",))`), wrapped and padded as the dataset's own
    tokens. Only the swapped word (and an a/an before it) differs. Where no one-word swap makes
    the caption false the world gives an irrelevant caption instead: `is_swap` is False there."""
    _check_dataset(dataset)
    if dataset.spec["noise_rate"] != 0:
        raise ValueError(f"dataset has noise_rate={dataset.spec['noise_rate']}; expected clean captions (0) "
                         "so that the swapped caption differs from a true one")
    captions = [caption for scene in dataset.scenes
                for caption in noisy_captions(scene, dataset.seed, dataset.captions_per_image, 1.0, kinds=("swap",))]
    ids = default_tokenizer().encode_batch([c.text for c in captions], dataset.max_length, dataset.spec["wrap"])
    return torch.from_numpy(ids), torch.tensor([c.noise_kind == "swap" for c in captions])


# --------------------------------------------------------------------------------------------
# Held-out measurements
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def itm_accuracy(model: nn.Module, dataset: CaptionDataset, negatives: str = "swap", seed: int = 0,
                 batch_size: int = EVAL_BATCH) -> dict[str, float]:
    """Image-text matching on the items of `dataset`, each true caption against one false caption.

    `negatives="swap"`: the caption with one attribute word changed (`swapped_captions`; items
    without a swap are left out); `"partner"`: another image's caption of the same batch
    (`mismatched_partners`, seeded by `seed`), left out where it happens to be true of this image
    (`world.caption_is_true`: "a red circle" fits many scenes). Returns "accuracy" (argmax right
    on the positives and the negatives, 0.5 = chance), "ranking" (share of pairs whose true
    caption gets the larger matching margin logit_1 - logit_0) and "pairs" (how many were scored).
    """
    _check_model(model)
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives={negatives!r} is unknown; expected one of {NEGATIVES}")
    check_count("batch_size", batch_size, 2)
    if negatives == "swap":
        swapped, usable = swapped_captions(dataset)
    generator = torch.Generator().manual_seed(check_seed(seed))
    device = _device_of(model)
    was_training = model.training
    model.eval()
    margins = []  # (positive margins (B,), negative margins (B,)) of the usable pairs of each batch
    for start, batch in _batches(dataset, batch_size, device):
        ids = batch["tokens"]
        items = range(start, start + len(ids))
        if negatives == "swap":
            wrong = swapped[start:start + len(ids), : ids.shape[1]].to(device)  # a swap keeps the length
            keep = usable[start:start + len(ids)].to(device)
        else:
            partners = mismatched_partners(len(ids), generator)
            wrong = ids[partners.to(device)]
            keep = torch.tensor([not _is_true_of(dataset, j, items[p]) for j, p in zip(items, partners.tolist())],
                                device=device)
        image_side = model.image_side(batch)
        positive = _match_margin(model.itm_head(model.encode(image_side, ids)[:, 0]))  # (B,)
        negative = _match_margin(model.itm_head(model.encode(image_side, wrong)[:, 0]))  # (B,)
        margins.append((positive[keep], negative[keep]))
    model.train(was_training)
    positive, negative = (torch.cat(side) for side in zip(*margins))
    if len(positive) == 0:
        raise ValueError("no pair of dataset could be scored: every negative was true of its image")
    right = (positive > 0).float().sum() + (negative <= 0).float().sum()
    return {"accuracy": float(right) / (2 * len(positive)), "ranking": float((positive > negative).float().mean()),
            "pairs": len(positive)}


@torch.no_grad()
def mlm_accuracy(model: nn.Module, dataset: CaptionDataset, seed: int = 0,
                 batch_size: int = EVAL_BATCH) -> dict[str, float]:
    """Masked-word prediction on `dataset`'s captions with their own images (BERT masking seeded by
    `seed`): "accuracy" over all masked words, "attribute_accuracy" over masked attribute words
    (colour, shape, size, style: these need the image), and "majority_baseline", the accuracy of
    always answering the most frequent masked word of this evaluation (a text-free guess)."""
    _check_model(model)
    check_count("batch_size", batch_size, 1)
    tokenizer = model.tokenizer
    generator = torch.Generator().manual_seed(check_seed(seed))
    device = _device_of(model)
    attribute_ids = torch.tensor([tokenizer.stoi[word] for word in ATTRIBUTE_WORDS if word in tokenizer.stoi],
                                 device=device)
    was_training = model.training
    model.eval()
    predicted, targets = [], []
    for _, batch in _batches(dataset, batch_size, device):
        masked, labels = mask_tokens(batch["tokens"], tokenizer.mask_id, tokenizer.vocab_size, special_ids(tokenizer),
                                     generator=generator)
        logits = model.mlm_head(model.encode(model.image_side(batch), masked)[:, : masked.shape[1]])  # (B, L, V)
        scored = labels != IGNORE_INDEX
        predicted.append(logits.argmax(-1)[scored])
        targets.append(labels[scored])
    model.train(was_training)
    predicted, targets = torch.cat(predicted), torch.cat(targets)
    correct = (predicted == targets).float()
    is_attribute = torch.isin(targets, attribute_ids)
    return {"accuracy": float(correct.mean()),
            "attribute_accuracy": float(correct[is_attribute].mean()) if is_attribute.any() else float("nan"),
            "majority_baseline": float((targets == targets.mode().values).float().mean())}


# --------------------------------------------------------------------------------------------
# Inference time: detector features vs patches
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def pipeline_timings(image_size: int = 64, width: int = 64, depth: int = 2, heads: int = 4, patch_size: int = 8,
                     batch_size: int = 32, repeats: int = 10, seed: int = 0,
                     device: str | torch.device = "cpu") -> dict[str, float]:
    """Inference milliseconds per batch of VisualBERT and ViLT at the same transformer size
    (`width`, `depth`, `heads`), in eval mode without gradients, on `batch_size` world scenes of
    `image_size` pixels with their captions; each figure is the median of `repeats` timed calls
    after one warm-up call.

    Keys: "<model>_visual_ms" (VisualBERT: `RegionEncoder`, CNN + RoI-Align over the boxes; ViLT:
    the patch embedding), "<model>_transformer_ms" (the joint encoder alone on that many tokens),
    "<model>_total_ms" (the whole `itm_logits` call, embeddings and heads included),
    "<model>_tokens" (sequence length), and "total_ratio" and "visual_ratio" (VisualBERT / ViLT).
    """
    for name, value in (("image_size", image_size), ("width", width), ("depth", depth), ("heads", heads),
                        ("patch_size", patch_size), ("batch_size", batch_size), ("repeats", repeats)):
        check_count(name, value, 1)
    device = torch.device(device)
    torch.manual_seed(check_seed(seed))
    dataset = CaptionDataset(batch_size, seed, image_size=image_size)
    batch = _to(collate([dataset[i] for i in range(batch_size)]), device)
    ids = batch["tokens"]
    visualbert = VisualBERTPretraining(width, depth, heads).to(device).eval()
    vilt = ViLTPretraining(image_size, patch_size, width, depth, heads).to(device).eval()
    features, region_mask = visualbert.image_side(batch)
    regions_tokens = torch.randn(batch_size, ids.shape[1] + features.shape[1], width, device=device)
    patch_tokens = torch.randn(batch_size, ids.shape[1] + 1 + vilt.vilt.num_patches, width, device=device)

    def ms(fn: Callable[[], object]) -> float:
        return _median_ms(fn, repeats, device)

    timings = {
        "visualbert_visual_ms": ms(lambda: visualbert.regions(batch["image"], batch["boxes"])),
        "visualbert_transformer_ms": ms(lambda: visualbert.bert.encoder(regions_tokens)),
        "visualbert_total_ms": ms(lambda: visualbert.itm_logits(batch["image"], batch["boxes"], region_mask, ids)),
        "visualbert_tokens": float(regions_tokens.shape[1]),
        "vilt_visual_ms": ms(lambda: vilt.vilt.patches(batch["image"])),
        "vilt_transformer_ms": ms(lambda: vilt.vilt.transformer(patch_tokens)),
        "vilt_total_ms": ms(lambda: vilt.itm_logits(batch["image"], ids)),
        "vilt_tokens": float(patch_tokens.shape[1]),
    }
    timings["total_ratio"] = timings["visualbert_total_ms"] / timings["vilt_total_ms"]
    timings["visual_ratio"] = timings["visualbert_visual_ms"] / timings["vilt_visual_ms"]
    return timings


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters, tied weights counted once."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------------
# Helpers and checks
# --------------------------------------------------------------------------------------------


def _is_true_of(dataset: CaptionDataset, image_item: int, caption_item: int) -> bool:
    """Whether the caption of item `caption_item` is true of the scene of item `image_item`."""
    image, _ = divmod(image_item, dataset.captions_per_image)
    scene_of_caption, caption = divmod(caption_item, dataset.captions_per_image)
    return caption_is_true(dataset.scenes[image], dataset.texts[scene_of_caption][caption])


def _match_margin(itm_logits: torch.Tensor) -> torch.Tensor:
    return itm_logits[:, 1] - itm_logits[:, 0]  # (B,) > 0: "matches"


def _batches(dataset: CaptionDataset, batch_size: int, device: torch.device):
    """(start index, batch on `device`) over `dataset` in order."""
    _check_dataset(dataset)
    for start in range(0, len(dataset), batch_size):
        items = [dataset[j] for j in range(start, min(start + batch_size, len(dataset)))]
        yield start, _to(collate(items), device)


def _to(batch: dict, device: torch.device) -> dict:
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


def _median_ms(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()  # warm-up: allocator, kernels, thread pools
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _synchronize(device: torch.device) -> None:
    if device.type != "cpu" and hasattr(torch, device.type):
        getattr(torch, device.type).synchronize()


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_kind(kind) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is unknown; expected one of {KINDS}")


def _check_model(model) -> None:
    if not isinstance(model, (VisualBERTPretraining, ViLTPretraining)):
        raise TypeError(f"model must be a VisualBERTPretraining or ViLTPretraining, got {type(model).__name__}")


def _check_dataset(dataset) -> None:
    if not isinstance(dataset, CaptionDataset):
        raise TypeError(f"dataset must be a CaptionDataset, got {type(dataset).__name__}")


__all__ = ["SingleStreamRecipe", "SINGLE_STREAM_RECIPES", "single_stream_recipe", "build_single_stream",
           "training_set", "held_out_set", "train_single_stream", "measure_single_stream", "pretraining_loader",
           "swapped_captions", "itm_accuracy", "mlm_accuracy", "pipeline_timings", "parameter_count", "NEGATIVES",
           "KINDS"]
