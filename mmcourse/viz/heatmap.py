"""Heat maps over images: where a model looks.

`overlay_object_weights` draws attention over *objects* instead of grid cells (bottom-up attention,
Anderson et al. 2018; the modules of neural module networks): each box is filled in proportion to
its weight. `word_weights` draws attention over the words of a question as bars.

Used for the cross-modal attention maps of the alignment section (e.g. a word's attention over the
4x4 patch grid of a ViLT-style model, Kim et al. 2021), the stacked-attention hops of VQA (Yang et
al. 2016), and per-pixel similarity maps of open-vocabulary segmentation (LSeg, Li et al. 2022).
A coarse map is upsampled to the image by *nearest-neighbour* repetition, so each cell of a patch
grid stays a visible block instead of being smeared across its neighbours.
"""
from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.patches import Rectangle

from ._axes import axes_or_new, check_optional_str


def upsample_nearest(heat: np.ndarray, height: int, width: int) -> np.ndarray:
    """(height, width): `heat` (h, w) resized by nearest neighbour; output pixel (r, c) takes cell
    (floor(r * h / height), floor(c * w / width)), so a 4x4 grid over 64x64 gives 16x16 blocks."""
    rows = np.arange(height) * heat.shape[0] // height  # (height,)
    cols = np.arange(width) * heat.shape[1] // width  # (width,)
    return heat[rows[:, None], cols[None, :]]


def overlay_heatmap(image, heat, ax: Axes | None = None, alpha: float = 0.5, cmap: str = "inferno",
                    title: str | None = None, colorbar: bool = True) -> Axes:
    """Draw `heat` (h, w), any non-negative map, over `image` (H, W, 3) and return the Axes.

    `image` is uint8, or float in [0, 1]; tensors are accepted and moved to the CPU. `heat` is
    upsampled to (H, W) by `upsample_nearest` and coloured from 0 to its maximum with `cmap`, at
    opacity `alpha`; `colorbar` adds a scale.
    """
    image = _check_image(_to_numpy(image))
    heat = _check_heat(_to_numpy(heat))
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    title = check_optional_str("title", title)
    ax = axes_or_new(ax, figsize=(4.5, 4))
    height, width = image.shape[:2]
    extent = (0, width, height, 0)  # pixel edges at integers
    ax.imshow(image, extent=extent, interpolation="nearest")
    peak = float(heat.max()) or 1.0  # an all-zero map is drawn at the bottom of the scale
    shown = ax.imshow(upsample_nearest(heat, height, width), extent=extent, interpolation="nearest",
                      cmap=cmap, alpha=alpha, vmin=0.0, vmax=peak)
    if colorbar:
        ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="heat")
    ax.set_title(title if title is not None else f"{heat.shape[0]}x{heat.shape[1]} heat map over the image")
    ax.set_axis_off()
    return ax


def overlay_object_weights(image, boxes, weights, ax: Axes | None = None, title: str | None = None,
                           cmap: str = "inferno") -> Axes:
    """Draw `image` (H, W, 3) with each of the K `boxes` (K, 4) xyxy pixels filled by its weight
    in `weights` (K,) (non-negative; 0 is transparent, the largest weight or 1, whichever is larger,
    opaque) and labelled with it. Padding boxes must be left out by the caller."""
    image = _check_image(_to_numpy(image))
    boxes, weights = _to_numpy(boxes).astype(np.float64), _to_numpy(weights).astype(np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (K, 4), got {boxes.shape}")
    if weights.shape != (len(boxes),):
        raise ValueError(f"weights has shape {weights.shape}; expected ({len(boxes)},), one weight per box")
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("weights must be finite and non-negative")
    title = check_optional_str("title", title)
    ax = axes_or_new(ax, figsize=(4, 4))
    height, width = image.shape[:2]
    ax.imshow(image, extent=(0, width, height, 0), interpolation="nearest")
    scale, colors = max(1.0, float(weights.max(initial=0.0))), colormaps[cmap]
    for (x0, y0, x1, y1), weight in zip(boxes.tolist(), weights.tolist()):
        share = weight / scale
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor=colors(share), alpha=0.15 + 0.6 * share,
                               edgecolor=colors(share), linewidth=1.5))
        ax.text(x0, y0, f"{weight:.2f}", color="white", fontsize=9, ha="left", va="bottom", clip_on=False,
                bbox=dict(facecolor="black", edgecolor="none", pad=1.0, alpha=0.7))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_title(title if title is not None else "attention over objects", fontsize=9)
    ax.set_axis_off()
    return ax


def word_weights(words, weights, ax: Axes | None = None, title: str | None = None) -> Axes:
    """Bars of `weights` (L,) over `words` (L strings): where attention over a question goes."""
    words, weights = [str(w) for w in words], _to_numpy(weights).astype(np.float64)
    if weights.shape != (len(words),):
        raise ValueError(f"weights has shape {weights.shape}; expected ({len(words)},), one weight per word")
    title = check_optional_str("title", title)
    ax = axes_or_new(ax, figsize=(max(3.0, 0.45 * len(words)), 2.2))
    ax.bar(range(len(words)), weights, color="tab:purple")
    ax.set_xticks(range(len(words)), words, rotation=60, ha="right", fontsize=9)
    ax.set_ylabel("weight")
    ax.set_title(title if title is not None else "attention over the words", fontsize=9)
    return ax


def _to_numpy(array) -> np.ndarray:
    """A NumPy view of an array-like; torch tensors (on any device, with or without grad) included."""
    if hasattr(array, "detach"):  # a torch.Tensor, without importing torch here
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _check_image(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3), got {image.shape}")
    if image.dtype == np.uint8:
        return image
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"image must be uint8 or float in [0, 1], got dtype {image.dtype}")
    low, high = float(np.min(image)), float(np.max(image))
    if not (0.0 <= low and high <= 1.0):  # also refuses NaN
        raise ValueError(f"image is float, so its values must lie in [0, 1]; got range [{low:.3g}, {high:.3g}]")
    return image


def _check_heat(heat: np.ndarray) -> np.ndarray:
    if heat.ndim != 2 or 0 in heat.shape:
        raise ValueError(f"heat must be a non-empty 2-D map (h, w), got shape {heat.shape}")
    if not (np.issubdtype(heat.dtype, np.floating) or np.issubdtype(heat.dtype, np.integer)):
        raise ValueError(f"heat must hold real numbers, got dtype {heat.dtype}")
    heat = heat.astype(np.float64)
    if not np.isfinite(heat).all():
        raise ValueError("heat contains NaN or infinite values; expected finite non-negative numbers")
    if heat.min() < 0:
        raise ValueError(f"heat must be non-negative, got a minimum of {heat.min():.3g}")
    return heat
