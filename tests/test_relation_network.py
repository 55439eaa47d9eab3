"""Relation Networks (Santoro et al. 2017) of notebook 04: the relation module indifferent to the
order of its objects, every ordered pair processed (N^2), the efficient first layer equal to g on
the explicit pairs, cells with their coordinates as objects, the CNN+MLP baseline of comparable
size, clear errors on bad shapes, a very small run of the Sort-of-CLEVR experiment, and the bench
that gives the relation module the scenes' true object states."""
import dataclasses

import pytest
import torch
from bench_helpers import load_bench

from mmcourse.experiments.reasoning import relations
from mmcourse.models.relation_network import (CnnMlp, RelationModule, RelationNetwork, all_pairs, cell_objects,
                                              comparable_cnn_mlp, feature_side, matching_mlp_width, mlp, parameter_count)
from mmcourse.world.sort_of_clevr import ANSWERS, VECTOR_DIM, sample_sort_of_clevr

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: see conftest


def small_module(pool="sum", seed=0):
    torch.manual_seed(seed)
    return RelationModule(object_dim=5, question_dim=VECTOR_DIM, num_answers=len(ANSWERS), hidden=8,
                          g_layers=3, f_layers=2, pool=pool).eval()


def objects_and_question(n=6, seed=1):
    torch.manual_seed(seed)
    return torch.randn(2, n, 5), torch.randn(2, VECTOR_DIM)


@pytest.mark.parametrize("pool", ["sum", "mean"])
def test_permuting_the_objects_leaves_the_answer_unchanged(pool):
    module = small_module(pool)
    objects, question = objects_and_question()
    shuffled = objects[:, torch.randperm(objects.shape[1])]
    with torch.no_grad():
        assert torch.allclose(module(objects, question), module(shuffled, question), atol=1e-5)
        # ...while the pairs do matter: changing one object changes the answer
        changed = objects.clone()
        changed[:, 0] += 1.0
        assert not torch.allclose(module(objects, question), module(changed, question), atol=1e-4)


def test_every_ordered_pair_is_processed_and_the_efficient_first_layer_equals_g_on_explicit_pairs():
    module = small_module()
    objects, question = objects_and_question(n=5)
    pairs = all_pairs(objects, question)  # (B, N, N, 2D + Q)
    assert pairs.shape == (2, 5, 5, 2 * 5 + VECTOR_DIM)  # N^2 = 25 pairs, the pairs (i, i) included
    assert torch.equal(pairs[1, 3, 0], torch.cat([objects[1, 3], objects[1, 0], question[1]]))
    with torch.no_grad():
        relations_ = module.pair_relations(objects, question)
        assert relations_.shape == (2, 5, 5, 8)
        assert torch.allclose(relations_, module.g(pairs), atol=1e-5)
        # RN(O, q) = f(sum over all N^2 pairs of g)
        assert torch.allclose(module(objects, question), module.f(module.g(pairs).sum((1, 2))), atol=1e-5)


def test_sum_and_mean_pools_differ_by_the_number_of_pairs():
    summed, averaged = small_module("sum"), small_module("mean")
    objects, question = objects_and_question(n=4)
    with torch.no_grad():
        relations_ = summed.pair_relations(objects, question)
        assert torch.allclose(averaged.f[0](relations_.sum((1, 2)) / 16), averaged.f[0](relations_.mean((1, 2))))
    with pytest.raises(ValueError, match="pool='max' is unknown"):
        RelationModule(5, pool="max")


def test_cells_become_objects_with_their_coordinates():
    feature_map = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    objects = cell_objects(feature_map)
    assert objects.shape == (2, 4, 3 + 2)
    assert torch.equal(objects[0, 1, :3], feature_map[0, :, 0, 1])  # row-major: cell 1 is row 0, column 1
    assert objects[0, :, 3:].tolist() == [[-1, -1], [1, -1], [-1, 1], [1, 1]]  # (x, y)


def test_the_network_reads_images_and_asks_many_questions_per_image():
    torch.manual_seed(0)
    model = RelationNetwork(image_size=32, channels=8, conv_layers=3, hidden=16).eval()
    images, questions = torch.rand(2, 3, 32, 32), torch.rand(2, 3, VECTOR_DIM)
    assert model.num_objects == feature_side(32, 3) ** 2 == 16
    assert model.objects(images).shape == (2, 16, 8 + 2)
    with torch.no_grad():
        asked = model.ask(images, questions)  # (B, Q, answers), the CNN once per image
        one_by_one = torch.stack([model(images, questions[:, q])["logits"] for q in range(3)], 1)
    assert asked.shape == (2, 3, len(ANSWERS))
    assert torch.allclose(asked, one_by_one, atol=1e-5)


def test_the_cnn_mlp_baseline_has_a_comparable_parameter_count():
    for hidden in (32, 128, 256):
        rn = RelationNetwork(image_size=32, channels=24, conv_layers=3, hidden=hidden)
        baseline = comparable_cnn_mlp(rn)
        assert isinstance(baseline, CnnMlp)
        ratio = parameter_count(rn) / parameter_count(baseline)
        assert 1 / 1.5 < ratio < 1.5, (hidden, parameter_count(rn), parameter_count(baseline))
        images, question = torch.rand(2, 3, 32, 32), torch.rand(2, VECTOR_DIM)
        assert baseline(images, question)["logits"].shape == (2, len(ANSWERS))


def test_matching_mlp_width_is_the_width_with_the_closest_parameter_count():
    target = 10_000
    width = matching_mlp_width(20, 5, 2, target)
    gap = lambda hidden: abs(parameter_count(mlp([20, hidden, hidden, 5])) - target)  # counted on real modules
    assert gap(width) <= min(gap(width - 1), gap(width + 1))
    assert gap(width) < 200
    assert matching_mlp_width(20, 5, 2, 0) == 1  # nothing is smaller than one unit
    for name, bad in (("inputs", 0), ("layers", 1.5), ("max_width", True)):
        arguments = dict(inputs=20, outputs=5, layers=2, target=target, max_width=64)
        arguments[name] = bad
        with pytest.raises(ValueError, match=name):
            matching_mlp_width(**arguments)


def test_bad_shapes_give_clear_errors():
    model = RelationNetwork(image_size=32, channels=8, conv_layers=3, hidden=16)
    images, question = torch.rand(2, 3, 32, 32), torch.rand(2, VECTOR_DIM)
    with pytest.raises(ValueError, match=r"images has shape \(2, 3, 40, 40\); expected \(B, 3, 32, 32\)"):
        model(torch.rand(2, 3, 40, 40), question)
    with pytest.raises(ValueError, match=r"question_vector has shape \(2, 17\); expected \(B, 18\)"):
        model(images, question[:, :17])
    with pytest.raises(ValueError, match="question_vector has batch size 1 but images has 2"):
        model(images, question[:1])
    with pytest.raises(ValueError, match=r"objects has shape \(2, 6, 4\); expected \(B, N, 10\)"):
        model.relation(torch.rand(2, 6, 4), question)
    with pytest.raises(ValueError, match="question has batch size 3 but objects has 2"):
        model.relation(torch.rand(2, 6, 10), torch.rand(3, VECTOR_DIM))
    with pytest.raises(TypeError, match="images must be a floating-point tensor"):
        model(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), question)
    with pytest.raises(ValueError, match="question_vectors has batch size 1 but images has 2"):
        model.ask(images, torch.rand(1, 4, VECTOR_DIM))
    with pytest.raises(ValueError, match="hidden must be a positive int"):
        RelationNetwork(hidden=0)


def test_recipes_and_bad_arguments():
    assert relations.RelationsRecipe.for_scale("cpu").n_images > relations.RelationsRecipe.for_scale("ci").n_images
    with pytest.raises(ValueError, match="scale='laptop' is unknown"):
        relations.RelationsRecipe.for_scale("laptop")
    with pytest.raises(ValueError, match="kind='mlp' is unknown"):
        relations.build_model("mlp", relations.RelationsRecipe.for_scale("ci"))


def test_a_very_small_experiment_runs_end_to_end():
    recipe = dataclasses.replace(relations.RelationsRecipe.for_scale("ci"), n_images=24, n_test=8, epochs=1,
                                 batch_size=8, hidden=16)
    result, models = relations.compare_relations(recipe, seed=0, device="cpu")
    assert set(models) == {"rn", "cnn_mlp"}
    for kind in ("rn", "cnn_mlp"):
        accuracy = result.accuracy[kind]
        assert {"relational", "non_relational", "overall", "closest_shape", "count_same_shape"} <= set(accuracy)
        assert all(0.0 <= value <= 1.0 for value in accuracy.values())
        assert result.seconds[kind] > 0 and len(result.histories[kind]) == 1
    assert 1 / 1.5 < result.parameters["rn"] / result.parameters["cnn_mlp"] < 1.5
    assert isinstance(result.gap(), float)


def test_state_bench_reads_the_scenes_and_questions_of_the_notebook():
    """bench/relation_network_states.py: each scene's six objects as state rows (colour, shape,
    x, y), with the same questions and answers as `sample_sort_of_clevr` draws for the seed."""
    bench = load_bench("relation_network_states")
    data, reference = bench.state_questions(12, 3), sample_sort_of_clevr(12, 3, size=32)
    assert torch.equal(data["answers"], torch.from_numpy(reference.answers))
    assert torch.equal(data["vectors"], torch.from_numpy(reference.vectors))
    states = data["states"]  # (12, 6, 10)
    assert states.shape == (12, 6, bench.STATE_DIM)
    assert torch.equal(states[..., :6].sum(1), torch.ones(12, 6))  # every colour once per scene
    shapes = [[bench.SHAPES.index(o.shape) for o in scene.objects] for scene in reference.scenes]
    assert torch.equal(states[..., 6:8].argmax(-1), torch.tensor(shapes))
    xy = torch.tensor([[[o.x, o.y] for o in scene.objects] for scene in reference.scenes]) * 2 - 1
    assert torch.allclose(states[..., 8:], xy)


def test_state_bench_trains_models_of_comparable_size(capsys):
    bench = load_bench("relation_network_states")
    data = bench.state_questions(16, 0)
    torch.manual_seed(0)
    rn = RelationModule(bench.STATE_DIM, hidden=16, pool="mean")
    baseline = bench.comparable_mlp(rn)
    assert abs(parameter_count(baseline) / parameter_count(rn) - 1) < 0.05
    prior = bench.prior(data, data)
    assert set(prior) == {"shape", "left", "top", "closest_shape", "furthest_shape", "count_same_shape"}
    for name, model in (("RN", rn), ("MLP", baseline)):
        bench.train(model, data, data, steps=3, every=3, batch_size=4, lr=1e-3, seed=0, name=name)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and all("step      3" in line and "count_same_shape" in line for line in printed)


def test_state_bench_guess_without_distances_follows_its_definition():
    bench = load_bench("relation_network_states")
    test = bench.state_questions(40, 5)
    scenes = sample_sort_of_clevr(40, 5, size=32)
    right = {"closest_shape": [], "furthest_shape": []}
    for i, scene in enumerate(scenes.scenes):
        for q, text in enumerate(scenes.texts[i]):
            subtype = next((name for name in right if name.split("_")[0] in text), None)
            if subtype is not None:
                color = next(o.color for o in scene.objects if o.color in text.split())
                others = [o.shape for o in scene.objects if o.color != color]
                guess = max(set(others), key=others.count)  # five objects: no tie
                right[subtype].append(ANSWERS[scenes.answers[i, q]] == guess)
    expected = {name: sum(hits) / len(hits) for name, hits in right.items()}
    assert bench.commoner_shape_of_the_others(test) == pytest.approx(expected)
