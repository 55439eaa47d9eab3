"""Scenes of the embedded world: objects with shape, colour, size, style and position.

The world follows SHAPES (Andreas et al. 2016), Sort-of-CLEVR (Santoro et al. 2017) and CLEVR
(Johnson et al. 2017), drawn in 2-D. A scene is pure data; `render` turns it into pixels, `describe`
into captions, `ask` into questions. Everything is a deterministic function of a seed: scene `i` of
`sample_scenes(n, seed)` depends only on `(seed, i)`, so a longer list starts with a shorter one.

Coordinates: `x` grows to the right and `y` grows downwards, both in [0, 1] (image convention), so
"above" means a smaller `y`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from numbers import Real
from typing import Sequence

import numpy as np

from ..device import check_seed

ATTRIBUTES = ("shape", "color", "size", "style")

# RGB of every colour name the world knows; a preset picks a subset.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 50, 47),
    "green": (60, 170, 70),
    "blue": (40, 90, 220),
    "yellow": (235, 200, 40),
    "purple": (145, 70, 190),
    "cyan": (40, 190, 200),
    "orange": (245, 130, 30),
    "gray": (128, 128, 128),
}
# Half the side of the square box that holds an object, as a fraction of the canvas side.
SIZE_RADIUS: dict[str, float] = {"small": 0.075, "large": 0.12, "medium": 0.067}
ALL_SHAPES = ("circle", "square", "triangle", "diamond")
ALL_STYLES = ("filled", "outline")
BACKGROUND_RGB = (240, 240, 240)
# The most scenes one `sample_scenes` call makes: each takes about 2 KB of memory and 1 ms to sample,
# so this is already gigabytes and hours; a larger count is a mistake better refused than run.
MAX_SCENES = 10_000_000
SCENE_BYTES = 2_000  # the rough memory of one sampled scene, for the message refusing larger counts


@dataclass(frozen=True)
class Preset:
    """The vocabulary and layout rules of one family of scenes."""

    name: str
    shapes: tuple[str, ...]
    colors: tuple[str, ...]
    sizes: tuple[str, ...]
    styles: tuple[str, ...]
    min_objects: int
    max_objects: int
    image_size: int  # the render size this preset is meant for
    unique_colors: bool = False  # Sort-of-CLEVR: exactly one object of each colour
    margin: float = 0.02  # minimum gap between two objects, as a fraction of the canvas
    # CLEVR-CoGenT: ((shape, colours it may take), ...); a shape not listed takes any colour.
    shape_colors: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def values(self, attribute: str) -> tuple[str, ...]:
        """The values `attribute` takes in this preset (shapes, colours, sizes or styles)."""
        _check_attribute(attribute)
        return {"shape": self.shapes, "color": self.colors, "size": self.sizes, "style": self.styles}[attribute]


_DEFAULT = Preset(
    name="default",
    shapes=("circle", "square", "triangle"),
    colors=("red", "green", "blue", "yellow", "purple", "cyan"),
    sizes=("small", "large"),
    styles=("filled", "outline"),
    min_objects=2,
    max_objects=6,
    image_size=64,
)
_WARM, _COOL = ("red", "green", "blue"), ("yellow", "purple", "cyan")  # the CoGenT palettes

PRESETS: dict[str, Preset] = {
    "default": _DEFAULT,
    # CLEVR-CoGenT (Johnson et al. 2017) in our world: condition A gives squares only red, green or
    # blue and triangles only yellow, purple or cyan; condition B swaps the two palettes. Circles
    # take any colour in both. A model trained on A and tested on B meets colour-shape pairs it
    # never saw: does it compose "yellow" and "square", or did it learn the pairs?
    "cogent_a": replace(_DEFAULT, name="cogent_a", shape_colors=(("square", _WARM), ("triangle", _COOL))),
    "cogent_b": replace(_DEFAULT, name="cogent_b", shape_colors=(("square", _COOL), ("triangle", _WARM))),
    # Santoro et al. 2017: 75x75 images, 6 colours, one square or circle of each colour.
    "sort_of_clevr": Preset(
        name="sort_of_clevr",
        shapes=("square", "circle"),
        colors=("red", "green", "blue", "orange", "gray", "yellow"),
        sizes=("medium",),
        styles=("filled",),
        min_objects=6,
        max_objects=6,
        image_size=75,
        unique_colors=True,
    ),
}


@dataclass(frozen=True)
class SceneObject:
    """One object. `x`, `y` are its centre in [0, 1]; `radius` is half the side of the axis-aligned
    square box that holds the shape, in the same unit. Boxes of a sampled scene never overlap."""

    shape: str
    color: str
    size: str
    style: str
    x: float
    y: float

    def __post_init__(self):
        for name, known in (("shape", ALL_SHAPES), ("color", tuple(COLOR_RGB)), ("size", tuple(SIZE_RADIUS)),
                            ("style", ALL_STYLES)):
            value = getattr(self, name)
            if value not in known:
                raise ValueError(f"SceneObject {name}={value!r} is unknown; expected one of {known}")
        for name in ("x", "y"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real):
                raise TypeError(f"SceneObject {name} must be a real number in [0, 1], got {type(value).__name__} "
                                f"{value!r}")
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"SceneObject {name} must lie in [0, 1], got {float(value)}")
            if not isinstance(value, float):  # ints and NumPy scalars such as np.float32 become Python floats
                object.__setattr__(self, name, float(value))

    @property
    def radius(self) -> float:
        return SIZE_RADIUS[self.size]

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLOR_RGB[self.color]

    def attribute(self, name: str) -> str:
        _check_attribute(name)
        return getattr(self, name)

    def phrase(self) -> str:
        """The object's full noun phrase, e.g. 'small red filled circle'."""
        return f"{self.size} {self.color} {self.style} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A list of objects and the preset whose vocabulary they use. Sampled scenes place the objects'
    boxes apart; a hand-built one may put them anywhere for captions and questions, but `render`
    refuses overlapping boxes."""

    objects: tuple[SceneObject, ...]
    preset: str = "default"
    seed: tuple[int, ...] = field(default=(), compare=False)  # where it came from, if sampled

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(self.objects))
        if self.preset not in PRESETS:
            raise ValueError(f"Scene preset={self.preset!r} is unknown; expected one of {tuple(PRESETS)}")
        for i, obj in enumerate(self.objects):
            if not isinstance(obj, SceneObject):
                raise TypeError(f"Scene objects[{i}] is a {type(obj).__name__}; expected a SceneObject")

    def __len__(self) -> int:
        return len(self.objects)

    @property
    def spec(self) -> Preset:
        return PRESETS[self.preset]

    def with_objects(self, objects: Sequence[SceneObject]) -> "Scene":
        return replace(self, objects=tuple(objects))


def get_preset(preset: str) -> Preset:
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"preset={preset!r} is unknown; expected one of {tuple(PRESETS)}")
    return PRESETS[preset]


def _check_attribute(attribute: str) -> None:
    if attribute not in ATTRIBUTES:
        raise ValueError(f"attribute={attribute!r} is unknown; expected one of {ATTRIBUTES}")


def check_count(name: str, value, minimum: int = 0) -> int:
    """Validate a count argument (an int >= minimum, bools refused) and return it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def scene_rng(seed: int, index: int, stream: str = "scene") -> np.random.Generator:
    """The generator for item `index` of a seeded collection; `stream` separates independent uses."""
    stream_id = int.from_bytes(stream.encode()[:8].ljust(8, b"\0"), "little")
    return np.random.default_rng([seed, index, stream_id])


def sample_scenes(n: int, seed: int, preset: str = "default", num_objects: int | None = None) -> list[Scene]:
    """`n` random scenes of `preset`; scene i depends only on (seed, i).

    `num_objects` fixes the object count (otherwise uniform in the preset's [min, max]). A count
    that cannot be placed without overlap raises ValueError.
    """
    n = check_count("n", n)
    if n > MAX_SCENES:
        raise ValueError(f"n={n} scenes would not fit in memory (about {n * SCENE_BYTES / 1e9:.3g} GB at "
                         f"{SCENE_BYTES} bytes each); sample_scenes makes at most {MAX_SCENES:,} per call")
    seed = check_seed(seed)
    spec = get_preset(preset)
    if num_objects is not None:
        num_objects = check_count("num_objects", num_objects, 1)
        if spec.unique_colors and num_objects > len(spec.colors):
            raise ValueError(f"num_objects={num_objects} exceeds the {len(spec.colors)} colours of preset "
                             f"{preset!r}, which gives every object its own colour")
        _check_fits(num_objects, spec)
    return [_sample_scene(spec, scene_rng(seed, i), num_objects, (seed, i)) for i in range(n)]


def _check_fits(num_objects: int, spec: Preset) -> None:
    """Refuse counts whose objects could not fit on the canvas even when packed well."""
    radius = min(SIZE_RADIUS[s] for s in spec.sizes) + spec.margin / 2
    side = 1.0 - 2 * spec.margin
    capacity = int(side / (2 * radius)) ** 2
    if num_objects > capacity:
        raise ValueError(f"num_objects={num_objects} cannot be placed without overlap on preset "
                         f"{spec.name!r}: at most {capacity} objects fit the canvas")


def _sample_scene(spec: Preset, rng: np.random.Generator, num_objects: int | None, seed: tuple) -> Scene:
    count = num_objects if num_objects is not None else int(rng.integers(spec.min_objects, spec.max_objects + 1))
    for _ in range(50):  # restart the layout when rejection sampling gets stuck
        objects = _place(spec, rng, count)
        if objects is not None:
            return Scene(objects=tuple(objects), preset=spec.name, seed=seed)
    raise ValueError(f"num_objects={count} objects could not be placed without overlap on preset "
                     f"{spec.name!r} after many tries; ask for fewer")


def _place(spec: Preset, rng: np.random.Generator, count: int) -> list[SceneObject] | None:
    colors = list(rng.permutation(spec.colors)[:count]) if spec.unique_colors else None
    objects: list[SceneObject] = []
    palettes = dict(spec.shape_colors)
    for k in range(count):
        if palettes:  # CoGenT: the shape first, then a colour its palette allows
            shape = str(rng.choice(spec.shapes))
            color = str(rng.choice(palettes.get(shape, spec.colors)))
            size, style = (str(rng.choice(values)) for values in (spec.sizes, spec.styles))
        else:
            color = str(colors[k]) if colors is not None else str(rng.choice(spec.colors))
            shape, size, style = (str(rng.choice(values)) for values in (spec.shapes, spec.sizes, spec.styles))
        radius = SIZE_RADIUS[size]
        low, high = radius + spec.margin, 1.0 - radius - spec.margin
        for _ in range(200):
            x, y = (float(v) for v in np.round(rng.uniform(low, high, size=2), 4))
            if all(max(abs(x - o.x), abs(y - o.y)) >= radius + o.radius + spec.margin for o in objects):
                objects.append(SceneObject(shape, color, size, style, x, y))
                break
        else:
            return None
    return objects
