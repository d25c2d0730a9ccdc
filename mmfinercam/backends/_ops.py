"""Tensor operations every ViT view shares: patchify, position resampling, heads, layer scale."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: how a view applies a norm or an activation module to tokens: ``apply(x, module)``. The tower
#: runner passes the fused kernels' helpers here; by default the module is simply called
ModuleFn = Callable[[Tensor, nn.Module], Tensor]


def call_module(x: Tensor, module: nn.Module) -> Tensor:
    """``module(x)``: the plain way to apply a norm or an activation.

    Args:
        x: the input tokens.
        module: the module.

    Returns:
        The module's output.
    """
    return module(x)


def patch_embed(pixels: Tensor, conv: nn.Conv2d) -> tuple[Tensor, tuple[int, int]]:
    """A ViT's patchifying convolution as one matrix product.

    The same numbers as ``conv(pixels).flatten(2).transpose(1, 2)``, in a row-major grid. Why:
    cuDNN runs this convolution (kernel = stride) as a generic kernel plus layout conversions,
    several times slower than the matrix product. Other convolutions are run as they are.

    Args:
        pixels: B×C×H×W images.
        conv: the patch embedding's convolution.

    Returns:
        B×N×C' tokens and the patch grid (rows, columns).
    """
    kh, kw = conv.kernel_size
    pixels = pixels.to(conv.weight.dtype)
    patchify = tuple(conv.stride) == (kh, kw) and conv.padding in ((0, 0), "valid")
    if not (patchify and tuple(conv.dilation) == (1, 1) and conv.groups == 1):
        x = conv(pixels)
        return x.flatten(2).transpose(1, 2), (int(x.shape[-2]), int(x.shape[-1]))
    b, c, h, w = pixels.shape
    gh, gw = h // kh, w // kw
    patches = pixels[:, :, : gh * kh, : gw * kw].reshape(b, c, gh, kh, gw, kw)
    patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * kh * kw)
    return F.linear(patches, conv.weight.reshape(conv.out_channels, -1), conv.bias), (gh, gw)


def resample_pos_embed(
    pos_embed: Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
) -> Tensor:
    """An absolute position table resampled to another patch grid.

    Bicubic with antialiasing; the prefix (CLS) entries are kept apart. Rows stay rows and
    columns stay columns, so non-square inputs are placed correctly.

    Args:
        pos_embed: N×C table, prefix entries first.
        new_grid: the input's grid (rows, columns).
        old_grid: the table's grid; None for a square one.
        num_prefix_tokens: how many entries precede the grid's.

    Returns:
        The table for ``new_grid`` (``pos_embed`` itself where the grids agree).
    """
    prefix, grid = pos_embed[:num_prefix_tokens], pos_embed[num_prefix_tokens:]
    if old_grid is None:
        side = int(math.isqrt(grid.shape[0]))
        old_grid = (side, side)
    old_grid = (int(old_grid[0]), int(old_grid[1]))
    new_grid = (int(new_grid[0]), int(new_grid[1]))
    if old_grid == new_grid:
        return pos_embed
    c = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], c).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=new_grid, mode="bicubic", antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], c).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=0)


def merge_heads(o: Tensor) -> Tensor:
    """Attention outputs with their heads merged, as an output projection reads them.

    A view where the heads already lie merged in memory (the fused kernel's output), else a
    copy.

    Args:
        o: B×heads×N×head_dim.

    Returns:
        B×N×(heads·head_dim).
    """
    b, h, n, d = o.shape
    return o.transpose(1, 2).reshape(b, n, h * d)


def fold_layer_scale(
    linear: nn.Linear, layer_scale: nn.Module | None = None
) -> tuple[Tensor, Tensor | None] | None:
    """``layer_scale(linear(x))`` as one affine map.

    Args:
        linear: the projection.
        layer_scale: the identity, a per-channel ``gamma`` (open_clip's and timm's
            ``LayerScale``), or None.

    Returns:
        (weight, bias) with the scale folded into the rows; None for any other scale module.
    """
    weight, bias = linear.weight, linear.bias
    if layer_scale is None or isinstance(layer_scale, nn.Identity):
        return weight, bias
    gamma = getattr(layer_scale, "gamma", None)
    if not isinstance(gamma, Tensor) or gamma.shape != weight.shape[:1]:
        return None
    return weight * gamma[:, None], None if bias is None else bias * gamma
