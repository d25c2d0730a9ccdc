"""CLIP Surgery: a v-v attention path through the last blocks, and its feature surgery.

Li et al., "CLIP Surgery for Better Explainability with Enhancement in Open-Vocabulary Tasks",
2023 (https://arxiv.org/abs/2304.05653); reference code ``xmed-lab/CLIP_Surgery``.

*Architecture surgery*: from the block where the path starts, a second path carries only
attention outputs, each block's attention replaced by self-attention of the values
(``softmax(s v v^T) v``, ``s = head_dim ** -0.5``) on the original path's normalized tokens,
with no MLP; the original path runs on unchanged:

    surgery = x_first + sum_blocks attn_out(softmax(s v v^T) v)

It is GEM's path (:mod:`.gem`) with another attention, so it is GEM's path class with that
one method changed. The reference operates on its last 6 blocks, GEM's depth 7; here the depth
is the model's (``depth=`` as for GEM).

*Feature surgery* (:func:`feature_surgery`) removes from each prompt's similarity map what the
prompts at hand share, weighted by how plausible the image makes each. Finer-CAM already
subtracts a weighted share of the contrasts' maps; with ``alpha = 1`` the shared part cancels in
the Finer map, so the option matters for the plain maps and for other contrast strengths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backends.base import VisionTower
from .gem import GEMPath
from .tower import DenseMethod, register_dense_method


class SurgeryPath(GEMPath):
    """CLIP Surgery's dual path as a :class:`~mmfinercam.explain.tower.TokenPath`.

    Args:
        tower: the tower it runs in.
        depth: the last ``depth - 1`` blocks get the path.
    """

    def __init__(self, tower: VisionTower, depth: int) -> None:
        super().__init__(tower, depth)
        self.needs_row_norms = False

    def attention(self, q: Tensor, k: Tensor, v: Tensor, h: Tensor, h_norms: Tensor | None) -> Tensor:
        """The values' self-attention, ``softmax(s v v^T) v``.

        Args:
            q: B×heads×N×head_dim queries (unused: the surgery replaces them by the values).
            k: keys (unused likewise).
            v: values.
            h: the block's normalized input (unused).
            h_norms: its row norms (unused).

        Returns:
            B×heads×N×head_dim outputs.
        """
        return F.scaled_dot_product_attention(v, v, v)


def feature_surgery(maps: Tensor, global_similarity: Tensor, sharpness: float = 2.0) -> Tensor:
    """CLIP Surgery's feature surgery over a set of prompts' maps.

    ``w_k = softmax_k(t * g_k) / mean`` from the image's global similarity ``g`` to each prompt;
    each map becomes ``w_k s_k - mean_j w_j s_j``: what every prompt finds is taken away, the
    more so the more plausible the prompt.

    Args:
        maps: B×K×... similarity maps of K prompts.
        global_similarity: B×K global similarities of the images to the same prompts.
        sharpness: ``t``, the reference's 2.

    Returns:
        B×K×... maps after the surgery.
    """
    prob = torch.softmax(sharpness * global_similarity.float(), dim=-1)
    w = (prob / prob.mean(dim=-1, keepdim=True)).to(maps.dtype)
    weighted = maps * w.view(*w.shape, *([1] * (maps.dim() - 2)))
    return weighted - weighted.mean(dim=1, keepdim=True)


CLIP_SURGERY = register_dense_method(
    DenseMethod(
        "clipsurgery",
        "CLIP Surgery's v-v attention path over the last blocks (Li et al., 2023)",
        lambda tower, depth, temperature: SurgeryPath(tower, depth),
        uses_depth=True,
    )
)
