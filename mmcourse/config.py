"""The scale knob: one name ("ci", "cpu", "gpu" or "auto") decides every size in a notebook.

`ci` proves that every cell runs and that learning happens, in seconds on two cores; `cpu` is what a
student runs on a laptop in a few minutes; `gpu` is the full version. "auto" reads the environment
variable MMCOURSE_SCALE, else picks "gpu" when CUDA is present and "cpu" otherwise.

Progress bars: `cpu` and `gpu` show them, unless MMCOURSE_PROGRESS=0. `mmcourse run` sets that for
the notebooks it executes: without a live front end a bar's widget would be stored frozen at 0%.

CPU threads, one policy for the course: `course_config` sets torch's thread count, once per notebook.
The course's models are tiny; on a CPU their operations are too small to split, and two threads that
wait for each other are often several times slower than one. So a notebook of tiny models asks for
`course_config(SCALE, threads=1)`; one with larger convolutions (notebook 02) keeps torch's default
(`threads=None`). MMCOURSE_THREADS overrides both, e.g. to measure a laptop with many cores.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from .results import note_run

SCALES = ("ci", "cpu", "gpu")
SCALE_ENV = "MMCOURSE_SCALE"
PROGRESS_ENV = "MMCOURSE_PROGRESS"  # "0": no progress bars at any scale; "1" or unset: the scale's default
THREADS_ENV = "MMCOURSE_THREADS"  # a positive int: torch's CPU threads in every notebook, whatever it asks for


@dataclass(frozen=True)
class CourseConfig:
    """Sizes shared by the notebooks; `pick` chooses a notebook's own value for this scale."""

    scale: str
    n_train: int  # training examples (scenes, pairs, episodes...)
    n_test: int  # held-out examples for the headline figures
    epochs: int
    batch_size: int
    image_size: int  # pixels per side of rendered scenes
    width: int  # hidden width of the small encoders
    progress: bool  # show tqdm bars (off at ci scale: logs stay clean; off when MMCOURSE_PROGRESS=0)
    threads: int  # torch's CPU threads, as course_config set them

    def pick(self, ci, cpu, gpu):
        """The value for this scale, e.g. `cfg.pick(ci=2, cpu=10, gpu=40)` epochs."""
        return {"ci": ci, "cpu": cpu, "gpu": gpu}[self.scale]

    def as_dict(self) -> dict:
        return asdict(self)


_SIZES = {
    "ci": dict(n_train=2_000, n_test=500, epochs=4, batch_size=128, image_size=32, width=64, progress=False),
    "cpu": dict(n_train=20_000, n_test=1_000, epochs=15, batch_size=128, image_size=64, width=128, progress=True),
    "gpu": dict(n_train=100_000, n_test=5_000, epochs=40, batch_size=512, image_size=64, width=256, progress=True),
}


def resolve_scale(scale: str = "auto") -> str:
    """"ci" | "cpu" | "gpu", with "auto" resolved from MMCOURSE_SCALE or the hardware."""
    if not isinstance(scale, str):
        raise TypeError(f"scale must be a str, got {type(scale).__name__}")
    if scale == "auto":
        scale = os.environ.get(SCALE_ENV, "").strip().lower() or _hardware_scale()
        if scale not in SCALES:
            raise ValueError(f"{SCALE_ENV}={scale!r} is unknown; expected one of {SCALES}")
        return scale
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r} is unknown; expected one of {SCALES + ('auto',)}")
    return scale


def _hardware_scale() -> str:
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def course_config(scale: str = "auto", threads: int | None = None) -> CourseConfig:
    """The sizes for `scale`; torch's CPU threads set to MMCOURSE_THREADS when given, else to `threads`
    (None: torch's default). See the module docstring."""
    import torch

    name = resolve_scale(scale)
    chosen = _threads_from_environment() or _check_threads(threads)
    if chosen is not None:
        torch.set_num_threads(chosen)
    note_run(scale=name)
    sizes = dict(_SIZES[name])
    sizes["progress"] = sizes["progress"] and _progress_allowed()
    return CourseConfig(scale=name, threads=torch.get_num_threads(), **sizes)


def _check_threads(threads) -> int | None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads={threads!r} must be a positive int, or None for torch's default")
    return threads


def _threads_from_environment() -> int | None:
    """MMCOURSE_THREADS as a positive int, or None when unset."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{THREADS_ENV}={value!r} is not allowed; expected a positive whole number of threads")
    return int(value)


def _progress_allowed() -> bool:
    """False when MMCOURSE_PROGRESS is "0"; True when it is "1" or unset."""
    value = os.environ.get(PROGRESS_ENV, "1").strip()
    if value not in ("0", "1"):
        raise ValueError(f"{PROGRESS_ENV}={value!r} is not allowed; expected '0' (no progress bars) or '1'")
    return value == "1"
