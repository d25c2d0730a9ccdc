"""What every fused kernel shares: Triton (when installed), switches, launches, tile arithmetic.

Triton ships with CUDA builds of torch; without it (a CPU build) every kernel reports itself
unavailable and the PyTorch twins run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

try:
    import triton
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None

#: whether Triton runs its kernels' arithmetic on the CPU (``TRITON_INTERPRET=1``, for tests)
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
MAX_GRID_Y = 65535  #: CUDA's limit on a grid's second and third axes
LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")  #: Triton's, not the kernel's


class KernelSwitch:
    """A fused kernel's switch, on by default.

    ``with switch(False):`` runs the PyTorch twin instead within the block, to compare the two;
    ``switch.enabled`` is its state. ``min_elements`` keeps the kernel off for tensors smaller
    than that: on a small batch a GPU waits on the host's launches, and a Triton launch costs
    the host more than PyTorch's own kernels do, so there the fused pass is the slower one.
    ``with switch(True, min_elements=0):`` runs it at any size, for timing.

    Args:
        min_elements: the smallest tensor (in elements) the kernel runs on, on a GPU.
    """

    def __init__(self, min_elements: int = 0) -> None:
        self.enabled = True
        self.min_elements = min_elements

    @contextmanager
    def __call__(self, enabled: bool, *, min_elements: int | None = None) -> Iterator[None]:
        """Switch the kernel on or off (and set its size floor) within a ``with`` block.

        Args:
            enabled: whether the fused kernel may run.
            min_elements: a new size floor for the block; None keeps the current one.

        Yields:
            Nothing; the previous state is restored when the block ends.
        """
        saved = self.enabled, self.min_elements
        self.enabled = enabled
        if min_elements is not None:
            self.min_elements = min_elements
        try:
            yield
        finally:
            self.enabled, self.min_elements = saved

    def allows(self, x: Tensor, *others: Tensor | None) -> bool:
        """Whether an elementwise fused kernel may run on ``x`` (and ``others``).

        It may when switched on, on a GPU (``x`` at least ``min_elements`` large) or under
        Triton's interpreter, with no gradient to carry through any of them, and not while
        ``torch.compile`` traces (inductor fuses elementwise work itself).

        Args:
            x: the tensor the kernel reads.
            *others: further inputs (None where absent).

        Returns:
            True where the kernel may run.
        """
        if not self.enabled or torch.compiler.is_compiling() or not available(x):
            return False
        if x.is_cuda and x.numel() < self.min_elements:  # the interpreter's tests run any size
            return False
        tensors = [t for t in (x, *others) if t is not None]
        return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def class_is_one_of(module: object, names: frozenset[str]) -> bool:
    """Whether ``module``'s own class is one of ``names`` (``package.module.Class``).

    A fused kernel stands in for a known forward, and a subclass may compute something else.

    Args:
        module: the module to test.
        names: fully qualified class names.

    Returns:
        True when the module's own class is named.
    """
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}" in names


def available(x: Tensor) -> bool:
    """Whether a fused kernel can run on ``x``'s device.

    Args:
        x: a tensor.

    Returns:
        True on a CUDA GPU with Triton, or on the CPU under Triton's interpreter.
    """
    return triton is not None and (x.is_cuda or (INTERPRETED and x.device.type == "cpu"))


def cdiv(a: int, b: int) -> int:
    """``a / b`` rounded up, for whole tiles and programs.

    Args:
        a: the numerator.
        b: the denominator (positive).

    Returns:
        The smallest whole number at least ``a / b``.
    """
    return -(-a // b)


def next_power_of_2(x: int) -> int:
    """The smallest power of 2 at least ``x`` (1 for ``x <= 1``).

    Triton's own is a compile-time function costing microseconds on the host, and a fused call
    on a small batch is bound by the host's time.

    Args:
        x: a whole number.

    Returns:
        A power of 2.
    """
    return 1 << max(0, x - 1).bit_length()


@dataclass(frozen=True)
class Launch:
    """One kernel launch of a fused call, planned but not yet run.

    Kept apart from running it so that the launch can be compiled for a GPU on a machine
    without one (:func:`mmfinercam.kernels.aot.compile_ahead`).

    Args:
        kernel: the Triton kernel.
        grid: its grid of programs.
        args: its runtime arguments.
        meta: its compile-time values and launch options (``num_warps``, ``num_stages``).
    """

    kernel: Any
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    meta: dict[str, Any]

    def __call__(self) -> None:
        """Run the launch."""
        self.kernel[self.grid](*self.args, **self.meta)
