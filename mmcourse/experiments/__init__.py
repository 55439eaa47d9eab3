"""Data and measurements for the notebooks' experiments, one module per notebook, around the models
of `mmcourse.models` (which know nothing of these)."""
