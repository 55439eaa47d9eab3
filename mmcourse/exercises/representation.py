"""Checks for the exercises of notebook 02 (multimodal representation).

Each check runs the learner's function and the package's reference on fresh random inputs and says
in one sentence what differs: the symmetric contrastive loss of CLIP (Radford et al. 2021), a
zero-shot classifier built from prompts, the hinge rank loss of DeViSE (Frome et al. 2013), and
recall@k, the retrieval metric of both.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..metrics import recall_at_k
from ..models.clip import clip_loss, small_clip, zero_shot_classifier
from ..models.devise import hinge_rank_loss
from ..world.scene import ALL_SHAPES, COLOR_RGB
from .check import CheckResult, Comparison

__all__ = ["check_clip_loss", "check_hinge_rank_loss", "check_recall_at_k", "check_zero_shot_classifier"]

HINT_CLIP_LOSS = ("Scale the (B, B) similarity matrix image_features @ text_features.T by logit_scale; the "
                  "targets are torch.arange(B) (pair i matches i). Average F.cross_entropy over the rows "
                  "(image -> text) and over the columns (the transpose, text -> image).")
HINT_ZERO_SHOT = ("For each class, fill every template with template.format(name), encode with "
                  "model.encode_text(model.tokenize(prompts), normalize=True), average over the templates, "
                  "renormalise, and stack the classes as the columns of a (D, C) matrix.")
HINT_HINGE_RANK = ("Scores are image_embeddings @ label_vectors.T (B, C). For each wrong label j add "
                   "max(0, margin - score[true] + score[j]); sum over j (leave the true label out) and average "
                   "over the batch.")
HINT_RECALL = ("Query i matches candidate i. Count the candidates scoring at least as high as the true one "
               "(ties count against it): a hit when fewer than k wrong candidates beat it. Return the mean as "
               "a float.")
PROMPT_TEMPLATES = ("a {}", "a picture of a {}", "there is a {}", "{}", "the {} is left of a circle")


def _clip_loss_inputs(gen: torch.Generator) -> tuple:
    batch, dim = (int(v) for v in torch.randint(2, 10, (2,), generator=gen))
    image_features, text_features = (F.normalize(torch.randn(batch, dim, generator=gen), dim=-1).requires_grad_()
                                     for _ in range(2))  # (B, D) each
    logit_scale = torch.empty(()).uniform_(1.0, 100.0, generator=gen)
    return image_features, text_features, logit_scale


def _zero_shot_inputs(gen: torch.Generator) -> tuple:
    with torch.random.fork_rng():  # the model's random initialisation leaves the caller's RNG alone
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
        model = small_clip(width=32, embed_dim=16, depth=1).eval()
    names = [f"{color} {shape}" for color in COLOR_RGB for shape in ALL_SHAPES]
    num_classes = int(torch.randint(2, 6, (1,), generator=gen))
    num_templates = int(torch.randint(1, 4, (1,), generator=gen))
    classnames = [names[i] for i in torch.randperm(len(names), generator=gen)[:num_classes]]
    templates = [PROMPT_TEMPLATES[i] for i in torch.randperm(len(PROMPT_TEMPLATES), generator=gen)[:num_templates]]
    return model, classnames, templates


def _hinge_rank_inputs(gen: torch.Generator) -> tuple:
    batch, classes, dim = (int(v) for v in torch.randint(2, 8, (3,), generator=gen))
    image_embeddings = (0.5 * torch.randn(batch, dim, generator=gen)).requires_grad_()  # (B, D)
    label_vectors = F.normalize(torch.randn(classes, dim, generator=gen), dim=-1)  # (C, D)
    targets = torch.randint(0, classes, (batch,), generator=gen)  # (B,)
    return image_embeddings, label_vectors, targets, 0.1


def _recall_inputs(gen: torch.Generator) -> tuple:
    size = int(torch.randint(3, 12, (1,), generator=gen))
    similarity = torch.randn(size, size, generator=gen)  # (N, N)
    similarity += torch.eye(size) * float(torch.rand((), generator=gen)) * 2  # some diagonals win, some not
    similarity = similarity.round()  # whole numbers: many wrong candidates tie with the true one
    return similarity, int(torch.randint(1, size + 1, (1,), generator=gen))


def _clip_loss_rows_only(image_features, text_features, logit_scale):
    logits = logit_scale * image_features @ text_features.T  # (B, B)
    return F.cross_entropy(logits, torch.arange(len(logits)))


def _clip_loss_unscaled(image_features, text_features, logit_scale):
    return clip_loss(image_features, text_features, torch.ones_like(logit_scale))


def _zero_shot_not_renormalised(model, classnames, templates):
    with torch.no_grad():
        return torch.stack([model.encode_text(model.tokenize([t.format(name) for t in templates]), normalize=True)
                            .mean(0) for name in classnames], dim=1)


def _hinge_rank_with_the_true_label(image_embeddings, label_vectors, targets, margin):
    scores = image_embeddings @ label_vectors.T  # (B, C)
    return (margin - scores.gather(1, targets[:, None]) + scores).clamp_min(0).sum(1).mean()


def _hinge_rank_mean_over_labels(image_embeddings, label_vectors, targets, margin):
    return hinge_rank_loss(image_embeddings, label_vectors, targets, margin) / (len(label_vectors) - 1)


def _recall_ties_in_favour(similarity, k):
    true_scores = similarity.diagonal()[:, None]  # (N, 1)
    return float(((similarity > true_scores).sum(1) < k).float().mean())


CLIP_LOSS = Comparison("clip_loss", clip_loss, _clip_loss_inputs, check_grad=True, hint=HINT_CLIP_LOSS, mistakes={
    "your loss runs over the rows only (image -> text); average it with the columns (text -> image)":
        _clip_loss_rows_only,
    "your loss ignores logit_scale; multiply the similarities by it before the softmax": _clip_loss_unscaled})
ZERO_SHOT_CLASSIFIER = Comparison("zero_shot_classifier", zero_shot_classifier, _zero_shot_inputs,
                                  hint=HINT_ZERO_SHOT, mistakes={
                                      "your columns are means of unit vectors, shorter than one; renormalise each "
                                      "class's mean": _zero_shot_not_renormalised})
HINGE_RANK_LOSS = Comparison("hinge_rank_loss", hinge_rank_loss, _hinge_rank_inputs, check_grad=True,
                             hint=HINT_HINGE_RANK, mistakes={
                                 "your sum includes the true label, which adds the margin for every image; sum "
                                 "over the wrong labels only": _hinge_rank_with_the_true_label,
                                 "you average over the wrong labels; DeViSE sums them": _hinge_rank_mean_over_labels})
RECALL_AT_K = Comparison("recall_at_k", recall_at_k, _recall_inputs, hint=HINT_RECALL, mistakes={
    "you count ties in the true candidate's favour; a wrong candidate scoring exactly as high ranks above it":
        _recall_ties_in_favour})


def check_clip_loss(clip_loss_fn: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`clip_loss_fn(image_features, text_features, logit_scale)`, L2-normalised (B, D) features and
    a 0-d positive scale, must return `mmcourse.models.clip.clip_loss`: values and gradients."""
    return CLIP_LOSS.check(clip_loss_fn, raise_on_fail=raise_on_fail)


def check_zero_shot_classifier(zero_shot_fn: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`zero_shot_fn(model, classnames, templates)` must return the (D, C) weights of
    `mmcourse.models.clip.zero_shot_classifier` for a small random course CLIP, class names of the
    world and str templates holding "{}"."""
    return ZERO_SHOT_CLASSIFIER.check(zero_shot_fn, raise_on_fail=raise_on_fail)


def check_hinge_rank_loss(hinge_rank_loss_fn: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`hinge_rank_loss_fn(image_embeddings, label_vectors, targets, margin)` must return
    `mmcourse.models.devise.hinge_rank_loss`: values and gradients w.r.t. the image embeddings."""
    return HINGE_RANK_LOSS.check(hinge_rank_loss_fn, raise_on_fail=raise_on_fail)


def check_recall_at_k(recall_at_k_fn: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`recall_at_k_fn(similarity, k)`, an (N, N) tensor whose query i matches candidate i, must
    return `mmcourse.metrics.recall_at_k` as a float."""
    return RECALL_AT_K.check(recall_at_k_fn, raise_on_fail=raise_on_fail)


# What `mmcourse grade` grades: each check of this notebook, by the name its check cell calls.
EXERCISES = {"check_clip_loss": CLIP_LOSS, "check_zero_shot_classifier": ZERO_SHOT_CLASSIFIER,
             "check_hinge_rank_loss": HINGE_RANK_LOSS, "check_recall_at_k": RECALL_AT_K}
