"""Figures for the course: scenes, heat maps over images, training curves, and source listings.

Everything draws with matplotlib, titles and labels its axes, takes an optional `ax` and returns the
Axes or Figure it drew; nothing calls `plt.show()`, so the functions work unchanged under the
headless "Agg" backend of tests and CI.
"""
from .heatmap import overlay_heatmap, overlay_object_weights, upsample_nearest, word_weights
from .history import plot_history
from .scenes import contact_sheet, draw_scene, scene_grid
from .source import show

__all__ = ["contact_sheet", "draw_scene", "overlay_heatmap", "overlay_object_weights", "plot_history", "scene_grid",
           "show", "upsample_nearest", "word_weights"]
