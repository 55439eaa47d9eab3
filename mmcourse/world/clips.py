"""Short clips of a scene in motion, with narrations that are only weakly aligned to the frames.

This is the setting of HowTo100M (Miech et al. 2019) and MIL-NCE (Miech et al. 2020): instructional
videos come with narrations from speech recognition, and a narration is often spoken a little
before or after the moment it describes, or describes nothing on screen at all ("now watch this").
MIL-NCE learns from such pairs by treating every narration near a clip as a *bag* of candidate
positives instead of trusting one timestamp.

A clip here is `T` scenes (one per frame) in which a few objects each do one thing: move in a
straight line (left, right, up, down) or change colour, size or style between two frames. Every
event gets a narration such as "the red circle moves left", true of the frames of its *true*
interval. What the learner sees is the *spoken* interval: the true one shifted by `lag` frames and
by a random offset in [-jitter, jitter] (both in frames), so spoken timestamps may fall before frame
0 or after frame T - 1. Filler narrations, unrelated to any event, can be mixed in.

Each object keeps a unique (colour, shape) pair in every frame, so "the red circle" always names one
object. Objects stay inside the canvas and their boxes stay disjoint in every frame. Clip `i` of
`sample_clips(n, seed, ...)` depends only on `(seed, i)`, and its scenes and events do not depend on
`lag`, `jitter` or `fillers`: those only change what is said and when.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .language import split_words
from .render import render_batch
from .scene import PRESETS, Scene, SceneObject, check_count, check_seed, sample_scenes, scene_rng

PRESET = "default"
MIN_OBJECTS, MAX_OBJECTS = 2, 4
MAX_EVENTS = 3
MOVE_DISTANCE = (0.15, 0.3)  # how far a moving object travels over its whole event, canvas fractions
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
FILLERS = (
    "now watch this",
    "let us see what happens",
    "here we go",
    "okay so",
    "keep your eyes on the screen",
    "this is the fun part",
    "and that is it",
)


@dataclass(frozen=True)
class Event:
    """Object `actor` (an index into each frame's objects) does `action` from frame `start` to frame
    `end` (start < end): frame `start` shows it before, frame `end` after. `subject` names the actor
    as it looks at frame `start`, e.g. "red circle"."""

    actor: int
    subject: str
    action: str  # "moves left", "turns red", "grows", "becomes hollow", ...
    start: int
    end: int

    @property
    def sentence(self) -> str:
        return f"the {self.subject} {self.action}"


@dataclass(frozen=True)
class Clip:
    """`T` frames of one scene with its events and narrations.

    `narrations[k]` is spoken over `timestamps[k]` = (start, end) in (fractional) frames. When it
    describes `events[narration_events[k]]`, `true_intervals[k]` is that event's (start, end);
    for a filler narration both are None. Narrations are ordered by spoken start.
    """

    scenes: tuple[Scene, ...]
    events: tuple[Event, ...]
    narrations: tuple[str, ...]
    timestamps: tuple[tuple[float, float], ...]
    true_intervals: tuple[tuple[int, int] | None, ...]
    narration_events: tuple[int | None, ...]

    @property
    def num_frames(self) -> int:
        return len(self.scenes)

    def render(self, size: int | None = None) -> np.ndarray:
        """The frames as pixels: (T, H, W, 3) uint8, H = W = `size` (default: the preset's size)."""
        return render_batch(self.scenes, size)


def _narration_words() -> frozenset[str]:
    spec = PRESETS[PRESET]
    actions = [f"moves {d}" for d in DIRECTIONS] + [f"turns {c}" for c in spec.colors]
    actions += ["grows", "shrinks", "becomes hollow", "becomes filled"]
    subjects = [f"the {c} {s}" for c in spec.colors for s in spec.shapes]
    texts = subjects + actions + list(FILLERS)
    return frozenset(word for text in texts for word in split_words(text))


WORDS: frozenset[str] = _narration_words()


def sample_clips(n: int, seed: int, frames: int = 8, lag: float = 0.0, jitter: float = 0.0,
                 fillers: int = 0) -> list[Clip]:
    """`n` clips of `frames` frames; clip i depends only on (seed, i).

    Every clip has 1 to 3 events (each by a different object) narrated with their spoken interval
    shifted by `lag` frames and jittered uniformly within +-`jitter` frames, plus `fillers`
    narrations unrelated to any event, spoken over a random one-frame interval.
    """
    n = check_count("n", n)
    seed = check_seed(seed)
    frames = check_count("frames", frames, 2)
    lag = _check_frames_offset("lag", lag)
    jitter = _check_frames_offset("jitter", jitter)
    fillers = check_count("fillers", fillers)
    return [_sample_clip(seed, i, frames, lag, jitter, fillers) for i in range(n)]


def _check_frames_offset(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number of frames (float >= 0), got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of frames >= 0, got {value}")
    return float(value)


def _sample_clip(seed: int, index: int, frames: int, lag: float, jitter: float, fillers: int) -> Clip:
    scenes, events = _sample_motion(scene_rng(seed, index, "clip"), frames, (seed, index))
    speech_rng = scene_rng(seed, index, "narrate")
    spoken = [(event.sentence, _spoken_interval(event, lag, jitter, speech_rng), (event.start, event.end), k)
              for k, event in enumerate(events)]
    filler_rng = scene_rng(seed, index, "filler")
    for _ in range(fillers):
        start = float(filler_rng.uniform(0.0, frames - 2))
        spoken.append((str(filler_rng.choice(FILLERS)), (start, start + 1.0), None, None))
    spoken.sort(key=lambda item: item[1][0])  # in the order they are said
    sentences, timestamps, true_intervals, narration_events = zip(*spoken)
    return Clip(scenes=scenes, events=events, narrations=sentences, timestamps=timestamps,
                true_intervals=true_intervals, narration_events=narration_events)


def _spoken_interval(event: Event, lag: float, jitter: float, rng: np.random.Generator) -> tuple[float, float]:
    shift = lag + float(rng.uniform(-jitter, jitter))
    return (event.start + shift, event.end + shift)


# --- the motion: a start scene and a plan of events, kept only if every frame is valid ----------

@dataclass(frozen=True)
class _Change:
    """What one event does to its actor: `after` is the object once the event is over; a move goes
    there in a straight line between frames `start` and `end`, any other change happens at `end`."""

    actor: int
    start: int
    end: int
    after: SceneObject
    action: str


def _sample_motion(rng: np.random.Generator, frames: int,
                   seed: tuple[int, int]) -> tuple[tuple[Scene, ...], tuple[Event, ...]]:
    """The frames of one clip and its events, ordered by start frame."""
    for _ in range(100):  # a new start scene when no valid plan of events is found for this one
        start = _start_objects(rng)
        num_events = int(rng.integers(1, min(MAX_EVENTS, len(start)) + 1))
        actors = [int(a) for a in rng.permutation(len(start))[:num_events]]
        changes: list[_Change] = []
        for actor in actors:
            change = _sample_valid_change(rng, start, changes, actor, frames)
            if change is None:
                break
            changes.append(change)
        else:
            scenes = tuple(Scene(objects=_frame(start, changes, t), preset=PRESET, seed=seed) for t in range(frames))
            events = tuple(Event(c.actor, _subject(start[c.actor]), c.action, c.start, c.end)
                           for c in sorted(changes, key=lambda c: (c.start, c.actor)))
            return scenes, events
    raise RuntimeError("could not plan a valid clip after many tries")  # unreachable in practice


def _start_objects(rng: np.random.Generator) -> tuple[SceneObject, ...]:
    """A random start scene whose objects have distinct (colour, shape) pairs."""
    count = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    while True:
        scene = sample_scenes(1, int(rng.integers(2**31)), preset=PRESET, num_objects=count)[0]
        if _pairs_unique(scene.objects):
            return scene.objects


def _sample_valid_change(rng: np.random.Generator, start: tuple[SceneObject, ...], changes: list[_Change],
                         actor: int, frames: int) -> _Change | None:
    """A change of `actor` that keeps every frame valid alongside `changes`, or None after 20 tries."""
    for _ in range(20):
        change = _sample_change(rng, start[actor], actor, frames)
        if change is not None and all(_frame_valid(_frame(start, changes + [change], t)) for t in range(frames)):
            return change
    return None


def _sample_change(rng: np.random.Generator, obj: SceneObject, actor: int, frames: int) -> _Change | None:
    """A random move, recolouring, resizing or restyling of `obj` (None: no move stays on the canvas)."""
    spec = PRESETS[PRESET]
    kind = str(rng.choice(("move", "recolour", "resize", "restyle")))
    if kind == "move":
        duration = int(rng.integers(min(2, frames - 1), frames))  # frames the motion lasts
        start = int(rng.integers(0, frames - duration))
        distance = float(rng.uniform(*MOVE_DISTANCE))
        ends = {d: (round(obj.x + dx * distance, 4), round(obj.y + dy * distance, 4))
                for d, (dx, dy) in DIRECTIONS.items()}
        inside = [d for d, end in ends.items() if _inside_canvas(obj.radius, *end)]
        if not inside:
            return None
        direction = str(rng.choice(inside))
        x, y = ends[direction]
        return _Change(actor, start, start + duration, replace(obj, x=x, y=y), f"moves {direction}")
    start = int(rng.integers(0, frames - 1))
    if kind == "recolour":
        color = str(rng.choice([c for c in spec.colors if c != obj.color]))
        return _Change(actor, start, start + 1, replace(obj, color=color), f"turns {color}")
    if kind == "resize":
        grows = obj.size == "small"
        return _Change(actor, start, start + 1, replace(obj, size="large" if grows else "small"),
                       "grows" if grows else "shrinks")
    hollow = obj.style == "filled"
    return _Change(actor, start, start + 1, replace(obj, style="outline" if hollow else "filled"),
                   "becomes hollow" if hollow else "becomes filled")


def _frame(start: tuple[SceneObject, ...], changes: list[_Change], t: int) -> tuple[SceneObject, ...]:
    """The objects at frame `t`."""
    objects = list(start)
    for change in changes:
        before = start[change.actor]
        if t >= change.end:
            objects[change.actor] = change.after
        elif t > change.start:  # only a move lasts more than one frame
            progress = (t - change.start) / (change.end - change.start)
            objects[change.actor] = replace(before, x=round(before.x + progress * (change.after.x - before.x), 4),
                                            y=round(before.y + progress * (change.after.y - before.y), 4))
    return tuple(objects)


def _frame_valid(objects: tuple[SceneObject, ...]) -> bool:
    """Inside the canvas (with the preset's margin), boxes disjoint, (colour, shape) pairs unique."""
    margin = PRESETS[PRESET].margin
    inside = all(_inside_canvas(o.radius, o.x, o.y) for o in objects)
    disjoint = all(max(abs(a.x - b.x), abs(a.y - b.y)) >= a.radius + b.radius + margin
                   for i, a in enumerate(objects) for b in objects[i + 1:])
    return inside and disjoint and _pairs_unique(objects)


def _inside_canvas(radius: float, x: float, y: float) -> bool:
    """Whether a box of half-side `radius` centred at (x, y) lies inside the canvas, with the margin."""
    low = radius + PRESETS[PRESET].margin
    return low <= x <= 1.0 - low and low <= y <= 1.0 - low


def _pairs_unique(objects: tuple[SceneObject, ...]) -> bool:
    return len({(o.color, o.shape) for o in objects}) == len(objects)


def _subject(obj: SceneObject) -> str:
    return f"{obj.color} {obj.shape}"
