"""Reading part masks, and keeping them at the size a measurement needs.

A part mask marks where a trait is (for ``mmfinercam batch``'s mask energy and for
``mmfinercam eval --folder``). Annotation tools write masks in many forms; :func:`read_mask`
reads each as drawn: grey, 16-bit, float and label maps by their non-zero pixels, strokes on a
transparent layer by what is painted, JPEGs by what is brighter than mid-grey.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .errors import ImageLoadError
from .images import opened, upright


def mask_size_error(mask: str, mask_size: tuple[int, int], image_size: tuple[int, int]) -> ImageLoadError:
    """The error for a mask of another size than its image, with the likely cause.

    When the sides are swapped, the mask was made on the photo as stored, before its EXIF turn.

    Args:
        mask: the mask's name.
        mask_size: its (height, width).
        image_size: its image's (height, width).

    Returns:
        The error to raise.
    """
    hint = (
        "; the image is turned upright by its EXIF orientation, the mask is not: save the mask "
        "upright (as a viewer shows the photo)"
        if tuple(mask_size) == tuple(image_size)[::-1]
        else ""
    )
    return ImageLoadError(
        f"mask {mask} is {mask_size[1]}×{mask_size[0]} px, its image {image_size[1]}×{image_size[0]}{hint}"
    )


def read_mask(
    source: str | Path | Image.Image | np.ndarray,
    *,
    size: tuple[int, int] | None = None,
    name: str | None = None,
) -> np.ndarray:
    """A part mask as an H×W bool array, upright as its EXIF says.

    Masks are turned as images are read, so a mask stays aligned with its photo. What counts as
    marked, so that the masks annotation tools write all read as drawn:

    * a grey, 16-bit, float or label mask: every non-zero pixel (a label map marks its part
      with 1; a palette image by its indices, index 0 the background);
    * a mask with transparency in use: every pixel not fully transparent (strokes painted on a
      transparent layer, whatever their colour);
    * a JPEG: pixels brighter than mid-grey, as its compression leaves faint non-zero noise
      around every edge;
    * an array: non-zero (bool, or any number type).

    Args:
        source: a path, PIL image or array.
        size: its image's (height, width), which the mask must have.
        name: how to name the mask in the message (default: the source).

    Returns:
        H×W bool.

    Raises:
        ImageLoadError: for an unreadable mask, or one of another size than ``size``.
    """
    mask = _read_mask(source)
    if size is not None and mask.shape != tuple(size):
        raise mask_size_error(str(source) if name is None else name, (mask.shape[0], mask.shape[1]), size)
    return mask


def _read_mask(source: str | Path | Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(source, np.ndarray):
        if source.ndim == 3 and source.shape[-1] == 1:
            source = source[..., 0]
        if source.ndim != 2:
            raise ImageLoadError(f"a mask array must be H×W; got shape {source.shape}")
        return np.asarray(source) != 0
    if isinstance(source, Image.Image):
        return _marked(upright(source), lossy=source.format == "JPEG")
    if not isinstance(source, (str, Path)):
        kind = type(source).__name__
        raise ImageLoadError(f"unsupported mask type {kind}; pass a path, PIL image or array")
    with opened(Path(source).expanduser(), "mask") as m:
        m.load()
        return _marked(upright(m), lossy=m.format == "JPEG")


#: PIL modes whose pixels are a mask's values as they are (grey, 16/32-bit, float, bilevel,
#: palette indices)
_VALUE_MODES = frozenset({"1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "P"})


def _marked(mask: Image.Image, *, lossy: bool) -> np.ndarray:
    """The marked pixels of a mask image (:func:`read_mask`'s rules)."""
    if mask.width == 0 or mask.height == 0:
        raise ImageLoadError("the mask is empty (0 pixels)")
    if "A" in mask.getbands() or "a" in mask.getbands() or "transparency" in mask.info:
        alpha = np.asarray(mask.convert("RGBA").getchannel("A"))
        if alpha.min() < 255:  # transparency in use: what is painted is the mask
            return alpha > 0
    if mask.mode in _VALUE_MODES:
        values = np.asarray(mask)
    else:  # colour: a pixel is as bright as its brightest channel (pure red marks as white does)
        values = np.asarray(mask.convert("RGB")).max(axis=-1)
    return values > 127 if lossy and values.dtype == np.uint8 else values != 0


#: the longest side a mask is kept at for its energy (:func:`mask_for_energy`)
MASK_SIDE = 1024


def mask_for_energy(mask: np.ndarray) -> Tensor:
    """A mask as kept for a map's energy inside it: as it is, or reduced past :data:`MASK_SIDE`.

    Past :data:`MASK_SIDE` pixels a side each pixel becomes its covered fraction at that size
    (box filter): a batch of 48-megapixel masks would hold gigabytes, and each map would be
    upsampled to full size for it. The map being a smooth upsample of a patch grid, its mass
    on the mask moves by well under a hundredth.

    Args:
        mask: H×W bool.

    Returns:
        H×W bool, or h×w float32 covered fractions.
    """
    h, w = mask.shape
    scale = MASK_SIDE / max(h, w)
    if scale >= 1:
        return torch.from_numpy(mask)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    covered = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BOX)
    return torch.from_numpy(np.asarray(covered, dtype=np.float32) / 255.0)


def resize_mask(mask: np.ndarray | Path, size: tuple[int, int]) -> Tensor:
    """A mask (or a mask file) at another (height, width), nearest neighbour.

    Args:
        mask: H×W bool, or a mask file.
        size: the (height, width) wanted.

    Returns:
        A bool tensor of ``size``.
    """
    mask = read_mask(mask) if isinstance(mask, Path) else mask
    t = torch.from_numpy(np.asarray(mask, dtype=bool))
    if tuple(t.shape) == tuple(size):
        return t
    img = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).resize(
        (size[1], size[0]), Image.Resampling.NEAREST
    )
    return torch.from_numpy(np.asarray(img) > 0)
