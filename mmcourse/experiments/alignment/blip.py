"""Notebook 03, section 8, BLIP CapFilt: captioner, filter, bootstrapping and retrieval.

BLIP (Li et al. 2022) bootstraps its data: a captioner and a filter, both fine-tuned on a small set
of clean pairs, clean a large noisy "web" set. Here:

1. a small CLEAN set (`CaptionDataset(noise_rate=0)`) trains the captioner (`blip.Captioner`, LM
   loss) and the filter (an `albef.ALBEF` trained with ITC and ITM with hard negatives);
2. a larger WEB set (`CaptionDataset(noise_rate=...)`, its noise tags `is_noisy` known to us but
   not to the models) is bootstrapped: the filter scores every web caption; the captioner writes
   one synthetic caption per web image by nucleus sampling; the filter scores those too;
3. a fresh small retrieval model (`clip.small_clip`) trains on (a) the raw web pairs, (b) the
   filtered web pairs, (c) the filtered web pairs plus the filtered synthetic ones, each for the
   same number of steps (so only the data differ), and is measured by image -> text R@1 on clean
   held-out pairs (a caption listing every object, scenes that no two hold the same objects).

Measurements of the bootstrapping itself (`filter_quality`, `caption_truth`): the filter's
precision and recall on the web captions, with "keep" as the positive class and the CLEAN
captions as the ones to keep,

    precision = clean captions kept / captions kept        (how clean the kept set is)
    recall    = clean captions kept / clean captions       (how much of the clean data survives),

and the share of generated captions that are TRUE of their scene (`world.language.caption_is_true`;
text outside the world's grammar counts as not true, and its share is reported as well).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from ...metrics import recall_at_k
from ...models.albef import ALBEF, ALBEFLoss
from ...models.blip import Captioner, captioning_loss, generate, match_probability
from ...models.clip import CLIP, clip_training_loss, small_clip
from ...train import History, fit
from ...world.datasets import CaptionDataset, collate
from ...world.language import caption_is_true, default_tokenizer
from ...world.scene import Scene, check_count, check_seed, scene_rng
from .albef import ImageCaptionPairs, with_full_captions
from ..representation import encode_images, encode_texts, full_caption, render_images, sample_identifiable_scenes

EVAL_BATCH = 256
SWEEP_THRESHOLDS = (0.2, 0.3, 1 / 3, 0.4, 0.5, 0.6)


@dataclass(frozen=True)
class CapFiltRecipe:
    """Data, model and optimisation sizes of one scale."""

    n_clean: int  # scenes of the small clean set
    n_web: int  # scenes of the noisy web set
    captions_per_image: int
    web_noise_rate: float
    image_size: int
    patch_size: int
    width: int  # captioner and filter
    captioner_epochs: int
    filter_epochs: int
    batch_size: int
    lr: float
    retrieval_steps: int  # optimisation steps of each retrieval model
    retrieval_batch: int
    retrieval_width: int
    retrieval_lr: float
    n_test: int
    top_p: float = 0.9
    # Keep a caption when p(match) > 1/3: ITM trains on one match for every two non-matches (ALBEF's B
    # positives and 2B negatives), so its p(match) carries a prior of 1/3; above it, the image and text
    # favour "match" (likelihood ratio > 1). 0.5 would ask for twice that evidence.
    threshold: float = 1 / 3
    max_caption_length: int = 40  # a caption listing six objects has 37 tokens
    filter_momentum: float = 0.0  # see albef.ALBEF_RECIPES: an EMA slower than training holds ITC back
    filter_queue: int = 32
    pooling: str = "mean"
    # ITM negatives of the filter: "random", or "hard" (after a third of random). BLIP's are hard; from
    # scratch at these sizes hard ones left ITM near "never a match" (see the albef module's measurements)
    filter_negatives: str = "random"


CAPFILT_RECIPES = {
    "ci": CapFiltRecipe(n_clean=200, n_web=300, captions_per_image=2, web_noise_rate=0.4, image_size=32,
                        patch_size=4, width=32, captioner_epochs=2, filter_epochs=2, batch_size=32, lr=2e-3,
                        retrieval_steps=40, retrieval_batch=64, retrieval_width=32, retrieval_lr=2e-3, n_test=100),
    "cpu": CapFiltRecipe(n_clean=1000, n_web=2000, captions_per_image=2, web_noise_rate=0.4, image_size=64,
                         patch_size=8, width=48, captioner_epochs=3, filter_epochs=3, batch_size=32, lr=2e-3,
                         retrieval_steps=200, retrieval_batch=64, retrieval_width=48, retrieval_lr=2e-3, n_test=500),
    "gpu": CapFiltRecipe(n_clean=5000, n_web=20000, captions_per_image=3, web_noise_rate=0.4, image_size=64,
                         patch_size=8, width=128, captioner_epochs=15, filter_epochs=15, batch_size=128, lr=1e-3,
                         retrieval_steps=3000, retrieval_batch=256, retrieval_width=128, retrieval_lr=1e-3,
                         n_test=1000),
}


def capfilt_recipe(scale: str) -> CapFiltRecipe:
    """The recipe of "ci", "cpu" or "gpu"."""
    if scale not in CAPFILT_RECIPES:
        raise ValueError(f"scale={scale!r} is unknown; expected one of {tuple(CAPFILT_RECIPES)}")
    return CAPFILT_RECIPES[scale]


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def clean_and_web_sets(recipe: CapFiltRecipe, seed: int) -> tuple[ImageCaptionPairs, CaptionDataset]:
    """(clean, web). clean: `n_clean` scenes (seed `seed`), each with `captions_per_image` true world
    captions and one caption listing every object with every attribute: the small, carefully
    written set (BLIP's COCO). web: `n_web` other scenes (seed `seed + 1`) with world captions only,
    a share `web_noise_rate` corrupted (tagged in `is_noisy`, which the models never see)."""
    seed = check_seed(seed)
    clean = CaptionDataset(recipe.n_clean, seed, image_size=recipe.image_size,
                           captions_per_image=recipe.captions_per_image)
    web = CaptionDataset(recipe.n_web, seed + 1, image_size=recipe.image_size,
                         captions_per_image=recipe.captions_per_image, noise_rate=recipe.web_noise_rate)
    return with_full_captions(clean, seed), web


# --------------------------------------------------------------------------------------------
# Captioner and filter
# --------------------------------------------------------------------------------------------


def _loader(dataset, batch_size: int, seed: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate, drop_last=True,
                      generator=torch.Generator().manual_seed(seed))


def _one_cycle(lr: float, steps: int):
    def factory(optimizer):
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    return factory


def train_captioner(clean: ImageCaptionPairs, recipe: CapFiltRecipe, seed: int = 0, device=None,
                    progress: bool = False) -> tuple[Captioner, History, float]:
    """(captioner, history, seconds): a `blip.Captioner` trained with the LM loss on the clean pairs."""
    torch.manual_seed(check_seed(seed))
    model = Captioner(recipe.image_size, recipe.patch_size, recipe.width, max_length=clean.tokens.shape[1])
    loader = _loader(clean, recipe.batch_size, seed)
    started = time.perf_counter()
    history = fit(model, loader, captioning_loss, epochs=recipe.captioner_epochs, lr=recipe.lr, weight_decay=0.02,
                  scheduler=_one_cycle(recipe.lr, recipe.captioner_epochs * len(loader)), scheduler_every="batch",
                  device=device, progress=progress)
    return model, history, time.perf_counter() - started


def train_filter(clean: ImageCaptionPairs, recipe: CapFiltRecipe, seed: int = 0, device=None,
                 progress: bool = False) -> tuple[ALBEF, History, float]:
    """(filter, history, seconds): an `albef.ALBEF` trained with ITC and ITM with hard negatives on
    the clean pairs (BLIP fine-tunes its filter with ITC and ITM on COCO)."""
    torch.manual_seed(check_seed(seed))
    model = ALBEF(recipe.image_size, recipe.patch_size, recipe.width, recipe.width, max_length=clean.tokens.shape[1],
                  queue_size=recipe.filter_queue, momentum=recipe.filter_momentum, pooling=recipe.pooling)
    loader = _loader(clean, recipe.batch_size, seed)
    loss_fn = ALBEFLoss(itm=recipe.filter_negatives, alpha=0.0, mlm=False, seed=seed,
                        hard_warmup_steps=len(loader) * recipe.filter_epochs // 3)
    started = time.perf_counter()
    history = fit(model, loader, loss_fn, epochs=recipe.filter_epochs, lr=recipe.lr, weight_decay=0.02,
                  scheduler=_one_cycle(recipe.lr, recipe.filter_epochs * len(loader)), scheduler_every="batch",
                  device=device, progress=progress)
    return model, history, time.perf_counter() - started


@torch.no_grad()
def score_pairs(filter_model: ALBEF, pairs: ImageCaptionPairs, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """(P,) the filter's p(match) of every pair, on the CPU."""
    device = filter_model.raw_temperature.device
    scores = []
    for start in range(0, len(pairs), check_count("batch_size", batch_size, 1)):
        rows = slice(start, start + batch_size)
        images = pairs.images[pairs.image_index[rows]].to(device)
        scores.append(match_probability(filter_model, images, _trim(pairs.tokens[rows]).to(device)).float().cpu())
    return torch.cat(scores)


@torch.no_grad()
def synthetic_captions(captioner: Captioner, images: torch.Tensor, recipe: CapFiltRecipe, seed: int = 0,
                       batch_size: int = EVAL_BATCH) -> tuple[torch.Tensor, list[str]]:
    """One caption per image by nucleus sampling: ((M, L) ids padded to `recipe.max_caption_length`, texts).
    The same `seed` and `batch_size` give the same captions."""
    device = next(captioner.parameters()).device
    generator = torch.Generator().manual_seed(check_seed(seed))
    pad = captioner.tokenizer.pad_id
    ids = torch.full((len(images), recipe.max_caption_length), pad, dtype=torch.long)
    for start in range(0, len(images), check_count("batch_size", batch_size, 1)):
        batch = generate(captioner, images[start:start + batch_size].to(device), recipe.max_caption_length,
                         recipe.top_p, generator).cpu()
        ids[start:start + len(batch), :batch.shape[1]] = batch
    return ids, captioner.tokenizer.decode_batch(ids.numpy())


# --------------------------------------------------------------------------------------------
# Measurements of the bootstrapping
# --------------------------------------------------------------------------------------------


def filter_quality(keep: torch.Tensor, is_noisy: torch.Tensor) -> dict[str, float]:
    """The filter as a detector of clean captions ("keep" is the positive class):
    precision = clean kept / kept, recall = clean kept / clean; and "kept", the share kept.
    (N,) bool `keep` and `is_noisy`. Precision is NaN when nothing is kept."""
    if keep.shape != is_noisy.shape or keep.dtype != torch.bool or is_noisy.dtype != torch.bool:
        raise ValueError(f"keep and is_noisy must be bool tensors of the same shape (N,), got {keep.dtype} "
                         f"{tuple(keep.shape)} and {is_noisy.dtype} {tuple(is_noisy.shape)}")
    clean = ~is_noisy
    clean_kept = float((keep & clean).sum())
    return {"precision": clean_kept / float(keep.sum()) if keep.any() else float("nan"),
            "recall": clean_kept / max(float(clean.sum()), 1.0), "kept": float(keep.float().mean())}


def filter_sweep(scores: torch.Tensor, is_noisy: torch.Tensor,
                 thresholds: tuple[float, ...] = SWEEP_THRESHOLDS) -> dict[float, dict[str, float]]:
    """`filter_quality` of keeping captions whose p(match) `scores` (N,) exceed each threshold:
    the precision-recall trade-off of the filter."""
    return {float(t): filter_quality(scores > t, is_noisy) for t in thresholds}


def caption_truth(scenes: list[Scene], texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """((M,) bool true of its scene, (M,) bool readable in the world's grammar) for caption i of scene i."""
    if len(scenes) != len(texts):
        raise ValueError(f"scenes has {len(scenes)} items and texts {len(texts)}; expected one caption per scene")
    true, readable = np.zeros(len(texts), bool), np.zeros(len(texts), bool)
    for i, (scene, text) in enumerate(zip(scenes, texts)):
        try:
            true[i] = caption_is_true(scene, text)
            readable[i] = True
        except ValueError:  # outside the grammar: not true
            pass
    return true, readable


# --------------------------------------------------------------------------------------------
# Retrieval models on (a) raw, (b) filtered, (c) bootstrapped data
# --------------------------------------------------------------------------------------------


def train_retrieval(pairs: ImageCaptionPairs, recipe: CapFiltRecipe, seed: int = 0, device=None,
                    progress: bool = False) -> tuple[CLIP, History, float]:
    """(model, history, seconds): a fresh `small_clip(vision="cnn")` trained for exactly
    `recipe.retrieval_steps` batches drawn from `pairs` (with replacement), so data sets of
    different sizes get the same number of updates."""
    seed = check_seed(seed)
    torch.manual_seed(seed)
    model = small_clip(recipe.image_size, width=recipe.retrieval_width, embed_dim=recipe.retrieval_width,
                       vision="cnn", max_length=pairs.tokens.shape[1])
    loader = retrieval_loader(pairs, recipe, seed)
    started = time.perf_counter()
    history = fit(model, loader, clip_training_loss, epochs=1, lr=recipe.retrieval_lr, weight_decay=0.05,
                  scheduler=_one_cycle(recipe.retrieval_lr, len(loader)), scheduler_every="batch", device=device,
                  progress=progress)
    return model, history, time.perf_counter() - started


def retrieval_loader(pairs: ImageCaptionPairs, recipe: CapFiltRecipe, seed: int) -> DataLoader:
    """`recipe.retrieval_steps` batches of `recipe.retrieval_batch` pairs drawn with replacement."""
    sampler = RandomSampler(pairs, replacement=True, num_samples=recipe.retrieval_steps * recipe.retrieval_batch,
                            generator=torch.Generator().manual_seed(check_seed(seed)))
    return DataLoader(pairs, batch_size=recipe.retrieval_batch, sampler=sampler, collate_fn=collate, drop_last=True)


def retrieval_test_set(n: int, seed: int, image_size: int) -> tuple[torch.Tensor, list[str]]:
    """(images, texts): `n` held-out scenes of three objects, no two alike, each with its full caption."""
    scenes = sample_identifiable_scenes(check_count("n", n, 2), check_seed(seed), num_objects=3)
    texts = [full_caption(scene, scene_rng(seed, i, "captions")) for i, scene in enumerate(scenes)]
    return render_images(scenes, image_size), texts


def image_to_text_recall(model, images: torch.Tensor, texts: list[str], k: int = 1) -> float:
    """Image -> text R@k: image i's caption is text i."""
    return recall_at_k(encode_images(model, images) @ encode_texts(model, texts).T, k)


@dataclass
class CapFiltResult:
    """Everything `run_capfilt` measured (see the module docstring)."""

    filter_web: dict[str, float]  # precision, recall, kept of the web captions at the recipe's threshold
    filter_web_sweep: dict[float, dict[str, float]]  # the same at other thresholds
    web_true: float  # share of all web captions true of their scene
    web_kept_true: float  # share of the KEPT web captions true of their scene
    filter_synthetic_kept: float  # share of synthetic captions kept
    synthetic_true: float  # share of synthetic captions true of their scene
    synthetic_readable: float  # share inside the world's grammar
    synthetic_kept_true: float  # share of the KEPT synthetic captions that are true
    recall_at_1: dict[str, float]  # retrieval R@1 of (a), (b), (c)
    pairs: dict[str, int]  # training pairs of (a), (b), (c)
    seconds: dict[str, float]
    examples: list[tuple[str, bool, float]]  # (synthetic caption, true?, p(match)) of the first web images


def run_capfilt(recipe: CapFiltRecipe, seed: int = 0, device=None, progress: bool = False) -> CapFiltResult:
    """The whole CapFilt experiment (see the module docstring)."""
    clean, web = clean_and_web_sets(recipe, seed)
    seconds = {}
    captioner, _, seconds["captioner"] = train_captioner(clean, recipe, seed, device, progress)
    filter_model, _, seconds["filter"] = train_filter(clean, recipe, seed, device, progress)

    started = time.perf_counter()
    raw = ImageCaptionPairs.from_captions(web)
    web_scores = score_pairs(filter_model, raw)  # (N,)
    web_keep = web_scores > recipe.threshold
    synthetic_ids, synthetic_texts = synthetic_captions(captioner, raw.images, recipe, seed)
    synthetic = ImageCaptionPairs(raw.images, torch.arange(len(raw.images)), synthetic_ids)
    synthetic_scores = score_pairs(filter_model, synthetic)  # (M,)
    synthetic_keep = synthetic_scores > recipe.threshold
    true, readable = caption_truth(web.scenes, synthetic_texts)
    seconds["bootstrap"] = time.perf_counter() - started
    web_texts = [text for texts in web.texts for text in texts]
    web_true, _ = caption_truth([web.scenes[int(i)] for i in raw.image_index], web_texts)

    kept_web = raw.subset(web_keep) if web_keep.any() else None
    kept_synthetic = synthetic.subset(synthetic_keep) if synthetic_keep.any() else None
    datasets = {"(a) raw web": raw, "(b) filtered web": kept_web,
                "(c) filtered web + filtered synthetic": _concat_kept(kept_web, kept_synthetic)}
    images, texts = retrieval_test_set(recipe.n_test, seed + 100, recipe.image_size)
    recalls = {}
    for name, pairs in datasets.items():
        if pairs is None:  # the filter kept nothing: nothing to train on
            recalls[name], seconds[name] = float("nan"), 0.0
            continue
        model, _, seconds[name] = train_retrieval(pairs, recipe, seed, device, progress)
        recalls[name] = image_to_text_recall(model, images, texts)
    kept_true = true[synthetic_keep.numpy()]
    return CapFiltResult(
        filter_web=filter_quality(web_keep, raw.is_noisy), filter_web_sweep=filter_sweep(web_scores, raw.is_noisy),
        web_true=float(web_true.mean()),
        web_kept_true=float(web_true[web_keep.numpy()].mean()) if web_keep.any() else float("nan"),
        filter_synthetic_kept=float(synthetic_keep.float().mean()),
        synthetic_true=float(true.mean()), synthetic_readable=float(readable.mean()),
        synthetic_kept_true=float(kept_true.mean()) if len(kept_true) else float("nan"),
        recall_at_1=recalls, pairs={name: len(pairs) if pairs is not None else 0 for name, pairs in datasets.items()},
        seconds=seconds,
        examples=[(synthetic_texts[i], bool(true[i]), float(synthetic_scores[i])) for i in range(8)])


def _concat_kept(first: ImageCaptionPairs | None, second: ImageCaptionPairs | None) -> ImageCaptionPairs | None:
    if first is None or second is None:
        return first if second is None else second
    return ImageCaptionPairs.concat(first, second)


def _trim(ids: torch.Tensor) -> torch.Tensor:
    """`ids` without the all-padding columns at the end."""
    used = (ids != default_tokenizer().pad_id).any(0)  # (L,)
    return ids[:, : int(used.nonzero().max()) + 1] if used.any() else ids[:, :1]
