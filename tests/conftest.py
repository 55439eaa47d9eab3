"""Test-wide settings: offline, headless, and CUDA-only tests skipped without CUDA."""
import os

# Set before anything imports matplotlib or the hub clients; notebook kernels inherit them.
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip_gpu)


@pytest.fixture
def one_torch_thread():
    """Tiny models on a loaded two-core machine: one torch thread is many times faster than two
    that wait for each other. Restores the previous count afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
