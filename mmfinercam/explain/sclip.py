"""SCLIP: correlative self-attention in the last block.

Wang, Mei and Yuille, "SCLIP: Rethinking Self-Attention for Dense Vision-Language Inference",
ECCV 2024 (https://arxiv.org/abs/2312.01597); reference code ``wangf3014/SCLIP``
(``custom_attn(..., csa=True)``). The last block's attention weights become
``softmax(s q q^T) + softmax(s k k^T)`` (``s = head_dim ** -0.5``; the two softmaxes summed, as
the reference does, not averaged); residual and MLP stay.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .last_block import register_last_block_method


def correlative_attention(
    q: Tensor, k: Tensor, v: Tensor, grid: tuple[int, int], num_prefix_tokens: int
) -> Tensor:
    """``(softmax(s q q^T) + softmax(s k k^T)) v``.

    Args:
        q: B×heads×N×head_dim queries.
        k: keys, the same shape.
        v: values, the same shape.
        grid: the patch grid (unused).
        num_prefix_tokens: tokens before the patches (unused).

    Returns:
        B×heads×N×head_dim outputs.
    """
    return F.scaled_dot_product_attention(q, q, v) + F.scaled_dot_product_attention(k, k, v)


SCLIP = register_last_block_method(
    "sclip",
    "SCLIP: correlative q-q + k-k attention in the last block (Wang et al., ECCV 2024)",
    correlative_attention,
    residual=True,
)
