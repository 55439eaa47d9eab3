"""CLIP: contrastive language-image pre-training (Radford et al. 2021), in miniature.

Two encoders map images and captions into one space where an image and its caption point the same
way. A batch of B pairs gives a B x B matrix of cosine similarities; CLIP scales it by a learned
inverse temperature and asks each row (image -> which caption?) and each column (caption -> which
image?) to pick the diagonal: a symmetric cross-entropy over B - 1 negatives per pair.

- `clip_loss(image_features, text_features, logit_scale)`: that loss, on L2-normalised (B, D)
  features and the scale multiplier, as open_clip's `ClipLoss` takes them.
- `CLIP`: image encoder + text encoder + linear projections into `embed_dim`, and the learnable log
  inverse temperature, initialised at ln(1 / 0.07) and clamped at ln(100) when used (the paper's
  values). `small_clip(...)` builds one from the course's encoders.
- `clip_training_loss(model, batch)`: the loss for `mmcourse.train.fit` over `CaptionDataset`.
- `zero_shot_classifier(model, classnames, templates)`: class weights from prompts ("a picture of a
  {}"), each class the renormalised mean of its normalised prompt embeddings, as open_clip's
  `build_zero_shot_classifier` does; `image_features @ weights` gives class scores.
- `similarity_matrix(image_features, text_features)`: cosine similarities (Ni, Nt).
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..world.language import Tokenizer, default_tokenizer
from .encoders import ConvImageEncoder, TextTransformer, ViTEncoder, check_tensor

LOGIT_SCALE_INIT = math.log(1 / 0.07)  # log inverse temperature at initialisation (Radford et al. 2021)
LOGIT_SCALE_MAX = math.log(100)  # the scale never exceeds 100
NORM_TOLERANCE = 1e-3  # how far from 1 a row norm of "L2-normalised" float32/float64 features may be
VISIONS = ("vit", "cnn")

Template = str | Callable[[str], str]


# --------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
              logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric cross-entropy of the scaled similarity matrix, image i matching text i.

    `image_features`, `text_features`: (B, D) L2-normalised rows. A row whose norm differs from 1 by
    more than `NORM_TOLERANCE` (or 4 machine epsilons of a half-precision dtype, whichever is
    larger) raises ValueError: normalise with `F.normalize(x, dim=-1)` first. `logit_scale`: the
    positive multiplier exp(log scale), a number or a 0-d tensor (gradients flow into a tensor).
    Returns the scalar (loss_image_to_text + loss_text_to_image) / 2.
    """
    _check_feature_pair(image_features, text_features)
    _check_values(logit_scale, image_features=image_features, text_features=text_features)
    logits_per_image = logit_scale * image_features @ text_features.T  # (B, B) rows: images, columns: texts
    targets = torch.arange(len(logits_per_image), device=logits_per_image.device)  # (B,) the diagonal
    return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_image.T, targets)) / 2


def similarity_matrix(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """(Ni, Nt) cosine similarity of every image feature (Ni, D) with every text feature (Nt, D)."""
    check_tensor("image_features", image_features, 2, floating=True)
    check_tensor("text_features", text_features, 2, floating=True)
    if image_features.shape[1] != text_features.shape[1]:
        raise ValueError(f"image_features has D={image_features.shape[1]} but text_features has "
                         f"D={text_features.shape[1]}; expected the same feature dimension")
    return F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T  # (Ni, Nt)


def _check_feature_pair(image_features, text_features) -> None:
    check_tensor("image_features", image_features, 2, floating=True)
    check_tensor("text_features", text_features, 2, floating=True)
    if image_features.shape != text_features.shape:
        raise ValueError(f"image_features has shape {tuple(image_features.shape)} but text_features has shape "
                         f"{tuple(text_features.shape)}; expected the same (B, D), pair i being image i and text i")
    if len(image_features) == 0:
        raise ValueError("image_features and text_features are empty; expected at least one pair")


def _check_values(logit_scale, **features: torch.Tensor) -> None:
    """Refuse a non-positive or non-scalar `logit_scale` and features whose rows are not
    L2-normalised, reading every value back from the device at once."""
    if isinstance(logit_scale, torch.Tensor):
        if logit_scale.dim() != 0:
            raise ValueError(f"logit_scale must be a scalar (0-d tensor or number), "
                             f"got shape {tuple(logit_scale.shape)}")
    elif isinstance(logit_scale, bool) or not isinstance(logit_scale, numbers.Real):
        raise TypeError(f"logit_scale must be a positive number or 0-d tensor, got {type(logit_scale).__name__}")
    with torch.no_grad():
        device = next(iter(features.values())).device
        stats = [(f.float().norm(dim=1) - 1).abs().max() for f in features.values()]  # worst row of each
        stats.append(torch.as_tensor(logit_scale, dtype=torch.float32, device=device).detach())
        *deviations, scale = torch.stack(stats).tolist()
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"logit_scale must be positive and finite (the multiplier exp(log scale), not the log), "
                         f"got {scale}")
    for (name, tensor), deviation in zip(features.items(), deviations):
        tolerance = max(NORM_TOLERANCE, 4 * torch.finfo(tensor.dtype).eps)
        if not deviation <= tolerance:
            raise ValueError(f"{name} must have L2-normalised rows (norm 1 within {tolerance:g}), but a row norm "
                             f"differs from 1 by {deviation:.3g}; apply F.normalize(x, dim=-1) first")


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class CLIP(nn.Module):
    """A dual encoder: image and text towers, each followed by a linear projection into `embed_dim`.

    `image_encoder` maps (B, 3, H, W) images in [0, 1] to (B, image_encoder.width); `text_encoder`
    maps (B, L) token ids to (B, text_encoder.width) and has a `max_length`. `tokenizer` (default:
    the world's) turns texts into ids for the text encoder.
    """

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, embed_dim: int,
                 tokenizer: Tokenizer | None = None):
        super().__init__()
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError(f"embed_dim must be a positive int, got {embed_dim!r}")
        for name, encoder in (("image_encoder", image_encoder), ("text_encoder", text_encoder)):
            if not isinstance(encoder, nn.Module) or not isinstance(getattr(encoder, "width", None), int):
                raise TypeError(f"{name} must be an nn.Module with an int `width`, got {type(encoder).__name__}")
        if not isinstance(getattr(text_encoder, "max_length", None), int):
            raise TypeError(f"text_encoder must have an int `max_length`, got {type(text_encoder).__name__}")
        self.tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
        self.image_encoder, self.text_encoder = image_encoder, text_encoder
        self.image_projection = nn.Linear(image_encoder.width, embed_dim, bias=False)
        self.text_projection = nn.Linear(text_encoder.width, embed_dim, bias=False)
        # log of the inverse temperature 1 / tau; the similarity multiplier is its (clamped) exp
        self.log_logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        self.embed_dim = embed_dim

    @property
    def logit_scale(self) -> torch.Tensor:
        """The similarity multiplier exp(log scale), at most 100 (0-d; differentiable below the clamp)."""
        return self.log_logit_scale.clamp(max=LOGIT_SCALE_MAX).exp()

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.image_projection(self.image_encoder(images))  # (B, embed_dim)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.text_projection(self.text_encoder(ids))  # (B, embed_dim)
        return F.normalize(features, dim=-1) if normalize else features

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, max_length) int64 ids of `texts`, `<bos>`..`<eos>` wrapped and padded, on the model's device."""
        ids = self.tokenizer.encode_batch(texts, self.text_encoder.max_length, wrap="bos_eos")  # (N, L)
        return torch.from_numpy(ids).to(self.log_logit_scale.device)

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image_features (B, D), text_features (B, D), logit_scale), features L2-normalised."""
        return self.encode_image(images), self.encode_text(ids), self.logit_scale


def small_clip(image_size: int = 32, width: int = 64, embed_dim: int = 64, vision: str = "vit",
               patch_size: int = 8, depth: int = 2, heads: int = 4, max_length: int = 48,
               tokenizer: Tokenizer | None = None) -> CLIP:
    """A CLIP small enough to train on a CPU in seconds, from the course's encoders.

    `vision="vit"`: a `ViTEncoder(image_size, patch_size, width, depth, heads)`; `vision="cnn"`: a
    `ConvImageEncoder(width)` (any image size). The text tower is a causal
    `TextTransformer(vocab_size, width, max_length, depth, heads)` read at `<eos>`; `max_length`
    must cover the captions' token length (48 is `CaptionDataset`'s default).
    """
    if vision not in VISIONS:
        raise ValueError(f"vision={vision!r} is unknown; expected one of {VISIONS}")
    tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
    image_encoder = (ViTEncoder(image_size, patch_size, width, depth, heads) if vision == "vit"
                     else ConvImageEncoder(width))
    text_encoder = TextTransformer(tokenizer.vocab_size, width, max_length, depth, heads, pad_id=tokenizer.pad_id)
    return CLIP(image_encoder, text_encoder, embed_dim, tokenizer)


def clip_training_loss(model: CLIP, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`fit`'s loss_fn over `CaptionDataset` batches (keys "image", "tokens"): the CLIP loss, and
    the logit scale and the in-batch matching accuracy (both directions averaged) to log."""
    image_features, text_features, logit_scale = model(batch["image"], batch["tokens"])  # (B, D), (B, D), ()
    loss = clip_loss(image_features, text_features, logit_scale)
    with torch.no_grad():
        similarity = image_features @ text_features.T  # (B, B)
        targets = torch.arange(len(similarity), device=similarity.device)
        accuracy = ((similarity.argmax(1) == targets).float().mean()
                    + (similarity.argmax(0) == targets).float().mean()) / 2
    return loss, {"logit_scale": logit_scale.detach(), "accuracy": accuracy}


# --------------------------------------------------------------------------------------------
# Zero-shot classification
# --------------------------------------------------------------------------------------------


def zero_shot_classifier(model, classnames: Sequence[str], templates: Sequence[Template],
                         batch_size: int = 256) -> torch.Tensor:
    """(D, C) weights, column c the zero-shot classifier of `classnames[c]`.

    Every template is filled with the class name (`template.format(name)` for a str holding "{}",
    `template(name)` for a callable); the prompts are encoded, L2-normalised, averaged per class and
    the mean renormalised. `model` is anything with `tokenize(texts)` and `encode_text(ids,
    normalize=True)`: the course's CLIP or a `mmcourse.pretrained` adapter. Prompts are encoded
    `batch_size` at a time, without gradients.
    """
    if not callable(getattr(model, "tokenize", None)) or not callable(getattr(model, "encode_text", None)):
        raise TypeError(f"model must have tokenize(texts) and encode_text(ids, normalize=True), "
                        f"got {type(model).__name__}")
    classnames, templates = _check_classnames(classnames), _check_templates(templates)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    prompts = [_fill(template, name) for name in classnames for template in templates]  # C * T, class-major
    with torch.no_grad():
        embeddings = torch.cat([model.encode_text(model.tokenize(prompts[start:start + batch_size]), normalize=True)
                                for start in range(0, len(prompts), batch_size)])  # (C * T, D)
        class_embeddings = embeddings.reshape(len(classnames), len(templates), -1).mean(1)  # (C, D)
        return F.normalize(class_embeddings, dim=-1).T  # (D, C)


def _fill(template: Template, name: str) -> str:
    return template.format(name) if isinstance(template, str) else template(name)


def _check_classnames(classnames) -> list[str]:
    if isinstance(classnames, str) or not isinstance(classnames, Sequence):
        raise TypeError(f"classnames must be a sequence of str, got {type(classnames).__name__}")
    if len(classnames) == 0:
        raise ValueError("classnames is empty; expected at least one class name")
    for i, name in enumerate(classnames):
        if not isinstance(name, str):
            raise TypeError(f"classnames[{i}] must be a str, got {type(name).__name__}")
    return list(classnames)


def _check_templates(templates) -> list[Template]:
    if isinstance(templates, str) or not isinstance(templates, Sequence):
        raise TypeError(f"templates must be a sequence of str or callables, got {type(templates).__name__}; "
                        "wrap a single template in a list")
    if len(templates) == 0:
        raise ValueError("templates is empty; expected at least one, e.g. ['{}'] for the bare class name")
    for i, template in enumerate(templates):
        if isinstance(template, str):
            if "{}" not in template:
                raise ValueError(f"templates[{i}]={template!r} has no '{{}}' where the class name goes")
        elif not callable(template):
            raise TypeError(f"templates[{i}] must be a str with '{{}}' or a callable, got {type(template).__name__}")
    return list(templates)


__all__ = ["CLIP", "clip_loss", "clip_training_loss", "similarity_matrix", "small_clip", "zero_shot_classifier",
           "LOGIT_SCALE_INIT", "LOGIT_SCALE_MAX", "NORM_TOLERANCE"]
