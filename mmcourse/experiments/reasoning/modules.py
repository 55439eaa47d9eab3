"""Notebook 04, Neural Module Networks: data, training, and what the modules learned.

- `program_batch(dataset)`: every question's layout read by the rule-based parser (`programs.parse`,
  NMN's layouts came from a dependency parser), checked against the generator's program.
- `train_nmn` / `evaluate_nmn`: answers-only training with `fit`, accuracy overall and per family,
  on the same precomputed region features as the other VQA models (`features.FeatureQuestions`).
- `score_modules`: the modules are never told what to attend to, yet on this world every set node
  has a right answer (the program trace's object set). For find (filter_*), relate, and, or (and
  scene) it scores the node's attention against that set, and splits the answer accuracy by
  whether all of a question's set nodes were right.
- `NMNRecipe.for_scale`: sizes measured to fit each compute budget.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...models.nmn import NeuralModuleNetwork, Override, ProgramBatch, encode_programs
from ...train import History, fit, to_device
from ...world import programs
from ...world.datasets import QuestionDataset
from ...world.scene import Scene, check_count, check_seed
from .features import FeatureQuestions, feature_loader

MODULE_KINDS = {"scene": "scene", "relate": "relate", "intersect": "and", "union": "or",
                **{f"filter_{a}": "find" for a in programs.VALUES}}  # scored function -> module kind


@dataclass(frozen=True)
class NMNRecipe:
    """Training sizes of the module network for one compute budget (its questions and features are
    those of `data.ReasoningRecipe`)."""

    epochs: int
    batch_size: int
    lr: float
    hidden: int = 64

    @classmethod
    def for_scale(cls, scale: str) -> NMNRecipe:
        """Learning has a phase change: training accuracy sits near 50-70% until find and relate snap into
        place (at cpu, 0.70 after the first epoch, 0.96 after the second; at ci it has not happened yet: 0.62)."""
        recipes = {"ci": cls(6, 64, 3e-3), "cpu": cls(6, 64, 3e-3), "gpu": cls(8, 128, 3e-3)}
        if scale not in recipes:
            raise ValueError(f"scale={scale!r} is unknown; expected one of {tuple(recipes)}")
        return recipes[scale]


def program_batch(dataset: QuestionDataset) -> ProgramBatch:
    """Every question's program as parsed from its text, checked equal to the dataset's program."""
    parsed = []
    for j, text in enumerate(dataset.texts):
        program = programs.parse(text)
        if program != dataset.program(j):
            raise AssertionError(f"question {j} ({text!r}): the parser's program differs from the generator's")
        parsed.append(program)
    return encode_programs(parsed)


def run_batch(model: NeuralModuleNetwork, batch: dict, table: ProgramBatch, override: Override | None = None) -> dict:
    """The model's outputs on one `FeatureQuestions` batch, programs looked up by question index."""
    return model(batch["regions"], batch["geometry"], batch["objects"], table[batch["index"].cpu()], override)


def train_nmn(model: NeuralModuleNetwork, train: FeatureQuestions, recipe: NMNRecipe, seed: int = 0,
              progress: bool = False, table: ProgramBatch | None = None) -> History:
    """Answers-only training (cross-entropy on the final node's log-probabilities) with `fit`,
    AdamW and a one-cycle learning-rate schedule."""
    torch.manual_seed(check_seed(seed))
    table = program_batch(train.questions) if table is None else table
    loader = feature_loader(train, recipe.batch_size, shuffle=True, seed=seed)

    def loss_fn(model, batch):
        logits = run_batch(model, batch, table)["logits"]
        accuracy = (logits.argmax(-1) == batch["answer"]).float().mean()
        return F.nll_loss(logits, batch["answer"]), {"accuracy": accuracy}

    def schedule(optimizer):
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.lr, total_steps=max(1, recipe.epochs * len(loader)),
                                                   pct_start=0.15)

    return fit(model, loader, loss_fn, epochs=recipe.epochs, lr=recipe.lr, grad_clip=5.0, scheduler=schedule,
               scheduler_every="batch", progress=progress)


@torch.no_grad()
def predict_nmn(model: NeuralModuleNetwork, dataset: FeatureQuestions, table: ProgramBatch | None = None,
                batch_size: int = 256, questions: int | None = None) -> dict[str, torch.Tensor]:
    """Predicted answers, right/wrong and the node attentions (padded to the longest program) of
    the first `questions` questions (default all), in dataset order."""
    table = program_batch(dataset.questions) if table is None else table
    model.eval()
    device = next(model.parameters()).device
    keep, parts = len(dataset) if questions is None else min(questions, len(dataset)), defaultdict(list)
    for batch in feature_loader(dataset, batch_size):
        batch = to_device(batch, device)
        out = run_batch(model, batch, table)
        parts["index"].append(batch["index"].cpu())
        parts["prediction"].append(out["logits"].argmax(-1).cpu())
        missing = table.functions.shape[1] - out["attention"].shape[1]  # nodes past this batch's longest program
        parts["attention"].append(F.pad(out["attention"], (0, 0, 0, missing)).cpu())
        if sum(len(i) for i in parts["index"]) >= keep:
            break
    result = {name: torch.cat(values)[:keep] for name, values in parts.items()}
    result["correct"] = result["prediction"] == torch.from_numpy(dataset.questions.arrays["answers"])[result["index"]]
    return result


def evaluate_nmn(model: NeuralModuleNetwork, dataset: FeatureQuestions, table: ProgramBatch | None = None) -> dict:
    """{"accuracy": overall, "families": {family: accuracy}} on every question of `dataset`."""
    correct = predict_nmn(model, dataset, table)["correct"].numpy()
    families = dataset.questions.arrays["families"]
    return {"accuracy": float(correct.mean()),
            "families": {name: float(correct[families == f].mean()) for f, name in enumerate(programs.FAMILIES)
                         if (families == f).any()}}


def trace_sets(program: list[dict], scene: Scene, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The true object set of every node of `program` on `scene` (`programs.execute_trace`):
    (N, capacity) float 0/1 (the one object for `unique`) and (N,) bool, True where the node gives a set."""
    outputs = programs.execute_trace(program, scene)
    sets, is_set = torch.zeros(len(program), capacity), torch.zeros(len(program), dtype=torch.bool)
    for k, output in enumerate(outputs):
        if isinstance(output, frozenset):
            sets[k, list(output)], is_set[k] = 1.0, True
        elif program[k]["function"] == "unique":
            sets[k, output] = 1.0
    return sets, is_set


def score_modules(model: NeuralModuleNetwork, dataset: FeatureQuestions, max_questions: int = 2000,
                  table: ProgramBatch | None = None) -> dict:
    """Per module kind (scene, find, relate, and, or): "decisions" the share of (node, object)
    decisions right at threshold 1/2, "mass" the mean share of a node's attention on the true set
    (nodes with a non-empty true set), "nodes" how many; and "accuracy_nodes_right" /
    "accuracy_nodes_wrong" the answer accuracy on questions whose set nodes are all right / not,
    with "share_nodes_right"."""
    table = program_batch(dataset.questions) if table is None else table
    predicted = predict_nmn(model, dataset, table, questions=check_count("max_questions", max_questions, 1))
    questions = dataset.questions
    capacity, scene_of = questions.arrays["boxes"].shape[1], questions.arrays["scene_index"]
    stats = defaultdict(lambda: {"right": 0, "decisions": 0, "mass": [], "nodes": 0})
    all_right = []
    for row, j in enumerate(predicted["index"].tolist()):
        program, real = questions.program(j), int(questions.arrays["num_objects"][scene_of[j]])
        truth, _ = trace_sets(program, questions.scenes[int(scene_of[j])], capacity)
        scored = [k for k, node in enumerate(program) if node["function"] in MODULE_KINDS]
        hits = [_score_node(stats[MODULE_KINDS[program[k]["function"]]], predicted["attention"][row, k, :real],
                            truth[k, :real]) for k in scored]
        all_right.append(all(hit == real for hit in hits))
    all_right, correct = np.array(all_right), predicted["correct"].numpy()
    modules = {kind: {"decisions": s["right"] / s["decisions"], "nodes": s["nodes"],
                      "mass": float(np.mean(s["mass"])) if s["mass"] else float("nan")} for kind, s in stats.items()}
    return {"modules": modules, "share_nodes_right": float(all_right.mean()),
            "accuracy_nodes_right": float(correct[all_right].mean()) if all_right.any() else float("nan"),
            "accuracy_nodes_wrong": float(correct[~all_right].mean()) if (~all_right).any() else float("nan")}


def _score_node(entry: dict, attention: torch.Tensor, target: torch.Tensor) -> int:
    """Add one node's (K,) attention against its (K,) 0/1 true set to `entry`; return its right decisions."""
    hits = int(((attention > 0.5) == (target > 0.5)).sum())
    entry["right"], entry["decisions"], entry["nodes"] = entry["right"] + hits, entry["decisions"] + len(target), entry["nodes"] + 1
    if target.any() and attention.sum() > 0:
        entry["mass"].append(float((attention * target).sum() / attention.sum()))
    return hits
