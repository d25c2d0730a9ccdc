"""What a CAM explains: one scalar an image, made from the model's outputs.

Finer-CAM (Zhang et al., CVPR 2025, https://arxiv.org/abs/2501.11309) changes *what* is
explained: instead of the target logit ``y_c`` a CAM explains

    y_finer = sum_i p_i (y_c - alpha * y_i) / (sum_i p_i + 1e-9),   p = softmax(all logits)

over the reference classes ``i`` (by default those ranked 1, 2, 3 by ``|y_i - y_c|``). The
softmax weights keep their gradient, as in ``pytorch-grad-cam``'s ``FinerCAM``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..._checks import check_contrast_ranks
from ...errors import ConfigError
from ..contrasts import closest_entries

#: ``score(outputs M×K, rows M) -> M scalars``; ``rows[j]`` is the batch image that output
#: ``j`` is of (``arange(B)`` for a plain pass; Score-CAM scores many masked copies of one image)
ScoreFn = Callable[[Tensor, Tensor], Tensor]


def logit_score(target: Tensor) -> ScoreFn:
    """Explain the plain logit of each image's target class.

    Args:
        target: B class indices.

    Returns:
        The score function.
    """
    return lambda y, rows: y[torch.arange(len(y), device=y.device), target[rows]]


def finer_score(target: Tensor, references: Tensor, alpha: float) -> ScoreFn:
    """Explain each image's Finer-CAM target (:func:`finer_target`).

    Args:
        target: B class indices.
        references: B×D reference classes.
        alpha: the contrast strength.

    Returns:
        The score function.
    """
    return lambda y, rows: finer_target(y, target[rows], references[rows], alpha)


def finer_target(logits: Tensor, target: Tensor, references: Tensor, alpha: float) -> Tensor:
    """``sum_i p_i (y_c - alpha y_i) / (sum_i p_i + 1e-9)`` per image; p keeps its gradient.

    Args:
        logits: B×K outputs.
        target: B target classes.
        references: B×D reference classes (D = 0: the plain target logit).
        alpha: the contrast strength.

    Returns:
        B scalars.
    """
    rows = torch.arange(logits.shape[0], device=logits.device)
    y_c = logits[rows, target]
    if references.shape[1] == 0:
        return y_c
    p = torch.softmax(logits, dim=-1).gather(1, references)
    y_i = logits.gather(1, references)
    return (p * (y_c[:, None] - alpha * y_i)).sum(dim=1) / (p.sum(dim=1) + 1e-9)


def target_classes(logits: Tensor, target: Tensor | None = None) -> Tensor:
    """The classes to explain: ``target`` checked against the model's classes, or the argmax.

    Args:
        logits: B×K outputs.
        target: B class indices, or None.

    Returns:
        B class indices.

    Raises:
        ConfigError: for a class outside the model's.
    """
    k = logits.shape[1]
    if target is None:
        return logits.argmax(dim=1)
    target = target.to(logits.device)
    if int(target.min()) < 0 or int(target.max()) >= k:
        raise ConfigError(f"target class out of range for a model with {k} classes: {target.tolist()}")
    return target


def reference_classes(
    logits: Tensor, target: Tensor | None = None, contrast_ranks: Sequence[int] = (1, 2, 3)
) -> tuple[Tensor, Tensor]:
    """The target (argmax if not given) and the classes at ``contrast_ranks`` by ``|y_i - y_c|``.

    Chosen by :func:`~mmfinercam.explain.contrasts.closest_entries`, the rule every contrast
    follows. Rank 0 is the target itself. Ranks beyond the number of classes are dropped, as
    the reference code does for models with few classes.

    Args:
        logits: B×K outputs.
        target: B class indices, or None for the argmax.
        contrast_ranks: which ranks to take.

    Returns:
        B target classes and B×D reference classes.
    """
    target = target_classes(logits, target)
    ranks = check_contrast_ranks(contrast_ranks, logits.shape[1] - 1, "classes")
    own = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, target[:, None], True)
    reference = logits.gather(1, target[:, None])[:, 0]
    return target, closest_entries(logits, reference, ranks, exclude=own)
