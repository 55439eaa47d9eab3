"""Cross-modal attention: the Multimodal Transformer (MulT) of Tsai et al. (2019), in miniature.

"Multimodal Transformer for Unaligned Multimodal Language Sequences" (ACL 2019) reads a face, a
voice and the words of a speaker *without aligning them first*: the video is filmed at one rate,
the audio analysed at another, and the words carry no time stamps. Instead of resampling every
modality onto the words' time axis, MulT lets one modality look at another through attention whose
queries come from the target modality alpha and whose keys and values come from the source beta:

    CM_{beta -> alpha}(X_alpha, X_beta) = softmax(Q_alpha K_beta^T / sqrt(d)) V_beta,
    Q_alpha = X_alpha W_Q,   K_beta = X_beta W_K,   V_beta = X_beta W_V.

Row i of the (L_alpha, T_beta) attention matrix says which steps of beta the i-th step of alpha
reads, so a word can attend to the frames where the face smiles, wherever they fall. A crossmodal
transformer block (the paper's Section 3.2) wraps that in layer norms, residuals and a position-wise
feed-forward network f:

    Z_hat = CM_{beta -> alpha}(LN(Z), LN(X_beta)) + LN(Z)      Z: (B, L_alpha, d), X_beta: (B, T_beta, d_beta)
    Z_new = f(LN(Z_hat)) + LN(Z_hat)

(the paper's equations, followed here; the authors' code adds the residual to Z rather than LN(Z),
the usual pre-norm form).

- `CrossmodalBlock`: one such block, built on the shared `layers.MultiHeadAttention`; a padded
  source step (`source_padding_mask`) gets exactly zero weight; the last call's weights stay
  readable in `attention_weights` (B, heads, L_alpha, T_beta).
- `MulT`: video (B, T_v, D_v), audio (B, T_a, D_a) and token ids (B, L) -> class logits. Each
  modality is projected by a temporal 1-D convolution to width d and given sinusoidal positions;
  each target modality attends to each of the two others (six directions, `depth` blocks each);
  per target the two results are concatenated, Z_alpha = [Z_{beta -> alpha}; Z_{gamma -> alpha}]
  (B, L_alpha, 2d), optionally mixed by self-attention layers, and pooled; an MLP reads the pooled
  targets. The paper reads the last step of each target sequence after its self-attention
  transformer; this miniature takes the (masked) mean over steps, because a face may smile at any
  moment and the text is padded at the end. `targets=("text",)` keeps only the two directions into
  the words, the paper's [V, A -> L] ablation.
  `text_to_video_attention(...)` gives every word's attention over the video frames (B, L, T_v).
- `ResampledEarlyFusion`: the baseline that must align first. Video and audio are resampled to
  each sentence's length L with `F.interpolate` (mode "area": each word step averages the frames
  that fall in it, as word-aligned CMU-MOSI features average a word's span), concatenated with the
  word embedding step by step (B, L, d + D_v + D_a), then a transformer encoder, masked mean, MLP.
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .encoders import check_positive_int, check_tensor, masked_mean
from .fusion import mlp
from .layers import MultiHeadAttention, TransformerEncoder, check_padding_mask

MODALITIES = ("text", "video", "audio")
RESAMPLE_MODES = ("area", "linear", "nearest")


# --------------------------------------------------------------------------------------------
# The crossmodal block
# --------------------------------------------------------------------------------------------


class CrossmodalBlock(nn.Module):
    """CM_{beta -> alpha}: queries from the target alpha, keys and values from the source beta.

    Z_hat = CM(LN(Z), LN(X_beta)) + LN(Z);   Z_new = f(LN(Z_hat)) + LN(Z_hat)   (Tsai et al. 2019)
    """

    def __init__(self, width: int, heads: int, source_width: int | None = None, ff_width: int | None = None):
        super().__init__()
        source_width = width if source_width is None else check_positive_int("source_width", source_width)
        ff_width = 4 * width if ff_width is None else check_positive_int("ff_width", ff_width)
        self.target_norm = nn.LayerNorm(width)
        self.source_norm = nn.LayerNorm(source_width)
        self.attention = MultiHeadAttention(width, heads, context_width=source_width)
        self.ff_norm = nn.LayerNorm(width)
        self.feed_forward = nn.Sequential(nn.Linear(width, ff_width), nn.ReLU(), nn.Linear(ff_width, width))
        self.width, self.source_width = width, source_width
        self.attention_weights: torch.Tensor | None = None  # (B, H, L_target, T_source) of the last call

    def forward(self, target: torch.Tensor, source: torch.Tensor,
                source_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, width) target, (B, T, source_width) source -> (B, L, width); the mask (B, T) is
        True at padded source steps."""
        _check_block_inputs(target, source, source_padding_mask, self.width, self.source_width)
        z = self.target_norm(target)  # (B, L, D)
        read, self.attention_weights = self.attention(z, self.source_norm(source), source_padding_mask)
        z_hat = read + z  # (B, L, D): Z_hat = CM(LN(Z), LN(X_beta)) + LN(Z)
        z_hat = self.ff_norm(z_hat)
        return self.feed_forward(z_hat) + z_hat  # (B, L, D): f(LN(Z_hat)) + LN(Z_hat)


def sinusoidal_positions(length: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(length, width): PE(t, 2i) = sin(t / 10000^(2i / width)), PE(t, 2i + 1) = cos(...)
    (Vaswani et al. 2017), the positions MulT adds after its convolutions."""
    position = torch.arange(length, device=device, dtype=dtype)[:, None]  # (T, 1)
    frequency = torch.exp(torch.arange(0, width, 2, device=device, dtype=dtype)
                          * (-math.log(10000.0) / width))  # (ceil(width / 2),)
    angles = position * frequency  # (T, ceil(width / 2))
    table = torch.zeros(length, width, device=device, dtype=dtype)
    table[:, 0::2] = angles.sin()
    table[:, 1::2] = angles.cos()[:, : width // 2]
    return table


# --------------------------------------------------------------------------------------------
# MulT
# --------------------------------------------------------------------------------------------


class MulT(nn.Module):
    """The Multimodal Transformer for unaligned (video, audio, text) sequences, small.

    `video_dim`, `audio_dim`: features per frame; `vocab_size`, `pad_id`: the text's token ids.
    `targets`: the modalities that attend to the other two ("text", "video", "audio" by default).
    `depth` crossmodal blocks per direction, `self_depth` self-attention layers on each target's
    concatenated sequence (0: none), `kernel_size` the temporal convolutions' width (odd).
    """

    def __init__(self, video_dim: int, audio_dim: int, vocab_size: int, width: int = 32, heads: int = 4,
                 depth: int = 1, self_depth: int = 0, kernel_size: int = 3, num_classes: int = 2,
                 targets: Sequence[str] = MODALITIES, pad_id: int = 0):
        super().__init__()
        for name, value in (("video_dim", video_dim), ("audio_dim", audio_dim), ("vocab_size", vocab_size),
                            ("width", width), ("depth", depth), ("num_classes", num_classes)):
            check_positive_int(name, value)
        _check_kernel_size(kernel_size)
        self.targets = _check_targets(targets)
        self.embed = nn.Embedding(vocab_size, width, padding_idx=pad_id)
        self.project = nn.ModuleDict({  # X_hat_m = Conv1D(X_m, k) -> width, per modality
            "text": _temporal_conv(width, width, kernel_size),
            "video": _temporal_conv(video_dim, width, kernel_size),
            "audio": _temporal_conv(audio_dim, width, kernel_size),
        })
        self.crossmodal = nn.ModuleDict({  # "video->text": the words attend to the frames
            _direction(source, target): nn.ModuleList(CrossmodalBlock(width, heads) for _ in range(depth))
            for target in self.targets for source in MODALITIES if source != target
        })
        self.self_attention = nn.ModuleDict({
            target: TransformerEncoder(2 * width, self_depth, heads) for target in self.targets
        }) if _check_depth("self_depth", self_depth) else None
        self.head = mlp(2 * width * len(self.targets), 2 * width, num_classes)
        self.video_dim, self.audio_dim, self.pad_id, self.width = video_dim, audio_dim, pad_id, width

    def forward(self, video: torch.Tensor, audio: torch.Tensor, text: torch.Tensor,
                video_padding_mask: torch.Tensor | None = None,
                audio_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, num_classes) logits; padding masks are True at padded steps (text: pad_id)."""
        padding = _check_mult_inputs(video, audio, text, video_padding_mask, audio_padding_mask,
                                     self.video_dim, self.audio_dim, self.pad_id)
        streams = self.project_inputs(video, audio, text, padding)  # {m: (B, T_m, D)}
        pooled = []
        for target in self.targets:
            z = torch.cat([self._attend(source, target, streams, padding)
                           for source in MODALITIES if source != target], -1)  # (B, T_target, 2D)
            if self.self_attention is not None:
                z = self.self_attention[target](z, padding[target])  # (B, T_target, 2D)
            pooled.append(masked_mean(z, _real_steps(padding[target])))  # (B, 2D)
        return self.head(torch.cat(pooled, -1))  # (B, num_classes)

    def project_inputs(self, video: torch.Tensor, audio: torch.Tensor, text: torch.Tensor,
                       padding: dict | None = None) -> dict[str, torch.Tensor]:
        """Z^[0]_m = Conv1D(X_m) + PE: {modality: (B, T_m, width)}. Padded steps (`padding`:
        {modality: (B, T_m) bool or None}) are zeroed first, so the convolution carries nothing of
        them into their real neighbours."""
        raw = {"text": self.embed(text), "video": video, "audio": audio}  # (B, T_m, D_m)
        streams = {}
        for modality, x in raw.items():
            if padding is not None and padding[modality] is not None:
                x = x.masked_fill(padding[modality][..., None], 0.0)  # (B, T_m, D_m)
            h = self.project[modality](x.transpose(1, 2)).transpose(1, 2)  # (B, T_m, D)
            streams[modality] = h + sinusoidal_positions(h.shape[1], self.width, h.device, h.dtype)
        return streams

    def _attend(self, source: str, target: str, streams: dict, padding: dict) -> torch.Tensor:
        z = streams[target]  # (B, T_target, D)
        for block in self.crossmodal[_direction(source, target)]:
            z = block(z, streams[source], padding[source])  # queries: target; keys, values: source
        return z

    def attention_weights(self, source: str, target: str) -> torch.Tensor:
        """The last call's (B, heads, T_target, T_source) weights of the last block `source -> target`."""
        direction = _direction(source, target)
        if direction not in self.crossmodal:
            raise ValueError(f"no crossmodal block {direction!r}; this model has {sorted(self.crossmodal)}")
        weights = self.crossmodal[direction][-1].attention_weights
        if weights is None:
            raise RuntimeError("no attention weights yet: call the model on a batch first")
        return weights

    def text_to_video_attention(self, video: torch.Tensor, audio: torch.Tensor, text: torch.Tensor,
                                **padding_masks) -> torch.Tensor:
        """Run the model and return every word's attention over the frames, (B, L, T_v), averaged
        over heads, from the last video -> text block (rows of padded words are meaningless)."""
        self(video, audio, text, **padding_masks)
        return self.attention_weights("video", "text").mean(1)  # (B, L, T_v)


def _temporal_conv(in_dim: int, width: int, kernel_size: int) -> nn.Conv1d:
    return nn.Conv1d(in_dim, width, kernel_size, padding=kernel_size // 2, bias=False)


def _direction(source: str, target: str) -> str:
    return f"{source}->{target}"


# --------------------------------------------------------------------------------------------
# The early-fusion baseline: resample, then concatenate step by step
# --------------------------------------------------------------------------------------------


class ResampledEarlyFusion(nn.Module):
    """Early fusion of unaligned sequences: resample face and voice onto the words, then one encoder.

    h_t = W [embed(w_t); video~_t; audio~_t] + PE(t),   video~ = interpolate(video, size=L)
    """

    def __init__(self, video_dim: int, audio_dim: int, vocab_size: int, width: int = 32, heads: int = 4,
                 depth: int = 2, num_classes: int = 2, mode: str = "area", pad_id: int = 0):
        super().__init__()
        for name, value in (("video_dim", video_dim), ("audio_dim", audio_dim), ("vocab_size", vocab_size),
                            ("width", width), ("num_classes", num_classes)):
            check_positive_int(name, value)
        if mode not in RESAMPLE_MODES:
            raise ValueError(f"mode={mode!r} is unknown; expected one of {RESAMPLE_MODES}")
        self.embed = nn.Embedding(vocab_size, width, padding_idx=pad_id)
        self.fuse = nn.Linear(width + video_dim + audio_dim, width)
        self.encoder = TransformerEncoder(width, depth, heads)
        self.head = mlp(width, width, num_classes)
        self.video_dim, self.audio_dim, self.pad_id, self.width, self.mode = video_dim, audio_dim, pad_id, width, mode

    def forward(self, video: torch.Tensor, audio: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, num_classes) logits from (B, T_v, D_v), (B, T_a, D_a) and (B, L) right-padded ids."""
        padding = _check_mult_inputs(video, audio, text, None, None, self.video_dim, self.audio_dim,
                                     self.pad_id)["text"]  # (B, L)
        _check_right_padded(padding)
        lengths = (~padding).sum(1)  # (B,) words per sentence
        steps = torch.cat([self.embed(text),  # (B, L, D)
                           resample(video, lengths, text.shape[1], self.mode),  # (B, L, D_v)
                           resample(audio, lengths, text.shape[1], self.mode)], -1)  # (B, L, D_a)
        h = self.fuse(steps) + sinusoidal_positions(text.shape[1], self.width, steps.device, steps.dtype)
        h = self.encoder(h, padding)  # (B, L, D)
        return self.head(masked_mean(h, ~padding))  # (B, num_classes)


def resample(sequence: torch.Tensor, lengths: torch.Tensor, length: int, mode: str = "area") -> torch.Tensor:
    """(B, T, D) -> (B, length, D): row b interpolated to `lengths[b]` steps, zeros after them."""
    check_tensor("sequence", sequence, 3, floating=True)
    check_tensor("lengths", lengths, 1, floating=False)
    if len(lengths) != len(sequence) or lengths.min() < 1 or lengths.max() > length:
        raise ValueError(f"lengths must hold one count in [1, {length}] per row of sequence "
                         f"(batch {len(sequence)}), got shape {tuple(lengths.shape)} and values {lengths.tolist()}")
    if mode not in RESAMPLE_MODES:
        raise ValueError(f"mode={mode!r} is unknown; expected one of {RESAMPLE_MODES}")
    out = sequence.new_zeros(len(sequence), length, sequence.shape[2])  # (B, length, D)
    for n in lengths.unique().tolist():
        rows = lengths == n
        channels_first = sequence[rows].transpose(1, 2)  # (b, D, T)
        aligned = F.interpolate(channels_first, size=n, mode=mode,
                                align_corners=False if mode == "linear" else None)  # (b, D, n)
        out[rows, :n] = aligned.transpose(1, 2)
    return out


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def _check_block_inputs(target, source, source_padding_mask, width: int, source_width: int) -> None:
    check_tensor("target", target, 3, floating=True)
    check_tensor("source", source, 3, floating=True)
    if target.shape[2] != width:
        raise ValueError(f"target has shape {tuple(target.shape)}; expected (B, L, {width})")
    if source.shape[2] != source_width:
        raise ValueError(f"source has shape {tuple(source.shape)}; expected (B, T, {source_width})")
    if len(source) != len(target):
        raise ValueError(f"source has batch size {len(source)} but target has {len(target)}; "
                         "expected one source sequence per target sequence")
    check_padding_mask("source_padding_mask", source_padding_mask, source)


def _check_mult_inputs(video, audio, text, video_padding_mask, audio_padding_mask, video_dim: int, audio_dim: int,
                       pad_id: int) -> dict[str, torch.Tensor | None]:
    """Refuse bad shapes; return the padding mask of each modality (None: no padding)."""
    check_tensor("video", video, 3, floating=True)
    check_tensor("audio", audio, 3, floating=True)
    check_tensor("text", text, 2, floating=False)
    if video.shape[2] != video_dim:
        raise ValueError(f"video has shape {tuple(video.shape)}; expected (B, T_v, {video_dim})")
    if audio.shape[2] != audio_dim:
        raise ValueError(f"audio has shape {tuple(audio.shape)}; expected (B, T_a, {audio_dim})")
    for name, x in (("audio", audio), ("text", text)):
        if len(x) != len(video):
            raise ValueError(f"{name} has batch size {len(x)} but video has {len(video)}; "
                             "expected the three modalities of the same examples")
    text_padding = text == pad_id  # (B, L)
    if text_padding.all(1).any():
        raise ValueError(f"text has a row made only of padding (pad_id={pad_id}); every example needs a word")
    check_padding_mask("video_padding_mask", video_padding_mask, video)
    check_padding_mask("audio_padding_mask", audio_padding_mask, audio)
    return {"text": text_padding, "video": video_padding_mask, "audio": audio_padding_mask}


def _check_right_padded(padding: torch.Tensor) -> None:
    if (padding[:, :-1] & ~padding[:, 1:]).any():
        raise ValueError("text has padding before a word; expected right-padded rows (words first, then pad_id)")


def _real_steps(padding: torch.Tensor | None) -> torch.Tensor | None:
    return None if padding is None else ~padding


def _check_targets(targets) -> tuple[str, ...]:
    if isinstance(targets, str) or not isinstance(targets, Sequence):
        raise TypeError(f"targets must be a sequence of modality names, got {type(targets).__name__}")
    unknown = [t for t in targets if t not in MODALITIES]
    if unknown or not targets or len(set(targets)) != len(targets):
        raise ValueError(f"targets must be distinct names among {MODALITIES}, got {tuple(targets)!r}")
    return tuple(targets)


def _check_kernel_size(kernel_size) -> None:
    check_positive_int("kernel_size", kernel_size)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd (the convolution keeps the length), got {kernel_size}")


def _check_depth(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return int(value)



__all__ = ["CrossmodalBlock", "MulT", "ResampledEarlyFusion", "resample", "sinusoidal_positions", "MODALITIES",
           "RESAMPLE_MODES"]
