"""Real pretrained CLIP models (Radford et al. 2021) behind the course CLIP's interface, offline.

The notebooks train a tiny CLIP from scratch; where a real one is on disk they can swap it in, since
both answer the same calls: `encode_image(images, normalize=True)` on (B, 3, H, W) floats in [0, 1],
`encode_text(ids, normalize=True)`, `tokenize(texts)`, `logit_scale`, and `forward(images, ids)`.
Two libraries are wrapped:

- open_clip (Ilharco et al. 2021): an architecture `name` with a local checkpoint file `path`, a
  folder `path` holding `open_clip_config.json` and the weights (open_clip's "local-dir:"), or a
  pretrained `tag` looked up in the local caches only (the Hugging Face cache, or ~/.cache/clip for
  the tags that open_clip downloads from a URL);
- transformers (Wolf et al. 2020): a folder `path` where `CLIPModel` and its tokenizer (and
  optionally its image processor) were saved with `save_pretrained`, or a hub id `name` found in
  the local Hugging Face cache; always loaded with `local_files_only=True`.

Nothing here touches the network: `HF_HUB_OFFLINE=1` is set on import unless already set (it takes
effect when the hub client is imported after this module). `load_clip` raises `WeightsNotFound` (a
`FileNotFoundError` naming where it looked) when the weights are absent; `try_load_clip` prints one
line instead and returns None, so a notebook carries on with its from-scratch model.

The adapters resize images (shortest side, then a centre crop) to the model's input size and
normalise them with the model's mean and std, so course images go in as they are. The wrapped
model is frozen (no parameter requires grad) and in eval mode: it is there to extract features.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .device import get_device
from .models.encoders import check_tensor

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network for a hub lookup

SOURCES = ("open_clip", "transformers")
DEFAULT_OPEN_CLIP = ("ViT-B-32", "openai")  # what try_load_clip() looks for when told nothing
# CLIP's image statistics (Radford et al. 2021), for a transformers folder without an image processor
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZE_MODES = ("bicubic", "bilinear")


class WeightsNotFound(FileNotFoundError):
    """No pretrained weights at `where` (a path, or a model and tag in the local caches)."""

    def __init__(self, where: str, detail: str):
        super().__init__(f"no pretrained CLIP weights found at {where}: {detail}")
        self.where = where


# --------------------------------------------------------------------------------------------
# The common interface
# --------------------------------------------------------------------------------------------


class PretrainedCLIP(nn.Module):
    """A frozen pretrained CLIP with the course CLIP's interface; subclasses wrap one library.

    `image_size` (height, width), `mean` and `std` (per RGB channel) and `interpolation` describe
    the model's input; `description` says what was loaded from where.
    """

    def __init__(self, model: nn.Module, image_size: tuple[int, int], mean: Sequence[float], std: Sequence[float],
                 interpolation: str, description: str):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.image_size = image_size
        self.interpolation = interpolation if interpolation in RESIZE_MODES else "bicubic"
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.description = description

    def extra_repr(self) -> str:
        return self.description

    def train(self, mode: bool = True) -> "PretrainedCLIP":
        return super().train(False)  # frozen: dropout and normalisation stay in inference mode

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def logit_scale(self) -> torch.Tensor:
        """The similarity multiplier the model was trained with (0-d)."""
        return self.model.logit_scale.exp()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) floats in [0, 1] -> (B, 3, h, w) model input: resized, cropped, normalised."""
        check_tensor("images", images, 4, floating=True)
        if images.shape[1] != 3:
            raise ValueError(f"images must have shape (B, 3, H, W) (RGB), got {tuple(images.shape)}")
        low, high = (value.item() for value in torch.aminmax(images.detach()))
        if low < 0 or high > 1:
            raise ValueError(f"images must hold values in [0, 1] (the adapter normalises them with the model's "
                             f"mean and std itself), got values in [{low:.3g}, {high:.3g}]")
        images = _resize_and_crop(images.to(self.device, torch.float32), self.image_size, self.interpolation)
        return (images - self.mean) / self.std  # (B, 3, h, w)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        pixels = self.preprocess(images).to(next(self.model.parameters()).dtype)  # (B, 3, h, w)
        features = self._image_features(pixels)  # (B, D)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        check_tensor("ids", ids, 2, floating=False)
        features = self._text_features(ids.to(self.device))  # (B, D)
        return F.normalize(features, dim=-1) if normalize else features

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, context_length) int64 ids on the model's device; longer texts are cut, as the library does."""
        if isinstance(texts, str) or not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"texts must be a sequence of str, got {type(texts).__name__}")
        return self._tokenize(list(texts)).to(self.device)

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image_features (B, D), text_features (B, D), logit_scale), features L2-normalised."""
        return self.encode_image(images), self.encode_text(ids), self.logit_scale

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _text_features(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError


def _resize_and_crop(images: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Scale (B, 3, H, W) so that it covers `size` (the shortest side fits), then crop the centre."""
    height, width = images.shape[-2:]
    if (height, width) == tuple(size):
        return images
    scale = max(size[0] / height, size[1] / width)
    scaled = (max(size[0], round(height * scale)), max(size[1], round(width * scale)))
    images = F.interpolate(images, size=scaled, mode=mode, align_corners=False, antialias=True).clamp(0, 1)
    top, left = (scaled[0] - size[0]) // 2, (scaled[1] - size[1]) // 2
    return images[..., top:top + size[0], left:left + size[1]]  # (B, 3, *size)


class OpenCLIPAdapter(PretrainedCLIP):
    """An open_clip `CLIP` and its tokenizer."""

    def __init__(self, model: nn.Module, tokenizer, description: str):
        import open_clip

        config = open_clip.get_model_preprocess_cfg(model)
        size = config["size"]
        size = (size, size) if isinstance(size, int) else tuple(size)
        super().__init__(model, size, config["mean"], config["std"], config.get("interpolation", "bicubic"),
                         description)
        self.tokenizer = tokenizer

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels, normalize=False)

    def _text_features(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(ids, normalize=False)

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts)


class TransformersCLIPAdapter(PretrainedCLIP):
    """A transformers `CLIPModel`, its tokenizer and its image statistics."""

    def __init__(self, model: nn.Module, tokenizer, mean: Sequence[float], std: Sequence[float], description: str):
        size = model.config.vision_config.image_size
        super().__init__(model, (size, size), mean, std, "bicubic", description)
        self.tokenizer = tokenizer
        self.context_length = model.config.text_config.max_position_embeddings

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return _projected(self.model.get_image_features(pixel_values=pixels))

    def _text_features(self, ids: torch.Tensor) -> torch.Tensor:
        # No attention mask: the text tower is causal and reads its feature at the end-of-text token,
        # so the padding after it never reaches the feature.
        return _projected(self.model.get_text_features(input_ids=ids))

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts, padding="max_length", max_length=self.context_length, truncation=True,
                              return_tensors="pt")["input_ids"]


def _projected(output) -> torch.Tensor:
    """The projected features: transformers 4 returns them, transformers 5 wraps them as `pooler_output`."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_clip(source: str, name: str | None = None, path: str | os.PathLike | None = None,
              device: str | torch.device | None = None, *, tag: str | None = None,
              cache_dir: str | os.PathLike | None = None) -> PretrainedCLIP:
    """A pretrained CLIP from local files, behind the course CLIP's interface.

    - `source="open_clip"`: `name` (an open_clip architecture, see `open_clip.list_models()`) with
      `path` a checkpoint file; or `path` a folder with `open_clip_config.json` and the weights; or
      `name` with `tag` (see `open_clip.list_pretrained()`), found in the local cache (`cache_dir`,
      else the default caches) or not at all.
    - `source="transformers"`: `path` a folder saved with `save_pretrained`, or `name` a hub id in
      the local cache.

    `device` defaults to `mmcourse.get_device()`. Absent weights raise `WeightsNotFound` (a
    FileNotFoundError naming the path or the cache entry); bad arguments raise ValueError.
    """
    if source not in SOURCES:
        raise ValueError(f"source={source!r} is unknown; expected one of {SOURCES}")
    device = get_device(device)
    if path is not None and not Path(path).exists():
        raise WeightsNotFound(str(path), f"path={str(path)!r} does not exist")
    if source == "open_clip":
        adapter = _load_open_clip(name, path, tag, cache_dir, device)
    else:
        if tag is not None:
            raise ValueError(f"tag={tag!r} is for source='open_clip'; for transformers give path= or a hub id name=")
        adapter = _load_transformers(name, path, cache_dir, device)
    return adapter.to(device)


def try_load_clip(source: str = "open_clip", name: str | None = None, path: str | os.PathLike | None = None,
                  device: str | torch.device | None = None, *, tag: str | None = None,
                  cache_dir: str | os.PathLike | None = None) -> PretrainedCLIP | None:
    """`load_clip(...)`, or None after one printed line when the weights are not on this machine.

    Called with no arguments it looks for open_clip's ViT-B-32 "openai" weights in the local cache.
    """
    if source == "open_clip" and name is None and path is None and tag is None:
        name, tag = DEFAULT_OPEN_CLIP
    try:
        return load_clip(source, name, path, device, tag=tag, cache_dir=cache_dir)
    except WeightsNotFound as missing:
        print(f"no pretrained CLIP weights found at {missing.where}; continuing with the course's from-scratch model")
        return None


def _load_open_clip(name, path, tag, cache_dir, device: torch.device) -> OpenCLIPAdapter:
    import open_clip

    if path is not None and tag is not None:
        raise ValueError(f"give path= (a local checkpoint) or tag= (a pretrained tag), not both; got "
                         f"path={str(path)!r} and tag={tag!r}")
    if path is not None and Path(path).is_dir():
        if name is not None or not (Path(path) / "open_clip_config.json").is_file():
            raise ValueError(f"path={str(path)!r} is a folder: it must hold open_clip_config.json and the weights, "
                             f"and name must be None (got name={name!r}); for a bare checkpoint give the file itself "
                             "with name=")
        model_name = f"local-dir:{Path(path)}"
        model = open_clip.create_model(model_name, device=device)
        return OpenCLIPAdapter(model, open_clip.get_tokenizer(model_name), f"open_clip from folder {path}")
    if name is None:
        raise ValueError("name must name an open_clip architecture (e.g. 'ViT-B-32') when path is a file "
                         "or tag is given")
    if name not in open_clip.list_models():
        raise ValueError(f"name={name!r} is not an open_clip architecture; see open_clip.list_models() "
                         "(register a custom one with open_clip.add_model_config)")
    if path is not None:
        model = open_clip.create_model(name, pretrained=str(path), device=device)
        return OpenCLIPAdapter(model, open_clip.get_tokenizer(name), f"open_clip {name} from {path}")
    if tag is None:
        raise ValueError("give path= (a local checkpoint file or folder) or tag= (a pretrained tag in the local cache)")
    config = open_clip.get_pretrained_cfg(name, tag)
    if not config:
        raise ValueError(f"tag={tag!r} is not a pretrained tag of {name!r}; expected one of "
                         f"{open_clip.list_pretrained_tags_by_model(name)}")
    checkpoint = _cached_open_clip_checkpoint(name, tag, config, cache_dir)
    preprocess = {key: config[key] for key in ("mean", "std", "interpolation", "resize_mode") if key in config}
    model = open_clip.create_model(name, pretrained=checkpoint, device=device,
                                   force_quick_gelu=config.get("quick_gelu", False), force_preprocess_cfg=preprocess)
    return OpenCLIPAdapter(model, open_clip.get_tokenizer(name), f"open_clip {name} ({tag}) from {checkpoint}")


def _cached_open_clip_checkpoint(name: str, tag: str, config: dict, cache_dir) -> str:
    """The local file of an open_clip pretrained tag: in the Hugging Face cache or open_clip's URL
    cache, whichever holds it. Never downloads."""
    from huggingface_hub import try_to_load_from_cache

    looked = []
    if config.get("hf_hub"):
        repo_id, filename = os.path.split(config["hf_hub"])  # "org/repo/" means the default file name
        filenames = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for filename in filenames:
            found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
            if isinstance(found, str):
                return found
            looked.append(f"{repo_id}/{filename}")
    if config.get("url"):
        candidate = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(config["url"])
        if candidate.is_file():
            return str(candidate)
        looked.append(str(candidate))
    raise WeightsNotFound(f"open_clip {name} ({tag})", f"not in the local cache (looked for {', '.join(looked)})")


def _load_transformers(name, path, cache_dir, device: torch.device) -> TransformersCLIPAdapter:
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    if path is None and name is None:
        raise ValueError("give path= (a folder saved with save_pretrained) or name= (a hub id in the local cache)")
    where = str(path) if path is not None else f"the local cache entry {name!r}"
    source = str(path) if path is not None else name
    options = dict(local_files_only=True, cache_dir=cache_dir)
    try:
        model = CLIPModel.from_pretrained(source, **options)
        tokenizer = AutoTokenizer.from_pretrained(source, **options)
    except OSError as error:  # what transformers raises for files that are not there
        raise WeightsNotFound(where, str(error).splitlines()[0]) from error
    try:
        processor = CLIPImageProcessor.from_pretrained(source, **options)
        mean, std = processor.image_mean, processor.image_std
    except OSError:  # saved without an image processor: CLIP's own statistics
        mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    return TransformersCLIPAdapter(model.to(device), tokenizer, mean, std, f"transformers CLIPModel from {where}")


__all__ = ["DEFAULT_OPEN_CLIP", "OpenCLIPAdapter", "PretrainedCLIP", "TransformersCLIPAdapter", "WeightsNotFound",
           "load_clip", "try_load_clip"]
