"""Where the project's files live: the project root, the results folder and the data cache."""
from __future__ import annotations

import os
from pathlib import Path

RESULTS_ENV = "MMCOURSE_RESULTS_DIR"
CACHE_ENV = "MMCOURSE_CACHE_DIR"


def project_root(start: Path | None = None) -> Path:
    """The nearest folder above `start` (default: the working directory) holding `pyproject.toml`
    and `notebooks/`; the working directory itself when there is none."""
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "notebooks").is_dir():
            return folder
    return start


def results_dir() -> Path:
    """Where results go: $MMCOURSE_RESULTS_DIR, else <project root>/build/results."""
    configured = os.environ.get(RESULTS_ENV)
    return Path(configured) if configured else project_root() / "build" / "results"


def cache_dir() -> Path:
    """Where generated arrays are cached: $MMCOURSE_CACHE_DIR, else <project root>/data/cache."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else project_root() / "data" / "cache"
