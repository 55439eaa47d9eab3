"""ALBEF: Align before Fuse (Li et al. 2021, "Align before Fuse: Vision and Language Representation
Learning with Momentum Distillation"), in miniature.

A ViT encodes the image into [CLS] + patch tokens, a bidirectional transformer encodes the text,
and a *fusion* encoder lets every text token look at the image tokens through cross-attention
(queries from the text, keys and values from the image). The key idea is in the name: the two
unimodal [CLS] features are first *aligned* in a shared space by a contrastive loss (CLIP-style,
ITC), so the fusion encoder receives features that already agree, and only then *fused*. Three losses:

- ITC, image-text contrastive (eq. 1-2), with the keys of MoCo (He et al. 2020): a *momentum model*,
  an exponential moving average of the unimodal encoders and projections,

      theta_m <- m * theta_m + (1 - m) * theta,

  encodes the batch, and *queues* keep its features of the last Q pairs as extra negatives.
  s(I, T) = g_v(v_cls)^T g'_w(w'_cls) / tau, the prime marking the momentum model, and

      p^i2t_j(I) = exp(s(I, T_j)) / sum_{n=1}^{B+Q} exp(s(I, T_n)),
      L_itc = 1/2 E[ H(y^i2t, p^i2t) + H(y^t2i, p^t2i) ].

- Momentum distillation (MoD, eq. 4-5): web captions are noisy, and a "negative" in the queue may
  describe the image as well as the positive does. The momentum model's own softmax q (its
  similarities s' against the same keys) is a softer target:

      y_mod = alpha * q + (1 - alpha) * y,   L_itc^mod = E[ H(y_mod^i2t, p^i2t) + H(y_mod^t2i, p^t2i) ] / 2

  (= (1 - alpha) L_itc + alpha/2 E[KL(q || p)] plus a constant: the paper's form). See
  `distillation_targets`.
- ITM, image-text matching (eq. 3): a 2-way classifier on the fusion encoder's [CLS] output,
  L_itm = E H(y^itm, p^itm(I, T)) over B positives and 2B negatives, with *hard negatives*: each
  image meets the caption of another image drawn with probability softmax(s(I, .)) over the batch
  (similar captions more often), each caption likewise an image. See `sample_hard_negatives` for
  why ALBEF samples rather than always taking the most similar one.
- MLM, masked language modelling with the image as context: L_mlm = E H(y^msk, p^msk(I, T^)).

Grounding (ALBEF section 5): `gradcam` weighs one fusion layer's cross-attention by the gradient of
the ITM "match" score, Grad-CAM (Selvaraju et al. 2017), giving each word a map over the patches.

- `ALBEF`, `small_albef(...)`: the model (image encoder, text encoder, fusion, projections, heads,
  momentum copies, queues, temperature) with readouts `itm_logits`, `itc_similarity`,
  `word_patch_attention`, `encode_image`, `encode_text`, `tokenize`.
- `itc_loss`, `distillation_targets`, `soft_cross_entropy`, `sample_hard_negatives`, `itm_loss`,
  `momentum_update`: the pieces of the objective, each on plain tensors.
- `ALBEFLoss(itm=..., alpha=..., mlm=...)`: the loss_fn for `mmcourse.train.fit`, with the flags of
  the ablation (ITC only; + ITM with random or hard negatives; + MoD; + MLM).
- `gradcam(model, images, ids)`, `expression_map(maps, ids)`: word -> patch relevance maps.

Differences from the paper. Left out, to stay small: MLM distillation (it needs a momentum copy of
the fusion encoder). Options for training from scratch in a minute rather than from pre-trained
DeiT and BERT for days (the paper's choices are the defaults unless said):
- `pooling="mean"`: the unimodal features, and the fusion output that ITM reads, are the mean of
  the tokens instead of [CLS]. At initialisation every image's [CLS] is nearly the same vector
  (cosine ~0.9997: the light background dominates), and ITC sits on a plateau until that symmetry
  breaks; the mean of the patches breaks it about twice as fast (measured on one batch).
- `ALBEFLoss(alpha_warmup_steps=...)`: alpha ramps up linearly (the paper ramps it over the first
  epoch); `ALBEFLoss(hard_warmup_steps=...)`: random ITM negatives first, then hard ones.
- pixels are standardised with the world's statistics (`PIXEL_MEAN`, `PIXEL_STD`).
- the momentum m is a constructor argument: over a few hundred steps any EMA slower than training
  holds ITC's keys back (measured: m = 0.5 reached R@5 0.10 where m = 0 reached 0.36 after 100
  steps), so the notebook's small scales use m = 0 (the momentum model is the online model of the
  step, without gradient), and m = 0.995 belongs to long runs.
"""
from __future__ import annotations

import copy
import numbers
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..world.language import Tokenizer, default_tokenizer
from .encoders import check_tensor, masked_mean
from .layers import PatchEmbedding, TransformerEncoder, mask_tokens, mismatched_partners, mlm_loss

MOMENTUM = 0.995  # the paper's EMA coefficient m
TEMPERATURE_INIT = 0.07  # tau at initialisation, learned and kept in [TEMPERATURE_MIN, TEMPERATURE_MAX]
TEMPERATURE_MIN, TEMPERATURE_MAX = 0.001, 0.5
ALPHA = 0.4  # the paper's distillation weight
ITM_NEGATIVES = (None, "random", "hard")
POOLINGS = ("cls", "mean")
MATCH = 1  # ITM class index of "the caption matches the image"
# Pixel statistics of the world's rendered scenes (mean and std over images, pixels and channels)
PIXEL_MEAN, PIXEL_STD = 0.9, 0.135
# The fusion layer that `gradcam` and `word_patch_attention` read by default: the first. Measured on
# the notebook's cpu recipe (two fusion layers, 200 referring expressions, pointing game): Grad-CAM
# 0.235 in layer 0 vs 0.14 in layer 1; plain attention 0.175 vs 0.075.
ATTENTION_LAYER = 0


# --------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------


class VisionTransformer(nn.Module):
    """A tiny ViT: (B, 3, H, W) -> (B, 1 + N, width) tokens, [CLS] first, then N patches row-major.

    Pixels are standardised, (x - pixel_mean) / pixel_std (as ViT and CLIP do with their data's
    statistics; the defaults are the world's: a light grey background with small objects), patches
    linearly embedded (`PatchEmbedding`), a learned [CLS] token prepended, position embeddings
    added, and a pre-norm `TransformerEncoder` mixes them.
    """

    def __init__(self, image_size: int, patch_size: int, width: int, depth: int, heads: int,
                 pixel_mean: float = PIXEL_MEAN, pixel_std: float = PIXEL_STD):
        super().__init__()
        if not pixel_std > 0:
            raise ValueError(f"pixel_std must be positive, got {pixel_std!r}")
        self.pixel_mean, self.pixel_std = float(pixel_mean), float(pixel_std)
        self.patch_embedding = PatchEmbedding(image_size, patch_size, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.position = nn.Parameter(torch.randn(1, 1 + self.patch_embedding.num_patches, width) * 0.02)
        self.transformer = TransformerEncoder(width, depth, heads)
        self.image_size, self.grid, self.width = image_size, self.patch_embedding.grid, width
        self.num_patches = self.patch_embedding.num_patches

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding((images - self.pixel_mean) / self.pixel_std)  # (B, N, width)
        cls = self.cls_token.expand(len(images), -1, -1)  # (B, 1, width)
        return self.transformer(torch.cat([cls, patches], 1) + self.position)  # (B, 1 + N, width)


class TextEmbedding(nn.Module):
    """(B, L) token ids -> (B, L, width) token + position embeddings, and the (B, L) padding mask."""

    def __init__(self, vocab_size: int, width: int, max_length: int, pad_id: int = 0):
        super().__init__()
        self.token = nn.Embedding(vocab_size, width, padding_idx=pad_id)
        self.position = nn.Parameter(torch.randn(1, max_length, width) * 0.02)
        self.vocab_size, self.max_length, self.pad_id, self.width = vocab_size, max_length, pad_id, width

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_ids(ids, self.max_length, self.vocab_size, self.pad_id)
        padding = ids == self.pad_id  # (B, L) True where there is no token
        return self.token(ids) + self.position[:, : ids.shape[1]], padding  # (B, L, width), (B, L)


class TextEncoder(nn.Module):
    """BERT's first layers in miniature: bidirectional self-attention over the caption.

    (B, L) ids -> (B, L, width) states and the (B, L) padding mask. Position 0 (`<bos>` or `<cls>`)
    is the sentence's [CLS] token.
    """

    def __init__(self, vocab_size: int, width: int, max_length: int, depth: int, heads: int, pad_id: int = 0):
        super().__init__()
        self.embedding = TextEmbedding(vocab_size, width, max_length, pad_id)
        self.transformer = TransformerEncoder(width, depth, heads)
        self.width, self.max_length = width, max_length

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, padding = self.embedding(ids)  # (B, L, width), (B, L)
        return self.transformer(x, padding_mask=padding), padding  # (B, L, width), (B, L)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class ALBEF(nn.Module):
    """Image encoder, text encoder, fusion encoder, ITC projections, ITM and MLM heads, and the
    momentum copies and feature queues that ITC's keys come from.

    `queue_size` Q: momentum features of the last Q pairs (`image_queue`, `text_queue`, (Q, embed_dim),
    filled at construction with random unit vectors as in ALBEF's code, then overwritten oldest
    first). `momentum` m of the EMA. `temperature` tau starts at 0.07 and is learned. `pooling`:
    "cls" (the paper) or "mean" (see the module docstring) for the ITC features and the ITM input.
    Depths: `image_depth` ViT layers, `text_depth` text layers, `fusion_depth` fusion layers (BERT's
    first and last six in the paper).
    """

    def __init__(self, image_size: int = 32, patch_size: int = 4, width: int = 64, embed_dim: int = 64,
                 image_depth: int = 2, text_depth: int = 1, fusion_depth: int = 1, heads: int = 4,
                 max_length: int = 48, queue_size: int = 256, momentum: float = MOMENTUM, pooling: str = "cls",
                 tokenizer: Tokenizer | None = None):
        super().__init__()
        _check_model_arguments(embed_dim, queue_size, momentum, pooling)
        self.pooling = pooling
        self.tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
        vocab_size = self.tokenizer.vocab_size
        # The unimodal encoders and the fusion encoder (cross-attention: text queries, image keys)
        self.image_encoder = VisionTransformer(image_size, patch_size, width, image_depth, heads)
        self.text_encoder = TextEncoder(vocab_size, width, max_length, text_depth, heads, self.tokenizer.pad_id)
        self.fusion = TransformerEncoder(width, fusion_depth, heads, cross_attention=True)
        # ITC projections g_v, g_w; ITM and MLM heads on the fusion output
        self.image_projection = nn.Linear(width, embed_dim)
        self.text_projection = nn.Linear(width, embed_dim)
        self.itm_head = nn.Linear(width, 2)
        self.mlm_head = nn.Linear(width, vocab_size)
        self.raw_temperature = nn.Parameter(torch.tensor(TEMPERATURE_INIT))
        # The momentum model: frozen copies, moved only by `update_momentum_model`
        self.momentum_image_encoder = _frozen_copy(self.image_encoder)
        self.momentum_text_encoder = _frozen_copy(self.text_encoder)
        self.momentum_image_projection = _frozen_copy(self.image_projection)
        self.momentum_text_projection = _frozen_copy(self.text_projection)
        # The queues of momentum features, a ring buffer: `queue_pointer` is the next row to overwrite
        self.register_buffer("image_queue", F.normalize(torch.randn(queue_size, embed_dim), dim=1))
        self.register_buffer("text_queue", F.normalize(torch.randn(queue_size, embed_dim), dim=1))
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))
        self.momentum, self.queue_size, self.embed_dim = float(momentum), queue_size, embed_dim
        self.image_size, self.grid, self.max_length = image_size, self.image_encoder.grid, max_length

    # ---- the pieces the losses are made of

    @property
    def temperature(self) -> torch.Tensor:
        """tau, clamped to [0.001, 0.5] (0-d; differentiable inside the range)."""
        return self.raw_temperature.clamp(TEMPERATURE_MIN, TEMPERATURE_MAX)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """g_v(v_cls): (B, embed_dim), L2-normalised unless `normalize=False`."""
        features = self.image_projection(self.pool_image(self.image_encoder(images)))  # (B, embed_dim)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """g_w(w_cls): (B, embed_dim), L2-normalised unless `normalize=False`."""
        features = self.text_projection(self.pool_text(*self.text_encoder(ids)))  # (B, embed_dim)
        return F.normalize(features, dim=-1) if normalize else features

    def pool_image(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """v_cls: the [CLS] token of (B, 1 + N, W) image tokens, or the mean of the patches (`pooling="mean"`)."""
        return image_tokens[:, 0] if self.pooling == "cls" else image_tokens[:, 1:].mean(1)  # (B, W)

    def pool_text(self, text_states: torch.Tensor, text_padding: torch.Tensor) -> torch.Tensor:
        """w_cls: position 0 of (B, L, W) text states, or the mean over real tokens (`pooling="mean"`)."""
        return text_states[:, 0] if self.pooling == "cls" else masked_mean(text_states, ~text_padding)  # (B, W)

    def fuse(self, text_states: torch.Tensor, text_padding: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """The fusion encoder: text states (B, L, W) attend to image tokens (B, 1 + N, W) -> (B, L, W)."""
        return self.fusion(text_states, padding_mask=text_padding, context=image_tokens)

    @torch.no_grad()
    def momentum_features(self, images: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """g'_v(v'_cls), g'_w(w'_cls): the momentum model's (B, embed_dim) unit features, no gradient."""
        image = self.momentum_image_projection(self.pool_image(self.momentum_image_encoder(images)))  # (B, embed_dim)
        text = self.momentum_text_projection(self.pool_text(*self.momentum_text_encoder(ids)))  # (B, embed_dim)
        return F.normalize(image, dim=-1), F.normalize(text, dim=-1)

    @torch.no_grad()
    def update_momentum_model(self) -> None:
        """theta_m <- m * theta_m + (1 - m) * theta for every momentum copy."""
        for online, momentum in self._momentum_pairs():
            momentum_update(online, momentum, self.momentum)

    @torch.no_grad()
    def enqueue(self, image_features: torch.Tensor, text_features: torch.Tensor) -> None:
        """Write a batch of (B, embed_dim) momentum features over the B oldest rows of the queues
        (MoCo's and ALBEF's `_dequeue_and_enqueue`); the pointer wraps around the end."""
        _check_enqueue(image_features, text_features, self.queue_size, self.embed_dim)
        pointer = int(self.queue_pointer)
        rows = (pointer + torch.arange(len(image_features), device=self.image_queue.device)) % self.queue_size
        self.image_queue[rows] = image_features.detach().to(self.image_queue.dtype)
        self.text_queue[rows] = text_features.detach().to(self.text_queue.dtype)
        self.queue_pointer.fill_((pointer + len(image_features)) % self.queue_size)

    def _momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.image_encoder, self.momentum_image_encoder), (self.text_encoder, self.momentum_text_encoder),
                (self.image_projection, self.momentum_image_projection),
                (self.text_projection, self.momentum_text_projection)]

    # ---- readouts

    def itm_logits(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(B, 2) ITM logits of image i with caption i; class 1 = "matches"."""
        _check_pair_batch(images, ids)
        text_states, text_padding = self.text_encoder(ids)  # (B, L, W), (B, L)
        fused = self.fuse(text_states, text_padding, self.image_encoder(images))  # (B, L, W)
        return self.itm_head(self.pool_text(fused, text_padding))  # (B, 2)

    def itc_similarity(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(B_images, B_texts) cosine similarity of every image with every caption (no temperature)."""
        return self.encode_image(images) @ self.encode_text(ids).T

    @torch.no_grad()
    def word_patch_attention(self, images: torch.Tensor, ids: torch.Tensor,
                             layer: int = ATTENTION_LAYER) -> torch.Tensor:
        """(B, L, N) each text token's cross-attention over the N patches in fusion layer `layer`
        (default the first, see `ATTENTION_LAYER`), averaged over heads. The weight on the image
        [CLS] key is left out, so a row sums to at most one. Padded query rows are meaningless."""
        _check_layer(layer, len(self.fusion.layers))
        self.itm_logits(images, ids)
        weights = self.fusion.layers[layer].cross_attention_weights  # (B, H, L, 1 + N)
        return weights.mean(1)[..., 1:]  # (B, L, N)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, max_length) int64 ids, `<bos>`..`<eos>` wrapped and padded, on the model's device."""
        ids = self.tokenizer.encode_batch(texts, self.max_length, wrap="bos_eos")  # (N, L)
        return torch.from_numpy(ids).to(self.raw_temperature.device)


def small_albef(image_size: int = 32, patch_size: int | None = None, width: int = 64, **kwargs) -> ALBEF:
    """An ALBEF small enough to train on a CPU in seconds: the patch size makes an 8 x 8 grid unless
    given; other arguments go to `ALBEF`."""
    if patch_size is None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8 or image_size % 8:
            raise ValueError(f"image_size={image_size!r} must be a positive multiple of 8 to make an 8 x 8 grid; "
                             "pass patch_size= for another grid")
        patch_size = image_size // 8
    return ALBEF(image_size=image_size, patch_size=patch_size, width=width, **kwargs)


@torch.no_grad()
def momentum_update(online: nn.Module, momentum: nn.Module, m: float) -> None:
    """theta_m <- m * theta_m + (1 - m) * theta, parameter by parameter, in place on `momentum`."""
    online_parameters, momentum_parameters = list(online.parameters()), list(momentum.parameters())
    _check_momentum_pair(online_parameters, momentum_parameters, m)
    for theta, theta_m in zip(online_parameters, momentum_parameters):
        theta_m.mul_(m).add_(theta.detach(), alpha=1 - m)


# --------------------------------------------------------------------------------------------
# ITC with queues and momentum distillation
# --------------------------------------------------------------------------------------------


def itc_loss(image_features: torch.Tensor, text_features: torch.Tensor, image_keys: torch.Tensor,
             text_keys: torch.Tensor, temperature: torch.Tensor | float, alpha: float = 0.0) -> torch.Tensor:
    """ALBEF's contrastive loss with momentum keys, queues and momentum distillation.

        p^i2t = softmax(g_v(v_cls) . K_text / tau)      over the B + Q text keys
        p^t2i = softmax(g_w(w_cls) . K_image / tau)     over the B + Q image keys
        q^i2t = softmax(g'_v(v'_cls) . K_text / tau)    the momentum model's own view (no gradient)
        L = 1/2 [ H(alpha q^i2t + (1 - alpha) y^i2t, p^i2t) + H(alpha q^t2i + (1 - alpha) y^t2i, p^t2i) ]

    `image_features`, `text_features`: the online model's (B, D) unit features. `image_keys`,
    `text_keys`: (B + Q, D) unit keys, the momentum features of the same batch in the first B rows
    (row i is pair i's positive) followed by the queue. `temperature` tau > 0. With `alpha = 0` the
    targets are one-hot: InfoNCE over the batch's keys plus the queue as extra negatives.
    """
    _check_itc_inputs(image_features, text_features, image_keys, text_keys, temperature, alpha)
    batch = len(image_features)
    logits_i2t = image_features @ text_keys.T / temperature  # (B, B + Q) s(I, T) / tau
    logits_t2i = text_features @ image_keys.T / temperature  # (B, B + Q) s(T, I) / tau
    with torch.no_grad():
        targets_i2t = distillation_targets(image_keys[:batch] @ text_keys.T / temperature, alpha)  # (B, B + Q)
        targets_t2i = distillation_targets(text_keys[:batch] @ image_keys.T / temperature, alpha)  # (B, B + Q)
    return (soft_cross_entropy(logits_i2t, targets_i2t) + soft_cross_entropy(logits_t2i, targets_t2i)) / 2


def distillation_targets(momentum_similarity: torch.Tensor, alpha: float) -> torch.Tensor:
    """y_mod = alpha * softmax(s') + (1 - alpha) * y: (B, N) soft targets, each row summing to one.

    `momentum_similarity` (B, N), N >= B: the momentum model's logits s' = s(I', T'_j) / tau (already
    divided by the temperature) of query i against the N keys; the positive of row i is column i
    (y is one-hot on the diagonal). `alpha` in [0, 1]: 0 gives the one-hot y, 1 the momentum
    model's distribution alone.
    """
    _check_similarity("momentum_similarity", momentum_similarity, square=False)
    _check_alpha(alpha)
    batch, keys = momentum_similarity.shape
    one_hot = torch.eye(batch, keys, dtype=momentum_similarity.dtype, device=momentum_similarity.device)  # (B, N)
    return alpha * momentum_similarity.softmax(1) + (1 - alpha) * one_hot


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """H(targets, softmax(logits)) = -sum_j targets_j log p_j, averaged over the (B, N) rows."""
    return -(targets * logits.log_softmax(1)).sum(1).mean()


# --------------------------------------------------------------------------------------------
# ITM with hard negatives
# --------------------------------------------------------------------------------------------


def sample_hard_negatives(similarity: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) long: for row i, a column j != i drawn with probability softmax(similarity[i]) over j != i.

    ALBEF's hard negatives for ITM: image i is paired with the caption of another image, chosen in
    proportion to how similar ITC finds them (softmax of the (B, B) logits `similarity`, diagonal
    removed and the rest renormalised), so captions that nearly fit are met most often.

    Why draw rather than always take the most similar caption (what "use the negative with the
    highest similarity" would do)? With noisy, loosely specific captions, the most similar "negative"
    is often not a negative at all: another image's "a red circle" may be true of this image too.
    Always picking it would teach the model to reject true captions, and always the same ones;
    sampling keeps the pressure on near misses while spreading it over several of them, so a few
    false negatives cannot dominate (ALBEF's code: `torch.multinomial(weights, 1)`).

    Draws use `generator` (a CPU `torch.Generator`; None: the global one) on the CPU, so the same
    seed gives the same draws on any device; the result is on `similarity`'s device.
    """
    _check_similarity("similarity", similarity, square=True)
    _check_generator(generator)
    batch = len(similarity)
    diagonal = torch.eye(batch, dtype=torch.bool, device=similarity.device)  # (B, B)
    weights = similarity.detach().float().masked_fill(diagonal, float("-inf")).softmax(1)  # (B, B), 0 on the diagonal
    return torch.multinomial(weights.cpu(), 1, generator=generator).squeeze(1).to(similarity.device)  # (B,)


def itm_loss(model: ALBEF, image_tokens: torch.Tensor, text_states: torch.Tensor, text_padding: torch.Tensor,
             negative_texts: torch.Tensor, negative_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L_itm = E H(y^itm, p^itm(I, T)) over 3B pairs (ALBEF eq. 3):

        B positives (I_i, T_i)                        y = 1 ("match")
        B negatives (I_i, T_negative_texts[i])        y = 0
        B negatives (I_negative_images[i], T_i)       y = 0

    p^itm = softmax(itm_head(fusion(T, I)[CLS])) ([CLS], or the mean of the fused tokens with
    `model.pooling == "mean"`). `image_tokens` (B, 1 + N, W), `text_states`
    (B, L, W) and `text_padding` (B, L) come from the unimodal encoders; `negative_texts`,
    `negative_images` (B,) long are other rows of the batch (`sample_hard_negatives` or
    `mismatched_partners`). Returns (loss, accuracy of the 3B decisions).
    """
    _check_negatives(negative_texts, negative_images, len(image_tokens))
    images = torch.cat([image_tokens, image_tokens, image_tokens[negative_images]])  # (3B, 1 + N, W)
    texts = torch.cat([text_states, text_states[negative_texts], text_states])  # (3B, L, W)
    padding = torch.cat([text_padding, text_padding[negative_texts], text_padding])  # (3B, L)
    logits = model.itm_head(model.pool_text(model.fuse(texts, padding, images), padding))  # (3B, 2)
    batch = len(image_tokens)
    labels = torch.zeros(3 * batch, dtype=torch.long, device=logits.device)  # (3B,)
    labels[:batch] = MATCH
    accuracy = (logits.detach().argmax(1) == labels).float().mean()
    return F.cross_entropy(logits, labels), accuracy


# --------------------------------------------------------------------------------------------
# The training loss for mmcourse.train.fit
# --------------------------------------------------------------------------------------------


class ALBEFLoss:
    """`fit`'s loss_fn over {"image", "tokens"} batches: ITC [+ ITM] [+ MLM], ALBEF's recipe.

    Flags (the notebook's ablation):
    - `itm`: None (ITC only), "random" (negatives from `mismatched_partners`) or "hard"
      (`sample_hard_negatives` on the ITC similarities);
    - `alpha`: the momentum distillation weight; 0 turns MoD off (one-hot ITC targets); it grows
      linearly from 0 over the first `alpha_warmup_steps` training calls;
    - `mlm`: add masked language modelling on the fusion encoder;
    - `hard_warmup_steps`: with `itm="hard"`, the first training calls use random negatives. Not in
      the paper, whose encoders start pre-trained (DeiT, BERT): from scratch, the ITC similarities
      that pick hard negatives mean nothing yet, and captions that nearly fit are too hard to learn
      from first (ITM stays at "never a match"), so this curriculum lets ITM learn the easy cases.

    How it drives the momentum model with `fit`: fit calls loss_fn, then backward, then the
    optimizer step, batch after batch. In training mode each call first moves the momentum model
    towards the parameters the previous step left (theta_m <- m theta_m + (1 - m) theta, as ALBEF
    does at the top of its forward), encodes the batch with it, computes the loss, and last
    enqueues the batch's momentum features, so they serve as negatives from the next batch on. In
    eval mode (e.g. `mmcourse.train.loss_evaluator`) neither the momentum model nor the queues
    change. Logged: "itc", "itm", "itm_accuracy", "mlm", "temperature", "alpha".

    All draws (negatives, masks) come from one CPU generator seeded with `seed`.
    """

    def __init__(self, itm: str | None = "hard", alpha: float = ALPHA, mlm: bool = True, seed: int = 0,
                 alpha_warmup_steps: int = 0, hard_warmup_steps: int = 0):
        _check_loss_flags(itm, alpha, mlm, seed, alpha_warmup_steps, hard_warmup_steps)
        self.itm, self.alpha, self.mlm, self.alpha_warmup_steps = itm, float(alpha), bool(mlm), alpha_warmup_steps
        self.hard_warmup_steps = hard_warmup_steps
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = 0  # training calls so far

    def current_alpha(self) -> float:
        """alpha, ramped linearly over the first `alpha_warmup_steps` training calls."""
        if self.alpha_warmup_steps == 0:
            return self.alpha
        return self.alpha * min(1.0, self.steps / self.alpha_warmup_steps)

    def __call__(self, model: ALBEF, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, ids = batch["image"], batch["tokens"]  # (B, 3, H, W), (B, L)
        _check_pair_batch(images, ids)
        if model.training:
            model.update_momentum_model()  # theta_m <- m theta_m + (1 - m) theta
        alpha = self.current_alpha()

        # Align: ITC between the unimodal [CLS] features, keys from the momentum model and the queues
        image_tokens = model.image_encoder(images)  # (B, 1 + N, W)
        text_states, text_padding = model.text_encoder(ids)  # (B, L, W), (B, L)
        image_features = F.normalize(model.image_projection(model.pool_image(image_tokens)), dim=-1)  # (B, D)
        text_features = F.normalize(model.text_projection(model.pool_text(text_states, text_padding)), dim=-1)
        momentum_image, momentum_text = model.momentum_features(images, ids)  # (B, D) each
        image_keys = torch.cat([momentum_image, model.image_queue.clone()])  # (B + Q, D)
        text_keys = torch.cat([momentum_text, model.text_queue.clone()])  # (B + Q, D)
        temperature = model.temperature
        losses = {"itc": itc_loss(image_features, text_features, image_keys, text_keys, temperature, alpha)}
        logged = {}

        # Fuse: ITM on the fusion encoder's [CLS], negatives random or hard
        if self.itm is not None:
            negative_texts, negative_images = self._negatives(image_features, text_features, temperature)
            losses["itm"], logged["itm_accuracy"] = itm_loss(model, image_tokens, text_states, text_padding,
                                                             negative_texts, negative_images)
        # MLM: predict masked words from the rest of the caption and the image
        if self.mlm:
            losses["mlm"] = self._mlm(model, image_tokens, ids)

        if model.training:
            model.enqueue(momentum_image, momentum_text)  # newest in, oldest out
            self.steps += 1
        loss = sum(losses.values())
        logged.update({name: value.detach() for name, value in losses.items()})
        logged.update(temperature=temperature.detach(), alpha=torch.tensor(alpha, device=temperature.device))
        return loss, logged

    def _negatives(self, image_features, text_features, temperature) -> tuple[torch.Tensor, torch.Tensor]:
        """(negative text of each image, negative image of each caption), (B,) long each."""
        batch, device = len(image_features), image_features.device
        if self.itm == "random" or self.steps < self.hard_warmup_steps:
            return (mismatched_partners(batch, self.generator).to(device),
                    mismatched_partners(batch, self.generator).to(device))
        with torch.no_grad():
            similarity = image_features @ text_features.T / temperature  # (B, B) images x captions
        return (sample_hard_negatives(similarity, self.generator),  # caption j for image i
                sample_hard_negatives(similarity.T, self.generator))  # image j for caption i

    def _mlm(self, model: ALBEF, image_tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        tokenizer = model.tokenizer
        special = tuple(getattr(tokenizer, f"{name}_id") for name in ("pad", "unk", "cls", "sep", "bos", "eos"))
        inputs, labels = mask_tokens(ids, tokenizer.mask_id, tokenizer.vocab_size, special,
                                     generator=self.generator)  # (B, L), (B, L)
        text_states, text_padding = model.text_encoder(inputs)  # (B, L, W)
        logits = model.mlm_head(model.fuse(text_states, text_padding, image_tokens))  # (B, L, V)
        return mlm_loss(logits, labels)


# --------------------------------------------------------------------------------------------
# Grounding: Grad-CAM on the fusion encoder's cross-attention (ALBEF section 5)
# --------------------------------------------------------------------------------------------


def gradcam(model: ALBEF, images: torch.Tensor, ids: torch.Tensor, layer: int = ATTENTION_LAYER) -> torch.Tensor:
    """(B, L, N) Grad-CAM of every text token over the N patches (Selvaraju et al. 2017, as ALBEF).

        A = cross-attention of fusion layer `layer`          (B, heads, L, 1 + N)
        s = ITM logit of "match" for (image i, caption i)
        map = mean over heads of  clamp(ds / dA, 0) * A      (B, L, 1 + N), image [CLS] key dropped

    The gradient says which attention weights raise the match score; multiplied by the weights, it
    keeps the patches that a word both looks at and finds evidence in. Works under `torch.no_grad()`
    too (gradients are switched on inside); the model's parameters get no `.grad`. ALBEF reads the
    third of its six fusion layers; `ATTENTION_LAYER` is the first of ours (measured best). Average
    a phrase's words with `expression_map`.
    """
    _check_layer(layer, len(model.fusion.layers))
    with torch.enable_grad():
        match_score = model.itm_logits(images, ids)[:, MATCH]  # (B,) rows are independent
        attention = model.fusion.layers[layer].cross_attention_weights  # (B, H, L, 1 + N)
        gradient, = torch.autograd.grad(match_score.sum(), attention)  # (B, H, L, 1 + N)
    cam = (gradient.clamp(min=0) * attention).mean(1)  # (B, L, 1 + N)
    return cam[..., 1:].detach()  # (B, L, N)


def expression_map(maps: torch.Tensor, ids: torch.Tensor, ignore_ids: Sequence[int] | None = None) -> torch.Tensor:
    """(B, N): the mean of (B, L, N) per-token `maps` over the word tokens of (B, L) `ids`, leaving
    out `ignore_ids` (default: the tokenizer's pad, cls, sep, bos, eos and mask ids)."""
    check_tensor("maps", maps, 3, floating=True)
    check_tensor("ids", ids, 2, floating=False)
    if maps.shape[:2] != ids.shape:
        raise ValueError(f"maps has shape {tuple(maps.shape)} but ids {tuple(ids.shape)}; "
                         "expected (B, L, N) and (B, L)")
    if ignore_ids is None:
        tokenizer = default_tokenizer()
        ignore_ids = [getattr(tokenizer, f"{name}_id") for name in ("pad", "cls", "sep", "bos", "eos", "mask")]
    words = ~torch.isin(ids, torch.as_tensor(list(ignore_ids), device=ids.device))  # (B, L)
    if not words.any(1).all():
        raise ValueError(f"ids row {int((~words.any(1)).nonzero()[0])} has no word token; each expression needs one")
    weights = words.to(maps.dtype).unsqueeze(-1)  # (B, L, 1)
    return (maps * weights).sum(1) / weights.sum(1)  # (B, N)


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def _frozen_copy(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module).requires_grad_(False)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_model_arguments(embed_dim, queue_size, momentum, pooling) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r} is unknown; expected one of {POOLINGS}")
    for name, value in (("embed_dim", embed_dim), ("queue_size", queue_size)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0 <= momentum < 1:
        raise ValueError(f"momentum must be a number in [0, 1) (the EMA coefficient m), got {momentum!r}")


def _check_ids(ids, max_length: int, vocab_size: int, pad_id: int) -> None:
    check_tensor("ids", ids, 2, floating=False)
    if ids.shape[1] > max_length:
        raise ValueError(f"ids has shape {tuple(ids.shape)}; expected (B, L) with L <= max_length={max_length}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(f"ids holds values in [{int(ids.min())}, {int(ids.max())}]; expected token ids in "
                         f"[0, {vocab_size})")
    if (ids == pad_id).all(1).any():
        raise ValueError("ids has a row made only of padding; every caption needs at least one token")


def _check_pair_batch(images, ids) -> None:
    check_tensor("images", images, 4, floating=True)
    check_tensor("ids", ids, 2, floating=False)
    if len(images) != len(ids):
        raise ValueError(f"images has batch size {len(images)} but ids {len(ids)} (shapes {tuple(images.shape)} and "
                         f"{tuple(ids.shape)}); expected one caption per image")


def _check_enqueue(image_features, text_features, queue_size: int, embed_dim: int) -> None:
    check_tensor("image_features", image_features, 2, floating=True)
    check_tensor("text_features", text_features, 2, floating=True)
    if image_features.shape != text_features.shape or image_features.shape[1] != embed_dim:
        raise ValueError(f"image_features has shape {tuple(image_features.shape)} and text_features "
                         f"{tuple(text_features.shape)}; expected the same (B, {embed_dim})")
    if len(image_features) > queue_size:
        raise ValueError(f"a batch of {len(image_features)} features does not fit a queue of queue_size={queue_size}; "
                         f"use a queue at least as long as the batch")


def _check_momentum_pair(online_parameters, momentum_parameters, m) -> None:
    if isinstance(m, bool) or not isinstance(m, numbers.Real) or not 0 <= m <= 1:
        raise ValueError(f"m must be a number in [0, 1], got {m!r}")
    online_shapes = [tuple(p.shape) for p in online_parameters]
    momentum_shapes = [tuple(p.shape) for p in momentum_parameters]
    if online_shapes != momentum_shapes:
        raise ValueError(f"online has parameter shapes {online_shapes} but momentum {momentum_shapes}; "
                         "expected a copy of the same module")


def _check_similarity(name: str, similarity, square: bool) -> None:
    check_tensor(name, similarity, 2, floating=True)
    rows, columns = similarity.shape
    if square and rows != columns:
        raise ValueError(f"{name} has shape {tuple(similarity.shape)}; expected a square (B, B) matrix, "
                         "images x captions of one batch")
    if not square and columns < rows:
        raise ValueError(f"{name} has shape {tuple(similarity.shape)}; expected (B, N) with N >= B, "
                         "the positive of row i in column i")
    if square and rows < 2:
        raise ValueError(f"{name} has shape {tuple(similarity.shape)}; a row needs another column to be its negative, "
                         "expected B >= 2")
    if not torch.isfinite(similarity).all():
        raise ValueError(f"{name} holds non-finite values (nan or inf)")


def _check_alpha(alpha) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator (draws are made on the CPU), got one on "
                         f"{generator.device}")


def _check_itc_inputs(image_features, text_features, image_keys, text_keys, temperature, alpha) -> None:
    for name, value in (("image_features", image_features), ("text_features", text_features),
                        ("image_keys", image_keys), ("text_keys", text_keys)):
        check_tensor(name, value, 2, floating=True)
    if image_features.shape != text_features.shape:
        raise ValueError(f"image_features has shape {tuple(image_features.shape)} but text_features "
                         f"{tuple(text_features.shape)}; expected the same (B, D)")
    batch, dim = image_features.shape
    for name, keys in (("image_keys", image_keys), ("text_keys", text_keys)):
        if keys.shape[1] != dim or len(keys) < batch:
            raise ValueError(f"{name} has shape {tuple(keys.shape)}; expected (B + Q, {dim}) with at least B={batch} "
                             "rows, the batch's momentum features first")
    if image_keys.shape != text_keys.shape:
        raise ValueError(f"image_keys has shape {tuple(image_keys.shape)} but text_keys {tuple(text_keys.shape)}; "
                         "expected the same (B + Q, D)")
    if isinstance(temperature, torch.Tensor):
        if temperature.dim() != 0 or not float(temperature.detach()) > 0:
            raise ValueError(f"temperature must be a positive scalar, got {temperature!r}")
    elif isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature > 0:
        raise ValueError(f"temperature must be a positive number or 0-d tensor, got {temperature!r}")
    _check_alpha(alpha)


def _check_negatives(negative_texts, negative_images, batch: int) -> None:
    for name, value in (("negative_texts", negative_texts), ("negative_images", negative_images)):
        check_tensor(name, value, 1, floating=False)
        if len(value) != batch:
            raise ValueError(f"{name} has shape {tuple(value.shape)}; expected ({batch},), one partner per row")
        if len(value) and (int(value.min()) < 0 or int(value.max()) >= batch):
            raise ValueError(f"{name} holds rows in [{int(value.min())}, {int(value.max())}]; expected [0, {batch})")
        if (value == torch.arange(batch, device=value.device)).any():
            raise ValueError(f"{name} pairs some row with itself; a negative must come from another row")


def _check_layer(layer, depth: int) -> None:
    if not _is_int(layer) or not -depth <= layer < depth:
        raise ValueError(f"layer must be an int in [{-depth}, {depth}) (the fusion encoder has {depth} layers), "
                         f"got {layer!r}")


def _check_loss_flags(itm, alpha, mlm, seed, alpha_warmup_steps, hard_warmup_steps) -> None:
    if itm not in ITM_NEGATIVES:
        raise ValueError(f"itm={itm!r} is unknown; expected one of {ITM_NEGATIVES}")
    _check_alpha(alpha)
    if not isinstance(mlm, bool):
        raise TypeError(f"mlm must be a bool, got {type(mlm).__name__}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    for name, value in (("alpha_warmup_steps", alpha_warmup_steps), ("hard_warmup_steps", hard_warmup_steps)):
        if not _is_int(value) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")


__all__ = ["ALBEF", "ALBEFLoss", "TextEmbedding", "TextEncoder", "VisionTransformer", "distillation_targets",
           "expression_map", "gradcam", "itc_loss", "itm_loss", "momentum_update", "sample_hard_negatives",
           "small_albef", "soft_cross_entropy", "ATTENTION_LAYER", "MATCH"]
