"""MIL-NCE: learning from weakly aligned narrations (Miech et al. 2020, "End-to-End Learning of Visual
Representations from Uncurated Instructional Videos"; the data: HowTo100M, Miech et al. 2019).

In narrated videos the sentence spoken at time t often describes what happens a few seconds before
or after t, or nothing on screen at all. Plain NCE trusts one narration per video segment; MIL-NCE
(multiple-instance learning + noise-contrastive estimation) takes the K narrations spoken nearest to
the segment as a *bag* of candidate positives, and only asks that *some* of them match.

With video features x_i (B, D), candidate narrations y_ik (B, K, D) and temperature T, write
s(x, y) = x . y / T. For segment i the loss is

    L_i = - log  sum_k exp s(x_i, y_ik)
                 -------------------------------------------------------------------------
                 sum_k exp s(x_i, y_ik)                            (its own bag: the positives)
                 + sum_{j != i} sum_k exp s(x_i, y_jk)              (other bags' narrations)
                 + sum_{j != i} sum_k exp s(x_j, y_ik)              (other segments, its bag)

and the loss is the mean of L_i over the batch (Eq. 1 of the paper, negatives from both directions
in one denominator; every positive appears once in it). With K = 1 it is plain NCE: a single softmax
over the 2B - 1 pairs that share segment i or narration i (not CLIP's average of two softmaxes).

- `milnce_loss(video_features, text_features, temperature, candidate_mask)`, `nce_loss` (K = 1).
- `VideoEncoder`: frames (B, T, 3, H, W) -> (B, width). Every step between two frames is one
  image (before, after, their difference) for a `ConvImageEncoder`, so motion and changes of colour
  are visible; it is pooled over the frame and where the pixels change, a 1-D convolution mixes
  neighbouring steps and a mean over the real steps pools them.
- `MilNce`: the dual encoder (video, and a `ConvSequenceEncoder` over narration token ids), both
  projected to `embed_dim` and L2-normalised. `small_milnce(...)` builds one.
- `milnce_training_loss(model, batch, temperature)` / `nce_training_loss`: `fit` losses over batches
  with "frames" (B, T, 3, H, W), "narrations" (B, K, L) and "narration_mask" (B, K).
"""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn

from ..world.language import Tokenizer, default_tokenizer
from .encoders import ConvImageEncoder, ConvSequenceEncoder, check_positive_int, check_tensor, masked_mean

DEFAULT_TEMPERATURE = 0.1


# --------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------


def milnce_loss(video_features: torch.Tensor, text_features: torch.Tensor, temperature: float = 1.0,
                candidate_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The MIL-NCE loss of the module docstring, averaged over the B segments (a scalar).

    `video_features` (B, D): x_i; `text_features` (B, K, D): the bag y_i1 .. y_iK of segment i;
    `temperature` T > 0 divides the dot products (normalise the features first for cosines).
    `candidate_mask` (B, K) bool, default all True: False marks padding in a bag of fewer than K
    narrations; a padded candidate is left out of every sum, as if absent. Computed with logsumexp.
    """
    _check_loss_inputs(video_features, text_features, temperature, candidate_mask)
    batch = len(video_features)
    scores = torch.einsum("id,jkd->ijk", video_features, text_features) / temperature  # (B, B, K) s(x_i, y_jk)
    if candidate_mask is not None:
        scores = scores.masked_fill(~candidate_mask[None, :, :], float("-inf"))  # padding scores nothing
    same = torch.eye(batch, dtype=torch.bool, device=scores.device)  # (B, B) j == i

    positives = scores[same]  # (B, K) s(x_i, y_ik)
    segment_with_every_bag = scores  # (B, B, K) [i, j, k] = s(x_i, y_jk), its own bag included (once)
    # (B, B, K) [i, j, k] = s(x_j, y_ik): the other segments j != i against bag i
    other_segments_with_bag = scores.transpose(0, 1).masked_fill(same[:, :, None], float("-inf"))

    numerator = torch.logsumexp(positives, dim=1)  # (B,)
    denominator = torch.logsumexp(torch.cat([segment_with_every_bag.reshape(batch, -1),
                                             other_segments_with_bag.reshape(batch, -1)], dim=1), dim=1)  # (B,)
    return (denominator - numerator).mean()


def nce_loss(video_features: torch.Tensor, text_features: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Plain NCE, one trusted narration per segment: `milnce_loss` with bags of K = 1.

    `video_features`, `text_features`: (B, D), segment i paired with narration i."""
    check_tensor("text_features", text_features, 2, floating=True)
    return milnce_loss(video_features, text_features[:, None, :], temperature)  # (B, 1, D) bags


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class VideoEncoder(nn.Module):
    """(B, T, 3, H, W) frames in [0, 1], optional (B, T) bool `frame_mask` -> (B, width).

    A video is read as its T - 1 *steps*, each a pair of consecutive frames. A `ConvImageEncoder`
    sees every step as one 9-channel image, (previous frame, frame, their difference), so motion and
    changes of colour, size or style are visible; its feature map is pooled twice, over the whole
    frame (what is in the scene) and weighted by how much each location changes (what happens).
    A 1-D convolution over time (kernel 3, residual) mixes neighbouring steps, and the mean over
    the real steps is the segment feature. A segment needs at least two frames.
    """

    def __init__(self, width: int, stages: int = 3):
        super().__init__()
        check_positive_int("width", width)
        self.step_encoder = ConvImageEncoder(width, stages, in_channels=9)
        self.step_projection = nn.Sequential(nn.Linear(2 * width, width), nn.GELU())
        self.temporal = nn.Sequential(nn.Conv1d(width, width, 3, padding=1), nn.GELU())
        self.width = width

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_frames(frames, frame_mask)
        before, after = frames[:, :-1], frames[:, 1:]  # (B, S, 3, H, W) each, S = T - 1 steps
        change = after - before  # (B, S, 3, H, W)
        step_mask = None if frame_mask is None else frame_mask[:, 1:] & frame_mask[:, :-1]  # (B, S)
        steps = self.encode_steps(torch.cat([before, after, change], 2).flatten(0, 1),
                                  change.abs().sum(2).flatten(0, 1))  # (B * S, width)
        steps = steps.view(*change.shape[:2], -1)  # (B, S, width)
        if step_mask is not None:
            steps = steps * step_mask[:, :, None]  # padding steps do not leak into the convolution
        mixed = steps + self.temporal(steps.transpose(1, 2)).transpose(1, 2)  # (B, S, width)
        return masked_mean(mixed, step_mask)  # (B, width)

    def encode_steps(self, steps: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
        """(N, 9, H, W) steps and (N, H, W) amount of change per pixel -> (N, width)."""
        feature_map = self.step_encoder.feature_map(steps)  # (N, width, h, w)
        amount = F.adaptive_avg_pool2d(change[:, None], feature_map.shape[-2:])  # (N, 1, h, w)
        where = amount / amount.sum((2, 3), keepdim=True).clamp_min(1e-6)  # (N, 1, h, w) sums to 1 (or 0: no change)
        scene = feature_map.mean((2, 3))  # (N, width)
        happening = (feature_map * where).sum((2, 3))  # (N, width)
        return self.step_projection(torch.cat([scene, happening], 1))  # (N, width)


class MilNce(nn.Module):
    """Dual encoder for segments and narrations, both projected to `embed_dim` and L2-normalised.

    `video_encoder` maps (B, T, 3, H, W) frames (and an optional (B, T) frame mask) to (B, width);
    `text_encoder` maps (N, L) token ids to (N, width). `tokenizer` (default: the world's) turns
    narrations into ids.
    """

    def __init__(self, video_encoder: nn.Module, text_encoder: nn.Module, embed_dim: int,
                 tokenizer: Tokenizer | None = None):
        super().__init__()
        check_positive_int("embed_dim", embed_dim)
        for name, encoder in (("video_encoder", video_encoder), ("text_encoder", text_encoder)):
            if not isinstance(encoder, nn.Module) or not isinstance(getattr(encoder, "width", None), int):
                raise TypeError(f"{name} must be an nn.Module with an int `width`, got {type(encoder).__name__}")
        self.tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
        self.video_encoder, self.text_encoder = video_encoder, text_encoder
        self.video_projection = nn.Linear(video_encoder.width, embed_dim)
        self.text_projection = nn.Linear(text_encoder.width, embed_dim)
        self.embed_dim = embed_dim

    def encode_video(self, frames: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(self.video_projection(self.video_encoder(frames, frame_mask)), dim=-1)  # (B, D)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """(N, L) token ids -> (N, D), or bags (B, K, L) -> (B, K, D)."""
        _check_ids(ids)
        features = self.text_projection(self.text_encoder(ids.reshape(-1, ids.shape[-1])))  # (N, D)
        return F.normalize(features, dim=-1).view(*ids.shape[:-1], -1)  # (..., D)

    def tokenize(self, texts) -> torch.Tensor:
        """(N, L) int64 ids of `texts` (no wrap, as `ClipDataset` stores narrations), on the model's device."""
        _check_texts(texts)
        length = max(len(self.tokenizer.encode(text)) for text in texts)  # the longest, no padding column
        ids = self.tokenizer.encode_batch(list(texts), length)  # (N, L)
        return torch.from_numpy(ids).to(self.video_projection.weight.device)

    def forward(self, frames: torch.Tensor, narrations: torch.Tensor,
                frame_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(video_features (B, D), text_features (B, K, D)) for frames (B, T, 3, H, W) and bags (B, K, L)."""
        check_tensor("narrations", narrations, 3, floating=False)
        if len(narrations) != len(frames):
            raise ValueError(f"narrations has shape {tuple(narrations.shape)}; expected ({len(frames)}, K, L), "
                             "one bag of K narrations per segment")
        return self.encode_video(frames, frame_mask), self.encode_text(narrations)


def small_milnce(width: int = 64, embed_dim: int = 32, stages: int = 3,
                 tokenizer: Tokenizer | None = None) -> MilNce:
    """A MIL-NCE dual encoder small enough to train on a CPU in seconds: a `VideoEncoder(width,
    stages)` and a `ConvSequenceEncoder` over the tokenizer's vocabulary."""
    tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
    text_encoder = ConvSequenceEncoder(None, width, vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id)
    return MilNce(VideoEncoder(width, stages), text_encoder, embed_dim, tokenizer)


def milnce_training_loss(model: MilNce, batch: dict, temperature: float = DEFAULT_TEMPERATURE,
                         bag_size: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`fit`'s loss_fn: `milnce_loss` over a batch of segments and their bags of narrations.

    `batch`: "frames" (B, T, 3, H, W), "narrations" (B, K, L) token ids, "narration_mask" (B, K)
    (False: padding), optional "frame_mask" (B, T). `bag_size` keeps only the first `bag_size`
    candidates of each bag (1: plain NCE on the first, the trusted narration). Logs the share of
    segments whose best-scoring narration in the batch lies in their own bag.
    """
    _check_batch(batch)
    narrations, mask = batch["narrations"], batch["narration_mask"]  # (B, K, L), (B, K)
    if bag_size is not None:
        check_positive_int("bag_size", bag_size)
        narrations, mask = narrations[:, :bag_size], mask[:, :bag_size]
    video, text = model(batch["frames"], narrations, batch.get("frame_mask"))  # (B, D), (B, K, D)
    loss = milnce_loss(video, text, temperature, mask)
    with torch.no_grad():
        scores = torch.einsum("id,jkd->ijk", video, text).masked_fill(~mask[None], float("-inf"))  # (B, B, K)
        best_bag = scores.flatten(1).argmax(1) // scores.shape[2]  # (B,)
        accuracy = (best_bag == torch.arange(len(video), device=video.device)).float().mean()
    return loss, {"bag_accuracy": accuracy}


def nce_training_loss(model: MilNce, batch: dict,
                      temperature: float = DEFAULT_TEMPERATURE) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`fit`'s loss_fn for plain NCE: `milnce_training_loss` trusting only the first narration of each bag."""
    return milnce_training_loss(model, batch, temperature, bag_size=1)


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def _check_loss_inputs(video_features, text_features, temperature, candidate_mask) -> None:
    check_tensor("video_features", video_features, 2, floating=True)
    check_tensor("text_features", text_features, 3, floating=True)
    batch, dim = video_features.shape
    if batch == 0:
        raise ValueError("video_features is empty; expected at least one segment, shape (B, D) with B >= 1")
    if text_features.shape[0] != batch or text_features.shape[2] != dim or text_features.shape[1] == 0:
        raise ValueError(f"text_features has shape {tuple(text_features.shape)}; expected ({batch}, K, {dim}) "
                         f"with K >= 1: a bag of K narrations per segment of video_features "
                         f"{tuple(video_features.shape)}")
    if isinstance(temperature, torch.Tensor):
        if temperature.dim() != 0:
            raise ValueError(f"temperature must be a scalar, got shape {tuple(temperature.shape)}")
    elif isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a positive number, got {type(temperature).__name__}")
    if not float(temperature.detach() if isinstance(temperature, torch.Tensor) else temperature) > 0:
        raise ValueError(f"temperature must be positive, got {float(temperature)}")
    if candidate_mask is not None:
        _check_mask("candidate_mask", candidate_mask, text_features.shape[:2], "(B, K)")
        if not bool(candidate_mask.any(1).all()):
            raise ValueError(f"candidate_mask row {int((~candidate_mask.any(1)).nonzero()[0])} is all False; "
                             "every bag needs at least one real narration")


def _check_frames(frames, frame_mask) -> None:
    check_tensor("frames", frames, 5, floating=True)
    if frames.shape[2] != 3 or frames.shape[1] < 2:
        raise ValueError(f"frames must have shape (B, T, 3, H, W) with T >= 2 frames, got {tuple(frames.shape)}")
    if frame_mask is not None:
        _check_mask("frame_mask", frame_mask, frames.shape[:2], "(B, T)")


def _check_mask(name: str, mask, shape: torch.Size, axes: str) -> None:
    check_tensor(name, mask, 2)
    if mask.dtype != torch.bool or mask.shape != shape:
        raise ValueError(f"{name} must be a bool tensor of shape {tuple(shape)} {axes}, "
                         f"got {mask.dtype} of shape {tuple(mask.shape)}")


def _check_batch(batch) -> None:
    expected = "a dict with 'frames' (B, T, 3, H, W), 'narrations' (B, K, L) and 'narration_mask' (B, K)"
    if not isinstance(batch, dict):
        raise TypeError(f"batch must be {expected}, got {type(batch).__name__}")
    missing = [key for key in ("frames", "narrations", "narration_mask") if key not in batch]
    if missing:
        raise ValueError(f"batch must be {expected}; missing {missing}")


def _check_ids(ids) -> None:
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"ids must be a torch.Tensor of token ids, got {type(ids).__name__}")
    if ids.dim() not in (2, 3):
        raise ValueError(f"ids must have shape (N, L) or (B, K, L), got shape {tuple(ids.shape)}")
    if ids.is_floating_point():
        raise TypeError(f"ids must be an integer tensor of token ids, got {ids.dtype}")


def _check_texts(texts) -> None:
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise TypeError(f"texts must be a list of str, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError("texts is empty; expected at least one narration")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")



__all__ = ["DEFAULT_TEMPERATURE", "MilNce", "VideoEncoder", "milnce_loss", "milnce_training_loss", "nce_loss",
           "nce_training_loss", "small_milnce"]
