"""Explicit word-region alignment: Karpathy & Fei-Fei (2015), "Deep Visual-Semantic Alignments for
Generating Image Descriptions".

The lecture's own example of *explicit* alignment: match the words of a caption to the regions of
its image, learning from image-caption pairs alone. Nobody says which word names which region;
the model only knows which caption belongs to which image, and the alignment is what makes that
matching work.

    regions  v_i = W_m RegionFeature(box_i) + b_m               (R, D), one per box
    words    s_t = W_s BidirectionalEncoder(w_1 .. w_N)_t + b_s  (N, D), one per word
    score of word t for region i:         v_i . s_t
    image k - sentence l score (eq. 8):   S_kl = 1/|g_l| sum_{t in g_l} max_{i in g_k} v_i . s_t

Each word votes with its best region, so a caption scores high with an image that has, for every
word, a region that word fits. A batch of B pairs gives the B x B matrix S over all images x all
captions, and the max-margin ranking objective (eq. 9) asks every true pair to beat every wrong
caption of its image and every wrong image of its caption by a margin:

    C = sum_k [ sum_l max(0, S_kl - S_kk + 1)  +  sum_l max(0, S_lk - S_kk + 1) ]

After training, a word's best region (argmax over i of v_i . s_t) *is* its alignment.

What the course version changes, and why:

- Regions come from `encoders.RegionEncoder` over the world's ground-truth boxes (Karpathy used the
  top 19 boxes of an R-CNN detector plus the whole image); padding boxes are masked out of the max.
  A shallow CNN (`stages=1` at 32 pixels, 2 at 64) keeps each region's feature to its own box: at
  stride 8 a small object is a fraction of one feature cell and its feature mostly its
  neighbours'; in our runs at 32 pixels (375 steps) 1 stage put 0.49 of the words on the right
  region where 2 stages put 0.42.
- Words come from a bidirectional encoder, as Karpathy's bidirectional RNN: `encoders.
  ConvSequenceEncoder`'s two 1-D convolutions over the word embeddings, so each word sees its
  neighbours on both sides (`context` = 5: four words each way after two layers) and "a" in "a
  large red circle" can point at the red circle. A bidirectional transformer
  (`TextTransformer(causal=False)`) sees the whole sentence at once, but its position signal is
  weak at initialisation and its words mix with other phrases: in our runs it reached 0.49
  word-region accuracy where the convolution reached 0.70 (`context` 3) and 0.74 (5). Only
  words count: padding and the `<bos>`/`<eos>` wrap are left out of the sum.
- Normalised by the number of words (the 1/|g_l| above; the paper's eq. 8 sums). In a row of S
  (one image, B captions) an unnormalised sum favours long captions whatever they say, so the
  ranking would partly learn caption length; the mean compares captions by how well their words
  fit. A column (one caption, B images) is ranked the same either way.
- The loss is eq. 9, summed over each pair's wrong captions and wrong images and averaged over
  the pairs (the paper sums over the pairs too). `contrastive_loss` is the symmetric InfoNCE of
  CLIP over the same S; in our runs the two gave about the same alignment (0.76 vs 0.75), so
  the model keeps the paper's.

- `RegionWordAligner`: the model; `word_region_scores`, `assign_words`, `word_region_attention`.
- `image_sentence_scores(regions, region_mask, words, word_mask)`: the (B, B) matrix S (eq. 8).
- `ranking_loss(scores, margin)`: eq. 9;  `contrastive_loss(scores, temperature)`: InfoNCE.
- `region_word_loss(model, batch)`: the loss for `mmcourse.train.fit` over `CaptionDataset` batches.
"""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn

from ..world.language import Tokenizer, default_tokenizer
from .encoders import ConvSequenceEncoder, RegionEncoder, check_positive_int, check_tensor

MARGIN = 1.0  # eq. 9's margin
OBJECTIVES = ("ranking", "contrastive")


# --------------------------------------------------------------------------------------------
# Scores and losses
# --------------------------------------------------------------------------------------------


def image_sentence_scores(regions: torch.Tensor, region_mask: torch.Tensor, words: torch.Tensor,
                          word_mask: torch.Tensor) -> torch.Tensor:
    """(B_images, B_texts) S_kl: mean over the words t of caption l of max over the regions i of image k of v_i . s_t.

    regions (B_images, R, D), region_mask (B_images, R) True at real regions; words (B_texts, L, D),
    word_mask (B_texts, L) True at real words (not padding, not the wrap).
    """
    _check_alignment_inputs(regions, region_mask, words, word_mask)
    pair_scores = torch.einsum("krd,ltd->kltr", regions, words)  # (Bi, Bt, L, R) v_i . s_t for every pair
    pair_scores = pair_scores.masked_fill(~region_mask[:, None, None, :], float("-inf"))
    return mean_best_region(pair_scores, word_mask)  # (Bi, Bt)


def mean_best_region(scores: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
    """Eq. 8 from word-region scores (..., L, R) (-inf at padding regions): the mean over the words
    (word_mask (..., L), broadcast over the leading dimensions) of each word's best region score."""
    best_region = scores.max(-1).values  # (..., L) each word's best region
    return best_region.masked_fill(~word_mask, 0.0).sum(-1) / word_mask.sum(-1)  # (...) mean over words


def ranking_loss(scores: torch.Tensor, margin: float = MARGIN) -> torch.Tensor:
    """Eq. 9 on a (B, B) matrix S (images x captions, true pairs on the diagonal): every wrong
    caption of image k (row k) and every wrong image of caption k (column k) should score at least
    `margin` below S_kk; the hinges are summed over them and averaged over the B pairs."""
    _check_square("scores", scores)
    _check_positive("margin", margin)
    true_pairs = scores.diagonal()  # (B,) S_kk
    wrong_captions = (scores - true_pairs[:, None] + margin).clamp_min(0)  # (B, B) row k: max(0, S_kl - S_kk + 1)
    wrong_images = (scores - true_pairs[None, :] + margin).clamp_min(0)  # (B, B) column k: max(0, S_lk - S_kk + 1)
    off_diagonal = ~torch.eye(len(scores), dtype=torch.bool, device=scores.device)
    return ((wrong_captions + wrong_images) * off_diagonal).sum() / len(scores)


def contrastive_loss(scores: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE over S: cross-entropy of S / temperature with image k matching caption k,
    over the rows (image -> which caption?) and the columns (caption -> which image?)."""
    _check_square("scores", scores)
    _check_positive("temperature", temperature)
    logits = scores / temperature  # (B, B)
    targets = torch.arange(len(scores), device=scores.device)  # (B,) the diagonal
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class RegionWordAligner(nn.Module):
    """Regions and words projected into one space of `dim` dimensions, scored by dot products.

    Regions: `RegionEncoder(width, roi_size, stages)`; fewer `stages` keep a region's feature to
    its own box (stride 2 ** stages): 1 at 32-pixel images, 2 at 64. Words: a
    `ConvSequenceEncoder`'s per-word features, two convolutions of kernel `context` (odd), so each
    word sees context - 1 neighbours on either side; captions of up to `max_length` tokens.
    `tokenizer` (default: the world's) gives the vocabulary, the padding id and the wrap tokens
    that are not words.
    """

    def __init__(self, width: int = 32, dim: int = 32, context: int = 5, roi_size: int = 3, stages: int = 1,
                 max_length: int = 48, tokenizer: Tokenizer | None = None):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("max_length", max_length)
        if isinstance(context, bool) or not isinstance(context, numbers.Integral) or context < 1 or context % 2 == 0:
            raise ValueError(f"context must be an odd positive int (the convolution's kernel size), got {context!r}")
        tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
        self.region_encoder = RegionEncoder(width, roi_size, stages)
        self.text_encoder = ConvSequenceEncoder(None, width, vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id,
                                                kernel_size=context)  # bidirectional: both neighbours, like the BRNN
        self.region_projection = nn.Linear(width, dim)  # v_i = W_m x_i + b_m
        self.word_projection = nn.Linear(width, dim)  # s_t = W_s h_t + b_s
        not_words = [tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.bos_id, tokenizer.eos_id]
        self.register_buffer("not_word_ids", torch.tensor(not_words), persistent=False)
        self.dim, self.max_length, self.pad_id = dim, max_length, tokenizer.pad_id

    def regions(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """(B, R, D) region vectors v_i of (B, R, 4) xyxy pixel `boxes` of `images` (B, 3, H, W)."""
        return self.region_projection(self.region_encoder(images, boxes))  # (B, R, D)

    def words(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, D) word vectors s_t of token `ids` (B, L), and the mask (B, L) of real words.

        The ids are padded to `max_length` first: the convolutions do not re-zero the padding
        between their two layers, so without it a caption's last words would depend on how much
        padding its batch happens to have."""
        length = self.words_of(ids).shape[1]
        if length > self.max_length:
            raise ValueError(f"ids has shape {tuple(ids.shape)}: more than max_length={self.max_length} positions")
        padded = F.pad(ids, (0, self.max_length - length), value=self.pad_id)  # (B, max_length)
        hidden, _ = self.text_encoder.tokens(padded)  # (B, max_length, width), each word with its neighbours
        return self.word_projection(hidden[:, :length]), self.words_of(ids)  # (B, L, D), (B, L)

    def forward(self, images: torch.Tensor, boxes: torch.Tensor, region_mask: torch.Tensor,
                ids: torch.Tensor) -> torch.Tensor:
        """(B, B) S_kl of every image k with every caption l (eq. 8); the true pairs on the diagonal."""
        _check_batch(images, boxes, region_mask, ids)
        words, word_mask = self.words(ids)  # (B, L, D), (B, L)
        return image_sentence_scores(self.regions(images, boxes), region_mask, words, word_mask)

    def word_region_scores(self, images: torch.Tensor, boxes: torch.Tensor, region_mask: torch.Tensor,
                           ids: torch.Tensor) -> torch.Tensor:
        """(B, L, R) v_i . s_t of every token of caption b with every region of its own image b;
        -inf at padding regions (they can never be a word's best region)."""
        _check_batch(images, boxes, region_mask, ids)
        words, _ = self.words(ids)  # (B, L, D)
        scores = words @ self.regions(images, boxes).transpose(1, 2)  # (B, L, R)
        return scores.masked_fill(~region_mask[:, None, :], float("-inf"))

    def caption_scores(self, images: torch.Tensor, boxes: torch.Tensor, region_mask: torch.Tensor,
                       ids: torch.Tensor) -> torch.Tensor:
        """(B,) S_bb: the score of each image with its own caption (the diagonal of `forward`)."""
        scores = self.word_region_scores(images, boxes, region_mask, ids)  # (B, L, R)
        return mean_best_region(scores, _check_has_words(self.words_of(ids)))  # (B,)

    @torch.no_grad()
    def assign_words(self, images: torch.Tensor, boxes: torch.Tensor, region_mask: torch.Tensor,
                     ids: torch.Tensor) -> torch.Tensor:
        """(B, L) long: each word's best region (argmax over regions), -1 at tokens that are not words."""
        best = self.word_region_scores(images, boxes, region_mask, ids).argmax(-1)  # (B, L)
        return best.masked_fill(~self.words_of(ids), -1)

    def word_region_attention(self, images: torch.Tensor, boxes: torch.Tensor, region_mask: torch.Tensor,
                              ids: torch.Tensor) -> torch.Tensor:
        """(B, L, R) softmax over the real regions of each word's scores: zero at padding regions,
        and zero rows at tokens that are not words (padding, `<bos>`/`<eos>`)."""
        attention = self.word_region_scores(images, boxes, region_mask, ids).softmax(-1)  # (B, L, R)
        return attention * self.words_of(ids)[..., None]

    def words_of(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) bool: True at the tokens that are words (not padding, not `<bos>`/`<eos>`)."""
        check_tensor("ids", ids, 2, floating=False)
        return ~torch.isin(ids, self.not_word_ids)


def region_word_loss(model: RegionWordAligner, batch: dict, objective: str = "ranking", margin: float = MARGIN,
                     temperature: float = 0.1) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`fit`'s loss_fn over `CaptionDataset` batches (keys image, boxes, num_objects, tokens): eq. 9
    (`objective="ranking"`) or InfoNCE (`"contrastive"`) over the batch's S, and the in-batch
    matching accuracy (image -> caption and caption -> image, averaged) to log."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r} is unknown; expected one of {OBJECTIVES}")
    scores = model(batch["image"], batch["boxes"], region_mask_of(batch), batch["tokens"])  # (B, B)
    loss = ranking_loss(scores, margin) if objective == "ranking" else contrastive_loss(scores, temperature)
    with torch.no_grad():
        targets = torch.arange(len(scores), device=scores.device)
        accuracy = ((scores.argmax(1) == targets).float().mean() + (scores.argmax(0) == targets).float().mean()) / 2
    return loss, {"accuracy": accuracy}


def region_mask_of(batch: dict) -> torch.Tensor:
    """(B, K) bool of a `CaptionDataset` batch: True at the first `num_objects` boxes, the real ones."""
    missing = [key for key in ("boxes", "num_objects") if key not in batch]
    if missing:
        raise ValueError(f"batch lacks {missing}; expected a CaptionDataset batch")
    boxes = batch["boxes"]
    num_objects = torch.as_tensor(batch["num_objects"], device=boxes.device)  # (B,)
    return torch.arange(boxes.shape[1], device=boxes.device) < num_objects[:, None]  # (B, K)


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def _check_batch(images, boxes, region_mask, ids) -> None:
    check_tensor("images", images, 4, floating=True)
    check_tensor("boxes", boxes, 3, floating=True)
    check_tensor("ids", ids, 2, floating=False)
    batch = len(images)
    if len(boxes) != batch or boxes.shape[2] != 4:
        raise ValueError(f"boxes has shape {tuple(boxes.shape)}; expected ({batch}, R, 4) xyxy pixel boxes")
    _check_region_mask(region_mask, (batch, boxes.shape[1]))
    if len(ids) != batch:
        raise ValueError(f"ids has shape {tuple(ids.shape)}; expected ({batch}, L), one caption per image")


def _check_has_words(word_mask: torch.Tensor) -> torch.Tensor:
    if not word_mask.any(1).all():
        raise ValueError("ids has a row with no word (only padding and <bos>/<eos>); every caption needs a word")
    return word_mask


def _check_region_mask(region_mask, shape: tuple[int, int]) -> None:
    if not isinstance(region_mask, torch.Tensor) or region_mask.dtype != torch.bool:
        raise TypeError(f"region_mask must be a bool tensor (True at real regions), "
                        f"got {getattr(region_mask, 'dtype', type(region_mask).__name__)}")
    if tuple(region_mask.shape) != shape:
        raise ValueError(f"region_mask has shape {tuple(region_mask.shape)}; expected {shape}, one flag per box")
    if not region_mask.any(1).all():
        raise ValueError("region_mask has a row with no real region; every image needs at least one")


def _check_alignment_inputs(regions, region_mask, words, word_mask) -> None:
    check_tensor("regions", regions, 3, floating=True)
    check_tensor("words", words, 3, floating=True)
    if regions.shape[2] != words.shape[2]:
        raise ValueError(f"regions has shape {tuple(regions.shape)} and words {tuple(words.shape)}; "
                         "expected the same last dimension D")
    _check_region_mask(region_mask, tuple(regions.shape[:2]))
    if not isinstance(word_mask, torch.Tensor) or word_mask.dtype != torch.bool:
        raise TypeError(f"word_mask must be a bool tensor (True at real words), "
                        f"got {getattr(word_mask, 'dtype', type(word_mask).__name__)}")
    if tuple(word_mask.shape) != tuple(words.shape[:2]):
        raise ValueError(f"word_mask has shape {tuple(word_mask.shape)}; expected {tuple(words.shape[:2])}")
    if not word_mask.any(1).all():
        raise ValueError("word_mask has a row with no word; every caption needs at least one word")


def _check_square(name: str, scores) -> None:
    check_tensor(name, scores, 2, floating=True)
    if scores.shape[0] != scores.shape[1] or len(scores) < 2:
        raise ValueError(f"{name} has shape {tuple(scores.shape)}; expected (B, B) with B >= 2, "
                         "images x captions with the true pairs on the diagonal")


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")



__all__ = ["RegionWordAligner", "contrastive_loss", "image_sentence_scores", "mean_best_region", "ranking_loss",
           "region_mask_of", "region_word_loss", "MARGIN"]
