"""Devices and precisions by name, and results copied off the device with one wait."""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import ConfigError

#: the precisions a model can run in, by every name they are given
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}

#: the short names a command line offers
DTYPE_CHOICES = ("fp32", "fp16", "bf16")


def default_device() -> torch.device:
    """The device models load on when none is named.

    Returns:
        CUDA when torch sees a GPU, else the CPU.
    """
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``device`` checked usable here, or the default device.

    A CUDA device where torch sees no GPU is one clear error here, before any weights are read
    or timed.

    Args:
        device: a device, its name (``"cpu"``, ``"cuda:1"``), or None for :func:`default_device`.

    Returns:
        The device.

    Raises:
        ConfigError: when the name is no device, or the device cannot be used here.
    """
    try:
        device = torch.device(device) if device is not None else default_device()
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {str(device)!r} asked for, but this torch sees no CUDA GPU "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); use device='cpu'"
        )
    try:  # a device this torch or machine cannot use (mps without Apple's GPU, cuda:7 on one GPU)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:
        reason = (str(err).splitlines() or [""])[0]
        reason = reason if len(reason) <= 100 else reason[:97] + "..."
        raise ConfigError(f"device {str(device)!r} cannot be used here ({reason}); use device='cpu'") from err
    return device


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A precision given as a torch dtype or by name.

    Args:
        dtype: ``torch.float16``, ``"fp16"``, ``"float16"`` ... or None.

    Returns:
        The torch dtype, or None (the model's own).

    Raises:
        ConfigError: for an unknown name.
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def to_host(*tensors: Tensor) -> tuple[Tensor, ...]:
    """The tensors on the CPU, copied with one synchronization of their devices' streams.

    ``tensor.cpu()`` waits for the GPU each time; a call returning seven tensors would wait
    seven times.

    Args:
        *tensors: tensors on any devices.

    Returns:
        CPU copies (or the tensors themselves where already there), in order.
    """
    devices = {t.device for t in tensors if t.is_cuda}
    if not devices:
        return tuple(t.cpu() for t in tensors)
    host = tuple(t.to("cpu", non_blocking=True) for t in tensors)
    for device in devices:  # non-blocking copies land in pinned memory: wait for them once
        torch.cuda.current_stream(device).synchronize()
    return host
