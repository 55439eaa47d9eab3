"""Checkpoints are never trusted blindly: corrupt, truncated, foreign or other-model files are refused."""
import hashlib
import io

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mmcourse.train import CHECKPOINT_HEADER, fit, load_checkpoint, save_checkpoint


class Small(nn.Module):
    def __init__(self, hidden=8):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, x):  # (B, 2) -> (B, 2)
        return self.layers(x)


class Other(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))


def saved(tmp_path, model=None):
    torch.manual_seed(0)
    model = model if model is not None else Small()
    return save_checkpoint(tmp_path / "ckpt.pt", model, torch.optim.SGD(model.parameters(), lr=0.1), epoch=3)


def refusal(path, model, words):
    """Loading `path` into `model` fails with a ValueError matching `words`: one line naming the file,
    never advising weights_only=False, and nothing loaded."""
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=words) as caught:
        load_checkpoint(path, model)
    message = str(caught.value)
    assert str(path) in message and "weights_only" not in message and "\n" not in message
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def with_header(body: bytes) -> bytes:
    """A file with a valid header and checksum around `body`, as a forger would make it."""
    return CHECKPOINT_HEADER + hashlib.sha256(body).hexdigest().encode() + body


def torch_bytes(payload) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def test_a_sound_checkpoint_loads(tmp_path):
    path = saved(tmp_path)
    assert load_checkpoint(path, Small())["epoch"] == 3


def flip_16_bytes(path, where=0.5):
    """Invert 16 bytes of the file at `path`, starting `where` of the way through it."""
    data = bytearray(path.read_bytes())
    start = int(len(data) * where)
    data[start:start + 16] = bytes(b ^ 0xFF for b in data[start:start + 16])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", [0.3, 0.5, 0.9])
def test_sixteen_flipped_bytes_are_refused(tmp_path, where):
    path = saved(tmp_path)
    flip_16_bytes(path, where)
    refusal(path, Small(), "corrupt or truncated")


@pytest.mark.parametrize("cut", [lambda n: n // 2, lambda n: n - 1, lambda n: len(CHECKPOINT_HEADER) + 10],
                         ids=["half", "last-byte", "inside-the-checksum"])
def test_truncated_checkpoints_are_refused(tmp_path, cut):
    path = saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: cut(len(data))])
    refusal(path, Small(), "corrupt or truncated")


@pytest.mark.parametrize("content", [
    lambda: torch_bytes({"weights": torch.zeros(2)}),  # another tool's torch.save
    lambda: torch_bytes({"format": 1, "model": Small().state_dict()}),  # the format before checksums
    lambda: b"not a checkpoint at all" * 10,
    lambda: b"",
])
def test_foreign_files_are_refused(tmp_path, content):
    path = tmp_path / "foreign.pt"
    path.write_bytes(content())
    refusal(path, Small(), "not a checkpoint written by mmcourse")


def test_pickled_objects_are_refused_even_with_a_valid_checksum(tmp_path):
    path = tmp_path / "forged.pt"
    path.write_bytes(with_header(torch_bytes({"format": 2, "model": Small()})))  # a whole pickled module
    refusal(path, Small(), "objects that a checkpoint may not hold")


def test_another_format_is_refused(tmp_path):
    path = tmp_path / "future.pt"
    path.write_bytes(with_header(torch_bytes({"format": 99})))
    refusal(path, Small(), "another format")


def test_a_checkpoint_of_another_model_class_is_refused(tmp_path):
    refusal(saved(tmp_path), Other(), "checkpoint of a Small, not of a Other")


def test_a_checkpoint_of_another_configuration_is_refused(tmp_path):
    refusal(saved(tmp_path), Small(hidden=16), r"another configuration: its 'layers.0.weight' is of shape \(8, 2\) "
                                              r"where this model's is of shape \(16, 2\)")


def test_missing_optimizer_state_is_refused_before_the_model_is_touched(tmp_path):
    path = save_checkpoint(tmp_path / "bare.pt", Small())
    model = Small()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="holds no optimizer state"):
        load_checkpoint(path, model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("extra, where", [
    ({"score": np.float64(0.5)}, r"extra\['score'\] is a float64"),
    ({"arrays": [np.arange(2)]}, r"extra\['arrays'\]\[0\] is a ndarray"),
])
def test_save_refuses_what_a_weights_only_load_could_not_read_back(tmp_path, extra, where):
    with pytest.raises(TypeError, match=where):
        save_checkpoint(tmp_path / "x.pt", Small(), extra=extra)
    assert not (tmp_path / "x.pt").exists()


def test_fit_resume_refuses_a_corrupt_checkpoint(tmp_path):
    points = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(points, (points.sum(1) > 0).long()), batch_size=8)
    path = tmp_path / "run.pt"

    def loss_fn(model, batch):
        return nn.functional.cross_entropy(model(batch[0]), batch[1])

    fit(Small(), loader, loss_fn, epochs=1, progress=False, device="cpu", checkpoint_path=path)
    flip_16_bytes(path)
    with pytest.raises(ValueError, match=f"{path.name} is corrupt or truncated"):
        fit(Small(), loader, loss_fn, epochs=2, progress=False, device="cpu", checkpoint_path=path, resume=True)
