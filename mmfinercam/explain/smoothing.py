"""Test-time smoothing of maps: sub-patch shifts and mirroring, averaged on a finer grid.

A ViT scores an image patch by patch, so where a small part straddles a patch border, which patch
lights up depends on where the grid happens to fall. Scoring the image shifted by fractions of a
patch (and mirrored), moving each map back into place and averaging gives a map on a grid
``shifts`` times finer per axis. This is pytorch-grad-cam's ``aug_smooth`` idea with the
translations of the patch grid in place of rescaling (rescaling did not help on the testbed;
``benchmarks/RESULTS.md`` §2). It costs one pass per view: ``shifts² × (2 if flip else 1)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError


@dataclass(frozen=True)
class View:
    """The image moved by (dy, dx) pixels (content from ``(i + dy, j + dx)``), then mirrored.

    Args:
        dy: the shift down, in pixels.
        dx: the shift right, in pixels.
        flip: whether the view is mirrored left to right.
    """

    dy: int
    dx: int
    flip: bool = False


def views(patch: tuple[int, int], shifts: int = 2, flip: bool = True) -> list[View]:
    """The views that :func:`smoothed_maps` averages: offsets ``patch / shifts`` apart, centred.

    Args:
        patch: the model's patch (height, width).
        shifts: shifts per axis.
        flip: also each view mirrored.

    Returns:
        ``shifts² × (2 if flip else 1)`` views.

    Raises:
        ConfigError: for fewer than 1 shift, or shifts that do not divide the patch.
    """
    if shifts < 1:
        raise ConfigError(f"shifts must be a whole number >= 1, got {shifts!r}")
    if patch[0] % shifts or patch[1] % shifts:
        raise ConfigError(f"shifts ({shifts}) must divide the patch size {patch}")

    def offsets(p: int) -> list[int]:
        cell = p // shifts
        return [k * cell - (shifts - 1) * cell // 2 for k in range(shifts)]

    mirrors = (False, True) if flip else (False,)
    return [View(dy, dx, f) for dy in offsets(patch[0]) for dx in offsets(patch[1]) for f in mirrors]


def _translate(x: Tensor, dy: int, dx: int) -> Tensor:
    """``out[..., i, j] = x[..., i + dy, j + dx]``, the border repeated where that falls outside."""
    if dy == dx == 0:
        return x
    pad = max(abs(dy), abs(dx))
    h, w = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    return padded[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w]


def apply_view(pixels: Tensor, view: View) -> Tensor:
    """A batch as a view sees it.

    Args:
        pixels: B×C×H×W.
        view: the view.

    Returns:
        B×C×H×W, shifted (the border repeated) and mirrored.
    """
    out = _translate(pixels, view.dy, view.dx)
    return out.flip(-1) if view.flip else out


def restore_view(maps: Tensor, view: View) -> Tensor:
    """Maps of a viewed batch, put back in the original image's coordinates.

    Args:
        maps: B×H×W maps of the viewed images.
        view: the view.

    Returns:
        B×H×W.
    """
    maps = maps.flip(-1) if view.flip else maps
    return _translate(maps[:, None], -view.dy, -view.dx)[:, 0]


def smoothed_maps(
    run: Callable[[Tensor], dict[str, Tensor]],
    pixels: Tensor,
    patch: tuple[int, int],
    keys: Sequence[str],
    *,
    shifts: int = 2,
    flip: bool = True,
) -> dict[str, Tensor]:
    """Average the patch-grid maps ``run(view)[key]`` over every view, on the finer grid.

    Each view's patch scores are spread over the pixels their patches covered, moved back,
    averaged, then pooled to cells of ``patch / shifts`` pixels. So a fine cell holds the mean
    score of the patches that covered it across views, and one plain view is the map.

    Args:
        run: a B×3×H×W batch -> its B×h×w maps by key (H, W multiples of the patch).
        pixels: the batch as given.
        patch: the model's patch size.
        keys: which maps to average.
        shifts: shifts per axis.
        flip: also the mirrored views.

    Returns:
        Key -> B×(h·shifts)×(w·shifts) maps.
    """
    size = pixels.shape[-2:]
    cell = (patch[0] // shifts, patch[1] // shifts)
    chosen = views(patch, shifts, flip)
    sums: dict[str, Tensor] = {}
    for view in chosen:
        parts = run(apply_view(pixels, view))
        for key in keys:
            up = F.interpolate(parts[key][:, None].float(), size=size, mode="nearest")
            up = restore_view(up[:, 0], view)
            sums[key] = sums[key] + up if key in sums else up
    return {key: F.avg_pool2d(s[:, None] / len(chosen), cell)[:, 0] for key, s in sums.items()}
