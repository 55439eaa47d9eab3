"""LSeg-style language-driven semantic segmentation (Li et al. 2022, "Language-driven Semantic
Segmentation").

LSeg takes CLIP's idea down to pixels. The classes of a segmentation are given as *words*: a
frozen text encoder turns each label name into a vector T_c (C, D); a dense image encoder turns the
image into one vector per location I_hw (D, h, w); the logit of class c at a location is their
scaled cosine similarity,

    logits[c, h, w] = scale * <I_hw / |I_hw|, T_c / |T_c|>,

trained with per-pixel cross-entropy. Only the image side learns: the text encoder stays frozen, so
the label space stays the text encoder's, and at test time any other name it can encode becomes a
class, even one that never labelled a training pixel.

Course version:

- Dense image encoder: a `ConvImageEncoder` feature map (stride 2**stages), reduced to D channels,
  upsampled bilinearly to full (`output_stride=1`) or half resolution, added to a 3x3 convolution
  of the image itself at that resolution, batch-normalised, and mixed per location by two 1x1
  convolutions. LSeg
  uses a ViT with the DPT decoder (Ranftl et al. 2021), which fuses features of several depths;
  the image skip is our one-level stand-in, giving the sharp edges that upsampled coarse features
  lack.
- Text encoder: any callable `ids (C, L) -> (C, D)`, e.g. a `TextTransformer` or a trained CLIP's
  `encode_text`. It is called under `torch.no_grad()`; the module itself, or the module a bound
  method like `clip.encode_text` belongs to, is put in eval mode with `requires_grad=False`, so
  `fit`'s default optimiser, which takes the parameters that require grad, leaves it out. A module
  becomes a submodule (it follows `.to(device)`); the owner of a bound method does not, so move
  that model to the device yourself.
- Background: the world's vocabulary has no word for it (neither "background" nor "nothing" is in
  `default_tokenizer().stoi`), so the background class is a *learned* unit vector in the text
  space, class 0; label name c is class c + 1.
- `scale` is a fixed temperature (LSeg also keeps it fixed); the default 10 lets a confident pixel
  reach a probability near 1 among a few dozen classes.

`segmentation_targets` turns a `CaptionDataset` batch's instance mask and attribute codes into
per-pixel class labels for a chosen label set (colours, shapes, colour-shape pairs...).
"""
from __future__ import annotations

import numbers
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .encoders import check_tensor

# Column of each attribute in a CaptionDataset batch's "attributes" (B, K, 4): codes into the
# preset's value lists, -1 for padding objects.
ATTRIBUTE_COLUMNS = {"shape": 0, "color": 1, "size": 2, "style": 3}
BACKGROUND = 0  # class index of the background; label name c is class c + 1
IGNORE_INDEX = -100  # torch's cross-entropy default: pixels with this label do not count
DEFAULT_SCALE = 10.0

TextEncoder = Callable[[torch.Tensor], torch.Tensor]


class LSeg(nn.Module):
    """Per-location embeddings scored against frozen text embeddings of label names.

    `image_encoder` needs `feature_map(images) -> (B, F, H / stride, W / stride)`, `.stride` and
    `.width` (as `ConvImageEncoder`); `text_encoder(ids (C, L)) -> (C, dim)` is frozen.
    """

    def __init__(self, image_encoder: nn.Module, text_encoder: TextEncoder, dim: int,
                 output_stride: int = 1, scale: float = DEFAULT_SCALE):
        super().__init__()
        missing = [name for name in ("feature_map", "stride", "width") if not hasattr(image_encoder, name)]
        if missing:
            raise TypeError(f"image_encoder ({type(image_encoder).__name__}) lacks {missing}; expected an "
                            f"encoder with feature_map, stride and width, like ConvImageEncoder")
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
            raise ValueError(f"dim={dim!r} must be a positive int: the text encoder's feature size")
        if output_stride not in (1, 2):
            raise ValueError(f"output_stride={output_stride!r} must be 1 (full resolution) or 2 (half)")
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or scale <= 0:
            raise ValueError(f"scale={scale!r} must be a positive number")
        self.image_encoder = image_encoder
        self.text_encoder = _frozen(text_encoder)
        self.dim, self.output_stride, self.scale = dim, output_stride, float(scale)
        self.reduce = nn.Conv2d(image_encoder.width, dim, 1)  # coarse features -> D channels
        self.image_skip = nn.Conv2d(3, dim, 3, padding=1)  # colour and edges at the output resolution
        # BatchNorm puts the two branches on one scale; without it the small skip is drowned out
        # and training takes several times longer.
        self.head = nn.Sequential(nn.BatchNorm2d(dim), nn.GELU(), nn.Conv2d(dim, dim, 1), nn.GELU(),
                                  nn.Conv2d(dim, dim, 1))
        self.background = nn.Parameter(F.normalize(torch.randn(dim), dim=0))  # (D,) learned class 0

    def train(self, mode: bool = True) -> "LSeg":
        """Switch the image side to `mode`; a text encoder module always stays in eval mode."""
        super().train(mode)
        if isinstance(self.text_encoder, nn.Module):
            self.text_encoder.eval()
        return self

    def pixel_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D, H / output_stride, W / output_stride), unit length at every location."""
        features = self.image_encoder.feature_map(images)  # (B, F, H / stride, W / stride)
        size = (images.shape[2] // self.output_stride, images.shape[3] // self.output_stride)
        coarse = self.reduce(features)  # (B, D, H / stride, W / stride)
        upsampled = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)  # (B, D, h, w)
        resized = F.avg_pool2d(images, self.output_stride) if self.output_stride > 1 else images  # (B, 3, h, w)
        return F.normalize(self.head(upsampled + self.image_skip(resized)), dim=1)  # (B, D, h, w)

    def label_embeddings(self, label_ids: torch.Tensor) -> torch.Tensor:
        """(1 + C, D) unit vectors: the learned background, then the frozen text features of the
        C label names `label_ids` (C, L), which follow the model to its device."""
        check_tensor("label_ids", label_ids, 2, floating=False)
        if not len(label_ids):
            raise ValueError("label_ids has no rows; expected at least one label name")
        with torch.no_grad():
            text = self.text_encoder(label_ids.to(self.background.device))  # (C, D)
        if not isinstance(text, torch.Tensor) or tuple(text.shape) != (len(label_ids), self.dim):
            raise ValueError(f"text_encoder returned {tuple(getattr(text, 'shape', ()))} for label_ids of shape "
                             f"{tuple(label_ids.shape)}; expected ({len(label_ids)}, {self.dim})")
        return F.normalize(torch.cat([self.background[None], text.to(self.background.dtype)]), dim=1)

    def forward(self, images: torch.Tensor, label_ids: torch.Tensor) -> torch.Tensor:
        """(B, 1 + C, h, w) logits: class 0 is the background, class c + 1 is label name c."""
        pixels = self.pixel_embeddings(images)  # (B, D, h, w)
        labels = self.label_embeddings(label_ids)  # (1 + C, D)
        return self.scale * torch.einsum("bdhw,cd->bchw", pixels, labels)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, label_ids: torch.Tensor) -> torch.Tensor:
        """(B, H, W) int64 mask at the images' resolution: the best class at each pixel (0 background,
        c + 1 label name c); half-resolution logits are upsampled bilinearly first."""
        return _at_size(self(images, label_ids), images.shape[2:]).argmax(1)


def _at_size(logits: torch.Tensor, size) -> torch.Tensor:
    """(B, C, h, w) logits resized bilinearly to `size` (H, W), as LSeg upsamples its output."""
    if logits.shape[2:] == size:
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def _frozen(text_encoder: TextEncoder) -> TextEncoder:
    """`text_encoder`, with the module it is or belongs to put in eval mode and requires_grad=False."""
    if not callable(text_encoder):
        raise TypeError(f"text_encoder must be callable as text_encoder(ids) -> (C, D), "
                        f"got {type(text_encoder).__name__}")
    owner = text_encoder if isinstance(text_encoder, nn.Module) else getattr(text_encoder, "__self__", None)
    if isinstance(owner, nn.Module):
        owner.requires_grad_(False).eval()
    return text_encoder


def lseg_loss(model: LSeg, batch: dict, label_ids: torch.Tensor, pixel_labels: torch.Tensor,
              ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy at every location of `batch["image"]` against `pixel_labels` (B, H, W).

    Labels are class indices in [0, 1 + C) (0 background) or `ignore_index`. Logits at half
    resolution are upsampled bilinearly to the labels' size, as LSeg upsamples its output.
    """
    images = batch["image"]
    check_tensor("pixel_labels", pixel_labels, 3, floating=False)
    if pixel_labels.shape[0] != images.shape[0] or pixel_labels.shape[1:] != images.shape[2:]:
        raise ValueError(f"pixel_labels has shape {tuple(pixel_labels.shape)}; expected "
                         f"({images.shape[0]}, {images.shape[2]}, {images.shape[3]}), one label per image pixel")
    logits = model(images, label_ids)  # (B, 1 + C, h, w)
    counted = pixel_labels[pixel_labels != ignore_index]
    if len(counted) and not 0 <= int(counted.min()) <= int(counted.max()) < logits.shape[1]:
        raise ValueError(f"pixel_labels holds classes in [{int(counted.min())}, {int(counted.max())}]; expected "
                         f"[0, {logits.shape[1]}) (background and {logits.shape[1] - 1} label names) "
                         f"or ignore_index={ignore_index}")
    return F.cross_entropy(_at_size(logits, pixel_labels.shape[1:]), pixel_labels, ignore_index=ignore_index)


def segmentation_targets(batch: dict, attribute: str | Sequence[str], classes: Sequence,
                         ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(B, H, W) int64 per-pixel class labels of a `CaptionDataset` batch.

    `attribute` is one of "shape", "color", "size", "style", or a tuple of them for composite
    labels; `classes` lists the label set as attribute codes (indices into the preset's value
    lists): ints for one attribute, tuples of ints, one per attribute, for several. The background
    is class 0; an object whose codes are `classes[c]` is class c + 1; an object whose codes are not
    in `classes` (a held-out label, say) gets `ignore_index`.

    E.g. colour-shape labels "red circle", "red square", ... in the order of
    `[(c, s) for c in range(len(preset.colors)) for s in range(len(preset.shapes))]`, with
    attribute=("color", "shape").
    """
    columns = _attribute_columns(attribute)
    class_codes = _class_codes(classes, len(columns))  # (C, A)
    missing = [key for key in ("mask", "attributes") if key not in batch]
    if missing:
        raise ValueError(f"batch lacks {missing}; expected a CaptionDataset batch")
    mask, attributes = batch["mask"], batch["attributes"]
    check_tensor("batch['mask']", mask, 3, floating=False)
    check_tensor("batch['attributes']", attributes, 3, floating=False)
    if len(attributes) != len(mask) or attributes.shape[2] != len(ATTRIBUTE_COLUMNS):
        raise ValueError(f"batch['attributes'] has shape {tuple(attributes.shape)}; expected ({len(mask)}, K, "
                         f"{len(ATTRIBUTE_COLUMNS)}) for batch['mask'] of shape {tuple(mask.shape)}")
    if int(mask.min()) < 0 or int(mask.max()) > attributes.shape[1]:
        raise ValueError(f"batch['mask'] holds instance ids in [{int(mask.min())}, {int(mask.max())}]; expected "
                         f"[0, {attributes.shape[1]}] (0 background, k + 1 object k)")
    codes = attributes[:, :, columns]  # (B, K, A)
    matches = (codes[:, :, None, :] == class_codes.to(codes.device)).all(-1)  # (B, K, C)
    object_class = torch.where(matches.any(-1), matches.int().argmax(-1) + 1, ignore_index)  # (B, K)
    background = torch.full_like(object_class[:, :1], BACKGROUND)  # (B, 1)
    instance_class = torch.cat([background, object_class], 1)  # (B, 1 + K): class of instance id
    return instance_class.gather(1, mask.flatten(1)).view_as(mask)  # (B, H, W)


def _attribute_columns(attribute: str | Sequence[str]) -> list[int]:
    names = (attribute,) if isinstance(attribute, str) else tuple(attribute) if isinstance(attribute, Sequence) else ()
    if not names or any(name not in ATTRIBUTE_COLUMNS for name in names) or len(set(names)) != len(names):
        raise ValueError(f"attribute={attribute!r} must be one of {tuple(ATTRIBUTE_COLUMNS)} or a tuple of "
                         f"different ones")
    return [ATTRIBUTE_COLUMNS[name] for name in names]


def _class_codes(classes: Sequence, num_attributes: int) -> torch.Tensor:
    """(C, num_attributes) int64 codes of the label set, refusing empty, ragged or repeated lists."""
    if isinstance(classes, (str, torch.Tensor)) or not isinstance(classes, Sequence) or not len(classes):
        raise ValueError(f"classes must be a non-empty sequence of attribute codes, got {classes!r}")
    rows = []
    for code in classes:
        row = (code,) if isinstance(code, numbers.Integral) else tuple(code) if isinstance(code, Sequence) else ()
        if len(row) != num_attributes or not all(isinstance(v, numbers.Integral) and v >= 0 for v in row):
            raise ValueError(f"classes holds {code!r}; expected {num_attributes} non-negative int code(s) per "
                             f"class, one per attribute")
        rows.append(row)
    if len(set(rows)) != len(rows):
        raise ValueError(f"classes repeats a label: {classes!r}; expected each code once")
    return torch.tensor(rows, dtype=torch.int64)
