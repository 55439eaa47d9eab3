"""Hierarchical question-image co-attention (Lu et al. 2016), notebook 04, lecture section 5.

Stacked attention lets the question choose where to look in the image; co-attention also lets the
image choose which words to read. The question is read at three levels (words, phrases, the whole
question) and at each level one `ParallelCoAttention` attends over the image cells and the words
at once, both guided by an affinity matrix between every word and every cell.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .encoders import check_token_ids
from .layers import attention_pool, masked_softmax
from .vqa import GridFeatures, check_vqa_inputs

LEVELS = ("word", "phrase", "question")
NGRAMS = (1, 2, 3)  # unigram, bigram and trigram convolutions of the phrase level


class CoAttended(NamedTuple):
    """What one level of co-attention reads: attended question q^ and image v^ (B, D), the attention
    over words a^q (B, L) and over cells a^v (B, N), and the affinity C (B, L, N)."""
    question: torch.Tensor
    image: torch.Tensor
    question_attention: torch.Tensor
    image_attention: torch.Tensor
    affinity: torch.Tensor


def _question_padding(question: torch.Tensor, vocab_size: int, pad_id: int) -> torch.Tensor:
    check_token_ids("question", question, vocab_size)
    padding = question == pad_id  # (B, L), True where there is no word
    if padding.all(1).any():
        raise ValueError("question has a row made only of padding; every question needs at least one word")
    return padding


class ParallelCoAttention(nn.Module):
    """One level of parallel co-attention (Lu et al. 2016, section 3.3), in the paper's notation with
    Q = question features (d x L) and V = image features (d x N) as columns:

        C   = tanh(Q^T W_b V)                      affinity of every word with every cell (L x N)
        H^v = tanh(W_v V + (W_q Q) C)              each cell, plus the words that match it
        H^q = tanh(W_q Q + (W_v V) C^T)            each word, plus the cells that match it
        a^v = softmax(w_hv^T H^v),  a^q = softmax(w_hq^T H^q)
        v^  = sum_n a^v_n v_n,      q^  = sum_t a^q_t q_t

    Padded words have a zero row in C (they say nothing about the cells) and exactly zero a^q.
    """

    def __init__(self, width: int, attention_width: int):
        super().__init__()
        self.affinity = nn.Linear(width, width, bias=False)  # W_b
        self.image = nn.Linear(width, attention_width, bias=False)  # W_v
        self.question = nn.Linear(width, attention_width, bias=False)  # W_q
        self.image_score = nn.Linear(attention_width, 1, bias=False)  # w_hv
        self.question_score = nn.Linear(attention_width, 1, bias=False)  # w_hq

    def forward(self, words: torch.Tensor, padding: torch.Tensor, cells: torch.Tensor) -> CoAttended:
        """words (B, L, D), padding (B, L) True at padded words, cells (B, N, D) -> `CoAttended`."""
        # C = tanh(Q^T W_b V): C[t, n] = q_t^T W_b v_n; padded words get a zero row
        affinity = torch.tanh(words @ self.affinity(cells).transpose(1, 2))  # (B, L, N)
        affinity = affinity.masked_fill(padding[:, :, None], 0.0)
        projected_words, projected_cells = self.question(words), self.image(cells)  # W_q Q (B, L, k), W_v V (B, N, k)
        # H^v = tanh(W_v V + (W_q Q) C): column n adds sum_t C[t, n] W_q q_t
        image_hidden = torch.tanh(projected_cells + affinity.transpose(1, 2) @ projected_words)  # (B, N, k)
        # H^q = tanh(W_q Q + (W_v V) C^T): column t adds sum_n C[t, n] W_v v_n
        question_hidden = torch.tanh(projected_words + affinity @ projected_cells)  # (B, L, k)
        image_attention = self.image_score(image_hidden).squeeze(-1).softmax(-1)  # a^v: (B, N)
        question_attention = masked_softmax(self.question_score(question_hidden).squeeze(-1), padding)  # a^q: (B, L)
        return CoAttended(attention_pool(words, question_attention), attention_pool(cells, image_attention),
                          question_attention, image_attention, affinity)


class HierarchicalCoAttention(nn.Module):
    """Hierarchical question-image co-attention (Lu et al. 2016, "Hierarchical Question-Image
    Co-Attention for Visual Question Answering"), parallel variant.

    The image is the CNN feature grid (`GridFeatures`, N = h * w cells). The question is read at three levels
    (`question_levels`): word embeddings; phrases, the max over unigram, bigram and trigram
    convolutions at each word; and the question, an LSTM over the phrases. Each level has its own
    `ParallelCoAttention` (`self.coattention[level]`). The answer climbs the levels (eqs. 7-10):

        h^w = tanh(W_w (q^w + v^w)),  h^p = tanh(W_p [q^p + v^p; h^w]),  h^s = tanh(W_s [q^s + v^s; h^p])
        logits = W_h h^s

    Questions are right-padded (as `Tokenizer.encode_batch` writes them), so the forward-looking
    n-grams and the one-directional LSTM read the same features at real words whatever the padding.
    `forward` returns "logits", "image_attention" (B, 3, N) and "question_attention" (B, 3, L), the
    levels in the order of `LEVELS`, and "grid" (h, w).
    """

    def __init__(self, vocab_size: int, num_answers: int, feature_width: int, width: int = 64,
                 attention_width: int | None = None, pad_id: int = 0):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width, padding_idx=pad_id)
        self.ngram_convs = nn.ModuleList(nn.Conv1d(width, width, size) for size in NGRAMS)  # W_c^s
        self.question_lstm = nn.LSTM(width, width, batch_first=True)
        self.grid_features = GridFeatures(feature_width, width)
        self.coattention = nn.ModuleDict({level: ParallelCoAttention(width, attention_width or width)
                                          for level in LEVELS})
        self.word_answer = nn.Linear(width, width)  # W_w
        self.phrase_answer = nn.Linear(2 * width, width)  # W_p
        self.question_answer = nn.Linear(2 * width, width)  # W_s
        self.classifier = nn.Linear(width, num_answers)  # W_h
        self.vocab_size, self.pad_id = vocab_size, pad_id

    def question_levels(self, question: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(B, L) ids -> ({level: (B, L, D) features}, padding (B, L) True at padded words)."""
        padding = _question_padding(question, self.vocab_size, self.pad_id)
        words = self.embed(question).masked_fill(padding[:, :, None], 0.0)  # q^w: (B, L, D), zero at padding
        sequence = words.transpose(1, 2)  # (B, D, L) for the 1-D convolutions
        # q^p_{s,t} = tanh(W_c^s q^w_{t:t+s-1}), zero-padded at the end; q^p_t = max_s q^p_{s,t}
        ngrams = [torch.tanh(conv(F.pad(sequence, (0, size - 1))))
                  for conv, size in zip(self.ngram_convs, NGRAMS)]  # each (B, D, L)
        phrases = torch.stack(ngrams).amax(0).transpose(1, 2)  # q^p: (B, L, D)
        sentence, _ = self.question_lstm(phrases)  # q^s_t = LSTM(q^p_t): (B, L, D)
        return {"word": words, "phrase": phrases, "question": sentence}, padding

    def forward(self, grid: torch.Tensor, question: torch.Tensor) -> dict[str, torch.Tensor | tuple[int, int]]:
        check_vqa_inputs(question, grid=grid, feature_width=self.grid_features.projection.in_features)
        levels, padding = self.question_levels(question)
        cells, grid_shape = self.grid_features(grid)  # V: (B, N, D)
        word, phrase, sentence = (self.coattention[level](levels[level], padding, cells) for level in LEVELS)
        word_hidden = torch.tanh(self.word_answer(word.question + word.image))  # h^w: (B, D)
        phrase_hidden = torch.tanh(self.phrase_answer(
            torch.cat([phrase.question + phrase.image, word_hidden], -1)))  # h^p: (B, D)
        sentence_hidden = torch.tanh(self.question_answer(
            torch.cat([sentence.question + sentence.image, phrase_hidden], -1)))  # h^s: (B, D)
        return {"logits": self.classifier(sentence_hidden),  # (B, num_answers)
                "image_attention": torch.stack([word.image_attention, phrase.image_attention,
                                                sentence.image_attention], 1),  # (B, 3, N)
                "question_attention": torch.stack([word.question_attention, phrase.question_attention,
                                                   sentence.question_attention], 1),  # (B, 3, L)
                "grid": grid_shape}
