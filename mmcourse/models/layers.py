"""Transformer building blocks that show their attention: the shared parts of notebook 03's models.

Every alignment model of the lecture (VisualBERT, ViLBERT, ViLT, ALBEF, BLIP, MulT) is made of the
same few pieces, written once here with the equations in plain sight (Vaswani et al. 2017):

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_head)) V,   Q = x W_q,  K = c W_k,  V = c W_v

- `MultiHeadAttention`: self-attention when the context `c` is the input `x` itself, *cross*-attention
  when `c` comes from another modality (queries from one modality, keys and values from the other:
  Tsai et al. 2019). It returns the attention weights (B, heads, L_query, L_key) beside its output,
  because reading them is what notebook 03 is about. A padded key gets exactly zero weight.
- `TransformerLayer`: self-attention, optional cross-attention to a context, and an MLP, each in a
  residual branch; `norm_first=True` is the pre-norm layer of ViT and ViLT, `norm_first=False` the
  post-norm layer of BERT and VisualBERT. The last weights stay readable (`self_attention_weights`,
  `cross_attention_weights`) and keep their gradient, which Grad-CAM (ALBEF) needs.
- `TransformerEncoder`: a stack of such layers.
- `PatchEmbedding`: ViT's linear patch embedding, a convolution with stride = kernel = patch size.
- `mask_tokens`: BERT's masking for masked language modelling (Devlin et al. 2019): 15% of the
  real tokens are chosen; of those 80% become `<mask>`, 10% a random word, 10% stay.
- `mismatched_partners`: for image-text matching (ITM), the index of another row of the batch for
  every row (a random permutation without fixed points), whose text is a negative for this image.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from .encoders import check_positive_int, check_tensor

IGNORE_INDEX = -100  # label of a position that the MLM loss skips (F.cross_entropy's default)


def attention(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
              blocked: torch.Tensor | None = None, dropout: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q K^T / sqrt(d)) V: (output (..., Lq, d), weights (..., Lq, Lk)).

    `queries` (..., Lq, d), `keys` and `values` (..., Lk, d); `blocked` is a bool mask broadcastable
    to (..., Lq, Lk), True where a query may not look (a padded key, a future token): those weights
    are exactly zero.
    """
    scores = queries @ keys.transpose(-2, -1) / math.sqrt(queries.shape[-1])  # (..., Lq, Lk)
    if blocked is not None:
        scores = scores.masked_fill(blocked, float("-inf"))
    weights = scores.softmax(-1)  # (..., Lq, Lk): each query's weights sum to one over the keys
    output = (dropout(weights) if dropout is not None else weights) @ values  # (..., Lq, d)
    return output, weights


def masked_softmax(scores: torch.Tensor, padding: torch.Tensor | None, dim: int = -1) -> torch.Tensor:
    """softmax of `scores` along `dim`, with exactly zero weight where `padding` (broadcastable to
    `scores`) is True: the attention of the VQA models over grid cells, objects or words."""
    if padding is not None:
        scores = scores.masked_fill(padding, float("-inf"))
    return scores.softmax(dim)


def attention_pool(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_i f_i: (B, N, D) features pooled with (B, N) or (B, G, N) weights -> (B, D) or (B, G, D)."""
    if weights.dim() == 2:
        return torch.einsum("bn,bnd->bd", weights, features)  # (B, D)
    return torch.einsum("bgn,bnd->bgd", weights, features)  # (B, G, D)


class MultiHeadAttention(nn.Module):
    """softmax(Q K^T / sqrt(d)) V over `heads` heads; queries from `x`, keys/values from `context`."""

    def __init__(self, width: int, heads: int, context_width: int | None = None, dropout: float = 0.0):
        super().__init__()
        _check_width_heads(width, heads)
        context_width = width if context_width is None else context_width
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(context_width, width)
        self.value = nn.Linear(context_width, width)
        self.out = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)
        self.width, self.heads = width, heads

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None,
                causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(output (B, Lq, D), weights (B, heads, Lq, Lk)); `key_padding_mask` (B, Lk) is True at
        padded keys, `causal` lets query i see keys 0..i only (self-attention)."""
        context = x if context is None else context
        _check_attention_inputs(x, context, key_padding_mask, self.width)
        q = self._split(self.query(x))  # (B, H, Lq, d)
        k = self._split(self.key(context))  # (B, H, Lk, d)
        v = self._split(self.value(context))  # (B, H, Lk, d)
        blocked = _blocked_keys(key_padding_mask, causal, (q.shape[-2], k.shape[-2]), q.device)
        output, weights = attention(q, k, v, blocked, self.dropout)  # (B, H, Lq, d), (B, H, Lq, Lk)
        return self.out(output.transpose(1, 2).flatten(2)), weights  # (B, Lq, D), (B, H, Lq, Lk)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, L, D) -> (B, H, L, D / H)


class TransformerLayer(nn.Module):
    """Self-attention [+ cross-attention to a context] + MLP, residual, pre- or post-norm.

    pre-norm (ViT, ViLT):   x = x + Attn(LN(x));           x = x + MLP(LN(x))
    post-norm (BERT):       x = LN(x + Attn(x));           x = LN(x + MLP(x))
    """

    def __init__(self, width: int, heads: int, mlp_width: int | None = None, norm_first: bool = True,
                 eps: float = 1e-5, cross_attention: bool = False, context_width: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        self.attention = MultiHeadAttention(width, heads, dropout=dropout)
        self.attention_norm = nn.LayerNorm(width, eps=eps)
        self.cross = MultiHeadAttention(width, heads, context_width, dropout) if cross_attention else None
        self.cross_norm = nn.LayerNorm(width, eps=eps) if cross_attention else None
        mlp_width = 4 * width if mlp_width is None else mlp_width
        self.mlp = nn.Sequential(nn.Linear(width, mlp_width), nn.GELU(), nn.Linear(mlp_width, width))
        self.mlp_norm = nn.LayerNorm(width, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first
        self.self_attention_weights: torch.Tensor | None = None  # (B, H, L, L) of the last call
        self.cross_attention_weights: torch.Tensor | None = None  # (B, H, L, Lc) of the last call

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None, causal: bool = False,
                context: torch.Tensor | None = None,
                context_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, D) -> (B, L, D); `padding_mask` (B, L) and `context_padding_mask` (B, Lc) are True at padding."""
        if (context is None) != (self.cross is None):
            raise ValueError("context must be given exactly when the layer has cross-attention "
                             f"(cross_attention={self.cross is not None}), got context={'a tensor' if context is not None else None}")
        x, self.self_attention_weights = self._residual(
            x, self.attention_norm, lambda h: self.attention(h, None, padding_mask, causal))
        if self.cross is not None:
            x, self.cross_attention_weights = self._residual(
                x, self.cross_norm, lambda h: self.cross(h, context, context_padding_mask))
        x, _ = self._residual(x, self.mlp_norm, lambda h: (self.mlp(h), None))
        return x

    def _residual(self, x, norm, branch):
        if self.norm_first:
            update, weights = branch(norm(x))
            return x + self.dropout(update), weights
        update, weights = branch(x)
        return norm(x + self.dropout(update)), weights


class TransformerEncoder(nn.Module):
    """`depth` `TransformerLayer`s; `final_norm` adds a LayerNorm at the end (pre-norm stacks need it)."""

    def __init__(self, width: int, depth: int, heads: int, mlp_width: int | None = None, norm_first: bool = True,
                 eps: float = 1e-5, cross_attention: bool = False, context_width: int | None = None,
                 final_norm: bool = True, dropout: float = 0.0):
        super().__init__()
        check_positive_int("depth", depth)
        self.layers = nn.ModuleList(TransformerLayer(width, heads, mlp_width, norm_first, eps, cross_attention,
                                                     context_width, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=eps) if final_norm else nn.Identity()
        self.width = width

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None, causal: bool = False,
                context: torch.Tensor | None = None,
                context_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, padding_mask, causal, context, context_padding_mask)
        return self.norm(x)

    def self_attention_weights(self) -> list[torch.Tensor]:
        """The last call's self-attention weights, one (B, H, L, L) tensor per layer."""
        return [layer.self_attention_weights for layer in self.layers]

    def cross_attention_weights(self) -> list[torch.Tensor]:
        """The last call's cross-attention weights, one (B, H, L, Lc) tensor per layer."""
        return [layer.cross_attention_weights for layer in self.layers]


class PatchEmbedding(nn.Module):
    """(B, C, H, W) -> (B, N, width), N = (H / patch)(W / patch) patches in row-major order (ViT)."""

    def __init__(self, image_size: int, patch_size: int, width: int, in_channels: int = 3):
        super().__init__()
        check_positive_int("patch_size", patch_size)
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} must be a multiple of patch_size={patch_size}")
        self.projection = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        self.image_size, self.patch_size = image_size, patch_size
        self.grid = image_size // patch_size
        self.num_patches = self.grid ** 2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_tensor("images", images, 4, floating=True)
        expected = (self.projection.in_channels, self.image_size, self.image_size)
        if tuple(images.shape[1:]) != expected:
            raise ValueError(f"images has shape {tuple(images.shape)}; expected (B, {', '.join(map(str, expected))})")
        return self.projection(images).flatten(2).transpose(1, 2)  # (B, N, width)


def mask_tokens(ids: torch.Tensor, mask_id: int, vocab_size: int, special_ids: tuple[int, ...],
                probability: float = 0.15, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's MLM corruption: (inputs (B, L), labels (B, L)).

    Each token whose id is not in `special_ids` (padding, `<bos>`, `<cls>`...) is chosen with
    `probability`; a chosen token becomes `mask_id` 80% of the time, a random word (an id outside
    `special_ids`) 10% and stays 10%. `labels` holds the original id at chosen positions and
    `IGNORE_INDEX` elsewhere, so `F.cross_entropy(logits.transpose(1, 2), labels)` scores only them.
    Every row with a real token gets at least one chosen position, so no batch is wasted.
    """
    check_tensor("ids", ids, 2, floating=False)
    if not 0 < probability <= 1:
        raise ValueError(f"probability must be in (0, 1], got {probability!r}")
    candidates = torch.ones_like(ids, dtype=torch.bool)
    for special in special_ids:
        candidates &= ids != special
    draw = torch.rand(ids.shape, generator=generator, device="cpu").to(ids.device)  # (B, L)
    chosen = (draw < probability) & candidates
    # A row with real tokens but none chosen gets its most likely candidate (the smallest draw).
    fallback = draw.masked_fill(~candidates, 2.0).argmin(1)  # (B,)
    empty = ~chosen.any(1) & candidates.any(1)
    chosen[empty, fallback[empty]] = True
    labels = ids.masked_fill(~chosen, IGNORE_INDEX)
    action = torch.rand(ids.shape, generator=generator, device="cpu").to(ids.device)  # (B, L)
    inputs = ids.masked_fill(chosen & (action < 0.8), mask_id)
    words = _non_special_ids(vocab_size, special_ids + (mask_id,), ids.device)
    random_words = words[torch.randint(len(words), ids.shape, generator=generator, device="cpu").to(ids.device)]
    replace = chosen & (action >= 0.8) & (action < 0.9)
    return torch.where(replace, random_words, inputs), labels


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, L, V) `logits` at the positions where (B, L) `labels` != IGNORE_INDEX."""
    check_tensor("logits", logits, 3, floating=True)
    check_tensor("labels", labels, 2, floating=False)
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits has shape {tuple(logits.shape)} but labels {tuple(labels.shape)}; "
                         "expected (B, L, V) and (B, L)")
    if not (labels != IGNORE_INDEX).any():
        raise ValueError("labels has no position to predict (all IGNORE_INDEX); mask at least one token")
    return F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX)


def mismatched_partners(batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch_size,) long: row i gets j != i, a uniformly random shift of a random permutation, so
    that `texts[partners]` pairs every image with a caption of another image (an ITM negative)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 2:
        raise ValueError(f"batch_size must be an int >= 2 (a row needs another row to pair with), got {batch_size!r}")
    order = torch.randperm(batch_size, generator=generator)  # a random cycle through the rows
    shift = int(torch.randint(1, batch_size, (1,), generator=generator))
    partners = torch.empty(batch_size, dtype=torch.long)
    partners[order] = order.roll(-shift)  # order[k] is paired with order[k + shift]
    return partners


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def stack_padded(texts: list[torch.Tensor], pad_id: int) -> torch.Tensor:
    """(sum of rows, L) token ids: the (n, L_i) blocks right-padded with `pad_id` to one length, then
    cut after the last column that holds a token."""
    length = max(t.shape[1] for t in texts)
    stacked = torch.cat([F.pad(t, (0, length - t.shape[1]), value=pad_id) for t in texts])  # (N, length)
    used = int((stacked != pad_id).any(0).nonzero().max()) + 1
    return stacked[:, :used]


def balanced_class_weights(labels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(2,) cross-entropy class weights that give the 0s and the 1s of (N,) `labels` equal total
    weight, however many of each there are (both classes must be present)."""
    counts = torch.bincount(labels, minlength=2).to(dtype)  # (2,)
    if (counts == 0).any():
        raise ValueError(f"labels must hold both classes 0 and 1, got counts {counts.tolist()}")
    return len(labels) / (2 * counts)


def _non_special_ids(vocab_size: int, special_ids: tuple[int, ...], device) -> torch.Tensor:
    words = torch.ones(vocab_size, dtype=torch.bool)
    words[[i for i in special_ids if 0 <= i < vocab_size]] = False
    if not words.any():
        raise ValueError(f"vocab_size={vocab_size} leaves no word outside special_ids={special_ids}")
    return words.nonzero().squeeze(1).to(device)


def _blocked_keys(key_padding_mask, causal: bool, shape: tuple[int, int], device) -> torch.Tensor | None:
    """Bool mask broadcastable to (B, H, Lq, Lk): True where a query may not look."""
    blocked = None
    if key_padding_mask is not None:
        blocked = key_padding_mask[:, None, None, :]  # (B, 1, 1, Lk)
    if causal:
        future = torch.ones(shape, dtype=torch.bool, device=device).triu(1)  # (Lq, Lk)
        blocked = future if blocked is None else blocked | future
    return blocked


def _check_attention_inputs(x, context, key_padding_mask, width: int) -> None:
    check_tensor("x", x, 3, floating=True)
    check_tensor("context", context, 3, floating=True)
    if x.shape[-1] != width:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (B, L, {width})")
    if len(context) != len(x):
        raise ValueError(f"context has batch size {len(context)} but x has {len(x)}; expected one context per query row")
    check_padding_mask("key_padding_mask", key_padding_mask, context)


def check_padding_mask(name: str, mask, sequence: torch.Tensor) -> None:
    """Refuse a padding mask that is not None or a (B, L) bool tensor of `sequence`'s first two
    dimensions, True at padding, with at least one real step in every row."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor (True at padding), "
                        f"got {getattr(mask, 'dtype', type(mask).__name__)}")
    if tuple(mask.shape) != tuple(sequence.shape[:2]):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}; expected {tuple(sequence.shape[:2])}, "
                         "one flag per step")
    if mask.all(1).any():
        raise ValueError(f"{name} hides every step of some row; each row needs a real step to attend to")


def _check_width_heads(width, heads) -> None:
    check_positive_int("width", width)
    check_positive_int("heads", heads)
    if width % heads:
        raise ValueError(f"width={width} must be a multiple of heads={heads}")

