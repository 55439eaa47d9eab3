"""A disk cache for generated arrays, keyed by a hash of what generated them.

Generating thousands of rendered scenes takes seconds; a notebook re-run should not pay twice. A
dataset describes itself by a JSON-able `spec` (kind, sizes, seeds, the world's version); the arrays
it builds are stored as `<cache dir>/<kind>-<hash>.npz` together with the spec itself and a checksum
of their bytes (the spec's included). Files are written to a temporary name and renamed, so a crash
never leaves a half-written file under the real name; a file that is corrupt or partial anyway (a
truncated copy, a bit flip) fails its checksum or its unzip, and a sound file built from another spec
(copied or renamed under this spec's name) fails the spec check: either is rebuilt, never trusted.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from ..paths import cache_dir

# Bump when a generator changes its output for the same spec, so old caches stop matching.
WORLD_VERSION = 3  # 3: the affect task's sarcasm rule
CHECKSUM_KEY = "__checksum__"
SPEC_KEY = "__spec__"  # the spec_text the arrays were built from, stored beside them
RESERVED_KEYS = (CHECKSUM_KEY, SPEC_KEY)


def spec_text(spec: dict) -> str:
    """`spec` and the world version as JSON with sorted keys: the same text for the same spec."""
    if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
        raise TypeError(f"spec must be a dict with a str 'kind', got {spec!r}")
    try:
        return json.dumps({"world_version": WORLD_VERSION, **spec}, sort_keys=True)
    except TypeError as error:
        raise TypeError(f"spec must hold JSON values only: {error}") from None


def spec_key(spec: dict) -> str:
    """A short stable hash of `spec` (JSON with sorted keys) and the world version."""
    return hashlib.sha256(spec_text(spec).encode()).hexdigest()[:16]


def checksum(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over every array's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _read(path: Path, text: str) -> dict[str, np.ndarray] | None:
    """The arrays stored at `path` for the spec whose `spec_text` is `text`; None for a sound file of
    the format before specs were stored; ValueError when the file is damaged in any way or was built
    from another spec."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
        raise ValueError(f"unreadable cache file {path.name}: {error}") from None
    expected = arrays.pop(CHECKSUM_KEY, None)
    if expected is None or str(expected) != checksum(arrays):
        raise ValueError(f"cache file {path.name} fails its checksum")
    built_from = arrays.pop(SPEC_KEY, None)
    if built_from is None:
        return None
    if str(built_from) != text:
        raise ValueError(f"cache file {path.name} was built from the spec {built_from}, not from {text}")
    return arrays


def _write(path: Path, arrays: dict[str, np.ndarray], text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    stored = {**arrays, SPEC_KEY: np.array(text)}
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.stem, suffix=".tmp", delete=False) as handle:
        temporary = Path(handle.name)
        try:
            np.savez(handle, **stored, **{CHECKSUM_KEY: np.array(checksum(stored))})
        except BaseException:
            handle.close()
            temporary.unlink(missing_ok=True)
            raise
    os.replace(temporary, path)


def cached_arrays(spec: dict, build: Callable[[], dict[str, np.ndarray]], folder: Path | None = None,
                  enabled: bool = True) -> dict[str, np.ndarray]:
    """The arrays for `spec`: read from the cache when a sound file is there, else `build()` and store.

    `build` returns a dict of name -> numpy array (no object arrays). With `enabled=False` nothing
    is read or written. A damaged file, or one built from another spec, is reported with a warning,
    rebuilt and replaced; a file of the older format that did not store its spec is rebuilt quietly.
    """
    text = spec_text(spec)
    if not enabled:
        return build()
    path = Path(folder or cache_dir()) / f"{spec['kind']}-{spec_key(spec)}.npz"
    if path.exists():
        try:
            arrays = _read(path, text)
        except ValueError as damage:
            warnings.warn(f"{damage}; rebuilding it", RuntimeWarning, stacklevel=2)
            arrays = None
        if arrays is not None:
            return arrays
    arrays = build()
    bad = [name for name, array in arrays.items() if not isinstance(array, np.ndarray) or array.dtype == object]
    reserved = [name for name in RESERVED_KEYS if name in arrays]
    if bad or reserved:
        raise TypeError(f"build() must return numpy arrays of plain dtypes under names other than {RESERVED_KEYS}; "
                        f"bad entries: {bad + reserved}")
    _write(path, arrays, text)
    return arrays
