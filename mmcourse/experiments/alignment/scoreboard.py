"""Notebook 03: the attention scoreboard, shared by every model of the notebook.

The notebook trains every alignment model of the lecture on the embedded world (the models live in
`mmcourse.models`); this module holds what the experiments need around them, above all the
*scoreboard*: the world knows which words name which object and where each object's pixels are,
so any model's attention from a word to the image can be measured instead of believed.

- Referring expressions with their target words: `referring_examples` draws scenes, one expression
  per scene ("the red circle left of the blue square") from `mmcourse.world.language.refer_with_spans`,
  and marks the tokens that name the referred object (not the landmark).
- Attention to pixels: a region model's weights over boxes are spread evenly over each object's
  pixels (`region_attention_maps`); a patch model's weights form a grid (`patch_attention_maps`).
- `attention_scores`: `metrics.attention_grounding` (mass inside the object, pointing game) next to
  the chance level, the object's share of the picture; `score_expressions` does it all for one
  model's per-token attention.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ...metrics import attention_grounding
from ...models.encoders import check_tensor
from ...world.datasets import images_to_tensor
from ...world.language import default_tokenizer, refer_with_spans
from ...world.render import render
from ...world.scene import Scene, check_count, check_seed, sample_scenes, scene_rng

WRAP_OFFSET = 1  # `<bos>` before the first word shifts word positions by one in the token ids
UNITS = ("regions", "patches")  # what a model attends to: the boxes of the objects, or a grid of patches


# --------------------------------------------------------------------------------------------
# Referring expressions
# --------------------------------------------------------------------------------------------


@dataclass
class ReferringExamples:
    """N scenes, each with one referring expression and its ground truth.

    images (N, 3, H, W) float in [0, 1]; boxes (N, K, 4) xyxy pixels (rows past num_objects are
    zero); num_objects (N,); masks (N, H, W) int instance masks (k + 1 on object k); targets (N,)
    the referred object; texts; ids (N, L) `<bos>`..`<eos>` token ids; target_tokens (N, L) bool,
    True on the tokens that name the referred object.
    """

    scenes: list[Scene]
    images: torch.Tensor
    boxes: torch.Tensor
    num_objects: torch.Tensor
    masks: torch.Tensor
    targets: torch.Tensor
    texts: list[str]
    ids: torch.Tensor
    target_tokens: torch.Tensor

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def region_mask(self) -> torch.Tensor:
        """(N, K) bool, True on real boxes."""
        return torch.arange(self.boxes.shape[1])[None, :] < self.num_objects[:, None]

    @property
    def target_masks(self) -> torch.Tensor:
        """(N, H, W) bool pixels of the referred object."""
        return self.masks == (self.targets + 1)[:, None, None]


def referring_examples(n: int, seed: int, image_size: int, max_length: int = 24,
                       preset: str = "default") -> ReferringExamples:
    """`n` scenes of `preset`, each with a referring expression for one object that can be singled out.

    Scene i depends only on (seed, i): its referred object is drawn among those the world can
    single out; a scene where none can be is skipped and the next one drawn.
    """
    n, seed = check_count("n", n, 1), check_seed(seed)
    image_size = check_count("image_size", image_size, 1)
    scenes, expressions, targets = [], [], []
    pool = sample_scenes(3 * n + 10, seed, preset)
    for i, scene in enumerate(pool):
        if len(scenes) == n:
            break
        expression = _random_expression(scene, seed, i)
        if expression is not None:
            scenes.append(scene)
            targets.append(expression[0])
            expressions.append(expression[1])
    if len(scenes) < n:
        raise ValueError(f"only {len(scenes)} of n={n} scenes could be referred to; ask for fewer")
    return _examples(scenes, targets, expressions, image_size, max_length)


def expressions_of(scene: Scene, seed: int, image_size: int, max_length: int = 24) -> ReferringExamples:
    """Every object of `scene` that can be singled out, each with its referring expression
    (`refer_with_spans(scene, index, seed)`): one row per such object, in index order."""
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    seed, image_size = check_seed(seed), check_count("image_size", image_size, 1)
    targets, expressions = [], []
    for index in range(len(scene)):
        try:
            expressions.append(refer_with_spans(scene, index, seed))
        except ValueError:  # this object cannot be singled out
            continue
        targets.append(index)
    if not targets:
        raise ValueError("no object of scene can be singled out by a referring expression")
    return _examples([scene] * len(targets), targets, expressions, image_size, max_length)


def _examples(scenes: list[Scene], targets: list[int], expressions: list, image_size: int,
              max_length: int) -> ReferringExamples:
    """The tensors of `ReferringExamples` for scenes, referred objects and their `Caption`s."""
    n = len(scenes)
    tokenizer = default_tokenizer()
    pictures = [render(scene, image_size) for scene in scenes]
    capacity = max(len(scene) for scene in scenes)
    boxes = np.zeros((n, capacity, 4), np.float32)
    for row, picture in enumerate(pictures):
        boxes[row, :len(picture.boxes)] = picture.boxes
    texts = [caption.text for caption in expressions]
    ids = torch.from_numpy(tokenizer.encode_batch(texts, max_length, "bos_eos"))
    target_tokens = torch.zeros(ids.shape, dtype=torch.bool)
    for row, (caption, target) in enumerate(zip(expressions, targets)):
        for start, end, index in caption.spans:
            if index == target:
                target_tokens[row, start + WRAP_OFFSET:end + WRAP_OFFSET] = True
    return ReferringExamples(
        scenes=list(scenes), images=images_to_tensor(np.stack([p.image for p in pictures])),
        boxes=torch.from_numpy(boxes), num_objects=torch.tensor([len(s) for s in scenes]),
        masks=torch.from_numpy(np.stack([p.instance_mask for p in pictures]).astype(np.int64)),
        targets=torch.tensor(targets), texts=texts, ids=ids, target_tokens=target_tokens)


def _random_expression(scene: Scene, seed: int, index: int):
    """(object index, Caption) for a random object of `scene` that can be singled out, or None."""
    rng = scene_rng(seed, index, "refer-target")
    for target in rng.permutation(len(scene)):
        try:
            return int(target), refer_with_spans(scene, int(target), seed)
        except ValueError:  # this object cannot be singled out; try another
            continue
    return None


# --------------------------------------------------------------------------------------------
# Attention on pixels
# --------------------------------------------------------------------------------------------


def expression_attention(token_attention: torch.Tensor, target_tokens: torch.Tensor) -> torch.Tensor:
    """(N, U) mean attention of each expression's target tokens over U image units, from
    (N, L, U) per-token attention and the (N, L) bool target tokens."""
    check_tensor("token_attention", token_attention, 3, floating=True)
    if not isinstance(target_tokens, torch.Tensor) or target_tokens.dtype != torch.bool:
        raise TypeError("target_tokens must be a bool tensor (N, L)")
    if target_tokens.shape != token_attention.shape[:2]:
        raise ValueError(f"target_tokens has shape {tuple(target_tokens.shape)}; expected "
                         f"{tuple(token_attention.shape[:2])}, the (N, L) of token_attention")
    if not target_tokens.any(1).all():
        raise ValueError("target_tokens has a row with no token selected")
    weights = target_tokens.to(token_attention.dtype)[:, :, None]  # (N, L, 1)
    return (token_attention * weights).sum(1) / weights.sum(1)  # (N, U)


def region_attention_maps(region_weights: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """(N, H, W) pixel maps of (N, K) weights over objects: object k's weight spread evenly over its
    pixels (`masks == k + 1`), so a map's mass on an object equals the weight of its region."""
    check_tensor("region_weights", region_weights, 2, floating=True)
    check_tensor("masks", masks, 3, floating=False)
    if len(masks) != len(region_weights):
        raise ValueError(f"masks has N={len(masks)} but region_weights N={len(region_weights)}")
    weights = region_weights.detach().cpu().double().numpy()
    masks = masks.cpu().numpy()
    maps = np.zeros(masks.shape, np.float64)
    for k in range(weights.shape[1]):
        pixels = masks == k + 1  # (N, H, W)
        area = pixels.sum((1, 2), keepdims=True)  # (N, 1, 1)
        maps += np.where(pixels, weights[:, k, None, None] / np.maximum(area, 1), 0.0)
    return maps


def patch_attention_maps(patch_weights: torch.Tensor) -> np.ndarray:
    """(N, g, g) grid maps of (N, g * g) weights over patches in row-major order."""
    check_tensor("patch_weights", patch_weights, 2, floating=True)
    grid = int(round(patch_weights.shape[1] ** 0.5))
    if grid * grid != patch_weights.shape[1]:
        raise ValueError(f"patch_weights has {patch_weights.shape[1]} patches; expected a square number g * g")
    return patch_weights.detach().cpu().double().numpy().reshape(-1, grid, grid)


def attention_scores(maps: np.ndarray, regions: torch.Tensor | np.ndarray) -> dict[str, float]:
    """`metrics.attention_grounding` of (N, h, w) `maps` against (N, H, W) bool `regions`, with the
    chance level of "mass_inside": the mean share of the picture each region covers."""
    regions = regions.cpu().numpy() if isinstance(regions, torch.Tensor) else np.asarray(regions)
    scores = attention_grounding(np.clip(maps, 0.0, None), regions)
    scores["chance"] = float(regions.mean((1, 2)).mean())
    return scores


def score_expressions(token_attention: torch.Tensor, examples: ReferringExamples,
                      units: str) -> tuple[dict[str, float], np.ndarray]:
    """(scores, maps) of a model's (N, L, U) per-token attention over U image `units` ("regions":
    the examples' boxes; "patches": a square grid) for the referring expressions of `examples`.

    The expression's attention is the mean over its target tokens (`expression_attention`); the
    scores are `attention_scores` against the referred objects' masks, plus "chance_regions" for
    region models: the mass a uniform choice among the scene's boxes puts on the right one.
    """
    if units not in UNITS:
        raise ValueError(f"units={units!r} is unknown; expected one of {UNITS}")
    weights = expression_attention(token_attention.detach().float().cpu(), examples.target_tokens)  # (N, U)
    if units == "regions":
        maps = region_attention_maps(weights, examples.masks)
    else:
        maps = patch_attention_maps(weights)
    scores = attention_scores(maps, examples.target_masks)
    scores["chance_regions"] = float((1.0 / examples.num_objects.double()).mean())
    return scores, maps
