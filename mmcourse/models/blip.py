"""BLIP's CapFilt: Captioning and Filtering (Li et al. 2022, "BLIP: Bootstrapping Language-Image
Pre-training for Unified Vision-Language Understanding and Generation"), in miniature.

Web alt-texts are noisy ("click here for more sunsets"). BLIP cleans its own training data with two
models fine-tuned on a small set of clean, human-written pairs:

- the CAPTIONER, an image-grounded text decoder: causal self-attention over the words so far,
  cross-attention to the image tokens, and a language-modelling head, trained to maximise the
  likelihood of the clean captions,

      L_lm = - sum_t log p(w_t | w_<t, I),

  then asked for one synthetic caption per web image by nucleus sampling (`generate`);
- the FILTER, an image-grounded text encoder with an ITM head (ALBEF's fusion encoder and ITM,
  imported from `albef`, trained with ITC and ITM on the clean pairs): a caption, web or
  synthetic, is kept when the filter's p(match | I, T) exceeds a threshold (`filter_captions`).

The bootstrapped dataset, the filtered web captions plus the filtered synthetic ones, trains the
next model. Nucleus sampling (Holtzman et al. 2020, "The Curious Case of Neural Text
Degeneration") draws the next word from the smallest set of words whose probabilities add up to
`top_p`, renormalised: diverse captions (BLIP found them more useful than beam search's safe,
repetitive ones) without the unreliable tail of the distribution.

- `Captioner`, `captioning_loss(model, batch)`: the decoder and its loss for `mmcourse.train.fit`.
- `nucleus_filter(probabilities, top_p)`, `nucleus_sample(logits, top_p, generator)`,
  `generate(model, images, max_length, top_p=0.9, generator=None)`.
- `match_probability(filter_model, images, ids)`, `filter_captions(filter_model, images, ids,
  threshold=0.5)`: the filter, an `albef.ALBEF`.
"""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn

from ..world.language import Tokenizer, default_tokenizer
from .albef import ALBEF, MATCH, TextEmbedding, VisionTransformer, _check_generator, _check_pair_batch
from .encoders import check_tensor
from .layers import IGNORE_INDEX, TransformerEncoder

TOP_P = 0.9  # BLIP's nucleus mass for synthetic captions
THRESHOLD = 0.5  # keep a caption when p(match) exceeds it
NEVER_GENERATED = ("pad", "unk", "cls", "sep", "mask", "bos")  # special tokens a caption never contains


# --------------------------------------------------------------------------------------------
# The captioner: an image-grounded text decoder
# --------------------------------------------------------------------------------------------


class Captioner(nn.Module):
    """ViT image encoder + causal text decoder with cross-attention to the image tokens + LM head.

    `forward(images, ids)` gives (B, L, V) next-word logits: position t predicts token t + 1 from
    tokens 0..t (`<bos>` first) and the whole image.
    """

    def __init__(self, image_size: int = 32, patch_size: int = 4, width: int = 64, image_depth: int = 2,
                 decoder_depth: int = 2, heads: int = 4, max_length: int = 48, tokenizer: Tokenizer | None = None):
        super().__init__()
        self.tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
        vocab_size = self.tokenizer.vocab_size
        self.image_encoder = VisionTransformer(image_size, patch_size, width, image_depth, heads)
        self.embedding = TextEmbedding(vocab_size, width, max_length, self.tokenizer.pad_id)
        self.decoder = TransformerEncoder(width, decoder_depth, heads, cross_attention=True)
        self.lm_head = nn.Linear(width, vocab_size)
        self.image_size, self.max_length, self.vocab_size = image_size, max_length, vocab_size

    def decode(self, image_tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(B, L, V) next-word logits of (B, L) `ids` given (B, 1 + N, W) image tokens."""
        x, padding = self.embedding(ids)  # (B, L, W), (B, L)
        if len(image_tokens) != len(ids):
            raise ValueError(f"image_tokens has batch size {len(image_tokens)} but ids {len(ids)}; expected the same")
        h = self.decoder(x, padding_mask=padding, causal=True, context=image_tokens)  # (B, L, W)
        return self.lm_head(h)  # (B, L, V)

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        _check_pair_batch(images, ids)
        return self.decode(self.image_encoder(images), ids)  # (B, L, V)


def captioning_loss(model: Captioner, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`fit`'s loss_fn over {"image", "tokens"} batches (`<bos>`..`<eos>` wrapped captions):

        L_lm = - mean over real next words t of log p(w_{t+1} | w_<=t, I)

    the inputs are tokens 0..L-2, the labels tokens 1..L-1 (shifted by one), padding ignored.
    Also logs "accuracy", the share of next words predicted right."""
    ids = batch["tokens"]  # (B, L)
    check_tensor("batch['tokens']", ids, 2, floating=False)
    if ids.shape[1] < 2:
        raise ValueError(f"batch['tokens'] has shape {tuple(ids.shape)}; expected (B, L) with L >= 2 "
                         "(<bos> and at least one word to predict)")
    inputs, labels = ids[:, :-1], ids[:, 1:]  # (B, L - 1) each: w_<=t and w_{t+1}
    labels = labels.masked_fill(labels == model.tokenizer.pad_id, IGNORE_INDEX)
    logits = model(batch["image"], inputs)  # (B, L - 1, V)
    loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX)
    real = labels != IGNORE_INDEX
    accuracy = (logits.detach().argmax(-1) == labels)[real].float().mean()
    return loss, {"accuracy": accuracy}


# --------------------------------------------------------------------------------------------
# Nucleus sampling
# --------------------------------------------------------------------------------------------


def nucleus_filter(probabilities: torch.Tensor, top_p: float) -> torch.Tensor:
    """(B, V) probabilities restricted to each row's nucleus and renormalised.

    The nucleus is the smallest set of words whose probabilities add up to at least `top_p`: sort
    the row in decreasing order and keep words while the mass *before* them is below `top_p` (so
    the word that crosses `top_p` is kept). `top_p = 1` keeps every word with some probability.
    """
    check_tensor("probabilities", probabilities, 2, floating=True)
    _check_top_p(top_p)
    if (probabilities < 0).any() or not torch.allclose(probabilities.sum(1), torch.ones_like(probabilities[:, 0]),
                                                       atol=1e-4):
        raise ValueError("probabilities must be non-negative rows summing to one (apply softmax to logits first)")
    sorted_probabilities, order = probabilities.sort(1, descending=True)  # (B, V)
    mass_before = sorted_probabilities.cumsum(1) - sorted_probabilities  # (B, V)
    kept_sorted = (mass_before < top_p) & (sorted_probabilities > 0)  # (B, V), the first word always kept
    kept = torch.zeros_like(kept_sorted).scatter(1, order, kept_sorted)  # back to vocabulary order
    nucleus = probabilities * kept
    return nucleus / nucleus.sum(1, keepdim=True)


def nucleus_sample(logits: torch.Tensor, top_p: float = TOP_P,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) long: one word per row of (B, V) `logits`, drawn from `nucleus_filter(softmax(logits), top_p)`.
    Draws are made on the CPU with `generator` (a CPU `torch.Generator`, or None for the global one)."""
    check_tensor("logits", logits, 2, floating=True)
    _check_generator(generator)
    probabilities = nucleus_filter(logits.detach().float().softmax(1), top_p)  # (B, V)
    return torch.multinomial(probabilities.cpu(), 1, generator=generator).squeeze(1).to(logits.device)  # (B,)


@torch.no_grad()
def generate(model: Captioner, images: torch.Tensor, max_length: int, top_p: float = TOP_P,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, L) long captions of `images`, L <= max_length: `<bos>`, sampled words, `<eos>`, padding.

    Word by word: the decoder reads the prefix, `nucleus_sample` draws the next word (special tokens
    other than `<eos>` are never drawn); a row that has drawn `<eos>` only pads from then on, and
    generation stops when every row has, or at `max_length` tokens (a row cut there gets no `<eos>`).
    The ids can go straight into the filter or a retrieval model with the same tokenizer.
    """
    _check_generate_arguments(model, images, max_length)
    model.eval()
    tokenizer = model.tokenizer
    image_tokens = model.image_encoder(images)  # (B, 1 + N, W), computed once
    ids = torch.full((len(images), 1), tokenizer.bos_id, dtype=torch.long, device=images.device)  # (B, 1)
    finished = torch.zeros(len(images), dtype=torch.bool, device=images.device)  # (B,)
    never = [getattr(tokenizer, f"{name}_id") for name in NEVER_GENERATED]
    while ids.shape[1] < max_length and not finished.all():
        logits = model.decode(image_tokens, ids)[:, -1]  # (B, V) the next word's logits
        logits[:, never] = float("-inf")
        word = nucleus_sample(logits, top_p, generator)  # (B,)
        word = word.masked_fill(finished, tokenizer.pad_id)
        ids = torch.cat([ids, word[:, None]], 1)  # (B, t + 1)
        finished |= word == tokenizer.eos_id
    return ids


# --------------------------------------------------------------------------------------------
# The filter: ALBEF's image-grounded text encoder and ITM head
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def match_probability(filter_model: ALBEF, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B,) p(match | image i, caption i) from the filter's ITM head (softmax over its 2 logits)."""
    if not isinstance(filter_model, ALBEF):
        raise TypeError(f"filter_model must be an albef.ALBEF (image-grounded text encoder + ITM head), "
                        f"got {type(filter_model).__name__}")
    filter_model.eval()
    return filter_model.itm_logits(images, ids).softmax(1)[:, MATCH]  # (B,)


def filter_captions(filter_model: ALBEF, images: torch.Tensor, ids: torch.Tensor,
                    threshold: float = THRESHOLD) -> torch.Tensor:
    """(B,) bool keep mask: True where the filter's p(match | image i, caption i) > `threshold`
    (BLIP: a caption the ITM head judges unmatched is noise, and removed)."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 <= threshold < 1:
        raise ValueError(f"threshold must be a number in [0, 1), got {threshold!r}")
    return match_probability(filter_model, images, ids) > threshold


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def _check_top_p(top_p) -> None:
    if isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")


def _check_generate_arguments(model, images, max_length) -> None:
    if not isinstance(model, Captioner):
        raise TypeError(f"model must be a Captioner, got {type(model).__name__}")
    check_tensor("images", images, 4, floating=True)
    if isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral) \
            or not 2 <= max_length <= model.max_length:
        raise ValueError(f"max_length must be an int in [2, {model.max_length}] (<bos> and at least one word, "
                         f"at most the model's max_length), got {max_length!r}")


__all__ = ["Captioner", "captioning_loss", "filter_captions", "generate", "match_probability", "nucleus_filter",
           "nucleus_sample", "THRESHOLD", "TOP_P"]
