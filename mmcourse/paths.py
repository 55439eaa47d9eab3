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


def _configured_folder(env: str) -> Path | None:
    """The folder named by the environment variable `env`, None when it is unset or empty. ValueError
    when it names a file, or a path under one, since no folder can be made there."""
    configured = os.environ.get(env)
    if not configured:
        return None
    folder = Path(configured)
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if not existing.is_dir():
        raise ValueError(f"{env}={configured!r} must name a folder (or a path where one can be made), "
                         f"but {existing} is a file")
    return folder


def results_dir() -> Path:
    """Where results go: $MMCOURSE_RESULTS_DIR, else <project root>/build/results."""
    return _configured_folder(RESULTS_ENV) or project_root() / "build" / "results"


def cache_dir() -> Path:
    """Where generated arrays are cached: $MMCOURSE_CACHE_DIR, else <project root>/data/cache."""
    return _configured_folder(CACHE_ENV) or project_root() / "data" / "cache"
