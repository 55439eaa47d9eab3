"""One training loop for every model of the course: `fit(model, loader, loss_fn, epochs=...)`.

The loop is the plain PyTorch recipe (forward, backward, optimizer step) that nanoGPT's `train.py`
and the PyTorch tutorials spell out by hand, written once so that fusion classifiers, CLIP-style
contrastive models, VQA models and ProtoNets on episodes all train the same way. The loop knows
nothing about the model: `loss_fn(model, batch)` does the forward pass and returns the loss, or
`(loss, {"name": value, ...})` to log more numbers.

What `fit` adds around the recipe:

- the device (`mmcourse.device.get_device()` unless given); batches follow the model there;
- mixed precision (`amp=True`): autocast on CUDA, a gradient scaler only for float16, a no-op on CPU;
- gradient clipping with the pre-clip gradient norm logged as "grad_norm";
- a `History` of per-epoch records (train_loss, logged values, val_* metrics, lr, seconds);
- a tqdm progress bar, or no output at all with `progress=False`;
- checkpoints that resume exactly: training N epochs straight and training k epochs, saving,
  loading into a fresh model and training the remaining N - k epochs give bit-identical weights.

Exact resumption needs every source of randomness in the checkpoint. `save_checkpoint` stores the
RNG states of torch (CPU and CUDA), NumPy and Python, and the state of the `torch.Generator` of the
training DataLoader. Give the DataLoader its own generator (`DataLoader(..., shuffle=True,
generator=torch.Generator().manual_seed(seed))`) so that the shuffling order is part of the
checkpoint and independent of any other random draw; a loader without one shuffles from torch's
global RNG, which is restored too. Loaders with `persistent_workers=True` keep worker state that no
checkpoint can hold; use `num_workers=0` or non-persistent workers when exact resumption matters.
The Apple MPS generator is not saved, so resumption is exact on CPU and CUDA only.

A checkpoint is never trusted blindly. The file is a header line, the SHA-256 of the rest and then
what `torch.save` wrote, so a flipped byte or a truncated copy fails the checksum before anything is
unpickled; it records the model it belongs to (class name and the shape of every state entry), so
loading it into another model, or one of another configuration, is refused; and it is read with
`torch.load(weights_only=True)` only. Each refusal is one sentence naming the file.

Performance: the loss and the logged values are summed on the device and read once per epoch (and
every `BAR_EVERY` batches while a progress bar shows), so the GPU is not stalled by a `.item()` per
batch. The check for a non-finite loss is read at the same moments; its error names the first bad
batch.

Several processes. Started by `torchrun --nproc_per_node N script.py`, where the script calls
`torch.distributed.init_process_group(...)` before `fit`, the same call trains with distributed data
parallelism (`mmcourse.ranks.is_distributed()` tells). Each rank takes its GPU (LOCAL_RANK,
`mmcourse.device.rank_device`); the training loader gets a `DistributedSampler`, so each rank reads its
own share of every epoch and the global batch is N times the loader's `batch_size`; the whole
`loss_fn(model, batch)` runs as the forward of `DistributedDataParallel` (which averages only the
gradients of what runs in its forward, while losses call `model.encode_image` and the like), so the
ranks start from rank 0's weights and average their gradients after each backward pass; the epoch's
logged means cover the batches of all ranks, so every rank returns the same History and the same
weights, in the caller's `model`. Rank 0 alone shows the progress bar, calls `log` and writes
checkpoints. For a contrastive loss whose negatives should come from every rank, use
`mmcourse.distributed.distributed_clip_loss`. Without a process group, or with one process, none of
this happens and nothing changes.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import itertools
import json
import os
import pickle
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler, SequentialSampler
from tqdm.auto import tqdm

from mmcourse.device import autocast, ddp_device_ids, get_device, is_accelerator, needs_grad_scaler, rank_device
from mmcourse.ranks import broadcast_buffers, gather_objects, is_distributed, mean_over_ranks, rank

DEFAULT_LR = 1e-3
DEFAULT_WEIGHT_DECAY = 0.0
BAR_EVERY = 20  # batches between two refreshes of the running loss on the progress bar
CHECKPOINT_FORMAT = 2
CHECKPOINT_HEADER = b"mmcourse checkpoint\n"  # followed by the SHA-256 (hex) of the rest, then torch.save's bytes
DIGEST_LENGTH = 64  # hex characters of a SHA-256
RESERVED_NAMES = ("epoch", "loss", "train_loss", "grad_norm", "lr", "seconds")
SCHEDULER_EVERY = ("epoch", "batch")

LossFn = Callable[[nn.Module, Any], Any]
Evaluate = Callable[[nn.Module, Iterable], Mapping[str, Any]]


# --------------------------------------------------------------------------------------------
# History: one record per epoch
# --------------------------------------------------------------------------------------------


class History:
    """Per-epoch records of a `fit` run: a list of dicts of plain numbers, JSON-serialisable.

    `history[i]` is the record of the (i+1)-th epoch, `history["val_acc"]` the column of one name
    (None where an epoch lacks it), `history.last` the latest record, `history.best("val_acc",
    "max")` the record with the best value, `history.as_dict()` all columns for plotting.
    """

    def __init__(self, records: Iterable[Mapping[str, Any]] = ()):
        self.records: list[dict[str, Any]] = [dict(record) for record in records]

    def append(self, record: Mapping[str, Any]) -> None:
        self.records.append(dict(record))

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, index: int | str):
        if isinstance(index, str):
            if not any(index in record for record in self.records):
                raise KeyError(f"no epoch logged {index!r}; names logged: {self.names()}")
            return [record.get(index) for record in self.records]
        return self.records[index]

    def __repr__(self) -> str:
        return f"History({len(self)} epochs, names={self.names()})"

    def names(self) -> list[str]:
        """Every name logged in some epoch, in the order first seen."""
        return list(dict.fromkeys(name for record in self.records for name in record))

    @property
    def last(self) -> dict[str, Any]:
        if not self.records:
            raise IndexError("history is empty: no epoch has been trained")
        return self.records[-1]

    def best(self, key: str, mode: str = "min") -> dict[str, Any]:
        """The record whose `key` is smallest (`mode="min"`) or largest (`mode="max"`); first wins ties."""
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        candidates = [record for record in self.records if record.get(key) is not None]
        if not candidates:
            raise KeyError(f"no epoch logged {key!r}; names logged: {self.names()}")
        pick = min if mode == "min" else max
        return pick(candidates, key=lambda record: record[key])

    def as_dict(self) -> dict[str, list]:
        """Columns: name -> one value per epoch (None where that epoch lacks the name)."""
        return {name: [record.get(name) for record in self.records] for name in self.names()}

    def to_json(self) -> str:
        return json.dumps(self.records)


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


def to_device(batch: Any, device: str | torch.device) -> Any:
    """`batch` with every tensor moved to `device`, looking inside dicts, lists, tuples,
    named tuples and dataclasses; anything else is returned untouched.

    Pinned CPU tensors are copied asynchronously (`non_blocking`) to an accelerator.
    """
    device = torch.device(device)
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=is_accelerator(device) and batch.is_pinned())
    if isinstance(batch, Mapping):
        return type(batch)({key: to_device(value, device) for key, value in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a named tuple
        return type(batch)(*(to_device(value, device) for value in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(value, device) for value in batch)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        moved = {f.name: to_device(getattr(batch, f.name), device) for f in dataclasses.fields(batch) if f.init}
        return dataclasses.replace(batch, **moved)
    return batch


def batch_size_of(batch: Any) -> int | None:
    """The leading size of the first tensor with at least one dimension in `batch`, else None."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.ndim > 0 else None
    if isinstance(batch, Mapping):
        children = batch.values()
    elif isinstance(batch, (list, tuple)):
        children = batch
    elif dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        children = [getattr(batch, f.name) for f in dataclasses.fields(batch)]
    else:
        return None
    return next((size for size in map(batch_size_of, children) if size is not None), None)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


# --------------------------------------------------------------------------------------------
# Running means kept on the device
# --------------------------------------------------------------------------------------------


class _RunningMeans:
    """Weighted sums of the loss and logged values, kept on the device until `means()` reads them."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}  # name -> 0-dim float tensor on `device`
        self.weights: dict[str, int] = {}
        self.first_bad_batch = torch.tensor(-1, device=device)  # first batch with a non-finite loss

    def add(self, values: Mapping[str, torch.Tensor], weight: int) -> None:
        for name, value in values.items():
            weighted = value.detach().float() * weight
            self.sums[name] = self.sums[name] + weighted if name in self.sums else weighted
            self.weights[name] = self.weights.get(name, 0) + weight

    def watch_loss(self, loss: torch.Tensor, batch_index: int) -> None:
        unseen_bad = ~torch.isfinite(loss.detach()) & (self.first_bad_batch < 0)
        self.first_bad_batch = torch.where(unseen_bad, batch_index, self.first_bad_batch)

    def bad_batch(self) -> int | None:
        index = int(self.first_bad_batch)
        return index if index >= 0 else None

    def totals(self) -> dict[str, float]:
        """name -> weighted sum, read from the device."""
        if not self.sums:
            return {}
        totals = torch.stack(list(self.sums.values())).tolist()  # one device sync for all names
        return dict(zip(self.sums, totals))

    def means(self) -> dict[str, float]:
        return {name: total / self.weights[name] for name, total in self.totals().items()}

    def add_other_ranks(self) -> None:
        """Fold every rank's sums, weights and first bad batch into this rank's, so that `means()` and
        `bad_batch()` speak for the batches of all ranks, alike on every rank. Every rank must call it."""
        everyone = gather_objects((self.totals(), self.weights, self.bad_batch()))
        names = dict.fromkeys(name for totals, _, _ in everyone for name in totals)  # a batch may log fewer names
        self.sums = {name: torch.tensor(sum(totals.get(name, 0.0) for totals, _, _ in everyone), device=self.device)
                     for name in names}
        self.weights = {name: sum(weights.get(name, 0) for _, weights, _ in everyone) for name in names}
        bad_batches = [bad for _, _, bad in everyone if bad is not None]
        self.first_bad_batch = torch.tensor(min(bad_batches, default=-1), device=self.device)


def _parse_loss_output(output: Any, where: str, device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, logged values as 0-dim tensors on `device`) from what `loss_fn` returned."""
    if isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], Mapping):
        loss, logged = output
    else:
        loss, logged = output, {}
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"loss_fn must return a tensor or (tensor, dict); got {type(loss).__name__} at {where}")
    if loss.ndim != 0:
        raise ValueError(f"loss_fn must return a scalar (0-dim) loss; got shape {tuple(loss.shape)} at {where} "
                         "(reduce it, e.g. with .mean())")
    return loss, {name: _logged_value(name, value, where, device) for name, value in logged.items()}


def _logged_value(name: Any, value: Any, where: str, device: torch.device) -> torch.Tensor:
    if not isinstance(name, str) or name in RESERVED_NAMES or name.startswith("val_"):
        raise ValueError(f"loss_fn logged the name {name!r} at {where}; names must be str, not start "
                         f"with 'val_' and not be one of {RESERVED_NAMES}")
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.detach().reshape(()).to(device)  # a CPU number logged on a GPU run is summed with the rest
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return torch.tensor(float(value), device=device)
    shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
    raise ValueError(f"loss_fn logged {name!r} = {shape} at {where}; expected a number or a one-element tensor")


# --------------------------------------------------------------------------------------------
# Random states and checkpoints
# --------------------------------------------------------------------------------------------


def _loader_generators(loader: Any) -> list[torch.Generator]:
    """The distinct torch.Generators that drive `loader`'s shuffling (often one, or none)."""
    candidates = (getattr(loader, "generator", None), getattr(getattr(loader, "sampler", None), "generator", None))
    unique = {id(g): g for g in candidates if isinstance(g, torch.Generator)}
    return list(unique.values())


def _rng_state(loader: Any = None) -> dict[str, Any]:
    name, key, position, has_gauss, cached_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (name, key.tolist(), int(position), int(has_gauss), float(cached_gauss)),
        "python": random.getstate(),
        "loader": [g.get_state() for g in _loader_generators(loader)],
    }
    if torch.cuda.is_available():
        state["accelerator"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any], loader: Any = None) -> None:
    torch.set_rng_state(state["torch"])
    name, key, position, has_gauss, cached_gauss = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), position, has_gauss, cached_gauss))
    random.setstate(state["python"])
    if torch.cuda.is_available():  # a checkpoint from a GPU run resumed on CPU keeps the CPU states only
        for index, device_state in enumerate(state.get("accelerator", [])[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state, index)
    if loader is not None:
        generators = _loader_generators(loader)
        if len(generators) != len(state["loader"]):
            raise ValueError(f"loader has {len(generators)} torch.Generator(s) but the checkpoint holds "
                             f"{len(state['loader'])}; build the DataLoader as when the checkpoint was saved "
                             "(with or without generator=)")
        for generator, generator_state in zip(generators, state["loader"]):
            generator.set_state(generator_state)


def _model_record(model: nn.Module) -> dict[str, Any]:
    """What a checkpoint remembers of its model: the class name and the shape of every state entry."""
    return {"class": type(model).__qualname__,
            "shapes": {name: list(value.shape) for name, value in model.state_dict().items()
                       if isinstance(value, torch.Tensor)}}


def _check_model_record(path: Path, record: Mapping[str, Any], model: nn.Module) -> None:
    """Refuse a checkpoint saved from another class of model, or from one of another configuration."""
    own = _model_record(model)
    if record["class"] != own["class"]:
        raise ValueError(f"{path} is a checkpoint of a {record['class']}, not of a {own['class']}")
    saved, shapes = record["shapes"], own["shapes"]
    for name in [*shapes, *(name for name in saved if name not in shapes)]:
        if saved.get(name) != shapes.get(name):
            raise ValueError(f"{path} was saved from a {own['class']} of another configuration: its {name!r} is "
                             f"{_shape_text(saved.get(name))} where this model's is {_shape_text(shapes.get(name))}")


def _shape_text(shape: list[int] | None) -> str:
    return "absent" if shape is None else f"of shape {tuple(shape)}"


def _verified_body(path: Path) -> bytes:
    """What `torch.save` wrote into the checkpoint at `path`, once its header and checksum are verified."""
    data = path.read_bytes()
    if not data.startswith(CHECKPOINT_HEADER):
        raise ValueError(f"{path} is not a checkpoint written by mmcourse.train.save_checkpoint: it lacks the "
                         "checkpoint header (is it from torch.save, another tool or an older mmcourse?)")
    start = len(CHECKPOINT_HEADER) + DIGEST_LENGTH
    digest, body = data[len(CHECKPOINT_HEADER):start], data[start:]
    if hashlib.sha256(body).hexdigest().encode() != digest:
        raise ValueError(f"{path} is corrupt or truncated: its contents do not match the checksum saved with them")
    return body


def _check_loadable(value: Any, where: str) -> None:
    """Refuse what `torch.load(weights_only=True)` would refuse to read back: anything but dicts, lists,
    tuples, strings, bytes, numbers, None and tensors (a NumPy float, say)."""
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            _check_loadable(key, f"a key of {where}")
            _check_loadable(item, f"{where}[{key!r}]")
    elif type(value) in (list, tuple):
        for index, item in enumerate(value):
            _check_loadable(item, f"{where}[{index}]")
    elif not (isinstance(value, torch.Tensor) or type(value) in (str, bytes, int, float, bool, type(None))):
        raise TypeError(f"{where} is a {type(value).__name__}; a checkpoint holds only dicts, lists, tuples, "
                        "strings, numbers, None and tensors (convert it, e.g. with float() or .tolist())")


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    *,
    epoch: int = 0,
    history: History | None = None,
    extra: Mapping[str, Any] | None = None,
    scaler: torch.amp.GradScaler | None = None,
    loader: Any = None,
) -> Path:
    """Write model, optimizer, scheduler, gradient scaler, RNG states (and `loader`'s generator
    state), `epoch`, `history` and `extra` to `path`, atomically: the data goes to a temporary
    file next to `path` that replaces it only once complete, so a crash never leaves a torn file.

    `extra` (and `history`) must hold plain Python containers, numbers, strings and tensors, since
    loading uses `torch.load(weights_only=True)`; anything else is refused here, before it is written.
    The file also holds a record of `model` and a SHA-256 of its contents (see the module docstring).
    Returns the path written.
    """
    path = Path(path)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
    if extra is not None and not isinstance(extra, Mapping):
        raise TypeError(f"extra must be a mapping or None, got {type(extra).__name__}")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "model_record": _model_record(model),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": _rng_state(loader),
        "history": list(history.records) if history is not None else [],
        "extra": dict(extra) if extra is not None else None,
    }
    _check_loadable(payload["extra"], "extra")
    _check_loadable(payload["history"], "history")
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as file:
            file.write(CHECKPOINT_HEADER + hashlib.sha256(body).hexdigest().encode() + body)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    map_location: str | torch.device | None = None,
    *,
    scaler: torch.amp.GradScaler | None = None,
    loader: Any = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load what `save_checkpoint` wrote into `model` (and `optimizer`, `scheduler`, `scaler`).

    Tensors are read onto `map_location` (default CPU) and then copied into the model's and
    optimizer's own devices. A checkpoint saved without loss scaling (CPU, bfloat16) leaves a given
    `scaler` as it is, so a float16 GPU can resume a run started elsewhere. With `restore_rng` (the default) the torch, CUDA, NumPy and Python RNG
    states are put back as they were at save time, and `loader`'s generator too when given, so
    training continues exactly as it would have. Returns {"epoch", "history", "extra"}.

    A file that is not such a checkpoint, is corrupt or truncated, or belongs to another model (or
    to one of another configuration) is refused with a ValueError naming it; nothing is loaded then.
    """
    path = Path(path)
    try:
        state = torch.load(io.BytesIO(_verified_body(path)), map_location=map_location or "cpu", weights_only=True)
    except pickle.UnpicklingError:  # never take torch's advice to load with weights_only=False
        raise ValueError(f"{path} holds Python objects that a checkpoint may not hold, so it is refused "
                         "unloaded: it was not written by mmcourse.train.save_checkpoint") from None
    if not isinstance(state, Mapping) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is a checkpoint of another format than {CHECKPOINT_FORMAT}, written by another "
                         "version of mmcourse")
    _check_model_record(path, state["model_record"], model)
    targets = {name: target for name, target in (("optimizer", optimizer), ("scheduler", scheduler))
               if target is not None}
    for name in targets:
        if state[name] is None:
            raise ValueError(f"{name} was given but the checkpoint {path} holds no {name} state")
    model.load_state_dict(state["model"])
    for name, target in targets.items():
        target.load_state_dict(state[name])
    if scaler is not None and state["scaler"]:  # saved without loss scaling: a fresh scaler recalibrates itself
        scaler.load_state_dict(state["scaler"])
    if restore_rng:
        _set_rng_state(state["rng"], loader)
    return {"epoch": state["epoch"], "history": History(state["history"]), "extra": state["extra"]}


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def fit(
    model: nn.Module,
    train_loader: Iterable,
    loss_fn: LossFn,
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    device: str | torch.device | None = None,
    amp: bool = False,
    grad_clip: float | None = None,
    scheduler: Any = None,
    scheduler_every: str = "epoch",
    evaluate: Evaluate | None = None,
    val_loader: Iterable | None = None,
    progress: bool = True,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = False,
    log: Callable[[dict[str, Any]], Any] | None = None,
) -> History:
    """Train `model` for `epochs` epochs on `train_loader`, minimising `loss_fn(model, batch)`.

    - `loss_fn(model, batch)` returns a scalar loss tensor, or `(loss, {"name": value})` to log
      more numbers (batch-size-weighted means per epoch, like `train_loss`). Batches arrive on the
      model's device.
    - `optimizer`: default AdamW over the parameters that require grad, with `lr` (default 1e-3)
      and `weight_decay` (default 0); `lr`/`weight_decay` may only be given without `optimizer`.
    - `scheduler`: an LR scheduler bound to `optimizer`, or a factory `optimizer -> scheduler`
      (needed with the default optimizer); stepped after every epoch, or every batch with
      `scheduler_every="batch"`.
    - `evaluate(model, val_loader) -> {name: number}` runs after each epoch under `torch.no_grad()`
      in eval mode; its names enter the history as "val_<name>". See `loss_evaluator`.
    - `grad_clip`: max total gradient norm; the mean pre-clip norm is logged as "grad_norm".
    - `amp`: mixed precision on CUDA (bfloat16, or float16 with loss scaling); no effect on CPU.
    - `checkpoint_path`: a checkpoint is written there after every epoch. With `resume=True`
      training continues from it when it exists (`epochs` counts all epochs, those already done
      included) and starts afresh when it does not.
    - `progress`: a tqdm bar over all batches; `False` prints nothing at all.
    - `log(record)` is called with each epoch's record.
    - In a process group of several ranks (`torchrun`), every rank calls `fit` alike and trains its
      share of each epoch; see "Several processes" in the module docstring. `train_loader` must then
      be a DataLoader, with its default sampler or a `DistributedSampler`; `evaluate` runs on every
      rank and its values are averaged over the ranks; `resume` loads rank 0's checkpoint on every rank.

    Returns the `History`, and leaves the model in eval mode, ready for inference.
    """
    device = get_device(device)
    _check_fit_arguments(model, loss_fn, epochs, optimizer, lr, weight_decay, grad_clip, scheduler_every,
                         evaluate, val_loader, checkpoint_path, resume, log)
    distributed, main = is_distributed(), rank() == 0
    if distributed:
        device, train_loader = rank_device(device), _sharded_loader(train_loader)
    model.to(device)
    if optimizer is None:
        optimizer = _default_optimizer(model, lr, weight_decay)
    scheduler = _bind_scheduler(scheduler, optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=needs_grad_scaler(device, amp))

    history, start_epoch = History(), 0
    if resume and Path(checkpoint_path).exists():
        restored = load_checkpoint(checkpoint_path, model, optimizer, scheduler, scaler=scaler, loader=train_loader)
        history, start_epoch = restored["history"], restored["epoch"]
        if start_epoch > epochs:
            raise ValueError(f"epochs={epochs} but the checkpoint {checkpoint_path} has already "
                             f"{start_epoch} epochs; epochs counts all epochs, those done included")

    compute_loss = _data_parallel_loss(model, loss_fn, device) if distributed else functools.partial(loss_fn, model)
    bar = tqdm(total=_total_batches(train_loader, epochs - start_epoch), disable=not (progress and main),
               unit="batch")
    try:
        for epoch in range(start_epoch + 1, epochs + 1):
            started = time.perf_counter()
            bar.set_description(f"epoch {epoch}/{epochs}")
            if distributed:
                train_loader.sampler.set_epoch(epoch)  # another shuffle each epoch, the same on every rank
            record = {"epoch": epoch}
            record.update(_train_one_epoch(model, compute_loss, train_loader, optimizer, scaler, device, amp,
                                           grad_clip, scheduler if scheduler_every == "batch" else None,
                                           epoch, bar))
            broadcast_buffers(model)  # every rank evaluates, saves and returns rank 0's model
            if evaluate is not None:
                record.update(_run_evaluate(model, evaluate, val_loader))
            if scheduler is not None and scheduler_every == "epoch":
                scheduler.step()
            record.update(mean_over_ranks({"seconds": time.perf_counter() - started}))
            history.append(record)
            bar.set_postfix({name: f"{value:.4g}" for name, value in record.items()
                             if name not in ("epoch", "lr", "seconds")})
            if checkpoint_path is not None:
                if main:
                    save_checkpoint(checkpoint_path, model, optimizer, scheduler, epoch=epoch, history=history,
                                    scaler=scaler, loader=train_loader)
                if distributed:
                    dist.barrier()  # no rank goes on before the checkpoint is complete
            if log is not None and main:
                log(record)
    finally:
        bar.close()
    model.eval()
    return history


def _check_fit_arguments(model, loss_fn, epochs, optimizer, lr, weight_decay, grad_clip, scheduler_every,
                         evaluate, val_loader, checkpoint_path, resume, log) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(model, batch), got {type(loss_fn).__name__}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    if optimizer is not None and (lr is not None or weight_decay is not None):
        raise ValueError("lr and weight_decay configure the default optimizer; with optimizer= given, "
                         f"set them on it instead (got lr={lr!r}, weight_decay={weight_decay!r})")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    if lr is not None and not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if weight_decay is not None and not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a non-negative number, got {weight_decay!r}")
    if grad_clip is not None and not (isinstance(grad_clip, (int, float)) and grad_clip > 0):
        raise ValueError(f"grad_clip must be a positive number or None, got {grad_clip!r}")
    if scheduler_every not in SCHEDULER_EVERY:
        raise ValueError(f"scheduler_every must be one of {SCHEDULER_EVERY}, got {scheduler_every!r}")
    if evaluate is not None and not callable(evaluate):
        raise TypeError(f"evaluate must be callable as evaluate(model, val_loader), got {type(evaluate).__name__}")
    if (evaluate is None) != (val_loader is None):
        given, missing = ("evaluate", "val_loader") if val_loader is None else ("val_loader", "evaluate")
        raise ValueError(f"{given} was given without {missing}; pass both or neither")
    if resume and checkpoint_path is None:
        raise ValueError("resume=True needs checkpoint_path= (the checkpoint to resume from)")
    if log is not None and not callable(log):
        raise TypeError(f"log must be callable as log(record) or None, got {type(log).__name__}")


def _default_optimizer(model: nn.Module, lr: float | None, weight_decay: float | None) -> torch.optim.Optimizer:
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("model has no parameter that requires grad: nothing to train")
    return torch.optim.AdamW(trainable,
                             lr=DEFAULT_LR if lr is None else lr,
                             weight_decay=DEFAULT_WEIGHT_DECAY if weight_decay is None else weight_decay)


def _bind_scheduler(scheduler: Any, optimizer: torch.optim.Optimizer):
    """`scheduler` itself when bound to `optimizer`, or what the factory `scheduler(optimizer)` builds."""
    if scheduler is None:
        return None
    if not isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
        if not callable(scheduler):
            raise TypeError(f"scheduler must be an LR scheduler or a factory optimizer -> scheduler, "
                            f"got {type(scheduler).__name__}")
        scheduler = scheduler(optimizer)
    if getattr(scheduler, "optimizer", None) is not optimizer:
        raise ValueError("scheduler is bound to a different optimizer than the one fit trains with; "
                         "pass that optimizer as optimizer=, or pass a factory optimizer -> scheduler")
    return scheduler


def _total_batches(loader: Iterable, epochs: int) -> int | None:
    try:
        return len(loader) * epochs
    except TypeError:  # an iterable-style loader has no length
        return None


def _train_one_epoch(model, compute_loss, loader, optimizer, scaler, device, amp, grad_clip, batch_scheduler,
                     epoch, bar) -> dict[str, float]:
    """One pass over `loader`, `compute_loss(batch)` calling the loss_fn on `model`; returns
    {"train_loss", logged names..., "grad_norm"?, "lr"}, over the batches of every rank."""
    model.train()
    running = _RunningMeans(device)
    lr = optimizer.param_groups[0]["lr"]
    batch_index = -1
    for batch_index, batch in enumerate(loader):
        weight = batch_size_of(batch) or 1
        batch = to_device(batch, device)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            loss, logged = _parse_loss_output(compute_loss(batch), f"epoch {epoch}, batch {batch_index}", device)
        if not loss.requires_grad:
            raise ValueError(f"the loss returned by loss_fn does not require grad at epoch {epoch}, batch "
                             f"{batch_index}: it is not connected to any trainable parameter")
        scaler.scale(loss).backward()
        if grad_clip is not None:
            scaler.unscale_(optimizer)
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip)  # the norm before clipping
            running.add({"grad_norm": grad_norm}, weight=1)
        lr = optimizer.param_groups[0]["lr"]
        scaler.step(optimizer)
        scaler.update()
        if batch_scheduler is not None:
            batch_scheduler.step()
        running.watch_loss(loss, batch_index)
        running.add({"train_loss": loss, **logged}, weight)
        bar.update(1)
        if not bar.disable and (batch_index + 1) % BAR_EVERY == 0:
            _raise_if_bad_loss(running, epoch)
            bar.set_postfix(loss=f"{running.means()['train_loss']:.4g}")
    if batch_index < 0:
        raise ValueError(f"train_loader yielded no batches in epoch {epoch}")
    if is_distributed():
        running.add_other_ranks()
    _raise_if_bad_loss(running, epoch)
    means = running.means()
    grad_norm = means.pop("grad_norm", None)
    return {**means, **({"grad_norm": grad_norm} if grad_norm is not None else {}), "lr": lr}


def _raise_if_bad_loss(running: _RunningMeans, epoch: int) -> None:
    bad = running.bad_batch()
    if bad is not None:
        raise ValueError(f"loss_fn returned a non-finite loss (nan or inf) at epoch {epoch}, batch {bad}; "
                         "lower the learning rate, clip gradients or check the inputs of that batch")


def _run_evaluate(model: nn.Module, evaluate: Evaluate, val_loader: Iterable) -> dict[str, float]:
    """`evaluate(model, val_loader)` in eval mode without gradients, names prefixed "val_", averaged over
    the ranks of a process group (each rank evaluates the same model)."""
    model.eval()
    try:
        with torch.no_grad():
            metrics = evaluate(model, val_loader)
    finally:
        model.train()
    if not isinstance(metrics, Mapping):
        raise TypeError(f"evaluate must return a mapping of name -> number, got {type(metrics).__name__}")
    metrics = {f"val_{name}": _as_float(value, f"evaluate()[{name!r}]") for name, value in metrics.items()}
    return mean_over_ranks(metrics)


def _as_float(value: Any, what: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"{what} must be a number or a one-element tensor, got {type(value).__name__}")


def loss_evaluator(loss_fn: LossFn, amp: bool = False) -> Evaluate:
    """An `evaluate` for `fit` that reports the mean of `loss_fn` (and its logged values) on the
    validation loader: `fit(..., evaluate=loss_evaluator(loss_fn), val_loader=val)` logs "val_loss".
    """

    def evaluate(model: nn.Module, loader: Iterable) -> dict[str, float]:
        device = model_device(model)
        running = _RunningMeans(device)
        for batch_index, batch in enumerate(loader):
            weight = batch_size_of(batch) or 1
            with autocast(device, amp):
                output = loss_fn(model, to_device(batch, device))
            loss, logged = _parse_loss_output(output, f"validation batch {batch_index}", device)
            running.add({"loss": loss, **logged}, weight)
        means = running.means()
        if not means:
            raise ValueError("val_loader yielded no batches")
        return means

    return evaluate


# --------------------------------------------------------------------------------------------
# Several processes (torchrun)
# --------------------------------------------------------------------------------------------


def _sharded_loader(loader: Any) -> DataLoader:
    """`loader` reading this rank's share of every epoch.

    A DataLoader with a DistributedSampler is used as it is. One with its default sampler is rebuilt
    over a DistributedSampler with the same dataset, batch size, collation, workers and generator:
    shuffling when it shuffled (seeded from its generator, the same seed on every rank), in order
    otherwise; its `drop_last` also drops the samples that do not divide evenly among the ranks,
    where DistributedSampler would otherwise repeat a few. Anything else is refused, since fit cannot
    tell how to split it.
    """
    if isinstance(loader, DataLoader) and isinstance(loader.sampler, DistributedSampler):
        return loader
    if not _samples_by_default(loader):
        raise ValueError(f"train_loader must be a DataLoader over a map-style dataset, with its default sampler "
                         f"(fit gives it a DistributedSampler) or sampler=DistributedSampler(dataset), to train in "
                         f"a process group of {dist.get_world_size()} ranks; got {_sampling_text(loader)}")
    shuffle = isinstance(loader.sampler, RandomSampler)
    sampler = DistributedSampler(loader.dataset, shuffle=shuffle, drop_last=loader.drop_last,
                                 seed=_shared_seed(loader.sampler.generator) if shuffle else 0)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                      timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
                      multiprocessing_context=loader.multiprocessing_context, generator=loader.generator,
                      prefetch_factor=loader.prefetch_factor, persistent_workers=loader.persistent_workers,
                      pin_memory_device=loader.pin_memory_device, in_order=loader.in_order)


def _samples_by_default(loader: Any) -> bool:
    """True for a DataLoader that draws its map-style dataset as `shuffle=` alone makes it: in order,
    or one permutation per epoch."""
    if not isinstance(loader, DataLoader):
        return False
    sampler, batch_sampler = loader.sampler, loader.batch_sampler
    if batch_sampler is not None and not (type(batch_sampler) is BatchSampler and batch_sampler.sampler is sampler):
        return False
    if type(sampler) is RandomSampler:
        return not sampler.replacement and sampler.num_samples == len(loader.dataset)
    return type(sampler) is SequentialSampler


def _sampling_text(loader: Any) -> str:
    if not isinstance(loader, DataLoader):
        return f"a {type(loader).__name__}"
    return (f"a DataLoader whose sampler is a {type(loader.sampler).__name__} and batch_sampler a "
            f"{type(loader.batch_sampler).__name__}")


def _shared_seed(generator: torch.Generator | None) -> int:
    """A seed for DistributedSampler's shuffling, drawn from `generator` (torch's global RNG when None):
    rank 0's draw on every rank, since all ranks must shuffle alike to split each epoch."""
    return gather_objects(int(torch.randint(2**31, (), generator=generator)))[0]


class _LossModule(nn.Module):
    """`loss_fn(model, batch)` as the forward of a module: what DistributedDataParallel wraps."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> Any:
        return self.loss_fn(self.model, batch)


def _data_parallel_loss(model: nn.Module, loss_fn: LossFn, device: torch.device) -> DistributedDataParallel:
    """`batch -> loss_fn(model, batch)` run inside DistributedDataParallel's forward.

    DDP averages the gradients of what runs inside its forward only: it would silently leave alone
    those of a loss that calls `model.encode_image`, `model.clone_loss` and the like, as many of the
    course's losses do. So the whole `loss_fn` becomes the forward, and still receives the plain model.
    `find_unused_parameters` lets a batch leave parameters unused (a module network's modules, a head
    that a loss switches off); where none is, DDP prints once that the search was not needed. Building
    it copies rank 0's parameters and buffers to every rank.
    """
    return DistributedDataParallel(_LossModule(model, loss_fn), device_ids=ddp_device_ids(device),
                                   find_unused_parameters=True)


__all__ = [
    "History",
    "fit",
    "save_checkpoint",
    "load_checkpoint",
    "loss_evaluator",
    "to_device",
    "batch_size_of",
    "model_device",
]
