"""Figures of the embedded world: a scene with its boxes and masks, grids of scenes, contact sheets.

A contact sheet shows what one seed of the world yields, in the spirit of the dataset figures of
CLEVR (Johnson et al. 2017): each image with one of its captions and a few questions and answers.
Figures are made with pyplot (so they show inline in a notebook) and never shown here: the caller,
or the notebook, decides when.
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..world.language import describe
from ..world.programs import ask
from ..world.render import Rendered, render
from ..world.scene import Scene, check_count, check_seed, sample_scenes, scene_rng
from ._axes import axes_or_new, check_optional_str

OBJECT_COLORS = plt.get_cmap("tab10").colors  # object i is drawn in OBJECT_COLORS[i % 10]
MASK_ALPHA = 0.5
CAPTION_WIDTH = 36  # characters per line of a caption under or above a scene
CONTACT_SHEET_DPI = 80
SHEET_IMAGE_SIZE = 2.4  # inches of one scene on a contact sheet
SHEET_COLUMN_WIDTH = 2.9  # inches of one column, its text included (36 characters of 7-point monospace)
SHEET_LINE_HEIGHT = 0.125  # inches of one line of 7-point text
SHEET_TITLE_HEIGHT = 0.3  # inches for a title line (the sheet's, or one above each scene)


def draw_scene(scene_or_rendered: Scene | Rendered, ax: Axes | None = None, size: int | None = None,
               boxes: bool = True, masks: bool = False, labels: bool = True, caption: str | None = None) -> Axes:
    """Draw a scene's image; optionally its boxes, its instance masks and each object's index.

    A `Scene` is rendered at `size` (default: its preset's size); a `Rendered` is drawn as it is.
    Object i gets colour `OBJECT_COLORS[i % 10]` in both its box and its mask, and the label `i`
    (its index in `scene.objects`; the instance mask marks it with i + 1). `caption` becomes the
    title, wrapped; without one the title gives the object count.
    """
    rendered = _as_rendered(scene_or_rendered, size)
    caption = check_optional_str("caption", caption)
    ax = axes_or_new(ax, figsize=(4, 4))
    height, width = rendered.image.shape[:2]
    extent = (0, width, height, 0)  # pixel edges at integers, as in the renderer's box coordinates
    ax.imshow(rendered.image, extent=extent, interpolation="nearest")
    if masks:
        ax.imshow(_mask_overlay(rendered.instance_mask), extent=extent, interpolation="nearest")
    for i, (x0, y0, x1, y1) in enumerate(rendered.boxes.tolist()):
        color = OBJECT_COLORS[i % len(OBJECT_COLORS)]
        if boxes:
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=1.5))
        if labels:
            ax.text(x0, y0, str(i), color="white", fontsize=9, ha="left", va="bottom", clip_on=False,
                    bbox=dict(facecolor=color, edgecolor="none", pad=1.0))
    title = caption if caption is not None else f"scene with {len(rendered.scene)} objects"
    ax.set_title(textwrap.fill(title, CAPTION_WIDTH), fontsize=9)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    return ax


def draw_box(ax: Axes, box: Sequence[float], dashed: bool = False, linewidth: float = 1.5) -> None:
    """Outline `box` = (x0, y0, x1, y1), in the axes' data coordinates, so that it shows on any
    picture and clashes with no object's colour: a black line, solid or dashed, over a white one."""
    if len(box) != 4:
        raise ValueError(f"box must be (x0, y0, x1, y1), got {tuple(box)!r}")
    x0, y0, x1, y1 = (float(v) for v in box)
    for color, style, width in (("white", "-", 2 * linewidth), ("black", "--" if dashed else "-", linewidth)):
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linestyle=style,
                               linewidth=width))


def scene_grid(scenes: Sequence[Scene | Rendered], captions: Sequence[str] | None = None, ncols: int = 4,
               size: int | None = None, boxes: bool = False) -> Figure:
    """A figure with one panel per scene, `ncols` panels a row, each titled by its caption (or index)."""
    if isinstance(scenes, (Scene, Rendered)) or not isinstance(scenes, (list, tuple)):
        raise TypeError(f"scenes must be a list or tuple of Scene or Rendered, got {type(scenes).__name__}")
    if not scenes:
        raise ValueError("scenes is empty; expected at least one Scene or Rendered")
    if captions is not None and (isinstance(captions, str) or len(captions) != len(scenes)):
        seen = "a single str" if isinstance(captions, str) else f"{len(captions)} captions"
        raise ValueError(f"captions must hold one str per scene ({len(scenes)}), got {seen}")
    ncols = check_count("ncols", ncols, 1)
    fig, axes = _panel_grid(len(scenes), ncols, panel_size=(2.6, 2.9))
    for i, (scene, ax) in enumerate(zip(scenes, axes)):
        draw_scene(scene, ax=ax, size=size, boxes=boxes, labels=boxes,
                   caption=captions[i] if captions is not None else f"scene {i}")
    fig.suptitle(f"{len(scenes)} scenes")
    return fig


def contact_sheet(n: int, seed: int, path: str | os.PathLike | None = None, preset: str = "default",
                  questions_per_scene: int = 2) -> Figure:
    """The first `n` scenes of `sample_scenes(n, seed, preset)`, each with a caption and Q&A under it.

    The caption and questions of scene i are drawn from seeds that depend only on (seed, i). With
    `path` (a .png file; missing folders are created) the sheet is saved there at a modest dpi.
    """
    n = check_count("n", n, 1)
    seed = check_seed(seed)
    questions_per_scene = check_count("questions_per_scene", questions_per_scene)
    if path is not None:
        path = _check_png_path(path)
    scenes = sample_scenes(n, seed, preset)
    texts = [_sheet_text(scene, seed, i, questions_per_scene) for i, scene in enumerate(scenes)]
    fig = _sheet_figure(scenes, texts, ncols=min(4, n))
    fig.suptitle(f"contact sheet: {n} scenes of preset {preset!r}, seed {seed}")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=CONTACT_SHEET_DPI, format="png")
    return fig


def _sheet_figure(scenes: list[Scene], texts: list[str], ncols: int) -> Figure:
    """Scenes in rows of `ncols`, each titled by its index with its text under it, laid out in inches
    from the top: a line for the suptitle, then per row a title line, the images, their texts."""
    rows = [texts[start:start + ncols] for start in range(0, len(texts), ncols)]
    text_heights = [SHEET_LINE_HEIGHT * (max(text.count("\n") for text in row) + 2) for row in rows]
    width = SHEET_COLUMN_WIDTH * ncols
    height = SHEET_TITLE_HEIGHT + sum(SHEET_TITLE_HEIGHT + SHEET_IMAGE_SIZE + h for h in text_heights)
    fig = plt.figure(figsize=(width, height))

    def add_axes(left: float, bottom: float, box_height: float) -> Axes:  # arguments in inches
        return fig.add_axes([left / width, bottom / height, SHEET_IMAGE_SIZE / width, box_height / height])

    top = height - SHEET_TITLE_HEIGHT
    for row, text_height in enumerate(text_heights):
        image_bottom = top - SHEET_TITLE_HEIGHT - SHEET_IMAGE_SIZE
        for col, text in enumerate(rows[row]):
            i = row * ncols + col
            left = col * SHEET_COLUMN_WIDTH + (SHEET_COLUMN_WIDTH - SHEET_IMAGE_SIZE) / 2
            draw_scene(scenes[i], ax=add_axes(left, image_bottom, SHEET_IMAGE_SIZE), boxes=False, labels=False,
                       caption=f"scene {i}")
            text_ax = add_axes(left, image_bottom - text_height, text_height)
            text_ax.set_axis_off()
            text_ax.text(0.0, 1.0 - SHEET_LINE_HEIGHT / 2 / text_height, text, transform=text_ax.transAxes,
                         ha="left", va="top", fontsize=7, family="monospace")
        top = image_bottom - text_height
    return fig


def _as_rendered(scene_or_rendered, size) -> Rendered:
    if isinstance(scene_or_rendered, Scene):
        return render(scene_or_rendered, size)
    if not isinstance(scene_or_rendered, Rendered):
        raise TypeError(f"scene_or_rendered must be a Scene or Rendered, got {type(scene_or_rendered).__name__}")
    drawn_size = scene_or_rendered.image.shape[0]
    if size is not None and size != drawn_size:
        raise ValueError(f"size={size!r} does not match the Rendered image of {drawn_size} px; pass the Scene "
                         f"itself to render it at another size")
    return scene_or_rendered


def _mask_overlay(instance_mask: np.ndarray) -> np.ndarray:
    """(H, W, 4) RGBA: object i's pixels in its colour at MASK_ALPHA, background transparent."""
    palette = np.array([(*c, MASK_ALPHA) for c in OBJECT_COLORS])  # (10, 4)
    overlay = palette[(instance_mask - 1) % len(palette)]  # (H, W, 4)
    overlay[instance_mask == 0] = 0.0
    return overlay


def _panel_grid(count: int, ncols: int, panel_size: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    """A figure with `count` panels in rows of `ncols` (or fewer); the unused panels are hidden."""
    ncols = min(ncols, count)
    nrows = -(-count // ncols)  # ceil
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows), squeeze=False)
    axes = list(axes.flat)
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes[:count]


def _item_seed(seed: int, index: int, stream: str) -> int:
    """An int seed for item `index` of a seeded collection that depends only on (seed, index, stream)."""
    return int(scene_rng(seed, index, stream).integers(2**31 - 1))


def _sheet_text(scene: Scene, seed: int, index: int, questions_per_scene: int) -> str:
    """The caption and question/answer lines printed under scene `index` of a contact sheet."""
    caption = describe(scene, _item_seed(seed, index, "caption"), n=1)[0]
    lines = [textwrap.fill(caption, CAPTION_WIDTH)]
    if questions_per_scene:
        for question in ask(scene, _item_seed(seed, index, "questions"), questions_per_scene):
            lines.append(textwrap.fill(f"Q: {question.text}", CAPTION_WIDTH, subsequent_indent="   "))
            lines.append(f"A: {question.answer}")
    return "\n".join(lines)


def _check_png_path(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path={str(path)!r} must end in .png; the contact sheet is saved as PNG")
    return path
