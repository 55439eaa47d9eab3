"""A trimodal synthetic sentiment task ("affect") for the fusion lab: sincere and sarcastic opinions.

In the tradition of multimodal sentiment benchmarks such as CMU-MOSI (Zadeh et al. 2016), each
example is a short clip of someone giving an opinion, seen three ways: a face (`video`, a (T, D_v)
sequence of facial-action features), a voice (`audio`, a (T, D_a) sequence of prosody features) and
the words (`text`, a short sentence). The task exists to show what Tensor Fusion (Zadeh et al. 2017)
and Low-rank Fusion (Liu et al. 2018) capture that late fusion cannot, so its ground truth is
exact and its interactions are controlled. The interaction is one people know: **sarcasm**.
Multimodal sarcasm datasets (MUStARD, Castro et al. 2019) are built on the same observation: "what a
great film" said with a drawn-out, sing-song voice or a smirk means the opposite of its words.

What each modality can show (`AffectData.signals()` names them):

- `polarity[:, m]` in {-1, 0, +1}: the sentiment modality m expresses on its own. Face: a smile
  (+1: lip corners up, cheeks raised) or a frown (-1: lip corners down, brows lowered). Voice: warm
  and rising (+1) or harsh and falling (-1). Words: the *literal* meaning of the sentence, negation
  included ("not bad" is +1); 0 for a neutral sentence ("the film was long").
- `delivery[:, m]` in {-1, 0, +1}: *how* something is said, a cue that carries no sentiment of its
  own. Face: an earnest look (+1: brows raised, eyes wide) or a smirk with rolled eyes (-1). Voice:
  earnest, brisk emphasis (+1) or a drawn-out, exaggerated sing-song (-1, sarcastic). The words
  have no delivery (their column is always 0, kept so that columns line up with `MODALITIES`).
- a modality showing neither is at rest: a resting face, a flat voice, a neutral sentence.

The label rule (`label_of`): a sarcastic cue (delivery -1, in the face or the voice or both) flips
the words, and the sentiment is the sign of what all modalities then say together,

    label = [ s_face + s_voice + s_words * (-1)^[any sarcastic cue] > 0 ],

so agreeing signals keep their sentiment (a smile with "really lovely" is positive, a frown with
"boring" negative) and no example is left without one (a tie raises an error).

Three kinds of example, in shares the caller sets (`INTERACTIONS`):

- *unimodal*: one modality shows the sentiment (a smile, a harsh voice, "the food was awful."), the
  other two are at rest. Any model that reads that modality gets it right.
- *bimodal*: the words and one delivery cue, in the face or the voice (`PAIRS`, drawn with
  `pair_weights`): earnest or sarcastic, half and half. The label is the words' polarity, flipped
  when the cue is sarcastic: an XOR. The words alone are right half the time, the cue alone too.
- *trimodal*: the words, a face cue and a voice cue. Half the examples are sincere (both cues
  earnest); the other half are sarcastic in the face only, the voice only, or both (a sixth each).
  The label is the words flipped by *any* sarcastic cue, a function of all three: with the words and
  one cue a model is right 5/6 of the time, with one modality half of the time.

So on bimodal and trimodal examples no single modality says anything about the label, and an
additive model (late fusion: a sum of per-modality scores) trained with the logistic loss stays near
chance there, while the outer product of per-modality features [s_m, |s_m|, sarcastic_m, 1] (Tensor
Fusion) represents the rule exactly: s_words * (1 - 2 a_face - 2 a_voice + 2 a_face a_voice) holds a
term of all three modalities. Agreeing multimodal signals (a smile *and* "lovely") are left out of
the sample on purpose: a sum handles them, they teach nothing about fusion.

Every person has their own resting face and voice (a per-example offset) and every frame its own
noise (`noise` is its standard deviation; the offsets scale with it; the text is noise-free), so a
mean-pooled sequence reveals what a modality shows while a single frame does not. At the default
noise, mean-pooling and a linear classifier recover a face's or a voice's signal (rest, the two
polarities, the two deliveries) about 97% of the time.

Unaligned sequences and where each modality "speaks". `frames` sets one length T for face and
voice; `video_frames` and `audio_frames` set them apart (T_v, T_a), the unaligned setting of the
Multimodal Transformer (Tsai et al. 2019), where a face is filmed at one rate, a voice analysed at
another and the words have no time stamps at all. The ground truth of *when* the face shows itself
is exact: `AffectData.expression` (N, T_v) bool is True on the frames of its smile, frown, earnest
look or smirk (the `round(T_v / 3)`-frame window, at least two frames, where `_face` adds the
expression; every frame inside it carries at least 0.59 of the peak) and False everywhere else, all
False for a face at rest. The voice has no such window: an active voice differs on *every* frame
(its pitch contour spans the whole utterance), so a per-frame mask would only repeat that it is
active; there is none.
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
# The modalities a bimodal example has active: a delivery cue (face or voice) with the words,
# indexed like `pair_weights`.
PAIRS = (("video", "text"), ("audio", "text"))
EARNEST, SARCASTIC = 1, -1  # the two values of a delivery cue
# Trimodal examples: how often each (face, voice) pair of cues occurs. Half are sincere, so the words
# alone are right exactly half the time.
TRIMODAL_CUES = {(EARNEST, EARNEST): 1 / 2, (SARCASTIC, EARNEST): 1 / 6, (EARNEST, SARCASTIC): 1 / 6,
                 (SARCASTIC, SARCASTIC): 1 / 6}

VIDEO_CHANNELS = ("lip_corner", "cheek_raise", "brow_lower", "eye_openness", "head_motion")
AUDIO_CHANNELS = ("pitch", "energy", "harshness", "speaking_rate")
# What a face, a voice and a sentence show, by name: keyed by (polarity, delivery).
SIGNAL_NAMES = {
    "video": {(0, 0): "rest", (1, 0): "smile", (-1, 0): "frown", (0, EARNEST): "earnest", (0, SARCASTIC): "smirk"},
    "audio": {(0, 0): "flat", (1, 0): "warm", (-1, 0): "harsh", (0, EARNEST): "earnest",
              (0, SARCASTIC): "sarcastic"},
    "text": {(0, 0): "neutral", (1, 0): "positive", (-1, 0): "negative"},
}

DEFAULT_NOISE = 1.0

# Peak change of each facial channel for each expression, keyed by (polarity, delivery), in units of
# the default frame noise. `head_motion` carries nothing: it is there to be ignored.
_FACE_EXPRESSION = {
    (1, 0): np.array([5.0, 3.5, 0.0, -1.0, 0.0]),          # smile: lip corners up, cheeks raised
    (-1, 0): np.array([-3.5, 0.0, 5.0, -1.0, 0.0]),        # frown: lip corners down, brows lowered
    (0, EARNEST): np.array([0.0, 0.0, -4.0, 4.0, 0.0]),    # earnest: brows raised, eyes wide open
    (0, SARCASTIC): np.array([2.5, -3.0, 0.0, -4.0, 0.0]),  # smirk: one lip corner up, eyes rolled
}
# Prosody over the utterance, keyed by (polarity, delivery): per channel, a (shape, size) pair where
# shape is "ramp" (0 at the first frame to size at the last), "arch" (up to size mid-utterance and
# back) or "level" (size on every frame). `speaking_rate` > 0 is brisk, < 0 drawn out.
_VOICE_PROSODY = {
    (1, 0): {"pitch": ("ramp", 1.5), "energy": ("level", 1.2), "harshness": ("level", -0.6)},   # warm
    (-1, 0): {"pitch": ("ramp", -1.5), "energy": ("level", 1.2), "harshness": ("level", 0.6)},  # harsh
    (0, EARNEST): {"energy": ("level", 1.2), "speaking_rate": ("level", 1.2)},                # brisk emphasis
    (0, SARCASTIC): {"pitch": ("arch", 2.0), "energy": ("level", 0.6),                        # sing-song,
                     "speaking_rate": ("level", -1.2)},                                        # drawn out
}
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

    `polarity[:, m]` is the sentiment modality `MODALITIES[m]` shows on its own (the words': their
    literal meaning), `delivery[:, m]` its delivery cue (`EARNEST`, `SARCASTIC` or 0), both 0 for a
    modality at rest; `interaction` holds codes into `INTERACTIONS`; `labels` is 1 for positive, 0
    for negative; `expression[i, t]` is True when frame t of face i shows its expression (None when
    the data was built without it: `sample_affect` always fills it).
    """

    video: np.ndarray        # (N, T_v, D_v) float32
    audio: np.ndarray        # (N, T_a, D_a) float32
    texts: list[str]         # N sentences
    labels: np.ndarray       # (N,) int64 in {0, 1}
    interaction: np.ndarray  # (N,) int64 in {0, 1, 2}
    polarity: np.ndarray     # (N, 3) int64 in {-1, 0, 1}, columns (video, audio, text)
    delivery: np.ndarray     # (N, 3) int64 in {-1, 0, 1}, columns (video, audio, text); text always 0
    expression: np.ndarray | None = None  # (N, T_v) bool, True on the frames of the expression

    def __post_init__(self):
        n = len(self.labels)
        for name in ("video", "audio", "texts", "interaction", "polarity", "delivery"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"AffectData {name} has {len(getattr(self, name))} rows; "
                                 f"expected {n}, the number of labels")
        if self.expression is not None:
            _check_expression(self.expression, self.video.shape[:2])

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def active(self) -> np.ndarray:
        """(N, 3) bool: modality m of example i shows something (a sentiment or a delivery cue)."""
        return (self.polarity != 0) | (self.delivery != 0)

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
                          delivery=self.delivery[indices],
                          expression=None if self.expression is None else self.expression[indices])

    def interaction_names(self) -> list[str]:
        """The interaction type of every example, by name ("unimodal", "bimodal", "trimodal")."""
        return [INTERACTIONS[code] for code in self.interaction]

    def signals(self) -> list[tuple[str, str, str]]:
        """What face, voice and words show in every example, by name: ("smirk", "flat", "positive")."""
        return [tuple(SIGNAL_NAMES[m][int(polarity[k]), int(delivery[k])] for k, m in enumerate(MODALITIES))
                for polarity, delivery in zip(self.polarity, self.delivery)]


def sample_affect(n: int, seed: int, shares: Sequence[float] = (0.4, 0.3, 0.3), frames: int = 12,
                  noise: float = DEFAULT_NOISE, pair_weights: Sequence[float] = (1.0, 1.0),
                  video_frames: int | None = None, audio_frames: int | None = None) -> AffectData:
    """`n` examples of the affect task, a deterministic function of the arguments.

    `shares` = (unimodal, bimodal, trimodal) fractions summing to 1; the counts are exactly
    `round(n * share)`, adjusted by one where rounding would not sum to n. Within each interaction
    type half the labels are positive (the odd one out drawn at random). `frames` is T, `noise`
    the per-frame noise of video and audio, `pair_weights` how often each pair of `PAIRS` (face cue
    + words, voice cue + words) is the active one in bimodal examples. `video_frames` (T_v) and
    `audio_frames` (T_a) give the face and the voice lengths of their own (unaligned sequences);
    each defaults to `frames`.

    Example i is drawn from `scene_rng(seed, i, "affect")` given its interaction type and label,
    but which type and label it gets depends on `n` (the counts are exact), so unlike scenes a
    longer sample does not start with a shorter one.
    """
    n = check_count("n", n)
    seed = check_seed(seed)
    shares = _check_weights("shares", shares, len(INTERACTIONS), must_sum_to_one=True)
    frames = check_count("frames", frames, 2)
    video_frames = frames if video_frames is None else check_count("video_frames", video_frames, 2)
    audio_frames = frames if audio_frames is None else check_count("audio_frames", audio_frames, 2)
    noise = _check_noise(noise)
    pair_probabilities = _check_weights("pair_weights", pair_weights, len(PAIRS), must_sum_to_one=False)

    order_rng = scene_rng(seed, n, "order")  # one generator for the whole collection's order
    interaction, labels = _shuffled_types_and_labels(_type_counts(n, shares), order_rng)
    video = np.empty((n, video_frames, len(VIDEO_CHANNELS)), dtype=np.float32)
    audio = np.empty((n, audio_frames, len(AUDIO_CHANNELS)), dtype=np.float32)
    expression = np.zeros((n, video_frames), dtype=bool)
    polarity = np.empty((n, len(MODALITIES)), dtype=np.int64)
    delivery = np.empty((n, len(MODALITIES)), dtype=np.int64)
    texts = []
    for i in range(n):
        rng = scene_rng(seed, i, "affect")
        polarity[i], delivery[i] = _signals(int(interaction[i]), int(labels[i]), pair_probabilities, rng)
        face, voice, words = zip(polarity[i].tolist(), delivery[i].tolist())
        video[i], expression[i] = _face(face, video_frames, noise, rng)
        audio[i] = _voice(voice, audio_frames, noise, rng)
        texts.append(_sentence(words[0], rng))
    return AffectData(video=video, audio=audio, texts=texts, labels=labels, interaction=interaction,
                      polarity=polarity, delivery=delivery, expression=expression)


def label_of(polarity: np.ndarray, delivery: np.ndarray) -> np.ndarray:
    """The label rule: the words flipped by any sarcastic cue, then the sign of what all modalities say.

    (..., 3) int polarities and (..., 3) int deliveries, columns `MODALITIES` -> (...,) int64 labels:
    1 where s_face + s_voice + s_words * (-1)^[any delivery is SARCASTIC] > 0, else 0. Raises
    ValueError where that sum is 0 (no sentiment, or signals that cancel).
    """
    polarity, delivery = _check_signals(polarity, delivery)
    sarcastic = (delivery == SARCASTIC).any(axis=-1)                          # (...,)
    face, voice, words = np.moveaxis(polarity, -1, 0)                         # 3 x (...,)
    sentiment = face + voice + np.where(sarcastic, -words, words)             # (...,)
    if np.any(sentiment == 0):
        first = tuple(int(k) for k in np.argwhere(sentiment == 0)[0])
        raise ValueError(f"the signals at index {first} (polarity {polarity[first].tolist()}, delivery "
                         f"{delivery[first].tolist()}) express no sentiment: their sum is 0")
    return (sentiment > 0).astype(np.int64)


# --- validation --------------------------------------------------------------------------------

def _check_weights(name: str, values, count: int, must_sum_to_one: bool) -> np.ndarray:
    """`count` non-negative numbers; shares must sum to 1, weights to anything positive (normalised)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of {count} numbers, got {type(values).__name__}")
    if len(values) != count:
        raise ValueError(f"{name} must have {count} entries, got {len(values)}: {tuple(values)!r}")
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


def _check_signals(polarity, delivery) -> tuple[np.ndarray, np.ndarray]:
    """Two int arrays of one shape (..., 3), with values in {-1, 0, 1}."""
    arrays = []
    for name, values in (("polarity", polarity), ("delivery", delivery)):
        values = np.asarray(values)
        if not np.issubdtype(values.dtype, np.integer):
            raise TypeError(f"{name} must hold ints, got dtype {values.dtype}")
        if values.ndim == 0 or values.shape[-1] != len(MODALITIES):
            raise ValueError(f"{name} must have shape (..., {len(MODALITIES)}), one column per modality "
                             f"{MODALITIES}, got {values.shape}")
        if values.size and (values.min() < -1 or values.max() > 1):
            raise ValueError(f"{name} values must lie in {{-1, 0, 1}}, got {sorted(set(values.ravel().tolist()))}")
        arrays.append(values.astype(np.int64))
    if arrays[0].shape != arrays[1].shape:
        raise ValueError(f"polarity and delivery must have one shape, got {arrays[0].shape} and {arrays[1].shape}")
    return arrays[0], arrays[1]


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


def _signals(interaction: int, label: int, pair_probabilities: np.ndarray,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(3,) polarities and (3,) deliveries of one example of the given type whose label is `label`.

    Unimodal: one modality, drawn uniformly, shows the label's sentiment. Bimodal and trimodal: the
    delivery cues are drawn first (sarcastic half of the time), then the words' literal polarity
    that gives the label under the sarcasm rule.
    """
    sentiment = 1 if label == 1 else -1
    polarity = np.zeros(len(MODALITIES), dtype=np.int64)
    delivery = np.zeros(len(MODALITIES), dtype=np.int64)
    if INTERACTIONS[interaction] == "unimodal":
        polarity[rng.integers(len(MODALITIES))] = sentiment
        return polarity, delivery
    if INTERACTIONS[interaction] == "bimodal":
        cue_modality = PAIRS[rng.choice(len(PAIRS), p=pair_probabilities)][0]
        delivery[MODALITIES.index(cue_modality)] = rng.choice([EARNEST, SARCASTIC])
    else:
        patterns = list(TRIMODAL_CUES)
        pattern = patterns[rng.choice(len(patterns), p=list(TRIMODAL_CUES.values()))]
        delivery[[MODALITIES.index("video"), MODALITIES.index("audio")]] = pattern
    sarcastic = np.any(delivery == SARCASTIC)
    polarity[MODALITIES.index("text")] = -sentiment if sarcastic else sentiment
    return polarity, delivery


# --- the three modalities ------------------------------------------------------------------------

def _face(signal: tuple[int, int], frames: int, noise: float,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(T, D_v) facial features: a resting face, the expression of `signal` = (polarity, delivery)
    over a few frames, noise; and the (T,) bool mask of the expression's frames (all False at rest)."""
    # (D_v,) this person's resting face
    resting = rng.normal(0.0, _PERSON_OFFSET_FRACTION * noise, size=len(VIDEO_CHANNELS))
    clip = resting + rng.normal(0.0, noise, size=(frames, len(VIDEO_CHANNELS)))  # (T, D_v)
    expression = np.zeros(frames, dtype=bool)  # (T,)
    if signal != (0, 0):
        width = max(2, round(_EXPRESSION_FRACTION * frames))
        onset = int(rng.integers(frames - width + 1))
        intensity = rng.uniform(0.8, 1.2)
        rise_and_fall = np.sin(np.pi * np.arange(1, width + 1) / (width + 1))  # (width,) peaks near 1
        clip[onset:onset + width] += intensity * np.outer(rise_and_fall, _FACE_EXPRESSION[signal])
        expression[onset:onset + width] = True
    return clip, expression


def _voice(signal: tuple[int, int], frames: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """(T, D_a) prosody: a speaker's baseline, the contour of `signal` = (polarity, delivery), noise."""
    # (D_a,) this speaker's resting voice
    baseline = rng.normal(0.0, _PERSON_OFFSET_FRACTION * noise, size=len(AUDIO_CHANNELS))
    clip = baseline + rng.normal(0.0, noise, size=(frames, len(AUDIO_CHANNELS)))  # (T, D_a)
    progress = np.linspace(0.0, 1.0, frames)  # (T,) from the start to the end of the utterance
    contours = {"ramp": progress, "arch": np.sin(np.pi * progress), "level": np.ones(frames)}
    for channel, (shape, size) in _VOICE_PROSODY.get(signal, {}).items():
        clip[:, AUDIO_CHANNELS.index(channel)] += size * contours[shape]
    return clip


def _sentence(polarity: int, rng: np.random.Generator) -> str:
    """A one-clause opinion whose literal polarity is `polarity`: 'the film was not bad.' is +1."""
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
