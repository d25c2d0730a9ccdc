"""The contrast math of multimodal Finer-CAM (dense path), on batched tensors.

    finer(p) = s_c(p) - alpha * sum_d w_d s_d(p)
    heatmap  = upsample(finer) -> ReLU -> min-max to [0, 1]

Contrasts are combined on the raw similarity scores, before any ReLU or normalization: the
paper found subtracting finished heatmaps to be noise. A similarity ``s_k(p) = <p, t_k>`` is
linear in the text embedding, so the dense path mixes the texts instead of the maps:
``finer(p) = <p, t_c - alpha * sum_d w_d t_d>``, the same numbers from two maps per image
(the Finer map and the plain target map) however many contrasts are asked.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import PromptError

WEIGHTINGS = ("softmax", "uniform")


def contrast_weights(
    contrast_similarity: Tensor,
    logit_scale: float,
    weighting: str = "softmax",
    valid: Tensor | None = None,
) -> Tensor:
    """Weights of the D contrasts for each image (B×D, rows sum to 1).

    ``softmax``: the softmax over {target, contrasts} of ``logit_scale * <z, t>`` restricted to
    the contrasts and renormalized, which equals a softmax over the contrasts alone. More
    plausible confusions weigh more. ``uniform``: 1/D each. ``valid`` (B×D bool) marks real
    contrasts when rows are padded to a common D: padding gets weight 0 (a row with none, all 0).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    b, d = contrast_similarity.shape
    if d == 0:
        return contrast_similarity.new_zeros(b, 0)
    if valid is None:
        if weighting == "uniform":
            return contrast_similarity.new_full((b, d), 1.0 / d)
        return torch.softmax(logit_scale * contrast_similarity.float(), dim=-1)
    if weighting == "uniform":
        w = valid.float()
    else:
        logits = (logit_scale * contrast_similarity.float()).masked_fill(~valid, -torch.inf)
        w = torch.exp(logits - logits.amax(dim=-1, keepdim=True).clamp_min(-1e30)).masked_fill(~valid, 0.0)
    return w / w.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def check_alpha(alpha: float) -> float:
    """``alpha`` as a float, refused unless a finite number >= 0: a negative strength would add
    the contrasts' evidence, and NaN (which passes ``alpha < 0``) would make every map NaN."""
    value = float(alpha)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
    return value


def finer_scores(target_maps: Tensor, contrast_maps: Tensor, weights: Tensor, alpha: float) -> Tensor:
    """``s_c - alpha * sum_d w_d s_d``: target B×h×w, contrasts B×D×h×w, weights B×D."""
    alpha = check_alpha(alpha)
    if contrast_maps.shape[1] == 0:
        return target_maps.clone()
    mixed = torch.einsum("bdhw,bd->bhw", contrast_maps, weights.to(contrast_maps.dtype))
    return target_maps - alpha * mixed


def contrast_mixture(contrast_text: Tensor, weights: Tensor) -> Tensor:
    """``sum_d w_d t_d``: contrast texts ...×D×E weighted by ...×D weights, ...×E."""
    return torch.einsum("...d,...de->...e", weights.to(contrast_text.dtype), contrast_text)


def mixed_finer_maps(
    patches: Tensor, target_text: Tensor, mixture: Tensor, grid: tuple[int, int], alpha: float
) -> tuple[Tensor, Tensor]:
    """Finer scores ``<p, t_c - alpha m>`` and plain target maps ``<p, t_c>``, both B×S×h×w.

    ``patches``: B×N×E normalized patch tokens; ``target_text`` and ``mixture`` (the weighted
    contrast texts, :func:`contrast_mixture`): B×S×E. Equal to :func:`finer_scores` over every
    contrast's map (linearity), at the cost of two maps a set.
    """
    alpha = check_alpha(alpha)
    b, s = target_text.shape[:2]
    directions = torch.stack([target_text - alpha * mixture, target_text], dim=2)  # B×S×2×E
    maps = torch.einsum("bnd,bskd->bskn", patches, directions.to(patches.dtype))
    maps = maps.reshape(b, s, 2, *grid)
    return maps[:, :, 0], maps[:, :, 1]


def dense_finer_maps(
    patches: Tensor,
    text: Tensor,
    contrast_similarity: Tensor,
    grid: tuple[int, int],
    *,
    alpha: float,
    logit_scale: float,
    weighting: str = "softmax",
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Dense Finer-CAM for S prompt sets per image, all sets in one matmul.

    ``patches``: B×N×E normalized patch tokens; ``text``: B×S×(1+D)×E, the target then its D
    contrasts for each set; ``contrast_similarity``: B×S×D global similarities (for the
    weights); ``valid``: B×S×D marks real contrasts where sets are padded to a common D.
    Returns Finer scores and plain target maps (both B×S×h×w) and the weights (B×S×D).
    """
    b, s, k = text.shape[:3]
    weights = contrast_weights(
        contrast_similarity.reshape(b * s, k - 1),
        logit_scale,
        weighting,
        None if valid is None else valid.reshape(b * s, k - 1),
    ).view(b, s, k - 1)
    mixture = contrast_mixture(text[:, :, 1:], weights)
    scores, target_maps = mixed_finer_maps(patches, text[:, :, 0], mixture, grid, alpha)
    return scores, target_maps, weights


def to_heatmap(scores: Tensor, size: tuple[int, int]) -> Tensor:
    """Upsample B×h×w scores bilinearly to ``size``, ReLU, min-max each map to [0, 1].

    A map with no positive evidence anywhere comes out all zeros (not NaN).
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
    """Of the target (``names[0]``) and its contrasts, the one the model matches the whole image
    to best by global similarity; the first, the target, on a tie."""
    return names[max(range(len(names)), key=lambda i: similarities[i])]


def rank_contrasts(target_similarity: Tensor, vocabulary_similarity: Tensor, ranks: Sequence[int]) -> Tensor:
    """Indices (B×len(ranks)) of vocabulary entries closest to the target, per image.

    Entries are sorted by ``|<z, t_i> - <z, t_c>|``; rank 0 is the target itself (the official
    code's convention), so rank r is the r-th closest other entry. The vocabulary passed here
    must not contain the target.
    """
    ranks = check_contrast_ranks(ranks, vocabulary_similarity.shape[1])
    gap = (vocabulary_similarity - target_similarity[:, None]).abs()
    order = gap.argsort(dim=1, stable=True)
    return order[:, [r - 1 for r in ranks]]


def is_whole_number(value: object) -> bool:
    """A Python or NumPy integer, not a bool: what counts, sizes and ranks must be (a float
    would fail later inside a slice or a range, with a message about neither)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_whole(value: object, name: str, least: int = 1, error: type[Exception] = ValueError) -> int:
    """``value`` if it is a whole number (:func:`is_whole_number`) of at least ``least``; else
    ``error`` saying so, with the option's ``name``."""
    if not is_whole_number(value) or value < least:  # type: ignore[operator]
        raise error(f"{name} must be a whole number >= {least}, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def check_contrast_ranks(
    ranks: Sequence[int], candidates: int, pool: str = "vocabulary entries"
) -> list[int]:
    """Ranks of automatic contrasts, checked before any image is run: distinct whole numbers
    from 1 (rank 0 is the target). Ranks past the ``candidates`` (the ``pool`` other than the
    target) are dropped, as the reference code does for models with few classes, so the default
    1, 2, 3 works with a vocabulary of two; ranks that leave none are refused."""
    ranks = [int(r) if is_whole_number(r) else r for r in ranks]
    whole = all(is_whole_number(r) for r in ranks)
    if not ranks or not whole or min(ranks) < 1 or len(set(ranks)) < len(ranks):
        raise PromptError(
            f"contrast ranks must be distinct whole numbers from 1 (rank 0 is the target itself); got {ranks}"
        )
    kept = [r for r in ranks if r <= candidates]
    if not kept:
        raise PromptError(
            f"contrast ranks {ranks} leave no contrast: there are {candidates} {pool} besides the target"
        )
    return kept


def check_prompt(prompt: object, what: str = "prompt") -> str:
    """A usable prompt is a non-empty, non-whitespace string."""
    if not isinstance(prompt, str):
        raise PromptError(f"the {what} must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise PromptError(f"the {what} is empty or only whitespace")
    return prompt.strip()


def check_contrasts(target: str, contrast: Sequence[str]) -> list[str]:
    """Validate explicit contrasts: non-empty strings, none equal to the target, no repeats."""
    if isinstance(contrast, str):
        contrast = [contrast]
    out = [check_prompt(c, "contrast prompt") for c in contrast]
    if target in out:
        raise PromptError(
            f"the target {target!r} is also among the contrasts; a concept contrasted with itself cancels out"
        )
    if len(set(out)) != len(out):
        raise PromptError(f"a contrast is repeated: {out}")
    return out
