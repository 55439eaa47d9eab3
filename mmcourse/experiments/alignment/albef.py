"""Notebook 03, section 7, ALBEF: its training pairs, recipes, ablation and measurements.

ALBEF (Li et al. 2021) is trained on noisy "web" pairs (`web_training_pairs`: the world's captions,
30% of them corrupted, `CaptionDataset(noise_rate=0.3)`, plus one caption per scene listing every
object) in four variants, each adding one idea of the paper (`ALBEF_VARIANTS`), and every variant
is measured three ways (`measure_albef`):

- retrieval: image -> text R@1 with ITC features on CLEAN held-out pairs, a caption that lists every
  object with every attribute against scenes that no two hold the same objects (notebook 02's
  protocol: `representation.sample_identifiable_scenes` and `full_caption`);
- fine-grained matching: ITM on true captions and the same captions with one attribute word
  swapped (`regions.swapped_caption_pairs`: the world's "swap" noise, which makes a caption false): the
  accuracy of the 2N decisions, the share of scenes where the true caption gets the higher match
  log-odds ("pairwise", free of the threshold), and the same pairwise test with ITC similarities;
- grounding: the pointing game of Grad-CAM maps for referring expressions against the referred
  object's pixels (`alignment.scoreboard.referring_examples`, `attention_scores`), beside the same
  for the plain cross-attention.

And why hard negatives may not help: `false_negative_rates` counts how often a drawn ITM "negative"
is in fact true of its image, for uniform and for similarity-proportional draws.

`ALBEF_RECIPES` holds the sizes per scale; `run_albef_ablation` runs it all. `ImageCaptionPairs`
(captions on shared images, with their noise tags) is also the data type of the BLIP experiment (`blip.py` beside this module).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ...metrics import recall_at_k
from ...models.albef import ALBEF, ALBEFLoss, gradcam, sample_hard_negatives, small_albef
from ...models.layers import mismatched_partners
from ...train import History, fit
from ...world.datasets import CaptionDataset, collate, images_to_tensor
from ...world.language import caption_is_true, default_tokenizer, describe, noisy_captions
from ...world.render import render_batch
from ...world.scene import Scene, check_count, check_seed, sample_scenes, scene_rng
from .regions import SwappedCaptions, swapped_caption_pairs
from .scoreboard import (ReferringExamples, attention_scores, expression_attention, patch_attention_maps,
                         referring_examples)
from ..representation import encode_images, encode_texts, full_caption, render_images, sample_identifiable_scenes

EVAL_BATCH = 128

# The ablation: each variant adds one idea of the paper to the one before.
ALBEF_VARIANTS: dict[str, dict] = {
    "ITC": dict(itm=None, alpha=0.0, mlm=False),
    "+ ITM, random negatives": dict(itm="random", alpha=0.0, mlm=False),
    "+ ITM, hard negatives": dict(itm="hard", alpha=0.0, mlm=False),
    "+ momentum distillation + MLM": dict(itm="hard", alpha=0.4, mlm=True),
}


@dataclass(frozen=True)
class AlbefRecipe:
    """Data, model and optimisation sizes of one scale."""

    n_scenes: int  # training scenes
    captions_per_image: int
    noise_rate: float  # share of noisy captions in training
    image_size: int
    patch_size: int
    width: int
    queue_size: int
    momentum: float
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    alpha_warmup_steps: int
    n_test: int  # held-out scenes for each measurement
    hard_warmup_fraction: float = 1 / 3  # share of the steps with random ITM negatives before hard ones
    pooling: str = "mean"
    image_depth: int = 2
    text_depth: int = 1
    fusion_depth: int = 2

    @property
    def embed_dim(self) -> int:
        return self.width


ALBEF_RECIPES = {
    "ci": AlbefRecipe(n_scenes=300, captions_per_image=1, noise_rate=0.3, image_size=32, patch_size=4, width=32,
                      queue_size=32, momentum=0.0, epochs=1, batch_size=32, lr=2e-3, weight_decay=0.02,
                      alpha_warmup_steps=12, n_test=100),
    "cpu": AlbefRecipe(n_scenes=1500, captions_per_image=1, noise_rate=0.3, image_size=64, patch_size=8, width=48,
                       queue_size=32, momentum=0.0, epochs=2, batch_size=32, lr=2e-3, weight_decay=0.02,
                       alpha_warmup_steps=60, n_test=200),
    "gpu": AlbefRecipe(n_scenes=20000, captions_per_image=2, noise_rate=0.3, image_size=64, patch_size=8, width=128,
                       queue_size=1024, momentum=0.99, epochs=10, batch_size=128, lr=1e-3, weight_decay=0.02,
                       alpha_warmup_steps=1000, n_test=1000),
}


def albef_recipe(scale: str) -> AlbefRecipe:
    """The recipe of "ci", "cpu" or "gpu"."""
    if scale not in ALBEF_RECIPES:
        raise ValueError(f"scale={scale!r} is unknown; expected one of {tuple(ALBEF_RECIPES)}")
    return ALBEF_RECIPES[scale]


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


class ImageCaptionPairs(Dataset):
    """Captions on shared images: item j is image `image_index[j]` with caption `tokens[j]`.

    images (M, 3, H, W) float in [0, 1]; image_index (P,) long; tokens (P, L) long, `<bos>`..`<eos>`
    wrapped; is_noisy (P,) bool, the noise tag of each caption. Items {"image", "tokens", "index",
    "is_noisy"}; batch them with `world.datasets.collate`.
    """

    def __init__(self, images: torch.Tensor, image_index: torch.Tensor, tokens: torch.Tensor,
                 is_noisy: torch.Tensor | None = None):
        if len(image_index) != len(tokens) or not len(tokens):
            raise ValueError(f"image_index has {len(image_index)} entries and tokens {len(tokens)}; expected the "
                             f"same non-zero number of pairs")
        if int(image_index.min()) < 0 or int(image_index.max()) >= len(images):
            raise ValueError(f"image_index holds [{int(image_index.min())}, {int(image_index.max())}]; expected "
                             f"[0, {len(images)}), rows of images")
        is_noisy = torch.zeros(len(tokens), dtype=torch.bool) if is_noisy is None else is_noisy.bool()
        if is_noisy.shape != (len(tokens),):
            raise ValueError(f"is_noisy has shape {tuple(is_noisy.shape)}; expected ({len(tokens)},)")
        self.images, self.image_index, self.tokens, self.is_noisy = images, image_index.long(), tokens.long(), is_noisy

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict:
        image = int(self.image_index[index])
        return {"image": self.images[image], "tokens": self.tokens[index], "index": image,
                "is_noisy": bool(self.is_noisy[index])}

    def subset(self, keep: torch.Tensor) -> "ImageCaptionPairs":
        """The pairs where (P,) bool `keep` is True, on the same images."""
        if keep.shape != (len(self),) or keep.dtype != torch.bool:
            raise ValueError(f"keep must be a bool tensor of shape ({len(self)},), "
                             f"got {keep.dtype} {tuple(keep.shape)}")
        return ImageCaptionPairs(self.images, self.image_index[keep], self.tokens[keep], self.is_noisy[keep])

    @classmethod
    def concat(cls, first: "ImageCaptionPairs", second: "ImageCaptionPairs") -> "ImageCaptionPairs":
        """The pairs of both, on the images they share; tokens padded to the longer width."""
        if first.images is not second.images:
            raise ValueError("first and second must share the same images tensor")
        width = max(first.tokens.shape[1], second.tokens.shape[1])
        tokens = [F.pad(t, (0, width - t.shape[1]), value=default_tokenizer().pad_id)
                  for t in (first.tokens, second.tokens)]
        return cls(first.images, torch.cat([first.image_index, second.image_index]), torch.cat(tokens),
                   torch.cat([first.is_noisy, second.is_noisy]))

    @classmethod
    def from_captions(cls, dataset: CaptionDataset) -> "ImageCaptionPairs":
        """Every pair of a `CaptionDataset`, noise tags included."""
        if not isinstance(dataset, CaptionDataset):
            raise TypeError(f"dataset must be a CaptionDataset, got {type(dataset).__name__}")
        arrays, per_image = dataset.arrays, dataset.captions_per_image
        return cls(images_to_tensor(arrays["images"]), torch.arange(len(dataset)) // per_image,
                   torch.from_numpy(arrays["tokens"].reshape(len(dataset), -1)),
                   torch.from_numpy(arrays["is_noisy"].reshape(-1)))


def with_full_captions(dataset: CaptionDataset, seed: int) -> ImageCaptionPairs:
    """Every pair of `dataset` plus, for each of its scenes, one clean caption listing every object
    with every attribute (`representation.full_caption`, in an order drawn from `seed`)."""
    pairs = ImageCaptionPairs.from_captions(dataset)
    texts = [full_caption(scene, scene_rng(check_seed(seed), i, "full caption"))
             for i, scene in enumerate(dataset.scenes)]
    tokens = torch.from_numpy(default_tokenizer().encode_batch(texts, dataset.max_length, "bos_eos"))
    return ImageCaptionPairs.concat(pairs, ImageCaptionPairs(pairs.images, torch.arange(len(texts)), tokens))


def web_training_pairs(recipe: AlbefRecipe, seed: int) -> ImageCaptionPairs:
    """The web-like training pairs: `recipe.n_scenes` scenes (`CaptionDataset(..., seed)`), each with
    `captions_per_image` world captions, a share `noise_rate` of them noisy, and one caption listing
    every object with every attribute (`with_full_captions`: the long alt-text of a web image).

    Why the long caption: the world's short captions often fit many scenes ("a red circle" is true
    of a third of them), so a from-scratch model learns from them alone too slowly for a notebook;
    with one specific caption per scene ITC aligns within a few hundred steps (measured: image ->
    text R@5 among 100 held-out scenes 0.09 without, 0.69 with, after 300 steps).
    """
    world = CaptionDataset(recipe.n_scenes, check_seed(seed), image_size=recipe.image_size,
                           captions_per_image=recipe.captions_per_image, noise_rate=recipe.noise_rate)
    return with_full_captions(world, seed)


def build_albef(recipe: AlbefRecipe, seed: int) -> ALBEF:
    """A fresh ALBEF of the recipe's sizes, initialised from `seed`."""
    torch.manual_seed(check_seed(seed))
    return small_albef(recipe.image_size, patch_size=recipe.patch_size, width=recipe.width,
                       embed_dim=recipe.embed_dim, queue_size=recipe.queue_size, momentum=recipe.momentum,
                       pooling=recipe.pooling, image_depth=recipe.image_depth, text_depth=recipe.text_depth,
                       fusion_depth=recipe.fusion_depth)


def train_albef(dataset, variant: dict, recipe: AlbefRecipe, seed: int = 0, device=None,
                progress: bool = False) -> tuple[ALBEF, History, float]:
    """(model, history, seconds): a fresh ALBEF trained on `dataset` with the loss flags `variant`
    (`itm`, `alpha`, `mlm`; see `ALBEFLoss`): AdamW, a one-cycle learning rate (10% warm-up), the
    last incomplete batch dropped (the queue and hard negatives want full batches); hard ITM
    negatives start after `recipe.hard_warmup_fraction` of the steps, alpha ramps up over
    `recipe.alpha_warmup_steps`."""
    seed = check_seed(seed)
    model = build_albef(recipe, seed)
    loader = DataLoader(dataset, batch_size=recipe.batch_size, shuffle=True, collate_fn=collate, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    steps = recipe.epochs * len(loader)
    loss_fn = ALBEFLoss(**variant, seed=seed, alpha_warmup_steps=recipe.alpha_warmup_steps,
                        hard_warmup_steps=int(recipe.hard_warmup_fraction * steps))

    def one_cycle(optimizer):
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=steps, pct_start=0.1)

    started = time.perf_counter()
    history = fit(model, loader, loss_fn, epochs=recipe.epochs, lr=recipe.lr, weight_decay=recipe.weight_decay,
                  scheduler=one_cycle, scheduler_every="batch", device=device, progress=progress)
    return model, history, time.perf_counter() - started


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


@dataclass
class AlbefTestSets:
    """The three held-out sets: retrieval (images, full captions), swapped captions, referring expressions."""

    retrieval_images: torch.Tensor
    retrieval_texts: list[str]
    swapped: SwappedCaptions
    referring: ReferringExamples


def albef_test_sets(n: int, seed: int, image_size: int) -> AlbefTestSets:
    """`n` held-out examples of each measurement, drawn from seeds `seed + 1`, `seed + 2`, `seed + 3`
    (pass a seed different from training's)."""
    n, seed, image_size = check_count("n", n, 2), check_seed(seed), check_count("image_size", image_size, 1)
    scenes = sample_identifiable_scenes(n, seed + 1, num_objects=3)
    texts = [full_caption(scene, scene_rng(seed + 1, i, "captions")) for i, scene in enumerate(scenes)]
    return AlbefTestSets(retrieval_images=render_images(scenes, image_size), retrieval_texts=texts,
                         swapped=swapped_caption_pairs(n, seed + 2, image_size),
                         referring=referring_examples(n, seed + 3, image_size))


def image_to_text_recall(model: ALBEF, images: torch.Tensor, texts: list[str], k: int = 1) -> float:
    """Image -> text R@k with ITC features: image i's caption is text i."""
    return recall_at_k(encode_images(model, images) @ encode_texts(model, texts).T, k)


@torch.no_grad()
def swap_matching(model: ALBEF, pairs: SwappedCaptions, batch_size: int = EVAL_BATCH) -> dict[str, float]:
    """ITM and ITC on true vs one-word-swapped captions of the same image.

    "itm_accuracy": share of the 2N (image, caption) pairs ITM classifies right (true -> match,
    swapped -> no match); "itm_pairwise": share of images whose true caption gets the higher
    match log-odds; "itc_pairwise": share whose true caption has the higher ITC similarity.
    Chance is 0.5 for all.
    """
    if not isinstance(pairs, SwappedCaptions):
        raise TypeError(f"pairs must be SwappedCaptions, got {type(pairs).__name__}")
    model.eval()
    device = model.raw_temperature.device
    odds, similarity = {"true": [], "swapped": []}, {"true": [], "swapped": []}
    for start in range(0, len(pairs), check_count("batch_size", batch_size, 1)):
        images = pairs.images[start:start + batch_size].to(device)
        image_features = model.encode_image(images)  # (b, D)
        for name, texts in (("true", pairs.true_texts), ("swapped", pairs.swapped_texts)):
            ids = _trim(model.tokenize(texts[start:start + batch_size]))
            logits = model.itm_logits(images, ids).float().cpu()  # (b, 2)
            odds[name].append(logits[:, 1] - logits[:, 0])
            similarity[name].append((image_features * model.encode_text(ids)).sum(1).float().cpu())
    true, swapped = torch.cat(odds["true"]), torch.cat(odds["swapped"])
    true_similarity, swapped_similarity = torch.cat(similarity["true"]), torch.cat(similarity["swapped"])
    return {"itm_accuracy": float(((true > 0).sum() + (swapped <= 0).sum()) / (2 * len(true))),
            "itm_pairwise": float((true > swapped).float().mean()),
            "itc_pairwise": float((true_similarity > swapped_similarity).float().mean())}


def gradcam_pointing(model: ALBEF, examples: ReferringExamples, layer: int | None = None,
                     batch_size: int = EVAL_BATCH, method: str = "gradcam") -> dict[str, float]:
    """The pointing game and mass inside of word -> patch maps for referring expressions, each map
    the mean over the words that name the referred object, against its pixels; with the chance
    level of the mass (`alignment.attention_scores`). `method`: "gradcam" (`albef.gradcam`) or
    "attention" (`ALBEF.word_patch_attention`), both from fusion layer `layer` (default
    `albef.ATTENTION_LAYER`)."""
    if method not in ("gradcam", "attention"):
        raise ValueError(f"method={method!r} is unknown; expected 'gradcam' or 'attention'")
    model.eval()
    device = model.raw_temperature.device
    kwargs = {} if layer is None else {"layer": layer}
    read = gradcam if method == "gradcam" else lambda m, images, ids, **kw: m.word_patch_attention(images, ids, **kw)
    maps = []
    for start in range(0, len(examples), check_count("batch_size", batch_size, 1)):
        rows = slice(start, start + batch_size)
        ids = _trim(examples.ids[rows])
        token_maps = read(model, examples.images[rows].to(device), ids.to(device), **kwargs).cpu()  # (b, L, N)
        maps.append(expression_attention(token_maps, examples.target_tokens[rows, :ids.shape[1]]))  # (b, N)
    grids = patch_attention_maps(torch.cat(maps).double() + 1e-12)  # a map of zeros reads as uniform: no hit
    return attention_scores(grids, examples.target_masks)


@torch.no_grad()
def false_negative_rates(model: ALBEF, n: int, seed: int, image_size: int, batch_size: int = 32,
                         draws: int = 4) -> dict[str, float]:
    """How often an ITM "negative" is in fact TRUE of its image, for random and for hard negatives.

    `n` held-out scenes (`sample_scenes(n, seed)`), each with one world caption (`describe`), are cut
    into batches of `batch_size` as in training; in each batch every image draws `draws` negatives
    among the other captions, uniformly (`mismatched_partners`, ITM with random negatives) and in
    proportion to `model`'s ITC similarity (`sample_hard_negatives`), and the world says whether the
    drawn caption is true of the image (`caption_is_true`: "a red circle" fits many scenes).
    Returns "random" and "hard", the share of drawn negatives that are true, and "similarity_gap",
    the mean ITC similarity of the true minus the false other captions.
    """
    n, batch_size = check_count("n", n, 2), check_count("batch_size", batch_size, 2)
    draws, seed = check_count("draws", draws, 1), check_seed(seed)
    scenes = sample_scenes(n, seed)
    texts = [describe(scene, seed, 1)[0] for scene in scenes]
    truth = torch.tensor([[caption_is_true(scene, text) for text in texts] for scene in scenes])  # (n, n)
    image_features = encode_images(model, images_to_tensor(render_batch(scenes, image_size)))  # (n, D)
    similarity = image_features @ encode_texts(model, texts).T / float(model.temperature)  # (n, n)
    generator = torch.Generator().manual_seed(seed)
    true_drawn, gaps = {"random": [], "hard": []}, []
    for start in range(0, n - batch_size + 1, batch_size):
        rows = slice(start, start + batch_size)
        block, block_truth = similarity[rows, rows], truth[rows, rows]  # (b, b) each
        for _ in range(draws):
            for name, drawn in (("random", mismatched_partners(batch_size, generator)),
                                ("hard", sample_hard_negatives(block, generator))):
                true_drawn[name].append(block_truth[torch.arange(batch_size), drawn])  # (b,)
        others = ~torch.eye(batch_size, dtype=torch.bool)
        if (block_truth & others).any() and (~block_truth & others).any():
            gaps.append(float(block[block_truth & others].mean() - block[~block_truth & others].mean()))
    if not true_drawn["random"]:
        raise ValueError(f"n={n} is smaller than batch_size={batch_size}; expected at least one batch")
    rates = {name: float(torch.cat(found).float().mean()) for name, found in true_drawn.items()}
    return {**rates, "similarity_gap": sum(gaps) / len(gaps) if gaps else float("nan")}


def measure_albef(model: ALBEF, tests: AlbefTestSets) -> dict[str, float]:
    """Every measurement of one trained model in one flat dict."""
    scores = {"i2t_R@1": image_to_text_recall(model, tests.retrieval_images, tests.retrieval_texts)}
    scores.update(swap_matching(model, tests.swapped))
    pointing = gradcam_pointing(model, tests.referring)
    scores.update(pointing_game=pointing["pointing_game"], mass_inside=pointing["mass_inside"],
                  mass_chance=pointing["chance"])
    attention = gradcam_pointing(model, tests.referring, method="attention")
    scores.update(attention_pointing_game=attention["pointing_game"], attention_mass_inside=attention["mass_inside"])
    return scores


def run_albef_ablation(recipe: AlbefRecipe, seed: int = 0, variants: dict[str, dict] | None = None,
                       device=None, progress: bool = False) -> tuple[dict[str, dict], dict[str, ALBEF]]:
    """({variant name: {measurements..., "seconds", "history"}}, {variant name: trained model}) for
    every variant of the ablation, all trained on the same noisy pairs with the same seed and
    measured on the same held-out sets."""
    variants = ALBEF_VARIANTS if variants is None else variants
    train = web_training_pairs(recipe, seed)
    tests = albef_test_sets(recipe.n_test, seed + 100, recipe.image_size)
    results, models = {}, {}
    for name, variant in variants.items():
        model, history, seconds = train_albef(train, variant, recipe, seed, device, progress)
        results[name] = {**measure_albef(model, tests), "seconds": seconds, "history": history}
        models[name] = model
    return results, models


def _trim(ids: torch.Tensor) -> torch.Tensor:
    """`ids` without the all-padding columns at the end."""
    used = (ids != 0).any(0)  # (L,)
    return ids[:, : int(used.nonzero().max()) + 1] if used.any() else ids[:, :1]
