"""Training curves: one line per metric over the epochs of a `fit` history."""
from __future__ import annotations

import numbers
from typing import Sequence

from matplotlib.axes import Axes

from ._axes import axes_or_new


def plot_history(history: Sequence[dict], keys: Sequence[str] | None = None, ax: Axes | None = None) -> Axes:
    """Plot per-epoch metrics from `history`, a list of dicts such as
    `[{"epoch": 1, "train_loss": 0.7, "val_accuracy": 0.6}, ...]`.

    The x axis is each entry's "epoch" (or its position, from 1, when entries have none). `keys`
    defaults to every numeric key but "epoch", in order of first appearance. A key absent from some
    entries (a metric logged every other epoch) is drawn where it is present.
    """
    if not isinstance(history, (list, tuple)):
        raise TypeError(f"history must be a list of dicts, got a {type(history).__name__}")
    if not history:
        raise ValueError("history is empty; expected at least one epoch's dict")
    for i, entry in enumerate(history):
        if not isinstance(entry, dict):
            raise TypeError(f"history[{i}] is a {type(entry).__name__}; expected a dict")
    keys = _default_keys(history) if keys is None else _check_keys(keys, history)
    if not keys:
        raise ValueError("history has no numeric metric to plot (keys other than 'epoch')")
    ax = axes_or_new(ax, figsize=(5, 3.5))
    for key in keys:
        points = [(entry.get("epoch", i + 1), entry[key]) for i, entry in enumerate(history) if key in entry]
        for epoch, value in points:
            if not _is_number(value):
                raise TypeError(f"history value {key!r}={value!r} at epoch {epoch} is not a number")
        epochs, values = zip(*points)
        ax.plot(epochs, values, marker="o", markersize=3, label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("value")
    ax.set_title("training history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return ax


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _default_keys(history: Sequence[dict]) -> list[str]:
    keys: dict[str, None] = {}  # an ordered set
    for entry in history:
        keys.update((key, None) for key, value in entry.items() if key != "epoch" and _is_number(value))
    return list(keys)


def _check_keys(keys, history: Sequence[dict]) -> list[str]:
    if isinstance(keys, str):
        raise TypeError(f"keys must be a list of str, got the single str {keys!r}; wrap it in a list")
    keys = list(keys)
    if not keys:
        raise ValueError("keys is empty; expected at least one metric name")
    logged = {key for entry in history for key in entry}
    for key in keys:
        if key not in logged:
            raise ValueError(f"keys contains {key!r}, which no history entry holds; "
                             f"expected some of {sorted(logged)}")
    return keys

