"""The results contract: each notebook ends with `mmcourse.report(name, metrics)`.

`report` writes `build/results/<name>.json` holding the scale, seed, device, wall time and the
notebook's headline figures; `mmcourse run` gathers those files into one table and the notebook
tests assert floors on them. The scale, seed and start time come from the notebook's own calls to
`mmcourse.course_config` and `mmcourse.seed_everything`, so a notebook only names its figures.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

from .paths import results_dir

# What the current process (a notebook kernel) has declared so far.
_RUN = {"scale": None, "seed": None, "started": None}


def note_run(scale: str | None = None, seed: int | None = None) -> None:
    """Remember the scale/seed of this run; the first call starts the wall clock."""
    if _RUN["started"] is None:
        _RUN["started"] = time.perf_counter()
    if scale is not None:
        _RUN["scale"] = scale
    if seed is not None:
        _RUN["seed"] = int(seed)


def _check_metrics(metrics) -> dict[str, float]:
    if not isinstance(metrics, dict) or not metrics:
        raise TypeError(f"metrics must be a non-empty dict of name -> number, got {type(metrics).__name__}")
    clean = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"metrics keys must be non-empty str, got {key!r}")
        if hasattr(value, "item"):  # numpy / torch scalars
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"metrics[{key!r}]={value!r} must be a finite number")
        clean[key] = value
    return clean


def report(name: str, metrics: dict, *, scale: str | None = None, seed: int | None = None,
           device: str | None = None) -> Path:
    """Write the headline figures of notebook `name` to `<results dir>/<name>.json`; print them.

    Returns the path written. The file is replaced atomically, so a reader never sees half of it.
    """
    from .device import get_device

    if not isinstance(name, str) or not name or Path(name).name != name:
        raise ValueError(f"name must be a plain file stem like '01_challenges', got {name!r}")
    record = {
        "notebook": name,
        "scale": scale or _RUN["scale"],
        "seed": seed if seed is not None else _RUN["seed"],
        "device": device or str(get_device()),
        "wall_time_s": round(time.perf_counter() - _RUN["started"], 2) if _RUN["started"] else None,
        "metrics": _check_metrics(metrics),
    }
    folder = results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as handle:
        json.dump(record, handle, indent=2, sort_keys=True)
    os.replace(handle.name, path)
    print(format_table([record]))
    return path


def load_results(folder: Path | None = None) -> list[dict]:
    """Every results record in `folder` (default: results_dir()), sorted by notebook name."""
    folder = Path(folder) if folder is not None else results_dir()
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def format_value(value: int | float) -> str:
    """A headline figure as shown in tables: floats to 4 significant digits, ints whole."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_seconds(seconds: float | None) -> str:
    """A wall time in whole seconds; '-' when the notebook did not record one."""
    return "-" if seconds is None else f"{seconds:.0f}"


def _align(rows: list[tuple[str, ...]]) -> str:
    """Rows of cells as left-aligned columns, the first row a header underlined with dashes."""
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_table(records: list[dict]) -> str:
    """One plain-text table: notebook, scale, wall time, then one line per headline figure."""
    rows = [("notebook", "scale", "time (s)", "figure", "value")]
    for record in records:
        for i, (key, value) in enumerate(sorted(record["metrics"].items())):
            head = (record["notebook"], str(record["scale"]), str(record["wall_time_s"])) if i == 0 else ("", "", "")
            rows.append((*head, key, format_value(value)))
    return _align(rows)


def format_summary(records: list[dict], figures: int = 3) -> str:
    """A compact plain-text table, one line per notebook: notebook, scale, wall time and its first
    `figures` headline figures (in name order), then how many more it reported."""
    if isinstance(figures, bool) or not isinstance(figures, int) or figures < 1:
        raise ValueError(f"figures must be an int >= 1, got {figures!r}")
    rows = [("notebook", "scale", "time (s)", "headline figures")]
    for record in records:
        metrics = sorted(record["metrics"].items())
        shown = ", ".join(f"{key}={format_value(value)}" for key, value in metrics[:figures])
        more = f" (+{len(metrics) - figures} more)" if len(metrics) > figures else ""
        rows.append((record["notebook"], str(record["scale"]), format_seconds(record["wall_time_s"]), shown + more))
    return _align(rows)
