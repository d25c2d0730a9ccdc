"""Pictures of maps: an overlay with a colour bar and a title that says what was contrasted."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from .images import ImageInput, read_image


def _heat_at(heatmap: Tensor | np.ndarray, rgb: Image.Image) -> np.ndarray:
    """``heatmap`` as a float32 array at the image's size (resized bilinearly where it differs).

    Only values in [0, 1] are drawn: a colour scale from 0 to 1 would silently clip raw scores
    (a few hundredths either side of 0) to a picture of almost nothing, and NaN to nothing."""
    if isinstance(heatmap, Tensor):
        heatmap = heatmap.detach().float().cpu().numpy()
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"a heatmap is H×W; got shape {heat.shape}")
    if not np.isfinite(heat).all():
        raise ValueError("the heatmap holds NaN or infinity; there is nothing honest to draw")
    if heat.size and (heat.min() < -1e-6 or heat.max() > 1 + 1e-6):
        raise ValueError(
            f"a heatmap to draw holds values in [0, 1] (a result's .heatmaps); this one runs from "
            f"{heat.min():.3g} to {heat.max():.3g}. Raw scores? mmfinercam.finer.to_heatmap(scores[None], "
            f"(height, width))[0] makes their heatmap"
        )
    heat = np.clip(heat, 0.0, 1.0)
    if heat.shape != (rgb.height, rgb.width):
        heat = np.asarray(Image.fromarray(heat).resize((rgb.width, rgb.height), Image.Resampling.BILINEAR))
    return heat


#: the longest side an overlay draws an image at: a figure shows a few hundred to a couple of
#: thousand pixels, and matplotlib resampling a 50-megapixel scan for it took seconds
DISPLAY_SIDE = 2048


def display_copy(rgb: Image.Image) -> Image.Image:
    """An image made no larger than :data:`DISPLAY_SIDE` on its longer side.

    Args:
        rgb: an RGB image.

    Returns:
        A smaller copy, or the image itself.
    """
    if max(rgb.size) <= DISPLAY_SIDE:
        return rgb
    shown = rgb.copy()
    shown.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE), reducing_gap=3.0)
    return shown


def read_for_display(image: ImageInput) -> Image.Image:
    """An image as RGB at display size: decoded smaller where it can be, then :func:`display_copy`.

    Args:
        image: a path, PIL image or array.

    Returns:
        The RGB image.
    """
    return display_copy(read_image(image, long_side=DISPLAY_SIDE))


def describe_contrast(target: str | None, contrast: Sequence[str] | None, alpha: float | None) -> str:
    """What a map contrasts, as a title: ``"Cape May warbler vs Magnolia warbler, ... (alpha=1)"``.

    Args:
        target: the target prompt.
        contrast: the contrast prompts.
        alpha: the contrast strength.

    Returns:
        The title.
    """
    parts = []
    if target:
        parts.append(target)
    if contrast:
        parts.append("vs " + ", ".join(contrast))
    if alpha is not None:
        parts.append(f"(alpha={alpha:g})")
    return " ".join(parts)


def blend(
    image: ImageInput, heatmap: Tensor | np.ndarray, *, cmap: str = "jet", opacity: float = 0.5
) -> Image.Image:
    """A heatmap coloured over an image, as a PIL image at the image's size.

    For apps and batch pictures, where a matplotlib figure is too slow.

    Args:
        image: a path, PIL image or array.
        heatmap: H×W values in [0, 1].
        cmap: a matplotlib colour map.
        opacity: the heatmap's share of each pixel.

    Returns:
        The blended RGB image.
    """
    from matplotlib import colormaps
    from PIL import Image

    rgb = read_image(image)
    colour = colormaps[cmap](_heat_at(heatmap, rgb))[..., :3]
    mixed = (1 - opacity) * np.asarray(rgb, np.float32) / 255.0 + opacity * colour
    return Image.fromarray(np.round(np.clip(mixed, 0, 1) * 255).astype(np.uint8))


def overlay(
    image: ImageInput,
    heatmap: Tensor | np.ndarray,
    *,
    target: str | None = None,
    contrast: Sequence[str] | None = None,
    alpha: float | None = None,
    title: str | None = None,
    cmap: str = "jet",
    opacity: float = 0.5,
    colorbar: bool = True,
    ax: Any = None,
) -> Any:
    """Draw a heatmap over an image, with a colour bar and a title that says what was contrasted.

    The heatmap holds values in [0, 1] (a result's ``heatmaps``; anything else is refused) and is
    resized to the image if their sizes differ. An image over :data:`DISPLAY_SIDE` pixels is drawn
    at that size, which no figure shows the difference of.

    Args:
        image: a path, PIL image or array.
        heatmap: H×W values in [0, 1].
        target: the target, for the default title.
        contrast: the contrasts, for the default title.
        alpha: the contrast strength, for the default title.
        title: the title (default: target, contrasts and alpha).
        cmap: a matplotlib colour map.
        opacity: the heatmap's opacity.
        colorbar: draw a colour bar.
        ax: draw into this matplotlib axes.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    rgb = read_for_display(image)
    heat = _heat_at(heatmap, rgb)
    if ax is None:
        aspect = rgb.width / max(rgb.height, 1)
        fig, ax = plt.subplots(figsize=(4.5 * aspect + (0.8 if colorbar else 0), 4.5))
    else:
        fig = ax.figure
    ax.imshow(rgb)
    im = ax.imshow(heat, cmap=cmap, alpha=opacity, vmin=0.0, vmax=1.0)
    ax.set_axis_off()
    text = title if title is not None else describe_contrast(target, contrast, alpha)
    if text:
        ax.set_title(text, fontsize=9, wrap=True)
    if colorbar:
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def compare(
    image: ImageInput,
    maps: Sequence[tuple[str, Tensor | np.ndarray]],
    *,
    title: str | None = None,
    cmap: str = "jet",
    opacity: float = 0.5,
) -> Any:
    """The image beside each labelled map (the plain map beside Finer-CAM, say).

    Args:
        image: a path, PIL image or array.
        maps: (label, H×W heatmap in [0, 1]) of each panel.
        title: the figure's title.
        cmap: a matplotlib colour map.
        opacity: the heatmaps' opacity.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    rgb = read_for_display(image)
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(3.2 * (len(maps) + 1), 3.5))
    axes[0].imshow(rgb)
    axes[0].set_title("image", fontsize=9)
    for ax, (label, heat) in zip(axes[1:], maps):
        overlay(rgb, heat, title=label, cmap=cmap, opacity=opacity, colorbar=False, ax=ax)
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
