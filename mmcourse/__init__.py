"""mmcourse: the package behind an interactive course on multimodal machine learning.

The notebooks import what they need from here: `course_config` (the scale knob), `get_device`,
`seed_everything`, `report` (the results contract) and `show` (display a function's source).
Models live in `mmcourse.models`, the embedded world in `mmcourse.world`, figures in `mmcourse.viz`.
"""
from .config import course_config
from .device import env_report, get_device, seed_everything
from .results import report

__version__ = "0.1.0"


def show(obj) -> None:
    """Display the source of a function or class (highlighted in a notebook)."""
    from .viz import show as _show

    _show(obj)


__all__ = ["course_config", "env_report", "get_device", "report", "seed_everything", "show", "__version__"]
