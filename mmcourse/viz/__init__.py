"""Figures for the course: scenes, heat maps over images, training curves, source listings and tables.

Everything draws with matplotlib, titles and labels its axes, takes an optional `ax` and returns the
Axes or Figure it drew; nothing calls `plt.show()`, so the functions work unchanged under the
headless "Agg" backend of tests and CI.
"""
from .heatmap import overlay_heatmap, overlay_object_weights, upsample_nearest, word_weights
from .history import plot_history
from .scenes import contact_sheet, draw_box, draw_scene, scene_grid
from .source import show
from .tables import markdown_table, show_table

__all__ = ["contact_sheet", "draw_box", "draw_scene", "markdown_table", "overlay_heatmap", "overlay_object_weights", "plot_history",
           "scene_grid", "show", "show_table", "upsample_nearest", "word_weights"]
