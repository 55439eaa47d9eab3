"""The program generator of End-to-End Module Networks (Hu et al. 2017, "Learning to reason:
end-to-end module networks for visual question answering", N2NMN).

A Neural Module Network (Andreas et al. 2016) runs one small network per module along a *layout*:
`count(filter_color[red](scene))` for "how many red things are there?". The first NMN read the
layout off the question with a rule-based parser; N2NMN *learns* to write it. A sequence-to-
sequence model reads the question's words and writes the layout one module at a time, in prefix
(Polish) order from the answer module down (`mmcourse.world.programs.layout_tokens`):

    question  "how many red things are there?"
    layout    count  filter_color[red]  scene  <end>

The model (`ProgramGenerator`), as in the paper's section 3.2:

    encoder   h_1..h_L = LSTM(embed(w_1..w_L))                       word states      (B, L, W)
    decoder   s_t = LSTM(embed(m_{t-1}), s_{t-1}),  m_0 = <start>    decoder state    (B, W)
    attention u_ti = v^T tanh(W_1 h_i + W_2 s_t)                     additive (Bahdanau et al. 2015)
              a_ti = softmax_i(u_ti)                                 over the question's words
              c_t  = sum_i a_ti h_i                                  context          (B, W)
    output    p(m_t | m_<t, q) = softmax(W_3 [s_t; c_t])             over the layout vocabulary

`<pad>` and `<start>` are never predicted (their logits are -inf), so every sampled sequence is a
string of modules ending with `<end>` (or cut at `max_length`). In N2NMN the attention a_t also
gives module t its text input (sum_i a_ti embed(w_i)): `forward(..., return_attention=True)`.

Three ways to train it, the paper's experiments:

1. **Behaviour cloning** of expert layouts (`clone_loss`): teacher forcing and cross-entropy,
   -sum_t log p(m*_t | m*_<t, q), i.e. supervised learning of the parser's output.
2. **REINFORCE** (Williams 1992) on the answer reward, end to end with the module network: the
   layout is a discrete choice, so its gradient is estimated from samples m ~ p(.|q),

       grad E_m[r(m)] = E_m[(r(m) - b) grad log p(m|q)],     log p(m|q) = sum_t log p(m_t | m_<t, q)

   (`sample` gives log p(m|q) with its graph, `reinforce_loss` the surrogate whose gradient this
   is). Any baseline b that does not depend on the sampled m leaves the expectation unchanged and
   can shrink its variance; `MovingAverageBaseline` keeps b at a running mean of past rewards.
3. REINFORCE **from scratch**: the same, without cloning first. The paper finds it far worse:
   random layouts are rarely even valid programs, so the reward rarely says anything.

Decoding a layout back into a program (`programs.program_from_layout`) may fail: a sampled
sequence can end early, go on after its tree is complete, or plug a count into a filter.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..world.programs import LAYOUT_TOKENS
from .encoders import QuestionEncoder, check_tensor, check_token_ids
from .layers import attention_pool, masked_softmax

PAD, START, END = "<pad>", "<start>", "<end>"
SPECIAL_TOKENS = (PAD, START, END)
LAYOUT_LENGTH = 16  # decoder steps: the world's layouts have at most 12 modules, plus <end>


# --------------------------------------------------------------------------------------------
# Layout vocabulary: module tokens <-> ids
# --------------------------------------------------------------------------------------------


class LayoutVocabulary:
    """Ids of the layout tokens: 0 `<pad>`, 1 `<start>`, 2 `<end>`, then every module of `modules`
    (default `programs.LAYOUT_TOKENS`, e.g. "filter_color[red]", "relate[left]", "count")."""

    def __init__(self, modules: Sequence[str] = LAYOUT_TOKENS):
        if isinstance(modules, str) or len(set(modules)) != len(modules) or set(modules) & set(SPECIAL_TOKENS):
            raise ValueError("modules must be distinct module tokens, none of them <pad>, <start> or <end>")
        self.itos: list[str] = list(SPECIAL_TOKENS) + list(modules)
        self.stoi: dict[str, int] = {token: i for i, token in enumerate(self.itos)}
        self.pad_id, self.start_id, self.end_id = (self.stoi[token] for token in SPECIAL_TOKENS)

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def size(self) -> int:
        return len(self.itos)

    def __repr__(self) -> str:
        return f"LayoutVocabulary({len(self)} tokens: 3 special + {len(self) - 3} modules)"

    def encode(self, layouts: Sequence[Sequence[str]], length: int = LAYOUT_LENGTH) -> torch.Tensor:
        """(N, length) int64: each layout's module ids, then `<end>`, then `<pad>` up to `length`."""
        if isinstance(layouts, str) or not isinstance(layouts, Sequence):
            raise TypeError(f"layouts must be a list of layouts (lists of module tokens), got {type(layouts).__name__}")
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive int, got {length!r}")
        out = torch.full((len(layouts), length), self.pad_id, dtype=torch.int64)
        for row, layout in enumerate(layouts):
            ids = [self._id(f"layouts[{row}][{k}]", token) for k, token in enumerate(_token_list(row, layout))]
            if len(ids) + 1 > length:
                raise ValueError(f"layouts[{row}] has {len(ids)} tokens, which with <end> need {len(ids) + 1} "
                                 f"> length={length}; raise length")
            out[row, :len(ids) + 1] = torch.tensor(ids + [self.end_id])
        return out

    def decode(self, ids: torch.Tensor | np.ndarray) -> list[list[str]]:
        """The token lists of (N, T) `ids`, each read up to its first `<end>` (or `<pad>`), which is dropped."""
        ids = torch.as_tensor(ids)
        check_token_ids("ids", check_tensor("ids", ids, 2, floating=False), len(self))
        layouts = []
        for row in ids.tolist():
            tokens = []
            for i in row:
                if i in (self.end_id, self.pad_id):
                    break
                tokens.append(self.itos[i])
            layouts.append(tokens)
        return layouts

    def teacher_inputs(self, targets: torch.Tensor) -> torch.Tensor:
        """Decoder inputs for teacher forcing: `targets` (B, T) shifted right behind `<start>`,
        m_0 = <start>, m_t = m*_{t-1}."""
        start = torch.full_like(targets[:, :1], self.start_id)  # (B, 1)
        return torch.cat([start, targets[:, :-1]], 1)  # (B, T)

    def _id(self, where: str, token) -> int:
        if token not in self.stoi or token in SPECIAL_TOKENS:
            raise ValueError(f"{where} is {token!r}, not a module of the layout vocabulary; expected one "
                             f"of the {len(self) - 3} module tokens such as 'filter_color[red]' or 'count'")
        return self.stoi[token]


def _token_list(row: int, layout) -> Sequence[str]:
    if isinstance(layout, str) or not isinstance(layout, Sequence):
        raise TypeError(f"layouts[{row}] must be a list of module tokens, got {type(layout).__name__}")
    return layout


# --------------------------------------------------------------------------------------------
# The seq2seq program generator
# --------------------------------------------------------------------------------------------


class SampledLayouts(NamedTuple):
    """What `ProgramGenerator.sample` draws: ids (B, T) (`<pad>` after each `<end>`), log p(m|q)
    (B,) summed over the counted steps, and lengths (B,): the counted steps, i.e. the modules plus
    the `<end>` (T when a sequence never ended)."""

    ids: torch.Tensor
    log_probs: torch.Tensor
    lengths: torch.Tensor


class _Encoded(NamedTuple):
    words: torch.Tensor  # (B, L, W) encoder states h_i
    keys: torch.Tensor  # (B, L, W) W_1 h_i, computed once per question
    padding: torch.Tensor  # (B, L) True where there is no word
    question: torch.Tensor  # (B, W) masked mean of the word states


class ProgramGenerator(nn.Module):
    """Question (B, L) word ids -> layout (B, T) module ids: an LSTM encoder, an LSTM decoder with
    additive attention over the encoder states (see the module docstring for the equations)."""

    def __init__(self, question_vocab_size: int, vocabulary: LayoutVocabulary | None = None, width: int = 64,
                 question_pad_id: int = 0):
        super().__init__()
        self.vocabulary = vocabulary if vocabulary is not None else LayoutVocabulary()
        if not isinstance(self.vocabulary, LayoutVocabulary):
            raise TypeError(f"vocabulary must be a LayoutVocabulary, got {type(self.vocabulary).__name__}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 2 or width % 2:
            raise ValueError(f"width must be an even int >= 2, got {width!r}")
        size = len(self.vocabulary)
        self.encoder = QuestionEncoder(question_vocab_size, width, pad_id=question_pad_id)  # bidirectional LSTM
        self.initial = nn.Linear(width, 2 * width)  # (s_0, cell_0) from the question vector
        self.embed = nn.Embedding(size, width, padding_idx=self.vocabulary.pad_id)
        self.decoder = nn.LSTM(width, width, batch_first=True)
        self.attend_words = nn.Linear(width, width, bias=False)  # W_1
        self.attend_state = nn.Linear(width, width)  # W_2
        self.score = nn.Linear(width, 1, bias=False)  # v
        self.out = nn.Linear(2 * width, size)  # W_3
        never = torch.zeros(size, dtype=torch.bool)
        never[[self.vocabulary.pad_id, self.vocabulary.start_id]] = True
        self.register_buffer("never_predicted", never, persistent=False)  # (V,)
        self.width = width

    # -- the pieces -------------------------------------------------------------------------

    def encode(self, question: torch.Tensor) -> tuple[_Encoded, tuple[torch.Tensor, torch.Tensor]]:
        """Encoder states and the decoder's initial LSTM state (s_0, cell_0), each (1, B, W)."""
        words, padding, pooled = self.encoder(question)  # (B, L, W), (B, L), (B, W)
        s0, cell0 = torch.tanh(self.initial(pooled)).chunk(2, -1)  # (B, W) each
        encoded = _Encoded(words, self.attend_words(words), padding, pooled)
        return encoded, (s0.unsqueeze(0).contiguous(), cell0.unsqueeze(0).contiguous())

    def _predict(self, states: torch.Tensor, encoded: _Encoded) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T, V) and attention (B, T, L) from decoder states s_t (B, T, W)."""
        # u_ti = v^T tanh(W_1 h_i + W_2 s_t): (B, T, 1, W) + (B, 1, L, W) -> (B, T, L)
        scores = self.score(torch.tanh(self.attend_state(states).unsqueeze(2) + encoded.keys.unsqueeze(1))).squeeze(-1)
        weights = masked_softmax(scores, encoded.padding.unsqueeze(1))  # a_ti (B, T, L), zero on padding
        context = attention_pool(encoded.words, weights)  # c_t = sum_i a_ti h_i (B, T, W)
        logits = self.out(torch.cat([states, context], -1))  # W_3 [s_t; c_t] (B, T, V)
        return logits.masked_fill(self.never_predicted, float("-inf")), weights

    # -- teacher forcing ----------------------------------------------------------------------

    def forward(self, question: torch.Tensor, layout_in: torch.Tensor,
                return_attention: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T, V) of m_t given the question and the decoder inputs `layout_in` (B, T)
        (`<start>` then the previous tokens: `vocabulary.teacher_inputs`); with
        `return_attention`, also the attention over the words (B, T, L)."""
        self._check_layouts("layout_in", layout_in, question)
        encoded, state = self.encode(question)
        states, _ = self.decoder(self.embed(layout_in), state)  # s_1..s_T (B, T, W), all steps at once
        logits, weights = self._predict(states, encoded)
        return (logits, weights) if return_attention else logits

    def clone_loss(self, question: torch.Tensor, layouts: torch.Tensor) -> torch.Tensor:
        """Behaviour cloning: mean over the non-pad target tokens of -log p(m*_t | m*_<t, q), for
        expert `layouts` (B, T) as `vocabulary.encode` writes them (modules, `<end>`, pads)."""
        self._check_layouts("layouts", layouts, question)
        logits = self(question, self.vocabulary.teacher_inputs(layouts))  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), layouts.flatten(), ignore_index=self.vocabulary.pad_id)

    def log_prob(self, question: torch.Tensor, layouts: torch.Tensor) -> torch.Tensor:
        """log p(m|q) = sum_t log p(m_t | m_<t, q) (B,) of given `layouts` (B, T), pads not counted."""
        self._check_layouts("layouts", layouts, question)
        logits = self(question, self.vocabulary.teacher_inputs(layouts))  # (B, T, V)
        counted = layouts != self.vocabulary.pad_id  # (B, T)
        # <pad> has logit -inf: read <end>'s log-probability there instead, then leave it out
        targets = layouts.masked_fill(~counted, self.vocabulary.end_id)
        step = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # log p(m_t | m_<t, q) (B, T)
        return (step * counted).sum(1)

    # -- sampling -----------------------------------------------------------------------------

    def sample(self, question: torch.Tensor, greedy: bool = False, max_length: int = LAYOUT_LENGTH,
               generator: torch.Generator | None = None) -> SampledLayouts:
        """Write a layout for each question, one module per step: m_t ~ p(.|m_<t, q) (or its
        argmax when `greedy`). A sequence stops at its `<end>`; later positions are `<pad>` and do
        not count in its log-probability. Draws come from `generator` (on the question's device)
        when given, so the same generator state gives the same layouts. Runs with autograd when
        it is enabled, so `log_probs` can carry REINFORCE's gradient."""
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        _check_generator(generator, question)
        vocabulary = self.vocabulary
        encoded, state = self.encode(question)
        batch = question.shape[0]
        token = torch.full((batch,), vocabulary.start_id, dtype=torch.int64, device=question.device)  # m_0
        alive = torch.ones(batch, dtype=torch.bool, device=question.device)  # no <end> yet
        ids, log_probs = [], []
        for _ in range(max_length):
            states, state = self.decoder(self.embed(token).unsqueeze(1), state)  # (B, 1, W)
            logits, _ = self._predict(states, encoded)
            step = logits.squeeze(1).log_softmax(-1)  # log p(. | m_<t, q) (B, V)
            token = step.argmax(-1) if greedy else torch.multinomial(step.exp(), 1, generator=generator).squeeze(1)
            token = token.masked_fill(~alive, vocabulary.pad_id)  # finished sequences write <pad>
            ids.append(token)
            log_probs.append(step.gather(1, token.unsqueeze(1)).squeeze(1).masked_fill(~alive, 0.0))
            alive = alive & (token != vocabulary.end_id)
            if not alive.any():
                break
        ids_t = torch.stack(ids, 1)  # (B, steps)
        ids_t = F.pad(ids_t, (0, max_length - ids_t.shape[1]), value=vocabulary.pad_id)  # (B, max_length)
        return SampledLayouts(ids_t, torch.stack(log_probs, 1).sum(1), (ids_t != vocabulary.pad_id).sum(1))

    # -- checks -------------------------------------------------------------------------------

    def _check_layouts(self, name: str, layouts: torch.Tensor, question: torch.Tensor) -> None:
        check_token_ids(name, check_tensor(name, layouts, 2, floating=False), len(self.vocabulary))
        check_tensor("question", question, 2, floating=False)
        if layouts.shape[0] != question.shape[0]:
            raise ValueError(f"{name} has {layouts.shape[0]} rows (shape {tuple(layouts.shape)}) but question has "
                             f"{question.shape[0]} (shape {tuple(question.shape)}); expected one layout per question")


def _check_generator(generator: torch.Generator | None, question: torch.Tensor) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != question.device.type:
        raise ValueError(f"generator is on {generator.device} but question is on {question.device}; "
                         f"make it with torch.Generator(device=question.device)")


# --------------------------------------------------------------------------------------------
# REINFORCE
# --------------------------------------------------------------------------------------------


def reinforce_loss(log_probs: torch.Tensor, rewards: torch.Tensor, baseline: float | torch.Tensor = 0.0) -> torch.Tensor:
    """The REINFORCE surrogate -mean_b[(r_b - b) log p(m_b|q_b)]: its gradient is minus the
    score-function estimate of grad E[r] (Williams 1992). `log_probs` (B,) carry the policy's
    graph; `rewards` (B,) and `baseline` (a number, a 0-dim or a (B,) tensor) are constants: no
    gradient flows into them."""
    check_tensor("log_probs", log_probs, 1, floating=True)
    rewards = torch.as_tensor(rewards, dtype=log_probs.dtype, device=log_probs.device)
    if rewards.shape != log_probs.shape:
        raise ValueError(f"rewards has shape {tuple(rewards.shape)}; expected {tuple(log_probs.shape)}, one per log_prob")
    baseline = torch.as_tensor(baseline, dtype=log_probs.dtype, device=log_probs.device)
    if baseline.dim() > 1 or (baseline.dim() == 1 and baseline.shape != log_probs.shape):
        raise ValueError(f"baseline has shape {tuple(baseline.shape)}; expected a number or {tuple(log_probs.shape)}")
    advantage = (rewards - baseline).detach()  # (r - b): a constant weight on each sample's log-probability
    return -(advantage * log_probs).mean()


class MovingAverageBaseline:
    """b <- decay * b + (1 - decay) * mean(r): a running mean of past rewards, the usual REINFORCE
    baseline. `update(rewards)` returns the baseline to use for *this* batch, the one computed from
    earlier batches only (0 before any), so b never depends on the samples it weighs; then it moves.
    The first batch sets b to its mean reward (no pull towards the initial 0)."""

    def __init__(self, decay: float = 0.9):
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
            raise ValueError(f"decay must be a number in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.value: float | None = None  # None until the first batch

    def __repr__(self) -> str:
        return f"MovingAverageBaseline(decay={self.decay}, value={self.value})"

    def update(self, rewards: torch.Tensor | Sequence[float]) -> float:
        rewards = rewards.detach().cpu() if isinstance(rewards, torch.Tensor) else rewards  # MPS has no float64
        mean = float(torch.as_tensor(rewards, dtype=torch.float64).mean())
        if math.isnan(mean):
            raise ValueError("rewards is empty or holds nan; expected at least one finite reward")
        used = 0.0 if self.value is None else self.value
        self.value = mean if self.value is None else self.decay * self.value + (1 - self.decay) * mean
        return used
