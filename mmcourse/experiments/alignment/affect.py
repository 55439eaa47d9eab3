"""Notebook 03, section 2: MulT against resampled early fusion on unaligned affect.

The affect task of notebook 01 (`mmcourse.world.affect`) drawn *unaligned*, in the setting of the
Multimodal Transformer (Tsai et al. 2019): a face of `VIDEO_FRAMES` frames, a voice of
`AUDIO_FRAMES` frames and a sentence of 5-6 words with no time stamps. Two models read it:

- `MulT` (`mmcourse.models.cross_attention`): each modality attends to the others, no alignment;
- `ResampledEarlyFusion`: face and voice are first resampled onto the words, then fused per step.

This module holds what the experiment needs around them:

- `unaligned_affect(n, seed, ...)`: the dataset (an `AffectDataset` with video and audio lengths of
  their own and the per-frame `expression` ground truth).
- `make_affect_model(kind, ...)`, `affect_loss`, `train_affect_model`: build and train either model
  with `mmcourse.train.fit`.
- `accuracy_by_interaction(model, dataset)`: accuracy on unimodal, bimodal and trimodal examples.
- `word_to_frame_grounding(model, dataset)`: the words' attention over the video frames, scored
  against the frames where the face shows its expression: the share of attention mass on them
  (chance: their share of the frames) and a pointing game (is the most attended frame one of them?
  chance: the same share), over the examples whose face is active.
"""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ...metrics import attention_grounding
from ...models.cross_attention import MulT, ResampledEarlyFusion
from ...train import History, fit, to_device
from ...world import affect
from ...world.datasets import AffectDataset, collate
from ...world.language import default_tokenizer

VIDEO_FRAMES = 12  # T_v: the face, filmed at one rate ...
AUDIO_FRAMES = 20  # T_a: ... the voice analysed at another; the words (5-6 tokens) have no time at all
MODEL_KINDS = ("mult", "early")
WORD_CHOICES = ("all", "opinion")


# --------------------------------------------------------------------------------------------
# Data and models
# --------------------------------------------------------------------------------------------


def unaligned_affect(n: int, seed: int, shares=(0.4, 0.3, 0.3), video_frames: int = VIDEO_FRAMES,
                     audio_frames: int = AUDIO_FRAMES, noise: float = affect.DEFAULT_NOISE,
                     cache: bool = True) -> AffectDataset:
    """The affect task with face and voice at different lengths; items carry `expression` (T_v,)."""
    return AffectDataset(n, seed, shares=shares, noise=noise, video_frames=video_frames, audio_frames=audio_frames,
                         cache=cache)


def make_affect_model(kind: str, width: int = 32, seed: int = 0, **kwargs) -> nn.Module:
    """A fresh `MulT` (kind "mult") or `ResampledEarlyFusion` ("early") for the affect task, its
    weights drawn from `seed`; `kwargs` go to the model (e.g. `targets=("text",)`, `depth=2`)."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind={kind!r} is unknown; expected one of {MODEL_KINDS}")
    model_class = MulT if kind == "mult" else ResampledEarlyFusion
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_check_int("seed", seed, 0))
        return model_class(len(affect.VIDEO_CHANNELS), len(affect.AUDIO_CHANNELS), default_tokenizer().vocab_size,
                           width=width, **kwargs)


def affect_loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`fit`'s loss_fn over `AffectDataset` batches: cross-entropy of the label, and the accuracy."""
    logits = model(batch["video"], batch["audio"], batch["text"])  # (B, 2)
    accuracy = (logits.detach().argmax(1) == batch["label"]).float().mean()
    return F.cross_entropy(logits, batch["label"]), {"accuracy": accuracy}


def train_affect_model(model: nn.Module, dataset: AffectDataset, epochs: int, lr: float = 1e-3,
                       batch_size: int = 64, seed: int = 0, device=None, progress: bool = False) -> History:
    """Train `model` in place with Adam on shuffled batches (order drawn from `seed`); its History.

    The default learning rate suits both models on the sarcasm task: at 3e-3 MulT stayed at chance on
    the interaction examples (5,000 examples, 12 epochs), at 1e-3 it solves them."""
    _check_int("batch_size", batch_size, 1)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(_check_int("seed", seed, 0)))
    return fit(model, loader, affect_loss, epochs=epochs, lr=lr, device=device, progress=progress)


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def accuracy_by_interaction(model: nn.Module, dataset: AffectDataset, batch_size: int = 512) -> dict[str, float]:
    """Accuracy on the unimodal, bimodal and trimodal examples of `dataset`, and on all of them
    (NaN for a type the dataset lacks)."""
    correct, interaction = [], []
    for batch in _batches(model, dataset, batch_size):
        logits = model(batch["video"], batch["audio"], batch["text"])  # (B, 2)
        correct.append((logits.argmax(1) == batch["label"]).cpu())
        interaction.append(batch["interaction"].cpu())
    correct, interaction = torch.cat(correct).float(), torch.cat(interaction)
    scores = {kind: (correct[interaction == k].mean().item() if (interaction == k).any() else float("nan"))
              for k, kind in enumerate(affect.INTERACTIONS)}
    return scores | {"all": correct.mean().item()}


@torch.no_grad()
def word_to_frame_grounding(model: MulT, dataset: AffectDataset, words: str = "all",
                            batch_size: int = 512) -> dict[str, float]:
    """How well the words' attention over the video frames finds the expression, face-active examples.

    `words="all"`: the mean attention of the sentence's words (padding excluded); `"opinion"`: the
    attention of the opinion word alone (the adjective before the full stop: "good", "awful",
    "long"...). The attention is the model's `text_to_video_attention` (last video -> text block,
    mean over heads). Returns "mass_on_expression" (mean share of the attention on the expression
    frames), "pointing_game" (share of examples whose most attended frame is an expression frame,
    ties pessimistic, `metrics.attention_grounding`), "chance" (the mean share of expression
    frames: what a uniform attention's mass, and a random frame's hit rate, would score) and
    "examples" (how many faces were active).
    """
    if words not in WORD_CHOICES:
        raise ValueError(f"words={words!r} is unknown; expected one of {WORD_CHOICES}")
    if not callable(getattr(model, "text_to_video_attention", None)):
        raise TypeError(f"model must have text_to_video_attention(video, audio, text) (a MulT with text among its "
                        f"targets), got {type(model).__name__}")
    maps, truth = [], []
    for batch in _batches(model, dataset, batch_size):
        active = batch["expression"].any(1)  # (B,) faces that show an expression
        if not active.any():
            continue
        attention = model.text_to_video_attention(batch["video"], batch["audio"], batch["text"])  # (B, L, T_v)
        maps.append(word_attention(attention, batch["text"], words)[active].cpu())  # (b, T_v)
        truth.append(batch["expression"][active].cpu())
    if not maps:
        raise ValueError("dataset has no example with an active face; nothing to score")
    maps, truth = torch.cat(maps), torch.cat(truth)  # (N, T_v), (N, T_v)
    scores = attention_grounding(maps[:, None, :], truth[:, None, :])  # a 1 x T_v "image" per example
    return {"mass_on_expression": scores["mass_inside"], "pointing_game": scores["pointing_game"],
            "chance": truth.float().mean().item(), "examples": len(truth)}


def word_attention(attention: torch.Tensor, text: torch.Tensor, words: str = "all") -> torch.Tensor:
    """(B, L, T) attention of every word, (B, L) right-padded ids -> (B, T): the mean over the real
    words (`words="all"`) or the row of the opinion word, second to last ("opinion")."""
    if words not in WORD_CHOICES:
        raise ValueError(f"words={words!r} is unknown; expected one of {WORD_CHOICES}")
    if attention.dim() != 3 or text.dim() != 2 or attention.shape[:2] != text.shape:
        raise ValueError(f"attention has shape {tuple(attention.shape)} and text {tuple(text.shape)}; "
                         "expected (B, L, T) and (B, L)")
    real = text != default_tokenizer().pad_id  # (B, L)
    if words == "all":
        weights = real.to(attention.dtype)[..., None]  # (B, L, 1)
        return (attention * weights).sum(1) / weights.sum(1)  # (B, T)
    lengths = real.sum(1)  # (B,)
    if (lengths < 2).any():
        raise ValueError("text has a row with fewer than two words; expected 'adjective .' at the end of each")
    return attention[torch.arange(len(text), device=text.device), lengths - 2]  # (B, T)


def _batches(model: nn.Module, dataset: AffectDataset, batch_size: int):
    """`dataset` in order, in batches on the model's device; the model in eval mode meanwhile."""
    _check_int("batch_size", batch_size, 1)
    if not isinstance(dataset, AffectDataset):
        raise TypeError(f"dataset must be an AffectDataset, got {type(dataset).__name__}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            yield to_device(collate(items), device)
    finally:
        model.train(was_training)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


__all__ = ["AUDIO_FRAMES", "MODEL_KINDS", "VIDEO_FRAMES", "WORD_CHOICES", "accuracy_by_interaction", "affect_loss",
           "make_affect_model", "train_affect_model", "unaligned_affect", "word_attention", "word_to_frame_grounding"]
