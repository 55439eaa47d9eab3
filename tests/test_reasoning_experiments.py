"""Notebook 04's experiment code: question sets, baselines, program traces, precomputed features,
the shared training loop of the VQA models, and the scoring of attention hops against the trace."""
import dataclasses

import numpy as np
import pytest
import torch

from mmcourse.experiments.reasoning import data, features
from mmcourse.experiments.reasoning import vqa as experiment
from mmcourse.models.encoders import RegionEncoder
from mmcourse.models.vqa import BottomUpTopDown, StackedAttention
from mmcourse.world import language, programs

RECIPE = data.ReasoningRecipe(train_scenes=60, test_scenes=20, questions_per_scene=3, image_size=32, feature_width=8,
                              feature_stages=2, backbone_epochs=1, width=16, epochs=1, batch_size=16, lr=1e-3)
VOCAB, ANSWERS = language.default_tokenizer().vocab_size, len(programs.ANSWERS)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMCOURSE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MMCOURSE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        return data.question_sets(RECIPE, seed=3)


@pytest.fixture(scope="module")
def featured(sets):
    torch.manual_seed(0)
    encoder = RegionEncoder(RECIPE.feature_width, stages=RECIPE.feature_stages).eval()
    return (features.FeatureQuestions(sets.train, features.extract_features(encoder, sets.train)),
            features.FeatureQuestions(sets.test, features.extract_features(encoder, sets.test)))


def test_train_and_test_scenes_differ_and_cogent_tests_on_the_other_palette(sets):
    assert len(sets.train.scenes) == 60 and len(sets.test.scenes) == 20 and sets.test_b is None
    assert not set(sets.train.scenes) & set(sets.test.scenes)
    cogent = data.question_sets(RECIPE, seed=3, cogent=True)
    assert {s.preset for s in cogent.train.scenes + cogent.test.scenes} == {"cogent_a"}
    assert {s.preset for s in cogent.test_b.scenes} == {"cogent_b"}
    assert len(cogent.train.scenes) == RECIPE.cogent_scenes == RECIPE.train_scenes  # by default as many
    smaller = data.question_sets(dataclasses.replace(RECIPE, cogent_train_scenes=30), seed=3, cogent=True)
    assert len(smaller.train.scenes) == 30 and len(smaller.test.scenes) == len(cogent.test.scenes)


def test_accuracy_by_family_counts_each_family(sets):
    truth = data.answers_of(sets.test)
    scores = data.accuracy_by_family(truth, sets.test)
    assert scores["overall"] == 1.0
    wrong = truth.copy()
    chosen = data.families_of(sets.test) == programs.FAMILIES.index("count")
    wrong[chosen] = -1
    scores = data.accuracy_by_family(wrong, sets.test)
    assert scores["count"] == 0.0 and scores["exist"] == 1.0
    assert scores["overall"] == pytest.approx(1 - chosen.mean())
    with pytest.raises(ValueError, match="predictions has shape"):
        data.accuracy_by_family(truth[:-1], sets.test)


def test_question_type_majority_knows_which_attribute_is_asked(sets):
    types = data.question_types(sets.train)
    assert "query_attribute: query_color" in set(types) or "query_attribute: query_shape" in set(types)
    by_family = data.majority_by_family(sets.train, sets.train)
    by_type = data.majority_by_question_type(sets.train, sets.train)
    assert by_type["overall"] >= by_family["overall"]  # a finer key never does worse on its own data
    assert by_type["query_attribute"] > by_family["query_attribute"]
    scores = data.by_question_type(data.majority_answers(sets.train, sets.train, "question_type"), sets.train)
    assert sum(row["questions"] for row in scores.values()) == len(sets.train)
    assert all(row["right_kind"] == 1.0 for row in scores.values())  # the majority answer of a type is of its kind
    with pytest.raises(ValueError, match="by=.words. is unknown"):
        data.majority_answers(sets.train, sets.test, "words")


def test_trace_objects_follow_the_program(sets):
    for j in range(0, len(sets.test), 5):
        program = sets.test.program(j)
        scene = sets.test.scenes[int(sets.test.arrays["scene_index"][j])]
        outputs = programs.execute_trace(program, scene)
        for node, value, objects in zip(program, outputs, data.trace_objects(sets.test, j)):
            if node["function"] == "unique":
                assert objects == {value}
            elif isinstance(value, frozenset):
                assert objects == value
            else:
                assert objects is None


def test_object_region_covers_the_boxes_of_those_objects():
    boxes = np.array([[0, 0, 2, 1], [1.5, 1, 3, 3], [2, 2, 4, 4]], np.float32)
    region = data.object_region(boxes, frozenset({0, 1}), 4)
    assert region.astype(int).tolist() == [[1, 1, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    assert not data.object_region(boxes, frozenset(), 4).any()


def test_feature_batches_gather_the_scene_of_each_question(sets, featured):
    train, _ = featured
    assert train.features.grid.shape == (60, 8, 8, 8)  # 32 px / 2**2 stages
    batch = train[[0, 4, 7]]
    scenes = sets.train.arrays["scene_index"][[0, 4, 7]]
    assert torch.equal(batch["grid"], train.features.grid[scenes])
    assert torch.equal(batch["objects"].sum(1), torch.from_numpy(sets.train.arrays["num_objects"][scenes]))
    assert batch["question"].shape[1] == int((batch["question"] != 0).sum(1).max())  # trimmed to the longest
    assert batch["answer"].tolist() == sets.train.arrays["answers"][[0, 4, 7]].tolist()
    seen = torch.cat([b["index"] for b in features.feature_loader(train, 16, shuffle=True, seed=1)])
    assert sorted(seen.tolist()) == list(range(len(train)))
    with pytest.raises(IndexError, match="indices must lie in"):
        train[[len(train)]]
    with pytest.raises(ValueError, match="features hold 60 scenes but questions has 20"):
        features.FeatureQuestions(sets.test, train.features)


@pytest.mark.parametrize("model_class", [StackedAttention, BottomUpTopDown])
def test_one_training_loop_serves_grid_and_object_models(featured, model_class):
    train, test = featured
    torch.manual_seed(0)
    trained = experiment.train_vqa("m", model_class(VOCAB, ANSWERS, RECIPE.feature_width, RECIPE.width), train,
                                   RECIPE, seed=0)
    assert trained.parameters == sum(p.numel() for p in trained.model.parameters())
    assert len(trained.history) == 1 and trained.seconds > 0
    scores = experiment.evaluate(trained, test)
    assert set(scores) == {"overall", *programs.FAMILIES} and 0 <= scores["overall"] <= 1
    kept = experiment.predict(trained.model, test, keep=("attention",))
    assert kept["answers"].shape == (len(test),) and len(kept["attention"]) == len(test)


def test_hop_mass_of_a_uniform_map_is_the_objects_area(sets, featured):
    _, test = featured
    targets = experiment.hop_targets(sets.test)
    assert len(targets.questions) and len(targets.first) == len(targets.last) == len(targets.questions)
    for j, first, last in zip(targets.questions, targets.first, targets.last):
        family = programs.FAMILIES[int(sets.test.arrays["families"][j])]
        assert len(first) == len(last) == 1
        assert (first == last) == (family == "query_attribute")
    grid = (8, 8)
    uniform = np.full((len(sets.test), 2, 64), 1 / 64)
    scores = experiment.hop_mass(uniform, grid, sets.test, targets, hop=0, which="last")
    assert scores["mass"] == pytest.approx(scores["area"], abs=1e-9)
    peaked = np.zeros_like(uniform)
    boxes = sets.test.arrays["boxes"][sets.test.arrays["scene_index"][targets.questions]]
    for j, last, scene_boxes in zip(targets.questions, targets.last, boxes):
        ys, xs = np.nonzero(data.object_region(scene_boxes, last, 32))
        peaked[j, 1, (ys // 4) * 8 + xs // 4] = 1.0  # every cell holding the object's ink
    scores = experiment.hop_mass(peaked, grid, sets.test, targets, hop=1, which="last")
    assert scores["mass"] > 2 * scores["area"]  # cells on the box's edge count by the share they cover


def test_ask_answers_with_every_model_or_names_the_unreadable_word(featured):
    from mmcourse.experiments.reasoning import ask
    from mmcourse.models.nmn import NeuralModuleNetwork
    from mmcourse.world.scene import sample_scenes

    torch.manual_seed(0)
    encoder = RegionEncoder(RECIPE.feature_width, stages=RECIPE.feature_stages).eval()
    models = {"SAN": StackedAttention(VOCAB, ANSWERS, RECIPE.feature_width, RECIPE.width),
              "BUTD": BottomUpTopDown(VOCAB, ANSWERS, RECIPE.feature_width, RECIPE.width)}
    network = NeuralModuleNetwork(RECIPE.feature_width)
    scene = sample_scenes(1, 11)[0]
    text = "how many things are left of the " + scene.objects[0].phrase().split()[-1] + "?"
    asked = ask.ask(text, scene, encoder, models, network, 32, hop_model="SAN")
    assert asked.problem is None and asked.program == programs.parse(text)
    assert set(asked.answers) == {"SAN", "BUTD", "NMN (the parser's program)"}
    assert all(answer in programs.ANSWERS for answer in asked.answers.values())
    assert len(asked.module_outputs) == len(asked.program) and asked.module_outputs[0].shape == (len(scene),)
    assert asked.hops.shape == (2, 8, 8)  # two hops over the 8 x 8 grid of a 32-pixel image
    unreadable = ask.ask("what colour is it?", scene, encoder, models, network, 32)
    assert unreadable.program is None and unreadable.answers == {}
    assert unreadable.problem.startswith("I cannot read 'what colour is it?': at word 2 ('colour')")


def test_module_network_answers_give_invalid_layouts_no_reward(featured):
    from mmcourse.experiments.reasoning.programs import module_network_answers, module_network_reward
    from mmcourse.models.nmn import NeuralModuleNetwork

    _, test = featured
    network = NeuralModuleNetwork(RECIPE.feature_width)
    layouts = [programs.layout_tokens(test.questions.program(j)) for j in range(4)]
    layouts[1] = ["count", "scene", "scene"]  # goes on after its tree: no program
    right = module_network_answers(network, test, layouts, torch.arange(4))
    assert right.dtype == torch.bool and right.shape == (4,) and not right[1]
    rewards = module_network_reward(network, test)(layouts, torch.arange(4))
    assert torch.equal(rewards, right.float())
    assert not module_network_answers(network, test, [["count"]], torch.tensor([0])).any()
