"""Tests for mmcourse.train: learning, history, progress, clipping, checkpoints, resumption, bad inputs."""
import dataclasses
import json
import math
from collections import namedtuple
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mmcourse.metrics import accuracy
from mmcourse.train import (
    History,
    batch_size_of,
    fit,
    load_checkpoint,
    loss_evaluator,
    save_checkpoint,
    to_device,
)

CPU = torch.device("cpu")


def separable_points(n=256, seed=0):
    """(n, 2) points labelled by the side of the line x0 + x1 = 0, with a margin."""
    generator = torch.Generator().manual_seed(seed)
    points = torch.randn(n, 2, generator=generator)
    points = points + 0.3 * torch.sign(points.sum(dim=1, keepdim=True))  # push both classes apart
    return points, (points.sum(dim=1) > 0).long()


def make_loader(points, labels, batch_size=32, generator_seed=1):
    generator = None if generator_seed is None else torch.Generator().manual_seed(generator_seed)
    return DataLoader(TensorDataset(points, labels), batch_size=batch_size, shuffle=True, generator=generator)


class TinyNet(nn.Module):
    """Two layers with dropout, so that resumption must restore the RNG to match."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))

    def forward(self, points):  # (B, 2) -> (B, 2)
        return self.layers(points)


def classification_loss(model, batch):
    points, labels = batch
    logits = model(points)  # (B, 2)
    return F.cross_entropy(logits, labels), {"acc": (logits.argmax(dim=1) == labels).float().mean()}


def quiet_fit(model, loader, loss_fn=classification_loss, **kwargs):
    kwargs.setdefault("epochs", 2)
    return fit(model, loader, loss_fn, progress=False, device=CPU, **kwargs)


# ---------------------------------------------------------------------------------- learning and history


def test_fit_learns_a_linearly_separable_problem():
    torch.manual_seed(0)
    points, labels = separable_points()
    model = TinyNet()
    history = quiet_fit(model, make_loader(points, labels), epochs=8, lr=0.02)
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history.last["acc"] > history[0]["acc"]
    assert not model.training  # fit hands the model back ready for inference
    with torch.no_grad():
        assert accuracy(model(points), labels) >= 0.95


def test_history_holds_logged_and_val_names_and_is_json_serialisable():
    torch.manual_seed(0)
    points, labels = separable_points()
    logged = []
    history = quiet_fit(TinyNet(), make_loader(points, labels), epochs=3, lr=0.02,
                        evaluate=loss_evaluator(classification_loss), val_loader=make_loader(points, labels),
                        log=logged.append)
    assert len(history) == 3 and logged == history.records
    assert list(history.last) == ["epoch", "train_loss", "acc", "lr", "val_loss", "val_acc", "seconds"]
    assert history["epoch"] == [1, 2, 3]
    assert history["lr"] == [0.02] * 3
    assert all(0.0 <= value <= 1.0 for value in history["val_acc"])
    columns = json.loads(json.dumps(history.as_dict()))
    assert columns["val_loss"] == history["val_loss"]
    assert History(json.loads(history.to_json())).records == history.records
    best = history.best("val_loss", "min")
    assert best["val_loss"] == min(history["val_loss"])
    assert history.best("val_acc", "max")["val_acc"] == max(history["val_acc"])


def test_history_lookups_and_their_errors():
    history = History([{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.0, "val_acc": 0.5}])
    assert history["val_acc"] == [None, 0.5]
    assert history.best("loss")["epoch"] == 2 and history.best("loss", "max")["epoch"] == 1
    assert history.names() == ["epoch", "loss", "val_acc"]
    with pytest.raises(ValueError, match="mode"):
        history.best("loss", "lowest")
    with pytest.raises(KeyError, match="val_loss"):
        history.best("val_loss")
    with pytest.raises(KeyError, match="nope"):
        history["nope"]
    with pytest.raises(IndexError, match="empty"):
        History().last


def test_train_loss_is_weighted_by_batch_size():
    values = torch.tensor([[0.0], [0.0], [0.0], [0.0], [10.0]])
    loader = DataLoader(values, batch_size=2)  # batches of 2, 2 and 1: weighted mean 2, plain mean 10/3
    model = nn.Linear(1, 1)

    def constant_loss(model, batch):
        return model.weight.sum() * 0 + batch.mean()

    assert quiet_fit(model, loader, constant_loss, epochs=1).last["train_loss"] == pytest.approx(2.0)


def test_evaluate_runs_in_eval_mode_without_grad_and_training_returns_to_train_mode():
    points, labels = separable_points(64)
    seen = {"train": [], "eval": []}

    def loss_fn(model, batch):
        seen["train"].append(model.training)
        return classification_loss(model, batch)

    def evaluate(model, loader):
        seen["eval"].append((model.training, torch.is_grad_enabled()))
        return {"constant": torch.tensor(1.5)}

    history = quiet_fit(TinyNet(), make_loader(points, labels), loss_fn, epochs=2, evaluate=evaluate,
                        val_loader=[None])
    assert all(seen["train"]) and seen["eval"] == [(False, False), (False, False)]
    assert history["val_constant"] == [1.5, 1.5]


def test_progress_false_prints_nothing_and_progress_true_draws_a_bar(capsys):
    points, labels = separable_points(64)
    quiet_fit(TinyNet(), make_loader(points, labels), epochs=2)
    assert capsys.readouterr() == ("", "")
    fit(TinyNet(), make_loader(points, labels), classification_loss, epochs=2, device=CPU, progress=True)
    assert "epoch 2/2" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- gradient clipping, AMP


def test_grad_clip_caps_the_norm_and_logs_the_norm_before_clipping():
    points, labels = separable_points(64)
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    norms_at_step = []

    def record_norm(optimizer, args, kwargs):
        norms_at_step.append(torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item())

    def squared_output(model, batch):  # large inputs give gradients far above the cap
        return model(100 * batch[0]).pow(2).mean()

    optimizer.register_step_pre_hook(record_norm)
    history = quiet_fit(model, make_loader(points, labels), squared_output, epochs=2, optimizer=optimizer,
                        grad_clip=0.5)
    assert len(norms_at_step) == 2 * 2  # 64 points in batches of 32, two epochs
    assert norms_at_step == pytest.approx([0.5] * 4, rel=1e-5)  # every step clipped to the cap
    assert min(history["grad_norm"]) > 5  # the logged norm is the one before clipping
    assert "grad_norm" not in quiet_fit(nn.Linear(2, 2), make_loader(points, labels)).last


def test_amp_on_cpu_is_a_no_op():
    points, labels = separable_points(64)
    weights = []
    for amp in (False, True):
        torch.manual_seed(0)
        model = TinyNet()
        quiet_fit(model, make_loader(points, labels), epochs=2, amp=amp)
        weights.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_with_amp_on_cuda_learns():
    from mmcourse.device import get_device

    torch.manual_seed(0)
    points, labels = separable_points()
    model = TinyNet()
    history = fit(model, make_loader(points, labels), classification_loss, epochs=6, lr=0.02, amp=True,
                  grad_clip=1.0, progress=False, device=get_device())
    assert next(model.parameters()).device.type != "cpu"
    assert history.last["train_loss"] < history[0]["train_loss"]
    assert math.isfinite(history.last["grad_norm"])


def test_schedulers_step_per_epoch_or_per_batch():
    points, labels = separable_points(64)  # two batches per epoch

    def halve_every_step(optimizer):
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)

    per_epoch = quiet_fit(TinyNet(), make_loader(points, labels), epochs=3, lr=0.1, scheduler=halve_every_step)
    assert per_epoch["lr"] == pytest.approx([0.1, 0.05, 0.025])
    per_batch = quiet_fit(TinyNet(), make_loader(points, labels), epochs=2, lr=0.1, scheduler=halve_every_step,
                          scheduler_every="batch")
    assert per_batch["lr"] == pytest.approx([0.05, 0.0125])  # the lr of each epoch's last step


# ---------------------------------------------------------------------------------- batches


def test_to_device_moves_tensors_inside_containers_and_leaves_the_rest():
    Pair = namedtuple("Pair", "image text")

    @dataclasses.dataclass
    class Batch:
        pixels: torch.Tensor
        caption: str

    batch = {"pair": Pair(torch.ones(2), "two"), "list": [torch.zeros(3), 7], "item": Batch(torch.ones(1), "a")}
    moved = to_device(batch, "meta")
    assert moved["pair"].image.is_meta and moved["pair"].text == "two" and isinstance(moved["pair"], Pair)
    assert moved["list"][0].is_meta and moved["list"][1] == 7
    assert moved["item"].pixels.is_meta and moved["item"].caption == "a"
    assert not batch["list"][0].is_meta  # the original batch is untouched


def test_batch_size_of_finds_the_first_tensor_with_a_batch_dimension():
    assert batch_size_of({"scale": torch.tensor(2.0), "x": [torch.zeros(5, 3)]}) == 5
    assert batch_size_of(["no", "tensors"]) is None


# ---------------------------------------------------------------------------------- checkpoints


def parameters_of(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_same_state(left, right):
    """Recursive bit-exact equality of state dicts (tensors, numbers, lists, dicts)."""
    if isinstance(left, torch.Tensor):
        assert torch.equal(left, right)
    elif isinstance(left, dict):
        assert left.keys() == right.keys()
        for key in left:
            assert_same_state(left[key], right[key])
    elif isinstance(left, (list, tuple)):
        assert len(left) == len(right)
        for a, b in zip(left, right):
            assert_same_state(a, b)
    else:
        assert left == right


def test_checkpoint_round_trip_restores_model_and_optimizer_exactly(tmp_path):
    torch.manual_seed(0)
    points, labels = separable_points(64)
    model = TinyNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    history = quiet_fit(model, make_loader(points, labels), optimizer=optimizer)
    path = save_checkpoint(tmp_path / "run" / "ckpt.pt", model, optimizer, epoch=2, history=history,
                           extra={"note": "tiny", "classes": [0, 1]})

    torch.manual_seed(99)
    fresh_model = TinyNet()
    fresh_optimizer = torch.optim.AdamW(fresh_model.parameters(), lr=0.5)
    assert not torch.equal(parameters_of(fresh_model)[0], parameters_of(model)[0])
    restored = load_checkpoint(path, fresh_model, fresh_optimizer)
    assert_same_state(fresh_model.state_dict(), model.state_dict())
    assert_same_state(fresh_optimizer.state_dict(), optimizer.state_dict())
    assert restored["epoch"] == 2 and restored["extra"] == {"note": "tiny", "classes": [0, 1]}
    assert restored["history"].records == history.records


@pytest.mark.parametrize("loader_generator_seed", [1, None], ids=["loader-generator", "global-rng"])
def test_resuming_from_a_checkpoint_is_bit_identical_to_training_straight(tmp_path, loader_generator_seed):
    points, labels = separable_points(96)
    settings = dict(lr=0.02, grad_clip=1.0, scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, 0.7),
                    evaluate=loss_evaluator(classification_loss), val_loader=make_loader(points, labels, 48, None))

    torch.manual_seed(0)
    straight = TinyNet()
    straight_history = quiet_fit(straight, make_loader(points, labels, 32, loader_generator_seed), epochs=4,
                                 **settings)

    torch.manual_seed(0)
    path = tmp_path / "resume.pt"
    quiet_fit(TinyNet(), make_loader(points, labels, 32, loader_generator_seed), epochs=2, checkpoint_path=path,
              **settings)
    torch.manual_seed(12345)  # a new process: other weights, other RNG state, a new loader generator
    resumed = TinyNet()
    new_loader_seed = None if loader_generator_seed is None else 777
    assert not torch.equal(parameters_of(resumed)[0], parameters_of(straight)[0])
    resumed_history = quiet_fit(resumed, make_loader(points, labels, 32, new_loader_seed), epochs=4,
                                checkpoint_path=path, resume=True, **settings)

    for expected, got in zip(parameters_of(straight), parameters_of(resumed)):
        assert torch.equal(expected, got)
    assert resumed_history["epoch"] == [1, 2, 3, 4]
    for name in ("train_loss", "acc", "lr", "val_loss"):
        assert resumed_history[name] == straight_history[name]
    assert load_checkpoint(path, TinyNet())["epoch"] == 4  # saved after every epoch


def test_resume_without_a_checkpoint_file_starts_afresh_and_writes_one(tmp_path):
    points, labels = separable_points(64)
    path = tmp_path / "new.pt"
    history = quiet_fit(TinyNet(), make_loader(points, labels), epochs=2, checkpoint_path=path, resume=True)
    assert len(history) == 2 and path.exists()
    again = quiet_fit(TinyNet(), make_loader(points, labels), epochs=2, checkpoint_path=path, resume=True)
    assert again.records == history.records  # nothing left to train
    with pytest.raises(ValueError, match="epochs=1"):
        quiet_fit(TinyNet(), make_loader(points, labels), epochs=1, checkpoint_path=path, resume=True)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    model = TinyNet()
    path = save_checkpoint(tmp_path / "ckpt.pt", model, epoch=1)
    before = Path(path).read_bytes()

    def failing_save(payload, file):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with torch.no_grad():
        model.layers[0].weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, epoch=2)
    monkeypatch.undo()
    assert Path(path).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no partial file left behind
    assert load_checkpoint(path, TinyNet())["epoch"] == 1


def test_load_checkpoint_rejects_foreign_files_and_missing_parts(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_checkpoint(tmp_path / "other.pt", TinyNet())
    model = TinyNet()
    path = save_checkpoint(tmp_path / "bare.pt", model)
    with pytest.raises(ValueError, match="optimizer"):
        load_checkpoint(path, model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="epoch"):
        save_checkpoint(tmp_path / "x.pt", model, epoch=-1)


def test_loader_generator_mismatch_on_restore_is_an_error(tmp_path):
    points, labels = separable_points(64)
    path = tmp_path / "ckpt.pt"
    quiet_fit(TinyNet(), make_loader(points, labels, generator_seed=1), epochs=1, checkpoint_path=path)
    with pytest.raises(ValueError, match="generator"):
        quiet_fit(TinyNet(), make_loader(points, labels, generator_seed=None), epochs=2, checkpoint_path=path,
                  resume=True)


# ---------------------------------------------------------------------------------- bad inputs


def nan_at_batch(bad_batch):
    calls = []

    def loss_fn(model, batch):
        calls.append(None)
        loss, logged = classification_loss(model, batch)
        return (loss * math.nan if len(calls) == bad_batch + 1 else loss), logged

    return loss_fn


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(epochs=-1), ValueError, "epochs"),
        (dict(epochs=1.5), ValueError, "epochs"),
        (dict(loss_fn="cross_entropy"), TypeError, "loss_fn must be callable"),
        (dict(model=lambda x: x), TypeError, "nn.Module"),
        (dict(loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1], reduction="none")), ValueError, "shape (32,)"),
        (dict(loss_fn=lambda m, b: 1.0), TypeError, "float"),
        (dict(loss_fn=lambda m, b: torch.tensor(1.0)), ValueError, "does not require grad"),
        (dict(loss_fn=lambda m, b: (m(b[0]).sum(), {"lr": 1.0})), ValueError, "'lr'"),
        (dict(loss_fn=lambda m, b: (m(b[0]).sum(), {"logits": m(b[0])})), ValueError, "'logits'"),
        (dict(loss_fn=nan_at_batch(1)), ValueError, "epoch 1, batch 1"),
        (dict(evaluate=lambda m, dl: {}), ValueError, "evaluate was given without val_loader"),
        (dict(val_loader=[1]), ValueError, "val_loader was given without evaluate"),
        (dict(evaluate=lambda m, dl: [0.5], val_loader=[1]), TypeError, "mapping"),
        (dict(evaluate=lambda m, dl: {"acc": "high"}, val_loader=[1]), TypeError, "evaluate()['acc']"),
        (dict(resume=True), ValueError, "checkpoint_path"),
        (dict(optimizer=torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), lr=0.1), ValueError, "lr"),
        (dict(lr=-1.0), ValueError, "lr must be a positive number"),
        (dict(grad_clip=0), ValueError, "grad_clip"),
        (dict(scheduler_every="step"), ValueError, "scheduler_every"),
        (dict(scheduler=torch.optim.lr_scheduler.StepLR(
            torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), 1)), ValueError, "different optimizer"),
        (dict(train_loader=[]), ValueError, "no batches"),
        (dict(log="print"), TypeError, "log"),
    ],
)
def test_fit_rejects_bad_inputs(kwargs, error, words):
    points, labels = separable_points(64)
    arguments = dict(model=TinyNet(), train_loader=make_loader(points, labels), loss_fn=classification_loss,
                     epochs=1, progress=False, device=CPU)
    arguments.update(kwargs)
    with pytest.raises(error) as info:
        fit(**arguments)
    assert words in str(info.value)


def test_fit_rejects_a_model_without_trainable_parameters():
    model = TinyNet().requires_grad_(False)
    points, labels = separable_points(64)
    with pytest.raises(ValueError, match="requires grad"):
        quiet_fit(model, make_loader(points, labels))
