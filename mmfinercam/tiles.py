"""Tiles: an image larger than the model's input, explained window by window and stitched.

Herbarium sheets and specimen drawers are thousands of pixels a side, their traits a few hundred:
resized to the model's input, a trait shrinks to a patch or less. Instead the image is kept at
its working size (its own, or ``short_side``) and windows of the model's input size slide over
it with half a window's overlap, as the dense segmentation methods do (SCLIP's
``forward_slide``); each window's patch scores land on the whole image's patch grid and are
averaged where windows overlap. Windows start at whole patches, so their grids line up.

The working image is held as 8-bit pixels and windows are normalized a batch at a time, so a
48-megapixel photograph costs its decoded bytes and a batch of windows, not a float copy of the
whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Where windows start along one side: every ``stride``, the last flush with the end.

    Args:
        length: the side's length.
        window: the window's length (at most ``length``).
        stride: the step between windows.

    Returns:
        The starts, increasing, the first 0 and the last ``length - window``.
    """
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return [*starts, length - window]


@dataclass(frozen=True)
class TileLayout:
    """The windows over an image.

    Args:
        size: the working image's (height, width), whole patches.
        window: a window's (height, width), whole patches.
        patch: the model's patch (height, width).
        starts: each window's top-left (y, x) in pixels.
    """

    size: tuple[int, int]
    window: tuple[int, int]
    patch: tuple[int, int]
    starts: tuple[tuple[int, int], ...]

    @classmethod
    def over(cls, size: tuple[int, int], window: tuple[int, int], patch: tuple[int, int]) -> TileLayout:
        """Windows over ``size`` with half a window's overlap (rounded to whole patches).

        Args:
            size: the working image's (height, width), whole patches.
            window: the model's input (height, width), whole patches.
            patch: the model's patch.

        Returns:
            The layout.
        """
        window = (min(window[0], size[0]), min(window[1], size[1]))
        stride = [max(p, window[i] // 2 // p * p) for i, p in enumerate(patch)]
        ys = window_starts(size[0], window[0], stride[0])
        xs = window_starts(size[1], window[1], stride[1])
        return cls(size, window, patch, tuple((y, x) for y in ys for x in xs))

    @property
    def grid(self) -> tuple[int, int]:
        """The working image's patch grid (rows, columns)."""
        return self.size[0] // self.patch[0], self.size[1] // self.patch[1]


@dataclass
class TiledImage:
    """A working image kept as 8-bit pixels, and its windows.

    Args:
        image: the RGB image at its working size.
        layout: the windows over it.
    """

    image: Image.Image
    layout: TileLayout

    def batches(
        self, step: int, mean: Sequence[float], std: Sequence[float]
    ) -> Iterator[tuple[list[tuple[int, int]], Tensor]]:
        """The windows' normalized pixels, ``step`` windows at a time.

        Args:
            step: the most windows a batch.
            mean: per-channel mean.
            std: per-channel standard deviation.

        Yields:
            (the windows' starts, B×3×h×w pixels).
        """
        h, w = self.layout.window
        m = torch.tensor(mean).view(1, 3, 1, 1)
        s = torch.tensor(std).view(1, 3, 1, 1)
        starts = self.layout.starts
        for first in range(0, len(starts), step):
            chunk = starts[first : first + step]
            crops = [np.asarray(self.image.crop((x, y, x + w, y + h)), dtype=np.uint8) for y, x in chunk]
            x8 = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)
            yield list(chunk), (x8.float().div_(255.0) - m) / s


class Canvas:
    """Window maps stitched on the whole image's grid, averaged where windows overlap.

    Args:
        grid: the whole image's map grid (rows, columns).
        cell: how many pixels a grid cell covers (height, width).
        device: where the sums are kept.
    """

    def __init__(self, grid: tuple[int, int], cell: tuple[int, int], device: torch.device) -> None:
        self.cell = cell
        self.sums: dict[str, Tensor] = {}
        self.count = torch.zeros(grid, device=device)
        self._grid, self._device = grid, device

    def add(self, starts: Sequence[tuple[int, int]], maps: dict[str, Tensor]) -> None:
        """Add a batch of windows' maps.

        Args:
            starts: each window's top-left (y, x) in pixels.
            maps: name -> B×h×w maps of the windows, on the window's grid.
        """
        for i, (y, x) in enumerate(starts):
            r, c = y // self.cell[0], x // self.cell[1]
            for name, batch in maps.items():
                target = self.sums.setdefault(name, torch.zeros(self._grid, device=self._device))
                h, w = batch.shape[-2:]
                target[r : r + h, c : c + w] += batch[i].float()
            h, w = next(iter(maps.values())).shape[-2:]
            self.count[r : r + h, c : c + w] += 1

    def result(self) -> dict[str, Tensor]:
        """The stitched maps.

        Returns:
            Name -> rows×columns maps, each cell the mean over the windows that covered it.
        """
        return {name: s / self.count.clamp_min(1) for name, s in self.sums.items()}
