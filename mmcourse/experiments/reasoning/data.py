"""Notebook 04's question sets and the ground truth that every model's reasoning is scored against.

- `ReasoningRecipe`: the sizes of one scale (scenes, image size, width, epochs...).
- `question_sets`: train and test `QuestionDataset`s of the default world (answers balanced per
  template, as CLEVR balances them), and the CoGenT pair: train on condition A, test on A and on B,
  where squares and triangles take each other's colours (`mmcourse.world.scene.PRESETS`).
- `majority_by_family`: the answer a model that knows only the question's family would give,
  read off the training set, and its accuracy on the test set: the floor every model must clear.
- `trace_objects`: for question j, the set of objects each node of its program selects (the
  trace of `programs.execute_trace`): what an attention hop or a module's output should look at.
- `object_region`: the pixels inside the boxes of a set of objects, where attention is scored.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ...world import programs
from ...world.datasets import QuestionDataset
from ...world.scene import check_seed

TEST_SEED_OFFSET = 1_000  # test scenes use seed + this, so no test scene is a training scene


@dataclass(frozen=True)
class ReasoningRecipe:
    """The sizes of notebook 04's VQA runs at one scale."""

    train_scenes: int
    test_scenes: int
    questions_per_scene: int
    image_size: int
    feature_width: int  # channels of the pretrained backbone's features
    feature_stages: int  # its stride-2 stages: the grid is image_size / 2**stages cells a side
    backbone_epochs: int
    width: int  # hidden width of the question models
    epochs: int
    batch_size: int
    lr: float
    cogent_train_scenes: int | None = None  # CoGenT condition A's training scenes (None: train_scenes)

    @property
    def cogent_scenes(self) -> int:
        """Training scenes of the CoGenT study: fewer at ci, where its split is shown, not measured."""
        return self.train_scenes if self.cogent_train_scenes is None else self.cogent_train_scenes

    @classmethod
    def for_scale(cls, scale: str) -> "ReasoningRecipe":
        sizes = {
            "ci": cls(train_scenes=1_200, test_scenes=300, questions_per_scene=5, image_size=48, feature_width=48,
                      feature_stages=3, backbone_epochs=2, width=48, epochs=3, batch_size=128, lr=3e-3,
                      cogent_train_scenes=250),
            "cpu": cls(train_scenes=6_000, test_scenes=1_000, questions_per_scene=5, image_size=48, feature_width=64,
                       feature_stages=3, backbone_epochs=3, width=64, epochs=6, batch_size=128, lr=3e-3),
            "gpu": cls(train_scenes=30_000, test_scenes=4_000, questions_per_scene=5, image_size=64, feature_width=96,
                       feature_stages=3, backbone_epochs=4, width=128, epochs=20, batch_size=256, lr=1e-3),
        }
        if scale not in sizes:
            raise ValueError(f"scale={scale!r} is unknown; expected one of {tuple(sizes)}")
        return sizes[scale]


@dataclass(frozen=True)
class QuestionSets:
    """Training and test questions of one condition (and, for CoGenT, the other condition's test)."""

    train: QuestionDataset
    test: QuestionDataset
    test_b: QuestionDataset | None = None  # CoGenT condition B: the unseen colour-shape pairs


def question_sets(recipe: ReasoningRecipe, seed: int, cogent: bool = False) -> QuestionSets:
    """Train/test questions on the default world, or with `cogent=True` train (`recipe.cogent_scenes`
    scenes) and test on condition A plus a test on condition B (each split's scenes drawn with its own
    seed)."""
    seed = check_seed(seed)
    make = lambda n, s, preset: QuestionDataset(n, s, recipe.questions_per_scene, preset=preset,  # noqa: E731
                                                image_size=recipe.image_size)
    if not cogent:
        return QuestionSets(make(recipe.train_scenes, seed, "default"),
                            make(recipe.test_scenes, seed + TEST_SEED_OFFSET, "default"))
    return QuestionSets(make(recipe.cogent_scenes, seed, "cogent_a"),
                        make(recipe.test_scenes, seed + TEST_SEED_OFFSET, "cogent_a"),
                        make(recipe.test_scenes, seed + 2 * TEST_SEED_OFFSET, "cogent_b"))


def families_of(dataset: QuestionDataset) -> np.ndarray:
    """(N,) the family index (into `programs.FAMILIES`) of every question."""
    return dataset.arrays["families"]


def answers_of(dataset: QuestionDataset) -> np.ndarray:
    """(N,) the answer index (into `programs.ANSWERS`) of every question."""
    return dataset.arrays["answers"]


def accuracy_by_family(predictions: np.ndarray, dataset: QuestionDataset) -> dict[str, float]:
    """"overall" accuracy of (N,) answer indices and the accuracy on each family's questions."""
    predictions = np.asarray(predictions)
    if predictions.shape != answers_of(dataset).shape:
        raise ValueError(f"predictions has shape {predictions.shape}; expected {answers_of(dataset).shape}, "
                         "one answer per question of the dataset")
    correct = predictions == answers_of(dataset)
    scores = {"overall": float(correct.mean())}
    for f, family in enumerate(programs.FAMILIES):
        chosen = families_of(dataset) == f
        scores[family] = float(correct[chosen].mean()) if chosen.any() else float("nan")
    return scores


def question_types(dataset: QuestionDataset) -> np.ndarray:
    """(N,) each question's type in CLEVR's sense: its family and the function of its answer node
    ("query_attribute: query_color", "count: count"), which the question's words always reveal."""
    return np.array([f"{programs.FAMILIES[f]}: {json.loads(p)[-1]['function']}"
                     for f, p in zip(families_of(dataset), dataset.arrays["programs"])])


def majority_answers(train: QuestionDataset, test: QuestionDataset, by: str) -> np.ndarray:
    """(N,) for each test question, the most frequent training answer of its family (`by="family"`)
    or of its question type (`by="question_type"`, CLEVR's "Q-type mode": "what colour ..." gets the
    most frequent colour, not "yes"); -1 for a key never seen in training."""
    keys = {"family": families_of, "question_type": question_types}
    if by not in keys:
        raise ValueError(f"by={by!r} is unknown; expected one of {tuple(keys)}")
    train_keys, test_keys = keys[by](train), keys[by](test)
    most_frequent = {key: Counter(answers_of(train)[train_keys == key].tolist()).most_common(1)[0][0]
                     for key in np.unique(train_keys)}
    return np.array([most_frequent.get(key, -1) for key in test_keys])


def majority_by_family(train: QuestionDataset, test: QuestionDataset) -> dict[str, float]:
    """Accuracy per family on `test` of answering with the family's most frequent training answer."""
    return accuracy_by_family(majority_answers(train, test, "family"), test)


def majority_by_question_type(train: QuestionDataset, test: QuestionDataset) -> dict[str, float]:
    """Accuracy per family on `test` of answering with the question type's most frequent training answer."""
    return accuracy_by_family(majority_answers(train, test, "question_type"), test)


def by_question_type(predictions: np.ndarray, dataset: QuestionDataset) -> dict[str, dict[str, float]]:
    """For each question type: its number of questions, the share of `predictions` that are of the
    kind asked for (`right_kind_share`) and the share that are right."""
    types, predictions = question_types(dataset), np.asarray(predictions)
    right_kind, correct = right_kind_share(predictions, dataset), predictions == answers_of(dataset)
    return {kind: {"questions": int((types == kind).sum()), "right_kind": float(right_kind[types == kind].mean()),
                   "accuracy": float(correct[types == kind].mean())} for kind in sorted(set(types))}


def answer_kind(answer: str) -> str:
    """The kind of an answer string: "boolean", "integer" or the attribute whose value it is."""
    if answer in programs.BOOLEAN_ANSWERS:
        return programs.BOOLEAN
    if answer in programs.COUNT_ANSWERS:
        return programs.INTEGER
    return next(a for a, values in programs.VALUES.items() if answer in values)


def right_kind_share(predictions: np.ndarray, dataset: QuestionDataset) -> np.ndarray:
    """(N,) bool: whether each predicted answer (an index into `programs.ANSWERS`) is of the kind the
    question asks for (a colour for "what colour...", a count for "how many..."), right or wrong."""
    asked = [programs.FUNCTIONS[json.loads(p)[-1]["function"]].output for p in dataset.arrays["programs"]]
    return np.array([answer_kind(programs.ANSWERS[int(k)]) == kind for k, kind in zip(predictions, asked)])


def trace_objects(dataset: QuestionDataset, j: int) -> list[frozenset[int] | None]:
    """For each node of question j's program, the objects it selects: a set for set-valued nodes
    (`scene`, `filter_*`, `relate`, `intersect`, `union`), the one object for `unique`, None for
    nodes that give a count, a yes/no or an attribute value."""
    scene = dataset.scenes[int(dataset.arrays["scene_index"][j])]
    program = dataset.program(j)
    return [_selected(node, value) for node, value in zip(program, programs.execute_trace(program, scene))]


def _selected(node: dict, value) -> frozenset[int] | None:
    if node["function"] == "unique":
        return frozenset([value])
    return value if isinstance(value, frozenset) else None


def object_region(boxes: np.ndarray, objects: frozenset[int], size: int) -> np.ndarray:
    """(size, size) bool: the pixels inside the boxes (K, 4) xyxy of `objects`. The box, not the ink:
    an outline shape has little ink, yet attention on its inside is attention on the object."""
    region = np.zeros((size, size), bool)
    for k in objects:
        x0, y0, x1, y1 = boxes[k]
        region[int(np.floor(y0)):int(np.ceil(y1)), int(np.floor(x0)):int(np.ceil(x1))] = True
    return region
