"""A residual add and the LayerNorm after it, in one pass over the tokens (Triton), for inference.

A pre-norm ViT block adds each branch to the residual stream and normalizes the sum for the
next branch: ``x = x + y; h = norm(x)``. In PyTorch that is two passes, and PyTorch's LayerNorm
kernel reads a ViT-B/16's 768-wide rows well below a GPU's memory bandwidth. Here one launch
reads ``x`` and ``y`` once and writes the sum and its normalization.

Same numbers as the two passes: the sum is rounded to the tokens' dtype as PyTorch's add rounds
it, and normalized from those rounded values in fp32, as ``F.layer_norm`` does (mean and
variance summed in another order: a difference in the last bit of fp32, rarely one in the last
bit of a half-precision output). It runs on a CUDA GPU (or under Triton's interpreter) when no
gradient is needed and the norm is a plain LayerNorm (:data:`PLAIN_LAYER_NORMS`); anything
else takes the PyTorch path.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor, nn

from ._launch import KernelSwitch, Launch, cdiv, class_is_one_of, next_power_of_2, triton

if triton is not None:
    import triton.language as tl

#: LayerNorm classes whose forward is ``F.layer_norm`` over the last dimension and nothing else
#: (a cast to fp32 and back included): their numbers are the kernel's
PLAIN_LAYER_NORMS = frozenset(
    {
        "torch.nn.modules.normalization.LayerNorm",
        "open_clip.transformer.LayerNorm",
        "open_clip.transformer.LayerNormFp32",
        "timm.layers.norm.LayerNorm",
    }
)

#: the fused kernel, on by default for tokens of at least ``fused.min_elements`` (about a
#: ViT-B/16 at batch 40): ``with fused(False):`` runs PyTorch's two passes instead. Below the
#: floor the GPU waits on the host, and PyTorch's two launches cost the host less than one of
#: Triton's (the profiles in benchmarks/profile_gpu.py)
fused = KernelSwitch(min_elements=6_000_000)


def layer_norm_params(norm: nn.Module) -> tuple[Tensor | None, Tensor | None, float] | None:
    """The parameters of a plain LayerNorm over the last dimension.

    Args:
        norm: a normalization module.

    Returns:
        (weight, bias, eps), or None for any other normalization (RMSNorm, a subclass with a
        forward of its own, ...).
    """
    plain: Any = norm
    if not class_is_one_of(norm, PLAIN_LAYER_NORMS) or len(plain.normalized_shape) != 1:
        return None
    return plain.weight, plain.bias, float(plain.eps)


def takes_kernel(x: Tensor, y: Tensor | None, norm: nn.Module) -> bool:
    """Whether :func:`add_norm` runs the fused kernel for these tokens and this norm.

    It does for a plain LayerNorm, tokens on a CUDA GPU (at least :data:`fused`'s size floor), no
    gradient to carry, and not while ``torch.compile`` traces (inductor fuses the two itself).

    Args:
        x: the residual stream.
        y: the branch added to it, or None.
        norm: the normalization module.

    Returns:
        True where the kernel runs.
    """
    return _kernel_params(x, y, norm) is not None


def _kernel_params(
    x: Tensor, y: Tensor | None, norm: nn.Module
) -> tuple[Tensor | None, Tensor | None, float] | None:
    """The norm's (weight, bias, eps) where the kernel runs for these tokens, else None."""
    params = layer_norm_params(norm)
    if params is None or not x.is_floating_point() or not fused.allows(x, y, *params[:2]):
        return None
    return params if params[0] is None or tuple(params[0].shape) == tuple(x.shape[-1:]) else None


def add_norm(x: Tensor, y: Tensor | None, norm: nn.Module) -> tuple[Tensor, Tensor]:
    """``(x + y, norm(x + y))`` in one fused pass where :func:`takes_kernel` says so.

    The inputs are not modified.

    Args:
        x: the residual stream, ...×C.
        y: the branch added to it, or None for ``(x, norm(x))``.
        norm: the normalization module.

    Returns:
        The sum and its normalization.
    """
    total, out, _ = _add_norm(x, y, norm, row_norms=False)
    return total, out


def add_norm_row_norms(x: Tensor, y: Tensor | None, norm: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`add_norm`, and the L2 norm of each row of ``norm(x + y)``.

    GEM's temperature reads the norms of a block's normalized tokens, and the fused pass has them
    at hand, so they cost no pass of their own.

    Args:
        x: the residual stream, ...×C.
        y: the branch added to it, or None.
        norm: the normalization module.

    Returns:
        The sum, its normalization, and the row norms (``x.shape[:-1]``, in its dtype, as
        ``Tensor.norm(dim=-1)`` gives them).
    """
    total, out, norms = _add_norm(x, y, norm, row_norms=True)
    assert norms is not None
    return total, out, norms


def _add_norm(
    x: Tensor, y: Tensor | None, norm: nn.Module, *, row_norms: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    params = _kernel_params(x, y, norm)
    if params is None:
        if y is not None:
            x = x + y
        out = norm(x)
        return x, out, out.norm(dim=-1) if row_norms else None
    total, out, norms, launch = plan_add_layer_norm(x, y, *params, row_norms=row_norms)
    launch()
    return total, out, norms


def layer_norm(x: Tensor, norm: nn.Module) -> Tensor:
    """``norm(x)``, in the fused kernel where it applies (a norm with no residual add before it).

    Args:
        x: ...×C tokens.
        norm: the normalization module.

    Returns:
        ``norm(x)``.
    """
    return add_norm(x, None, norm)[1]


def plan_add_layer_norm(
    x: Tensor,
    y: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    *,
    row_norms: bool = False,
    shape: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, Launch]:
    """The outputs and the launch of a fused add and LayerNorm, not yet run.

    The launch can then be compiled for a GPU on a machine without one
    (:mod:`mmfinercam.kernels.aot`).

    Args:
        x: the residual stream, ...×C.
        y: the branch added to it, or None (then the sum is ``x`` itself).
        weight: the norm's weight, or None.
        bias: the norm's bias, or None.
        eps: the norm's epsilon.
        row_norms: also write each output row's L2 norm.
        shape: (rows a program, warps), overriding the tuned launch shape.

    Returns:
        The sum, the normalization, the row norms (or None) and the launch.

    Raises:
        RuntimeError: without Triton.
        ValueError: when ``x`` and ``y`` differ in shape.
    """
    if triton is None:
        raise RuntimeError("the fused add and LayerNorm needs triton (pip install triton)")
    cols = x.shape[-1]
    if y is not None and y.shape != x.shape:
        raise ValueError(f"x and y must have one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    x_rows, x_stride = _as_rows(x)
    y_rows, y_stride = (x_rows, 0) if y is None else _as_rows(y if y.dtype == x.dtype else y.to(x.dtype))
    # outputs in x's shape, rows packed (no views to take: a call on a small batch is bound by
    # the host's time); with no add the sum is x itself
    total = x if y is None else torch.empty(x.shape, dtype=x.dtype, device=x.device)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    norms = torch.empty(x.shape[:-1], dtype=x.dtype, device=x.device) if row_norms else None
    meta = _launch_meta(cols, y is not None, weight is not None, bias is not None, row_norms, shape)
    rows = x.numel() // cols if cols else 0
    args: tuple[Any, ...] = (
        x_rows,
        y_rows,
        x_rows if weight is None else weight,
        x_rows if bias is None else bias,
    )
    args += (total, out, out if norms is None else norms)  # the sum: written if y; norms if asked
    args += (rows, float(eps), x_stride, y_stride, cols, cols)
    launch = Launch(_add_layer_norm, (max(1, cdiv(rows, meta["ROWS"])),), args, meta)  # no rows: all masked
    return total, out, norms, launch


def _as_rows(t: Tensor) -> tuple[Tensor, int]:
    """``t`` as rows of its last dimension for the kernel: the tensor to read (``t`` itself when
    contiguous) and the distance between its rows."""
    if t.is_contiguous():
        return t, t.shape[-1]
    flat = t.reshape(-1, t.shape[-1])
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    return flat, flat.stride(0)


@functools.lru_cache(maxsize=64)
def _launch_meta(
    cols: int, has_y: bool, has_weight: bool, has_bias: bool, row_norms: bool, shape: tuple[int, int] | None
) -> dict:
    """Compile-time values and launch options, cached: a call on a small batch is bound by the
    host's time."""
    block_c = max(16, next_power_of_2(cols))
    # ~4,096 elements a program: 4 rows of a ViT-B's 768 (padded to 1,024), 2 of a ViT-g's 1,408
    rows, warps = shape or (max(1, min(16, 4096 // block_c)), 4 if block_c <= 2048 else 8)
    return dict(
        HAS_Y=has_y, HAS_WEIGHT=has_weight, HAS_BIAS=has_bias, ROW_NORMS=row_norms,
        COLS=cols, BLOCK_C=block_c, ROWS=rows, num_warps=warps,
    )  # fmt: skip


if triton is not None:

    @triton.jit
    def _add_layer_norm(
        x_ptr, y_ptr, w_ptr, b_ptr, sum_ptr, out_ptr, norms_ptr, n_rows, eps,
        sx, sy, ss, so,
        HAS_Y: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, ROW_NORMS: tl.constexpr,
        COLS: tl.constexpr, BLOCK_C: tl.constexpr, ROWS: tl.constexpr,
    ):  # fmt: skip
        """``ROWS`` rows: their sum ``x + y`` (rounded as stored), its LayerNorm and, with
        ``ROW_NORMS``, the L2 norm of each LayerNorm row as stored. The width is a compile-time
        value, so a mask such as ``cols < 768`` comes in whole vectors."""
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK_C)
        mask = (rows[:, None] < n_rows) & (cols[None, :] < COLS)
        rows = rows.to(tl.int64)
        x = tl.load(x_ptr + rows[:, None] * sx + cols[None, :], mask=mask, other=0.0)
        if HAS_Y:
            y = tl.load(y_ptr + rows[:, None] * sy + cols[None, :], mask=mask, other=0.0)
            x = (x.to(tl.float32) + y.to(tl.float32)).to(x.dtype)  # rounded as PyTorch's add
            tl.store(sum_ptr + rows[:, None] * ss + cols[None, :], x, mask=mask)
        u = x.to(tl.float32)
        mean = tl.sum(u, 1) / COLS
        centered = tl.where(mask, u - mean[:, None], 0.0)
        rstd = tl.math.rsqrt(tl.sum(centered * centered, 1) / COLS + eps)  # as PyTorch's kernel: rsqrtf
        u = centered * rstd[:, None]
        if HAS_WEIGHT:
            u = u * tl.load(w_ptr + cols, mask=cols < COLS, other=0.0).to(tl.float32)[None, :]
        if HAS_BIAS:
            u = u + tl.load(b_ptr + cols, mask=cols < COLS, other=0.0).to(tl.float32)[None, :]
        out = u.to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + rows[:, None] * so + cols[None, :], out, mask=mask)
        if ROW_NORMS:  # of the rounded values, summed in fp32, as ``Tensor.norm`` reads them
            stored = tl.where(mask, out.to(tl.float32), 0.0)
            norms = tl.sqrt_rn(tl.sum(stored * stored, 1))
            tl.store(norms_ptr + rows, norms.to(norms_ptr.dtype.element_ty), mask=rows < n_rows)
