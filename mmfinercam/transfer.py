"""Results off the device: every copy queued, then one wait.

``tensor.cpu()`` waits for the GPU each time; a call returning seven tensors waited seven times.
"""

from __future__ import annotations

import torch
from torch import Tensor


def to_host(*tensors: Tensor) -> tuple[Tensor, ...]:
    """The tensors on the CPU, copied with one synchronization of their devices' streams."""
    devices = {t.device for t in tensors if t.is_cuda}
    if not devices:
        return tuple(t.cpu() for t in tensors)
    host = tuple(t.to("cpu", non_blocking=True) for t in tensors)
    for device in devices:  # non-blocking copies land in pinned memory: wait for them once
        torch.cuda.current_stream(device).synchronize()
    return host
