"""Notebook 03, section on MIL-NCE: NCE vs MIL-NCE on weakly aligned clips.

The setting of HowTo100M (Miech et al. 2019) and MIL-NCE (Miech et al. 2020) in the embedded world:
`ClipDataset` clips whose narrations are spoken `lag` frames late, jittered by +-`jitter` frames,
with filler narrations ("now watch this") that describe nothing.

- Training units are short *segments*: windows of `window` consecutive frames in which some pixel
  changes (`changing_windows`, a motion detector's proposals: a still segment shows nothing to
  narrate). A segment's time is its middle, a narration's time the middle of its spoken interval.
  Plain NCE trusts the one narration spoken nearest to the segment; MIL-NCE takes the bag of the K
  spoken nearest, of the same clip. A clip with fewer than K narrations repeats its nearest one and
  marks the copies as padding (`narration_mask` False), which `milnce_loss` leaves out. As the lag
  grows, the nearest narration is more and more often a filler or another event's, while the bag
  still holds the right one (`pairing_quality` counts both).
- A batch holds one segment per clip (a fresh random window of every clip each epoch), so a bag's
  narrations are never negatives of another segment of the same clip.
- Evaluation on clean held-out clips (lag 0, jitter 0, no fillers): the query is an event's TRUE
  interval (frames start..end), the gallery the distinct event sentences of a group of
  `gallery_clips` clips, R@1 the share of queries whose own sentence scores highest. With
  `gallery_clips=1` it asks the alignment question itself, "which of this clip's narrations happens
  here?", over the clips of two or more events (chance: the mean of 1 / events, about 0.42); larger
  groups add other clips' sentences (chance 1 / gallery size, about 0.04 for 16 clips).
- `filler_similarities`: fillers describe no segment, so their best similarity to any segment of
  their clip stays below the events'.
- `lag_sweep`: R@1 of NCE and MIL-NCE against training lag. The training clips are rendered once;
  a lag only moves when their narrations are heard (`later_timestamps`), and every run shares the
  clips, the segments, the batches and the initial weights: only the narrations paired differ.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ...models.milnce import MilNce, milnce_training_loss, small_milnce
from ...train import History, fit, model_device
from ...world.datasets import ClipDataset, images_to_tensor
from ...world.scene import check_count, check_seed

METHODS = ("nce", "milnce")


@dataclass(frozen=True)
class MilNceRecipe:
    """Everything one sweep needs; `RECIPES` holds the course's scales."""

    n_train: int = 4800  # training clips
    n_test: int = 400  # clean evaluation clips
    frames: int = 8  # frames per clip
    image_size: int = 32
    window: int = 2  # frames per training segment
    bag_size: int = 2  # MIL-NCE's K
    jitter: float = 0.5  # frames, on top of the lag
    fillers: int = 1  # filler narrations per training clip
    lags: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0)  # training lags of the sweep, in frames
    width: int = 64
    embed_dim: int = 32
    epochs: int = 2
    batch_size: int = 32
    lr: float = 2e-3
    temperature: float = 0.1


RECIPES = {
    "ci": MilNceRecipe(n_train=1280, n_test=200, lags=(0.0, 3.0)),  # 4 runs of 80 steps
    "cpu": MilNceRecipe(),  # 8 runs of 300 steps
    "gpu": MilNceRecipe(n_train=20000, n_test=1000, epochs=3),
}


# --------------------------------------------------------------------------------------------
# Segments and their bags of nearest spoken narrations
# --------------------------------------------------------------------------------------------


def spoken_times(timestamps: np.ndarray) -> np.ndarray:
    """(M,) middle of each spoken (start, end) interval of (M, 2) `timestamps`, in frames."""
    timestamps = np.asarray(timestamps, dtype=np.float64)
    if timestamps.ndim != 2 or timestamps.shape[1] != 2:
        raise ValueError(f"timestamps must have shape (M, 2) (spoken start, end), got {timestamps.shape}")
    return timestamps.mean(1)


def nearest_narrations(timestamps: np.ndarray, valid: np.ndarray, time: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The bag of the `k` narrations spoken nearest to `time`: (indices (k,), mask (k,) bool).

    `timestamps` (M, 2) spoken intervals, `valid` (M,) bool (False: a padding row). Indices are
    ordered nearest first (ties: the earlier row); when fewer than `k` are valid, the bag is filled
    up with the nearest one, marked False in the mask.
    """
    times = spoken_times(timestamps)
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != times.shape:
        raise ValueError(f"valid must have shape {times.shape} (one flag per narration), got {valid.shape}")
    if not valid.any():
        raise ValueError("valid is all False: a clip needs at least one narration to make a bag")
    check_count("k", k, 1)
    distance = np.where(valid, np.abs(times - float(time)), np.inf)  # (M,)
    order = np.argsort(distance, kind="stable")[: min(k, int(valid.sum()))]
    indices = np.concatenate([order, np.full(k - len(order), order[0])])  # (k,)
    return indices.astype(np.int64), np.arange(k) < len(order)


def later_timestamps(clips: ClipDataset, lag: float) -> np.ndarray:
    """(N, M, 2) spoken intervals of `clips` with every event's narration said `lag` frames later.

    The world draws a narration's jitter independently of its lag (and fillers have no lag), so
    `later_timestamps(ClipDataset(..., lag=0), L)` are the timestamps of `ClipDataset(..., lag=L)`:
    a sweep over lags renders its clips once."""
    if isinstance(lag, bool) or not isinstance(lag, (int, float)) or not math.isfinite(lag):
        raise ValueError(f"lag must be a finite number of frames, got {lag!r}")
    a = clips.arrays
    is_event = np.isfinite(a["true_intervals"][..., 0])  # (N, M) False for fillers and padding
    return a["timestamps"] + np.where(is_event, float(lag), 0.0)[..., None]


def changing_windows(frames: np.ndarray, window: int) -> list[int]:
    """First frames of the `window`-frame windows of one clip's (T, H, W, 3) `frames` in which some
    pixel changes: a motion detector's segment proposals, blind to what the narrations say."""
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"frames must have shape (T, H, W, 3), got {frames.shape}")
    check_count("window", window, 2)
    steps = (frames[1:] != frames[:-1]).reshape(len(frames) - 1, -1).any(1)  # (T - 1,) a pixel changes at step t
    return [start for start in range(len(frames) - window + 1) if steps[start:start + window - 1].any()]


def segment_events(true_intervals: np.ndarray, start: int, end: int) -> np.ndarray:
    """(M,) bool: which narrations describe an event that happens inside frames `start`..`end`, i.e.
    whose true interval shares at least one frame-to-frame step with the segment (NaN rows: no)."""
    intervals = np.asarray(true_intervals, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.maximum(intervals[:, 0], start) < np.minimum(intervals[:, 1], end)


class SegmentBags(Dataset):
    """Item i: a random `window`-frame segment of clip i of `clips` with its bag of narrations.

    The segment is drawn among the windows in which something changes (`changing_windows`). Keys:
    frames (window, 3, H, W); narrations (bag_size, L) token ids, nearest spoken first (NCE uses
    the first); narration_mask (bag_size,); start (first frame). `extra_lag` delays every event's
    narration by that many more frames (`later_timestamps`). Windows come from a generator seeded
    with `seed`, so two datasets with the same seed and access order draw the same segments.
    """

    def __init__(self, clips: ClipDataset, window: int, bag_size: int, seed: int, extra_lag: float = 0.0):
        if not isinstance(clips, ClipDataset):
            raise TypeError(f"clips must be a ClipDataset, got {type(clips).__name__}")
        frames = clips.arrays["frames"].shape[1]
        self.window = check_count("window", window, 2)
        if self.window > frames:
            raise ValueError(f"window={window} is longer than the clips' {frames} frames")
        self.bag_size = check_count("bag_size", bag_size, 1)
        self.clips = clips
        self.timestamps = later_timestamps(clips, extra_lag)  # (N, M, 2) when each narration is heard
        self.starts = [changing_windows(clip_frames, self.window) or list(range(frames - self.window + 1))
                       for clip_frames in clips.arrays["frames"]]
        self.generator = torch.Generator().manual_seed(check_seed(seed))

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index) -> dict:
        i, a = self.clips._check_index(index), self.clips.arrays
        starts = self.starts[i]
        start = starts[int(torch.randint(len(starts), (), generator=self.generator))]
        bag, mask = nearest_narrations(self.timestamps[i], a["narration_mask"][i], start + (self.window - 1) / 2,
                                       self.bag_size)
        return {
            "frames": images_to_tensor(a["frames"][i, start:start + self.window]),  # (window, 3, H, W)
            "narrations": torch.from_numpy(a["narrations"][i, bag]),  # (bag_size, L)
            "narration_mask": torch.from_numpy(mask),  # (bag_size,)
            "start": start,
        }


def pairing_quality(clips: ClipDataset, window: int, bag_size: int, extra_lag: float = 0.0) -> dict[str, float]:
    """Over every window that shows an event: the share whose nearest spoken narration describes an
    event in the window ("nce"), and whose bag of `bag_size` holds one ("milnce")."""
    check_count("window", window, 2)
    a = clips.arrays
    timestamps = later_timestamps(clips, extra_lag)
    hits = {"nce": [], "milnce": []}
    for i in range(len(clips)):
        for start in range(a["frames"].shape[1] - window + 1):
            shown = segment_events(a["true_intervals"][i], start, start + window - 1)  # (M,)
            if not shown.any():
                continue
            bag, mask = nearest_narrations(timestamps[i], a["narration_mask"][i], start + (window - 1) / 2, bag_size)
            hits["nce"].append(bool(shown[bag[0]]))
            hits["milnce"].append(bool(shown[bag[mask]].any()))
    return {name: float(np.mean(values)) if values else math.nan for name, values in hits.items()}


# --------------------------------------------------------------------------------------------
# Evaluation on clean clips
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventSegment:
    """Event `sentence` of clip `clip` happens over frames `start`..`end` (its true interval)."""

    clip: int
    start: int
    end: int
    sentence: str


def event_segments(clips: ClipDataset) -> list[EventSegment]:
    """Every narrated event of `clips` with its TRUE interval (fillers are left out)."""
    if not isinstance(clips, ClipDataset):
        raise TypeError(f"clips must be a ClipDataset, got {type(clips).__name__}")
    return [EventSegment(i, int(interval[0]), int(interval[1]), sentence)
            for i, clip in enumerate(clips.clips)
            for sentence, interval in zip(clip.narrations, clip.true_intervals) if interval is not None]


def encode_segments(model: MilNce, clips: ClipDataset, segments: Sequence[tuple[int, int, int] | EventSegment],
                    batch_size: int = 256) -> torch.Tensor:
    """(N, D) features of segments (clip, start, end): frames start..end, padded, with a frame mask."""
    device = model_device(model)
    rows = [(s.clip, s.start, s.end) if isinstance(s, EventSegment) else tuple(s) for s in segments]
    frames_of = clips.arrays["frames"]  # (N, T, H, W, 3) uint8
    features = []
    model.eval()
    with torch.no_grad():
        for first in range(0, len(rows), batch_size):
            chunk = rows[first:first + batch_size]
            length = max(end - start + 1 for _, start, end in chunk)
            frames = np.zeros((len(chunk), length, *frames_of.shape[2:]), np.uint8)  # (B, T, H, W, 3)
            frame_mask = torch.zeros(len(chunk), length, dtype=torch.bool)  # (B, T)
            for row, (clip, start, end) in enumerate(chunk):
                frames[row, : end - start + 1] = frames_of[clip, start:end + 1]
                frame_mask[row, : end - start + 1] = True
            features.append(model.encode_video(images_to_tensor(frames).to(device), frame_mask.to(device)))
    return torch.cat(features) if features else torch.zeros(0, model.embed_dim, device=device)


def encode_sentences(model: MilNce, sentences: Sequence[str]) -> torch.Tensor:
    """(N, D) features of `sentences`."""
    model.eval()
    with torch.no_grad():
        return model.encode_text(model.tokenize(list(sentences)))


def retrieval_at_1(model: MilNce, clips: ClipDataset, gallery_clips: int | None = 1) -> dict[str, float]:
    """Segment -> narration R@1 on `clips` (meant clean: lag 0, jitter 0).

    Queries: every event's true-interval segment. Gallery: the distinct event sentences of its group
    of `gallery_clips` consecutive clips (None: all `clips`), its own clip's among them; a group with
    a single sentence is skipped (with `gallery_clips=1`: the clips of one event). Returns {"R@1",
    "chance" (mean over queries of 1 / gallery size), "queries", "gallery" (mean size)}.
    """
    return retrieval_by_gallery(model, clips, (gallery_clips,))[gallery_clips]


def retrieval_by_gallery(model: MilNce, clips: ClipDataset,
                         galleries: Sequence[int | None] = (1, 16)) -> dict[int | None, dict[str, float]]:
    """`retrieval_at_1` for every gallery size in `galleries`, encoding the segments once."""
    segments = event_segments(clips)
    video = encode_segments(model, clips, segments)  # (N, D)
    return {size: _recall_at_1(model, segments, video, len(clips), size) for size in galleries}


def _recall_at_1(model, segments: list[EventSegment], video: torch.Tensor, n_clips: int,
                 gallery_clips: int | None) -> dict[str, float]:
    group_size = n_clips if gallery_clips is None else check_count("gallery_clips", gallery_clips, 1)
    hits, sizes = [], []
    for first in range(0, n_clips, group_size):
        rows = [r for r, s in enumerate(segments) if first <= s.clip < first + group_size]
        gallery = sorted({segments[r].sentence for r in rows})
        if len(gallery) < 2:
            continue  # nothing to choose from
        targets = torch.tensor([gallery.index(segments[r].sentence) for r in rows])  # (n,)
        similarity = video[rows] @ encode_sentences(model, gallery).T  # (n, G)
        hits += (similarity.argmax(1).cpu() == targets).tolist()
        sizes += [len(gallery)] * len(rows)
    if not hits:
        raise ValueError(f"no group of {group_size} clips has two different event sentences to choose from")
    sizes = np.array(sizes, dtype=np.float64)
    return {"R@1": float(np.mean(hits)), "chance": float(np.mean(1.0 / sizes)),
            "queries": float(len(hits)), "gallery": float(sizes.mean())}


def filler_similarities(model: MilNce, clips: ClipDataset, window: int = 2) -> dict[str, np.ndarray]:
    """Each narration's best cosine similarity to any `window`-frame segment of its own clip.

    Returns {"event": (Ne,), "filler": (Nf,)}: an event's narration finds the segment that shows it;
    a filler, true of nothing, should find none as similar (make `clips` with fillers > 0)."""
    frames = clips.arrays["frames"].shape[1]
    check_count("window", window, 2)
    positions = frames - window + 1
    windows = [(i, start, start + window - 1) for i in range(len(clips)) for start in range(positions)]
    segment_features = encode_segments(model, clips, windows).view(len(clips), positions, -1)  # (N, P, D)
    best = {"event": [], "filler": []}
    for i, clip in enumerate(clips.clips):
        scores = encode_sentences(model, clip.narrations) @ segment_features[i].T  # (M_i, P)
        for interval, score in zip(clip.true_intervals, scores.max(1).values.tolist()):
            best["filler" if interval is None else "event"].append(score)
    return {name: np.array(values) for name, values in best.items()}


# --------------------------------------------------------------------------------------------
# Training and the sweep
# --------------------------------------------------------------------------------------------


def train_milnce(clips: ClipDataset, method: str, recipe: MilNceRecipe, seed: int = 0, extra_lag: float = 0.0,
                 progress: bool = False) -> tuple[MilNce, History]:
    """A fresh `small_milnce` trained by `method` ("nce" or "milnce") on segments of `clips` (their
    narrations heard `extra_lag` frames later still), with AdamW at `recipe.lr` decayed to 0 along a
    cosine. Returns the model (in eval mode) and `fit`'s history."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; expected one of {METHODS}")
    bags = SegmentBags(clips, recipe.window, recipe.bag_size, seed, extra_lag)
    loader = DataLoader(bags, batch_size=recipe.batch_size, shuffle=True, drop_last=len(bags) > recipe.batch_size,
                        generator=torch.Generator().manual_seed(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = small_milnce(recipe.width, recipe.embed_dim)
    bag_size = 1 if method == "nce" else None  # NCE: the first narration of each bag, the nearest

    def loss_fn(model, batch):
        return milnce_training_loss(model, batch, recipe.temperature, bag_size)

    steps = recipe.epochs * len(loader)
    history = fit(model, loader, loss_fn, epochs=recipe.epochs, lr=recipe.lr, progress=progress,
                  scheduler=lambda optimizer: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps),
                  scheduler_every="batch")
    return model, history


def lag_sweep(recipe: MilNceRecipe, methods: Sequence[str] = METHODS, seed: int = 0,
              cross_gallery_clips: int = 16, progress: bool = False) -> tuple[list[dict], dict]:
    """Train every method at every lag of `recipe.lags` and evaluate on clean held-out clips.

    Training clips: `recipe.n_train` clips of seed `seed` (jitter `recipe.jitter`, `recipe.fillers`
    fillers each), heard `lag` frames late. Evaluation clips: `recipe.n_test` clips of seed
    `seed + 1000`, lag 0, jitter 0, no fillers. One record per run: method, lag; "R@1" and "chance"
    within the own clip (`gallery_clips=1`), "R@1_cross" and "chance_cross" over galleries of
    `cross_gallery_clips` clips; "pairing" (share of segments whose NCE narration / MIL-NCE bag is
    right); the last epoch's train_loss; seconds (training and evaluation). Also returns the trained
    models, keyed by (method, lag).
    """
    train = ClipDataset(recipe.n_train, seed, frames=recipe.frames, jitter=recipe.jitter, fillers=recipe.fillers,
                        image_size=recipe.image_size)
    test = ClipDataset(recipe.n_test, seed + 1000, frames=recipe.frames, image_size=recipe.image_size)
    records, models = [], {}
    for lag in recipe.lags:
        pairing = pairing_quality(train, recipe.window, recipe.bag_size, lag)
        for method in methods:
            started = time.perf_counter()
            model, history = train_milnce(train, method, recipe, seed, lag, progress)
            models[method, float(lag)] = model
            results = retrieval_by_gallery(model, test, (1, cross_gallery_clips))
            own, cross = results[1], results[cross_gallery_clips]
            records.append({"method": method, "lag": float(lag), "R@1": own["R@1"], "chance": own["chance"],
                            "R@1_cross": cross["R@1"], "chance_cross": cross["chance"], "pairing": pairing[method],
                            "train_loss": history[-1]["train_loss"], "seconds": time.perf_counter() - started})
    return records, models
