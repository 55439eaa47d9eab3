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
DEVICE_ENV = "MMCOURSE_DEVICE"
# Seeds are ints in [0, SEED_LIMIT): torch takes seeds below 2**64, and the margin below that leaves room for
# the `seed + offset` arithmetic of the experiments. NumPy and Python take any non-negative int.
SEED_LIMIT = 2**63


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
    if prefer is not None:
        return _checked_device(prefer, "prefer")
    configured = os.environ.get(DEVICE_ENV)
    if configured:
        return _checked_device(configured, DEVICE_ENV)
    return torch.device(next(kind for kind in DEVICE_ORDER if _available(kind)))


def _checked_device(prefer: str | torch.device, source: str) -> torch.device:
    """`prefer` as a device of this machine; ValueError naming `source` (the argument or the
    environment variable) when it is not one of DEVICE_ORDER, is malformed, absent or out of range."""
    if not isinstance(prefer, (str, torch.device)):
        raise TypeError(f"{source} must be a str or torch.device, got {type(prefer).__name__}")
    expected = f"expected one of {DEVICE_ORDER}, optionally with an index such as 'cuda:1'"
    if str(prefer).split(":")[0] not in DEVICE_ORDER:
        raise ValueError(f"{source}={str(prefer)!r} is not a device type the course knows; {expected}")
    try:
        device = torch.device(prefer)
    except RuntimeError:
        raise ValueError(f"{source}={str(prefer)!r} is not a valid device string; {expected}") from None
    if not _available(device.type):
        raise ValueError(f"{source}={str(prefer)!r} is not available on this machine; "
                         f"available: {[k for k in DEVICE_ORDER if _available(k)]}")
    count = torch.cuda.device_count() if device.type == "cuda" else 1
    if device.index is not None and device.index >= count:
        raise ValueError(f"{source}={str(prefer)!r} names device index {device.index}, but this machine has "
                         f"{count} {device.type} device(s), numbered from 0")
    return device


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


def rank_device(device: torch.device) -> torch.device:
    """This rank's device: "cuda" without an index becomes the GPU numbered LOCAL_RANK (which torchrun
    sets; the current GPU without it), made current for the collectives; other devices stay as given."""
    if device.type != "cuda":
        return device
    if device.index is None:
        local_rank = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} CUDA "
                             "device(s): start one process per GPU (torchrun --nproc_per_node <GPUs>)")
        device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device


def ddp_device_ids(device: torch.device) -> list[int] | None:
    """DistributedDataParallel's `device_ids` for a model on `device`: its GPU, or None off the GPU."""
    return [device.index] if device.type == "cuda" else None


def check_seed(seed) -> int:
    """Validate a seed (an int in [0, 2**63), bools refused) and return it as a Python int: the one rule
    for seeds in the whole course, from `seed_everything` to the world's `sample_scenes`."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if seed >= SEED_LIMIT:
        raise ValueError(f"seed must be < 2**63 (torch's generators take seeds below 2**64), got {seed}")
    return int(seed)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a CPU generator seeded the same way."""
    seed = check_seed(seed)
    note_run(seed=seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


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
