"""fit under torchrun: two CPU processes (gloo) train what one process trains on the same global
batches, every rank returns the same weights and History, and rank 0 alone writes checkpoints.

This module is also the script that torchrun starts on every rank (`__main__` at the bottom): the
fixture runs `python -m torch.distributed.run --standalone --nproc_per_node 2 <this file> <folder>`,
the README's command, and each rank saves what it trained into <folder>. The tests replay the
global batches the ranks saw (rank 0's share, then rank 1's) in single-process `fit` runs and compare.
Models and data are float64, so that the comparison can be tight: the two runs differ only in the
rounding of sums taken in another order.
"""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mmcourse import train
from mmcourse.distributed import distributed_clip_loss
from mmcourse.train import fit, load_checkpoint, loss_evaluator

WORLD_SIZE = 2
SAMPLES, LOCAL_BATCH, EPOCHS = 16, 4, 3
STEPS_PER_EPOCH = SAMPLES // (WORLD_SIZE * LOCAL_BATCH)
LR, MOMENTUM = 0.1, 0.9
TOLERANCE = 1e-10  # float64 weights after EPOCHS * STEPS_PER_EPOCH steps
TORCHRUN_TIMEOUT_S = 180

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="this torch build has no torch.distributed with the gloo backend")


# ---------------------------------------------------------------------------------- data, models, losses


def regression_data() -> TensorDataset:
    """(sample id, inputs (N, 3), targets (N, 1)): a noisy linear function."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(SAMPLES, 3, generator=generator, dtype=torch.float64)
    noise = torch.randn(SAMPLES, 1, generator=generator, dtype=torch.float64)
    targets = inputs @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64) + 0.1 * noise
    return TensorDataset(torch.arange(SAMPLES), inputs, targets)


def pair_data() -> TensorDataset:
    """(sample id, "images" (N, 6), "captions" (N, 5)): pairs linked by a fixed linear map plus noise."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(SAMPLES, 6, generator=generator, dtype=torch.float64)
    link = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    noise = torch.randn(SAMPLES, 5, generator=generator, dtype=torch.float64)
    return TensorDataset(torch.arange(SAMPLES), images, images @ link + 0.3 * noise)


def regressor(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def normalised_regressor(seed: int) -> nn.Module:
    """With BatchNorm, whose running statistics each rank updates from its own batches."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1)).double()


class TinyClip(nn.Module):
    """Two linear towers and a learned log inverse temperature; no forward: the loss calls the towers,
    as `clip_training_loss` does, so gradients are averaged only if fit runs the whole loss in DDP."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.image_tower = nn.Linear(6, 4).double()
        self.text_tower = nn.Linear(5, 4).double()
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(10.0), dtype=torch.float64))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:  # (B, 6) -> (B, 4), unit rows
        return F.normalize(self.image_tower(images), dim=-1)

    def encode_text(self, captions: torch.Tensor) -> torch.Tensor:  # (B, 5) -> (B, 4), unit rows
        return F.normalize(self.text_tower(captions), dim=-1)


def regression_loss(model: nn.Module, batch) -> torch.Tensor:
    _, inputs, targets = batch
    return F.mse_loss(model(inputs), targets)


def contrastive_loss(model: TinyClip, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CLIP's loss over the pairs of every rank (each rank's pairs meet the others' as negatives)."""
    _, images, captions = batch
    loss = distributed_clip_loss(model.encode_image(images), model.encode_text(captions), model.log_logit_scale.exp())
    return loss, {"logit_scale": model.log_logit_scale.exp()}


def sgd(parameters) -> torch.optim.Optimizer:
    return torch.optim.SGD(parameters, lr=LR, momentum=MOMENTUM)


# ---------------------------------------------------------------------------------- what each rank runs


def run_rank(folder: Path) -> None:
    """Every run of the tests on this rank; saves its results to <folder>/rank<r>.pt."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # torchrun's environment says where the others are
    try:
        rank = dist.get_rank()
        writes = record_checkpoint_writes()
        results = {
            "regression": train_and_record(regressor(seed=rank), regression_data(), regression_loss, sgd,
                                           checkpoint_path=folder / "regression.ckpt",
                                           evaluate=loss_evaluator(regression_loss),
                                           val_loader=DataLoader(regression_data(), batch_size=SAMPLES)),
            "resumed": train_in_two_runs(folder / "resumed.ckpt", seed=rank),
            "contrastive": train_and_record(TinyClip(seed=rank), pair_data(), contrastive_loss, sgd),
            "batchnorm": train_and_record(normalised_regressor(seed=rank), regression_data(), regression_loss, sgd),
            "refusal": refusal_of_a_list_of_batches(),
            "checkpoint_writes": writes,
        }
        torch.save(results, folder / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def shuffled_loader(dataset: TensorDataset) -> DataLoader:
    """What a single-process script would pass: fit gives it a DistributedSampler."""
    return DataLoader(dataset, batch_size=LOCAL_BATCH, shuffle=True, generator=torch.Generator().manual_seed(2))


def train_and_record(model, dataset, loss_fn, make_optimizer, **fit_kwargs) -> dict:
    """fit as any script calls it; records the ids of every batch, the weights, the History and
    the epochs that `log` was called with."""
    seen, logged = [], []

    def recording_loss(model, batch):
        seen.append(batch[0].tolist())
        return loss_fn(model, batch)

    history = fit(model, shuffled_loader(dataset), recording_loss, epochs=EPOCHS, optimizer=make_optimizer(
        model.parameters()), device="cpu", progress=False, log=lambda record: logged.append(record["epoch"]),
        **fit_kwargs)
    return {"seen": seen, "state": model.state_dict(), "history": history.records, "logged": logged}


def train_in_two_runs(checkpoint_path: Path, seed: int) -> dict:
    """EPOCHS - 1 epochs, then a fresh model that resumes from the checkpoint for the last one."""
    runs = ((regressor(seed), EPOCHS - 1, False), (regressor(seed + WORLD_SIZE), EPOCHS, True))
    for model, epochs, resume in runs:
        fit(model, shuffled_loader(regression_data()), regression_loss, epochs=epochs,
            optimizer=sgd(model.parameters()), device="cpu", progress=False, checkpoint_path=checkpoint_path,
            resume=resume)
    return {"state": model.state_dict()}


def record_checkpoint_writes() -> list[str]:
    """The names of the checkpoints this rank writes, as fit calls save_checkpoint."""
    writes, save = [], train.save_checkpoint

    def recording_save(path, *args, **kwargs):
        writes.append(Path(path).name)
        return save(path, *args, **kwargs)

    train.save_checkpoint = recording_save
    return writes


def refusal_of_a_list_of_batches() -> str:
    """fit cannot split a plain list of batches between the ranks: the error it raises on every rank."""
    model = regressor(seed=0)
    try:
        fit(model, [regression_data()[:LOCAL_BATCH]], regression_loss, epochs=1, device="cpu", progress=False)
    except ValueError as error:
        return str(error)
    return ""


# ---------------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Where the ranks write their checkpoints and results."""
    return tmp_path_factory.mktemp("torchrun")


@pytest.fixture(scope="module")
def ranks(folder) -> list[dict]:
    """What each rank saved after the README's command ran this module on 2 CPU processes."""
    root = Path(__file__).resolve().parents[1]
    python_path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))  # mmcourse, installed or not
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": python_path}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD_SIZE}",
               __file__, str(folder)]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return [torch.load(folder / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


class Replay:
    """A loader whose e-th pass yields epoch e's global batches: every rank's rows of a step, in rank order."""

    def __init__(self, dataset: TensorDataset, ranks: list[dict], run: str):
        steps = [sum((rank[run]["seen"][step] for rank in ranks), []) for step in range(EPOCHS * STEPS_PER_EPOCH)]
        self.dataset = dataset
        self.epochs = iter([steps[start:start + STEPS_PER_EPOCH] for start in range(0, len(steps), STEPS_PER_EPOCH)])

    def __iter__(self):
        return iter([self.dataset[torch.tensor(ids)] for ids in next(self.epochs)])


def assert_same_state(state: dict, expected: dict, atol: float) -> None:
    assert state.keys() == expected.keys()
    for name in state:
        torch.testing.assert_close(state[name], expected[name], atol=atol, rtol=0, msg=f"{name} differs")


def test_each_epoch_is_split_between_the_ranks_and_shuffled_anew(ranks):
    epochs = []
    for epoch in range(EPOCHS):
        steps = slice(epoch * STEPS_PER_EPOCH, (epoch + 1) * STEPS_PER_EPOCH)
        shares = [sum(rank["regression"]["seen"][steps], []) for rank in ranks]  # each rank's ids in this epoch
        assert all(len(share) == SAMPLES // WORLD_SIZE for share in shares)
        assert sorted(sum(shares, [])) == list(range(SAMPLES))  # every sample once, on one rank
        epochs.append(shares)
    assert epochs[0] != epochs[1]  # set_epoch: another permutation each epoch


def test_two_ranks_train_what_one_process_trains_on_the_global_batches(ranks, one_torch_thread):
    model = regressor(seed=0)  # rank 1 started from other weights: DDP starts every rank from rank 0's
    history = fit(model, Replay(regression_data(), ranks, "regression"), regression_loss, epochs=EPOCHS,
                  optimizer=sgd(model.parameters()), device="cpu", progress=False,
                  evaluate=loss_evaluator(regression_loss),
                  val_loader=DataLoader(regression_data(), batch_size=SAMPLES))
    assert_same_state(ranks[0]["regression"]["state"], model.state_dict(), atol=TOLERANCE)
    for name in ("train_loss", "val_loss"):
        assert ranks[0]["regression"]["history"][-1][name] == pytest.approx(history.last[name], rel=1e-6)


def test_the_gathered_contrastive_loss_gives_dl_dtheta_over_world_size_to_the_towers(ranks, one_torch_thread):
    """mmcourse.distributed's convention: DDP's mean over ranks of the gathered loss's gradients is
    dL/dtheta / world_size for the towers and dL/dscale for the logit scale, so one process needs
    lr / world_size on the towers to take the same steps."""
    model = TinyClip(seed=0)
    towers = [*model.image_tower.parameters(), *model.text_tower.parameters()]
    optimizer = torch.optim.SGD([{"params": towers, "lr": LR / WORLD_SIZE}, {"params": [model.log_logit_scale]}],
                                lr=LR, momentum=MOMENTUM)
    history = fit(model, Replay(pair_data(), ranks, "contrastive"), contrastive_loss, epochs=EPOCHS,
                  optimizer=optimizer, device="cpu", progress=False)
    assert_same_state(ranks[0]["contrastive"]["state"], model.state_dict(), atol=TOLERANCE)
    for name in ("train_loss", "logit_scale"):
        assert ranks[0]["contrastive"]["history"][-1][name] == pytest.approx(history.last[name], rel=1e-6)


@pytest.mark.parametrize("run", ["regression", "resumed", "contrastive", "batchnorm"])
def test_every_rank_returns_the_same_weights_and_history(ranks, run):
    first, second = (rank[run] for rank in ranks)
    assert_same_state(second["state"], first["state"], atol=0)
    assert second.get("history") == first.get("history")


def test_rank_0_alone_writes_checkpoints_and_logs(ranks):
    assert ranks[0]["checkpoint_writes"] == ["regression.ckpt"] * EPOCHS + ["resumed.ckpt"] * EPOCHS
    assert ranks[1]["checkpoint_writes"] == []
    assert ranks[0]["regression"]["logged"] == list(range(1, EPOCHS + 1))
    assert ranks[1]["regression"]["logged"] == []


def test_the_checkpoint_holds_the_trained_model(ranks, folder):
    model = regressor(seed=1)
    restored = load_checkpoint(folder / "regression.ckpt", model)
    assert restored["epoch"] == EPOCHS
    assert restored["history"].records == ranks[0]["regression"]["history"]
    assert_same_state(model.state_dict(), ranks[0]["regression"]["state"], atol=0)


def test_a_resumed_run_continues_exactly(ranks):
    assert_same_state(ranks[0]["resumed"]["state"], ranks[0]["regression"]["state"], atol=0)


def test_a_loader_fit_cannot_split_is_refused_on_every_rank(ranks):
    for rank in ranks:
        assert "train_loader must be a DataLoader" in rank["refusal"]
        assert "got a list" in rank["refusal"]


if __name__ == "__main__":
    run_rank(Path(sys.argv[1]))
