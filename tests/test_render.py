"""Tests of mmcourse.world.render: determinism, geometry, colours, anti-aliasing, speed, bad input."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from mmcourse.world.render import Rendered, render, render_batch
from mmcourse.world.scene import BACKGROUND_RGB, Scene, SceneObject, sample_scenes

BACKGROUND = np.array(BACKGROUND_RGB)
SHAPES = ("circle", "square", "triangle", "diamond")


def one_object(shape: str, style: str = "filled", size: str = "large", color: str = "blue",
               x: float = 0.5, y: float = 0.5) -> Scene:
    return Scene(objects=(SceneObject(shape, color, size, style, x, y),))


def interior(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels of `mask` whose whole 3x3 neighbourhood is in `mask`."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    shifted = [padded[1 + dr:1 + dr + h, 1 + dc:1 + dc + w] for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
    return np.logical_and.reduce(shifted)


@pytest.fixture(scope="module")
def default_scenes() -> list[Scene]:
    return sample_scenes(60, seed=11)


@pytest.fixture(scope="module")
def all_scenes(default_scenes) -> list[Scene]:
    """Sampled scenes of both presets plus one scene holding every shape in both styles."""
    gallery = Scene(objects=tuple(
        SceneObject(shape, "red", "small", style, 0.15 + 0.23 * k, 0.25 + 0.5 * row)
        for row, style in enumerate(("filled", "outline")) for k, shape in enumerate(SHAPES)))
    return default_scenes + sample_scenes(20, seed=11, preset="sort_of_clevr") + [gallery]


def test_rendered_arrays_have_the_promised_shapes_and_dtypes(default_scenes):
    scene = default_scenes[0]
    rendered = render(scene, 96)
    assert isinstance(rendered, Rendered)
    assert rendered.image.shape == (96, 96, 3) and rendered.image.dtype == np.uint8
    assert rendered.instance_mask.shape == (96, 96) and rendered.instance_mask.dtype == np.int32
    assert rendered.boxes.shape == (len(scene), 4) and rendered.boxes.dtype == np.float32
    assert rendered.scene is scene
    assert set(np.unique(rendered.instance_mask)) == set(range(len(scene) + 1))


def test_default_sizes_come_from_the_preset():
    assert render(sample_scenes(1, seed=0)[0]).image.shape == (64, 64, 3)
    assert render(sample_scenes(1, seed=0, preset="sort_of_clevr")[0]).image.shape == (75, 75, 3)


def test_same_scene_gives_identical_bytes(default_scenes):
    for scene in default_scenes[:10]:
        first, second = render(scene), render(scene)
        assert first.image.tobytes() == second.image.tobytes()
        assert first.instance_mask.tobytes() == second.instance_mask.tobytes()
        assert first.boxes.tobytes() == second.boxes.tobytes()


def test_same_seed_gives_identical_images_and_other_seed_others():
    images = render_batch(sample_scenes(8, seed=2))
    assert images.tobytes() == render_batch(sample_scenes(8, seed=2)).tobytes()
    assert images.tobytes() != render_batch(sample_scenes(8, seed=3)).tobytes()


def test_every_size_from_32_to_256_is_accepted(default_scenes):
    scene = default_scenes[0]
    for size in range(32, 257):
        rendered = render(scene, size)
        assert rendered.image.shape == (size, size, 3)
        assert rendered.instance_mask.shape == (size, size)
    assert render(scene, np.int64(48)).image.shape == (48, 48, 3)


@pytest.mark.parametrize("size", [31, 257, 0, -64, 64.0, "64", True, [64]])
def test_bad_size_is_refused(default_scenes, size):
    with pytest.raises(ValueError, match="size"):
        render(default_scenes[0], size)


def test_non_scene_is_refused():
    with pytest.raises(TypeError, match="scene"):
        render([SceneObject("circle", "red", "small", "filled", 0.5, 0.5)])


def test_boxes_are_the_object_extents_clipped_to_the_canvas():
    scene = Scene(objects=(SceneObject("square", "red", "large", "filled", 0.5, 0.25),
                           SceneObject("circle", "green", "large", "filled", 0.05, 0.95)))
    boxes = render(scene, 100).boxes
    np.testing.assert_allclose(boxes[0], [38.0, 13.0, 62.0, 37.0], atol=1e-4)
    np.testing.assert_allclose(boxes[1], [0.0, 83.0, 17.0, 100.0], atol=1e-4)


def test_ink_lies_inside_its_box_and_fills_it(all_scenes):
    for scene in all_scenes:
        for size in (32, 64, 75, 128):
            rendered = render(scene, size)
            for i, (x0, y0, x1, y1) in enumerate(rendered.boxes):
                rows, cols = np.nonzero(rendered.object_mask(i))
                assert x0 - 1 <= cols.min() and cols.max() + 1 <= x1 + 1, (scene, size, i)
                assert y0 - 1 <= rows.min() and rows.max() + 1 <= y1 + 1, (scene, size, i)
                # every shape touches its box on all four sides, so the ink spans it to within a pixel
                assert cols.min() <= x0 + 1 and cols.max() + 1 >= x1 - 1, (scene, size, i)
                assert rows.max() + 1 >= y1 - 1, (scene, size, i)  # the triangle's apex is thin at the top


def test_every_object_has_ink_even_at_size_32(all_scenes):
    for scene in all_scenes:
        counts = np.bincount(render(scene, 32).instance_mask.ravel(), minlength=len(scene) + 1)
        assert counts[1:].min() >= 4, scene


def test_filled_interiors_have_the_exact_object_colour(all_scenes):
    checked = 0
    for scene in all_scenes:
        rendered = render(scene, 64)
        for i, obj in enumerate(scene.objects):
            if obj.style != "filled":
                continue
            core = interior(rendered.object_mask(i))
            assert core.any(), (scene, i)
            assert (rendered.image[core] == obj.rgb).all(), (scene, i)
            checked += 1
    assert checked > 50


def test_background_far_from_objects_is_the_background_colour(all_scenes):
    for scene in all_scenes:
        rendered = render(scene, 64)
        near = np.zeros((64, 64), dtype=bool)
        for x0, y0, x1, y1 in rendered.boxes:
            near[max(0, math.floor(y0) - 2):math.ceil(y1) + 2, max(0, math.floor(x0) - 2):math.ceil(x1) + 2] = True
        assert (rendered.image[~near] == BACKGROUND).all(), scene
        assert (rendered.instance_mask[~near] == 0).all(), scene


@pytest.mark.parametrize("shape", SHAPES)
def test_outline_centres_show_the_background(shape):
    outline, filled = render(one_object(shape, "outline"), 128), render(one_object(shape, "filled"), 128)
    centre = (64, 64)  # the pixel whose corner is the object centre (0.5, 0.5)
    assert (outline.image[centre] == BACKGROUND).all() and outline.instance_mask[centre] == 0
    assert filled.instance_mask[centre] == 1
    assert 0 < outline.object_mask(0).sum() < 0.6 * filled.object_mask(0).sum()


def test_outline_stroke_has_the_promised_width():
    rendered = render(one_object("square", "outline"), 256)
    radius_px = 0.12 * 256
    ink_in_middle_row = rendered.object_mask(0)[128, :128].sum()  # the left side of the square
    assert abs(ink_in_middle_row - max(1.5, 0.2 * radius_px)) <= 1.0  # the stroke width the design asks for


@pytest.mark.parametrize("shape, area_over_r2", [("circle", math.pi), ("square", 4.0), ("triangle", 2.0),
                                                 ("diamond", 2.0)])
def test_filled_areas_match_the_geometry(shape, area_over_r2):
    radius_px = 0.12 * 256
    ink = render(one_object(shape), 256).object_mask(0).sum()
    assert ink == pytest.approx(area_over_r2 * radius_px ** 2, rel=0.05)


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_centred_on_the_canvas_are_mirror_symmetric(shape):
    for size in range(32, 81):
        for style in ("filled", "outline"):
            image = render(one_object(shape, style), size).image
            np.testing.assert_array_equal(image, image[:, ::-1], err_msg=f"{shape} {style} at {size}")
            if shape != "triangle":
                np.testing.assert_array_equal(image, image[::-1], err_msg=f"{shape} {style} at {size}")


def test_triangle_points_up():
    widths = render(one_object("triangle"), 128).object_mask(0).sum(axis=1)  # (H,) ink per row
    rows = np.nonzero(widths)[0]
    top, bottom = widths[rows[:3]].mean(), widths[rows[-3:]].mean()
    assert bottom > 5 * top


def test_edges_are_anti_aliased_and_agree_with_the_mask():
    obj = SceneObject("circle", "blue", "large", "filled", 0.5, 0.5)
    rendered = render(Scene(objects=(obj,)), 64)
    # every pixel is background + alpha * (colour - background); recover alpha from the channel
    # where the two colours differ most
    channel = int(np.argmax(np.abs(np.array(obj.rgb) - BACKGROUND)))
    alpha = (rendered.image[..., channel] - BACKGROUND[channel]) / (obj.rgb[channel] - BACKGROUND[channel])
    expected = BACKGROUND + alpha[..., None] * (np.array(obj.rgb) - BACKGROUND)  # (H, W, 3)
    assert np.abs(rendered.image - expected).max() <= 1.0
    edge = (alpha > 0.1) & (alpha < 0.9)
    assert edge.sum() >= 20  # a circle of radius 7.7 px has a ring of partly covered pixels
    mask = rendered.object_mask(0)
    assert (alpha[mask] >= 0.49).all() and (alpha[~mask] <= 0.51).all()


def test_object_mask_matches_instance_mask_and_checks_its_index(default_scenes):
    rendered = render(default_scenes[0])
    for i in range(len(default_scenes[0])):
        np.testing.assert_array_equal(rendered.object_mask(i), rendered.instance_mask == i + 1)
    for bad, error in [(-1, ValueError), (len(default_scenes[0]), ValueError), (1.0, TypeError)]:
        with pytest.raises(error, match="i"):
            rendered.object_mask(bad)


def test_render_batch_stacks_the_images(default_scenes):
    images = render_batch(default_scenes[:5], size=48)
    assert images.shape == (5, 48, 48, 3) and images.dtype == np.uint8
    for image, scene in zip(images, default_scenes[:5]):
        np.testing.assert_array_equal(image, render(scene, 48).image)


def test_render_batch_rejects_bad_input(default_scenes):
    mixed = [default_scenes[0], sample_scenes(1, seed=0, preset="sort_of_clevr")[0]]
    with pytest.raises(TypeError, match="scenes"):
        render_batch(default_scenes[0])
    with pytest.raises(TypeError, match=r"scenes\[1\]"):
        render_batch([default_scenes[0], "scene"])
    with pytest.raises(ValueError, match="scenes"):
        render_batch([])
    with pytest.raises(ValueError, match="sizes"):
        render_batch(mixed)
    assert render_batch(mixed, size=64).shape == (2, 64, 64, 3)
    with pytest.raises(ValueError, match="size"):
        render_batch(default_scenes[:2], size=20)


def test_render_speed_floor():
    scenes = sample_scenes(300, seed=0)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        for scene in scenes:
            render(scene, 64)
        best = min(best, time.perf_counter() - start)
    assert len(scenes) / best >= 800, f"{len(scenes) / best:.0f} scenes/s at 64x64"
