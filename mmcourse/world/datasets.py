"""torch Datasets over the embedded world, with their arrays cached on disk.

Each dataset describes itself by a spec (kind, sizes, seeds); the arrays it needs (rendered images,
masks, boxes, token ids...) are generated once and cached under `data/cache/` by
`mmcourse.world.cache`, keyed by a hash of that spec. Items are dicts of tensors of fixed shapes
(padded where the world varies: objects per scene, narrations per clip), so torch's default collate
works; `collate` additionally trims the padding columns of token tensors to the longest sequence
in the batch, which makes small transformers cheaper.

- `CaptionDataset`: images with captions, boxes, instance masks, attribute codes and the word-object
  alignment of every caption (representation and alignment notebooks).
- `QuestionDataset`: images with CLEVR-style questions, answers, families and programs (reasoning).
- `ClipDataset`: frame sequences with lagged narrations and their true intervals (MIL-NCE).
- `AffectDataset`: the trimodal sentiment task (fusion).
- `SortOfClevrDataset`: Santoro et al.'s relational task.
"""
from __future__ import annotations

import json
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from . import affect, clips, language, programs, sort_of_clevr
from .cache import cached_arrays
from .render import render
from .scene import ATTRIBUTES, check_count, check_seed, get_preset, sample_scenes

# Token tensors of a batch and the dimension along which their padding is trimmed by `collate`;
# tensors aligned with them position by position are trimmed together.
TOKEN_DIMS = {"tokens": 1, "alignment": 1, "question": 1, "text": 1, "narrations": 2}
TRIM_GROUPS = (("tokens", "alignment"), ("question",), ("text",), ("narrations",))


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).movedim(-1, -3).float().div_(255.0)


def collate(batch: Sequence[dict]) -> dict:
    """torch's default collate, then token tensors trimmed to the longest non-pad sequence."""
    out = default_collate(list(batch))
    pad = language.default_tokenizer().pad_id
    for group in TRIM_GROUPS:
        present = [key for key in group if key in out]
        if not present:
            continue
        ids = out[present[0]]
        dim = TOKEN_DIMS[present[0]]
        used = (ids != pad).flatten(0, dim - 1) if dim > 1 else ids != pad
        used = used.reshape(-1, ids.shape[dim]).any(0)  # (L,) columns holding any token
        length = int(used.nonzero().max()) + 1 if used.any() else 1
        for key in present:
            out[key] = out[key].narrow(TOKEN_DIMS[key], 0, length)
    return out


def _check_length(name: str, value) -> int:
    return check_count(name, value, 2)


def _check_image_size(preset: str, image_size) -> int:
    return get_preset(preset).image_size if image_size is None else check_count("image_size", image_size, 1)


class _CachedDataset(Dataset):
    """Holds the arrays of one spec; subclasses define `_build` and `__getitem__`."""

    def __init__(self, spec: dict, cache: bool):
        # Token ids change meaning when the vocabulary does, so its fingerprint is part of the key.
        self.spec = {**spec, "vocabulary": language.default_tokenizer().fingerprint}
        self.arrays = cached_arrays(self.spec, self._build, enabled=cache)

    def _build(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _check_index(self, index) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for a dataset of {len(self)} items")
        return int(index) % len(self)


class CaptionDataset(_CachedDataset):
    """`n` scenes, each with `captions_per_image` captions; item j is image j // C with caption j % C.

    Item keys: image (3, H, W) float in [0, 1]; tokens (L,) int64 (wrapped `<bos>`..`<eos>` by
    default); alignment (L, K) bool, True where token l names object k; boxes (K, 4) xyxy pixels;
    mask (H, W) int64 instance mask; attributes (K, 4) int64 codes of shape, color, size, style into
    the preset's value lists (-1 for padding); num_objects; is_noisy; index (of the image).
    K is the preset's maximum object count. `noise_rate` > 0 makes noisy "web" captions.
    """

    def __init__(self, n: int, seed: int, preset: str = "default", image_size: int | None = None,
                 captions_per_image: int = 1, noise_rate: float = 0.0, max_length: int = 48,
                 wrap: str | None = "bos_eos", cache: bool = True):
        self.n, self.seed = check_count("n", n), check_seed(seed)
        self.preset = get_preset(preset)
        self.image_size = _check_image_size(preset, image_size)
        self.captions_per_image = check_count("captions_per_image", captions_per_image, 1)
        self.max_length = _check_length("max_length", max_length)
        if isinstance(noise_rate, bool) or not isinstance(noise_rate, (int, float)) or not 0 <= noise_rate <= 1:
            raise ValueError(f"noise_rate must be a number in [0, 1], got {noise_rate!r}")
        self.scenes = sample_scenes(self.n, self.seed, preset)
        spec = dict(kind="captions", n=self.n, seed=self.seed, preset=preset, image_size=self.image_size,
                    captions_per_image=self.captions_per_image, noise_rate=float(noise_rate),
                    max_length=self.max_length, wrap=wrap)
        super().__init__(spec, cache)
        self.texts = [list(row) for row in self.arrays["texts"].tolist()]

    def _build(self) -> dict[str, np.ndarray]:
        tokenizer = language.default_tokenizer()
        size, capacity, per_image = self.image_size, self.preset.max_objects, self.captions_per_image
        offset = 1 if self.spec["wrap"] else 0  # a wrap's opening token shifts word positions by one
        arrays = {
            **_object_arrays(self.scenes, size, capacity),
            "attributes": np.full((self.n, capacity, len(ATTRIBUTES)), -1, np.int64),
            "tokens": np.zeros((self.n, per_image, self.max_length), np.int64),
            "alignment": np.zeros((self.n, per_image, self.max_length, capacity), bool),
            "is_noisy": np.zeros((self.n, per_image), bool),
        }
        texts = []
        for i, scene in enumerate(self.scenes):
            k = len(scene)
            arrays["attributes"][i, :k] = [[self.preset.values(a).index(getattr(o, a)) for a in ATTRIBUTES]
                                           for o in scene.objects]
            captions = language.noisy_captions(scene, self.seed, per_image, self.spec["noise_rate"])
            texts.append([c.text for c in captions])
            arrays["tokens"][i] = tokenizer.encode_batch(texts[-1], self.max_length, self.spec["wrap"])
            for c, caption in enumerate(captions):
                words = caption.alignment(capacity)[: self.max_length - 2 * offset]  # (words, K)
                arrays["alignment"][i, c, offset:offset + len(words)] = words
                arrays["is_noisy"][i, c] = caption.is_noisy
        arrays["texts"] = np.array(texts, dtype=str).reshape(self.n, per_image)
        return arrays

    def __len__(self) -> int:
        return self.n * self.captions_per_image

    def __getitem__(self, index) -> dict:
        image_index, caption_index = divmod(self._check_index(index), self.captions_per_image)
        a = self.arrays
        return {
            "image": images_to_tensor(a["images"][image_index]),
            "tokens": torch.from_numpy(a["tokens"][image_index, caption_index]),
            "alignment": torch.from_numpy(a["alignment"][image_index, caption_index]),
            "boxes": torch.from_numpy(a["boxes"][image_index]),
            "mask": torch.from_numpy(a["masks"][image_index].astype(np.int64)),
            "attributes": torch.from_numpy(a["attributes"][image_index]),
            "num_objects": int(a["num_objects"][image_index]),
            "is_noisy": bool(a["is_noisy"][image_index, caption_index]),
            "index": image_index,
        }


class QuestionDataset(_CachedDataset):
    """`n_scenes` scenes with `questions_per_scene` CLEVR-style questions each (fewer for a scene
    that cannot be asked the chosen families), answers balanced per template across the
    collection. Item j is question j.

    Item keys: image (3, H, W); question (L,) int64 tokens; answer (index into
    `programs.ANSWERS`); family (index into `programs.FAMILIES`); scene_index; index (j); boxes (K, 4) xyxy
    pixels and objects (K,) bool, True where box k holds object k of the scene (the "bottom-up"
    proposals of object-based models); mask (H, W) int64 instance mask (0 background, k + 1 on
    object k), against which attention is scored. K is the preset's maximum object count.
    `program(j)` returns question j's program, `texts[j]` its text.
    """

    def __init__(self, n_scenes: int, seed: int, questions_per_scene: int = 5,
                 families: Sequence[str] | None = None, preset: str = "default",
                 image_size: int | None = None, max_length: int = 24, cache: bool = True):
        self.n_scenes, self.seed = check_count("n_scenes", n_scenes), check_seed(seed)
        self.questions_per_scene = check_count("questions_per_scene", questions_per_scene, 1)
        self.image_size = _check_image_size(preset, image_size)
        self.max_length = _check_length("max_length", max_length)
        self.scenes = sample_scenes(self.n_scenes, self.seed, preset)
        spec = dict(kind="questions", n_scenes=self.n_scenes, seed=self.seed, preset=preset,
                    questions_per_scene=self.questions_per_scene,
                    families=list(families) if families is not None else None,
                    image_size=self.image_size, max_length=self.max_length, objects=True)
        super().__init__(spec, cache)
        self.texts = self.arrays["texts"].tolist()

    def _build(self) -> dict[str, np.ndarray]:
        asked = programs.ask_balanced(self.scenes, self.seed, self.questions_per_scene, self.spec["families"])
        questions = [q for per_scene in asked for q in per_scene]
        # A scene that cannot be asked the chosen families gets fewer questions, so index explicitly.
        scene_index = np.array([i for i, per_scene in enumerate(asked) for _ in per_scene], np.int64)
        texts = [q.text for q in questions]
        return {
            **_object_arrays(self.scenes, self.image_size, get_preset(self.spec["preset"]).max_objects),
            "questions": language.default_tokenizer().encode_batch(texts, self.max_length),
            "answers": np.array([programs.ANSWERS.index(q.answer) for q in questions], np.int64),
            "families": np.array([programs.FAMILIES.index(q.family) for q in questions], np.int64),
            "scene_index": scene_index,
            "texts": np.array(texts, dtype=str),
            "programs": np.array([json.dumps(list(q.program)) for q in questions], dtype=str),
        }

    def __len__(self) -> int:
        return len(self.arrays["answers"])

    def program(self, index: int) -> list[dict]:
        return json.loads(str(self.arrays["programs"][self._check_index(index)]))

    def __getitem__(self, index) -> dict:
        j, a = self._check_index(index), self.arrays
        scene_index = int(a["scene_index"][j])
        return {
            "image": images_to_tensor(a["images"][scene_index]),
            "question": torch.from_numpy(a["questions"][j]),
            "answer": int(a["answers"][j]),
            "family": int(a["families"][j]),
            "scene_index": scene_index,
            "index": j,
            "boxes": torch.from_numpy(a["boxes"][scene_index]),
            "objects": torch.arange(a["boxes"].shape[1]) < int(a["num_objects"][scene_index]),
            "mask": torch.from_numpy(a["masks"][scene_index].astype(np.int64)),
        }


def _object_arrays(scenes: Sequence, size: int, capacity: int) -> dict[str, np.ndarray]:
    """Rendered images, instance masks, boxes (padded to `capacity` objects) and object counts."""
    arrays = {"images": np.zeros((len(scenes), size, size, 3), np.uint8),
              "masks": np.zeros((len(scenes), size, size), np.uint8),
              "boxes": np.zeros((len(scenes), capacity, 4), np.float32),
              "num_objects": np.array([len(s) for s in scenes], np.int64)}
    for i, scene in enumerate(scenes):
        picture = render(scene, size)
        arrays["images"][i], arrays["masks"][i], arrays["boxes"][i, :len(scene)] = (
            picture.image, picture.instance_mask, picture.boxes)
    return arrays


class ClipDataset(_CachedDataset):
    """`n` clips of `frames` frames with narrations spoken `lag` frames late, jittered by `jitter`.

    Item keys: frames (T, 3, H, W); narrations (M, L) int64 tokens, M = the most narrations a
    clip can have (padding rows are all `<pad>`); narration_mask (M,) bool; timestamps (M, 2)
    float32 spoken [start, end] frames; true_intervals (M, 2) float32 (NaN for fillers and padding).
    """

    def __init__(self, n: int, seed: int, frames: int = 8, lag: float = 0.0, jitter: float = 0.0,
                 fillers: int = 0, image_size: int = 32, max_length: int = 12, cache: bool = True):
        self.n, self.seed = check_count("n", n), check_seed(seed)
        self.max_length = _check_length("max_length", max_length)
        self.image_size = check_count("image_size", image_size, 1)
        self.clips = clips.sample_clips(self.n, self.seed, frames=frames, lag=lag, jitter=jitter, fillers=fillers)
        self.max_narrations = clips.MAX_EVENTS + check_count("fillers", fillers)
        spec = dict(kind="clips", n=self.n, seed=self.seed, frames=frames, lag=float(lag), jitter=float(jitter),
                    fillers=fillers, image_size=self.image_size, max_length=self.max_length)
        super().__init__(spec, cache)

    def _build(self) -> dict[str, np.ndarray]:
        tokenizer, m = language.default_tokenizer(), self.max_narrations
        frames = self.spec["frames"]
        arrays = {
            "frames": np.zeros((self.n, frames, self.image_size, self.image_size, 3), np.uint8),
            "narrations": np.zeros((self.n, m, self.max_length), np.int64),
            "narration_mask": np.zeros((self.n, m), bool),
            "timestamps": np.zeros((self.n, m, 2), np.float32),
            "true_intervals": np.full((self.n, m, 2), np.nan, np.float32),
        }
        for i, clip in enumerate(self.clips):
            count = len(clip.narrations)
            arrays["frames"][i] = clip.render(self.image_size)
            arrays["narrations"][i, :count] = tokenizer.encode_batch(list(clip.narrations), self.max_length)
            arrays["narration_mask"][i, :count] = True
            arrays["timestamps"][i, :count] = clip.timestamps
            for k, interval in enumerate(clip.true_intervals):
                if interval is not None:
                    arrays["true_intervals"][i, k] = interval
        return arrays

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index) -> dict:
        i, a = self._check_index(index), self.arrays
        return {
            "frames": images_to_tensor(a["frames"][i]),
            "narrations": torch.from_numpy(a["narrations"][i]),
            "narration_mask": torch.from_numpy(a["narration_mask"][i]),
            "timestamps": torch.from_numpy(a["timestamps"][i]),
            "true_intervals": torch.from_numpy(a["true_intervals"][i]),
        }


class AffectDataset(_CachedDataset):
    """The trimodal sentiment task of `mmcourse.world.affect`, as tensors.

    Item keys: video (T_v, D_v) and audio (T_a, D_a) float32; text (L,) int64 tokens; label (0/1);
    interaction (index into `affect.INTERACTIONS`); polarity (3,) and delivery (3,) int64 (see
    `affect.AffectData`); expression (T_v,) bool, True on the frames where the face shows its expression. `video_frames` and `audio_frames`
    (default: `frames`) draw the two sequences at lengths of their own, unaligned.
    """

    def __init__(self, n: int, seed: int, shares: Sequence[float] = (0.4, 0.3, 0.3), frames: int = 12,
                 noise: float = affect.DEFAULT_NOISE, max_length: int = 12, cache: bool = True,
                 video_frames: int | None = None, audio_frames: int | None = None):
        self.max_length = _check_length("max_length", max_length)
        spec = dict(kind="affect", n=check_count("n", n), seed=check_seed(seed), shares=[float(s) for s in shares],
                    frames=frames, noise=float(noise), max_length=self.max_length,
                    video_frames=frames if video_frames is None else video_frames,
                    audio_frames=frames if audio_frames is None else audio_frames)
        super().__init__(spec, cache)
        self.texts = self.arrays["texts"].tolist()

    def _build(self) -> dict[str, np.ndarray]:
        s = self.spec
        data = affect.sample_affect(s["n"], s["seed"], shares=s["shares"], frames=s["frames"], noise=s["noise"],
                                    video_frames=s["video_frames"], audio_frames=s["audio_frames"])
        return {
            "video": data.video, "audio": data.audio, "labels": data.labels,
            "interaction": data.interaction, "polarity": data.polarity, "delivery": data.delivery,
            "expression": data.expression,
            "text": language.default_tokenizer().encode_batch(data.texts, self.max_length),
            "texts": np.array(data.texts, dtype=str),
        }

    def __len__(self) -> int:
        return len(self.arrays["labels"])

    def __getitem__(self, index) -> dict:
        i, a = self._check_index(index), self.arrays
        return {
            "video": torch.from_numpy(a["video"][i]),
            "audio": torch.from_numpy(a["audio"][i]),
            "text": torch.from_numpy(a["text"][i]),
            "label": int(a["labels"][i]),
            "interaction": int(a["interaction"][i]),
            "polarity": torch.from_numpy(a["polarity"][i]),
            "delivery": torch.from_numpy(a["delivery"][i]),
            "expression": torch.from_numpy(a["expression"][i]),
        }


class SortOfClevrDataset(_CachedDataset):
    """Sort-of-CLEVR (Santoro et al. 2017): item j is question j % 20 of image j // 20.

    Item keys: image (3, 75, 75); question_vector (18,) float32; answer (index into
    `sort_of_clevr.ANSWERS`); relational (bool).
    """

    QUESTIONS_PER_IMAGE = 20

    def __init__(self, n: int, seed: int, size: int = 75, cache: bool = True):
        spec = dict(kind="sort_of_clevr", n=check_count("n", n), seed=check_seed(seed), size=size)
        super().__init__(spec, cache)

    def _build(self) -> dict[str, np.ndarray]:
        data = sort_of_clevr.sample_sort_of_clevr(self.spec["n"], self.spec["seed"], size=self.spec["size"])
        return {"images": data.images, "vectors": data.vectors, "answers": data.answers,
                "relational": data.relational, "texts": np.array(data.texts, dtype=str)}

    def __len__(self) -> int:
        return self.spec["n"] * self.QUESTIONS_PER_IMAGE

    def __getitem__(self, index) -> dict:
        image_index, q = divmod(self._check_index(index), self.QUESTIONS_PER_IMAGE)
        a = self.arrays
        return {
            "image": images_to_tensor(a["images"][image_index]),
            "question_vector": torch.from_numpy(a["vectors"][image_index, q]),
            "answer": int(a["answers"][image_index, q]),
            "relational": bool(a["relational"][image_index, q]),
        }
