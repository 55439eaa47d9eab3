"""DeViSE: a Deep Visual-Semantic Embedding model (Frome et al. 2013).

DeViSE is the lecture's first coordinated representation: the image encoder is trained to map an
image *into a fixed word-vector space*, next to the vector of its label's name. The label space
comes from language alone, so a wrong guess tends to be a semantically close one (a "cat" for a
"dog" rather than a "car"), and a label never seen with an image can still be scored.

Two parts:

1. Word vectors learned from a corpus of the world's captions. Frome et al. used skip-gram
   (word2vec, Mikolov et al. 2013); here they come from the count-based route that Levy & Goldberg
   (2014, "Neural word embedding as implicit matrix factorization") showed to be closely related:
   skip-gram with negative sampling implicitly factorises a word-context matrix of pointwise mutual
   information (PMI) shifted by log k. We build that matrix explicitly, clip it at zero (positive
   PMI, PPMI) and factorise it with a truncated SVD, U_d sqrt(S_d), the "eigenvalue weighting"
   Levy et al. (2015) recommend. Deterministic: no sampling, and the sign of every SVD component is
   fixed.
2. `DeViSE`: image encoder -> linear map M into the label space; the score of label j for image x
   is t_j . M f(x), and training uses Frome et al.'s hinge rank loss

       loss(x, y) = sum_{j != y} max(0, margin - t_y . M f(x) + t_j . M f(x)),   margin = 0.1,

   averaged over the batch. The label vectors t_j (C, D) are a buffer: they are never trained.

What the world's captions can teach: every colour word fills the same slots ("a small _ circle"),
so the colour vectors form one tight cluster, as do the shape words; only sampling noise in the
counts tells red from blue. A small `dim` keeps the cluster and loses the noise (cosine near 1
between colours at dim 16), a larger one (32 of the ~50 caption words) keeps enough of it for
DeViSE to separate them, with its mistakes staying inside the cluster.
"""
from __future__ import annotations

import numbers
import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .encoders import check_tensor

DEFAULT_MARGIN = 0.1  # Frome et al.'s margin
_WORD = re.compile(r"[a-z0-9]+")  # the world's words, punctuation marks left out


# --------------------------------------------------------------------------------------------
# Word vectors: PPMI + truncated SVD
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value
class WordVectors:
    """Unit-length word vectors: row i of `matrix` (V, dim) is the vector of `words[i]`."""

    words: tuple[str, ...]
    matrix: np.ndarray  # (V, dim) float32, every non-zero row L2-normalised

    def __post_init__(self):
        if self.matrix.ndim != 2 or len(self.matrix) != len(self.words):
            raise ValueError(f"matrix has shape {self.matrix.shape}; expected ({len(self.words)}, dim), "
                             f"one row per word")

    def index(self, word: str) -> int:
        """The row of `word` in `matrix`."""
        if word not in self.words:
            raise ValueError(f"word={word!r} is not in the vocabulary of {len(self.words)} words "
                             f"(those seen at least min_count times in the corpus)")
        return self.words.index(word)

    def vector(self, word: str) -> np.ndarray:
        """(dim,) the unit vector of `word`."""
        return self.matrix[self.index(word)]

    def similarity(self, first: str, second: str) -> float:
        """Cosine similarity of two words."""
        return float(self.vector(first) @ self.vector(second))

    def nearest(self, word: str, k: int = 5) -> list[tuple[str, float]]:
        """The `k` words most cosine-similar to `word` (itself excluded), most similar first."""
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k < len(self.words):
            raise ValueError(f"k={k!r} must be an int in [1, {len(self.words) - 1}] (the other words)")
        query = self.index(word)
        similarities = self.matrix @ self.matrix[query]  # (V,)
        order = [i for i in np.argsort(-similarities, kind="stable") if i != query][:k]
        return [(self.words[i], float(similarities[i])) for i in order]

    def label_vectors(self, labels: Sequence[str]) -> torch.Tensor:
        """(C, dim) float32 tensor of the vectors of `labels`, in order: DeViSE's label space."""
        if isinstance(labels, str) or not labels:
            raise ValueError(f"labels must be a non-empty sequence of words, got {labels!r}")
        return torch.from_numpy(np.stack([self.vector(label) for label in labels]))


def word_vectors(corpus: Sequence[str], dim: int = 16, window: int = 2, min_count: int = 1) -> WordVectors:
    """Word vectors of the words of `corpus` (a list of sentences) by PPMI + truncated SVD.

    Two words co-occur when at most `window` words apart in one sentence; punctuation marks are
    dropped first. Words seen fewer than `min_count` times are left out (as words and as contexts).
    """
    sentences = _tokenized(corpus)
    for name, value in (("dim", dim), ("window", window), ("min_count", min_count)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive int")
    frequency = Counter(word for sentence in sentences for word in sentence)
    words = tuple(sorted(word for word, count in frequency.items() if count >= min_count))
    if dim > len(words):
        raise ValueError(f"dim={dim} exceeds the vocabulary of {len(words)} words kept from the corpus; "
                         f"expected dim <= {len(words)}")
    counts = _cooccurrence_counts(sentences, words, window)  # (V, V)
    vectors = _truncated_svd(_ppmi(counts), dim)  # (V, dim)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # (V, 1)
    return WordVectors(words, (vectors / np.maximum(norms, 1e-12)).astype(np.float32))


def _tokenized(corpus: Sequence[str]) -> list[list[str]]:
    """Each sentence as its lower-case words; punctuation marks are dropped."""
    if isinstance(corpus, str) or not isinstance(corpus, Sequence):
        raise TypeError(f"corpus must be a list of sentences (str), got {type(corpus).__name__}")
    for i, text in enumerate(corpus):
        if not isinstance(text, str):
            raise TypeError(f"corpus[{i}] is a {type(text).__name__}; expected a str")
    sentences = [_WORD.findall(text.lower()) for text in corpus]
    if not any(sentences):
        raise ValueError(f"corpus holds no words ({len(corpus)} sentences); expected at least one word")
    return sentences


def _cooccurrence_counts(sentences: list[list[str]], words: tuple[str, ...], window: int) -> np.ndarray:
    """(V, V) symmetric counts: entry [a, b] counts b within `window` words of a (a word-context matrix)."""
    position = {word: i for i, word in enumerate(words)}
    counts = np.zeros((len(words), len(words)), dtype=np.float64)
    for sentence in sentences:
        ids = [position[word] for word in sentence if word in position]
        for i, centre in enumerate(ids):
            for context in ids[max(0, i - window):i]:  # each pair once, then mirrored
                counts[centre, context] += 1
                counts[context, centre] += 1
    return counts


def _ppmi(counts: np.ndarray) -> np.ndarray:
    """(V, V) positive pointwise mutual information, max(0, log p(w, c) / (p(w) p(c)))."""
    total = counts.sum()
    if total == 0:
        raise ValueError("corpus has no two words within the window of each other; nothing co-occurs")
    word_totals = counts.sum(1, keepdims=True)  # (V, 1)
    context_totals = counts.sum(0, keepdims=True)  # (1, V)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(counts * total / (word_totals * context_totals))
    return np.where(counts > 0, np.maximum(pmi, 0.0), 0.0)


def _truncated_svd(matrix: np.ndarray, dim: int) -> np.ndarray:
    """(V, dim) U_d sqrt(S_d) of the SVD of `matrix`, each component's sign fixed so that its
    largest-magnitude entry is positive (the SVD alone leaves the signs arbitrary)."""
    u, s, _ = np.linalg.svd(matrix)
    u = u[:, :dim]  # (V, dim)
    signs = np.sign(u[np.abs(u).argmax(0), np.arange(dim)])  # (dim,)
    return u * np.where(signs == 0, 1.0, signs) * np.sqrt(s[:dim])


# --------------------------------------------------------------------------------------------
# DeViSE
# --------------------------------------------------------------------------------------------


class DeViSE(nn.Module):
    """Image encoder -> linear map into a fixed label-embedding space.

    `image_encoder` maps (B, 3, H, W) images to (B, F) features (every encoder of
    `mmcourse.models.encoders` does, with F = its `.width`); `label_vectors` (C, D) are the word
    vectors of the class names, kept fixed as a buffer.
    """

    def __init__(self, image_encoder: nn.Module, label_vectors: torch.Tensor, feature_dim: int | None = None):
        super().__init__()
        check_tensor("label_vectors", label_vectors, 2, floating=True)
        feature_dim = getattr(image_encoder, "width", None) if feature_dim is None else feature_dim
        if isinstance(feature_dim, bool) or not isinstance(feature_dim, numbers.Integral) or feature_dim < 1:
            raise ValueError(f"feature_dim={feature_dim!r} must be a positive int: the width of the image "
                             f"encoder's features (pass it when the encoder has no .width)")
        self.image_encoder = image_encoder
        self.project = nn.Linear(feature_dim, label_vectors.shape[1])  # M in Frome et al.
        self.register_buffer("label_vectors", label_vectors.detach().clone().float())  # (C, D)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D) image embeddings in the label space."""
        return self.project(self.image_encoder(images))

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C) dot products of the image embeddings with every label vector."""
        return self(images) @ self.label_vectors.T

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(B,) index of the best-scoring label."""
        return self.scores(images).argmax(1)


def hinge_rank_loss(image_embeddings: torch.Tensor, label_vectors: torch.Tensor, targets: torch.Tensor,
                    margin: float = DEFAULT_MARGIN) -> torch.Tensor:
    """Frome et al.'s loss: sum over wrong labels j of max(0, margin - t_y . v + t_j . v), mean over the batch.

    image_embeddings (B, D), label_vectors (C, D), targets (B,) label indices in [0, C).
    """
    check_tensor("image_embeddings", image_embeddings, 2, floating=True)
    check_tensor("label_vectors", label_vectors, 2, floating=True)
    check_tensor("targets", targets, 1, floating=False)
    if image_embeddings.shape[1] != label_vectors.shape[1]:
        raise ValueError(f"image_embeddings has shape {tuple(image_embeddings.shape)} and label_vectors "
                         f"{tuple(label_vectors.shape)}; expected the same dimension D in both")
    if len(targets) != len(image_embeddings):
        raise ValueError(f"targets has shape {tuple(targets.shape)}; expected ({len(image_embeddings)},), "
                         f"one label per image embedding")
    if len(targets) and not 0 <= int(targets.min()) <= int(targets.max()) < len(label_vectors):
        raise ValueError(f"targets holds labels in [{int(targets.min())}, {int(targets.max())}]; expected "
                         f"indices in [0, {len(label_vectors)}) into label_vectors")
    if isinstance(margin, bool) or not isinstance(margin, numbers.Real) or margin < 0:
        raise ValueError(f"margin={margin!r} must be a non-negative number")
    scores = image_embeddings @ label_vectors.T  # (B, C)
    true_scores = scores.gather(1, targets[:, None])  # (B, 1)
    violations = (margin - true_scores + scores).clamp_min(0)  # (B, C)
    wrong = torch.ones_like(scores, dtype=torch.bool).scatter_(1, targets[:, None], False)  # (B, C)
    return (violations * wrong).sum(1).mean()


def devise_loss(model: DeViSE, batch: tuple[torch.Tensor, torch.Tensor],
                margin: float = DEFAULT_MARGIN) -> torch.Tensor:
    """`hinge_rank_loss` of `model` on a batch `(images, targets)`: a loss_fn for `mmcourse.train.fit`."""
    images, targets = batch
    return hinge_rank_loss(model(images), model.label_vectors, targets, margin)
