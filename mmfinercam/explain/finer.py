"""The contrast math of multimodal Finer-CAM (dense path), on batched tensors.

    finer(p) = s_c(p) - alpha * sum_d w_d s_d(p)
    heatmap  = upsample(finer) -> ReLU -> min-max to [0, 1]

Contrasts are combined on the raw similarity scores, before any ReLU or normalization: the
paper found subtracting finished heatmaps to be noise. A similarity ``s_k(p) = <p, t_k>`` is
linear in the text embedding, so the fast path (:func:`mixed_finer_maps`, :func:`finer_maps`)
mixes the texts instead of the maps: ``finer(p) = <p, t_c - alpha * sum_d w_d t_d>``, the same
numbers from two maps per image (the Finer map and the plain target map) however many
contrasts are asked. :func:`finer_scores` is its readable twin over every contrast's map.

Settings (``alpha``, ``weighting``) arrive checked (:class:`~mmfinercam.options.FinerOptions`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: how the contrasts of an image are weighted (:func:`contrast_weights`)
WEIGHTINGS = ("softmax", "uniform")


def contrast_weights(
    contrast_similarity: Tensor,
    logit_scale: float,
    weighting: str = "softmax",
    valid: Tensor | None = None,
) -> Tensor:
    """Weights of the D contrasts of each row (rows sum to 1).

    ``softmax``: the softmax over {target, contrasts} of ``logit_scale * <z, t>`` restricted to
    the contrasts and renormalized, which equals a softmax over the contrasts alone: more
    plausible confusions weigh more. ``uniform``: 1/D each.

    Args:
        contrast_similarity: ...×D global similarities of the image to each contrast.
        logit_scale: the model's learned temperature (exponentiated).
        weighting: one of :data:`WEIGHTINGS`.
        valid: ...×D bool marking real contrasts where rows are padded to a common D; padding
            gets weight 0 (a row with none, all 0).

    Returns:
        ...×D weights.
    """
    d = contrast_similarity.shape[-1]
    if d == 0:
        return contrast_similarity.new_zeros(contrast_similarity.shape)
    if valid is None:
        if weighting == "uniform":
            return contrast_similarity.new_full(contrast_similarity.shape, 1.0 / d)
        return torch.softmax(logit_scale * contrast_similarity.float(), dim=-1)
    if weighting == "uniform":
        w = valid.float()
    else:
        logits = (logit_scale * contrast_similarity.float()).masked_fill(~valid, -torch.inf)
        w = torch.exp(logits - logits.amax(dim=-1, keepdim=True).clamp_min(-1e30)).masked_fill(~valid, 0.0)
    return w / w.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def finer_scores(target_maps: Tensor, contrast_maps: Tensor, weights: Tensor, alpha: float) -> Tensor:
    """``s_c - alpha * sum_d w_d s_d`` over every contrast's map: the readable twin.

    Args:
        target_maps: B×h×w similarity maps of the target.
        contrast_maps: B×D×h×w similarity maps of the contrasts.
        weights: B×D contrast weights.
        alpha: the contrast strength.

    Returns:
        B×h×w Finer-CAM scores.
    """
    if contrast_maps.shape[1] == 0:
        return target_maps.clone()
    mixed = torch.einsum("bdhw,bd->bhw", contrast_maps, weights.to(contrast_maps.dtype))
    return target_maps - alpha * mixed


def contrast_mixture(contrast_text: Tensor, weights: Tensor) -> Tensor:
    """``sum_d w_d t_d``: the contrasts' texts mixed by their weights.

    Args:
        contrast_text: ...×D×E contrast text embeddings.
        weights: ...×D weights.

    Returns:
        ...×E mixtures.
    """
    return torch.einsum("...d,...de->...e", weights.to(contrast_text.dtype), contrast_text)


def mixed_finer_maps(
    patches: Tensor, target_text: Tensor, mixture: Tensor, grid: tuple[int, int], alpha: float
) -> tuple[Tensor, Tensor]:
    """Finer scores ``<p, t_c - alpha m>`` and plain target maps ``<p, t_c>``.

    Equal to :func:`finer_scores` over every contrast's map (linearity), at the cost of two maps
    a prompt set.

    Args:
        patches: B×N×E normalized patch tokens.
        target_text: B×S×E target texts, one a prompt set.
        mixture: B×S×E weighted contrast texts (:func:`contrast_mixture`).
        grid: the patch grid (rows, columns), N = rows × columns.
        alpha: the contrast strength.

    Returns:
        Finer scores and plain target maps, both B×S×h×w.
    """
    b, s = target_text.shape[:2]
    directions = torch.stack([target_text - alpha * mixture, target_text], dim=2)  # B×S×2×E
    maps = torch.einsum("bnd,bskd->bskn", patches, directions.to(patches.dtype))
    maps = maps.reshape(b, s, 2, *grid)
    return maps[:, :, 0], maps[:, :, 1]


def finer_maps(
    patches: Tensor,
    text: Tensor,
    target: Tensor,
    contrast: Tensor,
    weights: Tensor,
    grid: tuple[int, int],
    alpha: float,
) -> tuple[Tensor, Tensor]:
    """Dense Finer-CAM for S prompt sets an image, every prompt drawn from one text bank.

    Each image's contrast weights are spread over the bank and the bank is mixed by them in
    one product, so no image holds copies of its contrasts' texts however many there are.

    Args:
        patches: B×N×E normalized patch tokens.
        text: P×E normalized text embeddings of every prompt of the run.
        target: B×S bank indices of each set's target.
        contrast: B×S×D bank indices of each set's contrasts (any index where padded).
        weights: B×S×D contrast weights, 0 where padded (:func:`contrast_weights`).
        grid: the patch grid (rows, columns).
        alpha: the contrast strength.

    Returns:
        Finer scores and plain target maps, both B×S×h×w.
    """
    b, s, _ = contrast.shape
    spread = weights.new_zeros(b, s, text.shape[0]).scatter_add_(2, contrast, weights)  # B×S×P
    mixture = spread.to(text.dtype) @ text
    return mixed_finer_maps(patches, text[target], mixture, grid, alpha)


def to_heatmap(scores: Tensor, size: tuple[int, int]) -> Tensor:
    """Scores made heatmaps: upsampled bilinearly, rectified, min-max scaled to [0, 1].

    A map with no positive evidence anywhere comes out all zeros (not NaN).

    Args:
        scores: B×h×w raw scores.
        size: the (height, width) to upsample to.

    Returns:
        B×H×W heatmaps.
    """
    up = F.interpolate(scores[:, None].float(), size=size, mode="bilinear", align_corners=False)
    up = up[:, 0].clamp_min_(0.0)
    flat = up.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1)
    # in place: a map at a 50-megapixel scan's size is 200 MB a copy. A flat map is lo
    # everywhere, so it becomes exactly 0, not NaN
    return up.sub_(lo).div_((hi - lo).clamp_min(1e-12))


def best_match(names: Sequence[str], similarities: Sequence[float]) -> str:
    """The prompt the model matches the whole image to best.

    Args:
        names: the target, then its contrasts.
        similarities: the global similarity of the image to each.

    Returns:
        The most similar name; the first, the target, on a tie.
    """
    return names[max(range(len(names)), key=lambda i: similarities[i])]
