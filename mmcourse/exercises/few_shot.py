"""Checks for the exercises of notebook 05 (few-shot, zero-shot and co-learning), and the course's applied exam.

Each check runs the learner's function and the package's reference on fresh random inputs and says
in one sentence what differs, naming the typical mistake when the learner's values match it: the
class prototypes and squared Euclidean distances of prototypical networks (Snell, Swersky & Zemel
2017), the sampler of their n-way k-shot episodes (Vinyals et al. 2016's episodic training), judged
by its properties since its answer is random, and one view's step of co-training (Blum & Mitchell
1998).

The applied exam asks six short computations across the course, and each verdict ends with the
idea behind it ("Why: ..."): CLIP's symmetric loss (Radford et al. 2021), the XOR that Tensor
Fusion can represent and additive fusion cannot (Zadeh et al. 2017), the modality gap (Liang et al.
2022), a prototypical network's prediction, CLIP's zero-shot prediction and the cross-attention at
the core of MulT (Tsai et al. 2019) and ViLBERT's co-attention (Lu et al. 2019).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..experiments.representation import modality_gap
from ..models.clip import similarity_matrix
from ..models.colearning import UNLABELLED, confident_labels
from ..models.fusion import TensorFusion
from ..models.layers import attention
from ..models.protonet import class_prototypes, pairwise_distances
from ..models.region_word import contrastive_loss
from .check import (CheckResult, Comparison, Exercise, Trial, _a, _exception_result, answer_call, error_summary,
                    not_implemented, random_sizes)

__all__ = ["check_confident_labels", "check_episode_sampler", "check_exam_clip_loss", "check_exam_cross_attention",
           "check_exam_modality_gap", "check_exam_protonet_prediction", "check_exam_xor_fusion",
           "check_exam_zero_shot", "check_prototypes", "check_squared_distances"]

HINT_PROTOTYPES = ("The support is class-major: reshape it to (n_way, n_support, D), so that row c holds class c's "
                   "n_support embeddings, and take the mean over dim 1.")
HINT_DISTANCES = ("Broadcast (queries[:, None, :] - prototypes[None, :, :]) to (Q, N, D), square and sum over the "
                  "last dim, or expand |q|^2 - 2 q.p + |p|^2 with one matrix product; no Python loop and no sqrt.")
HINT_EPISODE = ("chosen = rng.choice(classes, size=n_way, replace=False); for each chosen class draw n_support + "
                "n_query of its indices with rng.choice(np.flatnonzero(labels == c), ..., replace=False), the first "
                "n_support to the support, the rest to the query; concatenate class by class.")
HINT_CONFIDENT = ("predicted = probs.argmax(1); for each class c take the unlabelled examples with predicted == c, "
                  "sort them by probs[:, c] from high to low and label the first per_class c; every other entry "
                  "stays -1.")
HINT_EXAM_CLIP = ("logits = similarity / temperature; targets = torch.arange(N) (image i matches caption i); "
                  "average F.cross_entropy(logits, targets) and F.cross_entropy(logits.T, targets).")
HINT_EXAM_XOR = ("z(a, b) = [a, 1] (x) [b, 1] flattened, the first input varying slowest: [a*b, a, b, 1]; "
                 "solve w . z(a, b) = a XOR b on the four pairs (four equations, four unknowns).")
HINT_EXAM_GAP = ("L2-normalise every row first (F.normalize(x, dim=-1)), then take the Euclidean norm of the "
                 "difference of the two means, as a float.")
HINT_EXAM_PROTONET = ("prototypes = support.reshape(n_way, n_support, D).mean(1) (class-major); distances = "
                      "((query[:, None] - prototypes[None]) ** 2).sum(-1) is (Q, n_way); return distances.argmin(1).")
HINT_EXAM_ZERO_SHOT = ("Normalise both (F.normalize(x, dim=-1)) so that dot products are cosines, then "
                       "(images @ texts.T).argmax(1).")
HINT_EXAM_ATTENTION = ("scores = queries @ keys.T / sqrt(d) is (Lq, Lk); softmax over the LAST axis (each query's "
                       "weights over the keys), then weights @ values.")


# --------------------------------------------------------------------------------------------
# Prototypes: c_k = mean of class k's support embeddings
# --------------------------------------------------------------------------------------------


def _prototypes_shot_major(support_embeddings, n_way, n_support):
    return support_embeddings.reshape(n_support, n_way, -1).mean(0)  # rows read as (shot, class)


def _prototypes_summed(support_embeddings, n_way, n_support):
    return support_embeddings.reshape(n_way, n_support, -1).sum(1)


PROTOTYPES_MISTAKES: dict[str, Callable] = {
    "your support is read shot-major; it is class-major: rows 0..n_support-1 are class 0, the next n_support "
    "class 1, and so on": _prototypes_shot_major,
    "your prototypes sum the support embeddings; a prototype is their mean": _prototypes_summed,
}


def _prototypes_inputs(gen: torch.Generator) -> tuple:
    """n_support >= 2: with one shot per class a shot-major or summing answer would equal the mean."""
    n_way, n_support, dim = random_sizes(gen, 1, 2, 6) + random_sizes(gen, 1, 2, 5) + random_sizes(gen, 1, 2, 8)
    return torch.randn(n_way * n_support, dim, generator=gen).requires_grad_(), n_way, n_support


PROTOTYPES = Comparison("prototypes", class_prototypes, _prototypes_inputs, check_grad=True, hint=HINT_PROTOTYPES,
                        mistakes=PROTOTYPES_MISTAKES)


def check_prototypes(prototypes_fn: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`prototypes_fn(support_embeddings (n_way * n_support, D), n_way, n_support)`, the support
    ordered class by class, must return the (n_way, D) class means of
    `mmcourse.models.protonet.class_prototypes`: values and gradients."""
    return PROTOTYPES.check(prototypes_fn, raise_on_fail=raise_on_fail)


# --------------------------------------------------------------------------------------------
# Squared Euclidean distances: d(q, c) = |q - c|^2
# --------------------------------------------------------------------------------------------


def _squared_distances(queries, prototypes):
    return pairwise_distances(queries, prototypes, "squared_euclidean")  # (Q, N)


def _euclidean(queries, prototypes):
    return pairwise_distances(queries, prototypes, "euclidean")


def _negative_squared(queries, prototypes):
    return -_squared_distances(queries, prototypes)


def _dot_products(queries, prototypes):
    return queries @ prototypes.T  # (Q, N)


DISTANCES_MISTAKES: dict[str, Callable] = {
    "your distances are plain Euclidean (as torch.cdist gives); prototypical networks square them, so drop "
    "the sqrt": _euclidean,
    "your distances are negated; return |q - c|^2 itself, the model negates it before the softmax": _negative_squared,
    "you return dot products q . c, a similarity; the distance is |q - c|^2 = |q|^2 - 2 q . c + |c|^2":
        _dot_products,
}


def _distances_inputs(gen: torch.Generator) -> tuple:
    queries, prototypes, dim = random_sizes(gen, 1, 1, 6) + random_sizes(gen, 1, 2, 6) + random_sizes(gen, 1, 2, 8)
    return (torch.randn(queries, dim, generator=gen).requires_grad_(),
            torch.randn(prototypes, dim, generator=gen).requires_grad_())


SQUARED_DISTANCES = Comparison("squared_distances", _squared_distances, _distances_inputs, check_grad=True,
                               hint=HINT_DISTANCES, mistakes=DISTANCES_MISTAKES)


def check_squared_distances(distances_fn: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`distances_fn(queries (Q, D), prototypes (N, D))` must return the (Q, N) squared Euclidean
    distances of `mmcourse.models.protonet.pairwise_distances(..., "squared_euclidean")`: values and
    gradients."""
    return SQUARED_DISTANCES.check(distances_fn, raise_on_fail=raise_on_fail)


# --------------------------------------------------------------------------------------------
# Episodes: n_way classes, n_support + n_query distinct items of each, drawn with rng
# --------------------------------------------------------------------------------------------

EPISODE_TRIALS = 2  # label sets per check
EPISODE_SEEDS = 100  # episodes per label set: each class is missed by all of them with probability < 1e-9
EPISODE_CLASSES = 8  # classes in a label set, 6..12 items each; `classes` names 4..6 of them


def answer_episodes(sample_fn: Callable, request: dict) -> dict:
    """What `sample_fn` returned for each seed of the request, each with its own
    `numpy.random.default_rng(seed)`, and once more for the first seed; or the error it raised."""
    try:
        episodes = [_sample(sample_fn, request, seed) for seed in request["seeds"]]
        again = _sample(sample_fn, request, request["seeds"][0])
    except NotImplementedError:
        return {"not_implemented": True}
    except Exception as error:  # a learner's bug: one sentence, no traceback
        return {"error": error_summary(error)}
    return {"output": episodes, "again": again}


def _sample(sample_fn: Callable, request: dict, seed: int):
    return sample_fn(request["labels"].copy(), list(request["classes"]), request["n_way"], request["n_support"],
                     request["n_query"], np.random.default_rng(seed))


class _Wrong(Exception):
    """Internal: the sentence saying what an episode sampler gets wrong."""


class EpisodeSampling(Exercise):
    """An episode is random, so this exercise judges the sampler's episodes by their properties over
    many seeds: valid distinct indices of chosen classes from `classes`, class-major, reproducible
    from the seed, and drawing every class and different items from one seed to the next."""

    name = "sample_episode"
    answer = staticmethod(answer_episodes)

    def draw(self, seed: int) -> Iterator[Trial]:
        for trial in range(EPISODE_TRIALS):
            rng = np.random.default_rng([seed, trial])
            counts = rng.integers(6, 13, EPISODE_CLASSES)  # (8,) items per class
            labels = rng.permutation(np.repeat(np.arange(EPISODE_CLASSES), counts))  # (N,) shuffled
            classes = [int(c) for c in rng.choice(EPISODE_CLASSES, size=int(rng.integers(4, 7)), replace=False)]
            n_way = int(rng.integers(2, len(classes)))  # fewer than len(classes): the choice matters
            low = 2 if trial == 0 else 1  # several shots in the first label set: the order of the items shows
            n_support, n_query = (int(v) for v in rng.integers(low, 4, 2))  # at most 6 items of a class
            seeds = [int(s) for s in rng.integers(0, 2**31, EPISODE_SEEDS)]
            request = {"labels": labels, "classes": classes, "n_way": n_way, "n_support": n_support,
                       "n_query": n_query, "seeds": seeds}
            yield Trial(request, None)  # no expected episode: the judge checks the properties

    def judge(self, trial: Trial, answer: dict) -> CheckResult:
        if answer.get("not_implemented"):
            return not_implemented(self.name, HINT_EPISODE)
        if "error" in answer:
            return _exception_result(self.name, answer["error"])
        try:
            episodes = [_episode_arrays(output, trial.request) for output in answer["output"]]
            for episode in episodes:
                _check_episode(episode, trial.request)
            _check_reproducible(episodes[0], _episode_arrays(answer["again"], trial.request))
            _check_randomness(episodes, trial.request)
        except _Wrong as wrong:
            return CheckResult(False, f"{self.name}: {wrong}.", HINT_EPISODE)
        return CheckResult(True, f"{self.name}'s {EPISODE_TRIALS * EPISODE_SEEDS} episodes are valid, class-major, "
                                 "reproducible from their seed and random.")


def _episode_arrays(output, request: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(chosen, support, query) as 1-d integer arrays of the contract's lengths, else `_Wrong`."""
    if not isinstance(output, (tuple, list)) or len(output) != 3:
        raise _Wrong(f"expected a tuple (chosen, support, query) of three index arrays, got {_a(output)}")
    n_way = request["n_way"]
    lengths = {"chosen": n_way, "support": n_way * request["n_support"], "query": n_way * request["n_query"]}
    arrays = []
    for (part, length), value in zip(lengths.items(), output):
        array = _as_array(value)
        if array is None or array.shape != (length,) or array.dtype.kind not in "iu":
            got = f"shape {array.shape} dtype {array.dtype}" if array is not None else _a(value)
            raise _Wrong(f"{part} must be an integer array of shape ({length},), got {got}")
        arrays.append(array.astype(np.int64))
    return tuple(arrays)


def _as_array(value, dtype=None) -> np.ndarray | None:
    """A learner's list, array or tensor as a numpy array; None when it is none of these."""
    try:
        return np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=dtype)
    except (TypeError, ValueError):
        return None


def _check_episode(episode, request: dict) -> None:
    """The properties of one episode: raise `_Wrong` with the first that fails."""
    chosen, support, query = episode
    labels, classes = request["labels"], request["classes"]
    if len(set(chosen.tolist())) < len(chosen):
        raise _Wrong("a class is chosen twice in one episode; draw the n_way classes without replacement")
    if not np.isin(chosen, classes).all():
        outside = int(chosen[~np.isin(chosen, classes)][0])
        raise _Wrong(f"you chose class {outside}, which is not in `classes`; draw the classes from `classes` only")
    items = np.concatenate([support, query])  # (n_way * (n_support + n_query),)
    if ((items < 0) | (items >= len(labels))).any():
        raise _Wrong(f"an index lies outside 0..{len(labels) - 1}; return positions in labels, not labels")
    if len(np.unique(items)) < len(items):
        raise _Wrong("an image appears twice in one episode (support and query together); draw each class's "
                     "n_support + n_query items at once without replacement")
    for part, indices, shots in (("support", support, request["n_support"]), ("query", query, request["n_query"])):
        _check_class_major(part, labels[indices], chosen, shots)


def _check_class_major(part: str, labels: np.ndarray, chosen: np.ndarray, shots: int) -> None:
    """labels (n_way * shots,) of one part must read chosen[0] `shots` times, then chosen[1], ..."""
    if (labels.reshape(len(chosen), shots) == chosen[:, None]).all():  # (n_way, shots) class-major
        return
    if (labels.reshape(shots, len(chosen)) == chosen[None, :]).all():  # (shots, n_way) shot-major
        raise _Wrong(f"your {part} is shot-major (one item of each class, then again); it must be class-major: "
                     f"its first {shots} items are of class chosen[0], the next {shots} of chosen[1], and so on")
    raise _Wrong(f"your {part} is not {shots} items of chosen[0], then {shots} of chosen[1], and so on, in the "
                 "order of the chosen classes")


def _check_reproducible(episode, again) -> None:
    if not all(np.array_equal(first, second) for first, second in zip(episode, again)):
        raise _Wrong("the same seed gave two different episodes; draw everything from `rng` (not np.random.* or "
                     "random.*) so that an episode is reproducible")


def _check_randomness(episodes, request: dict) -> None:
    """Over all seeds every class of `classes` is chosen, and some class's support images change."""
    chosen = np.concatenate([episode[0] for episode in episodes])
    never = [c for c in request["classes"] if c not in chosen]
    if never:
        raise _Wrong(f"class {never[0]} was never chosen in {len(episodes)} episodes; draw the n_way classes at "
                     "random from all of `classes` with rng")
    supports: dict[int, set] = {}  # class -> the sets of support images it got
    for episode_classes, support, _ in episodes:
        for label, items in zip(episode_classes.tolist(), support.reshape(len(episode_classes), -1)):  # (n_support,)
            supports.setdefault(label, set()).add(frozenset(items.tolist()))
    if all(len(drawn) == 1 for drawn in supports.values()):
        raise _Wrong("a class's support is the same images in every episode; draw its items at random with rng")


EPISODE_SAMPLING = EpisodeSampling()


def check_episode_sampler(sample_fn: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`sample_fn(labels (N,) int array, classes list of ints, n_way, n_support, n_query, rng a
    numpy.random.Generator)` must return index arrays `(chosen (n_way,), support (n_way * n_support,),
    query (n_way * n_query,))` with the contract of `mmcourse.experiments.few_shot.sample_episode`,
    judged by its properties over many seeds."""
    return EPISODE_SAMPLING.check(sample_fn, raise_on_fail=raise_on_fail)


# --------------------------------------------------------------------------------------------
# Co-training: each view labels the unlabelled examples it is most confident about
# --------------------------------------------------------------------------------------------


def _confident_labels_reference(probs, unlabelled, per_class):
    return torch.as_tensor(confident_labels(probs.numpy(), unlabelled.numpy(), per_class))  # (N,) int64


def _confident_among_all(probs, unlabelled, per_class):
    """The mistake: class c's most confident unlabelled examples, whatever class they are predicted as."""
    picked = torch.full((len(probs),), UNLABELLED)
    candidates = torch.nonzero(unlabelled).squeeze(1)
    for label in range(probs.shape[1]):
        picked[candidates[probs[candidates, label].argsort(descending=True)[:per_class]]] = label
    return picked


def _confident_labels_everywhere(probs, unlabelled, per_class):
    return _confident_labels_reference(probs, torch.ones_like(unlabelled), per_class)


def _least_confident(probs, unlabelled, per_class):
    picked = torch.full((len(probs),), UNLABELLED)
    predicted = probs.argmax(1)
    for label in range(probs.shape[1]):
        candidates = torch.nonzero(unlabelled & (predicted == label)).squeeze(1)
        picked[candidates[probs[candidates, label].argsort()[:per_class]]] = label
    return picked


CONFIDENT_MISTAKES: dict[str, Callable] = {
    "you pick class c's most probable examples among all unlabelled ones; pick only among those predicted as c "
    "(argmax)": _confident_among_all,
    "you label examples that already have a label; pick only among the unlabelled ones":
        _confident_labels_everywhere,
    "you pick the least confident examples; sort by the probability of c from high to low": _least_confident,
}


def _confident_inputs(gen: torch.Generator) -> tuple:
    count, classes, per_class = random_sizes(gen, 1, 10, 20) + random_sizes(gen, 1, 2, 4) + random_sizes(gen, 1, 2, 4)
    probs = (2 * torch.randn(count, classes, generator=gen)).softmax(1)  # (N, C)
    unlabelled = torch.rand(count, generator=gen) < 0.7  # (N,) True where nobody labelled yet
    return probs, unlabelled, per_class


CONFIDENT_LABELS = Comparison("confident_labels", _confident_labels_reference, _confident_inputs,
                              hint=HINT_CONFIDENT, mistakes=CONFIDENT_MISTAKES)


def check_confident_labels(confident_labels_fn: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`confident_labels_fn(probs (N, C) float tensor, unlabelled (N,) bool tensor, per_class int)` must
    return the (N,) int64 labels of `mmcourse.models.colearning.confident_labels`: class c for the
    `per_class` unlabelled examples predicted as c with the highest probability of c, -1 elsewhere."""
    return CONFIDENT_LABELS.check(confident_labels_fn, raise_on_fail=raise_on_fail)


# --------------------------------------------------------------------------------------------
# The applied exam: six short computations, each verdict with its idea
# --------------------------------------------------------------------------------------------


def _explained(result: CheckResult, explanation: str) -> CheckResult:
    """`result` with " Why: <explanation>" after its sentence."""
    return CheckResult(result.passed, f"{result.message} Why: {explanation}", result.hint)


@dataclass(frozen=True)
class ExamQuestion(Comparison):
    """A `Comparison` whose verdict on an answer ends with the idea behind the question."""

    explanation: str = ""

    def judge(self, trial: Trial, answer: dict) -> CheckResult:
        result = super().judge(trial, answer)
        return _explained(result, self.explanation) if "output" in answer else result


# e1. CLIP's symmetric loss over a 3x3 similarity matrix

def _clip_one_direction(similarity, temperature):
    return F.cross_entropy(similarity / temperature, torch.arange(len(similarity)))


def _clip_temperature_multiplied(similarity, temperature):
    return contrastive_loss(similarity, 1 / temperature)  # logits = similarity * temperature


def _clip_without_temperature(similarity, temperature):
    return contrastive_loss(similarity, 1.0)


def _clip_inputs(gen: torch.Generator) -> tuple:
    similarity = 2 * torch.rand(3, 3, generator=gen) - 1  # (3, 3) cosines in [-1, 1]
    return similarity, float(torch.empty(()).uniform_(0.05, 1.0, generator=gen))


EXAM_CLIP_LOSS = ExamQuestion(
    "exam_clip_loss", contrastive_loss, _clip_inputs, hint=HINT_EXAM_CLIP,
    mistakes={"your loss runs over the rows only (image to caption); average it with the columns (caption to "
              "image)": _clip_one_direction,
              "you multiply by the temperature; divide the similarities by it": _clip_temperature_multiplied,
              "the temperature is missing: divide the similarities by it": _clip_without_temperature},
    explanation="each image must pick out its own caption among the N (rows) and each caption its own image "
                "(columns), and a small temperature sharpens the softmax so that cosines in [-1, 1] can give "
                "confident logits.")


def check_exam_clip_loss(clip_loss_fn: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`clip_loss_fn(similarity (N, N) cosines of image i (rows) and caption j (columns), temperature)`
    must return the scalar mean of the cross-entropies of similarity / temperature over the rows and
    over the columns, the diagonal as targets."""
    return EXAM_CLIP_LOSS.check(clip_loss_fn, raise_on_fail=raise_on_fail)


# e2. XOR with Tensor Fusion's product feature

XOR_PAIRS = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])  # (4, 2) the pairs (a, b)
XOR_EXPLANATION = ("late fusion f(a) + g(b) and a linear layer on [a, b] are additive in a and b and cannot give "
                   "1 at (0, 1) and (1, 0) but 0 at (1, 1); the product a * b that Tensor Fusion adds is what "
                   "XOR = a + b - 2ab needs.")


def xor_features() -> torch.Tensor:
    """(4, 4) Tensor Fusion features z(a, b) of the 1-d inputs [a] and [b], one row per pair of `XOR_PAIRS`."""
    return TensorFusion([1, 1])([XOR_PAIRS[:, :1], XOR_PAIRS[:, 1:]])  # [a, 1] (x) [b, 1] flattened


class XorFusion(Exercise):
    """The answer is four weights w, judged by what w . z(a, b) gives on the four pairs (one trial)."""

    name = "exam_xor_fusion"
    answer = staticmethod(answer_call)

    def draw(self, seed: int) -> Iterator[Trial]:
        targets = (XOR_PAIRS[:, 0] != XOR_PAIRS[:, 1]).float()  # (4,) a XOR b
        yield Trial({"inputs": (), "seed": seed, "weights": None}, targets)

    def judge(self, trial: Trial, answer: dict) -> CheckResult:
        if answer.get("not_implemented"):
            return not_implemented(self.name, HINT_EXAM_XOR)
        if "error" in answer:
            return _exception_result(self.name, answer["error"])
        return _explained(_xor_verdict(answer.get("output"), trial.expected), XOR_EXPLANATION)


def _xor_verdict(answer, targets: torch.Tensor) -> CheckResult:
    name, weights = XorFusion.name, _as_array(answer, np.float32)
    if weights is None or weights.shape != (4,):
        got = f"shape {weights.shape}" if weights is not None else _a(answer)
        return CheckResult(False, f"{name}: expected 4 weights in a list, array or tensor, got {got}.", HINT_EXAM_XOR)
    weights = torch.from_numpy(weights)  # (4,)
    scores = xor_features() @ weights  # (4,) w . z(a, b)
    if torch.allclose(scores, targets, atol=1e-4):
        return CheckResult(True, f"{name}: w . z(a, b) equals a XOR b on all four pairs.")
    got = ", ".join(f"{float(v):.3g}" for v in scores)
    detail = f"w . z(a, b) is [{got}] on (a, b) = (0, 0), (0, 1), (1, 0), (1, 1), expected [0, 1, 1, 0]"
    if torch.allclose(xor_features().flip(1) @ weights, targets, atol=1e-4):
        detail += ("; your weights fit the order [1, b, a, ab], but TensorFusion's features are [ab, a, b, 1] "
                   "(the first input varies slowest)")
    return CheckResult(False, f"{name}: {detail}.", HINT_EXAM_XOR)


EXAM_XOR_FUSION = XorFusion()


def check_exam_xor_fusion(xor_weights_fn: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`xor_weights_fn()` must return 4 weights w with w . z(a, b) = a XOR b for a, b in {0, 1}, z(a, b)
    the Tensor Fusion features of [a] and [b] (`mmcourse.models.fusion.TensorFusion([1, 1])`)."""
    return EXAM_XOR_FUSION.check(xor_weights_fn, raise_on_fail=raise_on_fail)


# e3. The modality gap: the distance between the centroids of the normalised embeddings

def _normalised_gap(image_features, text_features):
    return modality_gap(F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1))


def _gap_of_centroids(image_features, text_features):
    return float((F.normalize(image_features.mean(0), dim=0) - F.normalize(text_features.mean(0), dim=0)).norm())


def _gap_inputs(gen: torch.Generator) -> tuple:
    images, texts, dim = random_sizes(gen, 1, 3, 8) + random_sizes(gen, 1, 3, 8) + random_sizes(gen, 1, 2, 6)
    offset = torch.randn(dim, generator=gen)  # the two cones point in different directions

    def features(count: int, sign: float) -> torch.Tensor:
        norms = torch.empty(count, 1).uniform_(0.3, 4.0, generator=gen)  # (count, 1) very different norms
        return norms * (torch.randn(count, dim, generator=gen) + sign * offset)

    return features(images, 1.0), features(texts, -1.0)


EXAM_MODALITY_GAP = ExamQuestion(
    "exam_modality_gap", _normalised_gap, _gap_inputs, hint=HINT_EXAM_GAP,
    mistakes={"you measure the gap between unnormalised features; L2-normalise every embedding first":
              modality_gap,
              "you normalise the two centroids; normalise each embedding, then average": _gap_of_centroids},
    explanation="CLIP compares embeddings by cosine, so they live on the unit sphere, and Liang et al. found "
                "the images and the texts in two separate cones there, whose centroids stay apart even after "
                "contrastive training.")


def check_exam_modality_gap(gap_fn: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`gap_fn(image_features (N, D), text_features (M, D))` must return, as a float, the distance
    between the centroids of the L2-normalised image and text embeddings (Liang et al. 2022)."""
    return EXAM_MODALITY_GAP.check(gap_fn, raise_on_fail=raise_on_fail)


# e4. A prototypical network's prediction: the nearest class mean

def _protonet_prediction(support, query, n_way, n_support):
    return _squared_distances(query, class_prototypes(support, n_way, n_support)).argmin(1)  # (Q,)


def _nearest_support(support, query, n_way, n_support):
    return _squared_distances(query, support).argmin(1) // n_support  # the class of the nearest support item


def _protonet_shot_major(support, query, n_way, n_support):
    return _squared_distances(query, _prototypes_shot_major(support, n_way, n_support)).argmin(1)


def _protonet_inputs(gen: torch.Generator) -> tuple:
    n_way, dim = random_sizes(gen, 2, 2, 5)
    n_support, queries = random_sizes(gen, 1, 3, 5) + random_sizes(gen, 1, 6, 10)
    centres = torch.randn(n_way, 1, dim, generator=gen)  # (n_way, 1, D)
    support = centres + 0.8 * torch.randn(n_way, n_support, dim, generator=gen)  # (n_way, n_support, D)
    support[:, 0] += 2.0 * torch.randn(n_way, dim, generator=gen)  # an outlier in every class
    query = centres[torch.randint(0, n_way, (queries,), generator=gen), 0] + 0.8 * torch.randn(
        queries, dim, generator=gen)  # (Q, D)
    return support.reshape(n_way * n_support, dim), query, n_way, n_support


EXAM_PROTONET_PREDICTION = ExamQuestion(
    "exam_protonet_prediction", _protonet_prediction, _protonet_inputs, hint=HINT_EXAM_PROTONET,
    mistakes={"you take the class of the nearest single support item (1-NN); compare each query with the class "
              "means (prototypes)": _nearest_support,
              "your support is read shot-major; it is class-major: rows 0..n_support-1 are class 0":
                  _protonet_shot_major},
    explanation="the mean of a class's support embeddings is the point closest on average (in squared "
                "distance) to all of them, so one noisy or unusual shot moves it far less than it moves a "
                "nearest-neighbour decision.")


def check_exam_protonet_prediction(predict_fn: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`predict_fn(support (n_way * n_support, D) class-major, query (Q, D), n_way, n_support)` must
    return the (Q,) int64 class of each query: its nearest prototype in squared Euclidean distance."""
    return EXAM_PROTONET_PREDICTION.check(predict_fn, raise_on_fail=raise_on_fail)


# e5. CLIP's zero-shot prediction: the class whose text embedding is most similar in cosine

def _zero_shot_prediction(image_features, class_text_features):
    return similarity_matrix(image_features, class_text_features).argmax(1)  # (B,)


def _zero_shot_dot_products(image_features, class_text_features):
    return (image_features @ class_text_features.T).argmax(1)


def _zero_shot_inputs(gen: torch.Generator) -> tuple:
    images, classes, dim = random_sizes(gen, 1, 6, 12) + random_sizes(gen, 1, 3, 6) + random_sizes(gen, 1, 2, 6)
    norms = torch.empty(classes, 1).uniform_(0.2, 5.0, generator=gen)  # (C, 1) very different norms
    return torch.randn(images, dim, generator=gen), norms * torch.randn(classes, dim, generator=gen)


EXAM_ZERO_SHOT = ExamQuestion(
    "exam_zero_shot", _zero_shot_prediction, _zero_shot_inputs, hint=HINT_EXAM_ZERO_SHOT,
    mistakes={"you take dot products without normalising; a long text embedding then wins whatever its "
              "direction, so compare cosines": _zero_shot_dot_products},
    explanation="CLIP is trained on cosine similarities, so only the direction of an embedding carries meaning, "
                "and a class name's prompt embedding acts as the weight vector of a linear classifier built "
                "without a single labelled image.")


def check_exam_zero_shot(zero_shot_fn: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`zero_shot_fn(image_features (B, D), class_text_features (C, D))` must return the (B,) int64
    class whose text embedding has the highest cosine similarity with each image."""
    return EXAM_ZERO_SHOT.check(zero_shot_fn, raise_on_fail=raise_on_fail)


# e6. Cross-attention: softmax(Q K^T / sqrt(d)) V

def _cross_attention(queries, keys, values):
    return attention(queries, keys, values)[0]  # (Lq, dv)


def _attention_unscaled(queries, keys, values):
    return _cross_attention(queries * math.sqrt(queries.shape[-1]), keys, values)


def _attention_over_queries(queries, keys, values):
    weights = (queries @ keys.T / math.sqrt(queries.shape[-1])).softmax(0)  # (Lq, Lk) columns sum to one
    return weights @ values


def _attention_inputs(gen: torch.Generator) -> tuple:
    queries, keys, dim, value_dim = random_sizes(gen, 4, 2, 6)
    return (torch.randn(queries, dim, generator=gen).requires_grad_(),
            torch.randn(keys, dim, generator=gen).requires_grad_(),
            torch.randn(keys, value_dim, generator=gen).requires_grad_())


EXAM_CROSS_ATTENTION = ExamQuestion(
    "exam_cross_attention", _cross_attention, _attention_inputs, check_grad=True, hint=HINT_EXAM_ATTENTION,
    mistakes={"your scores are not divided by sqrt(d), the square root of the feature size": _attention_unscaled,
              "your softmax runs over the queries (dim 0); each query's weights must sum to one over the keys":
                  _attention_over_queries},
    explanation="each element of one modality (a query) gathers a weighted average of the other modality's "
                "elements (the values) by how well it matches their keys, and the sqrt(d) keeps the dot "
                "products from saturating the softmax as d grows.")


def check_exam_cross_attention(cross_attention_fn: Callable, raise_on_fail: bool = False) -> CheckResult:
    """`cross_attention_fn(queries (Lq, d), keys (Lk, d), values (Lk, dv))` must return the (Lq, dv)
    output softmax(Q K^T / sqrt(d)) V of `mmcourse.models.layers.attention`: values and gradients."""
    return EXAM_CROSS_ATTENTION.check(cross_attention_fn, raise_on_fail=raise_on_fail)


# What `mmcourse grade` grades: each check of this notebook, by the name its check cell calls.
EXERCISES = {"check_prototypes": PROTOTYPES, "check_squared_distances": SQUARED_DISTANCES,
             "check_episode_sampler": EPISODE_SAMPLING, "check_confident_labels": CONFIDENT_LABELS,
             "check_exam_clip_loss": EXAM_CLIP_LOSS, "check_exam_xor_fusion": EXAM_XOR_FUSION,
             "check_exam_modality_gap": EXAM_MODALITY_GAP, "check_exam_protonet_prediction": EXAM_PROTONET_PREDICTION,
             "check_exam_zero_shot": EXAM_ZERO_SHOT, "check_exam_cross_attention": EXAM_CROSS_ATTENTION}
