"""GEM: spatially faithful ViT patch tokens from self-self attention (Bousselham et al., CVPR 2024).

The last ``depth - 1`` blocks of the image transformer get a parallel path that carries only
attention outputs. In each such block the queries, keys and values of the block's normalized
input are each refined by self-self attention (``u <- softmax(t * u u^T) u`` on L2-normalized
``u``), a final self-self attention of each is applied to the values, the three results are
averaged, and the block's own output projection maps them back. The original path keeps running
unchanged and feeds every block its input. Nothing in the wrapped model is modified: this module
runs its own forward over a :class:`~mmfinercam.backends.base.VisionTower` view.

Agrees with the reference ``gem_torch`` (``GEMWrapper``, ``ss_attn_temp=None``) to float
rounding; see ``tests/test_gem_reference.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from . import add_norm, kernels
from .backends.base import VisionTower, merge_heads
from .finer import is_whole_number

#: the fused GPU kernel for self-self attention (:mod:`mmfinercam.kernels`), on by default:
#: ``with fused_attention(False):`` runs the PyTorch path instead
fused_attention = kernels.KernelSwitch()


def _runs_fused(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Half precision on a GPU, with no gradient to carry: the fused kernel applies."""
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    half = v.dtype in (torch.float16, torch.bfloat16)
    return fused_attention.enabled and half and not needs_grad and kernels.available(v)


def resample_pos_embed(
    pos_embed: Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
) -> Tensor:
    """Resample an (N, C) absolute position table to ``new_grid`` (rows, cols).

    Bicubic with antialiasing; the prefix (CLS) entries are kept apart. Rows stay rows and
    columns stay columns, so non-square inputs are placed correctly.
    """
    prefix, grid = pos_embed[:num_prefix_tokens], pos_embed[num_prefix_tokens:]
    if old_grid is None:
        side = int(math.isqrt(grid.shape[0]))
        old_grid = (side, side)
    old_grid = (int(old_grid[0]), int(old_grid[1]))
    new_grid = (int(new_grid[0]), int(new_grid[1]))
    if old_grid == new_grid:
        return pos_embed
    c = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], c).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=new_grid, mode="bicubic", antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], c).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=0)


def gem_inverse_temperature(h: Tensor, head_dim: int, token_norms: Tensor | None = None) -> Tensor:
    """GEM's default inverse temperature: mean token norm of ``h`` times ``head_dim ** -0.5``.

    ``token_norms`` (B×N) are ``h.norm(dim=-1)`` where already at hand. Returns a B×1×1×1
    tensor (one temperature per image).
    """
    norms = h.norm(dim=-1) if token_norms is None else token_norms
    return norms.mean(dim=-1).view(-1, 1, 1, 1) * head_dim**-0.5


def self_self_attention(
    q: Tensor, k: Tensor, v: Tensor, inv_temp: Tensor | float, iterations: int = 1
) -> Tensor:
    """GEM's attention for one block: q, k, v are B×heads×N×head_dim; returns the same shape.

    In half precision on a GPU (and without gradients) it runs in the fused kernels of
    :mod:`mmfinercam.kernels`. Otherwise the three streams run stacked as one batch through
    scaled-dot-product attention; a per-image temperature (B×1×1×1) is folded into the queries,
    a single number is SDPA's scale.
    """
    if _runs_fused(q, k, v):
        return kernels.self_self_attention(q, k, v, inv_temp, iterations)
    if isinstance(inv_temp, Tensor):  # one temperature per image: scale the queries
        inv_temp = inv_temp.view(1, -1, 1, 1, 1).to(v.dtype)
        scale, weight = 1.0, inv_temp
    else:  # one temperature for all: SDPA applies it, no extra pass over the queries
        scale, weight = float(inv_temp), None
    u = torch.stack([v, k, q])  # 3×B×H×N×d
    for _ in range(iterations):
        u = F.normalize(u, dim=-1)
        u = _attend(u if weight is None else u * weight, u, u, scale)
    u = F.normalize(u, dim=-1)
    out = _attend(u if weight is None else u * weight, u, v.unsqueeze(0).expand_as(u), scale)
    return out.mean(dim=0)


def _attend(query: Tensor, key: Tensor, value: Tensor, scale: float) -> Tensor:
    shape = query.shape
    flat = (-1, *shape[-3:])
    out = F.scaled_dot_product_attention(
        query.reshape(flat), key.reshape(flat), value.reshape(flat), scale=scale
    )
    return out.reshape(shape[:-1] + (value.shape[-1],))


@dataclass
class TowerOutput:
    """Tokens of one image-tower pass (all B×N×D, projected into the joint space)."""

    global_embedding: Tensor  #: B×D, the model's own pooled image embedding
    tokens: Tensor  #: B×N×D, GEM tokens (method "gem") or last-layer tokens (method "raw")
    grid: tuple[int, int]  #: patch rows, patch cols
    num_prefix_tokens: int

    @property
    def patch_tokens(self) -> Tensor:
        return self.tokens[:, self.num_prefix_tokens :]


def run_tower(
    tower: VisionTower,
    pixels: Tensor,
    *,
    method: str = "gem",
    depth: int = 7,
    ss_attn_iter: int = 1,
    ss_attn_temp: float | None = None,
    gem_attention_grad: bool = True,
) -> TowerOutput:
    """One forward pass of the image tower, with the GEM path when ``method == "gem"``.

    ``method="raw"`` returns the plain last-layer tokens (final norm and projection applied).
    The blocks run in their pieces (the views' norms, qkv, attention, output projection, MLP),
    not as the model's modules, so that on a GPU each residual add and the norm after it are
    one pass (:mod:`mmfinercam.add_norm`); the same numbers to float rounding.
    ``gem_attention_grad=False`` stops gradients through the self-self attention (its outputs
    still reach the tokens through the block's output projection): training through the GEM
    path then costs about a third; inference is unaffected.
    """
    if method not in ("gem", "raw"):
        raise ValueError(f"method must be 'gem' or 'raw', got {method!r}")
    blocks = tower.blocks
    n_gem = depth - 1 if method == "gem" else 0
    if method == "gem" and (not is_whole_number(depth) or not 1 <= n_gem <= len(blocks)):
        raise ValueError(
            f"depth must be between 2 and {len(blocks) + 1} for a tower of {len(blocks)} blocks, got {depth}"
        )
    grid = (pixels.shape[-2] // tower.patch_size[0], pixels.shape[-1] // tower.patch_size[1])
    x = tower.embed(pixels)
    first = len(blocks) - n_gem
    # each branch's output is added to x in the pass of the norm that reads the sum
    pending: Tensor | None = None  # a branch's output not yet added to x
    gem: Tensor | None = None
    for i, block in enumerate(blocks):
        if i >= first and ss_attn_temp is None:  # the temperature reads h's token norms
            x, h, h_norms = add_norm.add_norm_row_norms(x, pending, block.norm1_layer)
        else:
            (x, h), h_norms = add_norm.add_norm(x, pending, block.norm1_layer), None
        q, k, v = block.qkv(h)
        if i >= first:
            if gem is None:  # B·N×C: x plus every block's projection bias, once
                projections = [b.attn_out_affine() for b in blocks[first:]]
                gem = _gem_start(x, projections)
            temp = gem_inverse_temperature(h, q.shape[-1], h_norms) if h_norms is not None else ss_attn_temp
            with torch.set_grad_enabled(torch.is_grad_enabled() and gem_attention_grad):
                ss = self_self_attention(q, k, v, temp, ss_attn_iter)
            projection = projections[i - first]
            if projection is None:
                gem = gem + block.attn_out(ss).reshape(gem.shape)
            else:  # the product added where the sum lies (the fused kernel's heads merge as a view)
                merged = merge_heads(ss).reshape(gem.shape).to(gem.dtype)
                gem = gem.addmm_(merged, projection[0].to(gem.dtype).t())
        if i == len(blocks) - 1 and n_gem and tower.pooled_tokens is not None:
            # after the last block only the pooled tokens of the original path are read: their
            # queries alone (the last block's MLP is 6 % of a ViT-B/16 pass)
            x, q = x[:, : tower.pooled_tokens], q[:, :, : tower.pooled_tokens]
        x, h = add_norm.add_norm(x, block.attn_out(block.attention(q, k, v)), block.norm2_layer)
        pending = block.mlp(h)
    if pending is not None:
        x = x + pending
    if gem is None:
        return TowerOutput(tower.pool(x), tower.project_tokens(x), grid, tower.num_prefix_tokens)
    gem = gem.view(x.shape[0], -1, gem.shape[-1])
    return TowerOutput(tower.pool(x), tower.project_tokens(gem), grid, tower.num_prefix_tokens)


def _gem_start(x: Tensor, projections: list[tuple[Tensor, Tensor | None] | None]) -> Tensor:
    """GEM's sum before the blocks add their products: ``x`` plus the biases of the affine
    output projections (summed in float32), a new B·N×C tensor that the products may add to."""
    biases = [p[1] for p in projections if p is not None and p[1] is not None]
    if not biases:
        return x.reshape(-1, x.shape[-1]).clone()
    bias = torch.stack(biases).float().sum(dim=0).to(x.dtype)
    return (x + bias).reshape(-1, x.shape[-1])
