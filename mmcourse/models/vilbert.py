"""ViLBERT: two streams joined by co-attention (Lu et al. 2019, "ViLBERT: Pretraining Task-Agnostic
Visiolinguistic Representations for Vision-and-Language Tasks").

Where VisualBERT puts words and regions in one sequence, ViLBERT keeps a text stream and an image
stream, each a transformer of its own, and lets them talk only through *co-attentional* layers:
in each one, the text stream's queries attend to the image stream's keys and values, and at the
same time the image stream's queries attend to the text stream's:

    text  <- text  + Attention(Q = text W_q,  K = image W_k, V = image W_v)
    image <- image + Attention(Q = image W_q', K = text W_k', V = text W_v')

Both read the other stream as it was before the layer (simultaneously, not one after the other).

- Text stream: BERT's embeddings (token + learned position, LayerNorm); the first token (`<bos>`
  here) plays `[CLS]`.
- Image stream: `RegionEncoder` features of the world's boxes (a box's geometry is added inside,
  as the paper adds a projected 5-d location) with, first, an `[IMG]` token: the mean of the
  region features, as in the paper, plus the feature of the whole-image box (its location and a
  coarse look at the picture), then a LayerNorm.
- `CoAttentionLayer`: one `layers.TransformerLayer` per stream with cross-attention to the other,
  BERT's post-norm. Each computes self-attention, then co-attention, then its MLP: the paper's
  co-attentional block (co-attention + MLP) and the transformer block that follows it in each
  stream, merged into one residual stack with a single MLP, so the course's smallest ViLBERT is a
  single layer.
- Pretraining (section 3.2): masked language modelling with the image (BERT's 80/10/10 masking of
  15% of the words, predicted from the text stream), and image-text matching on the element-wise
  product of the two pooled outputs, h_IMG * h_CLS, each pooled by a linear layer and a ReLU as in
  the authors' code, then a linear 2-way classifier (class 1 = "matches").

Training it small (what we measured; see `experiments.alignment`). ViLBERT reads the regions of a
Faster R-CNN pretrained on Visual Genome's objects and attributes, and starts its text stream from
BERT; from scratch, in a few hundred steps, image-text matching stays at chance (ITM loss 0.693
for 750 steps at 32 pixels) while MLM learns. Pretraining the region encoder on the world's
attribute labels (`experiments.alignment.pretrain_region_encoder`, seconds) and freezing it, as
the paper keeps its detector, lets ITM leave chance after a few hundred steps. Against captions
that differ from the true one in one attribute word it stays weak: about 0.60 of held-out true
captions score above their swapped twin after 1,250 steps (mostly shape swaps; colour, size and
style swaps stay near chance), where Karpathy & Fei-Fei's explicit score reaches 0.83 after 372.
Matching from a fused representation learns slowly, the problem ALBEF answers by aligning before
fusing (`mmcourse.models.albef`).

Implicit, not explicit alignment. The lecture's table files ViLBERT's co-attention under
"explicit"; that is loose. Nothing tells the model which word should attend to which region: the
co-attention weights are a latent alignment, learned only because it helps masked words and
matching, exactly as VisualBERT's joint self-attention is. Compare Karpathy & Fei-Fei's model
(`mmcourse.models.region_word`), where the word-region assignment is the output itself: read as
an alignment (each word's most attended region), the co-attention of the ViLBERT above picks the
object a word names for 0.31 of the words (chance 0.26), Karpathy & Fei-Fei's scores for 0.71.

- `ViLBERT`: the model; `itm_logits`, `word_region_attention` (text queries over region keys).
- `vilbert_loss(model, batch, generator)`: MLM + ITM for `fit` over `CaptionDataset` batches
  (negatives: another image's caption, `layers.mismatched_partners`; with the batch key
  "swapped_tokens", also the same caption with one attribute word swapped).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from ..world.language import Tokenizer, default_tokenizer
from .encoders import RegionEncoder, check_positive_int, check_tensor, masked_mean
from .layers import TransformerLayer, balanced_class_weights, mask_tokens, mismatched_partners, mlm_loss, stack_padded
from .region_word import region_mask_of
from .visualbert import BERT_EPS, MaskedLanguageModelHead, init_bert_weights, special_ids

ATTENTION_LAYER = 0  # the co-attentional layer `word_region_attention` reads by default


# --------------------------------------------------------------------------------------------
# Co-attention
# --------------------------------------------------------------------------------------------


class CoAttentionLayer(nn.Module):
    """(text (B, L, D), image (B, 1 + K, D)) -> the same shapes, each stream attending to the other.

    `text_padding` (B, L) and `image_padding` (B, 1 + K) are True at padding; a padded token or
    region gets no attention, from its own stream or the other.
    """

    def __init__(self, width: int, heads: int, mlp_width: int | None = None, dropout: float = 0.0,
                 eps: float = BERT_EPS):
        super().__init__()
        self.text = TransformerLayer(width, heads, mlp_width, norm_first=False, eps=eps, cross_attention=True,
                                     dropout=dropout)  # text queries; image keys and values
        self.image = TransformerLayer(width, heads, mlp_width, norm_first=False, eps=eps, cross_attention=True,
                                      dropout=dropout)  # image queries; text keys and values

    def forward(self, text: torch.Tensor, text_padding: torch.Tensor, image: torch.Tensor,
                image_padding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new_text = self.text(text, text_padding, context=image, context_padding_mask=image_padding)  # (B, L, D)
        new_image = self.image(image, image_padding, context=text, context_padding_mask=text_padding)  # (B, 1 + K, D)
        return new_text, new_image


class ImageTextMatchingHead(nn.Module):
    """ViLBERT's ITM head: (h_CLS (B, D), h_IMG (B, D)) -> (B, 2) logits of
    Linear(ReLU(W_t h_CLS) * ReLU(W_v h_IMG)), class 1 = "the text matches the image"."""

    def __init__(self, width: int):
        super().__init__()
        self.text_pooler = nn.Sequential(nn.Linear(width, width), nn.ReLU())
        self.image_pooler = nn.Sequential(nn.Linear(width, width), nn.ReLU())
        self.classifier = nn.Linear(width, 2)

    def forward(self, text_first: torch.Tensor, image_first: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.text_pooler(text_first) * self.image_pooler(image_first))  # (B, 2)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class ViLBERT(nn.Module):
    """Text stream and image stream joined by `depth` co-attentional layers, with MLM and ITM heads.

    Inputs everywhere: images (B, 3, H, W) in [0, 1], boxes (B, K, 4) xyxy pixels, region_mask
    (B, K) bool (True for the real boxes) and ids (B, L) `<bos>`..`<eos>` token ids of `tokenizer`
    (default: the world's). `mlp_width` (default 4 * width) sets each layer's MLP; `stages` the
    region encoder's CNN (stride 2 ** stages: fewer keep a region's feature to its own box).
    """

    def __init__(self, width: int = 64, depth: int = 1, heads: int = 4, mlp_width: int | None = None,
                 max_length: int = 48, roi_size: int = 3, stages: int = 1, dropout: float = 0.0,
                 tokenizer: Tokenizer | None = None):
        super().__init__()
        for name, value in (("depth", depth), ("max_length", max_length)):
            check_positive_int(name, value)
        self.tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
        self.token = nn.Embedding(self.tokenizer.vocab_size, width, padding_idx=self.tokenizer.pad_id)
        self.position = nn.Embedding(max_length, width)
        self.text_norm = nn.LayerNorm(width, eps=BERT_EPS)
        self.region_encoder = RegionEncoder(width, roi_size, stages)
        self.image_norm = nn.LayerNorm(width, eps=BERT_EPS)
        self.layers = nn.ModuleList(CoAttentionLayer(width, heads, mlp_width, dropout) for _ in range(depth))
        self.itm_head = ImageTextMatchingHead(width)
        self.mlm_head = MaskedLanguageModelHead(self.token)  # decoder tied to the token embeddings
        for part in (self.token, self.position, self.text_norm, self.image_norm, self.layers, self.itm_head):
            part.apply(init_bert_weights)
        self.width, self.max_length = width, max_length

    def image_tokens(self, images: torch.Tensor, boxes: torch.Tensor,
                     region_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The image stream's input (B, 1 + K, D), `[IMG]` first, and its padding (B, 1 + K), True at padding.

        `[IMG]` is the mean of the real regions' features (the paper's) plus the feature of the
        whole-image box (its location, and a coarse look at the whole picture)."""
        _check_image_inputs(images, boxes, region_mask)
        side = images.shape[-1]
        whole = boxes.new_tensor([0.0, 0.0, side, side]).expand(len(boxes), 1, 4)  # (B, 1, 4) the whole image
        features = self.region_encoder(images, torch.cat([whole, boxes], 1))  # (B, 1 + K, D)
        regions = features[:, 1:]  # (B, K, D)
        img = features[:, :1] + masked_mean(regions, region_mask)[:, None]  # (B, 1, D)
        padding = ~torch.cat([region_mask.new_ones(len(boxes), 1), region_mask], 1)  # (B, 1 + K)
        return self.image_norm(torch.cat([img, regions], 1)), padding

    def encode(self, image: torch.Tensor, image_padding: torch.Tensor,
               ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(text states (B, L, D), image states (B, 1 + K, D)) after the co-attentional layers, from
        `image_tokens`' output and token `ids` (B, L)."""
        self._check_ids(ids, len(image))
        positions = torch.arange(ids.shape[1], device=ids.device)  # (L,)
        text = self.text_norm(self.token(ids) + self.position(positions))  # (B, L, D)
        text_padding = ids == self.tokenizer.pad_id  # (B, L)
        for layer in self.layers:
            text, image = layer(text, text_padding, image, image_padding)  # (B, L, D), (B, 1 + K, D)
        return text, image

    def forward(self, images: torch.Tensor, boxes: torch.Tensor, region_mask: torch.Tensor,
                ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(MLM logits (B, L, V) from the text stream, ITM logits (B, 2) from h_CLS * h_IMG)."""
        text, image = self.encode(*self.image_tokens(images, boxes, region_mask), ids)
        return self.mlm_head(text), self.matching_logits(text, image)

    def itm_logits(self, images: torch.Tensor, boxes: torch.Tensor, region_mask: torch.Tensor,
                   ids: torch.Tensor) -> torch.Tensor:
        """(B, 2) image-text matching logits, class 1 = "ids describes this image"."""
        text, image = self.encode(*self.image_tokens(images, boxes, region_mask), ids)
        return self.matching_logits(text, image)

    def matching_logits(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """(B, 2) ITM logits from the streams' states (B, L, D) and (B, 1 + K, D): h_CLS, the first
        token's, and h_IMG, the `[IMG]` token's."""
        return self.itm_head(text[:, 0], image[:, 0])  # (B, 2)

    def word_region_attention(self, images: torch.Tensor, boxes: torch.Tensor, region_mask: torch.Tensor,
                              ids: torch.Tensor, layer: int = ATTENTION_LAYER) -> torch.Tensor:
        """(B, L, K): each text token's co-attention over the regions in co-attentional layer
        `layer` (text queries, region keys), averaged over heads, without `[IMG]` and renormalised
        over the real regions (rows sum to 1; padded regions get 0; rows of padding tokens are 0)."""
        if isinstance(layer, bool) or not isinstance(layer, int) or not -len(self.layers) <= layer < len(self.layers):
            raise ValueError(f"layer must be an int in [{-len(self.layers)}, {len(self.layers)}), got {layer!r}")
        self.encode(*self.image_tokens(images, boxes, region_mask), ids)
        weights = self.layers[layer].text.cross_attention_weights.mean(1)  # (B, L, 1 + K) averaged over heads
        to_regions = weights[:, :, 1:]  # (B, L, K) without `[IMG]`
        to_regions = to_regions / to_regions.sum(-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
        return to_regions * (ids != self.tokenizer.pad_id)[..., None]

    def _check_ids(self, ids, batch_size: int) -> None:
        check_tensor("ids", ids, 2, floating=False)
        if len(ids) != batch_size:
            raise ValueError(f"ids has shape {tuple(ids.shape)}; expected ({batch_size}, L), one text per image")
        if ids.shape[1] > self.max_length:
            raise ValueError(f"ids has shape {tuple(ids.shape)}: more than max_length={self.max_length} positions")
        if ids.min() < 0 or ids.max() >= self.tokenizer.vocab_size:
            raise ValueError(f"ids holds ids outside [0, {self.tokenizer.vocab_size}): "
                             f"min {int(ids.min())}, max {int(ids.max())}")
        if (ids == self.tokenizer.pad_id).all(1).any():
            raise ValueError("ids has a row made only of padding; every text needs at least one token")


# --------------------------------------------------------------------------------------------
# Pretraining loss
# --------------------------------------------------------------------------------------------


def vilbert_loss(model: ViLBERT, batch: dict,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`fit`'s loss_fn over `CaptionDataset` batches: L = L_MLM + L_ITM, logging both and the ITM accuracy.

    Every image is read with its own caption (ITM class 1) and another image's
    (`mismatched_partners`, class 0); when the batch has "swapped_tokens" (B, L') and "has_swap"
    (B,) (see `experiments.alignment`), also with its own caption with one attribute word swapped
    (class 0, a hard negative), for the rows that have one. The cross-entropy weighs the two
    classes equally however many negatives there are. All captions are BERT-masked
    (`mask_tokens`), so a `<mask>` says nothing about the class; the MLM loss is taken on the true
    pairs only. `generator` drives the masking and the pairing (default: torch's global RNG).
    """
    ids, size = batch["tokens"], len(batch["tokens"])
    image, image_padding = model.image_tokens(batch["image"], batch["boxes"], region_mask_of(batch))  # computed once
    negatives = [ids[mismatched_partners(size, generator).to(ids.device)]]  # (B, L) another image's caption
    images_of = [torch.arange(size), torch.arange(size)]  # image i reads its caption, then a partner's
    if "swapped_tokens" in batch:
        swapped_rows = torch.as_tensor(batch["has_swap"]).cpu().nonzero().squeeze(1)  # (S,)
        negatives.append(batch["swapped_tokens"][swapped_rows.to(ids.device)])  # (S, L') hard negatives
        images_of.append(swapped_rows)
    texts = stack_padded([ids] + negatives, model.tokenizer.pad_id)  # (B + N, L): true captions first
    masked, labels = mask_tokens(texts, model.tokenizer.mask_id, model.tokenizer.vocab_size,
                                 special_ids(model.tokenizer), generator=generator)  # (B + N, L) each
    images_of = torch.cat(images_of).to(ids.device)  # (B + N,) the image each text is read with
    text, image = model.encode(image[images_of], image_padding[images_of], masked)  # (B + N, L, D), (B + N, 1 + K, D)
    itm_logits = model.matching_logits(text, image)  # (B + N, 2)
    matches = (torch.arange(len(texts), device=ids.device) < size).long()  # (B + N,) 1 for the true pairs
    loss_itm = F.cross_entropy(itm_logits, matches, weight=balanced_class_weights(matches, itm_logits.dtype))
    loss_mlm = mlm_loss(model.mlm_head(text[:size]), labels[:size])
    with torch.no_grad():
        itm_accuracy = (itm_logits.argmax(-1) == matches).float().mean()
    return loss_mlm + loss_itm, {"mlm_loss": loss_mlm.detach(), "itm_loss": loss_itm.detach(),
                                 "itm_accuracy": itm_accuracy}


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def _check_image_inputs(images, boxes, region_mask) -> None:
    check_tensor("images", images, 4, floating=True)
    check_tensor("boxes", boxes, 3, floating=True)
    if len(boxes) != len(images) or boxes.shape[2] != 4:
        raise ValueError(f"boxes has shape {tuple(boxes.shape)}; expected ({len(images)}, K, 4) xyxy pixel boxes")
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images has shape {tuple(images.shape)}; expected square (B, 3, S, S) images")
    if not isinstance(region_mask, torch.Tensor) or region_mask.dtype != torch.bool:
        raise TypeError(f"region_mask must be a bool tensor (True at real boxes), "
                        f"got {getattr(region_mask, 'dtype', type(region_mask).__name__)}")
    if tuple(region_mask.shape) != tuple(boxes.shape[:2]):
        raise ValueError(f"region_mask has shape {tuple(region_mask.shape)}; expected {tuple(boxes.shape[:2])}")



__all__ = ["CoAttentionLayer", "ImageTextMatchingHead", "ViLBERT", "vilbert_loss", "ATTENTION_LAYER"]
