"""Tests for Neural Module Networks (mmcourse.models.nmn) and their experiment (notebook 04)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mmcourse.experiments.reasoning.data import ReasoningRecipe
from mmcourse.experiments.reasoning.features import FeatureQuestions, extract_features, pretrain_backbone
from mmcourse.experiments.reasoning.modules import (NMNRecipe, evaluate_nmn, program_batch, score_modules,
                                                    trace_sets, train_nmn)
from mmcourse.models.nmn import (VALUE_NAMES, NeuralModuleNetwork, Override, ProgramBatch, decode_programs,
                                 encode_programs, relate)
from mmcourse.world import programs as P
from mmcourse.world.datasets import QuestionDataset
from mmcourse.world.scene import sample_scenes

K, WIDTH = 6, 32


def node(function, inputs=(), *values):
    return {"function": function, "inputs": list(inputs), "value_inputs": list(values)}


def hard_run(program: list[dict], sets: dict[int, torch.Tensor], objects: torch.Tensor) -> dict:
    """Run `program` on B rows with node k's attention forced to sets[k] (B, K) 0/1, random features."""
    torch.manual_seed(0)
    batch = len(objects)
    programs = encode_programs([program])[torch.zeros(batch, dtype=torch.long)]  # the same program on every row
    attention = torch.zeros(batch, len(program), K)
    where = torch.zeros(batch, len(program), dtype=torch.bool)
    for k, chosen in sets.items():
        attention[:, k], where[:, k] = chosen.float(), True
    model = NeuralModuleNetwork(feature_width=WIDTH)
    with torch.no_grad():
        return model(torch.randn(batch, K, WIDTH), torch.rand(batch, K, 4), objects, programs,
                             Override(attention, where))


def all_subset_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair (A, B) of subsets of K objects: two (4**K, K) bool tensors."""
    subsets = torch.tensor(list(itertools.product([0, 1], repeat=K)), dtype=torch.bool)  # (2**K, K)
    first, second = zip(*itertools.product(range(len(subsets)), repeat=2))
    return subsets[list(first)], subsets[list(second)]


# ------------------------------------------------------------------- soft modules on hard masks

@pytest.fixture(scope="module")
def pairs():
    return all_subset_pairs()


TWO_SETS = [node("scene"), node("filter_color", [0], "red"), node("scene"), node("filter_color", [2], "blue")]


@pytest.mark.parametrize("combine, expected", [("intersect", torch.logical_and), ("union", torch.logical_or)])
def test_and_or_are_boolean_on_hard_masks(pairs, combine, expected):
    a, b = pairs
    out = hard_run(TWO_SETS + [node(combine, [1, 3]), node("count", [4])], {1: a, 3: b},
                   torch.ones(len(a), K, dtype=torch.bool))
    assert torch.equal(out["attention"][:, 4], expected(a, b).float())
    assert torch.equal(out["count"][:, 5], expected(a, b).sum(1).float())  # count is the integer


@pytest.mark.parametrize("compare, expected", [("greater_than", torch.gt), ("less_than", torch.lt),
                                               ("equal_integer", torch.eq)])
def test_count_comparisons_threshold_exactly_on_integers(pairs, compare, expected):
    a, b = pairs
    program = TWO_SETS + [node("count", [1]), node("count", [3]), node(compare, [4, 5])]
    out = hard_run(program, {1: a, 3: b}, torch.ones(len(a), K, dtype=torch.bool))
    truth = expected(a.sum(1), b.sum(1))
    assert torch.equal(out["probability"][:, 6] > 0.5, truth)
    assert torch.equal(out["logits"].argmax(-1), torch.where(truth, 0, 1))  # ANSWERS[0] = "yes"


def test_exist_and_count_answers_on_hard_masks(pairs):
    a = pairs[0][:: 2 ** K]  # every subset once
    for final, answer in (("exist", lambda s: torch.where(s.any(1), 0, 1)),
                          ("count", lambda s: P.ANSWERS.index("0") + s.sum(1))):
        out = hard_run(TWO_SETS[:2] + [node(final, [1])], {1: a}, torch.ones(len(a), K, dtype=torch.bool))
        assert torch.equal(out["logits"].argmax(-1), answer(a))
        assert torch.allclose(out["logits"].exp().sum(-1), torch.ones(len(a)))  # log-probabilities


def test_attention_stays_in_unit_interval_and_off_padding():
    scenes = sample_scenes(40, 3)
    questions = [q for per in P.ask_balanced(scenes, 3, 5) for q in per]
    programs = encode_programs([list(q.program) for q in questions])
    objects = torch.arange(K) < torch.randint(1, K + 1, (len(questions), 1), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    model = NeuralModuleNetwork(feature_width=WIDTH)
    out = model(torch.randn(len(questions), K, WIDTH) * 3, torch.rand(len(questions), K, 4), objects, programs)
    attention = out["attention"]
    assert attention.min() >= 0 and attention.max() <= 1
    assert (attention * ~objects[:, None, :]).abs().max() == 0
    assert torch.isfinite(out["logits"]).all()
    out["logits"].sum().backward()  # every module is differentiable


# ------------------------------------------------- the key test: reduces to the symbolic executor

def oracle_inputs(questions, scenes):
    """One-hot attribute features, and every scene/filter/relate node overridden by its true set."""
    programs = encode_programs([list(q.program) for q, _ in questions])
    batch, length = programs.functions.shape
    features, objects = torch.zeros(batch, K, WIDTH), torch.zeros(batch, K, dtype=torch.bool)
    attention, where = torch.zeros(batch, length, K), torch.zeros(batch, length, dtype=torch.bool)
    for b, (question, scene) in enumerate(questions):
        objects[b, :len(scene)] = True
        for i, obj in enumerate(scene.objects):
            features[b, i, [VALUE_NAMES.index(obj.attribute(a)) for a in P.VALUES]] = 1.0
        sets, _ = trace_sets(list(question.program), scene, K)
        attention[b, :len(sets)] = sets
        where[b, :len(sets)] = torch.tensor([n["function"] in ("scene", "relate") or n["function"].startswith("filter_")
                                             for n in question.program])
    return features, objects, programs, Override(attention, where)


def test_soft_modules_on_true_sets_reproduce_the_symbolic_executor():
    scenes = sample_scenes(450, 11)
    questions = [(q, s) for s, per in zip(scenes, P.ask_balanced(scenes, 11, 5)) for q in per]
    assert len(questions) >= 2000 and {q.family for q, _ in questions} == set(P.FAMILIES)
    features, objects, programs, override = oracle_inputs(questions, scenes)
    model = NeuralModuleNetwork(feature_width=WIDTH)
    with torch.no_grad():  # describe reads the one-hot attribute code of the attended object
        model.describe.weight.zero_()
        model.describe.bias.zero_()
        model.describe.weight[:, :len(VALUE_NAMES)] = 20 * torch.eye(len(VALUE_NAMES))
        out = model(features, torch.rand(len(questions), K, 4), objects, programs, override)
    predicted = [P.ANSWERS[i] for i in out["logits"].argmax(-1).tolist()]
    expected = [P.execute(list(q.program), s) for q, s in questions]
    wrong = [(q.text, p, e) for (q, _), p, e in zip(questions, predicted, expected) if p != e]
    assert not wrong, f"{len(wrong)} of {len(questions)} answers differ, e.g. {wrong[:3]}"


# ------------------------------------------------------------------------- programs as tensors

def test_relate_ignores_the_diagonal_and_padded_objects_whatever_the_input_holds():
    attention = torch.tensor([[0.25, 0.75, 0.0]])  # (1, 3): the third slot is padding
    objects = torch.tensor([[True, True, False]])
    relation = torch.full((1, 3, 3), 0.5)  # diagonal and padded column included
    expected = torch.tensor([[0.75 * 0.5, 0.25 * 0.5, 0.0]])  # out_j = sum_{i != j} a_i R_ij, 0 at padding
    torch.testing.assert_close(relate(attention, relation, objects), expected)
    with pytest.raises(ValueError, match="relation"):
        relate(attention, relation[:, :2], objects)


def test_encode_programs_round_trip_and_shapes():
    scenes = sample_scenes(30, 5)
    programs = [list(q.program) for per in P.ask_balanced(scenes, 5, 5) for q in per]
    batch = encode_programs(programs)
    longest = max(len(p) for p in programs)
    assert batch.functions.shape == batch.values.shape == (len(programs), longest)
    assert batch.inputs.shape == (len(programs), longest, 2) and batch.lengths.tolist() == [len(p) for p in programs]
    assert decode_programs(batch) == programs
    layouts = encode_programs([P.layout_tokens(p) for p in programs])  # layouts give the same tensors
    assert all(torch.equal(getattr(layouts, f), getattr(batch, f)) for f in ("functions", "values", "inputs", "lengths"))
    rows = batch[torch.tensor([0, 3])]
    assert len(rows) == 2 and rows.functions.shape[1] == max(len(programs[0]), len(programs[3]))
    assert decode_programs(rows) == [programs[0], programs[3]]


def test_bad_inputs_are_refused_naming_the_argument():
    good = [node("scene"), node("count", [0])]
    with pytest.raises(ValueError, match=r"programs\[1\].*function is unknown"):
        encode_programs([good, [node("scene"), node("tally", [0])]])
    with pytest.raises(ValueError, match=r"programs\[0\].*layout token 1 \('filter_colour\[red\]'\)"):
        encode_programs([["count", "filter_colour[red]", "scene"]])
    with pytest.raises(ValueError, match="programs must be a non-empty list"):
        encode_programs([])
    model = NeuralModuleNetwork(feature_width=WIDTH)
    regions, geometry = torch.randn(2, K, WIDTH), torch.rand(2, K, 4)
    objects = torch.ones(2, K, dtype=torch.bool)
    with pytest.raises(ValueError, match="programs has batch size 3 but regions has 2"):
        model(regions, geometry, objects, encode_programs([good] * 3))
    with pytest.raises(ValueError, match=r"geometry has shape \(2, 6, 3\); expected \(2, 6, 4\)"):
        model(regions, geometry[..., :3], objects, encode_programs([good] * 2))
    with pytest.raises(ValueError, match=r"regions has shape \(2, 6, 8\); expected \(B, K, 32\)"):
        model(regions[..., :8], geometry, objects, encode_programs([good] * 2))
    with pytest.raises(ValueError, match="objects must be a bool tensor"):
        model(regions, geometry, objects.float(), encode_programs([good] * 2))
    with pytest.raises(TypeError, match="programs must be a ProgramBatch"):
        model(regions, geometry, objects, [good, good])
    with pytest.raises(ValueError, match="scale='tpu' is unknown"):
        NMNRecipe.for_scale("tpu")


# ---------------------------------------------------------------------------- learning, experiment

def featured(n_scenes: int, seed: int, families=None) -> FeatureQuestions:
    """Questions with the features of a `RegionEncoder` pretrained for one epoch on their scenes'
    attributes, as notebook 04 computes them."""
    questions = QuestionDataset(n_scenes, seed, families=families, image_size=48)
    recipe = ReasoningRecipe(n_scenes, 0, 5, 48, 48, 3, 1, 48, 1, 64, 3e-3)
    encoder, _ = pretrain_backbone(recipe, questions, seed=0)
    return FeatureQuestions(questions, extract_features(encoder, questions))


def test_nmn_learns_exist_and_count_above_the_majority_baseline(one_torch_thread):
    train, test = featured(500, 21, ("exist", "count")), featured(120, 22, ("exist", "count"))
    torch.manual_seed(0)
    model = NeuralModuleNetwork(feature_width=48)
    history = train_nmn(model, train, NMNRecipe(epochs=6, batch_size=60, lr=3e-3), seed=0)
    assert len(history) == 6
    result = evaluate_nmn(model, test)
    majority = np.bincount(test.questions.arrays["answers"]).max() / len(test)
    assert set(result["families"]) == {"exist", "count"}
    assert result["accuracy"] > majority + 0.1, (result, majority)


def test_experiment_tables_on_a_small_dataset():
    dataset = featured(12, 4)
    table = program_batch(dataset.questions)
    assert isinstance(table, ProgramBatch) and len(table) == len(dataset)
    model = NeuralModuleNetwork(feature_width=48)
    result = evaluate_nmn(model, dataset, table)
    assert 0 <= result["accuracy"] <= 1 and set(result["families"]) <= set(P.FAMILIES)
    scores = score_modules(model, dataset, max_questions=40, table=table)
    assert scores["modules"]["scene"]["decisions"] == 1.0  # scene is the objects mask
    for row in scores["modules"].values():
        assert 0 <= row["decisions"] <= 1 and row["nodes"] > 0
