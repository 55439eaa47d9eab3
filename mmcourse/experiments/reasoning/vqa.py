"""Notebook 04's VQA models trained, timed and measured: accuracy per question family, and where
the attention of stacked attention's hops lands compared with the objects the program selects.

Every model reads precomputed visual features (`features.FeatureQuestions`): `forward(grid,
question)` for models that attend over CNN cells, `forward(regions, question, objects)` for models
that attend over objects; `model_inputs` hands each model what its `forward` names, so one loss, one
training call and one prediction loop serve all.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...metrics import attention_grounding
from ...train import History, fit, model_device, to_device
from ...world import programs
from ...world.datasets import QuestionDataset
from .features import FeatureQuestions, feature_loader
from .data import ReasoningRecipe, accuracy_by_family, object_region, trace_objects

def model_inputs(model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    """The batch entries that `model.forward` names: grid and question, or regions, question and objects."""
    return {name: batch[name] for name in inspect.signature(model.forward).parameters if name in batch}


def vqa_loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy of the model's answer scores against the true answers, and the batch accuracy."""
    logits = model(**model_inputs(model, batch))["logits"]  # (B, num_answers)
    loss = F.cross_entropy(logits, batch["answer"])
    return loss, {"accuracy": (logits.argmax(-1) == batch["answer"]).float().mean()}


@dataclass
class Trained:
    """A trained model with its training history, wall time and parameter count."""

    name: str
    model: nn.Module
    history: History
    seconds: float

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def train_vqa(name: str, model: nn.Module, train: FeatureQuestions, recipe: ReasoningRecipe, seed: int,
              progress: bool = False, epochs: int | None = None) -> Trained:
    """Train `model` with `vqa_loss` for `recipe.epochs` (or `epochs`), AdamW at `recipe.lr`, cosine decay."""
    epochs = recipe.epochs if epochs is None else epochs
    torch.manual_seed(seed)
    loader = feature_loader(train, recipe.batch_size, shuffle=True, seed=seed)
    steps = epochs * len(loader)
    schedule = lambda optimizer: torch.optim.lr_scheduler.OneCycleLR(  # noqa: E731
        optimizer, max_lr=recipe.lr, total_steps=steps, pct_start=0.1)
    start = time.perf_counter()
    history = fit(model, loader, vqa_loss, epochs=epochs, lr=recipe.lr, scheduler=schedule,
                  scheduler_every="batch", grad_clip=5.0, progress=progress)
    return Trained(name, model, history, time.perf_counter() - start)


@torch.no_grad()
def predict(model: nn.Module, dataset: FeatureQuestions, batch_size: int = 256,
            keep: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """"answers" (N,) the model's answer index for every question, and the outputs named in `keep`
    (attention maps...) stacked over the dataset."""
    model.eval()
    device = model_device(model)
    kept: dict[str, list] = {"answers": [], **{name: [] for name in keep}}
    for batch in feature_loader(dataset, batch_size):
        batch = to_device(batch, device)
        output = model(**model_inputs(model, batch))
        kept["answers"].append(output["logits"].argmax(-1).cpu())
        for name in keep:
            kept[name].append(output[name].float().cpu())
    return {name: _stack(values) for name, values in kept.items()}


@torch.no_grad()
def explain(model: nn.Module, dataset: FeatureQuestions, indices) -> dict:
    """The model's answers (indices into `programs.ANSWERS`) for the questions `indices` and every
    attention map it returns, as NumPy arrays ("grid" stays the (h, w) of the grid models)."""
    model.eval()
    batch = to_device(dataset[list(indices)], model_device(model))
    output = model(**model_inputs(model, batch))
    shown = {name: value.float().cpu().numpy() for name, value in output.items()
             if torch.is_tensor(value) and name != "logits"}
    return {"answers": output["logits"].argmax(-1).cpu().numpy(), **shown,
            **({"grid": output["grid"]} if "grid" in output else {})}


def _stack(values: list[torch.Tensor]) -> np.ndarray:
    """Concatenate batches along dim 0; maps over words are padded to the longest question."""
    if values[0].dim() == 1:
        return torch.cat(values).numpy()
    longest = max(v.shape[-1] for v in values)
    return torch.cat([F.pad(v, (0, longest - v.shape[-1])) for v in values]).numpy()


def evaluate(trained: Trained, dataset: FeatureQuestions) -> dict[str, float]:
    """Accuracy overall and per family on `dataset`."""
    return accuracy_by_family(predict(trained.model, dataset)["answers"], dataset.questions)


# ---------------------------------------------------------------------------------------------
# Where the hops look: stacked attention against the program trace
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HopTargets:
    """For each scored question, the object the first hop should find (the anchor of a relational
    question; the answer object otherwise) and the object the last hop should land on (the one
    whose attribute is the answer)."""

    questions: np.ndarray  # (M,) question indices
    first: list[frozenset[int]]
    last: list[frozenset[int]]


def hop_targets(dataset: QuestionDataset, families: tuple[str, ...] = ("query_attribute", "relate"),
                limit: int | None = None) -> HopTargets:
    """The attribute questions of `families` ("what colour is the thing right of the red square"):
    the first `unique` of the program (the red square) and the last one (the thing)."""
    wanted = [programs.FAMILIES.index(f) for f in families]
    chosen = np.flatnonzero(np.isin(dataset.arrays["families"], wanted))[:limit]
    first, last = [], []
    for j in chosen:
        uniques = [objects for node, objects in zip(dataset.program(int(j)), trace_objects(dataset, int(j)))
                   if node["function"] == "unique"]
        first.append(uniques[0])
        last.append(uniques[-1])
    return HopTargets(chosen, first, last)


def hop_mass(attention: np.ndarray, grid: tuple[int, int], dataset: QuestionDataset, targets: HopTargets,
             hop: int, which: str) -> dict[str, float]:
    """Mean share of hop `hop`'s attention mass on the `which` ("first" or "last") target object,
    and the share of the image that object covers (what a uniform map would put there).

    `attention` (N, hops, h * w) holds every question's hop maps, as `predict(..., keep=("attention",))` gives.
    """
    boxes = dataset.arrays["boxes"][dataset.arrays["scene_index"][targets.questions]]  # (M, K, 4)
    regions = np.stack([object_region(b, o, dataset.image_size)
                        for b, o in zip(boxes, getattr(targets, which))])  # (M, H, W)
    maps = attention[targets.questions, hop].reshape(len(targets.questions), *grid)  # (M, h, w)
    scores = attention_grounding(maps, regions)
    return {"mass": scores["mass_inside"], "area": float(regions.mean()), "pointing": scores["pointing_game"]}


def object_mass(attention: np.ndarray, targets: HopTargets, which: str) -> dict[str, float]:
    """Mean attention weight on the `which` ("first" or "last") target object, for attention over
    objects (N, K) as bottom-up attention gives it, and what a uniform weight would give (1 / objects)."""
    rows = attention[targets.questions]  # (M, K)
    on_target = [row[sorted(objects)].sum() for row, objects in zip(rows, getattr(targets, which))]
    spread = [1.0 / max(int((row > 0).sum()), 1) for row in rows]
    return {"mass": float(np.mean(on_target)), "uniform": float(np.mean(spread))}
