"""How an explanation is judged (design §5), batched on tensors.

Maps are B×H×W (any non-negative scale), masks B×H×W bool, images B×C×H×W (preprocessed, so
``fill=0`` is the dataset mean colour). A *predictor* maps a batch of images to B×K class
probabilities.

* :func:`relative_confidence_drop` — Finer-CAM's headline metric: mask the top k% pixels,
  ``RD = (p_c - p*_c) - (p_d - p*_d)``; higher means the map found what separates c from d.
* :func:`deletion_auc` / :func:`insertion_auc` — RISE (Petsiuk et al. 2018).
* :func:`pointing_game` — does the map's maximum fall on the part (Zhang et al. 2016)?
* :func:`energy_pointing_game` — the share of the map's mass inside the part (Score-CAM).
* :func:`mask_iou` — IoU of the thresholded map with the part.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Predictor = Callable[[Tensor], Tensor]


def _check_maps(maps: Tensor, masks: Tensor | None = None, images: Tensor | None = None) -> None:
    if maps.dim() != 3:
        raise ValueError(f"maps must be B×H×W, got shape {tuple(maps.shape)}")
    if masks is not None and masks.shape != maps.shape:
        raise ValueError(f"masks {tuple(masks.shape)} must match maps {tuple(maps.shape)}")
    if images is not None and (images.dim() != 4 or maps.shape != (images.shape[0], *images.shape[2:])):
        # one map an image, at its size: a single map would otherwise broadcast over the batch
        raise ValueError(
            f"maps {tuple(maps.shape)} must be one H×W map for each image of the B×C×H×W batch "
            f"{tuple(images.shape)} (heatmaps at the images' size)"
        )
    if not bool(torch.isfinite(maps).all()):  # a NaN would rank, peak and threshold arbitrarily
        raise ValueError("maps hold NaN or infinite values")


def _check_classes(classes: Tensor, probs: Tensor, what: str) -> Tensor:
    """``classes`` as B class indices into the predictor's B×K probabilities."""
    classes = torch.as_tensor(classes).to(probs.device)
    b, k = probs.shape
    if classes.shape != (b,) or classes.is_floating_point():
        raise ValueError(
            f"{what} must be {b} class indices, one an image; got {tuple(classes.shape)} {classes.dtype}"
        )
    if b and (int(classes.min()) < 0 or int(classes.max()) >= k):
        raise ValueError(
            f"{what} classes must lie in 0..{k - 1} (the predictor's {k} classes); got {classes.tolist()}"
        )
    return classes


def top_fraction_mask(maps: Tensor, fraction: float) -> Tensor:
    """The ``fraction`` of pixels with the highest values in each map.

    Exactly ``round(fraction * H * W)`` pixels per map (ties broken by position).

    Args:
        maps: B×H×W maps.
        fraction: a share from 0 to 1.

    Returns:
        B×H×W bool.

    Raises:
        ValueError: for a fraction outside [0, 1], or maps that are not B×H×W and finite.
    """
    _check_maps(maps)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    b, h, w = maps.shape
    k = int(round(fraction * h * w))
    flat = maps.reshape(b, -1).float()
    out = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        idx = flat.topk(k, dim=1, sorted=False).indices
        out.scatter_(1, idx, True)
    return out.view(b, h, w)


def apply_mask(images: Tensor, mask: Tensor, fill: float | Tensor = 0.0) -> Tensor:
    """Images with the pixels under a mask replaced.

    Args:
        images: B×C×H×W preprocessed images.
        mask: B×H×W bool.
        fill: the value put there (0 is the dataset's mean colour once normalized).

    Returns:
        B×C×H×W.
    """
    return torch.where(mask[:, None].to(images.device), torch.as_tensor(fill, dtype=images.dtype), images)


def relative_confidence_drop(
    predict: Predictor,
    images: Tensor,
    maps: Tensor,
    target: Tensor,
    contrast: Tensor,
    fraction: float = 0.05,
    fill: float = 0.0,
    probs_before: Tensor | None = None,
) -> Tensor:
    """Finer-CAM's relative confidence drop for each image: ``(p_c - p*_c) - (p_d - p*_d)``.

    ``*`` marks probabilities after masking the top ``fraction`` of the map's pixels: a map that
    found what separates c from d costs the target more than the similar class.

    Args:
        predict: images -> B×K class probabilities.
        images: B×C×H×W preprocessed images.
        maps: B×H×W maps at the images' size.
        target: B target classes (c).
        contrast: B most similar classes (d).
        fraction: the share of pixels masked.
        fill: the value masked pixels get.
        probs_before: ``predict(images)`` where already at hand.

    Returns:
        B drops; higher is better.
    """
    _check_maps(maps, images=images)
    before = predict(images) if probs_before is None else probs_before
    target, contrast = _check_classes(target, before, "target"), _check_classes(contrast, before, "contrast")
    after = predict(apply_mask(images, top_fraction_mask(maps, fraction), fill))
    rows = torch.arange(len(images), device=before.device)
    drop_c = before[rows, target] - after[rows, target]
    drop_d = before[rows, contrast] - after[rows, contrast]
    return drop_c - drop_d


def _order_curve(
    predict: Predictor, start: Tensor, end: Tensor, maps: Tensor, target: Tensor, steps: int
) -> Tensor:
    """Probability of ``target`` as pixels switch from ``start`` to ``end`` in map order."""
    _check_maps(maps, images=start)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    b, h, w = maps.shape
    order = maps.reshape(b, -1).float().argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=order.device).expand(b, -1))
    rank = rank.view(b, h, w)
    rows = torch.arange(b)
    curve = []
    for i in range(steps + 1):
        n = round(i * h * w / steps)
        switched = (rank < n)[:, None]
        probs = predict(torch.where(switched, end, start))
        if i == 0:
            target = _check_classes(target, probs, "target")
            rows = rows.to(probs.device)
        curve.append(probs[rows, target])
    return torch.stack(curve, dim=1)  # B×(steps+1)


def _auc(curve: Tensor) -> Tensor:
    """Trapezoid area under a curve sampled at evenly spaced fractions of [0, 1]."""
    return torch.trapezoid(curve, dx=1.0 / (curve.shape[1] - 1), dim=1)


def deletion_auc(
    predict: Predictor, images: Tensor, maps: Tensor, target: Tensor, steps: int = 16, fill: float = 0.0
) -> Tensor:
    """RISE deletion: remove pixels most-important first; the area under the target's probability.

    Args:
        predict: images -> B×K class probabilities.
        images: B×C×H×W preprocessed images.
        maps: B×H×W maps at the images' size.
        target: B target classes.
        steps: how many fractions are scored.
        fill: the value removed pixels get.

    Returns:
        B areas; lower is better.
    """
    return _auc(_order_curve(predict, images, torch.full_like(images, fill), maps, target, steps))


def insertion_auc(
    predict: Predictor,
    images: Tensor,
    maps: Tensor,
    target: Tensor,
    steps: int = 16,
    blur_sigma: float = 5.0,
) -> Tensor:
    """RISE insertion: reveal pixels most-important first on a blurred copy; the area under the curve.

    Args:
        predict: images -> B×K class probabilities.
        images: B×C×H×W preprocessed images.
        maps: B×H×W maps at the images' size.
        target: B target classes.
        steps: how many fractions are scored.
        blur_sigma: the blurred copy's Gaussian sigma in pixels.

    Returns:
        B areas; higher is better.
    """
    return _auc(_order_curve(predict, gaussian_blur(images, blur_sigma), images, maps, target, steps))


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur with reflect padding (the RISE insertion baseline).

    Args:
        images: B×C×H×W.
        sigma: the standard deviation in pixels.

    Returns:
        B×C×H×W.

    Raises:
        ValueError: for a sigma that is not positive.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    radius = max(1, int(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    pad = min(radius, images.shape[-1] - 1, images.shape[-2] - 1)
    out = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    if pad < radius:
        out = F.pad(out, (radius - pad,) * 4, mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def pointing_game(maps: Tensor, masks: Tensor, tolerance: int = 0) -> Tensor:
    """Whether each map's maximum lies on its mask (Zhang et al. 2016).

    Ties go to the first maximum in row-major order. An all-equal map points nowhere and counts
    as a miss.

    Args:
        maps: B×H×W maps.
        masks: B×H×W bool.
        tolerance: how many pixels away from the mask still count.

    Returns:
        B bools.

    Raises:
        ValueError: for a negative tolerance, or maps and masks that do not match.
    """
    _check_maps(maps, masks)
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    b, h, w = maps.shape
    flat = maps.reshape(b, -1)
    peak = flat.argmax(dim=1)
    target = masks.bool()
    if tolerance > 0:
        k = 2 * tolerance + 1
        target = F.max_pool2d(target[:, None].float(), k, stride=1, padding=tolerance)[:, 0] > 0
    hit = target.reshape(b, -1).gather(1, peak[:, None])[:, 0]
    flat_map = flat.max(dim=1).values == flat.min(dim=1).values
    return hit & ~flat_map


def energy_pointing_game(maps: Tensor, masks: Tensor) -> Tensor:
    """The share of each (non-negative) map's total mass that lies on its mask (Score-CAM).

    Args:
        maps: B×H×W non-negative maps.
        masks: B×H×W bool (or covered fractions).

    Returns:
        B floats in [0, 1].
    """
    _check_maps(maps, masks)
    maps = maps.clamp_min(0).float()
    total = maps.flatten(1).sum(dim=1)
    inside = (maps * masks.float()).flatten(1).sum(dim=1)
    return torch.where(total > 0, inside / total.clamp_min(1e-12), torch.zeros_like(total))


def mask_iou(maps: Tensor, masks: Tensor, threshold: float = 0.5) -> Tensor:
    """IoU between each thresholded map and its mask.

    Args:
        maps: B×H×W maps in [0, 1].
        masks: B×H×W bool.
        threshold: the map value from which a pixel counts.

    Returns:
        B floats (0 when both are empty).
    """
    _check_maps(maps, masks)
    pred = maps >= threshold
    gt = masks.bool()
    inter = (pred & gt).flatten(1).sum(dim=1).float()
    union = (pred | gt).flatten(1).sum(dim=1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(union))


__all__ = [
    "apply_mask",
    "deletion_auc",
    "energy_pointing_game",
    "gaussian_blur",
    "insertion_auc",
    "mask_iou",
    "pointing_game",
    "relative_confidence_drop",
    "top_fraction_mask",
]
