"""Refining maps at pixel resolution with the image's own edges: PAMR.

Araslanov and Roth, "Single-Stage Semantic Segmentation from Image Labels", CVPR 2020
(https://arxiv.org/abs/2005.08104), reference code ``visinf/1-stage-wseg`` (``PAMR``), which
the segmentation methods run after their maps (``sinahmr/NACLIP``: 10 iterations, dilations 8
and 16). Each pixel's value becomes a weighted mean of its 8 neighbours at each dilation, the
weights a softmax over how alike the pixels' colours are relative to the local spread; repeated,
a map's values flow along regions of similar colour and stop at edges:

    w_p(n) = softmax_n( -mean_c |x_c(p) - x_c(n)| / (0.1 sigma_c(p)) )
    m(p)  <- sum_n w_p(n) m(n)

A refiner is registered by name (:data:`REFINERS`); ``finer_cam(..., refine="pamr")`` applies it
to the Finer and plain maps of any method, at the size the image was prepared at.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import registered

#: ``refine(pixels B×3×H×W, maps B×C×H×W) -> B×C×H×W``: a map refiner by name
REFINERS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {}

#: PAMR's iterations and neighbour distances (NACLIP's settings)
PAMR_ITERATIONS = 10
PAMR_DILATIONS = (8, 16)


def _neighbours(x: Tensor, dilations: Sequence[int], centre: bool) -> Tensor:
    """B×C×P×H×W: each pixel's neighbours at ``{-d, 0, d}^2`` for each dilation (the border
    repeated), the pixel itself among them only with ``centre``."""
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if centre or (dy, dx) != (0, 0)]
    h, w = x.shape[-2:]
    out = []
    for d in dilations:
        padded = F.pad(x, [d] * 4, mode="replicate")
        out += [padded[..., d + dy * d : d + dy * d + h, d + dx * d : d + dx * d + w] for dy, dx in offsets]
    return torch.stack(out, dim=2)


def pamr(
    pixels: Tensor,
    maps: Tensor,
    iterations: int = PAMR_ITERATIONS,
    dilations: Sequence[int] = PAMR_DILATIONS,
) -> Tensor:
    """Pixel-adaptive mask refinement of maps by the image they were made of.

    Args:
        pixels: B×3×H×W the images (normalized, as the model saw them).
        maps: B×C×h×w maps, resized to H×W (bilinear, corners aligned) as the reference does.
        iterations: refinement steps.
        dilations: neighbour distances in pixels.

    Returns:
        B×C×H×W refined maps.
    """
    x = pixels.float()
    maps = F.interpolate(maps.float(), size=x.shape[-2:], mode="bilinear", align_corners=True)
    spread = _neighbours(x, dilations, centre=True).std(dim=2, keepdim=True)  # B×3×1×H×W
    diff = (_neighbours(x, dilations, centre=False) - x[:, :, None]).abs()  # B×3×P×H×W
    weights = torch.softmax((-diff / (1e-8 + 0.1 * spread)).mean(dim=1, keepdim=True), dim=2)
    for _ in range(iterations):
        maps = (_neighbours(maps, dilations, centre=False) * weights).sum(dim=2)
    return maps


def refiner(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """A registered map refiner.

    Args:
        name: its name.

    Returns:
        ``refine(pixels, maps) -> maps``.

    Raises:
        ConfigError: for an unknown name, listing the known ones.
    """
    return registered(REFINERS, name, "refiner")


REFINERS["pamr"] = pamr
