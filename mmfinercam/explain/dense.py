"""One batch of dense Finer-CAM: tower tokens and a text bank in, maps and their numbers out.

The one dense path: :class:`~mmfinercam.Localizer` and the batch runner both call
:func:`explain_dense` for each batch of same-sized images, with every prompt of their run
encoded once in a text bank (:func:`global_similarity` compares the images with it) and each
image's contrasts chosen by :class:`~mmfinercam.explain.contrasts.ContrastPlan`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from .contrasts import ContrastChoice
from .finer import contrast_weights, finer_maps
from .tokens import TowerOutput


@dataclass
class DenseBatch:
    """Dense Finer-CAM of B images for S prompt sets each, on the device.

    Args:
        scores: B×S×h×w Finer-CAM scores.
        target_scores: B×S×h×w plain target maps (alpha = 0).
        weights: B×S×D contrast weights (0 where padded).
        choice: the contrasts and global similarities.
    """

    scores: Tensor
    target_scores: Tensor
    weights: Tensor
    choice: ContrastChoice


def global_similarity(tokens: TowerOutput, text: Tensor) -> Tensor:
    """Cosine of each image's own embedding with every prompt of a bank.

    Args:
        tokens: one image-tower pass.
        text: P×E normalized text embeddings.

    Returns:
        B×P similarities.
    """
    return F.normalize(tokens.global_embedding, dim=-1) @ text.T


def explain_dense(
    tokens: TowerOutput,
    text: Tensor,
    target: Tensor,
    choice: ContrastChoice,
    *,
    alpha: float,
    weighting: str,
    logit_scale: float,
) -> DenseBatch:
    """Dense Finer-CAM for a batch: the chosen contrasts weighed and mixed, two maps a set.

    Args:
        tokens: the batch's image-tower pass (float32 tokens).
        text: P×E normalized text embeddings of every prompt of the run.
        target: B×S bank indices of each set's target.
        choice: the contrasts (:meth:`ContrastPlan.choose`; for a shifted or mirrored view of
            an image, those chosen from the image as given).
        alpha: the contrast strength.
        weighting: how contrasts are weighted (:data:`~mmfinercam.explain.finer.WEIGHTINGS`).
        logit_scale: the model's temperature, for softmax weights.

    Returns:
        The maps, the weights and the choice.
    """
    weights = contrast_weights(choice.contrast_similarity, logit_scale, weighting, choice.valid)
    patches = F.normalize(tokens.patch_tokens, dim=-1)
    scores, target_scores = finer_maps(patches, text, target, choice.index, weights, tokens.grid, alpha)
    return DenseBatch(scores, target_scores, weights, choice)
