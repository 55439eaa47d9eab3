"""VisualBERT: one BERT reads the words and the image regions together (Li et al. 2019, "VisualBERT:
A Simple and Performant Baseline for Vision and Language").

Single stream: a caption's tokens and an image's detected regions are concatenated into ONE
sequence, and one BERT encoder reads it. Every self-attention layer lets a word attend to regions
(and a region to words), so no alignment is given: the model has to discover which region a word
is about (implicit alignment), and its attention weights show what it found.

Embeddings (Li et al. 2019, section 3.2), one LayerNorm over each position as in BERT:

    word l:     e_l = LN( t_l + e_s(text)  + e_p(l) )            t_l: token embedding (BERT)
    region r:   f_r = LN( v_r W_v + e_s(image) + e_p(region) )    v_r: the region's visual feature

- v_r comes from an object detector (Faster R-CNN in the paper); here `RegionEncoder` (CNN +
  RoI-Align over the world's boxes) plays the detector, and where a region is in the image (its
  box geometry) is already inside v_r.
- e_s, the segment embedding, says "this is text" or "this is an image region".
- e_p, the position embedding: word l gets position l; the paper gives a region the sum of the
  positions of the words aligned with it when such an alignment is supplied (Flickr30k), and
  otherwise (as here, and in `transformers` without `image_text_alignment`) one learned vector
  shared by all regions.

Encoder: BERT's post-norm layers (`layers.TransformerEncoder(norm_first=False)`, GELU, eps 1e-12)

    x = LN(x + MultiHeadSelfAttention(x)),   x = LN(x + MLP(x)),

over [e_1 .. e_L ; f_1 .. f_R]: (B, L + R, D) hidden states, words first.

Pretraining (section 3.3), on image-caption pairs:
- masked language modelling *with the image*: 15% of the words are masked (BERT's 80/10/10) and
  predicted from the other words and the regions (`MaskedLanguageModelHead`, BERT's head with the
  decoder tied to the token embeddings);
- sentence-image prediction, here image-text matching (ITM): a 2-way classifier on the first
  token (`<bos>` plays BERT's `[CLS]`) says whether the caption belongs to the image
  (`MatchingHead`: BERT's pooler, tanh(W h_0), then a linear layer).

`mlm_itm_loss(model, batch)` is that pair of losses for `fit`, written once here and shared with
ViLT (`mmcourse.models.vilt`), whose pretraining heads are the same: for B image-caption pairs,
the B positives (image i, masked caption i) and B negatives (image i, masked caption of another
image, `layers.mismatched_partners`) are read in one forward pass of 2B sequences; the MLM loss is
taken on the positives, the ITM cross-entropy on all 2B.

- `VisualBERT`: the single-stream encoder over given region features (`from_transformers` copies
  a `transformers.VisualBertModel`'s weights; the test proves the outputs equal).
- `VisualBERTPretraining`: `RegionEncoder` -> `VisualBERT` -> MLM and ITM heads; `itm_logits` and
  `word_region_attention` (each word's attention over the regions) for notebook 03.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..world.language import SPECIAL_TOKENS, Tokenizer, default_tokenizer
from .encoders import RegionEncoder, check_tensor
from .grounding import check_boxes
from .layers import (TransformerEncoder, balanced_class_weights, mask_tokens, mismatched_partners, mlm_loss,
                     stack_padded)

BERT_EPS = 1e-12  # LayerNorm epsilon of BERT, VisualBERT and ViLT
BERT_INIT_STD = 0.02  # standard deviation of BERT-base's initial weights...
BERT_WIDTH = 768  # ...at its width
TEXT, IMAGE = 0, 1  # segment (VisualBERT) / modality type (ViLT) ids
ATTENTION_LAYER = -1  # the layer `word_region_attention` reads by default: the last (see its docstring)


# --------------------------------------------------------------------------------------------
# The single-stream encoder
# --------------------------------------------------------------------------------------------


class VisualBERT(nn.Module):
    """(B, L) token ids and (B, R, visual_dim) region features -> (B, L + R, width) hidden states.

    Masks follow `transformers`: `attention_mask` (B, L) and `visual_attention_mask` (B, R) are 1
    (True) at real tokens and regions, 0 at padding; padded positions get no attention.
    `max_length` is the number of word positions (BERT's max_position_embeddings).
    """

    def __init__(self, vocab_size: int, visual_dim: int, width: int = 64, depth: int = 2, heads: int = 4,
                 max_length: int = 48, mlp_width: int | None = None, dropout: float = 0.0, pad_id: int = 0,
                 eps: float = BERT_EPS):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("visual_dim", visual_dim), ("max_length", max_length)):
            check_positive_int(name, value)
        self.token = nn.Embedding(vocab_size, width, padding_idx=pad_id)  # t_l
        self.position = nn.Embedding(max_length, width)  # e_p(l) of words
        self.region_position = nn.Parameter(torch.zeros(width))  # e_p shared by every region
        self.segment = nn.Embedding(2, width)  # e_s: row TEXT, row IMAGE
        self.visual_projection = nn.Linear(visual_dim, width)  # W_v
        self.embedding_norm = nn.LayerNorm(width, eps=eps)
        self.embedding_dropout = nn.Dropout(dropout)
        self.encoder = TransformerEncoder(width, depth, heads, mlp_width, norm_first=False, eps=eps,
                                          final_norm=False, dropout=dropout)
        self.vocab_size, self.visual_dim, self.width, self.max_length = vocab_size, visual_dim, width, max_length
        self.apply(init_bert_weights)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, visual_embeds: torch.Tensor,
                visual_attention_mask: torch.Tensor) -> torch.Tensor:
        real_tokens, real_regions = self._check_inputs(input_ids, attention_mask, visual_embeds, visual_attention_mask)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (L,)
        words = self.token(input_ids) + self.segment.weight[TEXT] + self.position(positions)  # (B, L, D)
        regions = (self.visual_projection(visual_embeds) + self.segment.weight[IMAGE]
                   + self.region_position)  # (B, R, D)
        x = self.embedding_dropout(self.embedding_norm(torch.cat([words, regions], 1)))  # (B, L + R, D)
        padding = ~torch.cat([real_tokens, real_regions], 1)  # (B, L + R), True where nothing is
        return self.encoder(x, padding_mask=padding)  # (B, L + R, D)

    def self_attention_weights(self) -> list[torch.Tensor]:
        """The last forward's self-attention weights, one (B, heads, L + R, L + R) tensor per layer."""
        return self.encoder.self_attention_weights()

    @classmethod
    def from_transformers(cls, model) -> "VisualBERT":
        """A `VisualBERT` with the weights of a `transformers.VisualBertModel` (eval mode, same outputs).

        Text tokens get `token_type_embeddings[0]`, regions `visual_token_type_embeddings[1]` and
        `visual_position_embeddings[0]`: what `VisualBertModel` adds when called without
        `token_type_ids`, `visual_token_type_ids` and `image_text_alignment`.
        """
        config = _check_visualbert_model(model)
        ours = cls(config.vocab_size, config.visual_embedding_dim, config.hidden_size, config.num_hidden_layers,
                   config.num_attention_heads, config.max_position_embeddings, config.intermediate_size,
                   pad_id=config.pad_token_id if config.pad_token_id is not None else 0, eps=config.layer_norm_eps)
        embeddings = model.embeddings
        with torch.no_grad():
            ours.token.weight.copy_(embeddings.word_embeddings.weight)
            ours.position.weight.copy_(embeddings.position_embeddings.weight)
            ours.region_position.copy_(embeddings.visual_position_embeddings.weight[0])
            ours.segment.weight[TEXT].copy_(embeddings.token_type_embeddings.weight[0])
            ours.segment.weight[IMAGE].copy_(embeddings.visual_token_type_embeddings.weight[1])
            ours.visual_projection.load_state_dict(embeddings.visual_projection.state_dict())
            ours.embedding_norm.load_state_dict(embeddings.LayerNorm.state_dict())
            for layer, theirs in zip(ours.encoder.layers, model.encoder.layer):
                attention = theirs.attention
                for name in ("query", "key", "value"):
                    getattr(layer.attention, name).load_state_dict(getattr(attention.self, name).state_dict())
                layer.attention.out.load_state_dict(attention.output.dense.state_dict())
                layer.attention_norm.load_state_dict(attention.output.LayerNorm.state_dict())
                layer.mlp[0].load_state_dict(theirs.intermediate.dense.state_dict())
                layer.mlp[2].load_state_dict(theirs.output.dense.state_dict())
                layer.mlp_norm.load_state_dict(theirs.output.LayerNorm.state_dict())
        return ours.train(model.training)

    def _check_inputs(self, input_ids, attention_mask, visual_embeds, visual_attention_mask):
        check_ids("input_ids", input_ids, self.vocab_size, self.max_length)
        check_tensor("visual_embeds", visual_embeds, 3, floating=True)
        if len(visual_embeds) != len(input_ids) or visual_embeds.shape[2] != self.visual_dim:
            raise ValueError(f"visual_embeds has shape {tuple(visual_embeds.shape)}; expected "
                             f"({len(input_ids)}, R, {self.visual_dim}), one row of R regions per text")
        real_tokens = real_positions("attention_mask", attention_mask, tuple(input_ids.shape))
        real_regions = real_positions("visual_attention_mask", visual_attention_mask, tuple(visual_embeds.shape[:2]))
        if not (real_tokens.any(1) | real_regions.any(1)).all():
            raise ValueError("attention_mask and visual_attention_mask hide every position of some row; "
                             "each sequence needs a real token or region")
        return real_tokens, real_regions


# --------------------------------------------------------------------------------------------
# BERT's pretraining heads (shared with ViLT)
# --------------------------------------------------------------------------------------------


class MaskedLanguageModelHead(nn.Module):
    """BERT's MLM head: (B, L, D) -> (B, L, V) = LN(GELU(h W)) E^T + b, E the token embeddings (tied)."""

    def __init__(self, token_embedding: nn.Embedding, eps: float = BERT_EPS):
        super().__init__()
        width = token_embedding.embedding_dim
        self.transform = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width, eps=eps))
        self.token_embedding = token_embedding  # the decoder's weight: the input embeddings, tied
        self.bias = nn.Parameter(torch.zeros(token_embedding.num_embeddings))
        self.transform.apply(init_bert_weights)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(hidden), self.token_embedding.weight, self.bias)  # (B, L, V)


class MatchingHead(nn.Module):
    """BERT's pooler and a 2-way classifier: (B, D) first-token states -> (B, 2) ITM logits,
    class 1 = "the text matches the image"."""

    def __init__(self, width: int):
        super().__init__()
        self.pooler = nn.Sequential(nn.Linear(width, width), nn.Tanh())
        self.classifier = nn.Linear(width, 2)
        self.apply(init_bert_weights)

    def forward(self, first_token: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pooler(first_token))  # (B, 2)


def mlm_itm_loss(model: nn.Module, batch: dict,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`fit`'s loss_fn for a single-stream pretraining model over `CaptionDataset` batches:
    L = L_MLM + L_ITM, logging mlm_loss, mlm_accuracy, itm_loss and itm_accuracy.

    `model` is a `VisualBERTPretraining` or `ViLTPretraining`: `model.image_side(batch)` computes
    the image's units once, `model.encode(image_side, ids)` reads them with texts into hidden
    states (words first), and `model.mlm_head`, `model.itm_head` score them. The B images
    are each paired twice: with their own caption (ITM class 1) and with another image's
    (`mismatched_partners`, class 0); when the batch has "swapped_tokens" (B, L') and "has_swap"
    (B,) (`experiments.alignment.SwappedCaptionDataset`), also with their own caption with one
    attribute word swapped (class 0, a hard negative), for the rows that have one. The captions
    are BERT-masked (`mask_tokens`) and the MLM loss is taken on the positives only; the ITM
    cross-entropy weighs the two classes equally however many negatives there are. `generator`
    drives the masking and the pairing (default: torch's global RNG, which `fit`'s checkpoints
    restore).
    """
    ids = check_ids("batch['tokens']", batch["tokens"], model.tokenizer.vocab_size)
    size = len(ids)
    masked, labels = mask_tokens(ids, model.tokenizer.mask_id, model.tokenizer.vocab_size,
                                 special_ids(model.tokenizer), generator=generator)  # (B, L) each
    partners = mismatched_partners(size, generator).to(ids.device)  # (B,)
    texts = [masked, masked[partners]]  # its own caption, then another image's
    images_of = [torch.arange(size), torch.arange(size)]  # (B,) each: the image each text is read with
    if "swapped_tokens" in batch:
        swapped_rows = torch.as_tensor(batch["has_swap"]).cpu().nonzero().squeeze(1)  # (S,)
        swapped, _ = mask_tokens(batch["swapped_tokens"][swapped_rows.to(ids.device)], model.tokenizer.mask_id,
                                 model.tokenizer.vocab_size, special_ids(model.tokenizer), generator=generator)
        texts.append(swapped)  # (S, L') hard negatives
        images_of.append(swapped_rows)
    texts = stack_padded(texts, model.tokenizer.pad_id)  # (B + N, L)
    images_of = torch.cat(images_of).to(ids.device)  # (B + N,)
    image_side = model.image_side(batch)  # tuple of (B, ...) tensors, computed once
    hidden = model.encode(tuple(part[images_of] for part in image_side), texts)  # (B + N, L + units, D), words first
    mlm_logits = model.mlm_head(hidden[:size, : ids.shape[1]])  # (B, L, V) on the positives only
    itm_logits = model.itm_head(hidden[:, 0])  # (B + N, 2) from the first token
    matches = (torch.arange(len(texts), device=ids.device) < size).long()  # (B + N,) 1 for the true pairs
    loss_mlm = mlm_loss(mlm_logits, labels)
    loss_itm = F.cross_entropy(itm_logits, matches, weight=balanced_class_weights(matches, itm_logits.dtype))
    with torch.no_grad():
        scored = labels != -100
        mlm_accuracy = (mlm_logits.argmax(-1)[scored] == labels[scored]).float().mean()
        itm_accuracy = (itm_logits.argmax(-1) == matches).float().mean()
    return loss_mlm + loss_itm, {"mlm_loss": loss_mlm.detach(), "mlm_accuracy": mlm_accuracy,
                                 "itm_loss": loss_itm.detach(), "itm_accuracy": itm_accuracy}


def seeded_mlm_itm_loss(seed: int) -> Callable[[nn.Module, dict], tuple[torch.Tensor, dict]]:
    """`mlm_itm_loss` with its own `torch.Generator` seeded by `seed` (masks and negatives then do
    not depend on any other random draw)."""
    check_nonnegative_int("seed", seed)
    generator = torch.Generator().manual_seed(seed)
    return lambda model, batch: mlm_itm_loss(model, batch, generator)


# --------------------------------------------------------------------------------------------
# The pretraining model
# --------------------------------------------------------------------------------------------


class VisualBERTPretraining(nn.Module):
    """`RegionEncoder` (the detector's stand-in) -> `VisualBERT` -> MLM and ITM heads.

    Inputs everywhere: images (B, 3, H, W) in [0, 1], boxes (B, K, 4) xyxy pixels, region_mask
    (B, K) bool (True for the real boxes) and ids (B, L) `<bos>`..`<eos>` token ids of the world's
    tokenizer (padding = `<pad>`). Region features have the model's `width`; `stages` is the
    detector CNN's depth (feature stride 2**stages).

    The stand-in detector's features share a large common part (at initialisation two regions'
    embeddings have cosine ~0.96), so each feature is standardised over the batch's real regions
    (`region_norm`, a BatchNorm without affine parameters; running statistics at eval time):
    regions then differ as words do, and image-text matching starts learning sooner (~175 instead
    of ~225 steps of 128 pairs in our runs).
    """

    def __init__(self, width: int = 64, depth: int = 2, heads: int = 4, max_length: int = 48, roi_size: int = 3,
                 stages: int = 3, dropout: float = 0.0, tokenizer: Tokenizer | None = None):
        super().__init__()
        self.tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
        self.regions = RegionEncoder(width, roi_size, stages)
        self.region_norm = nn.BatchNorm1d(width, affine=False)  # standardises the stand-in detector's features
        self.bert = VisualBERT(self.tokenizer.vocab_size, width, width, depth, heads, max_length,
                               dropout=dropout, pad_id=self.tokenizer.pad_id)
        self.mlm_head = MaskedLanguageModelHead(self.bert.token)
        self.itm_head = MatchingHead(width)

    def image_side(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(region features (B, K, D), region_mask (B, K)) of a `CaptionDataset` batch (the first
        `num_objects` boxes are real)."""
        boxes = batch["boxes"]
        num_objects = torch.as_tensor(batch["num_objects"], device=boxes.device)  # (B,)
        region_mask = torch.arange(boxes.shape[1], device=boxes.device) < num_objects[:, None]  # (B, K)
        return self._regions(batch["image"], boxes, region_mask)

    def encode(self, image_side: tuple[torch.Tensor, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
        """(B, L + K, D) hidden states of the words, then the regions, of `ids` read with
        `image_side` = (region features (B, K, D), region_mask (B, K)) from `image_side(batch)`."""
        features, region_mask = image_side
        check_ids("ids", ids, self.tokenizer.vocab_size, self.bert.max_length)
        if len(ids) != len(features):
            raise ValueError(f"ids has {len(ids)} rows but there are {len(features)} images; "
                             "expected one text per image")
        return self.bert(ids, ids != self.tokenizer.pad_id, features, region_mask)  # (B, L + K, D)

    def forward(self, images: torch.Tensor, boxes: torch.Tensor, region_mask: torch.Tensor,
                ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(MLM logits (B, L, V) at the words, ITM logits (B, 2) from the first token)."""
        hidden = self.encode(self._regions(images, boxes, region_mask), ids)  # (B, L + K, D)
        return self.mlm_head(hidden[:, : ids.shape[1]]), self.itm_head(hidden[:, 0])

    def itm_logits(self, images: torch.Tensor, boxes: torch.Tensor, region_mask: torch.Tensor,
                   ids: torch.Tensor) -> torch.Tensor:
        """(B, 2) image-text matching logits, class 1 = "ids describes this image"."""
        return self.itm_head(self.encode(self._regions(images, boxes, region_mask), ids)[:, 0])

    def word_region_attention(self, images: torch.Tensor, boxes: torch.Tensor, region_mask: torch.Tensor,
                              ids: torch.Tensor, layer: int = ATTENTION_LAYER) -> torch.Tensor:
        """(B, L, K): how much each text token attends to each region in self-attention layer
        `layer`, averaged over heads and renormalised over the regions (rows sum to 1; padded
        regions get 0).

        The default is the last layer, whose output the heads read. In our runs (width 64, depth 2,
        up to 312 steps of 128 pairs at 64 px) no layer grounds the words yet: the referring
        expressions' target words put ~0.29 of their region attention on the referred object in
        either layer, about the share of one region of four, so pick `layer` to compare.
        """
        depth = len(self.bert.encoder.layers)
        if isinstance(layer, bool) or not isinstance(layer, int) or not -depth <= layer < depth:
            raise ValueError(f"layer must be an int in [-{depth}, {depth}), got {layer!r}")
        self.encode(self._regions(images, boxes, region_mask), ids)
        weights = self.bert.self_attention_weights()[layer].mean(1)  # (B, L + K, L + K) averaged over heads
        length = ids.shape[1]
        word_to_region = weights[:, :length, length:]  # (B, L, K) text rows, region columns
        return word_to_region / word_to_region.sum(-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)

    def _regions(self, images, boxes, region_mask) -> tuple[torch.Tensor, torch.Tensor]:
        check_tensor("images", images, 4, floating=True)
        check_boxes("boxes", boxes, len(images))
        check_bool_mask("region_mask", region_mask, tuple(boxes.shape[:2]))
        features = self.regions(images, boxes)  # (B, K, D)
        standardised = torch.zeros_like(features)
        standardised[region_mask] = self.region_norm(features[region_mask])  # over the real regions of the batch
        return standardised, region_mask  # (B, K, D), (B, K)


def init_bert_weights(module: nn.Module) -> None:
    """BERT's initialisation scaled to our widths, for `module.apply`: embeddings N(0, 0.02^2);
    linear and convolution weights N(0, s^2) with s = 0.02 sqrt(768 / fan_in), which is BERT-base's
    0.02 at its width 768; biases 0; LayerNorms the identity (1, 0).

    Why scaled: a residual branch (attention, MLP) multiplies its input by ~ (s sqrt(fan_in))^2, and
    BERT's fixed 0.02 at width 64 makes that 0.03 instead of 0.3: the first token then barely reads
    the other positions and image-text matching does not start to learn. Small embeddings keep the
    tied MLM decoder's first logits near zero (loss ~ ln V).
    """
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        fan_in = module.weight[0].numel()
        nn.init.normal_(module.weight, std=BERT_INIT_STD * math.sqrt(BERT_WIDTH / fan_in))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=BERT_INIT_STD)
        if module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------------------------
# Checks (shared with ViLT)
# --------------------------------------------------------------------------------------------


def special_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
    """The ids MLM never masks: every special token but `<mask>` (pad, unk, cls, sep, bos, eos)."""
    return tuple(tokenizer.stoi[token] for token in SPECIAL_TOKENS if token != "<mask>")


def check_ids(name: str, ids, vocab_size: int, max_length: int | None = None) -> torch.Tensor:
    """Refuse anything but (B, L) integer ids in [0, vocab_size), L <= max_length, B >= 1."""
    check_tensor(name, ids, 2, floating=False)
    if ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of token ids, got {ids.dtype}")
    if ids.numel() == 0:
        raise ValueError(f"{name} has shape {tuple(ids.shape)}; expected (B, L) with B, L >= 1")
    if max_length is not None and ids.shape[1] > max_length:
        raise ValueError(f"{name} has shape {tuple(ids.shape)}: {ids.shape[1]} positions, more than "
                         f"max_length={max_length}")
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"{name} holds ids outside [0, {vocab_size}): min {int(ids.min())}, max {int(ids.max())}")
    return ids


def real_positions(name: str, mask, shape: tuple[int, ...]) -> torch.Tensor:
    """A `transformers`-style mask (bool, or numbers 0/1; 1 = real) of `shape` as a bool tensor."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of 0/1 (1 = real position), got {type(mask).__name__}")
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(mask.shape)}; expected {shape}")
    if mask.dtype != torch.bool and ((mask != 0) & (mask != 1)).any():
        raise ValueError(f"{name} must hold only 0 and 1 (1 = real position); got other values")
    return mask.bool()


def check_bool_mask(name: str, mask, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        seen = getattr(mask, "dtype", type(mask).__name__)
        raise TypeError(f"{name} must be a bool tensor (True = real), got {seen}")
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(mask.shape)}; expected {shape}")
    return mask


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_nonnegative_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def _check_visualbert_model(model):
    config = getattr(model, "config", None)
    if type(model).__name__ != "VisualBertModel" or config is None:
        raise TypeError(f"model must be a transformers.VisualBertModel, got {type(model).__name__}")
    if config.hidden_act != "gelu":
        raise ValueError(f"model uses hidden_act={config.hidden_act!r}; VisualBERT here has GELU ('gelu') only")
    if config.bypass_transformer:
        raise ValueError("model has bypass_transformer=True (text-only encoder + one joint layer); "
                         "VisualBERT here is the plain single stream")
    return config


__all__ = ["VisualBERT", "VisualBERTPretraining", "MaskedLanguageModelHead", "MatchingHead", "mlm_itm_loss",
           "seeded_mlm_itm_loss", "init_bert_weights", "special_ids", "check_ids", "real_positions",
           "check_bool_mask", "BERT_EPS", "ATTENTION_LAYER"]
