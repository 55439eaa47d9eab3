"""Data and measurements for notebook 02, multimodal representation.

The notebook trains DeViSE (Frome et al. 2013), a CLIP (Radford et al. 2021), a GLIP-style grounder
and an LSeg-style segmenter on the embedded world; the models and losses live in `mmcourse.models`.
This module holds what the experiments need around them:

- Held-out compositions, the compositional zero-shot protocol of Misra et al. (2017, "From red
  wine to red tomato") and Nagarajan & Grauman (2018): colour-shape pairs whose words never meet in
  a training caption, although both words (and the objects themselves) are seen.
- Image-caption pairs of world scenes: a caption that lists every object (it identifies its scene,
  for retrieval) plus the world's own captions, which name a few attributes at a time.
- The number of negatives on its own: a CLIP loss over groups of a batch (`grouped_clip_loss`),
  so two runs can share every batch and step and differ only in how many negatives a pair meets;
  and no negatives at all (`positives_only_loss`), which lets the embeddings collapse
  (`embedding_spread` measures it).
- A distribution shift at test time: the same scenes on another background (`recolor_background`),
  the kind of shift under which Radford et al. (2021) measured CLIP's zero-shot robustness.
- Measurements: the label-space distance of DeViSE's mistakes (Frome et al. 2013 argue that its
  errors are "more semantically reasonable"), embedding arithmetic (the multimodal analogies of
  Kiros et al. 2014), and the modality gap between image and text embeddings (Liang et al. 2022,
  "Mind the Gap").

Every random choice is seeded: item i of a seeded collection depends only on (seed, i).
"""
from __future__ import annotations

import numbers
from dataclasses import replace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..models.clip import clip_loss
from ..world.datasets import images_to_tensor
from ..world.language import Caption, default_tokenizer, describe_with_spans, split_words
from ..world.render import render_batch
from ..world.scene import BACKGROUND_RGB, Scene, check_count, check_seed, get_preset, sample_scenes, scene_rng

Pair = tuple[str, str]  # (colour, shape)

# Never named together in a training caption. Each of these colours is held out with two shapes and
# each shape with two colours, so telling the held-out pairs apart needs both words.
HELD_OUT_COMPOSITIONS: tuple[Pair, ...] = (
    ("red", "square"), ("red", "triangle"), ("green", "circle"),
    ("green", "triangle"), ("blue", "circle"), ("blue", "square"),
)
LIST_OPENING = "the picture shows"  # how a caption listing every object starts (a world template)


# --------------------------------------------------------------------------------------------
# Compositions and captions
# --------------------------------------------------------------------------------------------


def compositions(preset: str = "default") -> list[Pair]:
    """Every (colour, shape) pair of `preset`, colour-major: [("red", "circle"), ("red", "square"), ...]."""
    spec = get_preset(preset)
    return [(color, shape) for color in spec.colors for shape in spec.shapes]


def composition_name(pair: Pair) -> str:
    """'red square' for ("red", "square")."""
    return f"{pair[0]} {pair[1]}"


def _check_pairs(pairs, name: str = "held_out") -> tuple[Pair, ...]:
    if isinstance(pairs, str) or not isinstance(pairs, Sequence):
        raise TypeError(f"{name} must be a sequence of (colour, shape) pairs, got {type(pairs).__name__}")
    checked = []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(v, str) for v in pair)):
            raise ValueError(f"{name}[{i}]={pair!r}; expected a (colour, shape) tuple of two str")
        checked.append(pair)
    return tuple(checked)


def names_composition(caption: Caption, pairs: Sequence[Pair]) -> bool:
    """True when one object phrase of `caption` names both the colour and the shape of a pair in
    `pairs` ("a small red square", "two red squares"); words of different phrases do not count."""
    if not isinstance(caption, Caption):
        raise TypeError(f"caption must be a Caption (from describe_with_spans), got {type(caption).__name__}")
    pairs = _check_pairs(pairs, "pairs")
    words = caption.words
    for start, end, _ in caption.spans:
        phrase = words[start:end]
        for color, shape in pairs:
            if color in phrase and (shape in phrase or shape + "s" in phrase):
                return True
    return False


def object_phrase(obj, held_out: Sequence[Pair] = (), rng: np.random.Generator | None = None) -> str:
    """'a small red filled circle': every attribute of `obj`, except that an object of a held-out
    composition loses its colour or its shape word (chosen by `rng`): 'a small filled square' or
    'a small red filled object'."""
    color, shape = obj.color, obj.shape
    if (color, shape) in _check_pairs(held_out):
        if rng is None:
            raise ValueError(f"rng is None but the object is a held-out {color} {shape}; pass a Generator "
                             f"to choose which word to drop")
        color, shape = ("", shape) if rng.random() < 0.5 else (color, "object")
    return " ".join(word for word in ("a", obj.size, color, obj.style, shape) if word)


def full_caption(scene: Scene, rng: np.random.Generator, held_out: Sequence[Pair] = ()) -> str:
    """'the picture shows a small red filled circle, a large blue outline square and a ...': every
    object of `scene` with every attribute, in an order shuffled by `rng` (so the caption says
    *what* is there, not where). Objects of held-out compositions are named as `object_phrase` says."""
    if not isinstance(scene, Scene) or len(scene) == 0:
        raise ValueError(f"scene must be a Scene with at least one object, got {scene!r}")
    order = rng.permutation(len(scene))
    phrases = [object_phrase(scene.objects[i], held_out, rng) for i in order]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{LIST_OPENING} {listed}"


def scene_captions(scene: Scene, seed: int, index: int, n: int, held_out: Sequence[Pair] = ()) -> list[str]:
    """`n` captions of scene `index` of a seeded collection: its `full_caption`, then world captions
    (`describe_with_spans`) that name no held-out composition. When too few of those qualify, more
    full captions (in other orders) fill the list."""
    n = check_count("n", n, 1)
    held_out = _check_pairs(held_out)
    rng = scene_rng(check_seed(seed), check_count("index", index), "captions")
    described = [c.text for c in describe_with_spans(scene, seed, 2 * n) if not names_composition(c, held_out)]
    captions = [full_caption(scene, rng, held_out)] + described[: n - 1]
    while len(captions) < n:
        captions.append(full_caption(scene, rng, held_out))
    return captions


# --------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------


def sample_mixed_scenes(n: int, seed: int, counts: Sequence[int] = (1, 2, 3), preset: str = "default") -> list[Scene]:
    """`n` scenes whose object counts are drawn from `counts`; scene i depends only on (seed, i)."""
    n, seed = check_count("n", n), check_seed(seed)
    if isinstance(counts, (str, bytes)) or not isinstance(counts, Sequence) or not counts:
        raise ValueError(f"counts must be a non-empty sequence of object counts, got {counts!r}")
    counts = [check_count("every count in counts", k, 1) for k in counts]
    scenes = []
    for i in range(n):
        rng = scene_rng(seed, i, "mixed")
        count = counts[int(rng.integers(len(counts)))]
        scene_seed = int(rng.integers(2**31))
        scenes.append(sample_scenes(1, scene_seed, preset, num_objects=count)[0])
    return scenes


def single_object_scenes(n: int, seed: int, pairs: Sequence[Pair], preset: str = "default") -> list[Scene]:
    """`n` one-object scenes; object i has composition pairs[i % len(pairs)], and a random size,
    style and position (depending only on (seed, i))."""
    pairs = _check_pairs(pairs, "pairs")
    if not pairs:
        raise ValueError("pairs is empty; expected at least one (colour, shape) pair")
    spec = get_preset(preset)
    for color, shape in pairs:
        if color not in spec.colors or shape not in spec.shapes:
            raise ValueError(f"pairs holds ({color!r}, {shape!r}); expected colours of {spec.colors} "
                             f"and shapes of {spec.shapes}")
    scenes = sample_scenes(n, seed, preset, num_objects=1)
    return [scene.with_objects([replace(scene.objects[0], color=pairs[i % len(pairs)][0],
                                        shape=pairs[i % len(pairs)][1])])
            for i, scene in enumerate(scenes)]


def sample_identifiable_scenes(n: int, seed: int, num_objects: int, preset: str = "default") -> list[Scene]:
    """`n` scenes of `num_objects` objects, no two holding the same objects (the same multiset of
    size, colour, style and shape), so a caption listing every object identifies its scene.

    The first `n` such scenes of `sample_scenes(..., seed, num_objects=num_objects)`: a longer list
    starts with a shorter one. Raises ValueError when the world has fewer than `n` such scenes.
    """
    n, seed, num_objects = check_count("n", n), check_seed(seed), check_count("num_objects", num_objects, 1)
    kept, seen, drawn = [], set(), 0
    limit = 20 * n + 1000  # draws before giving up
    while len(kept) < n:
        if drawn >= limit:
            raise ValueError(f"n={n} scenes with distinct objects could not be found among {drawn} draws; "
                             f"ask for fewer or use more objects per scene")
        total = min(max(2 * n, 2 * drawn), limit)  # double the draws each round
        for scene in sample_scenes(total, seed, preset, num_objects=num_objects)[drawn:]:
            key = tuple(sorted(obj.phrase() for obj in scene.objects))
            if key not in seen and len(kept) < n:
                seen.add(key)
                kept.append(scene)
        drawn = total
    return kept


def phrase_queries(scenes: Sequence[Scene], pairs: Sequence[Pair]) -> list[tuple[int, int, str]]:
    """Grounding queries "the <colour> <shape>": `(scene index, object index, phrase)` for the first
    object of each scene whose composition is in `pairs` and unique in that scene (so the phrase
    names exactly one box). Scenes without such an object give no query."""
    pairs = _check_pairs(pairs, "pairs")
    queries = []
    for i, scene in enumerate(scenes):
        found = [(obj.color, obj.shape) for obj in scene.objects]
        for k, pair in enumerate(found):
            if pair in pairs and found.count(pair) == 1:
                queries.append((i, k, f"the {pair[0]} {pair[1]}"))
                break
    return queries


ARTICLES = frozenset({"a", "an", "the"})  # words that name no object, left out of a phrase's grounding score


def phrase_tokens(phrases: Sequence[str], length: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The world tokenizer's `<bos>`..`<eos>` ids of `phrases`, (N, length) int64, and the (N, length)
    bool mask of their content words (every word but the wrap, the padding and the articles): the
    `phrase_ids` and `phrase_mask` that `models.grounding.box_scores` and `ground` take."""
    if isinstance(phrases, str) or not phrases or not all(isinstance(phrase, str) for phrase in phrases):
        raise ValueError(f"phrases must be a non-empty list of str, got {phrases!r}")
    empty = [phrase for phrase in phrases if not set(split_words(phrase)) - ARTICLES]
    if empty:
        raise ValueError(f"phrases {empty!r} hold no word besides articles; a phrase must name something")
    tokenizer = default_tokenizer()
    ids = torch.from_numpy(tokenizer.encode_batch(list(phrases), check_count("length", length, 3), "bos_eos"))
    skipped = [tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id] + [tokenizer.stoi[word] for word in ARTICLES]
    return ids, ~torch.isin(ids, torch.tensor(skipped))


def render_images(scenes: Sequence[Scene], image_size: int) -> torch.Tensor:
    """(N, 3, H, W) float images in [0, 1] of `scenes`."""
    return images_to_tensor(render_batch(list(scenes), check_count("image_size", image_size, 1)))


class PairDataset(Dataset):
    """Image-caption pairs: item j is scene j // C with its caption j % C (C captions per scene).

    Items: image (3, H, W) float in [0, 1]; tokens (L,) int64, `<bos>`..`<eos>` wrapped (batch
    them with `mmcourse.world.datasets.collate`); index (of the scene). `texts[i]` holds scene i's
    captions and `images` the (N, H, W, 3) uint8 pictures.
    """

    def __init__(self, scenes: Sequence[Scene], captions: Sequence[Sequence[str]], image_size: int,
                 max_length: int = 48):
        if len(scenes) != len(captions) or not scenes:
            raise ValueError(f"scenes has {len(scenes)} items and captions {len(captions)}; expected the same "
                             f"non-zero number, one list of captions per scene")
        per_scene = {len(texts) for texts in captions}
        if len(per_scene) != 1 or 0 in per_scene:
            raise ValueError(f"captions holds lists of lengths {sorted(per_scene)}; expected the same non-zero "
                             f"number of captions for every scene")
        self.captions_per_scene = per_scene.pop()
        self.texts = [list(texts) for texts in captions]
        image_size = check_count("image_size", image_size, 1)
        self.images = render_batch(list(scenes), image_size)  # (N, H, W, 3) uint8
        flat = [text for texts in self.texts for text in texts]
        self.tokens = default_tokenizer().encode_batch(flat, check_count("max_length", max_length, 2), "bos_eos")

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict:
        if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not 0 <= index < len(self):
            raise IndexError(f"index {index!r} is out of range for {len(self)} pairs")
        scene_index = int(index) // self.captions_per_scene
        return {"image": images_to_tensor(self.images[scene_index]), "tokens": torch.from_numpy(self.tokens[index]),
                "index": scene_index}


# --------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------


def _device_of(model) -> torch.device:
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


@torch.no_grad()
def encode_images(model, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, D) L2-normalised image embeddings of (N, 3, H, W) `images`, on the CPU; `model` is put in
    eval mode (anything with `encode_image(images, normalize=True)`)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a (N, 3, H, W) tensor, got {getattr(images, 'shape', type(images).__name__)}")
    batch_size = check_count("batch_size", batch_size, 1)
    model.eval()
    device = _device_of(model)
    return torch.cat([model.encode_image(images[i:i + batch_size].to(device), normalize=True).float().cpu()
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def encode_texts(model, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """(N, D) L2-normalised text embeddings of `texts`, on the CPU (`model` needs `tokenize` and
    `encode_text(ids, normalize=True)`)."""
    if isinstance(texts, str) or not texts:
        raise ValueError(f"texts must be a non-empty list of str, got {texts!r}")
    batch_size = check_count("batch_size", batch_size, 1)
    model.eval()
    return torch.cat([model.encode_text(model.tokenize(list(texts[i:i + batch_size])), normalize=True).float().cpu()
                      for i in range(0, len(texts), batch_size)])


def phrase_vectors(word_vectors, phrases: Sequence[str], center: bool = True) -> torch.Tensor:
    """(C, D) unit label vectors of multi-word `phrases`: the sum of their words' vectors.

    With `center=True` the mean of the C sums is subtracted first. Word vectors learned from
    co-occurrence share a large common direction (every colour word appears in the same
    contexts), which makes all labels look alike; removing it leaves the part that tells them
    apart, the post-processing of Mu & Viswanath (2018, "All-but-the-Top").
    """
    if isinstance(phrases, str) or not phrases:
        raise ValueError(f"phrases must be a non-empty list of str, got {phrases!r}")
    sums = torch.stack([torch.from_numpy(sum(word_vectors.vector(word) for word in split_words(phrase)))
                        for phrase in phrases])  # (C, D)
    if center:
        if len(phrases) < 2:
            raise ValueError("center=True needs at least two phrases (one phrase minus its mean is zero)")
        sums = sums - sums.mean(0)
    return F.normalize(sums.float(), dim=1)


def _labels(name: str, values, num_classes: int) -> torch.Tensor:
    values = torch.as_tensor(values)
    if values.dim() != 1 or values.is_floating_point():
        raise ValueError(f"{name} must be a 1-d tensor of class indices, got shape {tuple(values.shape)} "
                         f"dtype {values.dtype}")
    if len(values) and not 0 <= int(values.min()) <= int(values.max()) < num_classes:
        raise ValueError(f"{name} holds indices in [{int(values.min())}, {int(values.max())}]; expected [0, {num_classes})")
    return values.long()


def error_distances(label_vectors: torch.Tensor, predictions, targets) -> dict[str, float]:
    """How far a classifier's mistakes land from the truth in label space (cosine distance).

    `label_vectors` (C, D) unit rows; `predictions`, `targets` (N,) class indices, on any device (they
    are compared on `label_vectors`' device). Returns
    "errors": the mean distance from the true label to the predicted one over the mistakes,
    "random_wrong": the mean distance from the true label to a uniformly random *other* label (the
    same mistakes made blindly), and "num_errors". With no mistake "errors" is NaN.
    """
    if not isinstance(label_vectors, torch.Tensor) or label_vectors.dim() != 2 or len(label_vectors) < 2:
        raise ValueError(f"label_vectors must be a (C, D) tensor with C >= 2, got "
                         f"{getattr(label_vectors, 'shape', type(label_vectors).__name__)}")
    num_classes, device = len(label_vectors), label_vectors.device
    predictions = _labels("predictions", predictions, num_classes).to(device)
    targets = _labels("targets", targets, num_classes).to(device)
    if predictions.shape != targets.shape or not len(targets):
        raise ValueError(f"predictions has shape {tuple(predictions.shape)} and targets {tuple(targets.shape)}; "
                         f"expected the same non-empty (N,)")
    distance = 1 - label_vectors.float() @ label_vectors.float().T  # (C, C)
    wrong = predictions != targets  # (N,)
    others = ~torch.eye(num_classes, dtype=torch.bool, device=device)[targets]  # (N, C) every label but the truth
    random_wrong = ((distance[targets] * others).sum(1) / others.sum(1)).mean()
    errors = distance[targets[wrong], predictions[wrong]].mean() if wrong.any() else torch.tensor(float("nan"))
    return {"errors": float(errors), "random_wrong": float(random_wrong), "num_errors": int(wrong.sum())}


def arithmetic_accuracy(query_features: torch.Tensor, query_pairs: Sequence[Pair], gallery_features: torch.Tensor,
                        gallery_pairs: Sequence[Pair], color_features: dict[str, torch.Tensor]) -> float:
    """Share of analogies image(c s) - text(c) + text(c') whose nearest gallery image is a c' s.

    Every query image (N, D) of composition (c, s) is moved to every other colour c' in
    `color_features` (colour -> (D,) text embedding); the moved vector, renormalised, retrieves
    the most cosine-similar gallery image (M, D), which is right when its composition is (c', s).
    """
    if len(query_features) != len(query_pairs) or len(gallery_features) != len(gallery_pairs):
        raise ValueError(f"query_features has {len(query_features)} rows for {len(query_pairs)} query_pairs and "
                         f"gallery_features {len(gallery_features)} rows for {len(gallery_pairs)} gallery_pairs; "
                         f"expected one pair per row")
    if len(color_features) < 2:
        raise ValueError(f"color_features has {len(color_features)} colours; expected at least two to move between")
    gallery_features = F.normalize(gallery_features.float(), dim=1)
    hits, total = 0, 0
    for feature, (color, shape) in zip(query_features.float(), query_pairs):
        if color not in color_features:
            raise ValueError(f"query_pairs holds colour {color!r}, which color_features lacks")
        for target in color_features:
            if target == color:
                continue
            moved = F.normalize(feature - color_features[color] + color_features[target], dim=0)  # (D,)
            best = int((gallery_features @ moved).argmax())
            hits += gallery_pairs[best] == (target, shape)
            total += 1
    return hits / total


def modality_gap(image_features: torch.Tensor, text_features: torch.Tensor) -> float:
    """Euclidean distance between the centroids of the (N, D) image and (M, D) text embeddings
    (Liang et al. 2022's measure of the gap between the two modalities' cones)."""
    for name, features in (("image_features", image_features), ("text_features", text_features)):
        if not isinstance(features, torch.Tensor) or features.dim() != 2 or not len(features):
            raise ValueError(f"{name} must be a non-empty (N, D) tensor, got "
                             f"{getattr(features, 'shape', type(features).__name__)}")
    if image_features.shape[1] != text_features.shape[1]:
        raise ValueError(f"image_features has D={image_features.shape[1]} but text_features D={text_features.shape[1]}")
    return float((image_features.float().mean(0) - text_features.float().mean(0)).norm())


def pca_2d(*feature_sets: torch.Tensor) -> list[torch.Tensor]:
    """Each (N_i, D) set projected on the first two principal axes of all the sets together."""
    if not feature_sets:
        raise ValueError("pca_2d needs at least one (N, D) feature set")
    stacked = torch.cat([features.float() for features in feature_sets])  # (sum N_i, D)
    centred = stacked - stacked.mean(0)
    _, _, right = torch.linalg.svd(centred, full_matrices=False)  # rows of `right`: principal axes
    projected = centred @ right[:2].T  # (sum N_i, 2)
    return list(projected.split([len(features) for features in feature_sets]))


# --------------------------------------------------------------------------------------------
# Negatives
# --------------------------------------------------------------------------------------------


def grouped_clip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                      logit_scale: torch.Tensor | float, group_size: int) -> torch.Tensor:
    """`clip_loss` of each run of `group_size` consecutive pairs, averaged over the runs.

    (B, D) L2-normalised features, B a multiple of `group_size`. Every pair meets only the
    `group_size - 1` other pairs of its group as negatives, so runs with different group sizes can
    share every batch, step and learning rate: the number of negatives is the only difference.
    `group_size == B` is `clip_loss`; `group_size == 1` is 0 (nothing to tell apart).
    """
    group_size = check_count("group_size", group_size, 1)
    _check_paired_features(image_features, text_features)
    batch = len(image_features)
    if batch % group_size:
        raise ValueError(f"group_size={group_size} does not divide the batch of {batch} pairs; choose a batch "
                         f"size that is a multiple of it (and drop a last, shorter batch)")
    return torch.stack([clip_loss(image_features[start:start + group_size], text_features[start:start + group_size],
                                  logit_scale)
                        for start in range(0, batch, group_size)]).mean()


def grouped_clip_training_loss(group_size: int):
    """A `fit` loss_fn for the course's CLIP over {"image", "tokens"} batches: `grouped_clip_loss`
    with `group_size`, logging the logit scale."""
    group_size = check_count("group_size", group_size, 1)

    def loss_fn(model, batch: dict):
        image_features, text_features, logit_scale = model(batch["image"], batch["tokens"])  # (B, D), (B, D), ()
        return grouped_clip_loss(image_features, text_features, logit_scale, group_size), {
            "logit_scale": logit_scale.detach()}

    return loss_fn


def positives_only_loss(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """mean_i (1 - cos(image_i, text_i)): the contrastive loss with its negatives taken away.

    (B, D) L2-normalised features, pair i in row i. Nothing in it pushes different pairs apart, so
    one point for every image and every caption minimises it: the embeddings collapse.
    """
    _check_paired_features(image_features, text_features)
    return (1 - (image_features * text_features).sum(-1)).mean()


def positives_only_training_loss(model, batch: dict):
    """A `fit` loss_fn for the course's CLIP over {"image", "tokens"} batches: `positives_only_loss`."""
    image_features, text_features, logit_scale = model(batch["image"], batch["tokens"])  # (B, D), (B, D), ()
    return positives_only_loss(image_features, text_features), {"logit_scale": logit_scale.detach()}


def embedding_spread(features: torch.Tensor) -> float:
    """Mean cosine similarity between the L2-normalised embeddings of different rows of (N, D)
    `features`, N >= 2: 1.0 when all of them are one point (collapse), near 0 when spread out."""
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or len(features) < 2:
        raise ValueError(f"features must be an (N, D) tensor with N >= 2, got "
                         f"{getattr(features, 'shape', type(features).__name__)}")
    unit = F.normalize(features.float(), dim=-1)  # (N, D)
    n = len(unit)
    total = unit.sum(0)  # (D,): sum_i sum_j cos(i, j) = |sum_i u_i|^2, the diagonal adds n
    return float((total @ total - n) / (n * (n - 1)))


def recolor_background(images: torch.Tensor, rgb: Sequence[int]) -> torch.Tensor:
    """(N, 3, H, W) images in [0, 1] with every pixel of the world's background colour set to `rgb`
    (three ints in 0..255). The objects, and the blend of their anti-aliased edges, stay as drawn."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be an (N, 3, H, W) tensor, got {getattr(images, 'shape', type(images).__name__)}")
    if len(rgb) != 3 or not all(isinstance(v, numbers.Integral) and 0 <= v <= 255 for v in rgb):
        raise ValueError(f"rgb must be three ints in 0..255, got {rgb!r}")
    background = torch.tensor(BACKGROUND_RGB, dtype=images.dtype, device=images.device).div(255)[:, None, None]
    is_background = (images - background).abs().amax(1, keepdim=True) < 0.5 / 255  # (N, 1, H, W)
    color = torch.tensor(tuple(rgb), dtype=images.dtype, device=images.device).div(255)[:, None, None]  # (3, 1, 1)
    return torch.where(is_background, color, images)


def _check_paired_features(image_features, text_features) -> None:
    if not isinstance(image_features, torch.Tensor) or not isinstance(text_features, torch.Tensor) \
            or image_features.dim() != 2 or image_features.shape != text_features.shape:
        raise ValueError(f"image_features has shape {tuple(getattr(image_features, 'shape', ()))} and text_features "
                         f"{tuple(getattr(text_features, 'shape', ()))}; expected the same (B, D), pair i in row i")
