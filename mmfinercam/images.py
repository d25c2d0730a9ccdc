"""Reading images from anything a user has: files, PIL images, arrays.

Documented conversions (never refusals): grayscale and palette images become RGB; an alpha
channel is composited over white (specimen cut-outs on transparent backgrounds look as they do
in a viewer); a camera's EXIF orientation is applied (a phone photo is upright, as a viewer shows
it, and its map is at that size); 16-bit images are scaled to 8 bits by their full range
(65535), not clipped; float arrays are taken as values in [0, 1].

Preparing what is read for a model is :mod:`.pixels`; reading part masks, :mod:`.masks`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from .errors import ImageLoadError

ImageInput = Union[str, Path, Image.Image, np.ndarray, Tensor]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}  #: what folders yield
NON_FINITE = "the image holds NaN or infinite values"  #: why such an image is not used


def image_files(folder: Path, *, recursive: bool = False) -> list[Path]:
    """The image files in a folder, sorted.

    Hidden files and folders are left out: macOS's ``._IMG_0001.jpg`` companions on a copied
    drive, thumbnail caches and notebook checkpoints are never the photos meant.

    Args:
        folder: the folder.
        recursive: also search the folders below it.

    Returns:
        The files whose suffix is one of :data:`IMAGE_SUFFIXES`.
    """
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in found
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _from_array(arr: np.ndarray) -> Image.Image:
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ImageLoadError(f"an image array must be H×W, H×W×3 or H×W×4; got shape {arr.shape}")
    if arr.dtype == np.uint16:
        arr = (arr.astype(np.float32) / 65535.0 * 255.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageLoadError(NON_FINITE)
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        raise ImageLoadError(f"unsupported image array dtype {arr.dtype}")
    return Image.fromarray(arr)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as RGB, by the module's documented rules.

    Args:
        image: a PIL image of any mode (grey, 16-bit, float, palette, with alpha).

    Returns:
        The RGB image (alpha composited over white, 16-bit scaled by its full range).
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(image)
        top = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = (np.clip(arr.astype(np.float32), 0, top) / top * 255.0 + 0.5).astype(np.uint8)
        image = Image.fromarray(arr)
    elif image.mode == "F":
        return to_rgb(_from_array(np.asarray(image)))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def read_image(source: ImageInput, *, long_side: int | None = None) -> Image.Image:
    """Open a path, PIL image or array as an upright RGB PIL image.

    Args:
        source: a path, PIL image or array.
        long_side: for drawing: a larger image comes back halved, quartered ... (a JPEG decoded
            smaller) while its longer side stays at least this.

    Returns:
        The RGB image.
    """
    return _read(source, long_side=long_side)[0]


def checked_size(source: ImageInput) -> tuple[int, int]:
    """The (height, width) an image reads at, upright, after decoding it whole.

    A check that the file can be used, at a fraction of a full read for a large JPEG (decoded at
    1/8 scale).

    Args:
        source: a path, PIL image or array.

    Returns:
        (height, width).
    """
    return _read(source, short_side=1)[1]


def read_for_model(source: ImageInput, short_side: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """An image read for a resize to ``short_side``, and its own size.

    A large image comes back reduced (a JPEG decoded at 1/2, 1/4 or 1/8 scale) while its
    shorter side stays at least five times ``short_side``, so the resize that follows reads a
    few megapixels, not a 50-megapixel scan.

    Args:
        source: a path, PIL image or array.
        short_side: the shorter side it will be resized to; None reads it whole.

    Returns:
        The upright RGB image and its own (height, width), upright.
    """
    return _read(source, short_side)


def _read(
    source: ImageInput, short_side: int | None = None, *, long_side: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """The RGB image and its own (height, width), upright.

    With ``short_side``, an image whose shorter side is ten or more times it comes back halved,
    quartered ... while that side stays at least five times ``short_side``: a JPEG decoded at
    1/2, 1/4 or 1/8 scale (the DCT's own low-pass), then any image reduced by a power of two
    (box filter). The resize to ``short_side`` that follows reads an image five to ten times
    its size, not a 50-megapixel scan. With that margin the pixels stay within one grey level
    of the direct resize (0.15 on average on a 1/f "natural" spectrum); at two or three times,
    as Pillow's ``reducing_gap`` would allow, they differed by 3 on average and 20 at most."""
    if isinstance(source, (str, Path)):
        with opened(Path(source).expanduser(), "image") as im:
            full = (im.height, im.width)
            factor = _reduction(full, short_side, long_side)
            if factor > 1 and im.format == "JPEG":
                im.draft(None, (im.width // factor, im.height // factor))
            im.load()
            image = im.copy()
    elif isinstance(source, Image.Image):
        image, full = source, (source.height, source.width)
    elif isinstance(source, np.ndarray):
        image = _from_array(source)
        full = (image.height, image.width)
    else:
        raise ImageLoadError(
            f"unsupported image type {type(source).__name__}; pass a path, PIL image, array or tensor"
        )
    if image.width == 0 or image.height == 0:
        raise ImageLoadError("the image is empty (0 pixels)")
    turned = upright(image)
    if turned is not image and turned.size != image.size:  # a quarter turn: the sides swap
        full = full[::-1]
    image = to_rgb(turned)
    factor = _reduction((image.height, image.width), short_side, long_side)
    return (image.reduce(factor) if factor > 1 else image), full


@contextmanager
def opened(path: Path, what: str) -> Iterator[Image.Image]:
    """``Image.open(path)``, what can go wrong reading it as one :class:`ImageLoadError`.

    Args:
        path: the file.
        what: what the file is, for the messages ("image", "mask").

    Yields:
        The opened image.

    Raises:
        ImageLoadError: for a missing file, a folder, a decompression bomb or unreadable bytes.
    """
    if not path.exists():
        raise ImageLoadError(f"{what} file not found: {path}")
    if path.is_dir():
        article = "an" if what[0] in "aeiou" else "a"
        raise ImageLoadError(f"expected {article} {what} file, got a folder: {path}")
    try:
        with Image.open(path) as im:
            yield im
    except Image.DecompressionBombError as err:  # not an OSError: it would escape a batch
        raise ImageLoadError(
            f"{path} has more pixels than Pillow opens by default ({err}); if you trust the "
            "file, set PIL.Image.MAX_IMAGE_PIXELS = None (or a larger number) before reading it"
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"cannot read {what} {path}: {err}") from err


#: how many times the resize's shorter side a reduced image keeps (see ``_read``)
REDUCE_MARGIN = 5


def _reduction(size: tuple[int, int], short_side: int | None, long_side: int | None = None) -> int:
    """The largest power of two that keeps the shorter side at least ``REDUCE_MARGIN`` times
    ``short_side`` and the longer side at least ``long_side`` (1: no reduction, or neither
    given)."""
    if short_side is None and long_side is None:
        return 1

    def keeps(factor: int) -> bool:
        short_ok = short_side is None or min(size) >= factor * REDUCE_MARGIN * short_side
        return short_ok and (long_side is None or max(size) >= factor * long_side)

    factor = 1
    while keeps(2 * factor):
        factor *= 2
    return factor


def upright(image: Image.Image) -> Image.Image:
    """An image turned as its EXIF orientation tag says.

    Args:
        image: a PIL image.

    Returns:
        A turned copy without the tag, or the image itself where it has none (or a damaged one).
    """
    try:
        orientation = image.getexif().get(0x0112, 1)
    except (OSError, ValueError, SyntaxError):  # a damaged EXIF block: the pixels as stored
        return image
    return image if orientation in (None, 1) else ImageOps.exif_transpose(image)


def describe(source: object, index: int) -> str:
    """How an input image is named in messages and results.

    Args:
        source: the input.
        index: its position.

    Returns:
        The path, or ``<Type #index>`` for an object.
    """
    if isinstance(source, (str, Path)):
        return str(source)
    return f"<{type(source).__name__} #{index}>"
