"""Tests for mmcourse.world.clips: motion clips with weakly aligned narrations (MIL-NCE setting)."""
import math

import numpy as np
import pytest

from mmcourse.world.clips import FILLERS, WORDS, Clip, sample_clips
from mmcourse.world.language import Tokenizer
from mmcourse.world.render import render_batch

ATTRS = ("shape", "color", "size", "style", "x", "y")


@pytest.fixture(scope="module")
def many():
    return sample_clips(120, seed=7, frames=8, lag=1.5, jitter=0.75, fillers=2)


def _state(obj):
    return tuple(getattr(obj, a) for a in ATTRS)


def _actor_named(scene, subject):
    """Index of the unique object of `scene` whose '<colour> <shape>' is `subject`."""
    matches = [i for i, o in enumerate(scene.objects) if f"{o.color} {o.shape}" == subject]
    assert len(matches) == 1, f"{subject!r} names {len(matches)} objects"
    return matches[0]


def _check_narration_true(clip, sentence, interval):
    """Re-derive what the sentence claims from the frames of its true interval."""
    words = sentence.split()
    assert words[0] == "the"
    subject, verb, rest = f"{words[1]} {words[2]}", words[3], words[4:]
    start, end = interval
    actor = _actor_named(clip.scenes[start], subject)
    track = [clip.scenes[t].objects[actor] for t in range(start, end + 1)]
    first, last = track[0], track[-1]
    if verb == "moves":
        axis, sign = {"left": ("x", -1), "right": ("x", 1), "up": ("y", -1), "down": ("y", 1)}[rest[0]]
        other = "y" if axis == "x" else "x"
        steps = np.diff([getattr(o, axis) for o in track])
        assert np.all(sign * steps > 0), f"{sentence}: {axis} steps {steps}"
        assert len({getattr(o, other) for o in track}) == 1
    elif verb == "turns":
        assert first.color != rest[0] and last.color == rest[0]
    elif verb in ("grows", "shrinks"):
        grew = last.radius > first.radius
        assert last.radius != first.radius and grew == (verb == "grows")
    elif verb == "becomes":
        assert first.style != last.style and last.style == {"hollow": "outline", "filled": "filled"}[rest[0]]
    else:
        pytest.fail(f"unexpected verb in {sentence!r}")
    return actor


def test_shapes_and_types():
    clip = sample_clips(1, seed=0, frames=5)[0]
    assert isinstance(clip, Clip)
    assert clip.num_frames == 5 and len(clip.scenes) == 5
    assert 1 <= len(clip.events) <= 3
    assert len(clip.narrations) == len(clip.timestamps) == len(clip.true_intervals) == len(clip.narration_events)
    assert all(isinstance(s, str) for s in clip.narrations)


def test_deterministic_and_prefix_stable():
    a = sample_clips(6, seed=3, lag=1.0, jitter=0.5, fillers=1)
    b = sample_clips(6, seed=3, lag=1.0, jitter=0.5, fillers=1)
    assert a == b
    assert sample_clips(3, seed=3, lag=1.0, jitter=0.5, fillers=1) == a[:3]
    assert sample_clips(6, seed=4, lag=1.0, jitter=0.5, fillers=1) != a
    assert a[0].render(32).tobytes() == b[0].render(32).tobytes()


def test_speech_settings_do_not_change_the_motion():
    plain = sample_clips(10, seed=5)
    noisy = sample_clips(10, seed=5, lag=3.0, jitter=2.0, fillers=3)
    for p, q in zip(plain, noisy):
        assert p.scenes == q.scenes and p.events == q.events


def test_every_event_is_narrated_once(many):
    for clip in many:
        narrated = [k for k in clip.narration_events if k is not None]
        assert sorted(narrated) == list(range(len(clip.events)))
        for k, index in enumerate(clip.narration_events):
            if index is not None:
                event = clip.events[index]
                assert clip.narrations[k] == event.sentence
                assert clip.true_intervals[k] == (event.start, event.end)
                assert 0 <= event.start < event.end < clip.num_frames
        assert len({e.actor for e in clip.events}) == len(clip.events)


def test_narrations_are_true_of_their_true_interval(many):
    for clip in many:
        for sentence, interval, index in zip(clip.narrations, clip.true_intervals, clip.narration_events):
            if index is None:
                continue
            actor = _check_narration_true(clip, sentence, interval)
            assert actor == clip.events[index].actor


def test_only_event_actors_change_and_only_during_their_events(many):
    for clip in many:
        for t in range(1, clip.num_frames):
            before, after = clip.scenes[t - 1].objects, clip.scenes[t].objects
            changed = {i for i, (a, b) in enumerate(zip(before, after)) if _state(a) != _state(b)}
            active = {e.actor for e in clip.events if e.start < t <= e.end}
            assert changed <= active, f"objects {changed - active} changed between frames {t - 1} and {t}"


def test_all_actions_occur(many):
    verbs = {e.action.split()[0] for clip in many for e in clip.events}
    directions = {e.action for clip in many for e in clip.events if e.action.startswith("moves")}
    assert verbs == {"moves", "turns", "grows", "shrinks", "becomes"}
    assert directions == {"moves left", "moves right", "moves up", "moves down"}


def test_objects_inside_canvas_and_disjoint_in_every_frame(many):
    for clip in many:
        for scene in clip.scenes:
            objects = scene.objects
            for o in objects:
                assert o.radius <= o.x <= 1 - o.radius and o.radius <= o.y <= 1 - o.radius
            for i, a in enumerate(objects):
                for b in objects[i + 1:]:
                    assert max(abs(a.x - b.x), abs(a.y - b.y)) >= a.radius + b.radius
            assert len({(o.color, o.shape) for o in objects}) == len(objects)


def test_timestamps_are_true_interval_shifted_by_lag_within_jitter(many):
    lag, jitter = 1.5, 0.75
    offsets = []
    for clip in many:
        for (spoken_start, spoken_end), true in zip(clip.timestamps, clip.true_intervals):
            if true is None:
                continue
            start_offset, end_offset = spoken_start - true[0], spoken_end - true[1]
            assert math.isclose(start_offset, end_offset, abs_tol=1e-9)
            assert abs(start_offset - lag) <= jitter + 1e-9
            offsets.append(start_offset)
    assert np.std(offsets) > 0.2  # the jitter is really random
    assert min(offsets) < lag < max(offsets)


def test_no_jitter_means_exact_lag():
    for clip in sample_clips(20, seed=1, lag=2.0):
        for (spoken_start, spoken_end), true in zip(clip.timestamps, clip.true_intervals):
            assert (spoken_start, spoken_end) == (true[0] + 2.0, true[1] + 2.0)


def test_fillers(many):
    for clip in many:
        filler = [k for k, index in enumerate(clip.narration_events) if index is None]
        assert len(filler) == 2
        for k in filler:
            assert clip.narrations[k] in FILLERS and clip.true_intervals[k] is None
            start, end = clip.timestamps[k]
            assert 0 <= start and end <= clip.num_frames - 1 and end - start == pytest.approx(1.0)
        starts = [s for s, _ in clip.timestamps]
        assert starts == sorted(starts)
    assert all(None not in clip.narration_events for clip in sample_clips(5, seed=7))


def test_words_cover_every_narration(many):
    assert isinstance(WORDS, frozenset) and all(isinstance(w, str) for w in WORDS)
    tokenizer = Tokenizer(WORDS)
    sentences = {s for clip in many for s in clip.narrations} | set(FILLERS)
    for sentence in sentences:
        assert tokenizer.unk_id not in tokenizer.encode(sentence), sentence


def test_render_matches_frames_and_shows_the_events():
    clip = sample_clips(1, seed=11, frames=6)[0]
    frames = clip.render(48)
    assert frames.shape == (6, 48, 48, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, render_batch(list(clip.scenes), 48))
    assert clip.render().shape == (6, 64, 64, 3)
    for event in clip.events:
        assert not np.array_equal(frames[event.start], frames[event.end])


def test_two_frames_is_enough():
    for clip in sample_clips(20, seed=2, frames=2):
        assert clip.num_frames == 2
        assert all((e.start, e.end) == (0, 1) for e in clip.events)


@pytest.mark.parametrize("kwargs, error, name", [
    ({"n": -1}, ValueError, "n"),
    ({"n": 2.0}, TypeError, "n"),
    ({"seed": -1}, ValueError, "seed"),
    ({"frames": 1}, ValueError, "frames"),
    ({"frames": 8.0}, TypeError, "frames"),
    ({"frames": True}, TypeError, "frames"),
    ({"lag": -0.5}, ValueError, "lag"),
    ({"lag": float("nan")}, ValueError, "lag"),
    ({"lag": "1"}, TypeError, "lag"),
    ({"jitter": -1}, ValueError, "jitter"),
    ({"jitter": float("inf")}, ValueError, "jitter"),
    ({"fillers": -1}, ValueError, "fillers"),
])
def test_bad_input(kwargs, error, name):
    arguments = {"n": 2, "seed": 0, **kwargs}
    with pytest.raises(error, match=name):
        sample_clips(**arguments)


def test_empty():
    assert sample_clips(0, seed=0) == []

