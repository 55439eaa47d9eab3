"""The small encoders every lecture model is built from: sequences, images and text.

Each one turns a modality into vectors of a chosen width, small enough to train in seconds on a
CPU. The image and text transformers follow ViT (Dosovitskiy et al. 2021) and CLIP's text tower
(Radford et al. 2021: the feature of the end-of-text token is the sentence feature); the sequence
encoder is a 1-D convolution with masked mean pooling, enough to read short signals such as the
affect task's facial-feature and prosody sequences, or a bigram like "not good".

All encoders return a pooled feature (B, D) from `forward`; those with a spatial or temporal
layout also expose it (`feature_map`, `tokens`) for attention, grounding and segmentation.
"""
from __future__ import annotations

import numbers

import torch
from torch import nn
from torchvision.ops import roi_align


def check_tensor(name: str, value, ndim: int, floating: bool | None = None) -> torch.Tensor:
    """Refuse anything but a tensor of `ndim` dimensions (and of float/integer dtype when asked)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    if floating is True and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if floating is False and value.is_floating_point():
        raise TypeError(f"{name} must be an integer tensor of token ids, got {value.dtype}")
    return value


def check_positive_int(name: str, value) -> int:
    """Refuse anything but a positive int (bools refused) and return it as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_token_ids(name: str, ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Refuse an integer tensor holding an id outside [0, vocab_size), which an embedding table would
    meet with torch's bare "index out of range in self" (or a device-side assert on a GPU)."""
    if ids.numel():
        low, high = (int(v) for v in torch.aminmax(ids))
        if low < 0 or high >= vocab_size:
            raise ValueError(f"{name} holds token id {low if low < 0 else high}, outside the vocabulary "
                             f"[0, {vocab_size}); encode texts with the model's own tokenizer")
    return ids


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over dim 1 of (B, T, D) `x`, counting only positions where `mask` (B, T) is True."""
    if mask is None:
        return x.mean(1)
    weights = mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class ConvSequenceEncoder(nn.Module):
    """(B, T, in_dim) float sequence, or (B, T) token ids when `vocab_size` is given -> (B, width).

    Per-step projection, two 1-D convolutions (kernel `kernel_size`, so neighbouring steps interact),
    masked mean over time, and a final projection. Token id `pad_id` is masked out of the mean.
    """

    def __init__(self, in_dim: int | None, width: int, vocab_size: int | None = None, pad_id: int = 0,
                 kernel_size: int = 3):
        super().__init__()
        if (in_dim is None) == (vocab_size is None):
            raise ValueError("give exactly one of in_dim (float sequences) and vocab_size (token ids)")
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, width, padding_idx=pad_id) if vocab_size else nn.Linear(in_dim, width)
        padding = kernel_size // 2
        self.conv = nn.Sequential(
            nn.Conv1d(width, width, kernel_size, padding=padding), nn.GELU(),
            nn.Conv1d(width, width, kernel_size, padding=padding), nn.GELU(),
        )
        self.out = nn.Sequential(nn.Linear(width, width), nn.GELU())
        self.width = width

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-step features (B, T, width) and the mask of real steps (B, T) (None for floats)."""
        if isinstance(self.embed, nn.Embedding):
            check_token_ids("x", check_tensor("x", x, 2, floating=False), self.embed.num_embeddings)
            mask = x != self.pad_id  # (B, T)
        else:
            check_tensor("x", x, 3, floating=True)
            if x.shape[-1] != self.embed.in_features:
                raise ValueError(f"x must have {self.embed.in_features} features per step, got shape {tuple(x.shape)}")
            mask = None
        h = self.embed(x)  # (B, T, width)
        h = self.conv(h.transpose(1, 2)).transpose(1, 2)  # (B, T, width)
        return h, mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, mask = self.tokens(x)
        return self.out(masked_mean(h, mask))  # (B, width)


class ConvImageEncoder(nn.Module):
    """(B, 3, H, W) images in [0, 1] -> (B, width): a small CNN, each stage halving the resolution.

    `feature_map` gives the last stage (B, width, H / 2**stages, W / 2**stages), the dense features
    that grounding (RoI pooling) and segmentation (per-location scores) build on.
    """

    def __init__(self, width: int, stages: int = 3, in_channels: int = 3):
        super().__init__()
        layers, channels = [], in_channels
        for stage in range(stages):
            out_channels = width if stage == stages - 1 else max(16, width // 2 ** (stages - 1 - stage))
            layers += [nn.Conv2d(channels, out_channels, 3, stride=2, padding=1), nn.BatchNorm2d(out_channels),
                       nn.GELU(), nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.GELU()]
            channels = out_channels
        self.body = nn.Sequential(*layers)
        self.stride = 2 ** stages
        self.width = width

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        check_tensor("images", images, 4, floating=True)
        if images.shape[1] != self.body[0].in_channels:
            raise ValueError(f"images must have {self.body[0].in_channels} channels, got shape {tuple(images.shape)}")
        return self.body(images)  # (B, width, H / stride, W / stride)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.feature_map(images).mean((2, 3))  # (B, width)


class TransformerStack(nn.Module):
    """`depth` pre-norm transformer encoder layers of `width` with `heads` heads, then a LayerNorm."""

    def __init__(self, width: int, depth: int, heads: int, dropout: float = 0.0):
        super().__init__()
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None,
                causal: bool = False) -> torch.Tensor:
        length = x.shape[1]
        # True above the diagonal: position i may not attend to positions after it.
        attention_mask = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1) if causal else None
        return self.norm(self.layers(x, mask=attention_mask, src_key_padding_mask=padding_mask,
                                     is_causal=causal))


class ViTEncoder(nn.Module):
    """A tiny Vision Transformer: (B, 3, H, W) -> (B, width), the final `[CLS]` token.

    The image is cut into `patch_size` patches, each linearly embedded, a learned `[CLS]` token and
    position embeddings are added, and a transformer stack mixes them. `tokens` returns every token
    (B, 1 + N, width), `[CLS]` first, for attention maps over patches.
    """

    def __init__(self, image_size: int, patch_size: int, width: int, depth: int = 2, heads: int = 4):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} must be a multiple of patch_size={patch_size}")
        self.image_size, self.patch_size = image_size, patch_size
        self.grid = image_size // patch_size
        self.patch_embed = nn.Conv2d(3, width, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.position = nn.Parameter(torch.randn(1, 1 + self.grid ** 2, width) * 0.02)
        self.transformer = TransformerStack(width, depth, heads)
        self.width = width

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        check_tensor("images", images, 4, floating=True)
        if images.shape[1:] != (3, self.image_size, self.image_size):
            raise ValueError(f"images must have shape (B, 3, {self.image_size}, {self.image_size}), "
                             f"got {tuple(images.shape)}")
        patches = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N, width)
        cls = self.cls_token.expand(len(images), -1, -1)  # (B, 1, width)
        return self.transformer(torch.cat([cls, patches], 1) + self.position)  # (B, 1 + N, width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.tokens(images)[:, 0]  # (B, width)


class TextTransformer(nn.Module):
    """CLIP's text tower in miniature: (B, L) token ids -> (B, width).

    Token and position embeddings, a causal transformer stack (each token sees only the tokens
    before it), and the sentence feature read at the end-of-text token: the last non-pad position,
    which for `<bos> ... <eos>` wrapped text is `<eos>`. `tokens` returns (B, L, width) and the
    padding mask.
    """

    def __init__(self, vocab_size: int, width: int, max_length: int, depth: int = 2, heads: int = 4,
                 pad_id: int = 0, causal: bool = True):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width, padding_idx=pad_id)
        self.position = nn.Parameter(torch.randn(1, max_length, width) * 0.01)
        self.transformer = TransformerStack(width, depth, heads)
        self.pad_id, self.causal, self.max_length, self.width = pad_id, causal, max_length, width

    def tokens(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_token_ids("ids", check_tensor("ids", ids, 2, floating=False), self.embed.num_embeddings)
        if ids.shape[1] > self.max_length:
            raise ValueError(f"ids has {ids.shape[1]} positions, more than max_length={self.max_length}")
        padding = ids == self.pad_id  # (B, L), True where there is no token
        if padding.all(1).any():
            raise ValueError("ids has a row made only of padding; every text needs at least one token")
        x = self.embed(ids) + self.position[:, : ids.shape[1]]  # (B, L, width)
        return self.transformer(x, padding_mask=padding, causal=self.causal), padding

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h, padding = self.tokens(ids)
        last = (~padding).long().cumsum(1).argmax(1)  # (B,) index of the last real token
        return h[torch.arange(len(ids), device=ids.device), last]  # (B, width)


class QuestionEncoder(nn.Module):
    """The question reader of the VQA models (notebook 04): (B, L) token ids -> per-word states and a
    question vector.

    Word embeddings and a one-layer LSTM (Hochreiter & Schmidhuber 1997), as in the VQA baselines
    (Antol et al. 2015) and stacked attention (Yang et al. 2016); bidirectional by default, so each
    word's state also knows the words after it. `forward` returns (words (B, L, width), padding
    (B, L) bool, True where there is no word, question (B, width)): the question vector is the
    masked mean of the word states, so padding changes nothing. `pad_id` rows are skipped.
    """

    def __init__(self, vocab_size: int, width: int, pad_id: int = 0, bidirectional: bool = True):
        super().__init__()
        if bidirectional and width % 2:
            raise ValueError(f"width={width} must be even for a bidirectional LSTM (half per direction)")
        self.embed = nn.Embedding(vocab_size, width, padding_idx=pad_id)
        self.lstm = nn.LSTM(width, width // 2 if bidirectional else width, batch_first=True,
                            bidirectional=bidirectional)
        self.pad_id, self.width = pad_id, width

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        check_token_ids("question", check_tensor("question", ids, 2, floating=False), self.embed.num_embeddings)
        padding = ids == self.pad_id  # (B, L)
        if padding.all(1).any():
            raise ValueError("question has a row made only of padding; every question needs at least one word")
        lengths = (~padding).sum(1).cpu()  # (B,)
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(ids), lengths, batch_first=True, enforce_sorted=False)
        states, _ = self.lstm(packed)
        words, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True, total_length=ids.shape[1])  # (B, L, width)
        return words, padding, masked_mean(words, ~padding)  # (B, L, width), (B, L), (B, width)


class RegionEncoder(nn.Module):
    """Object features from given boxes: the course's stand-in for a Faster R-CNN detector.

    (B, 3, H, W) images and (B, K, 4) xyxy pixel boxes -> (B, K, width). A `ConvImageEncoder`'s
    feature map is RoI-Aligned (He et al. 2017) to a `roi_size` x `roi_size` grid per box, flattened
    and projected; the box's geometry (x1, y1, x2, y2 as fractions of the image side, and its area)
    is embedded and added, the "position" of a region in VisualBERT, ViLBERT and bottom-up attention
    (Anderson et al. 2018). The world's ground-truth boxes play the detector's proposals, so a
    model built on these features only has to learn *what* is in each box.
    """

    def __init__(self, width: int, roi_size: int = 3, stages: int = 3):
        super().__init__()
        self.backbone = ConvImageEncoder(width, stages)
        self.roi_size = roi_size
        self.appearance = nn.Sequential(nn.Linear(width * roi_size ** 2, width), nn.GELU(), nn.Linear(width, width))
        self.geometry = nn.Linear(5, width)
        self.width = width

    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        check_tensor("boxes", boxes, 3, floating=True)
        if boxes.shape[0] != len(images) or boxes.shape[2] != 4:
            raise ValueError(f"boxes has shape {tuple(boxes.shape)}; expected ({len(images)}, K, 4) xyxy pixel "
                             "boxes, one row of K boxes per image")
        feature_map = self.backbone.feature_map(images)  # (B, width, h, w)
        pooled = roi_align(feature_map, list(boxes.to(feature_map.dtype)), output_size=self.roi_size,
                           spatial_scale=1.0 / self.backbone.stride, sampling_ratio=2,
                           aligned=True)  # (B * K, width, roi, roi)
        appearance = self.appearance(pooled.flatten(1)).view(*boxes.shape[:2], -1)  # (B, K, width)
        corners = boxes / images.shape[-1]  # (B, K, 4) in [0, 1]
        area = ((corners[..., 2] - corners[..., 0]) * (corners[..., 3] - corners[..., 1]))[..., None]  # (B, K, 1)
        return appearance + self.geometry(torch.cat([corners, area], -1))  # (B, K, width)
