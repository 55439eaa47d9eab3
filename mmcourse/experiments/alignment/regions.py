"""Notebook 03, explicit word-region alignment and one-word-swapped captions: the measurements.

- Explicit alignment accuracy (Karpathy & Fei-Fei 2015 learn it from image-caption pairs alone):
  for every word inside a caption's span that names exactly one object (`CaptionDataset`'s
  `alignment` row with one True), is the word's best region that object? Words of phrases naming
  several objects ("two green shapes") have no single right answer and are left out. Some words
  cannot be placed from what they say at all: in "a circle left of a square" with two circles, only
  the relation tells which circle, and a model that scores each word against each region on its
  own has no way to read relations. `identifying_word_mask` marks the words whose phrase fits its
  object alone ("a red circle" when there is one red circle), so both numbers can be reported.
- Swapped captions: a true caption and the same caption with ONE attribute word replaced
  (`mmcourse.world.noisy_captions(..., kinds=("swap",))`), which the world makes false of the
  scene (a caption no swap can make false is skipped). `swapped_caption_pairs` builds
  a held-out set; `itm_swap_accuracy` measures any model with `itm_logits(images, boxes,
  region_mask, ids) -> (B, 2)` on it (class 1 = "matches"). `SwappedCaptionDataset` adds the swapped
  caption of every `CaptionDataset` item, to train with such hard negatives.
- Region features pretrained like a detector's: ViLBERT and VisualBERT read the regions of a
  Faster R-CNN trained on Visual Genome's object and attribute labels (Anderson et al. 2018), not
  features learned from captions. `pretrain_region_encoder` trains a `RegionEncoder` the same
  way on the world's boxes, to classify each object's shape, colour, size and style, in seconds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ...models.encoders import RegionEncoder, check_tensor
from ...train import fit
from ...world.datasets import CaptionDataset, collate, images_to_tensor
from ...world.language import ATTRIBUTE_WORDS, Caption, default_tokenizer, describe_with_spans, noisy_captions
from ...world.render import render
from ...world.scene import ATTRIBUTES, Scene, check_count, check_seed, get_preset, sample_scenes

SWAP_TRIES = 6  # captions of a scene tried, in order, until one has a swap that makes it false
WRAP_OFFSET = 1  # `<bos>` before the first word shifts word positions by one in the token ids


# --------------------------------------------------------------------------------------------
# Explicit alignment accuracy
# --------------------------------------------------------------------------------------------


def explicit_alignment_accuracy(assignment: torch.Tensor, alignment: torch.Tensor,
                                keep: torch.Tensor | None = None) -> dict[str, float]:
    """Share of the words naming exactly one object whose assigned region is that object.

    assignment (N, L) long: each token's best region (-1 where the model assigns none);
    alignment (N, L, K) bool: True where token l names object k (`CaptionDataset`'s "alignment");
    keep (N, L) bool: count only these words (e.g. `identifying_word_mask`). Returns "accuracy" and
    "words" (how many were counted; accuracy is NaN when none).
    """
    check_tensor("assignment", assignment, 2, floating=False)
    _check_bool("alignment", alignment, 3)
    if tuple(alignment.shape[:2]) != tuple(assignment.shape):
        raise ValueError(f"alignment has shape {tuple(alignment.shape)}; expected "
                         f"({assignment.shape[0]}, {assignment.shape[1]}, K), one row per token of assignment")
    counted = alignment.sum(-1) == 1  # (N, L) words that name exactly one object
    if keep is not None:
        _check_bool("keep", keep, 2)
        if keep.shape != assignment.shape:
            raise ValueError(f"keep has shape {tuple(keep.shape)}; expected {tuple(assignment.shape)}")
        counted &= keep
    correct = (assignment == alignment.long().argmax(-1)) & counted  # (N, L)
    words = int(counted.sum())
    return {"accuracy": float(correct.sum()) / words if words else float("nan"), "words": words}


def identifying_word_mask(tokens: torch.Tensor, alignment: torch.Tensor, attributes: torch.Tensor,
                          preset: str = "default") -> torch.Tensor:
    """(N, L) bool: True at the words of phrases naming one object whose attribute words fit that
    object alone in its scene ("a red circle" with one red circle; not "a circle" with two).

    tokens (N, L) ids; alignment (N, L, K) bool; attributes (N, K, 4) codes of shape, colour, size,
    style into the preset's value lists (-1 for padding), as `CaptionDataset` gives them.
    """
    check_tensor("tokens", tokens, 2, floating=False)
    _check_bool("alignment", alignment, 3)
    check_tensor("attributes", attributes, 3, floating=False)
    expected = (len(tokens), alignment.shape[2], len(ATTRIBUTES))
    if tuple(alignment.shape[:2]) != tuple(tokens.shape) or tuple(attributes.shape) != expected:
        raise ValueError(f"tokens {tuple(tokens.shape)}, alignment {tuple(alignment.shape)} and attributes "
                         f"{tuple(attributes.shape)} disagree; expected (N, L), (N, L, K) and "
                         f"(N, K, {len(ATTRIBUTES)})")
    spec, itos = get_preset(preset), default_tokenizer().itos
    codes = attributes.cpu().numpy()
    named = alignment.cpu().numpy()
    single = named.sum(-1) == 1  # (N, L)
    out = np.zeros(tokens.shape, bool)
    for row, ids in enumerate(tokens.cpu().tolist()):
        for k in range(named.shape[2]):
            for start, end in _runs(named[row, :, k]):
                values = dict(ATTRIBUTE_WORDS[itos[i]] for i in ids[start:end] if itos[i] in ATTRIBUTE_WORDS)
                wanted = {ATTRIBUTES.index(a): spec.values(a).index(v) for a, v in values.items()
                          if v in spec.values(a)}
                fits = [j for j in range(codes.shape[1]) if codes[row, j, 0] >= 0
                        and all(codes[row, j, a] == v for a, v in wanted.items())]
                if fits == [k] and len(wanted) == len(values):
                    out[row, start:end] = single[row, start:end]
    return torch.from_numpy(out).to(tokens.device)


@torch.no_grad()
def evaluate_word_alignment(model, dataset: CaptionDataset, batch_size: int = 256) -> dict[str, float]:
    """Word-region alignment of `model` on every caption of `dataset`: "accuracy" and "words" over
    the words naming one object, "identifying_accuracy" and "identifying_words" over those whose
    phrase fits its object alone, "chance" (the accuracy of a uniformly random real region) and
    "excluded_words" (words naming several objects).

    A word's region is `model.assign_words(images, boxes, region_mask, ids)` (explicit alignment),
    else the argmax of `model.word_region_attention(...)` (B, L, K), so the same score reads the
    implicit alignment in a model's attention."""
    assign = _assigner(model)
    if not isinstance(dataset, CaptionDataset):
        raise TypeError(f"dataset must be a CaptionDataset, got {type(dataset).__name__}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals = dict.fromkeys(("correct", "words", "identifying_correct", "identifying_words", "chance", "excluded"), 0.0)
    for batch in DataLoader(dataset, batch_size=check_count("batch_size", batch_size, 1), collate_fn=collate):
        region_mask = torch.arange(batch["boxes"].shape[1]) < batch["num_objects"][:, None]  # (B, K)
        assignment = assign(batch["image"].to(device), batch["boxes"].to(device),
                            region_mask.to(device), batch["tokens"].to(device)).cpu()  # (B, L)
        alignment = batch["alignment"]
        identifying = identifying_word_mask(batch["tokens"], alignment, batch["attributes"])
        for prefix, keep in (("", None), ("identifying_", identifying)):
            scores = explicit_alignment_accuracy(assignment, alignment, keep)
            totals[prefix + "words"] += scores["words"]
            totals[prefix + "correct"] += 0.0 if not scores["words"] else scores["accuracy"] * scores["words"]
        counted = alignment.sum(-1) == 1  # (B, L)
        totals["chance"] += float((counted / batch["num_objects"][:, None]).sum())
        totals["excluded"] += float((alignment.sum(-1) > 1).sum())
    model.train(was_training)
    words, identifying_words = totals["words"], totals["identifying_words"]
    return {"accuracy": _ratio(totals["correct"], words), "words": int(words),
            "identifying_accuracy": _ratio(totals["identifying_correct"], identifying_words),
            "identifying_words": int(identifying_words),
            "chance": _ratio(totals["chance"], words), "excluded_words": int(totals["excluded"])}


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else float("nan")


def _assigner(model):
    """(images, boxes, region_mask, ids) -> (B, L) each token's region, from `model`."""
    if callable(getattr(model, "assign_words", None)):
        return model.assign_words
    if callable(getattr(model, "word_region_attention", None)):
        return lambda *inputs: model.word_region_attention(*inputs).argmax(-1)  # (B, L)
    raise TypeError(f"model must have assign_words(images, boxes, region_mask, ids) or "
                    f"word_region_attention(...), got {type(model).__name__}")


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of True in a 1-D bool array."""
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


# --------------------------------------------------------------------------------------------
# Swapped captions
# --------------------------------------------------------------------------------------------


def swapped_caption(scene: Scene, seed: int, k: int) -> tuple[Caption, Caption, str] | None:
    """(true caption, swapped caption, the attribute swapped) for caption k of `scene` (the
    world's `describe_with_spans(scene, seed, ...)[k]`), or None when no one-word swap makes that
    caption false of the scene (the world then gives an "irrelevant" caption instead)."""
    k = check_count("k", k)
    true = describe_with_spans(scene, seed, k + 1)[k]
    swapped = noisy_captions(scene, seed, k + 1, noise_rate=1.0, kinds=("swap",))[k]
    if swapped.noise_kind != "swap":
        return None
    old, new = true.words, swapped.words
    (position,) = [w for w in range(len(new)) if new[w] != old[w] and new[w] in ATTRIBUTE_WORDS]
    return true, swapped, ATTRIBUTE_WORDS[new[position]][0]


@dataclass
class SwappedCaptions:
    """N scenes, each with a true caption and the same caption with one attribute word swapped.

    images (N, 3, H, W) float in [0, 1]; boxes (N, K, 4) xyxy pixels (rows past num_objects are
    zero); num_objects (N,); true_ids and swapped_ids (N, L) `<bos>`..`<eos>` token ids;
    true_texts, swapped_texts; swapped_attributes: which attribute changed ("color", "shape", ...).
    """

    images: torch.Tensor
    boxes: torch.Tensor
    num_objects: torch.Tensor
    true_ids: torch.Tensor
    swapped_ids: torch.Tensor
    true_texts: list[str]
    swapped_texts: list[str]
    swapped_attributes: list[str]

    def __len__(self) -> int:
        return len(self.true_texts)

    @property
    def region_mask(self) -> torch.Tensor:
        """(N, K) bool, True on real boxes."""
        return torch.arange(self.boxes.shape[1])[None, :] < self.num_objects[:, None]


def swapped_caption_pairs(n: int, seed: int, image_size: int, max_length: int = 48,
                          preset: str = "default") -> SwappedCaptions:
    """`n` held-out scenes of `preset` (scene i depends only on (seed, i)), each with the first of
    its captions that a one-word swap makes false (see `swapped_caption`); scenes with none in
    `SWAP_TRIES` captions are skipped and more drawn."""
    n, seed = check_count("n", n, 1), check_seed(seed)
    image_size, max_length = check_count("image_size", image_size, 1), check_count("max_length", max_length, 3)
    scenes, found = [], []
    for scene in sample_scenes(2 * n + 10, seed, preset):
        pair = next((p for k in range(SWAP_TRIES) if (p := swapped_caption(scene, seed, k)) is not None), None)
        if pair is not None:
            scenes.append(scene)
            found.append(pair)
        if len(scenes) == n:
            break
    if len(scenes) < n:
        raise ValueError(f"only {len(scenes)} of n={n} scenes had a false one-word swap; ask for fewer")
    pictures = [render(scene, image_size) for scene in scenes]
    boxes = np.zeros((n, get_preset(preset).max_objects, 4), np.float32)
    for row, picture in enumerate(pictures):
        boxes[row, :len(picture.boxes)] = picture.boxes
    tokenizer = default_tokenizer()
    true_texts, swapped_texts = [t.text for t, _, _ in found], [s.text for _, s, _ in found]
    return SwappedCaptions(
        images=images_to_tensor(np.stack([p.image for p in pictures])), boxes=torch.from_numpy(boxes),
        num_objects=torch.tensor([len(s) for s in scenes]),
        true_ids=torch.from_numpy(tokenizer.encode_batch(true_texts, max_length, "bos_eos")),
        swapped_ids=torch.from_numpy(tokenizer.encode_batch(swapped_texts, max_length, "bos_eos")),
        true_texts=true_texts, swapped_texts=swapped_texts, swapped_attributes=[a for _, _, a in found])


@torch.no_grad()
def itm_swap_accuracy(model, pairs: SwappedCaptions, batch_size: int = 256) -> dict[str, float]:
    """Image-text matching of `model` on true vs one-word-swapped captions.

    `model` has `itm_logits(images, boxes, region_mask, ids) -> (B, 2)` (class 1 = "matches"; its
    match score is the log-odds logit 1 - logit 0), or `caption_scores(images, boxes, region_mask,
    ids) -> (B,)` (a score with no threshold, e.g. Karpathy & Fei-Fei's S_kk). Returns "pairwise":
    the share of scenes whose true caption scores higher than the swapped one; "pairwise_<attribute>":
    the same per swapped attribute; and, for ITM models, "accuracy": the share of the 2N (image,
    caption) pairs classified right (true -> 1, swapped -> 0). Chance is 0.5 for all.
    """
    score = _match_score(model)
    if not isinstance(pairs, SwappedCaptions):
        raise TypeError(f"pairs must be SwappedCaptions (from swapped_caption_pairs), got {type(pairs).__name__}")
    batch_size = check_count("batch_size", batch_size, 1)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    region_mask = pairs.region_mask
    scores = {"true": [], "swapped": []}
    for start in range(0, len(pairs), batch_size):
        rows = slice(start, start + batch_size)
        inputs = [t[rows].to(device) for t in (pairs.images, pairs.boxes, region_mask)]
        for name, ids in (("true", pairs.true_ids), ("swapped", pairs.swapped_ids)):
            scores[name].append(score(*inputs, _trim(ids[rows]).to(device)).float().cpu())  # (b,)
    model.train(was_training)
    true, swapped = torch.cat(scores["true"]), torch.cat(scores["swapped"])  # (N,), (N,)
    results = {"pairwise": float((true > swapped).float().mean())}
    if callable(getattr(model, "itm_logits", None)):
        results["accuracy"] = float(((true > 0).float().sum() + (swapped <= 0).float().sum()) / (2 * len(pairs)))
    attributes = np.array(pairs.swapped_attributes)
    for attribute in ATTRIBUTES:
        chosen = torch.from_numpy(attributes == attribute)
        if chosen.any():
            results[f"pairwise_{attribute}"] = float((true[chosen] > swapped[chosen]).float().mean())
    return results


def _match_score(model):
    """(images, boxes, region_mask, ids) -> (B,) match score of `model`: ITM log-odds, or caption_scores."""
    if callable(getattr(model, "itm_logits", None)):
        return lambda *inputs: (lambda logits: logits[:, 1] - logits[:, 0])(model.itm_logits(*inputs))
    if callable(getattr(model, "caption_scores", None)):
        return model.caption_scores
    raise TypeError(f"model must have itm_logits(images, boxes, region_mask, ids) or caption_scores(...), "
                    f"got {type(model).__name__}")


def _trim(ids: torch.Tensor) -> torch.Tensor:
    """`ids` without the padding columns at the end."""
    used = (ids != default_tokenizer().pad_id).any(0)  # (L,)
    return ids[:, : int(used.nonzero().max()) + 1] if used.any() else ids[:, :1]


class SwappedCaptionDataset(Dataset):
    """A `CaptionDataset` whose items also carry "swapped_tokens" (L,): the item's caption with one
    attribute word swapped, and "has_swap" (bool): False when no swap makes that caption false
    (then "swapped_tokens" is all padding and a loss should skip the row). Batch with
    `mmcourse.world.datasets.collate`; "swapped_tokens" keeps the dataset's full `max_length`."""

    def __init__(self, captions: CaptionDataset):
        if not isinstance(captions, CaptionDataset):
            raise TypeError(f"captions must be a CaptionDataset, got {type(captions).__name__}")
        if captions.spec["noise_rate"] != 0 or captions.spec["wrap"] != "bos_eos":
            raise ValueError("captions must be clean (noise_rate=0) and wrapped 'bos_eos', "
                             f"got noise_rate={captions.spec['noise_rate']}, wrap={captions.spec['wrap']!r}")
        self.captions = captions
        per_image, tokenizer = captions.captions_per_image, default_tokenizer()
        texts = []
        for scene in captions.scenes:
            for k in range(per_image):
                found = swapped_caption(scene, captions.seed, k)
                texts.append(found[1].text if found is not None else "")
        self.has_swap = torch.tensor([bool(text) for text in texts])
        ids = tokenizer.encode_batch([t or "a" for t in texts], captions.max_length, "bos_eos")
        self.swapped_tokens = torch.from_numpy(ids).masked_fill(~self.has_swap[:, None], tokenizer.pad_id)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index) -> dict:
        item = self.captions[index]
        j = index % len(self)
        return {**item, "swapped_tokens": self.swapped_tokens[j], "has_swap": bool(self.has_swap[j])}


# --------------------------------------------------------------------------------------------
# Region features pretrained on attributes
# --------------------------------------------------------------------------------------------


class AttributeProbe(nn.Module):
    """A `RegionEncoder` with one linear classifier per attribute (shape, colour, size, style) of
    `preset`, reading each box's feature: a detector's attribute head (Anderson et al. 2018)."""

    def __init__(self, encoder: RegionEncoder, preset: str = "default"):
        super().__init__()
        if not isinstance(encoder, RegionEncoder):
            raise TypeError(f"encoder must be a RegionEncoder, got {type(encoder).__name__}")
        spec = get_preset(preset)
        self.encoder = encoder
        self.heads = nn.ModuleList(nn.Linear(encoder.width, len(spec.values(a))) for a in ATTRIBUTES)

    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> list[torch.Tensor]:
        """One (B, K, values) logit tensor per attribute, in `ATTRIBUTES` order."""
        features = self.encoder(images, boxes)  # (B, K, D)
        return [head(features) for head in self.heads]


def attribute_loss(probe: AttributeProbe, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`fit`'s loss_fn: the sum over attributes of the cross-entropy on the real boxes of a
    `CaptionDataset` batch, and each attribute's accuracy to log."""
    real = batch["attributes"][..., 0] >= 0  # (B, K) the real boxes (padding codes are -1)
    logits = probe(batch["image"], batch["boxes"])
    targets = batch["attributes"][real]  # (N, 4)
    losses, logs = [], {}
    for a, (name, scores) in enumerate(zip(ATTRIBUTES, logits)):
        losses.append(F.cross_entropy(scores[real], targets[:, a]))
        logs[f"{name}_accuracy"] = (scores[real].argmax(-1) == targets[:, a]).float().mean().detach()
    return sum(losses), logs


def pretrain_region_encoder(encoder: RegionEncoder, dataset: CaptionDataset, epochs: int = 2,
                            batch_size: int = 32, lr: float = 3e-3, seed: int = 0,
                            progress: bool = False) -> dict[str, float]:
    """Train `encoder` in place to tell each box's shape, colour, size and style (the world's
    "attributes" of `dataset`), then return the last epoch's training accuracy per attribute."""
    if not isinstance(dataset, CaptionDataset):
        raise TypeError(f"dataset must be a CaptionDataset, got {type(dataset).__name__}")
    probe = AttributeProbe(encoder, dataset.preset.name)
    loader = DataLoader(dataset, batch_size=check_count("batch_size", batch_size, 1), shuffle=True,
                        collate_fn=collate, generator=torch.Generator().manual_seed(check_seed(seed)))
    history = fit(probe, loader, attribute_loss, epochs=check_count("epochs", epochs, 1), lr=lr,
                  progress=progress, device=next(encoder.parameters()).device)
    return {name: history.last[f"{name}_accuracy"] for name in ATTRIBUTES}


def _check_bool(name: str, value, ndim: int) -> None:
    if not isinstance(value, torch.Tensor) or value.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor, got {getattr(value, 'dtype', type(value).__name__)}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
