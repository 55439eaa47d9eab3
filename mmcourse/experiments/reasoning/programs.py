"""Notebook 04: learning to write programs (Hu et al. 2017's program generator, N2NMN).

A `models.program_generator.ProgramGenerator` reads a question and writes its layout. Three ways to
train it, the paper's three rows:

- `clone`: behaviour cloning of the expert layouts (`programs.layout_tokens` of the world's
  programs) with teacher forcing, through `mmcourse.train.fit`, on as many questions as given;
- `reinforce`: REINFORCE on a reward the caller supplies, `reward_fn(token_lists, indices)` (the
  module network's answer correctness in the notebook; `answer_reward` is a symbolic stand-in
  that runs the layout with the world's executor), after cloning or from scratch;
- measured by `exact_match` (the greedy layout is the expert's), `layout_validity` (the greedy
  layout is a well-formed, well-typed program) and `mean_reward` (the reward of greedy layouts,
  answer accuracy with `answer_reward`, or with `module_network_reward`: a trained module network
  runs the layout, which is NMN v2).

`layout_data` turns world questions into the (question ids, layout ids) tensors all of these read.
`decode_programs` is the check any reward function needs: a layout that `program_from_layout`
refuses (it ends early, goes on after its tree, plugs a count into a filter) has no program, and
gets reward 0.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from ...device import get_device
from ...models.encoders import check_tensor
from ...models.program_generator import (LAYOUT_LENGTH, LayoutVocabulary, MovingAverageBaseline, ProgramGenerator,
                                         reinforce_loss)
from ...models.nmn import NeuralModuleNetwork, encode_programs
from ...train import History, fit, model_device, to_device
from ...world.datasets import QuestionDataset
from ...world.language import default_tokenizer
from ...world.programs import Question, execute, layout_tokens, program_from_layout
from ...world.scene import Scene, check_count, check_seed
from .features import FeatureQuestions

QUESTION_LENGTH = 24  # words: the world's questions have at most 17
EVAL_BATCH = 512  # questions per greedy decoding pass

# reward_fn(token_lists, indices) -> (B,) rewards: `indices` (B,) are the rows of `questions` sampled
RewardFn = Callable[[list[list[str]], torch.Tensor], "torch.Tensor | Sequence[float]"]


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def layout_data(questions: Sequence[Question], vocabulary: LayoutVocabulary | None = None,
                question_length: int = QUESTION_LENGTH,
                layout_length: int = LAYOUT_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    """(question ids (N, question_length), expert layout ids (N, layout_length)) of world questions,
    words by `default_tokenizer()`, layouts by `vocabulary` (default `LayoutVocabulary()`)."""
    if isinstance(questions, Question) or not isinstance(questions, Sequence):
        raise TypeError(f"questions must be a list of Question, got {type(questions).__name__}")
    return _encode_pairs([q.text for q in questions], [q.program for q in questions], vocabulary,
                         question_length, layout_length)


def _encode_pairs(texts: Sequence[str], programs: Sequence[Sequence[dict]], vocabulary: LayoutVocabulary | None,
                  question_length: int, layout_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    vocabulary = vocabulary if vocabulary is not None else LayoutVocabulary()
    words = torch.from_numpy(default_tokenizer().encode_batch(list(texts), question_length))
    return words, vocabulary.encode([layout_tokens(program) for program in programs], layout_length)


def new_generator(width: int = 64, seed: int = 0) -> ProgramGenerator:
    """A freshly initialised program generator for the world's questions (weights fixed by `seed`)."""
    torch.manual_seed(check_seed(seed))
    return ProgramGenerator(default_tokenizer().vocab_size, LayoutVocabulary(), width=width,
                            question_pad_id=default_tokenizer().pad_id)


def decode_programs(token_lists: Sequence[Sequence[str]]) -> list[list[dict] | None]:
    """The program of each layout, or None where `program_from_layout` refuses it (reward 0)."""
    decoded: list[list[dict] | None] = []
    for tokens in token_lists:
        try:
            decoded.append(program_from_layout(list(tokens)))
        except ValueError:
            decoded.append(None)
    return decoded


def answer_reward(scenes: Sequence[Scene], answers: Sequence[str]) -> RewardFn:
    """A symbolic stand-in for the module network: the reward of layout b for question `indices[b]`
    is 1 when it is a program that the world's executor runs on `scenes[i]` to `answers[i]`, else 0
    (invalid layouts and `unique` on anything but one object included)."""
    if len(scenes) != len(answers):
        raise ValueError(f"scenes has {len(scenes)} entries but answers has {len(answers)}; expected one per question")

    def reward(token_lists: list[list[str]], indices: torch.Tensor) -> torch.Tensor:
        return torch.tensor([_answers(program, scenes[i], answers[i])
                             for program, i in zip(decode_programs(token_lists), indices.tolist())])

    return reward


def _answers(program: list[dict] | None, scene: Scene, answer: str) -> float:
    if program is None:
        return 0.0
    try:
        return float(execute(program, scene) == answer)
    except ValueError:  # AmbiguousReference: `unique` met zero or several objects
        return 0.0


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def clone(generator: ProgramGenerator, questions: torch.Tensor, layouts: torch.Tensor, *, epochs: int,
          batch_size: int = 64, lr: float = 3e-3, seed: int = 0, device: str | torch.device | None = None,
          progress: bool = True) -> History:
    """Behaviour cloning: minimise `generator.clone_loss` (teacher forcing, cross-entropy on the
    expert layouts) with `fit`, batches shuffled by `seed`. Returns fit's History (train_loss per epoch)."""
    _check_pairs(questions, layouts)
    loader = _loader(TensorDataset(questions, layouts), batch_size, seed)
    return fit(generator, loader, lambda model, batch: model.clone_loss(*batch), epochs=epochs, lr=lr,
               grad_clip=5.0, device=device, progress=progress)


def reinforce(generator: ProgramGenerator, questions: torch.Tensor, reward_fn: RewardFn, *, epochs: int,
              batch_size: int = 64, lr: float = 1e-3, seed: int = 0, baseline_decay: float = 0.9,
              max_length: int = LAYOUT_LENGTH, device: str | torch.device | None = None,
              progress: bool = True) -> History:
    """REINFORCE: per batch, sample a layout per question, score it with `reward_fn(token_lists,
    indices)` (indices: the rows of `questions`), and step on `reinforce_loss` with a
    `MovingAverageBaseline`. Shuffling and sampling are fixed by `seed`. Returns fit's History, with
    the mean sampled "reward" and the share of "valid" layouts per epoch."""
    check_tensor("questions", questions, 2, floating=False)
    device = get_device(device)
    sampling = torch.Generator(device=device).manual_seed(check_seed(seed))
    baseline = MovingAverageBaseline(baseline_decay)

    def loss_fn(model: ProgramGenerator, batch: tuple[torch.Tensor, torch.Tensor]):
        words, indices = batch
        sampled = model.sample(words, greedy=False, max_length=max_length, generator=sampling)
        token_lists = model.vocabulary.decode(sampled.ids)
        rewards = _rewards(reward_fn(token_lists, indices.cpu()), len(token_lists), device)
        valid = sum(program is not None for program in decode_programs(token_lists)) / len(token_lists)
        loss = reinforce_loss(sampled.log_probs, rewards, baseline.update(rewards))
        return loss, {"reward": rewards.mean(), "valid": valid}

    loader = _loader(TensorDataset(questions, torch.arange(len(questions))), batch_size, seed)
    return fit(generator, loader, loss_fn, epochs=epochs, lr=lr, grad_clip=5.0, device=device, progress=progress)


def _rewards(rewards, batch: int, device: torch.device) -> torch.Tensor:
    rewards = torch.as_tensor(rewards, dtype=torch.float32).to(device)
    if rewards.shape != (batch,):
        raise ValueError(f"reward_fn returned shape {tuple(rewards.shape)}; expected ({batch},), one reward per layout")
    return rewards


def _loader(dataset: TensorDataset, batch_size: int, seed: int) -> DataLoader:
    batch_size = check_count("batch_size", batch_size, 1)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(check_seed(seed)))


def _check_pairs(questions: torch.Tensor, layouts: torch.Tensor) -> None:
    check_tensor("questions", questions, 2, floating=False)
    check_tensor("layouts", layouts, 2, floating=False)
    if len(questions) != len(layouts):
        raise ValueError(f"questions has {len(questions)} rows but layouts has {len(layouts)}; "
                         f"expected one expert layout per question")


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def greedy_layouts(generator: ProgramGenerator, questions: torch.Tensor,
                   max_length: int = LAYOUT_LENGTH) -> list[list[str]]:
    """The greedy (argmax at every step) layout of each question, as token lists."""
    check_tensor("questions", questions, 2, floating=False)
    generator.eval()
    device = model_device(generator)
    layouts: list[list[str]] = []
    for chunk in questions.split(EVAL_BATCH):
        ids = generator.sample(chunk.to(device), greedy=True, max_length=max_length).ids
        layouts += generator.vocabulary.decode(ids.cpu())
    return layouts


def exact_match(generator: ProgramGenerator, questions: torch.Tensor, layouts: torch.Tensor) -> float:
    """Share of questions whose greedy layout equals the expert layout (`layouts` as encoded)."""
    _check_pairs(questions, layouts)
    expert = generator.vocabulary.decode(layouts)
    predicted = greedy_layouts(generator, questions, max_length=max(layouts.shape[1], LAYOUT_LENGTH))
    return _share([p == e for p, e in zip(predicted, expert)])


def layout_validity(generator: ProgramGenerator, questions: torch.Tensor) -> float:
    """Share of questions whose greedy layout is a valid program (`program_from_layout` accepts it)."""
    return _share([program is not None for program in decode_programs(greedy_layouts(generator, questions))])


def mean_reward(generator: ProgramGenerator, questions: torch.Tensor, reward_fn: RewardFn) -> float:
    """The mean reward of the greedy layouts (answer accuracy with `answer_reward`)."""
    layouts = greedy_layouts(generator, questions)
    return float(_rewards(reward_fn(layouts, torch.arange(len(layouts))), len(layouts), torch.device("cpu")).mean())


def _share(hits: list[bool]) -> float:
    if not hits:
        raise ValueError("questions is empty; expected at least one question to measure")
    return float(np.mean(hits))


# --------------------------------------------------------------------------------------------
# The module network as the executor (NMN v2 in the notebook)
# --------------------------------------------------------------------------------------------


def dataset_layouts(dataset: QuestionDataset, vocabulary: LayoutVocabulary | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(question ids (N, QUESTION_LENGTH), expert layout ids (N, LAYOUT_LENGTH)) of every question of `dataset`."""
    return _encode_pairs(dataset.texts, [dataset.program(j) for j in range(len(dataset))], vocabulary,
                         QUESTION_LENGTH, LAYOUT_LENGTH)


@torch.no_grad()
def module_network_answers(network: NeuralModuleNetwork, features: FeatureQuestions, token_lists: list[list[str]],
                           indices: torch.Tensor) -> torch.Tensor:
    """(B,) bool: whether `network` answers question `indices[b]` right when it runs layout b;
    a layout that is no program answers nothing, so it is wrong."""
    correct = torch.zeros(len(token_lists), dtype=torch.bool)
    decoded = decode_programs(token_lists)
    valid = [b for b, program in enumerate(decoded) if program is not None]
    if not valid:
        return correct
    network.eval()
    batch = to_device(features[indices[valid]], model_device(network))
    logits = network(batch["regions"], batch["geometry"], batch["objects"],
                     encode_programs([decoded[b] for b in valid]))["logits"]
    correct[valid] = (logits.argmax(-1) == batch["answer"]).cpu()
    return correct


def module_network_reward(network: NeuralModuleNetwork, features: FeatureQuestions) -> RewardFn:
    """The reward of NMN v2's REINFORCE: 1 when the module network, run on the sampled layout, answers
    the question right, else 0 (Hu et al. 2017 train the generator on the answer's loss the same way)."""
    def reward(token_lists: list[list[str]], indices: torch.Tensor) -> torch.Tensor:
        return module_network_answers(network, features, token_lists, indices).float()
    return reward


@dataclass(frozen=True)
class GeneratorRecipe:
    """The sizes of notebook 04's NMN v2 study at one scale: how many expert layouts to clone from
    (None: all), the training steps each cloning gets, and the REINFORCE runs."""

    clone_sizes: tuple[int | None, ...]
    clone_steps: int
    reinforce_questions: int
    reinforce_epochs: int
    batch_size: int = 64
    width: int = 64

    @classmethod
    def for_scale(cls, scale: str) -> "GeneratorRecipe":
        recipes = {"ci": cls((100, None), 100, 200, 1, width=48),
                   "cpu": cls((100, 1_000, None), 400, 4_000, 1),
                   "gpu": cls((100, 1_000, None), 2_000, 20_000, 3, width=128)}
        if scale not in recipes:
            raise ValueError(f"scale={scale!r} is unknown; expected one of {tuple(recipes)}")
        return recipes[scale]


def generator_study(recipe: GeneratorRecipe, train: FeatureQuestions, test: FeatureQuestions,
                    network: NeuralModuleNetwork, seed: int = 0, progress: bool = False) -> dict[str, dict]:
    """NMN v2's rows: a generator cloned on each of `recipe.clone_sizes` expert layouts; the smallest
    cloning then trained end to end with REINFORCE on `network`'s answers; one trained with
    REINFORCE alone, from scratch. Each row: "exact_match" and "valid" of its greedy layouts on
    `test`, "accuracy" of `network` running them, "seconds" of training."""
    words, layouts = dataset_layouts(train.questions)
    test_words, test_layouts = dataset_layouts(test.questions)
    reward = module_network_reward(network, train)
    rows: dict[str, dict] = {}

    def measure(name: str, generator: ProgramGenerator, seconds: float) -> None:
        greedy = greedy_layouts(generator, test_words)
        right = module_network_answers(network, test, greedy, torch.arange(len(greedy)))
        rows[name] = {"exact_match": exact_match(generator, test_words, test_layouts),
                      "valid": float(np.mean([p is not None for p in decode_programs(greedy)])),
                      "accuracy": float(right.float().mean()), "seconds": seconds}

    order = torch.randperm(len(words), generator=torch.Generator().manual_seed(check_seed(seed)))
    cloned = {}
    for size in recipe.clone_sizes:
        chosen = order[:size] if size is not None else order
        generator = new_generator(recipe.width, seed)
        epochs = max(1, -(-recipe.clone_steps * recipe.batch_size // len(chosen)))  # the same number of steps
        seconds = _timed(lambda: clone(generator, words[chosen], layouts[chosen], epochs=epochs,
                                       batch_size=recipe.batch_size, seed=seed, progress=progress))
        name = f"cloned on {len(chosen):,} layouts"
        measure(name, generator, seconds)
        cloned[size] = (generator, seconds)
    few = recipe.clone_sizes[0]
    generator, seconds = cloned[few]
    subset = order[:recipe.reinforce_questions]
    seconds += _timed(lambda: reinforce(generator, words[subset], lambda tokens, rows: reward(tokens, subset[rows]),
                                        epochs=recipe.reinforce_epochs, batch_size=recipe.batch_size, lr=3e-4,
                                        seed=seed, progress=progress))
    measure(f"cloned on {few:,}, then REINFORCE", generator, seconds)
    scratch = new_generator(recipe.width, seed)
    seconds = _timed(lambda: reinforce(scratch, words[subset], lambda tokens, rows: reward(tokens, subset[rows]),
                                       epochs=recipe.reinforce_epochs, batch_size=recipe.batch_size, lr=1e-3,
                                       seed=seed, progress=progress))
    measure("REINFORCE from scratch (no layouts)", scratch, seconds)
    return rows


def _timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started
