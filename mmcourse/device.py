"""Where the course's tensors live: device choice, mixed precision, seeding, an environment report.

This is the only module that names a device type. Everything else asks `get_device()` and lets
tensors follow the model, so a notebook runs unchanged on a laptop CPU, an Apple GPU or a CUDA GPU.
"""
from __future__ import annotations

import contextlib
import os
import platform
import random

import numpy as np
import torch

from .results import note_run

DEVICE_ORDER = ("cuda", "mps", "cpu")


def _available(kind: str) -> bool:
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    return kind == "cpu"


def get_device(prefer: str | torch.device | None = None) -> torch.device:
    """The best device here (cuda > mps > cpu), or `prefer` when given and available.

    `MMCOURSE_DEVICE` in the environment overrides the automatic choice (e.g. "cpu" to force CPU).
    """
    prefer = prefer if prefer is not None else os.environ.get("MMCOURSE_DEVICE") or None
    if prefer is not None:
        device = torch.device(prefer)
        if not _available(device.type):
            raise ValueError(f"prefer={str(prefer)!r} is not available on this machine; "
                             f"available: {[k for k in DEVICE_ORDER if _available(k)]}")
        return device
    return torch.device(next(kind for kind in DEVICE_ORDER if _available(kind)))


def is_accelerator(device: str | torch.device) -> bool:
    """True for a CUDA device, where mixed precision and pinned memory pay off."""
    return torch.device(device).type == "cuda"


def autocast(device: str | torch.device, enabled: bool = True):
    """bfloat16 (or float16 where bf16 is missing) autocast on CUDA; a no-op context elsewhere."""
    device = torch.device(device)
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def needs_grad_scaler(device: str | torch.device, enabled: bool = True) -> bool:
    """float16 autocast needs loss scaling; bfloat16 and CPU runs do not."""
    device = torch.device(device)
    return enabled and device.type == "cuda" and not torch.cuda.is_bf16_supported()


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a CPU generator seeded the same way."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    note_run(seed=seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(int(seed))


def env_report() -> dict[str, str]:
    """Versions and devices, for the top of a notebook and `mmcourse env`."""
    import matplotlib
    import sklearn

    report = {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "matplotlib": matplotlib.__version__,
        "scikit-learn": sklearn.__version__,
        "cpu threads": str(torch.get_num_threads()),
        "device": str(get_device()),
        "cuda available": str(torch.cuda.is_available()),
    }
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(0)
    for optional in ("torchvision", "open_clip", "transformers"):
        with contextlib.suppress(ImportError):
            report[optional] = __import__(optional).__version__
    return report
