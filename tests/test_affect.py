"""Tests of the trimodal synthetic sentiment task (mmcourse.world.affect)."""
from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from mmcourse.world import affect
from mmcourse.world.affect import INTERACTIONS, MODALITIES, PAIRS, WORDS, AffectData, sample_affect
from mmcourse.world.datasets import AffectDataset
from mmcourse.world.language import Tokenizer, split_words

UNIMODAL, BIMODAL, TRIMODAL = range(3)


@pytest.fixture(scope="module")
def data() -> AffectData:
    return sample_affect(1200, seed=7)


@pytest.fixture(scope="module")
def held_out() -> AffectData:
    return sample_affect(600, seed=8)


# --- shapes, types, determinism -------------------------------------------------------------

def test_fields_have_the_documented_shapes_and_dtypes(data):
    n = len(data)
    assert n == 1200
    assert data.video.shape == (n, 12, len(affect.VIDEO_CHANNELS)) and data.video.dtype == np.float32
    assert data.audio.shape == (n, 12, len(affect.AUDIO_CHANNELS)) and data.audio.dtype == np.float32
    assert len(data.texts) == n and all(isinstance(t, str) for t in data.texts)
    assert data.labels.shape == (n,) and data.labels.dtype == np.int64
    assert data.interaction.shape == (n,) and data.interaction.dtype == np.int64
    assert data.polarity.shape == (n, 3) and data.polarity.dtype == np.int64
    assert set(np.unique(data.labels)) == {0, 1}
    assert set(np.unique(data.polarity)) == {-1, 0, 1}
    assert np.all(np.isfinite(data.video)) and np.all(np.isfinite(data.audio))


def test_frames_sets_the_sequence_length():
    short = sample_affect(6, seed=0, frames=2)
    assert short.video.shape[1] == short.audio.shape[1] == 2


def test_same_arguments_give_the_same_bytes():
    first, second = sample_affect(200, seed=3), sample_affect(200, seed=3)
    for name in ("video", "audio", "labels", "interaction", "polarity"):
        assert getattr(first, name).tobytes() == getattr(second, name).tobytes(), name
    assert first.texts == second.texts


def test_another_seed_gives_other_data():
    first, second = sample_affect(50, seed=3), sample_affect(50, seed=4)
    assert not np.array_equal(first.video, second.video)
    assert first.texts != second.texts


def test_noise_zero_gives_clean_neutral_sequences():
    clean = sample_affect(60, seed=1, noise=0.0)
    neutral_face = clean.polarity[:, 0] == 0
    neutral_voice = clean.polarity[:, 1] == 0
    assert neutral_face.any() and neutral_voice.any()
    assert np.all(clean.video[neutral_face] == 0) and np.all(clean.audio[neutral_voice] == 0)
    assert np.all(np.abs(clean.video[~neutral_face]).max(axis=(1, 2)) > 1.0)


# --- interaction shares, labels, balance ----------------------------------------------------

@pytest.mark.parametrize("n, shares, expected", [
    (10, (0.4, 0.3, 0.3), (4, 3, 3)),
    (1000, (0.5, 0.25, 0.25), (500, 250, 250)),
    (7, (0.4, 0.3, 0.3), (3, 2, 2)),
    (9, (1.0, 0.0, 0.0), (9, 0, 0)),
    (0, (0.4, 0.3, 0.3), (0, 0, 0)),
])
def test_shares_are_realised_exactly(n, shares, expected):
    sample = sample_affect(n, seed=2, shares=shares)
    assert tuple(np.bincount(sample.interaction, minlength=3)) == expected


@pytest.mark.parametrize("n", [5, 11, 13, 101])
def test_awkward_counts_still_sum_to_n_and_stay_within_one_of_the_share(n):
    shares = (1 / 3, 1 / 3, 1 / 3)
    counts = np.bincount(sample_affect(n, seed=0, shares=shares).interaction, minlength=3)
    assert counts.sum() == n
    assert np.all(np.abs(counts - n * np.array(shares)) <= 1)


def test_order_is_shuffled(data):
    first_block = data.interaction[: len(data) // 3]
    assert len(np.unique(first_block)) == 3


def test_active_modalities_match_the_interaction_type(data):
    active_count = (data.polarity != 0).sum(axis=1)
    assert np.array_equal(active_count, data.interaction + 1)


def test_labels_follow_the_product_rule(data):
    for polarity, label in zip(data.polarity, data.labels):
        product = 1
        for s in polarity:
            if s != 0:
                product *= s
        assert label == (1 if product > 0 else 0)
    assert np.array_equal(affect.label_of(data.polarity), data.labels)


def test_labels_are_balanced_overall_and_within_each_type(data):
    assert abs(data.labels.mean() - 0.5) <= 0.01
    for code in range(len(INTERACTIONS)):
        labels = data.labels[data.interaction == code]
        assert abs(labels.sum() - len(labels) / 2) <= 0.5, INTERACTIONS[code]


def test_each_active_polarity_is_balanced_and_every_pair_occurs(data):
    for m, modality in enumerate(MODALITIES):
        active = data.polarity[data.polarity[:, m] != 0, m]
        assert 0.4 < (active > 0).mean() < 0.6, modality
    bimodal = data.polarity[data.interaction == BIMODAL] != 0
    for pair in PAIRS:
        columns = [MODALITIES.index(m) for m in pair]
        share = bimodal[:, columns].all(axis=1).mean()
        assert 0.25 < share < 0.42, pair


def test_pair_weights_select_the_active_pairs():
    sarcasm_only = sample_affect(120, seed=5, shares=(0, 1, 0), pair_weights=(0, 0, 1))
    assert np.all(sarcasm_only.polarity[:, MODALITIES.index("video")] == 0)
    assert np.all(sarcasm_only.polarity[:, 1:] != 0)
    mostly_sarcasm = sample_affect(400, seed=5, shares=(0, 1, 0), pair_weights=(1, 1, 4))
    assert 0.55 < np.mean(mostly_sarcasm.polarity[:, 0] == 0) < 0.78


# --- each modality carries its polarity -----------------------------------------------------

def _text_polarity(text: str) -> int:
    """An independent reading of a sentence: sentiment words, flipped by a preceding "not"."""
    words = split_words(text)
    total = 0
    for k, word in enumerate(words):
        value = (word in affect.POSITIVE_WORDS) - (word in affect.NEGATIVE_WORDS)
        negated = k > 0 and words[k - 1] == "not"
        total += -value if negated else value
    return int(np.sign(total))


def test_text_states_its_polarity_with_negation(data):
    text_polarity = data.polarity[:, MODALITIES.index("text")]
    read = np.array([_text_polarity(t) for t in data.texts])
    assert np.array_equal(read, text_polarity)
    negated = np.array(["not" in split_words(t) for t in data.texts])
    assert 0.3 < negated.mean() < 0.7  # negation is common and uninformative on its own
    assert 0.3 < np.mean(text_polarity[negated] == 0) < 0.45


@pytest.mark.parametrize("modality", ["video", "audio"])
def test_mean_pooled_sequence_reveals_the_polarity(data, held_out, modality):
    m = MODALITIES.index(modality)
    train_x, test_x = getattr(data, modality).mean(axis=1), getattr(held_out, modality).mean(axis=1)
    train_y, test_y = data.polarity[:, m], held_out.polarity[:, m]
    three_way = LogisticRegression(max_iter=1000).fit(train_x, train_y).score(test_x, test_y)
    train_on, test_on = train_y != 0, test_y != 0
    sign = LogisticRegression(max_iter=1000).fit(train_x[train_on], train_y[train_on])
    assert sign.score(test_x[test_on], test_y[test_on]) > 0.95
    assert three_way > 0.9


def test_a_single_video_frame_does_not_reveal_the_polarity(data, held_out):
    m = MODALITIES.index("video")
    train_y, test_y = data.polarity[:, m], held_out.polarity[:, m]
    pooled = LogisticRegression(max_iter=1000).fit(data.video.mean(axis=1), train_y)
    pooled_accuracy = pooled.score(held_out.video.mean(axis=1), test_y)
    middle = data.video.shape[1] // 2
    frame = LogisticRegression(max_iter=1000).fit(data.video[:, middle], train_y)
    assert frame.score(held_out.video[:, middle], test_y) < pooled_accuracy - 0.2


def test_more_noise_makes_polarity_harder_to_read():
    def accuracy(noise: float) -> float:
        train, test = sample_affect(600, seed=1, noise=noise), sample_affect(600, seed=2, noise=noise)
        model = LogisticRegression(max_iter=1000).fit(train.audio.mean(axis=1), train.polarity[:, 1])
        return model.score(test.audio.mean(axis=1), test.polarity[:, 1])

    assert accuracy(0.3) > accuracy(3.0) + 0.2


# --- the task has the intended interaction structure -----------------------------------------

def _additive_features(polarity: np.ndarray) -> np.ndarray:
    """(N, 6): [s_v, s_a, s_t, |s_v|, |s_a|, |s_t|]. Any sum of per-modality scores f_m(s_m) with
    s_m in {-1, 0, 1} is linear in these, so a linear model on them is the best late fusion."""
    return np.concatenate([polarity, np.abs(polarity)], axis=1).astype(np.float64)


def _tensor_features(polarity: np.ndarray) -> np.ndarray:
    """(N, 27): the outer product over modalities of [s_m, |s_m|, 1] (Tensor Fusion's input)."""
    per_modality = [np.stack([s, np.abs(s), np.ones_like(s)], axis=1) for s in polarity.T]  # 3 x (N, 3)
    rows = [np.einsum("i,j,k->ijk", *(z[r] for z in per_modality)).ravel() for r in range(len(polarity))]
    return np.array(rows, dtype=np.float64)


def _held_out_accuracy(featurize, data: AffectData, held_out: AffectData, code: int) -> float:
    """Fit a linear classifier on the true polarities of one interaction type, score it held out."""
    train, test = data.interaction == code, held_out.interaction == code
    model = LogisticRegression(C=100.0, max_iter=2000)
    model.fit(featurize(data.polarity[train]), data.labels[train])
    return model.score(featurize(held_out.polarity[test]), held_out.labels[test])


# Each label is independent of every single polarity on bimodal and trimodal examples, so the
# logistic loss of an additive model is minimised near zero weights: chance. A hand-picked line
# can still get 3 of the 4 XOR corners (or 6 of the 8 parity corners) right, hence 0.78 for pairs,
# where the three pairs' own biases let a fitted model drift towards that 0.75.
@pytest.mark.parametrize("code, additive_range", [
    (UNIMODAL, (0.99, 1.0)),   # one active modality: the label is its polarity, a sum is enough
    (BIMODAL, (0.0, 0.78)),    # a product of two signs: XOR
    (TRIMODAL, (0.0, 0.65)),   # a product of three signs: parity
])
def test_late_fusion_features_cannot_capture_interactions_but_tensor_features_can(
        data, held_out, code, additive_range):
    additive = _held_out_accuracy(_additive_features, data, held_out, code)
    tensor = _held_out_accuracy(_tensor_features, data, held_out, code)
    assert additive_range[0] <= additive <= additive_range[1], (INTERACTIONS[code], additive)
    assert tensor > 0.99, (INTERACTIONS[code], tensor)


def test_tensor_features_represent_the_label_rule_exactly():
    polarity = np.array(list(itertools.product([-1, 0, 1], repeat=3)))  # all 27 polarity triples
    features = _tensor_features(polarity)
    # The label is sign(prod_m (s_m + 1 - |s_m|)): one fixed weight vector over the 27 features.
    per_modality_weights = np.array([1.0, -1.0, 1.0])  # s_m - |s_m| + 1
    weights = np.einsum("i,j,k->ijk", *(per_modality_weights,) * 3).ravel()
    assert np.array_equal((features @ weights > 0).astype(np.int64), affect.label_of(polarity))


# --- vocabulary and helpers ------------------------------------------------------------------

def test_every_text_encodes_without_unknown_words(data):
    tokenizer = Tokenizer(WORDS)
    ids = tokenizer.encode_batch(data.texts, length=8)
    assert not np.any(ids == tokenizer.unk_id)
    used = {w for t in data.texts for w in split_words(t)}
    assert used == set(WORDS)  # WORDS holds nothing the texts never use


def test_subset_keeps_rows_together(data):
    picked = data.subset([5, 0, 5, -1])
    assert len(picked) == 4
    assert picked.texts == [data.texts[5], data.texts[0], data.texts[5], data.texts[-1]]
    assert np.array_equal(picked.video[0], data.video[5]) and np.array_equal(picked.audio[3], data.audio[-1])
    assert np.array_equal(picked.polarity, data.polarity[[5, 0, 5, -1]])
    trimodal = data.subset(data.interaction == TRIMODAL)
    assert set(trimodal.interaction_names()) == {"trimodal"}
    assert len(trimodal) == int(np.sum(data.interaction == TRIMODAL))
    assert len(data.subset([])) == 0


def test_interaction_names_follow_the_codes(data):
    names = data.interaction_names()
    assert len(names) == len(data)
    assert all(name == INTERACTIONS[code] for name, code in zip(names, data.interaction))


@pytest.mark.parametrize("indices, error, words", [
    ([[0, 1]], ValueError, "1-D"),
    ([0.5], TypeError, "dtype"),
    ([10_000], ValueError, "indices"),
    (np.ones(3, dtype=bool), ValueError, "mask"),
])
def test_subset_rejects_bad_indices(data, indices, error, words):
    with pytest.raises(error, match=words):
        data.subset(indices)


def test_mismatched_fields_are_refused(data):
    with pytest.raises(ValueError, match="texts"):
        AffectData(video=data.video, audio=data.audio, texts=data.texts[:-1], labels=data.labels,
                   interaction=data.interaction, polarity=data.polarity)


# --- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, name", [
    (dict(n=-1), ValueError, "n"),
    (dict(n=2.0), TypeError, "n"),
    (dict(seed=-3), ValueError, "seed"),
    (dict(seed="0"), TypeError, "seed"),
    (dict(shares=(0.5, 0.5)), ValueError, "shares"),
    (dict(shares=(0.5, 0.5, 0.1)), ValueError, "shares"),
    (dict(shares=(1.2, -0.1, -0.1)), ValueError, "shares"),
    (dict(shares=(0.5, 0.3, 0.2000011)), ValueError, "shares"),
    (dict(shares=0.4), TypeError, "shares"),
    (dict(shares=("a", 0.5, 0.5)), TypeError, "shares"),
    (dict(shares=(0.5, float("nan"), 0.5)), ValueError, "shares"),
    (dict(frames=1), ValueError, "frames"),
    (dict(frames=6.0), TypeError, "frames"),
    (dict(noise=-0.1), ValueError, "noise"),
    (dict(noise=float("inf")), ValueError, "noise"),
    (dict(noise="1"), TypeError, "noise"),
    (dict(pair_weights=(1, 1)), ValueError, "pair_weights"),
    (dict(pair_weights=(0, 0, 0)), ValueError, "pair_weights"),
    (dict(pair_weights=(1, -1, 1)), ValueError, "pair_weights"),
])
def test_bad_arguments_are_refused_by_name(kwargs, error, name):
    arguments = dict(n=10, seed=0) | kwargs
    with pytest.raises(error, match=name):
        sample_affect(**arguments)


def test_shares_within_tolerance_are_accepted():
    sample = sample_affect(10, seed=0, shares=(0.4, 0.3, 0.3000001))
    assert len(sample) == 10


# --- unaligned lengths and the expression frames ----------------------------------------------

def _rounded_digest(sample: AffectData) -> str:
    """sha256 of every field, floats rounded to 3 decimals (robust to last-bit libm differences)."""
    digest = hashlib.sha256()
    for name in ("video", "audio"):
        digest.update(np.round(getattr(sample, name).astype(np.float64), 3).tobytes())
    for name in ("labels", "interaction", "polarity"):
        digest.update(getattr(sample, name).astype(np.int64).tobytes())
    digest.update("\n".join(sample.texts).encode())
    return digest.hexdigest()


def test_default_output_is_what_it_was_before_unaligned_lengths_existed():
    # Digest taken before `video_frames`, `audio_frames` and `expression` were added.
    assert _rounded_digest(sample_affect(40, seed=11)) == \
        "2b449cb3212788f5a525c5645828e51c544c725fea92b45e7dda5df2d915a281"


def test_lengths_equal_to_frames_give_the_same_bytes():
    default = sample_affect(100, seed=3, frames=9)
    explicit = sample_affect(100, seed=3, frames=9, video_frames=9, audio_frames=9)
    for name in ("video", "audio", "labels", "interaction", "polarity", "expression"):
        assert getattr(default, name).tobytes() == getattr(explicit, name).tobytes(), name
    assert default.texts == explicit.texts


def test_video_and_audio_lengths_can_differ():
    sample = sample_affect(30, seed=0, video_frames=12, audio_frames=20)
    assert sample.video.shape == (30, 12, len(affect.VIDEO_CHANNELS))
    assert sample.audio.shape == (30, 20, len(affect.AUDIO_CHANNELS))
    assert sample.expression.shape == (30, 12) and sample.expression.dtype == bool
    aligned = sample_affect(30, seed=0)
    assert np.array_equal(sample.polarity, aligned.polarity) and np.array_equal(sample.labels, aligned.labels)
    assert sample_affect(5, seed=0, frames=7, audio_frames=3).video.shape[1] == 7


@pytest.mark.parametrize("video_frames", [2, 5, 12, 30])
def test_expression_is_one_window_exactly_when_the_face_is_active(video_frames):
    sample = sample_affect(200, seed=4, video_frames=video_frames)
    active = sample.polarity[:, MODALITIES.index("video")] != 0
    width = max(2, round(video_frames / 3))
    assert np.array_equal(sample.expression.any(1), active)
    assert np.all(sample.expression[active].sum(1) == width)
    starts = np.diff(sample.expression[active].astype(int), axis=1, prepend=0) == 1
    assert np.all(starts.sum(1) == 1)  # one contiguous window
    onsets = starts.argmax(1)
    assert len(np.unique(onsets)) == video_frames - width + 1  # every onset occurs


def test_expression_marks_the_frames_where_the_face_moves():
    clean = sample_affect(200, seed=5, noise=0.0, video_frames=12)
    moving = np.abs(clean.video).sum(-1) > 0  # at noise 0 only the expression moves the face
    assert np.array_equal(moving, clean.expression)
    noisy = sample_affect(600, seed=5, video_frames=12)
    smile_or_frown = np.abs(noisy.video[..., [0, 1, 2]]).sum(-1)  # (N, T) lip corners, cheeks, brows
    on, off = smile_or_frown[noisy.expression].mean(), smile_or_frown[~noisy.expression].mean()
    assert on > 2.5 * off


def test_subset_keeps_the_expression_and_bad_expressions_are_refused(data):
    picked = data.subset([3, 1])
    assert np.array_equal(picked.expression, data.expression[[3, 1]])
    fields = dict(video=data.video, audio=data.audio, texts=data.texts, labels=data.labels,
                  interaction=data.interaction, polarity=data.polarity)
    assert AffectData(**fields).expression is None and AffectData(**fields).subset([0]).expression is None
    with pytest.raises(ValueError, match="expression has shape"):
        AffectData(**fields, expression=data.expression[:, :5])
    with pytest.raises(TypeError, match="expression must be a bool array"):
        AffectData(**fields, expression=data.expression.astype(np.int64))


def test_affect_dataset_items_carry_unaligned_sequences_and_the_expression():
    dataset = AffectDataset(20, seed=2, video_frames=10, audio_frames=16, cache=False)
    reference = sample_affect(20, 2, video_frames=10, audio_frames=16)
    item = dataset[4]
    assert item["video"].shape == (10, len(affect.VIDEO_CHANNELS)) and item["audio"].shape[0] == 16
    assert torch.equal(item["expression"], torch.from_numpy(reference.expression[4]))
    assert torch.equal(item["audio"], torch.from_numpy(reference.audio[4]))
    assert AffectDataset(4, seed=2, cache=False)[0]["video"].shape[0] == 12


@pytest.mark.parametrize("kwargs, error", [
    (dict(video_frames=1), ValueError),
    (dict(audio_frames=0), ValueError),
    (dict(video_frames=4.0), TypeError),
    (dict(audio_frames="8"), TypeError),
])
def test_bad_lengths_are_refused_by_name(kwargs, error):
    name = next(iter(kwargs))
    with pytest.raises(error, match=name):
        sample_affect(10, seed=0, **kwargs)
