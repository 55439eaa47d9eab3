"""A trimodal synthetic sentiment task ("affect") for the fusion lab.

In the tradition of multimodal sentiment benchmarks such as CMU-MOSI (Zadeh et al. 2016), each
example is a short clip of someone giving an opinion, seen three ways: a face (`video`, a (T, D_v)
sequence of facial-action features), a voice (`audio`, a (T, D_a) sequence of prosody features) and
the words (`text`, a short sentence). The task exists to show what Tensor Fusion (Zadeh et al. 2017)
and Low-rank Fusion (Liu et al. 2018) capture that late fusion cannot, so its ground truth is
exact and its interactions are controlled.

The generative process, in one paragraph. Every example gives each modality m a polarity s_m in
{-1, 0, +1} (0: the modality says nothing, "inactive"). An example is *unimodal* (one modality
active), *bimodal* (two) or *trimodal* (all three), in shares the caller sets. Its label is the
product of the active polarities (positive product -> 1, negative -> 0), i.e. the label is
`prod_m (s_m + 1 - |s_m|) > 0`, a multilinear function of the per-modality features (s_m, |s_m|).
A smile (lip corners pulled up, cheeks raised) or a frown (brows lowered, lip corners pulled down)
shows on the face over a few frames at a random moment; a rising, warm, energetic voice or a
falling, harsh, energetic one shows in the prosody; a sentiment word, possibly negated ("not good"
is negative, "not bad" positive), shows in the sentence. Inactive modalities show a resting face,
a flat voice and a neutral sentence ("the film was long"). Every person has their own resting face
and voice (a per-example offset) and every frame its own noise, so a mean-pooled sequence reveals
the polarity while a single frame does not.

The product rule is an idealisation, not a claim about how people talk: it makes agreement
positive and disagreement negative (positive words said in a harsh voice, sarcasm, read as
negative) and, with it, *no single modality says anything about the label* on bimodal and
trimodal examples. An additive model (late fusion: a sum of per-modality scores) trained with the
logistic loss therefore sits at chance there (the best any line can do is 3 of the 4 XOR corners),
while the outer product of per-modality features [s_m, |s_m|, 1] (Tensor Fusion) represents the
label exactly. On unimodal examples every model is fine.

Which pair is active in a bimodal example is drawn with `pair_weights` over `PAIRS`; the default
weighs the three pairs equally (pass e.g. `(1, 1, 4)` to make text+audio "sarcasm" pairs common).
`noise` is the standard deviation of the per-frame noise of video and audio (the person offsets
scale with it); the text is noise-free. At the default noise, mean-pooling a sequence and a linear
classifier recover its polarity (-1/0/+1) about 98% of the time, a single frame far less often.

Unaligned sequences and where each modality "speaks". `frames` sets one length T for face and
voice; `video_frames` and `audio_frames` set them apart (T_v, T_a), the unaligned setting of the
Multimodal Transformer (Tsai et al. 2019), where a face is filmed at one rate, a voice analysed at
another and the words have no time stamps at all. The ground truth of *when* the face shows its
polarity is exact: `AffectData.expression` (N, T_v) bool is True on the frames of the smile or
frown (the `round(T_v / 3)`-frame window, at least two frames, where `_face` adds the expression;
every frame inside it carries at least 0.59 of the peak) and False everywhere else, all False when
the face is inactive. The voice has no such window: an active voice is raised in energy and
warm/harsh on *every* frame, and its pitch ramps linearly from 0 at the first frame to +-1.5 at
the last, so its evidence is spread over the whole utterance (growing towards the end) and a
per-frame mask would only repeat `polarity != 0`; there is none. With the default lengths every
array is byte-identical to what it was before these arguments existed.
"""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Real
from typing import Sequence

import numpy as np

from .language import split_words
from .scene import check_count, check_seed, scene_rng

MODALITIES = ("video", "audio", "text")
INTERACTIONS = ("unimodal", "bimodal", "trimodal")
# The modality pairs a bimodal example can have active, indexed like `pair_weights`.
PAIRS = (("video", "audio"), ("video", "text"), ("audio", "text"))

VIDEO_CHANNELS = ("lip_corner", "cheek_raise", "brow_lower", "eye_openness", "head_motion")
AUDIO_CHANNELS = ("pitch", "energy", "harshness", "speaking_rate")

DEFAULT_NOISE = 1.0

# Peak change of each facial channel in a smile (+1) and a frown (-1), in units of the default
# frame noise. `head_motion` carries no sentiment: it is there to be ignored.
_FACE_EXPRESSION = {
    +1: np.array([5.0, 3.5, 0.0, -1.0, 0.0]),   # lip corners up, cheeks raised, eyes narrowed
    -1: np.array([-3.5, 0.0, 5.0, -1.0, 0.0]),  # lip corners down, brows lowered, eyes narrowed
}
# Prosody of an active voice: pitch rises (+1) or falls (-1) by `_PITCH_SWING` over the utterance;
# energy is raised for either; harshness is negative (warm) or positive (harsh). `speaking_rate`
# carries no sentiment.
_PITCH_SWING = 1.5
_ACTIVE_ENERGY = 1.2
_HARSHNESS = {+1: -0.6, 0: 0.0, -1: 0.6}
# The expression lasts this fraction of the clip (at least two frames).
_EXPRESSION_FRACTION = 1 / 3
# A person's resting face and voice differ from the average by this fraction of `noise`.
_PERSON_OFFSET_FRACTION = 1 / 6

SUBJECTS = ("film", "movie", "show", "food", "service", "music", "book", "hotel")
VERBS = ("was", "is")
POSITIVE_WORDS = ("good", "great", "fun", "lovely", "excellent", "wonderful")
NEGATIVE_WORDS = ("bad", "awful", "boring", "terrible", "dull", "poor")
NEUTRAL_WORDS = ("long", "short", "new", "old", "quiet", "loud")
INTENSIFIERS = ("really", "very")
NEGATION = "not"

_SENTENCE_PARTS = (("the", NEGATION, ".") + SUBJECTS + VERBS + POSITIVE_WORDS + NEGATIVE_WORDS
                   + NEUTRAL_WORDS + INTENSIFIERS)
WORDS: frozenset[str] = frozenset(split_words(" ".join(_SENTENCE_PARTS)))


@dataclass
class AffectData:
    """N examples of the affect task; row i of every field belongs to example i.

    `polarity[:, m]` is the polarity of modality `MODALITIES[m]` (0 when inactive);
    `interaction` holds codes into `INTERACTIONS`; `labels` is 1 for positive, 0 for negative;
    `expression[i, t]` is True when frame t of face i shows its smile or frown (None when the
    data was built without it: `sample_affect` always fills it).
    """

    video: np.ndarray        # (N, T_v, D_v) float32
    audio: np.ndarray        # (N, T_a, D_a) float32
    texts: list[str]         # N sentences
    labels: np.ndarray       # (N,) int64 in {0, 1}
    interaction: np.ndarray  # (N,) int64 in {0, 1, 2}
    polarity: np.ndarray     # (N, 3) int64 in {-1, 0, 1}, columns (video, audio, text)
    expression: np.ndarray | None = None  # (N, T_v) bool, True on the frames of the expression

    def __post_init__(self):
        n = len(self.labels)
        for name in ("video", "audio", "texts", "interaction", "polarity"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"AffectData {name} has {len(getattr(self, name))} rows; "
                                 f"expected {n}, the number of labels")
        if self.expression is not None:
            _check_expression(self.expression, self.video.shape[:2])

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> "AffectData":
        """The examples at `indices` (a 1-D sequence of ints, or a boolean mask of length N)."""
        indices = np.asarray(indices)
        if indices.size == 0:
            indices = indices.astype(np.int64)
        if indices.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {indices.shape}")
        if indices.dtype == bool:
            if len(indices) != len(self):
                raise ValueError(f"indices is a boolean mask of length {len(indices)}; expected {len(self)}")
            indices = np.flatnonzero(indices)
        elif not np.issubdtype(indices.dtype, np.integer):
            raise TypeError(f"indices must hold ints or bools, got dtype {indices.dtype}")
        if indices.size and not (-len(self) <= indices.min() and indices.max() < len(self)):
            raise ValueError(f"indices must lie in [-{len(self)}, {len(self)}), "
                             f"got values from {indices.min()} to {indices.max()}")
        return AffectData(video=self.video[indices], audio=self.audio[indices],
                          texts=[self.texts[i] for i in indices], labels=self.labels[indices],
                          interaction=self.interaction[indices], polarity=self.polarity[indices],
                          expression=None if self.expression is None else self.expression[indices])

    def interaction_names(self) -> list[str]:
        """The interaction type of every example, by name ("unimodal", "bimodal", "trimodal")."""
        return [INTERACTIONS[code] for code in self.interaction]


def sample_affect(n: int, seed: int, shares: Sequence[float] = (0.4, 0.3, 0.3), frames: int = 12,
                  noise: float = DEFAULT_NOISE, pair_weights: Sequence[float] = (1.0, 1.0, 1.0),
                  video_frames: int | None = None, audio_frames: int | None = None) -> AffectData:
    """`n` examples of the affect task, a deterministic function of the arguments.

    `shares` = (unimodal, bimodal, trimodal) fractions summing to 1; the counts are exactly
    `round(n * share)`, adjusted by one where rounding would not sum to n. Within each interaction
    type half the labels are positive (the odd one out drawn at random). `frames` is T, `noise`
    the per-frame noise of video and audio, `pair_weights` how often each pair of `PAIRS` is the
    active one in bimodal examples. `video_frames` (T_v) and `audio_frames` (T_a) give the face and
    the voice lengths of their own (unaligned sequences); each defaults to `frames`.

    Example i is drawn from `scene_rng(seed, i, "affect")` given its interaction type and label,
    but which type and label it gets depends on `n` (the counts are exact), so unlike scenes a
    longer sample does not start with a shorter one.
    """
    n = check_count("n", n)
    seed = check_seed(seed)
    shares = _check_weights("shares", shares, must_sum_to_one=True)
    frames = check_count("frames", frames, 2)
    video_frames = frames if video_frames is None else check_count("video_frames", video_frames, 2)
    audio_frames = frames if audio_frames is None else check_count("audio_frames", audio_frames, 2)
    noise = _check_noise(noise)
    pair_probabilities = _check_weights("pair_weights", pair_weights, must_sum_to_one=False)

    order_rng = scene_rng(seed, n, "order")  # one generator for the whole collection's order
    interaction, labels = _shuffled_types_and_labels(_type_counts(n, shares), order_rng)
    video = np.empty((n, video_frames, len(VIDEO_CHANNELS)), dtype=np.float32)
    audio = np.empty((n, audio_frames, len(AUDIO_CHANNELS)), dtype=np.float32)
    expression = np.zeros((n, video_frames), dtype=bool)
    polarity = np.empty((n, len(MODALITIES)), dtype=np.int64)
    texts = []
    for i in range(n):
        rng = scene_rng(seed, i, "affect")
        polarity[i] = _polarities(int(interaction[i]), int(labels[i]), pair_probabilities, rng)
        s_video, s_audio, s_text = (int(s) for s in polarity[i])
        video[i], expression[i] = _face(s_video, video_frames, noise, rng)
        audio[i] = _voice(s_audio, audio_frames, noise, rng)
        texts.append(_sentence(s_text, rng))
    return AffectData(video=video, audio=audio, texts=texts, labels=labels, interaction=interaction,
                      polarity=polarity, expression=expression)


def label_of(polarity: np.ndarray) -> np.ndarray:
    """The label rule: 1 where the product of the active polarities is positive, else 0.

    (..., 3) int polarities -> (...,) int64 labels. An inactive modality contributes a factor 1,
    so the product is prod_m (s_m + 1 - |s_m|).
    """
    polarity = np.asarray(polarity)
    factors = polarity + 1 - np.abs(polarity)  # (..., 3): s_m where active, 1 where inactive
    return (factors.prod(axis=-1) > 0).astype(np.int64)


# --- validation --------------------------------------------------------------------------------

def _check_weights(name: str, values, must_sum_to_one: bool) -> np.ndarray:
    """Three non-negative numbers; shares must sum to 1, weights to anything positive (normalised)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of 3 numbers, got {type(values).__name__}")
    if len(values) != 3:
        raise ValueError(f"{name} must have 3 entries, got {len(values)}: {tuple(values)!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, Real):
            raise TypeError(f"{name} must hold numbers, got {value!r} ({type(value).__name__})")
    array = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(array)) or np.any(array < 0) or (must_sum_to_one and np.any(array > 1)):
        bounds = "in [0, 1]" if must_sum_to_one else "finite and >= 0"
        raise ValueError(f"{name} entries must be {bounds}, got {tuple(values)!r}")
    total = array.sum()
    if must_sum_to_one and abs(total - 1.0) > 1e-6:
        raise ValueError(f"{name} must sum to 1, got {tuple(values)!r} summing to {total:.6g}")
    if total <= 0:
        raise ValueError(f"{name} must have a positive sum, got {tuple(values)!r}")
    return array / total


def _check_expression(expression, video_shape: tuple[int, int]) -> None:
    """(N, T_v) bool, one flag per video frame."""
    if not isinstance(expression, np.ndarray) or expression.dtype != bool:
        raise TypeError(f"AffectData expression must be a bool array, "
                        f"got {getattr(expression, 'dtype', type(expression).__name__)}")
    if expression.shape != tuple(video_shape):
        raise ValueError(f"AffectData expression has shape {expression.shape}; expected "
                         f"{tuple(video_shape)}, one flag per video frame (N, T_v)")


def _check_noise(noise) -> float:
    if isinstance(noise, bool) or not isinstance(noise, Real):
        raise TypeError(f"noise must be a number, got {type(noise).__name__}")
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    return float(noise)


# --- which examples, which modalities ------------------------------------------------------------

def _type_counts(n: int, shares: np.ndarray) -> np.ndarray:
    """(3,) counts per interaction type: round(n * share), nudged by one until they sum to n."""
    wanted = n * shares  # (3,)
    counts = np.round(wanted).astype(np.int64)
    while counts.sum() > n:  # take one from the type rounded up the most
        counts[np.argmax(counts - wanted)] -= 1
    while counts.sum() < n:  # give one to the type rounded down the most
        counts[np.argmax(wanted - counts)] += 1
    return counts


def _shuffled_types_and_labels(counts: np.ndarray,
                               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(N,) interaction codes and (N,) labels, half positive within each type, in a shuffled order."""
    interaction = np.repeat(np.arange(len(INTERACTIONS)), counts)  # (N,)
    labels = np.concatenate([(np.arange(count) + rng.integers(2)) % 2 for count in counts])  # (N,)
    order = rng.permutation(len(interaction))
    return interaction[order].astype(np.int64), labels[order].astype(np.int64)


def _polarities(interaction: int, label: int, pair_probabilities: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
    """(3,) polarities whose active entries multiply to +1 (label 1) or -1 (label 0).

    The active signs are uniform given the label: all but the last are drawn, the last makes the
    product right.
    """
    if INTERACTIONS[interaction] == "unimodal":
        active = [int(rng.integers(len(MODALITIES)))]
    elif INTERACTIONS[interaction] == "bimodal":
        pair = PAIRS[rng.choice(len(PAIRS), p=pair_probabilities)]
        active = [MODALITIES.index(m) for m in pair]
    else:
        active = list(range(len(MODALITIES)))
    polarity = np.zeros(len(MODALITIES), dtype=np.int64)
    polarity[active[:-1]] = rng.choice([-1, 1], size=len(active) - 1)
    target = 1 if label == 1 else -1
    polarity[active[-1]] = target * int(np.prod(polarity[active[:-1]]))
    return polarity


# --- the three modalities ------------------------------------------------------------------------

def _face(polarity: int, frames: int, noise: float,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(T, D_v) facial features: a resting face, a smile or frown over a few frames, noise; and the
    (T,) bool mask of the expression's frames (all False for an inactive face)."""
    # (D_v,) this person's resting face
    resting = rng.normal(0.0, _PERSON_OFFSET_FRACTION * noise, size=len(VIDEO_CHANNELS))
    clip = resting + rng.normal(0.0, noise, size=(frames, len(VIDEO_CHANNELS)))  # (T, D_v)
    expression = np.zeros(frames, dtype=bool)  # (T,)
    if polarity != 0:
        width = max(2, round(_EXPRESSION_FRACTION * frames))
        onset = int(rng.integers(frames - width + 1))
        intensity = rng.uniform(0.8, 1.2)
        rise_and_fall = np.sin(np.pi * np.arange(1, width + 1) / (width + 1))  # (width,) peaks near 1
        clip[onset:onset + width] += intensity * np.outer(rise_and_fall, _FACE_EXPRESSION[polarity])
        expression[onset:onset + width] = True
    return clip, expression


def _voice(polarity: int, frames: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """(T, D_a) prosody: a speaker's baseline, a rising/falling pitch, energy, harshness, noise."""
    # (D_a,) this speaker's resting voice
    baseline = rng.normal(0.0, _PERSON_OFFSET_FRACTION * noise, size=len(AUDIO_CHANNELS))
    clip = baseline + rng.normal(0.0, noise, size=(frames, len(AUDIO_CHANNELS)))  # (T, D_a)
    progress = np.linspace(0.0, 1.0, frames)  # (T,) from the start to the end of the utterance
    clip[:, AUDIO_CHANNELS.index("pitch")] += polarity * _PITCH_SWING * progress
    clip[:, AUDIO_CHANNELS.index("energy")] += abs(polarity) * _ACTIVE_ENERGY
    clip[:, AUDIO_CHANNELS.index("harshness")] += _HARSHNESS[polarity]
    return clip


def _sentence(polarity: int, rng: np.random.Generator) -> str:
    """A one-clause opinion with the given polarity: 'the film was not bad.' is +1."""
    subject, verb = _pick(SUBJECTS, rng), _pick(VERBS, rng)
    negated = bool(rng.integers(2))
    if polarity == 0:
        adjective = _pick(NEUTRAL_WORDS, rng)
    else:
        word_polarity = -polarity if negated else polarity
        adjective = _pick(POSITIVE_WORDS if word_polarity > 0 else NEGATIVE_WORDS, rng)
    if negated:
        modifier = NEGATION
    else:
        modifier = _pick(INTENSIFIERS, rng) if rng.integers(2) else ""
    return " ".join(w for w in ("the", subject, verb, modifier, adjective) if w) + "."


def _pick(options: tuple[str, ...], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]
