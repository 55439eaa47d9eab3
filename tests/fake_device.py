"""A stand-in accelerator for machines without a GPU, to test that code follows its inputs' device.

Inside `fake_device()`, `tensor.to(FAKE)` and `module.to(FAKE)` (and `torch.zeros(..., device=FAKE)`,
`torch.tensor(..., device=x.device)`...) give `FakeDeviceTensor`s: they say they live on the "meta"
device but carry real values on the CPU, so every op runs, data-dependent ones too (`.item()`,
boolean masks, `nonzero`, draws from torch's global generator), with the CPU's kernels and results.
What CUDA refuses, they refuse too:

- an op that mixes them with CPU tensors ("Expected all tensors to be on the same device"), but for
  0-dim CPU tensors outside `torch.stack`/`torch.cat` and the arguments CUDA reads on the host
  (`HOST_ARGUMENTS`; the results it gives there, `HOST_RESULTS`, stay on the CPU too);
- a CPU tensor indexed with indices on the fake device (`torch.eye(C)[targets]`);
- a CPU `torch.Generator` drawing their numbers;
- `.numpy()` without `.cpu()` first.

`.cpu()` and `.to("cpu")` give plain CPU tensors back. Why not the bare meta device: it carries no
values, so it cannot run a model's input checks or anything else that reads a value, and it lets
`torch.eye(C)[targets]` and a CPU generator pass.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

FAKE = torch.device("meta")
CPU = torch.device("cpu")
aten = torch.ops.aten
COPIES = {aten._to_copy.default, aten.copy_.default}  # they move values between devices: never refused
# Arguments that CUDA takes on the CPU: indices of an indexed CUDA tensor, and packed sequences' sizes.
HOST_ARGUMENTS = {
    aten.index.Tensor: {"indices"},
    aten.index_put.default: {"indices"},
    aten.index_put_.default: {"indices"},
    aten._index_put_impl_.default: {"indices"},
    aten._pack_padded_sequence.default: {"lengths"},
    aten._pack_padded_sequence_backward.default: {"batch_sizes"},
    aten._pad_packed_sequence.default: {"batch_sizes"},
    aten.lstm.data: {"batch_sizes"},
}
JOINS = {aten.stack.default, aten.cat.default}  # CUDA joins no 0-dim CPU tensor with its own
HOST_RESULTS = {  # positions of the results that CUDA gives on the CPU: packed sequences' sizes
    aten._pack_padded_sequence.default: {1},
    aten._pad_packed_sequence.default: {1},
}


class FakeDeviceTensor(torch.Tensor):
    """A tensor on FAKE whose values are the CPU tensor `cpu_values`."""

    @staticmethod
    def __new__(cls, cpu_values: torch.Tensor):
        tensor = torch.Tensor._make_wrapper_subclass(
            cls, cpu_values.shape, strides=cpu_values.stride(), storage_offset=cpu_values.storage_offset(),
            dtype=cpu_values.dtype, device=FAKE, requires_grad=cpu_values.requires_grad)
        tensor.cpu_values = cpu_values
        return tensor

    def __repr__(self, *, tensor_contents=None):
        return f"FakeDeviceTensor({self.cpu_values!r})"

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return run_on_cpu(func, args, kwargs or {})


@contextlib.contextmanager
def fake_device():
    """While active, FAKE is a device whose tensors hold values (see the module's docstring)."""
    with _OutOfDispatch(), _Factories():
        yield


def run_on_cpu(func, args: tuple, kwargs: dict):
    """Run aten op `func` on the CPU values of its arguments, after CUDA's device checks; results
    on the fake device come back as FakeDeviceTensors, an in-place op's as its argument."""
    _check_devices(func, args, kwargs)
    on_fake = _is_fake(kwargs["device"]) if kwargs.get("device") is not None else any(
        isinstance(leaf, FakeDeviceTensor) for leaf in tree_leaves((args, kwargs)))
    wrappers = {}  # id of CPU values -> the FakeDeviceTensor holding them

    def to_cpu(value):
        if isinstance(value, FakeDeviceTensor):
            wrappers[id(value.cpu_values)] = value
            return value.cpu_values
        return CPU if isinstance(value, torch.device) and _is_fake(value) else value

    def back(value):
        if not isinstance(value, torch.Tensor):
            return value
        if id(value) in wrappers:  # an in-place or out= result: the argument itself
            return wrappers[id(value)]
        return FakeDeviceTensor(value) if on_fake else value

    cpu_args, cpu_kwargs = tree_map(to_cpu, (args, kwargs))
    result = func(*cpu_args, **cpu_kwargs)
    if func in HOST_RESULTS:
        return tuple(value if i in HOST_RESULTS[func] else back(value) for i, value in enumerate(result))
    return tree_map(back, result)


class _Factories(TorchDispatchMode):
    """Sends every op through `run_on_cpu`, so that factories given device=FAKE make FakeDeviceTensors."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return run_on_cpu(func, args, kwargs or {})


class _OutOfDispatch(TorchFunctionMode):
    """What torch does out of its dispatch, where `_Factories` cannot see it: `torch.tensor`,
    `torch.as_tensor` and `Tensor.new_tensor` for FAKE (built on the CPU, then moved), indexing with
    Python lists or arrays (made CPU index tensors), and `tolist` and `numpy`, which refuse tensor
    subclasses (`numpy` refuses as CUDA does)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor) and _is_fake(kwargs.get("device")):
            return func(*args, **{**kwargs, "device": None}).to(FAKE)
        if func is torch.Tensor.new_tensor and _is_fake(kwargs.get("device", args[0].device)):
            return func(args[0].cpu(), *args[1:], **{**kwargs, "device": None}).to(FAKE)
        if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and isinstance(args[0], FakeDeviceTensor):
            return func(args[0], _host_index(args[1]), *args[2:])
        if func is torch.Tensor.tolist and isinstance(args[0], FakeDeviceTensor):
            return args[0].cpu_values.tolist()
        if func is torch.Tensor.numpy and isinstance(args[0], FakeDeviceTensor):
            raise TypeError(f"can't convert {FAKE.type} device type tensor to numpy. "
                            "Use Tensor.cpu() to copy the tensor to host memory first.")
        return func(*args, **kwargs)


def _host_index(index):
    """`index` with its Python lists and NumPy arrays as CPU tensors (left alone, torch would make them
    tensors on the fake device out of dispatch, without values)."""
    if isinstance(index, (list, np.ndarray)):
        return torch.as_tensor(index)
    return tuple(map(_host_index, index)) if isinstance(index, tuple) else index


def _is_fake(device) -> bool:
    return device is not None and torch.device(device) == FAKE


def _device(tensor: torch.Tensor) -> torch.device:
    return FAKE if isinstance(tensor, FakeDeviceTensor) else tensor.device


def _check_devices(func, args: tuple, kwargs: dict) -> None:
    """Raise CUDA's errors for an op on tensors of two devices, or for a CPU generator's draws on FAKE."""
    devices = _devices(func, args, kwargs)
    generator = kwargs.get("generator")
    if generator is not None and FAKE in devices:
        raise RuntimeError(f"Expected a '{FAKE.type}' device type for generator but found "
                           f"'{generator.device.type}' ({func})")
    if len(devices) > 1 and func not in COPIES:
        raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                           f"{' and '.join(sorted(map(str, devices)))}! ({func})")


def _devices(func, args: tuple, kwargs: dict) -> set[torch.device]:
    """The device a factory is told to use (its tensor arguments give shapes and dtypes only), else
    the devices of the op's tensors, 0-dim CPU tensors (but in `JOINS`) and `HOST_ARGUMENTS` on the
    CPU left out."""
    if kwargs.get("device") is not None:
        return {torch.device(kwargs["device"])}
    named = {**dict(zip((argument.name for argument in func._schema.arguments), args)), **kwargs}
    devices = set()
    for name, value in named.items():
        for tensor in (leaf for leaf in tree_leaves(value) if isinstance(leaf, torch.Tensor)):
            on_host = (tensor.dim() == 0 and func not in JOINS) or name in HOST_ARGUMENTS.get(func, ())
            if not (on_host and _device(tensor) == CPU):
                devices.add(_device(tensor))
    return devices
