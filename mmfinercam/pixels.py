"""Preparing images for a ViT: resized to whole patches, normalized, checked, batched by size.

Images are resized keeping their aspect ratio so that the shorter side is the model's input
size, each side rounded to a whole number of patches; nothing is cropped, so a map covers the
whole image and is resized back to the image's own size. A preprocessed tensor is only cropped
to whole patches. Files are read (:mod:`.images`) as they are prepared, a chunk at a time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ._checks import is_whole_number
from .errors import ConfigError, ImageLoadError
from .images import NON_FINITE, ImageInput, describe, read_for_model
from .tiles import TiledImage, TileLayout

#: the most patches an image read from a file or array is resized to (2,048 × 2,048 px at patch
#: 16). GEM's self-self attention grows with their square: a long thin strip resized to the
#: model's shorter side could otherwise ask for hours and tens of GB
MAX_PATCHES = 16_384
#: a tiled image's whole-image pass (which chooses its contrasts) is at the model's input size,
#: but at most this many windows' patches: a long strip's is made smaller
WHOLE_WINDOWS = 4
#: the most pixels a tiled image is held at (Pillow's own limit for opening an image): 537 MB
TILED_MAX_PIXELS = 2 * 89_478_485


def target_size(height: int, width: int, short_side: int, patch: tuple[int, int]) -> tuple[int, int]:
    """The aspect-preserving size with the shorter side ``short_side``, sides whole patches.

    Args:
        height: the image's height.
        width: its width.
        short_side: the shorter side wanted.
        patch: the model's patch (height, width).

    Returns:
        (height, width), each a multiple of the patch and at least one patch.
    """
    scale = short_side / min(height, width)
    h = max(patch[0], round(height * scale / patch[0]) * patch[0])
    w = max(patch[1], round(width * scale / patch[1]) * patch[1])
    return h, w


def to_pixels(
    image: Image.Image,
    size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
) -> Tensor:
    """An image resized (bicubic, antialiased) and normalized for the model.

    Args:
        image: an RGB PIL image.
        size: the (height, width) to resize to.
        mean: per-channel mean.
        std: per-channel standard deviation.

    Returns:
        3×H×W float pixels.
    """
    arr = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    x = arr.unsqueeze(0).float().div_(255.0)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp_(0.0, 1.0)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return ((x - m) / s)[0]


def _preprocessed_image(pixels: Tensor, patch: tuple[int, int]) -> Tensor:
    """One preprocessed image given as a tensor (3×H×W or 1×3×H×W), checked and cropped to
    whole patches: 3×h×w."""
    if pixels.dim() == 4 and pixels.shape[0] != 1:
        raise ImageLoadError(
            f"a tensor in a list of images must be one image, 3×H×W; got shape {tuple(pixels.shape)}"
        )
    image = _whole_patches(check_pixel_batch(pixels, patch)[0], patch)
    if not finite_images(image[None])[0]:
        raise ImageLoadError(NON_FINITE)
    return image


def finite_images(batch: Tensor) -> list[bool]:
    """Whether each image of a batch is free of NaN and infinity, read back once.

    A GPU batch is waited for here, not per image: an image's float32 sum is NaN or infinite
    exactly when one of its pixels is (normalized pixels cannot overflow it), so one read of the
    batch and no B×3×H×W mask.

    Args:
        batch: B×3×H×W pixels.

    Returns:
        One bool an image.
    """
    return torch.isfinite(batch.flatten(1).sum(1, dtype=torch.float32)).tolist()


def check_short_side(short_side: object, patch: tuple[int, int]) -> int:
    """The shorter side images are resized to, which must hold one patch.

    Args:
        short_side: the value given.
        patch: the model's patch size.

    Returns:
        The side.

    Raises:
        ConfigError: when it is not whole pixels holding a patch (every image would be unusable).
    """
    if not is_whole_number(short_side) or short_side < max(patch):  # type: ignore[operator]
        raise ConfigError(
            f"short_side must be whole pixels, at least one {patch[0]}×{patch[1]} patch; got {short_side!r}"
        )
    return int(short_side)  # type: ignore[call-overload]


def _whole_patches(pixels: Tensor, patch: tuple[int, int]) -> Tensor:
    """``pixels`` (...×H×W) cropped at the bottom and right to whole patches."""
    h, w = pixels.shape[-2] // patch[0] * patch[0], pixels.shape[-1] // patch[1] * patch[1]
    return pixels[..., :h, :w]


def check_pixel_batch(images: Tensor, patch: tuple[int, int]) -> Tensor:
    """A preprocessed tensor of images, checked.

    Args:
        images: B×3×H×W or 3×H×W normalized float pixels.
        patch: the model's patch size.

    Returns:
        B×3×H×W.

    Raises:
        ImageLoadError: for another shape, integer pixels, or an image smaller than one patch.
    """
    batch = images.unsqueeze(0) if images.dim() == 3 else images
    if batch.dim() != 4 or batch.shape[1] != 3:
        raise ImageLoadError(
            f"a tensor of images must be B×3×H×W (preprocessed); got shape {tuple(images.shape)}"
        )
    if not batch.is_floating_point():  # raw 0-255 pixels would run as they are, unnormalized
        raise ImageLoadError(
            f"a tensor of images must be preprocessed (floating point, normalized); got {batch.dtype}: "
            "pass raw pixels as an H×W×3 array or PIL image, or run them through Localizer.prepare"
        )
    if batch.shape[-2] < patch[0] or batch.shape[-1] < patch[1]:
        raise ImageLoadError(
            f"image of {batch.shape[-2]}×{batch.shape[-1]} px is smaller than one {patch[0]}×{patch[1]} patch"
        )
    return batch


@dataclass
class PreparedImage:
    """One image ready for the model, with where it came from and its own size.

    Args:
        index: its position in the input.
        source: its name (a path, or ``<ndarray #i>``).
        pixels: 3×h×w normalized pixels (a tiled image: the whole at the model's input size).
        original_size: (height, width) of the image as given.
        tiled: the working image and its windows, for an image explained window by window.
    """

    index: int
    source: str
    pixels: Tensor  #: 3×h×w, normalized
    original_size: tuple[int, int]  #: (height, width) of the image as given
    tiled: TiledImage | None = None


class _BatchRow(PreparedImage):
    """One image of a preprocessed tensor batch, sliced from it only when its pixels are read:
    a batch of 256 runs as the one tensor it is, without 256 views made and dropped."""

    def __init__(self, index: int, batch: Tensor, original_size: tuple[int, int]) -> None:
        self.index, self.original_size, self._batch = index, original_size, batch

    @property
    def source(self) -> str:  # type: ignore[override]
        return f"<tensor #{self.index}>"

    @property
    def pixels(self) -> Tensor:  # type: ignore[override]
        return self._batch[self.index]


@dataclass
class FailedImage:
    """An image of a batch that could not be used, and why.

    Args:
        index: its position in the input.
        source: its name.
        message: the one-line reason.
    """

    index: int
    source: str
    message: str


def prepare_images(
    images: ImageInput | Sequence[ImageInput],
    *,
    short_side: int | None,
    patch: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    window: tuple[int, int] | None = None,
    tiles: bool | None = False,
) -> tuple[list[PreparedImage], list[FailedImage]]:
    """Read and preprocess every image; a broken one is reported and the rest go on.

    A 4-D tensor (B×3×H×W) or a 3-D tensor (3×H×W), also as an item of a list, is taken as
    already preprocessed; it is cropped to whole patches, not resized. An image whose pixels hold
    NaN or infinity is reported, as an unreadable file is: its map would be NaN.

    A file or array larger than one ``window`` at its working size (``short_side``, or its own
    size where that is None) is tiled (:mod:`mmfinercam.tiles`) when ``tiles`` is True; with
    ``tiles`` None only when it would be more than :data:`MAX_PATCHES` patches, which with
    ``tiles`` False is reported with what to do.

    Args:
        images: paths, PIL images, arrays or tensors (or one of them).
        short_side: the shorter side to resize to; None (with ``tiles``) keeps each image's own.
        patch: the model's patch size.
        mean: per-channel mean.
        std: per-channel standard deviation.
        window: the model's input (height, width): the windows' size and the whole-image pass's.
        tiles: True, None (only past the patch limit) or False: when images are tiled.

    Returns:
        The prepared images and those that could not be used.

    Raises:
        ConfigError: when ``short_side`` holds no patch (every image would fail), or neither it
            nor a window is given.
    """
    if short_side is None and (window is None or tiles is not True):
        raise ConfigError("short_side may be left out only for tiled images (tiles=True)")
    if short_side is not None:
        check_short_side(short_side, patch)
    if isinstance(images, Tensor):
        batch = check_pixel_batch(images, patch)
        size = (int(batch.shape[-2]), int(batch.shape[-1]))
        batch = _whole_patches(batch, patch)
        finite = finite_images(batch)
        rows: list[PreparedImage] = [_BatchRow(i, batch, size) for i, ok in enumerate(finite) if ok]
        bad = [FailedImage(i, f"<tensor #{i}>", NON_FINITE) for i, ok in enumerate(finite) if not ok]
        return rows, bad
    if isinstance(images, (str, Path, Image.Image, np.ndarray)):
        images = [images]
    prepared: list[PreparedImage] = []
    failed: list[FailedImage] = []
    for i, source in enumerate(images):
        name = describe(source, i)
        try:
            if isinstance(source, Tensor):  # one preprocessed image
                size = (int(source.shape[-2]), int(source.shape[-1]))
                prepared.append(PreparedImage(i, name, _preprocessed_image(source, patch), size))
                continue
            image, (height, width) = read_for_model(source, short_side)
            if height < patch[0] or width < patch[1]:
                raise ImageLoadError(
                    f"image of {height}×{width} px is smaller than one {patch[0]}×{patch[1]} patch"
                )
            side = min(height, width) if short_side is None else short_side
            size = target_size(height, width, side, patch)
            patches = (size[0] // patch[0]) * (size[1] // patch[1])
            larger = window is not None and (size[0] > window[0] or size[1] > window[1])
            if window is not None and (
                (tiles is True and larger) or (tiles is None and patches > MAX_PATCHES)
            ):
                if size[0] * size[1] > TILED_MAX_PIXELS:
                    raise ImageLoadError(
                        f"image of {height}×{width} px would be {size[0]}×{size[1]} px at a shorter side "
                        f"of {side}, more than the {TILED_MAX_PIXELS:,} pixels a tiled image is held at; "
                        "pass a smaller short_side"
                    )
                prepared.append(_tiled(i, name, image, (height, width), size, window, patch, mean, std))
                continue
            if patches > MAX_PATCHES:
                raise ImageLoadError(
                    f"image of {height}×{width} px would be {size[0]}×{size[1]} px at a shorter "
                    f"side of {side}: {patches:,} patches, more than the {MAX_PATCHES:,} a map is made "
                    "of at most; crop it, pass a smaller short_side, or tile it (tiles=True)"
                )
            pixels = to_pixels(image, size, mean, std)
        except ImageLoadError as err:
            failed.append(FailedImage(i, name, str(err)))
            continue
        prepared.append(PreparedImage(i, name, pixels, (height, width)))
    return prepared, failed


def _tiled(
    index: int,
    name: str,
    image: Image.Image,
    original: tuple[int, int],
    size: tuple[int, int],
    window: tuple[int, int],
    patch: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
) -> PreparedImage:
    """An image to explain window by window: kept at ``size`` as 8-bit pixels, and the whole at
    the model's input size (at most :data:`WHOLE_WINDOWS` windows' patches: a long strip is made
    smaller) for the pass that chooses its contrasts."""
    small, _ = read_for_model(image, min(window))  # a box-reduced copy: no float copy of the whole
    whole_size = target_size(original[0], original[1], min(window), patch)
    most = WHOLE_WINDOWS * (window[0] // patch[0]) * (window[1] // patch[1])
    if (whole_size[0] // patch[0]) * (whole_size[1] // patch[1]) > most:
        side = min(window) * (most / ((whole_size[0] // patch[0]) * (whole_size[1] // patch[1]))) ** 0.5
        whole_size = target_size(original[0], original[1], max(int(side), min(patch)), patch)
    whole = to_pixels(small, whole_size, mean, std)
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return PreparedImage(
        index, name, whole, original, TiledImage(image, TileLayout.over(size, window, patch))
    )


def pixel_batches(
    prepared: list[PreparedImage], step: int, tensor: Tensor | None = None
) -> Iterator[tuple[list[int], Tensor]]:
    """Batches of at most ``step`` same-sized images.

    Images given as one tensor are sliced from it; files and arrays are grouped by size. No
    images, no batches.

    Args:
        prepared: the prepared images.
        step: the most images a batch.
        tensor: the tensor they were given as, if they were.

    Yields:
        (their positions in ``prepared``, B×3×H×W pixels).
    """
    if tensor is not None and prepared:  # one size already, cropped as ``prepared`` is; no per-image copy
        h, w = prepared[0].pixels.shape[-2:]
        batch = check_pixel_batch(tensor, (h, w))[..., :h, :w]
        for start in range(0, len(prepared), step):
            yield list(range(start, min(start + step, len(prepared)))), batch[start : start + step]
        return
    for start in range(0, len(prepared), step):
        stop = min(start + step, len(prepared))
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i in range(start, stop):
            groups[tuple(prepared[i].pixels.shape)].append(i)
        for members in groups.values():
            yield members, torch.stack([prepared[i].pixels for i in members])


def prepare_in_chunks(
    images: ImageInput | Sequence[ImageInput], chunk: int, **prep: Any
) -> Iterator[tuple[list[PreparedImage], list[FailedImage]]]:
    """:func:`prepare_images` over ``chunk`` files or arrays at a time.

    A tensor, or one image, is prepared at once. Each image keeps its index and name in the whole
    input, so a list of thousands of files is read as it is used, never held in memory prepared.

    Args:
        images: the inputs.
        chunk: inputs prepared at a time.
        **prep: as for :func:`prepare_images`.

    Yields:
        (prepared, failed) of each chunk.
    """
    if isinstance(images, (Tensor, str, Path, Image.Image, np.ndarray)):
        yield prepare_images(images, **prep)
        return
    sources = list(images)
    for start in range(0, len(sources), chunk):
        prepared, failed = prepare_images(sources[start : start + chunk], **prep)
        if start:  # indices and "<ndarray #i>" names count from the whole input
            prepared = [
                replace(p, index=p.index + start, source=_name(sources, p.index + start)) for p in prepared
            ]
            failed = [
                FailedImage(f.index + start, _name(sources, f.index + start), f.message) for f in failed
            ]
        yield prepared, failed


def _name(sources: Sequence[object], index: int) -> str:
    return describe(sources[index], index)
