"""mmcourse.experiments.alignment.milnce: bags of nearest spoken narrations, segments where something
changes, the clean evaluation, and a tiny sweep."""
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from mmcourse.experiments.alignment.milnce import (METHODS, RECIPES, EventSegment, MilNceRecipe, SegmentBags,
                                                changing_windows, event_segments, filler_similarities, lag_sweep,
                                                later_timestamps, nearest_narrations, pairing_quality,
                                                retrieval_at_1, retrieval_by_gallery, segment_events,
                                                spoken_times, train_milnce)
from mmcourse.models.milnce import small_milnce
from mmcourse.world.datasets import ClipDataset

TINY = MilNceRecipe(n_train=48, n_test=12, frames=6, lags=(0.0, 2.0), width=8, embed_dim=8, epochs=2,
                    batch_size=16, lr=3e-3)


@pytest.fixture(scope="module")
def lagged():
    return ClipDataset(40, seed=3, frames=8, lag=2.0, jitter=0.5, fillers=1, cache=False)


@pytest.fixture(scope="module")
def clean():
    return ClipDataset(24, seed=4, frames=8, cache=False)


# -------------------------------------------------------------------------------------------- bags


def test_spoken_times_are_interval_middles():
    np.testing.assert_allclose(spoken_times(np.array([[0.0, 1.0], [2.5, 4.5]])), [0.5, 3.5])
    with pytest.raises(ValueError, match=r"shape \(M, 2\)"):
        spoken_times(np.zeros((3, 3)))


def test_nearest_narrations_order_padding_and_mask():
    timestamps = np.array([[0.0, 1.0], [2.0, 3.0], [5.0, 6.0], [2.0, 2.0]])  # middles 0.5, 2.5, 5.5, 2 (padding)
    valid = np.array([True, True, True, False])
    bag, mask = nearest_narrations(timestamps, valid, 2.4, 2)
    assert bag.tolist() == [1, 0] and mask.tolist() == [True, True]
    bag, mask = nearest_narrations(timestamps, valid, 2.4, 5)  # only 3 real narrations: pad with the nearest
    assert bag.tolist() == [1, 0, 2, 1, 1] and mask.tolist() == [True, True, True, False, False]
    bag, _ = nearest_narrations(timestamps, valid, 1.5, 2)  # a tie (distance 1 to both): the earlier row first
    assert bag.tolist() == [0, 1]
    bag, mask = nearest_narrations(timestamps, valid, 100.0, 1)  # spoken after the clip's end still counts
    assert bag.tolist() == [2] and mask.tolist() == [True]


def test_nearest_narrations_refuses_bad_input():
    timestamps = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"valid must have shape \(3,\)"):
        nearest_narrations(timestamps, np.ones(2, bool), 0.0, 1)
    with pytest.raises(ValueError, match="valid is all False"):
        nearest_narrations(timestamps, np.zeros(3, bool), 0.0, 1)
    with pytest.raises(ValueError, match="k"):
        nearest_narrations(timestamps, np.ones(3, bool), 0.0, 0)


def test_later_timestamps_are_the_worlds_lagged_clips():
    on_time = ClipDataset(20, seed=8, frames=8, lag=0.0, jitter=0.75, fillers=1, cache=False)
    late = ClipDataset(20, seed=8, frames=8, lag=2.5, jitter=0.75, fillers=1, cache=False)
    shifted = later_timestamps(on_time, 2.5)
    for i in range(20):  # narrations are stored in spoken order, which the lag may change: compare as sets
        real = on_time.arrays["narration_mask"][i]
        ours = sorted(zip(on_time.clips[i].narrations, shifted[i][real].astype(float).round(4).tolist()))
        heard = late.arrays["timestamps"][i][real].astype(float).round(4).tolist()
        world = sorted(zip(late.clips[i].narrations, heard))
        assert ours == world
    np.testing.assert_array_equal(later_timestamps(on_time, 0.0), on_time.arrays["timestamps"])
    with pytest.raises(ValueError, match="lag must be a finite number"):
        later_timestamps(on_time, float("nan"))


def test_changing_windows_find_the_steps_where_pixels_change():
    frames = np.zeros((5, 4, 4, 3), np.uint8)
    frames[3:, 1, 1] = 255  # a pixel changes between frames 2 and 3
    assert changing_windows(frames, 2) == [2]
    assert changing_windows(frames, 3) == [1, 2]
    assert changing_windows(np.zeros((5, 4, 4, 3), np.uint8), 2) == []
    with pytest.raises(ValueError, match=r"shape \(T, H, W, 3\)"):
        changing_windows(frames[0], 2)


def test_segment_events_share_a_step_with_the_segment():
    intervals = np.array([[1.0, 3.0], [np.nan, np.nan], [4.0, 5.0]])
    assert segment_events(intervals, 2, 3).tolist() == [True, False, False]
    assert segment_events(intervals, 3, 4).tolist() == [False, False, False]  # event 0 ends where this starts
    assert segment_events(intervals, 0, 7).tolist() == [True, False, True]


def test_segment_bags_items(lagged):
    bags = SegmentBags(lagged, window=2, bag_size=3, seed=0)
    a = lagged.arrays
    assert len(bags) == len(lagged)
    for i in range(len(bags)):
        item = bags[i]
        start = item["start"]
        assert item["frames"].shape == (2, 3, 32, 32)
        np.testing.assert_allclose(item["frames"].numpy(), a["frames"][i, start:start + 2].transpose(0, 3, 1, 2) / 255,
                                   atol=1e-6)
        assert start in changing_windows(a["frames"][i], 2)  # something happens in every segment
        expected, expected_mask = nearest_narrations(a["timestamps"][i], a["narration_mask"][i], start + 0.5, 3)
        np.testing.assert_array_equal(item["narrations"].numpy(), a["narrations"][i, expected])
        assert item["narration_mask"].tolist() == expected_mask.tolist()
        # NCE's narration, the first, is the one spoken nearest to the segment's middle
        middles = spoken_times(a["timestamps"][i])[a["narration_mask"][i]]
        assert abs(middles[expected[0]] - (start + 0.5)) == pytest.approx(np.abs(middles - (start + 0.5)).min())


def test_segment_bags_pad_small_clips(lagged):
    counts = lagged.arrays["narration_mask"].sum(1)
    bags = SegmentBags(lagged, window=2, bag_size=5, seed=0)  # more than any clip has: always padded
    for i in range(len(bags)):
        item = bags[i]
        assert item["narration_mask"].tolist() == [True] * counts[i] + [False] * (5 - counts[i])
        for padded in range(counts[i], 5):
            assert torch.equal(item["narrations"][padded], item["narrations"][0])
    later = SegmentBags(lagged, window=2, bag_size=2, seed=0, extra_lag=1.5)  # heard later still
    np.testing.assert_allclose(later.timestamps, later_timestamps(lagged, 1.5))


def test_segment_bags_are_seeded(lagged):
    starts = lambda seed: [SegmentBags(lagged, 2, 2, seed)[i]["start"] for i in range(len(lagged))]  # noqa: E731
    assert starts(0) == starts(0)
    assert starts(0) != starts(1)


def test_segment_bags_refuse_bad_arguments(lagged):
    with pytest.raises(TypeError, match="clips must be a ClipDataset"):
        SegmentBags([1, 2], 2, 2, 0)
    with pytest.raises(ValueError, match="window=9 is longer than the clips' 8 frames"):
        SegmentBags(lagged, 9, 2, 0)
    with pytest.raises(ValueError, match="window"):
        SegmentBags(lagged, 1, 2, 0)
    with pytest.raises(ValueError, match="bag_size"):
        SegmentBags(lagged, 2, 0, 0)


def test_pairing_quality_is_the_premise_of_mil_nce():
    on_time = ClipDataset(60, seed=5, frames=8, lag=0.0, jitter=0.0, cache=False)
    late = ClipDataset(60, seed=5, frames=8, lag=3.0, jitter=0.5, cache=False)
    clean_quality = pairing_quality(on_time, 2, 2)
    late_quality = pairing_quality(late, 2, 2)
    assert clean_quality["nce"] > 0.9 and clean_quality["milnce"] >= clean_quality["nce"]
    assert late_quality["nce"] < 0.75  # a lag of 3 frames: the nearest narration is often another event's
    assert late_quality["milnce"] > late_quality["nce"] + 0.2  # the bag still holds the right one


# -------------------------------------------------------------------------------------------- evaluation


def test_event_segments_are_the_true_intervals(lagged):
    segments = event_segments(lagged)
    assert all(isinstance(s, EventSegment) for s in segments)
    assert len(segments) == sum(len(clip.events) for clip in lagged.clips)  # fillers are left out
    for s in segments:
        clip = lagged.clips[s.clip]
        event = next(e for e in clip.events if e.sentence == s.sentence)
        assert (s.start, s.end) == (event.start, event.end)
    with pytest.raises(TypeError, match="clips must be a ClipDataset"):
        event_segments(segments)


def test_retrieval_galleries_and_chance(clean, one_torch_thread):
    torch.manual_seed(0)
    model = small_milnce(width=8, embed_dim=8)
    segments = event_segments(clean)
    whole = retrieval_at_1(model, clean, gallery_clips=None)
    distinct = len({s.sentence for s in segments})
    assert whole["gallery"] == distinct and whole["chance"] == pytest.approx(1 / distinct)
    assert whole["queries"] == len(segments) and 0.0 <= whole["R@1"] <= 1.0
    own = retrieval_at_1(model, clean, gallery_clips=1)  # which of its own clip's events is this?
    multi = [len(set(c.narrations)) for c in clean.clips if len(set(c.narrations)) > 1]
    assert own["queries"] == sum(multi)
    assert own["chance"] == pytest.approx(len(multi) / sum(multi))  # mean over queries of 1 / events in the clip
    both = retrieval_by_gallery(model, clean, (1, None))
    assert both[1] == own and both[None] == whole
    with pytest.raises(ValueError, match="gallery_clips"):
        retrieval_at_1(model, clean, gallery_clips=0)


def test_filler_similarities_split_events_and_fillers(lagged, one_torch_thread):
    torch.manual_seed(0)
    model = small_milnce(width=8, embed_dim=8)
    best = filler_similarities(model, lagged, window=2)
    assert len(best["filler"]) == len(lagged)  # one filler per clip
    assert len(best["event"]) == sum(len(clip.events) for clip in lagged.clips)
    assert np.all(np.abs(best["event"]) <= 1 + 1e-5) and np.all(np.abs(best["filler"]) <= 1 + 1e-5)


# -------------------------------------------------------------------------------------------- training


def test_recipes_are_recipes():
    assert set(RECIPES) == {"ci", "cpu", "gpu"} and all(isinstance(r, MilNceRecipe) for r in RECIPES.values())


def test_train_milnce_learns(one_torch_thread):
    clips = ClipDataset(32, seed=6, frames=6, lag=0.0, jitter=0.0, cache=False)
    recipe = replace(TINY, n_train=32, epochs=30, width=32, embed_dim=16)
    model, history = train_milnce(clips, "nce", recipe, seed=0)  # 60 steps of 16 segments
    losses = history["train_loss"]
    assert losses[-1] < losses[0] - 1.0
    retrieval = retrieval_at_1(model, clips, None)  # the training clips, every event against ~50 sentences
    assert retrieval["R@1"] > 5 * retrieval["chance"]
    with pytest.raises(ValueError, match="method='cpc' is unknown"):
        train_milnce(clips, "cpc", recipe)


def test_tiny_sweep_records(one_torch_thread):
    records, models = lag_sweep(TINY, cross_gallery_clips=4)
    assert [(r["method"], r["lag"]) for r in records] == [(m, lag) for lag in (0.0, 2.0) for m in METHODS]
    for r in records:
        assert 0.0 <= r["R@1"] <= 1.0 and 0.3 < r["chance"] < 0.6  # own clip: 2 or 3 events to choose from
        assert 0.0 <= r["R@1_cross"] <= 1.0 and r["chance_cross"] < r["chance"]
        assert 0.0 <= r["pairing"] <= 1.0 and math.isfinite(r["train_loss"]) and r["seconds"] > 0
    nce, milnce = records[2], records[3]  # lag 2: the bag is right more often than the nearest narration
    assert milnce["pairing"] > nce["pairing"]
    assert set(models) == {(m, lag) for lag in (0.0, 2.0) for m in METHODS}
