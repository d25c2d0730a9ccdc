"""Reading images from anything a user has, and preparing them for a ViT.

Documented conversions (never refusals): grayscale and palette images become RGB; an alpha
channel is composited over white (specimen cut-outs on transparent backgrounds look as they do
in a viewer); a camera's EXIF orientation is applied (a phone photo is upright, as a viewer shows
it, and its map is at that size); 16-bit images are scaled to 8 bits by their full range
(65535), not clipped; float arrays are taken as values in [0, 1].

Images are resized keeping their aspect ratio so that the shorter side is the model's input
size, each side rounded to a whole number of patches; nothing is cropped, so a map covers the
whole image and is resized back to the image's own size.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from .errors import ImageLoadError
from .finer import is_whole_number

ImageInput = Union[str, Path, Image.Image, np.ndarray, Tensor]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}  #: what folders yield
NON_FINITE = "the image holds NaN or infinite values"  #: why such an image is not used
#: the most patches an image read from a file or array is resized to (2,048 × 2,048 px at patch
#: 16). GEM's self-self attention grows with their square: a long thin strip resized to the
#: model's shorter side could otherwise ask for hours and tens of GB
MAX_PATCHES = 16_384


def image_files(folder: Path, *, recursive: bool = False) -> list[Path]:
    """The image files in ``folder`` (and below it, if ``recursive``), sorted. Hidden files and
    folders are left out: macOS's ``._IMG_0001.jpg`` companions on a copied drive, thumbnail
    caches and notebook checkpoints are never the photos meant."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in found
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def mask_size_error(mask: str, mask_size: tuple[int, int], image_size: tuple[int, int]) -> ImageLoadError:
    """The error for a mask of another (height, width) than its image, with the likely cause when
    the sides are swapped: the mask was made on the photo as stored, before its EXIF turn."""
    hint = (
        "; the image is turned upright by its EXIF orientation, the mask is not: save the mask "
        "upright (as a viewer shows the photo)"
        if tuple(mask_size) == tuple(image_size)[::-1]
        else ""
    )
    return ImageLoadError(
        f"mask {mask} is {mask_size[1]}×{mask_size[0]} px, its image {image_size[1]}×{image_size[0]}{hint}"
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
    """Convert any PIL mode to RGB by the module's documented rules."""
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
    """Open a path, PIL image or array as an RGB PIL image; raise :class:`ImageLoadError`.

    With ``long_side`` (for drawing), a larger image comes back halved, quartered ... (a JPEG
    decoded smaller) while its longer side stays at least ``long_side``."""
    return _read(source, long_side=long_side)[0]


def checked_size(source: ImageInput) -> tuple[int, int]:
    """The (height, width) an image reads at, upright, after decoding it whole: a check that the
    file can be used, at a fraction of a full read for a large JPEG (decoded at 1/8 scale)."""
    return _read(source, short_side=1)[1]


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
        with _opened(Path(source).expanduser(), "image") as im:
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
def _opened(path: Path, what: str) -> Iterator[Image.Image]:
    """``Image.open(path)``, what can go wrong reading it as one :class:`ImageLoadError` that
    names ``what`` the file is ("image", "mask")."""
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


def read_mask(
    source: str | Path | Image.Image | np.ndarray,
    *,
    size: tuple[int, int] | None = None,
    name: str | None = None,
) -> np.ndarray:
    """A part mask as an H×W bool array, upright as its EXIF says (as images are read, so it
    stays aligned with its photo). With ``size``, its image's (height, width): a mask of
    another size is an :class:`ImageLoadError` naming it as ``name`` (default: the source).

    What counts as marked, so that the masks annotation tools write all read as drawn:

    * a grey, 16-bit, float or label mask: every non-zero pixel (a label map marks its part
      with 1; a palette image by its indices, index 0 the background);
    * a mask with transparency in use: every pixel not fully transparent (strokes painted on a
      transparent layer, whatever their colour);
    * a JPEG: pixels brighter than mid-grey, as its compression leaves faint non-zero noise
      around every edge;
    * an array: non-zero (bool, or any number type)."""
    mask = _read_mask(source)
    if size is not None and mask.shape != tuple(size):
        raise mask_size_error(str(source) if name is None else name, mask.shape, tuple(size))
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
    with _opened(Path(source).expanduser(), "mask") as m:
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
    """``image`` turned as its EXIF orientation tag says (a copy without the tag), else itself."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except (OSError, ValueError, SyntaxError):  # a damaged EXIF block: the pixels as stored
        return image
    return image if orientation in (None, 1) else ImageOps.exif_transpose(image)


def target_size(height: int, width: int, short_side: int, patch: tuple[int, int]) -> tuple[int, int]:
    """Aspect-preserving size with the shorter side ``short_side``, sides multiples of the patch."""
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
    """Resize (bicubic, antialiased) to ``size`` = (height, width) and normalize: 3×H×W float."""
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
    """Whether each image of a B×3×H×W batch is free of NaN and infinity, read back once (a GPU
    batch is waited for here, not per image): an image's float32 sum is NaN or infinite exactly
    when one of its pixels is (normalized pixels cannot overflow it), so one read of the batch
    and no B×3×H×W mask."""
    return torch.isfinite(batch.flatten(1).sum(1, dtype=torch.float32)).tolist()


def check_image_size(short_side: int, patch: tuple[int, int]) -> None:
    """The shorter side images are resized to must hold one patch, or every image is unusable."""
    if not is_whole_number(short_side) or short_side < max(patch):
        raise ImageLoadError(
            f"image_size must be whole pixels, at least one {patch[0]}×{patch[1]} patch; got {short_side!r}"
        )


def _whole_patches(pixels: Tensor, patch: tuple[int, int]) -> Tensor:
    """``pixels`` (...×H×W) cropped at the bottom and right to whole patches."""
    h, w = pixels.shape[-2] // patch[0] * patch[0], pixels.shape[-1] // patch[1] * patch[1]
    return pixels[..., :h, :w]


def check_pixel_batch(images: Tensor, patch: tuple[int, int]) -> Tensor:
    """A preprocessed B×3×H×W (or 3×H×W) tensor at least one patch in size, as B×3×H×W."""
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
    """One image ready for the model, with where it came from and its own size."""

    index: int
    source: str
    pixels: Tensor  #: 3×h×w, normalized
    original_size: tuple[int, int]  #: (height, width) of the image as given


class _BatchRow(PreparedImage):
    """One image of a preprocessed tensor batch, sliced from it only when its pixels are read:
    a batch of 256 runs as the one tensor it is, without 256 views made and dropped."""

    def __init__(self, index: int, batch: Tensor, original_size: tuple[int, int]):
        self.index, self.original_size, self._batch = index, original_size, batch

    @property
    def source(self) -> str:  # type: ignore[override]
        return f"<tensor #{self.index}>"

    @property
    def pixels(self) -> Tensor:  # type: ignore[override]
        return self._batch[self.index]


@dataclass
class FailedImage:
    """An image of a batch that could not be used, and why."""

    index: int
    source: str
    message: str


def describe(source: object, index: int) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    return f"<{type(source).__name__} #{index}>"


def prepare_images(
    images: ImageInput | Sequence[ImageInput],
    *,
    short_side: int,
    patch: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
) -> tuple[list[PreparedImage], list[FailedImage]]:
    """Read and preprocess every image; a broken one is reported and the rest go on.

    A 4-D tensor (B×3×H×W) or a 3-D tensor (3×H×W), also as an item of a list, is taken as
    already preprocessed; it is cropped to whole patches, not resized. An image whose pixels
    hold NaN or infinity is reported, as an unreadable file is: its map would be NaN.
    """
    check_image_size(short_side, patch)
    if isinstance(images, Tensor):
        batch = check_pixel_batch(images, patch)
        size = (int(batch.shape[-2]), int(batch.shape[-1]))
        batch = _whole_patches(batch, patch)
        finite = finite_images(batch)
        rows = [_BatchRow(i, batch, size) for i, ok in enumerate(finite) if ok]
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
            image, (height, width) = _read(source, short_side)
            if height < patch[0] or width < patch[1]:
                raise ImageLoadError(
                    f"image of {height}×{width} px is smaller than one {patch[0]}×{patch[1]} patch"
                )
            size = target_size(height, width, short_side, patch)
            patches = (size[0] // patch[0]) * (size[1] // patch[1])
            if patches > MAX_PATCHES:
                raise ImageLoadError(
                    f"image of {height}×{width} px would be {size[0]}×{size[1]} px at a shorter "
                    f"side of {short_side}: {patches:,} patches, more than the {MAX_PATCHES:,} a map is made "
                    "of at most; crop it, or pass a smaller image size"
                )
            pixels = to_pixels(image, size, mean, std)
        except ImageLoadError as err:
            failed.append(FailedImage(i, name, str(err)))
            continue
        prepared.append(PreparedImage(i, name, pixels, (height, width)))
    return prepared, failed


def pixel_batches(
    prepared: list[PreparedImage], step: int, tensor: Tensor | None = None
) -> Iterator[tuple[list[int], Tensor]]:
    """Batches of at most ``step`` same-sized images: (their positions in ``prepared``, B×3×H×W).

    Images given as one tensor are sliced from it; files and arrays are grouped by size. No
    images, no batches."""
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
    images: ImageInput | Sequence[ImageInput], chunk: int, **prep
) -> Iterator[tuple[list[PreparedImage], list[FailedImage]]]:
    """:func:`prepare_images` over ``chunk`` files or arrays at a time (a tensor, or one image,
    at once), each image keeping its index and name in the whole input: a list of thousands of
    files is read as it is used, never held in memory prepared. ``prep``: as for
    :func:`prepare_images`."""
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
