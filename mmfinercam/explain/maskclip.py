"""MaskCLIP: the last block's attention made the identity, so each token keeps its own value.

Zhou, Loy and Dai, "Extract Free Dense Labels from CLIP", ECCV 2022
(https://arxiv.org/abs/2112.01071); reference code ``chongzhou96/MaskCLIP`` (its ViT backbone
with ``return_qkv``), as ``mc-lan/ClearCLIP`` runs it with ``model_type="MaskCLIP"`` and the
residual kept. The last block becomes ``y = x + attn_out(v)``, ``y + mlp(norm2(y))``: query and
key are dropped, the value and output projections act on each token alone.
"""

from __future__ import annotations

from torch import Tensor

from .last_block import register_last_block_method


def value_attention(q: Tensor, k: Tensor, v: Tensor, grid: tuple[int, int], num_prefix_tokens: int) -> Tensor:
    """Each token attends to itself alone: the values as they are.

    Args:
        q: B×heads×N×head_dim queries (unused).
        k: keys (unused).
        v: values.
        grid: the patch grid (unused).
        num_prefix_tokens: tokens before the patches (unused).

    Returns:
        The values.
    """
    return v


MASKCLIP = register_last_block_method(
    "maskclip",
    "MaskCLIP: the last block's values alone (Zhou et al., ECCV 2022)",
    value_attention,
    residual=True,
)
