"""Tests of mmcourse.world.scene: sampling, vocabulary, layout rules and bad input."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from mmcourse.world.scene import PRESETS, Scene, SceneObject, sample_scenes

DEFAULT = PRESETS["default"]
SORT_OF_CLEVR = PRESETS["sort_of_clevr"]


@pytest.fixture(scope="module")
def default_scenes() -> list[Scene]:
    return sample_scenes(300, seed=7)


@pytest.fixture(scope="module")
def clevr_scenes() -> list[Scene]:
    return sample_scenes(100, seed=7, preset="sort_of_clevr")


def test_same_seed_same_scenes_and_different_seed_different_scenes():
    assert sample_scenes(20, seed=3) == sample_scenes(20, seed=3)
    assert sample_scenes(20, seed=3) != sample_scenes(20, seed=4)


def test_longer_list_starts_with_shorter_list():
    for preset in PRESETS:
        assert sample_scenes(10, seed=5, preset=preset)[:5] == sample_scenes(5, seed=5, preset=preset)


def test_scene_remembers_where_it_came_from():
    scenes = sample_scenes(4, seed=9)
    assert [scene.seed for scene in scenes] == [(9, i) for i in range(4)]


def test_zero_scenes_is_an_empty_list():
    assert sample_scenes(0, seed=0) == []


def test_default_object_counts_span_two_to_six(default_scenes):
    counts = {len(scene) for scene in default_scenes}
    assert counts == set(range(2, 7))


def test_num_objects_fixes_the_count():
    assert {len(scene) for scene in sample_scenes(30, seed=1, num_objects=4)} == {4}


def test_default_vocabulary():
    assert len(DEFAULT.shapes) == 3
    assert len(DEFAULT.colors) == 6
    assert len(DEFAULT.sizes) == 2
    assert len(DEFAULT.styles) == 2


def test_every_value_of_every_attribute_occurs(default_scenes):
    for attribute in ("shape", "color", "size", "style"):
        seen = {obj.attribute(attribute) for scene in default_scenes for obj in scene.objects}
        assert seen == set(DEFAULT.values(attribute)), attribute


@pytest.mark.parametrize("fixture", ["default_scenes", "clevr_scenes"])
def test_boxes_are_on_canvas_and_pairwise_disjoint(fixture, request):
    for scene in request.getfixturevalue(fixture):
        margin = scene.spec.margin
        for obj in scene.objects:
            assert 0.0 <= obj.x <= 1.0 and 0.0 <= obj.y <= 1.0
            assert obj.radius + margin - 1e-9 <= obj.x <= 1.0 - obj.radius - margin + 1e-9
            assert obj.radius + margin - 1e-9 <= obj.y <= 1.0 - obj.radius - margin + 1e-9
        for a, b in itertools.combinations(scene.objects, 2):
            gap = max(abs(a.x - b.x), abs(a.y - b.y)) - a.radius - b.radius
            assert gap >= margin - 1e-9, (a, b)


def test_sort_of_clevr_has_six_objects_of_six_colours(clevr_scenes):
    shapes_seen = set()
    for scene in clevr_scenes:
        assert len(scene) == 6
        assert {obj.color for obj in scene.objects} == set(SORT_OF_CLEVR.colors)
        shapes_seen |= {obj.shape for obj in scene.objects}
    assert shapes_seen == {"square", "circle"}


@pytest.mark.parametrize("kwargs, error, argument", [
    ({"n": 3, "seed": 0, "preset": "clevr3d"}, ValueError, "preset"),
    ({"n": -1, "seed": 0}, ValueError, "n"),
    ({"n": 2.0, "seed": 0}, TypeError, "n"),
    ({"n": "3", "seed": 0}, TypeError, "n"),
    ({"n": True, "seed": 0}, TypeError, "n"),
    ({"n": 3, "seed": -1}, ValueError, "seed"),
    ({"n": 3, "seed": 0.5}, TypeError, "seed"),
    ({"n": 3, "seed": 0, "num_objects": 100}, ValueError, "num_objects"),
    ({"n": 3, "seed": 0, "num_objects": 0}, ValueError, "num_objects"),
    ({"n": 3, "seed": 0, "preset": "sort_of_clevr", "num_objects": 7}, ValueError, "num_objects"),
])
def test_sample_scenes_rejects_bad_input(kwargs, error, argument):
    with pytest.raises(error, match=argument):
        sample_scenes(**kwargs)


@pytest.mark.parametrize("field, value, error", [
    ("color", "magenta", ValueError), ("shape", "star", ValueError), ("size", "huge", ValueError),
    ("style", "dotted", ValueError), ("x", 1.5, ValueError), ("x", -0.1, ValueError), ("y", 2.0, ValueError),
    ("x", float("nan"), ValueError), ("x", np.float32(1.5), ValueError), ("y", "0.5", TypeError),
    ("y", True, TypeError),
])
def test_scene_object_rejects_bad_fields(field, value, error):
    fields = dict(shape="circle", color="red", size="small", style="filled", x=0.5, y=0.5)
    fields[field] = value
    with pytest.raises(error, match=field):
        SceneObject(**fields)


def test_scene_rejects_unknown_preset_and_non_objects():
    obj = SceneObject("circle", "red", "small", "filled", 0.5, 0.5)
    with pytest.raises(ValueError, match="preset"):
        Scene(objects=(obj,), preset="clevr3d")
    with pytest.raises(TypeError, match=r"objects\[1\]"):
        Scene(objects=(obj, "a blue square"))


@pytest.mark.parametrize("preset, square, triangle", [("cogent_a", {"red", "green", "blue"}, {"yellow", "purple", "cyan"}),
                                                      ("cogent_b", {"yellow", "purple", "cyan"}, {"red", "green", "blue"})])
def test_cogent_conditions_give_each_shape_its_palette(preset, square, triangle):
    objects = [o for scene in sample_scenes(300, seed=1, preset=preset) for o in scene.objects]
    colors = {shape: {o.color for o in objects if o.shape == shape} for shape in ("circle", "square", "triangle")}
    assert colors == {"circle": set(DEFAULT.colors), "square": square, "triangle": triangle}

