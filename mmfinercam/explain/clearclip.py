"""ClearCLIP: query-query attention in the last block, without its residual stream and MLP.

Lan et al., "ClearCLIP: Decomposing CLIP Representations for Dense Vision-Language
Inference", ECCV 2024 (https://arxiv.org/abs/2407.12442); reference code ``mc-lan/ClearCLIP``
(``model_type="ClearCLIP"``, ``ignore_residual=True``). The tokens are
``attn_out(softmax(s q q^T) v)`` of the last block alone, then the final norm and projection.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .last_block import register_last_block_method


def query_attention(q: Tensor, k: Tensor, v: Tensor, grid: tuple[int, int], num_prefix_tokens: int) -> Tensor:
    """``softmax(s q q^T) v``.

    Args:
        q: B×heads×N×head_dim queries.
        k: keys (unused).
        v: values.
        grid: the patch grid (unused).
        num_prefix_tokens: tokens before the patches (unused).

    Returns:
        B×heads×N×head_dim outputs.
    """
    return F.scaled_dot_product_attention(q, q, v)


CLEARCLIP = register_last_block_method(
    "clearclip",
    "ClearCLIP: q-q attention in the last block, no residual, no MLP (Lan et al., ECCV 2024)",
    query_attention,
    residual=False,
)
