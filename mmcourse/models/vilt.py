"""ViLT: one transformer over words and raw image patches (Kim et al. 2021, "ViLT: Vision-and-Language
Transformer Without Convolution or Region Supervision").

VisualBERT (`mmcourse.models.visualbert`) reads regions that an object detector found first; the
detector is most of its inference time. ViLT drops it: the image enters the transformer as ViT's
linearly embedded patches (Dosovitskiy et al. 2021), so all the visual work happens inside the one
transformer that also reads the words (single stream). Embeddings (Kim et al. 2021, eq. 1-2):

    text:   t = [t_cls; t_1 T; ...; t_L T] + T_pos                 (B, L, D)   BERT's, then LN
    image:  v = [v_cls; v_1 V; ...; v_N V] + V_pos                 (B, 1 + N, D)
    z_0 = [t + t_type ; v + v_type]                                (B, L + 1 + N, D)

- t_cls is the text's first token (`<bos>` plays BERT's `[CLS]`), T the token embeddings, T_pos
  word positions; as in BERT (and `transformers`) the text embeddings are layer-normalised.
- v_i is patch i of P x P pixels flattened and V its linear projection (`layers.PatchEmbedding`:
  a convolution with stride = kernel = P), N = (H / P)^2 patches in row-major order, v_cls an
  image `[CLS]`, V_pos learned positions.
- t_type, v_type: the modality-type embeddings (text 0, image 1).

Encoder (eq. 3-4): D pre-norm layers (`layers.TransformerEncoder(norm_first=True)`, GELU, eps 1e-12)
and a final LayerNorm,

    z'_d = MSA(LN(z_{d-1})) + z_{d-1},   z_d = MLP(LN(z'_d)) + z'_d.

Pretraining (section 3.2): image-text matching on the pooled first token, p = tanh(z_D[0] W_pool),
and masked language modelling; both heads are BERT's and are the same as VisualBERT's, so they and
the loss (`mlm_itm_loss`) are imported from `mmcourse.models.visualbert`. (ViLT also aligns words
with patches by optimal transport and masks whole words; neither is used here.)

- `ViLT`: the encoder (`from_transformers` copies a `transformers.ViltModel`'s weights; the test
  proves the outputs equal).
- `ViLTPretraining`: `ViLT` + MLM and ITM heads; `itm_logits` and `word_patch_attention` (each
  word's attention over the patches) for notebook 03.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..world.language import Tokenizer, default_tokenizer
from .encoders import check_tensor
from .layers import PatchEmbedding, TransformerEncoder
from .visualbert import (BERT_EPS, IMAGE, TEXT, MaskedLanguageModelHead, MatchingHead, check_ids,
                         check_positive_int, init_bert_weights, real_positions)

PIXEL_MEAN, PIXEL_STD = 0.9, 0.15  # mean and standard deviation of the world's pixels (all channels, 32 and 64 px)
ATTENTION_LAYER = -1  # the layer `word_patch_attention` reads by default (see its docstring)


class ViLT(nn.Module):
    """(B, L) token ids and (B, C, H, W) images -> (B, L + 1 + N, width): words, image `[CLS]`, patches.

    `attention_mask` (B, L) is 1 (True) at real tokens and 0 at padding, as in `transformers`;
    every patch is real. `max_length` is the number of word positions.
    """

    def __init__(self, vocab_size: int, image_size: int = 32, patch_size: int = 8, width: int = 64, depth: int = 2,
                 heads: int = 4, max_length: int = 48, mlp_width: int | None = None, dropout: float = 0.0,
                 pad_id: int = 0, in_channels: int = 3, eps: float = BERT_EPS):
        super().__init__()
        check_positive_int("vocab_size", vocab_size)
        check_positive_int("max_length", max_length)
        self.token = nn.Embedding(vocab_size, width, padding_idx=pad_id)  # T
        self.text_position = nn.Embedding(max_length, width)  # T_pos
        self.text_norm = nn.LayerNorm(width, eps=eps)
        self.patches = PatchEmbedding(image_size, patch_size, width, in_channels)  # V
        self.image_cls = nn.Parameter(torch.zeros(1, 1, width))  # v_cls
        self.image_position = nn.Parameter(torch.randn(1, 1 + self.patches.num_patches, width) * 0.02)  # V_pos
        self.modality = nn.Embedding(2, width)  # t_type (row TEXT), v_type (row IMAGE)
        self.dropout = nn.Dropout(dropout)
        self.transformer = TransformerEncoder(width, depth, heads, mlp_width, norm_first=True, eps=eps,
                                              final_norm=True, dropout=dropout)
        self.vocab_size, self.width, self.max_length = vocab_size, width, max_length
        self.num_patches, self.grid = self.patches.num_patches, self.patches.grid
        self.apply(init_bert_weights)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                pixel_values: torch.Tensor) -> torch.Tensor:
        real_tokens = self._check_text(input_ids, attention_mask, len(pixel_values))
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (L,)
        text = self.text_norm(self.token(input_ids) + self.text_position(positions))  # (B, L, D)
        patches = self.patches(pixel_values)  # (B, N, D)
        image_cls = self.image_cls.expand(len(patches), -1, -1)  # (B, 1, D)
        image = torch.cat([image_cls, patches], 1) + self.image_position  # (B, 1 + N, D)
        z = torch.cat([text + self.modality.weight[TEXT], image + self.modality.weight[IMAGE]], 1)  # (B, L + 1 + N, D)
        padding = torch.cat([~real_tokens, real_tokens.new_zeros(len(image), image.shape[1])], 1)  # (B, L + 1 + N)
        return self.transformer(self.dropout(z), padding_mask=padding)  # (B, L + 1 + N, D)

    def self_attention_weights(self) -> list[torch.Tensor]:
        """The last forward's self-attention weights, one (B, heads, L + 1 + N, L + 1 + N) tensor per layer."""
        return self.transformer.self_attention_weights()

    @classmethod
    def from_transformers(cls, model) -> "ViLT":
        """A `ViLT` with the weights of a `transformers.ViltModel` (eval mode, same outputs).

        BERT's segment-A embedding (`token_type_embeddings[0]`, added to every word before the
        text LayerNorm) is folded into our word positions. `ViltModel` visits the patches in a
        random order; self-attention does not care, so the outputs are the same set of rows.
        """
        config = _check_vilt_model(model)
        ours = cls(config.vocab_size, config.image_size, config.patch_size, config.hidden_size,
                   config.num_hidden_layers, config.num_attention_heads, config.max_position_embeddings,
                   config.intermediate_size, pad_id=config.pad_token_id if config.pad_token_id is not None else 0,
                   in_channels=config.num_channels, eps=config.layer_norm_eps)
        text, embeddings = model.embeddings.text_embeddings, model.embeddings
        with torch.no_grad():
            ours.token.weight.copy_(text.word_embeddings.weight)
            ours.text_position.weight.copy_(text.position_embeddings.weight + text.token_type_embeddings.weight[0])
            ours.text_norm.load_state_dict(text.LayerNorm.state_dict())
            ours.patches.projection.load_state_dict(embeddings.patch_embeddings.projection.state_dict())
            ours.image_cls.copy_(embeddings.cls_token)
            ours.image_position.copy_(embeddings.position_embeddings)
            ours.modality.weight.copy_(embeddings.token_type_embeddings.weight[:2])
            for layer, theirs in zip(ours.transformer.layers, model.encoder.layer):
                for name in ("query", "key", "value"):
                    source, target = getattr(theirs.attention.attention, name), getattr(layer.attention, name)
                    target.weight.copy_(source.weight)
                    target.bias.copy_(source.bias if source.bias is not None else torch.zeros_like(target.bias))
                layer.attention.out.load_state_dict(theirs.attention.output.dense.state_dict())
                layer.attention_norm.load_state_dict(theirs.layernorm_before.state_dict())
                layer.mlp[0].load_state_dict(theirs.intermediate.dense.state_dict())
                layer.mlp[2].load_state_dict(theirs.output.dense.state_dict())
                layer.mlp_norm.load_state_dict(theirs.layernorm_after.state_dict())
            ours.transformer.norm.load_state_dict(model.layernorm.state_dict())
        return ours.train(model.training)

    def _check_text(self, input_ids, attention_mask, images: int) -> torch.Tensor:
        check_ids("input_ids", input_ids, self.vocab_size, self.max_length)
        if len(input_ids) != images:
            raise ValueError(f"input_ids has {len(input_ids)} rows but pixel_values has {images} images; "
                             "expected one text per image")
        return real_positions("attention_mask", attention_mask, tuple(input_ids.shape))


class ViLTPretraining(nn.Module):
    """`ViLT` + BERT's MLM head and the ITM head on the first token (the text's `<bos>`).

    Inputs everywhere: images (B, 3, image_size, image_size) in [0, 1] and ids (B, L)
    `<bos>`..`<eos>` token ids of the world's tokenizer (padding = `<pad>`). The pixels are
    standardised, (x - pixel_mean) / pixel_std, before the patch embedding (ViLT's processor uses
    0.5 and 0.5). The defaults are the world's statistics: its light background otherwise makes
    every patch embedding nearly the same vector (mean cosine 0.97 between patches vs 0.1), and
    the transformer takes far longer to read the objects.
    """

    def __init__(self, image_size: int = 32, patch_size: int = 8, width: int = 64, depth: int = 2, heads: int = 4,
                 max_length: int = 48, dropout: float = 0.0, pixel_mean: float = PIXEL_MEAN,
                 pixel_std: float = PIXEL_STD, tokenizer: Tokenizer | None = None):
        super().__init__()
        check_pixel_statistics(pixel_mean, pixel_std)
        self.pixel_mean, self.pixel_std = float(pixel_mean), float(pixel_std)
        self.tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
        self.vilt = ViLT(self.tokenizer.vocab_size, image_size, patch_size, width, depth, heads, max_length,
                         dropout=dropout, pad_id=self.tokenizer.pad_id)
        self.mlm_head = MaskedLanguageModelHead(self.vilt.token)
        self.itm_head = MatchingHead(width)

    def image_side(self, batch: dict) -> tuple[torch.Tensor]:
        """(images (B, 3, H, W),) of a `CaptionDataset` batch: ViLT's image side is the pixels."""
        return (batch["image"],)

    def encode(self, image_side: tuple[torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
        """(B, L + 1 + N, D) hidden states of the words, the image `[CLS]` and the patches of `ids`
        read with `image_side` = (images,) from `image_side(batch)`."""
        images, = image_side
        check_tensor("images", images, 4, floating=True)
        check_ids("ids", ids, self.tokenizer.vocab_size, self.vilt.max_length)
        pixels = (images - self.pixel_mean) / self.pixel_std  # (B, 3, H, W) standardised, as ViLT's processor does
        return self.vilt(ids, ids != self.tokenizer.pad_id, pixels)  # (B, L + 1 + N, D)

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(MLM logits (B, L, V) at the words, ITM logits (B, 2) from the first token)."""
        hidden = self.encode((images,), ids)  # (B, L + 1 + N, D)
        return self.mlm_head(hidden[:, : ids.shape[1]]), self.itm_head(hidden[:, 0])

    def itm_logits(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(B, 2) image-text matching logits, class 1 = "ids describes this image"."""
        return self.itm_head(self.encode((images,), ids)[:, 0])

    def word_patch_attention(self, images: torch.Tensor, ids: torch.Tensor,
                             layer: int = ATTENTION_LAYER) -> torch.Tensor:
        """(B, L, N): how much each text token attends to each patch (grid sqrt(N) x sqrt(N),
        row-major) in self-attention layer `layer`, averaged over heads and renormalised over the
        patches (rows sum to 1; the image `[CLS]` is left out).

        The default is the last layer, whose output the heads read. In our runs (width 64, depth 2,
        up to 312 steps of 128 pairs at 64 px, 4 x 4 patches) no layer grounds the words yet: the
        attention mass on the referred object stays near its share of the picture in either
        layer, so pick `layer` to compare.
        """
        depth = len(self.vilt.transformer.layers)
        if isinstance(layer, bool) or not isinstance(layer, int) or not -depth <= layer < depth:
            raise ValueError(f"layer must be an int in [-{depth}, {depth}), got {layer!r}")
        self.encode((images,), ids)
        weights = self.vilt.self_attention_weights()[layer].mean(1)  # (B, L + 1 + N, L + 1 + N) averaged over heads
        length = ids.shape[1]
        word_to_patch = weights[:, :length, length + 1:]  # (B, L, N) text rows, patch columns
        return word_to_patch / word_to_patch.sum(-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)


def check_pixel_statistics(pixel_mean, pixel_std) -> None:
    for name, value in (("pixel_mean", pixel_mean), ("pixel_std", pixel_std)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if pixel_std <= 0:
        raise ValueError(f"pixel_std must be positive, got {pixel_std!r}")


def _check_vilt_model(model):
    config = getattr(model, "config", None)
    if type(model).__name__ != "ViltModel" or config is None:
        raise TypeError(f"model must be a transformers.ViltModel, got {type(model).__name__}")
    if config.hidden_act != "gelu":
        raise ValueError(f"model uses hidden_act={config.hidden_act!r}; ViLT here has GELU ('gelu') only")
    if not isinstance(config.image_size, int) or not isinstance(config.patch_size, int):
        raise ValueError(f"model has image_size={config.image_size!r}, patch_size={config.patch_size!r}; "
                         "expected square images and patches (ints)")
    return config


__all__ = ["ViLT", "ViLTPretraining", "ATTENTION_LAYER"]
