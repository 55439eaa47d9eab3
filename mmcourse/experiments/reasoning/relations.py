"""Notebook 04: a Relation Network against a CNN+MLP on Sort-of-CLEVR (Santoro et al. 2017).

Both models read the same images through the same CNN (`models.relation_network.conv_stack`) and
have about as many parameters (`comparable_cnn_mlp`); they train on the same data with the same
optimiser, learning rate, batch size, epochs and seed (`mmcourse.train.fit`), and are measured on
held-out images, relational and non-relational questions apart. The paper's finding to reproduce:
both answer the non-relational questions; only the RN answers the relational ones.

Training reads each image once per step with all its 20 questions (`ImageQuestions`, the models'
`ask`): the CNN runs once per image instead of once per question. Images are smaller than the
paper's 75 pixels at the "ci" and "cpu" scales (the objects stay a few pixels wide, enough to tell a
square from a circle), and three stride-2 convolutions instead of four keep the feature map at
4 x 4 cells (16 objects, 256 pairs); the "gpu" recipe is the paper's (75 pixels, four convolutions,
25 objects, g and f of 256 units).

Measured on two shared CPU cores (seed 0): both models stay near the answer each question subtype
makes most likely (relational accuracy 32-46%, non-relational ~50%) at the "ci" and "cpu" scales;
the pixel RN needs thousands of steps to leave that plateau (so does a CNN+MLP with a 256-unit MLP),
so the paper's gap needs the "gpu" recipe or far more epochs than a laptop's minutes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ...models.relation_network import RelationNetwork, comparable_cnn_mlp, parameter_count
from ...train import History, fit, model_device
from ...world.datasets import SortOfClevrDataset, images_to_tensor
from ...world.scene import check_seed
from ...world.sort_of_clevr import QUESTION_TYPES, SUBTYPES

KINDS = ("rn", "cnn_mlp")
TEST_SEED_OFFSET = 1000  # held-out images: another seed than the training images'


@dataclass(frozen=True)
class RelationsRecipe:
    """Data, model and optimisation sizes of one scale, the same for both models."""

    n_images: int  # training images, 20 questions each
    epochs: int
    batch_size: int  # images per step, each with its 20 questions
    width: int  # CNN channels
    image_size: int
    lr: float
    hidden: int = 128  # width of g_theta and f_phi (the paper: 256)
    conv_layers: int = 3  # stride-2 convolutions: the feature map is image_size / 2**conv_layers
    g_layers: int = 4
    f_layers: int = 3
    pool: str = "sum"  # "sum" (the paper) or "mean" over the pairs
    n_test: int = 500  # held-out images

    @classmethod
    def for_scale(cls, scale: str) -> RelationsRecipe:
        """The recipe of "ci", "cpu" or "gpu"."""
        if scale not in RELATIONS_RECIPES:
            raise ValueError(f"scale={scale!r} is unknown; expected one of {tuple(RELATIONS_RECIPES)}")
        return RELATIONS_RECIPES[scale]


RELATIONS_RECIPES = {
    "ci": RelationsRecipe(n_images=200, epochs=4, batch_size=8, width=24, image_size=32, lr=1e-3, hidden=32,
                          n_test=200),
    "cpu": RelationsRecipe(n_images=1000, epochs=8, batch_size=8, width=24, image_size=32, lr=1e-3, hidden=32,
                           n_test=500),
    "gpu": RelationsRecipe(n_images=9800, epochs=40, batch_size=8, width=24, image_size=75, lr=2.5e-4,
                           hidden=256, conv_layers=4, n_test=1000),
}


@dataclass
class RelationsResult:
    """What `compare_relations` measured, per model kind ("rn", "cnn_mlp")."""

    accuracy: dict[str, dict[str, float]]  # kind -> {"relational", "non_relational", "overall", <subtype>...}
    parameters: dict[str, int]  # kind -> trainable parameters
    seconds: dict[str, float]  # kind -> training seconds
    histories: dict[str, History] = field(repr=False)
    recipe: RelationsRecipe | None = None

    def gap(self, which: str = "relational") -> float:
        """RN accuracy minus CNN+MLP accuracy on `which` questions."""
        return self.accuracy["rn"][which] - self.accuracy["cnn_mlp"][which]


# --------------------------------------------------------------------------------------------
# Data: one item per image, with its 20 questions
# --------------------------------------------------------------------------------------------


class ImageQuestions(Dataset):
    """A `SortOfClevrDataset` read one image at a time: item i = {"image": (3, S, S) float,
    "question_vectors": (20, 18), "answers": (20,) int64, "relational": (20,) bool}."""

    def __init__(self, questions: SortOfClevrDataset):
        if not isinstance(questions, SortOfClevrDataset):
            raise TypeError(f"questions must be a SortOfClevrDataset, got {type(questions).__name__}")
        arrays = questions.arrays
        self.images = arrays["images"]  # (N, S, S, 3) uint8
        self.vectors = torch.from_numpy(arrays["vectors"])  # (N, 20, 18)
        self.answers = torch.from_numpy(arrays["answers"])  # (N, 20)
        self.relational = torch.from_numpy(arrays["relational"])  # (N, 20)
        self.image_size = questions.spec["size"]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": images_to_tensor(self.images[index]), "question_vectors": self.vectors[index],
                "answers": self.answers[index], "relational": self.relational[index]}


def sort_of_clevr_splits(recipe: RelationsRecipe, seed: int = 0) -> tuple[ImageQuestions, ImageQuestions]:
    """(train, test): `recipe.n_images` and `recipe.n_test` images at `recipe.image_size`, rendered
    once and then read from the course's disk cache; the test images come from another seed."""
    seed = check_seed(seed)
    train = SortOfClevrDataset(recipe.n_images, seed, size=recipe.image_size)
    test = SortOfClevrDataset(recipe.n_test, seed + TEST_SEED_OFFSET, size=recipe.image_size)
    return ImageQuestions(train), ImageQuestions(test)


def image_loader(dataset: ImageQuestions, batch_size: int, seed: int | None = None) -> DataLoader:
    """Batches of whole images with their questions; shuffled by a seeded generator when `seed` is
    given (training), in order otherwise (evaluation)."""
    generator = None if seed is None else torch.Generator().manual_seed(check_seed(seed))
    return DataLoader(dataset, batch_size=batch_size, shuffle=seed is not None, generator=generator)


# --------------------------------------------------------------------------------------------
# Models, training and measurement
# --------------------------------------------------------------------------------------------


def build_model(kind: str, recipe: RelationsRecipe, seed: int = 0) -> nn.Module:
    """A fresh RN ("rn") or CNN+MLP of about as many parameters ("cnn_mlp"), seeded by `seed`."""
    _check_kind(kind)
    torch.manual_seed(check_seed(seed))
    rn = RelationNetwork(recipe.image_size, recipe.width, recipe.conv_layers, recipe.hidden, recipe.g_layers,
                         recipe.f_layers, pool=recipe.pool)
    if kind == "rn":
        return rn
    torch.manual_seed(seed)  # the baseline's CNN starts from the RN's CNN's weights
    return comparable_cnn_mlp(rn)


def questions_loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy over all questions of a batch of images (the models' `ask`), logging the
    training accuracy."""
    logits = model.ask(batch["image"], batch["question_vectors"])  # (B, Q, answers)
    answers = batch["answers"]  # (B, Q)
    loss = F.cross_entropy(logits.flatten(0, 1), answers.flatten())
    return loss, {"accuracy": (logits.argmax(-1) == answers).float().mean()}


def train_model(kind: str, recipe: RelationsRecipe, train: ImageQuestions, seed: int = 0, device=None,
                progress: bool = False) -> tuple[nn.Module, History, float]:
    """(model, history, seconds of training): `build_model(kind)` trained with `fit` (AdamW at a
    constant `recipe.lr`, `recipe.epochs` epochs of `recipe.batch_size` images)."""
    if not isinstance(train, ImageQuestions):
        raise TypeError(f"train must be an ImageQuestions, got {type(train).__name__}")
    model = build_model(kind, recipe, seed)
    started = time.perf_counter()
    history = fit(model, image_loader(train, recipe.batch_size, seed), questions_loss, epochs=recipe.epochs,
                  lr=recipe.lr, device=device, progress=progress)
    return model, history, time.perf_counter() - started


@torch.no_grad()
def evaluate(model: nn.Module, dataset: ImageQuestions, batch_size: int = 100) -> dict[str, float]:
    """Accuracy on "relational", "non_relational" and all ("overall") questions of `dataset`, and on
    each question subtype ("shape", "left", ..., "count_same_shape")."""
    if not isinstance(dataset, ImageQuestions):
        raise TypeError(f"dataset must be an ImageQuestions, got {type(dataset).__name__}")
    was_training, device = model.training, model_device(model)
    model.eval()
    try:
        correct = torch.cat([
            (model.ask(b["image"].to(device), b["question_vectors"].to(device)).argmax(-1).cpu() == b["answers"])
            for b in image_loader(dataset, batch_size)])  # (N, 20) bool
    finally:
        model.train(was_training)
    groups = {"overall": torch.ones_like(dataset.relational), "relational": dataset.relational,
              "non_relational": ~dataset.relational}
    groups.update(question_subtypes(dataset.vectors))
    return {name: float(correct[mask].float().mean()) for name, mask in groups.items() if mask.any()}


def question_subtypes(vectors: torch.Tensor) -> dict[str, torch.Tensor]:
    """{subtype: (N, Q) bool mask} read from (N, Q, 18) question vectors (type one-hot at [12:15],
    subtype one-hot at [15:18])."""
    kind, subtype = vectors[..., 12:15].argmax(-1), vectors[..., 15:18].argmax(-1)  # (N, Q) each
    return {name: (kind == QUESTION_TYPES.index(question_type)) & (subtype == index)
            for question_type, names in SUBTYPES.items() for index, name in enumerate(names)}


def compare_relations(recipe: RelationsRecipe, seed: int = 0, device=None, progress: bool = False,
                      kinds: tuple[str, ...] = KINDS) -> tuple[RelationsResult, dict[str, nn.Module]]:
    """(result, {kind: trained model}): each of `kinds` trained on the same images, with the same
    recipe and seed, and measured on the held-out images."""
    if not isinstance(recipe, RelationsRecipe):
        raise TypeError(f"recipe must be a RelationsRecipe, got {type(recipe).__name__}")
    for kind in kinds:
        _check_kind(kind)
    train, test = sort_of_clevr_splits(recipe, seed)
    result = RelationsResult(accuracy={}, parameters={}, seconds={}, histories={}, recipe=recipe)
    models = {}
    for kind in kinds:
        model, history, seconds = train_model(kind, recipe, train, seed, device, progress)
        result.accuracy[kind] = evaluate(model, test)
        result.parameters[kind] = parameter_count(model)
        result.seconds[kind] = seconds
        result.histories[kind] = history
        models[kind] = model
    return result, models


def _check_kind(kind) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is unknown; expected one of {KINDS}")


__all__ = ["RelationsRecipe", "RelationsResult", "ImageQuestions", "RELATIONS_RECIPES", "sort_of_clevr_splits",
           "image_loader", "build_model", "questions_loss", "train_model", "evaluate", "question_subtypes",
           "compare_relations"]
