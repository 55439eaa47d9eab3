"""The renderer of the embedded world: a `Scene` becomes an RGB image, an instance mask and boxes.

The pictures follow the flat 2-D worlds of SHAPES (Andreas et al. 2016) and Sort-of-CLEVR (Santoro
et al. 2017). Each shape is drawn from a signed distance function (SDF), the technique of
signed-distance rendering in computer graphics: `distance` is negative inside the shape, positive
outside, in pixels. A pixel's coverage is `clip(0.5 - distance, 0, 1)`; the object colour is blended
over the pixel by that fraction and rounded to 8 bits, so edges come out anti-aliased for free, and the instance mask marks the ink pixels, those with coverage >= 0.5
(pixel centre inside the shape). An outline is the band `-stroke <= distance <= 0`, i.e. the
distance `|distance + stroke / 2| - stroke / 2`.

Pixel (row, col) has its centre at (col + 0.5, row + 0.5) in pixel units. An object at (x, y) with
radius r (fractions of the canvas) is centred at (x * size, y * size) and fills the square box of
half-side r * size around it. Objects are drawn in order, each blended over what is already there.
Boxes must not overlap (sampled scenes never do): a scene whose boxes overlap is refused, since its
instance mask, one object per pixel, could not show both objects.
For speed each object is evaluated only on the small window of pixels around its box.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np

from .scene import BACKGROUND_RGB, Scene, SceneObject, check_count

MIN_SIZE, MAX_SIZE = 32, 256
_SQRT_5 = math.sqrt(5.0)
_SQRT_2 = math.sqrt(2.0)


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value
class Rendered:
    """One rendered scene: the pixels and their ground truth."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    instance_mask: np.ndarray  # (H, W) int32: 0 background, i + 1 where scene.objects[i] has ink
    boxes: np.ndarray  # (K, 4) float32 xyxy in pixels, the extent of each shape clipped to the canvas
    scene: Scene

    def object_mask(self, i: int) -> np.ndarray:
        """(H, W) bool: the ink pixels of `scene.objects[i]`."""
        i = check_count("i", i)
        if i >= len(self.scene):
            raise ValueError(f"i={i} is out of range; the scene has {len(self.scene)} objects")
        return self.instance_mask == i + 1


# --- signed distances, in pixels, of a point (dx, dy) from the centre of a shape of half-side r ---
# dx is a (1, w) row and dy an (h, 1) column, so each function returns an (h, w) array.

def _circle_distance(dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    return np.hypot(dx, dy) - r


def _square_distance(dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    over_x, over_y = np.abs(dx) - r, np.abs(dy) - r  # (1, w), (h, 1): signed distance past each pair of sides
    outside = np.hypot(np.maximum(over_x, 0.0), np.maximum(over_y, 0.0))  # (h, w) to the nearest side or corner
    inside = np.minimum(np.maximum(over_x, over_y), 0.0)  # (h, w) minus the distance to the nearest side
    return outside + inside


def _diamond_distance(dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    # Corners at (+-r, 0) and (0, +-r). Exact inside and beside the edges; near a corner, outside, it
    # underestimates, which only widens the anti-aliased fringe there (by at most 0.2 px).
    return (np.abs(dx) + np.abs(dy) - r) / _SQRT_2


def _triangle_distance(dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    # Pointing up: apex (0, -r), base corners (+-r, r). The largest signed distance to the lines of
    # the three sides (slanted sides have outward normals (+-2, -1) / sqrt 5) is exact inside; the
    # |dy| - r term keeps the fringe above the apex within half a pixel of the box.
    slanted = (2.0 * np.abs(dx) - dy - r) / _SQRT_5  # (h, w)
    return np.maximum(slanted, np.abs(dy) - r)


_SIGNED_DISTANCE: dict[str, Callable[[np.ndarray, np.ndarray, float], np.ndarray]] = {
    "circle": _circle_distance,
    "square": _square_distance,
    "diamond": _diamond_distance,
    "triangle": _triangle_distance,
}


def _stroke_width(radius_px: float) -> float:
    """Width in pixels of an outline around a shape of half-side `radius_px` pixels."""
    return max(1.5, 0.2 * radius_px)


@lru_cache(maxsize=None)
def _pixel_centres(size: int) -> np.ndarray:
    return np.arange(size, dtype=np.float64) + 0.5  # (size,)


@lru_cache(maxsize=None)
def _blank_canvas(size: int) -> np.ndarray:
    canvas = np.empty((size, size, 3), dtype=np.uint8)  # (H, W, 3); copied, never drawn on
    canvas[:] = BACKGROUND_RGB
    canvas.flags.writeable = False
    return canvas


def _window(centre: float, radius_px: float, size: int) -> slice:
    """The pixels whose centres lie within radius_px + 1 of `centre` along one axis; every pixel with
    non-zero coverage is among them (the distance bounds above leak at most 0.71 px past the box)."""
    return slice(max(0, math.ceil(centre - radius_px - 1.5)), min(size, math.floor(centre + radius_px + 0.5) + 1))


def _draw(obj: SceneObject, label: int, image: np.ndarray, instance_mask: np.ndarray) -> None:
    """Blend `obj` into `image` (H, W, 3) uint8 and write `label` on its ink in `instance_mask`."""
    size = image.shape[0]
    cx, cy, r = obj.x * size, obj.y * size, obj.radius * size
    rows, cols = _window(cy, r, size), _window(cx, r, size)
    centres = _pixel_centres(size)
    dx = centres[cols] - cx  # (w,), broadcasts as a row
    dy = centres[rows, None] - cy  # (h, 1)
    distance = _SIGNED_DISTANCE[obj.shape](dx, dy, r)  # (h, w)
    if obj.style == "outline":
        half_stroke = _stroke_width(r) / 2
        distance = np.abs(distance + half_stroke) - half_stroke
    coverage = np.clip(0.5 - distance, 0.0, 1.0)  # (h, w)
    patch = image[rows, cols]  # (h, w, 3) uint8 view
    blended = patch + coverage[:, :, None] * (np.asarray(obj.rgb, dtype=np.float64) - patch)  # (h, w, 3)
    patch[...] = np.rint(blended)  # whole numbers in [0, 255], stored as uint8
    instance_mask[rows, cols][distance <= 0.0] = label


def _boxes(scene: Scene, size: int) -> np.ndarray:
    """(K, 4) float32 xyxy pixel boxes of the objects, clipped to the canvas."""
    centres_radii = np.array([(o.x, o.y, o.radius) for o in scene.objects], dtype=np.float64).reshape(-1, 3)
    centres, radii = centres_radii[:, :2] * size, centres_radii[:, 2:] * size  # (K, 2), (K, 1)
    return np.clip(np.concatenate([centres - radii, centres + radii], axis=1), 0, size).astype(np.float32)


def _check_disjoint(scene: Scene) -> None:
    """Refuse a scene with two objects whose boxes overlap (boxes that only touch are allowed): the
    instance mask gives every pixel to one object, so one drawn over another would lose its pixels."""
    objects = scene.objects
    for i, a in enumerate(objects):
        for j in range(i + 1, len(objects)):
            b = objects[j]
            if max(abs(a.x - b.x), abs(a.y - b.y)) < a.radius + b.radius:
                raise ValueError(f"scene.objects[{i}] at ({a.x}, {a.y}) and scene.objects[{j}] at ({b.x}, {b.y}) "
                                 f"overlap: their boxes must be disjoint to render, since the instance mask holds one "
                                 f"object per pixel; move them at least {a.radius + b.radius:.4g} apart in x or in y")


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size={size!r} is not allowed; expected an int in [{MIN_SIZE}, {MAX_SIZE}]")
    return int(size)


def render(scene: Scene, size: int | None = None) -> Rendered:
    """Draw `scene` on a `size` x `size` canvas (default: its preset's image size)."""
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    _check_disjoint(scene)
    size = _check_size(scene.spec.image_size if size is None else size)
    image = _blank_canvas(size).copy()  # (H, W, 3)
    instance_mask = np.zeros((size, size), dtype=np.int32)  # (H, W)
    for i, obj in enumerate(scene.objects):
        _draw(obj, i + 1, image, instance_mask)
    return Rendered(image=image, instance_mask=instance_mask, boxes=_boxes(scene, size), scene=scene)


def render_batch(scenes: list[Scene] | tuple[Scene, ...], size: int | None = None) -> np.ndarray:
    """(N, H, W, 3) uint8: the images of `scenes`, which must all render to the same size."""
    if isinstance(scenes, Scene) or not isinstance(scenes, (list, tuple)):
        raise TypeError(f"scenes must be a list or tuple of Scene, got {type(scenes).__name__}")
    if not scenes:
        raise ValueError("scenes is empty; expected at least one Scene")
    for i, scene in enumerate(scenes):
        if not isinstance(scene, Scene):
            raise TypeError(f"scenes[{i}] is a {type(scene).__name__}; expected a Scene")
    images = [render(scene, size).image for scene in scenes]
    sizes = sorted({image.shape[0] for image in images})
    if len(sizes) > 1:
        raise ValueError(f"scenes render to different sizes {sizes} (their presets differ); pass size= "
                         f"to draw them all at one size")
    return np.stack(images)  # (N, H, W, 3)
