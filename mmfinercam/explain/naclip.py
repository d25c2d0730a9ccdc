"""NACLIP: key-key attention with a Gaussian neighbourhood in the last block, no residual or MLP.

Hajimiri, Ben Ayed and Dolz, "Pay Attention to Your Neighbours: Training-Free Open-Vocabulary
Semantic Segmentation", WACV 2025 (https://arxiv.org/abs/2404.08181); reference code
``sinahmr/NACLIP`` (``arch="reduced"``, ``attn_strategy="naclip"``, ``gaussian_std=5``). The
last block's attention weights are ``softmax(s k k^T + omega)``, ``omega`` a Gaussian of the
distance between two patches on the grid (standard deviation 5 patches; 0 for prefix tokens);
the tokens are its output projection alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .last_block import register_last_block_method

#: the Gaussian's standard deviation in patches (the reference's default)
GAUSSIAN_STD = 5.0


def neighbourhood(
    grid: tuple[int, int], num_prefix_tokens: int, std: float, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """``omega``: N×N, ``exp(-d^2 / (2 std^2))`` for two patches ``d`` apart, 0 for a prefix token.

    Args:
        grid: the patch grid (rows, columns).
        num_prefix_tokens: tokens before the patches.
        std: the standard deviation in patches.
        device: where to make it.
        dtype: its precision.

    Returns:
        The additive attention bias.
    """
    rows, cols = grid
    y = torch.arange(rows, device=device, dtype=torch.float32).repeat_interleave(cols)
    x = torch.arange(cols, device=device, dtype=torch.float32).repeat(rows)
    d2 = (y[:, None] - y[None]) ** 2 + (x[:, None] - x[None]) ** 2
    patches = torch.exp(-d2 / (2 * std**2))
    return F.pad(patches, (num_prefix_tokens, 0, num_prefix_tokens, 0)).to(dtype)


def neighbour_attention(
    q: Tensor, k: Tensor, v: Tensor, grid: tuple[int, int], num_prefix_tokens: int
) -> Tensor:
    """``softmax(s k k^T + omega) v``.

    Args:
        q: B×heads×N×head_dim queries (unused).
        k: keys.
        v: values.
        grid: the patch grid.
        num_prefix_tokens: tokens before the patches.

    Returns:
        B×heads×N×head_dim outputs.
    """
    omega = neighbourhood(grid, num_prefix_tokens, GAUSSIAN_STD, k.device, k.dtype)
    return F.scaled_dot_product_attention(k, k, v, attn_mask=omega)


NACLIP = register_last_block_method(
    "naclip",
    "NACLIP: k-k attention with a Gaussian neighbourhood in the last block (Hajimiri et al., WACV 2025)",
    neighbour_attention,
    residual=False,
)
