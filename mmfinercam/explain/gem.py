"""GEM: spatially faithful ViT patch tokens from self-self attention.

Bousselham et al., "Grounding Everything: Emerging Localization Properties in Vision-Language
Transformers", CVPR 2024 (https://arxiv.org/abs/2312.00878); reference code ``gem_torch``.

The last ``depth - 1`` blocks of the image transformer get a parallel path that carries only
attention outputs. In each such block the queries, keys and values of the block's normalized
input are each refined by self-self attention (``u <- softmax(t * u u^T) u`` on L2-normalized
``u``), a final self-self attention of each is applied to the values, the three results are
averaged, and the block's own output projection maps them back:

    gem = x_first + sum_blocks attn_out(mean_{u in q,k,v} softmax(t n(u) n(u)^T) v)

The original path keeps running unchanged and feeds every block its input. The inverse
temperature ``t`` defaults to GEM's adaptive one, the mean token norm of the block's
normalized input times ``head_dim ** -0.5``.

:class:`GEMPath` is the fast path (:func:`~mmfinercam.explain.tower.run_tower`'s hook, fused
kernels on a GPU, the blocks' projections summed in one product); :func:`reference_gem_tokens`
is its readable twin, written as the paper states it. Both agree with ``gem_torch``
(``GEMWrapper``, ``ss_attn_temp=None``) to float rounding (``tests/test_gem_reference.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import kernels
from ..backends._ops import merge_heads
from ..backends.base import TransformerBlock, VisionTower
from .tower import DenseMethod, TowerOutput, register_dense_method

#: the fused kernel's switch (:mod:`mmfinercam.kernels`): ``with fused_attention(False):``
fused_attention = kernels.fused_attention


def gem_inverse_temperature(h: Tensor, head_dim: int, token_norms: Tensor | None = None) -> Tensor:
    """GEM's default inverse temperature: mean token norm of ``h`` times ``head_dim ** -0.5``.

    Args:
        h: B×N×C normalized tokens of a block.
        head_dim: the attention's head size.
        token_norms: B×N ``h.norm(dim=-1)`` where already at hand.

    Returns:
        B×1×1×1, one temperature an image.
    """
    norms = h.norm(dim=-1) if token_norms is None else token_norms
    return norms.mean(dim=-1).view(-1, 1, 1, 1) * head_dim**-0.5


def self_self_attention(
    q: Tensor, k: Tensor, v: Tensor, inv_temp: Tensor | float, iterations: int = 1
) -> Tensor:
    """GEM's attention for one block.

    In half precision on a GPU (and without gradients) it runs in the fused kernels of
    :mod:`mmfinercam.kernels`. Otherwise the three streams run stacked as one batch through
    scaled-dot-product attention; a per-image temperature is folded into the queries, a single
    number is SDPA's scale.

    Args:
        q: B×heads×N×head_dim queries.
        k: keys, the same shape.
        v: values, the same shape.
        inv_temp: one inverse temperature, or one an image (B×1×1×1).
        iterations: self-self rounds before the final one.

    Returns:
        B×heads×N×head_dim, the mean of the three streams' outputs.
    """
    if kernels.self_self_attention_applies(q, k, v):
        return kernels.self_self_attention(q, k, v, inv_temp, iterations)
    if isinstance(inv_temp, Tensor):  # one temperature per image: scale the queries
        weight: Tensor | None = inv_temp.view(1, -1, 1, 1, 1).to(v.dtype)
        scale = 1.0
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


class GEMPath:
    """GEM's parallel path as a :class:`~mmfinercam.explain.tower.TokenPath`.

    Args:
        tower: the tower it runs in.
        depth: GEM's depth: the last ``depth - 1`` blocks get the path.
        temperature: the inverse temperature; None for GEM's adaptive default.
        iterations: self-self rounds before the final one.
        attention_grad: False stops gradients through the self-self attention (its outputs
            still reach the tokens through the blocks' output projections): training through
            the path then costs about a third; inference is unaffected.
    """

    def __init__(
        self,
        tower: VisionTower,
        depth: int,
        temperature: float | None = None,
        iterations: int = 1,
        attention_grad: bool = True,
    ) -> None:
        self.first = len(tower.blocks) - (depth - 1)
        self.needs_row_norms = temperature is None  # the adaptive temperature reads them
        self.temperature, self.iterations, self.attention_grad = temperature, iterations, attention_grad
        self.blocks = tower.blocks
        self._sum: Tensor | None = None
        self._projections: list[tuple[Tensor, Tensor | None] | None] = []

    def begin(self, grid: tuple[int, int]) -> None:
        """Start a pass: the sum starts afresh at the first block.

        Args:
            grid: the patch grid (GEM's attention needs no layout).
        """
        self._sum = None

    def attention(self, q: Tensor, k: Tensor, v: Tensor, h: Tensor, h_norms: Tensor | None) -> Tensor:
        """The path's attention in one block: GEM's self-self attention.

        Args:
            q: B×heads×N×head_dim queries.
            k: keys, the same shape.
            v: values, the same shape.
            h: the block's normalized input (for the adaptive temperature).
            h_norms: the L2 norms of ``h``'s rows, where at hand.

        Returns:
            B×heads×N×head_dim outputs.
        """
        temp = self.temperature
        if temp is None:
            temp = gem_inverse_temperature(h, q.shape[-1], h_norms)  # type: ignore[assignment]
        return self_self_attention(q, k, v, temp, self.iterations)  # type: ignore[arg-type]

    def block(
        self,
        i: int,
        block: TransformerBlock,
        x: Tensor,
        h: Tensor,
        h_norms: Tensor | None,
        qkv: tuple[Tensor, Tensor, Tensor],
    ) -> None:
        """Add block ``i``'s attention (:meth:`attention`) to the path's sum.

        Args:
            i: the block's index.
            block: its view.
            x: B×N×C tokens entering it.
            h: their normalization.
            h_norms: the L2 norms of ``h``'s rows (for the adaptive temperature).
            qkv: the block's queries, keys and values.
        """
        q, k, v = qkv
        if self._sum is None:  # B·N×C: x plus every block's projection bias, once
            self._projections = [b.attn_out_affine() for b in self.blocks[self.first :]]
            self._sum = _gem_start(x, self._projections)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.attention_grad):
            ss = self.attention(q, k, v, h, h_norms)
        projection = self._projections[i - self.first]
        if projection is None:
            self._sum = self._sum + block.attn_out(ss).reshape(self._sum.shape)
        else:  # the product added where the sum lies (the fused kernel's heads merge as a view)
            merged = merge_heads(ss).reshape(self._sum.shape).to(self._sum.dtype)
            self._sum = self._sum.addmm_(merged, projection[0].to(self._sum.dtype).t())

    def tokens(self, x: Tensor) -> Tensor:
        """GEM's tokens: the path's sum, laid out B×N×C.

        Args:
            x: the original path's final tokens (for the batch size).

        Returns:
            B×N×C tokens.
        """
        assert self._sum is not None, "the path saw no block"
        return self._sum.view(x.shape[0], -1, self._sum.shape[-1])


def _gem_start(x: Tensor, projections: list[tuple[Tensor, Tensor | None] | None]) -> Tensor:
    """GEM's sum before the blocks add their products: ``x`` plus the biases of the affine
    output projections (summed in float32), a new B·N×C tensor that the products may add to."""
    biases = [p[1] for p in projections if p is not None and p[1] is not None]
    if not biases:
        return x.reshape(-1, x.shape[-1]).clone()
    bias = torch.stack(biases).float().sum(dim=0).to(x.dtype)
    return (x + bias).reshape(-1, x.shape[-1])


def reference_gem_tokens(
    tower: VisionTower, pixels: Tensor, depth: int = 7, temperature: float | None = None, iterations: int = 1
) -> TowerOutput:
    """GEM as the paper states it, block by block, with no fusion: the readable twin.

    Args:
        tower: the model's tower view.
        pixels: B×3×H×W preprocessed images.
        depth: GEM's depth.
        temperature: the inverse temperature; None for the adaptive default.
        iterations: self-self rounds before the final one.

    Returns:
        The pooled embedding and GEM's tokens, as :class:`GEMPath` gives them.
    """
    x = tower.embed(pixels)
    first = len(tower.blocks) - (depth - 1)
    gem: Tensor | None = None
    for i, block in enumerate(tower.blocks):
        if i >= first:
            gem = x if gem is None else gem
            h = block.norm1(x)
            q, k, v = block.qkv(h)
            t = gem_inverse_temperature(h, q.shape[-1]) if temperature is None else temperature
            outputs = []
            for u in (q, k, v):
                for _ in range(iterations):
                    n = F.normalize(u, dim=-1)
                    u = torch.softmax(t * n @ n.transpose(-1, -2), dim=-1) @ n
                n = F.normalize(u, dim=-1)
                outputs.append(torch.softmax(t * n @ n.transpose(-1, -2), dim=-1) @ v)
            gem = gem + block.attn_out(torch.stack(outputs).mean(dim=0))
        x = block.forward(x)
    grid = (pixels.shape[-2] // tower.patch_size[0], pixels.shape[-1] // tower.patch_size[1])
    assert gem is not None, "depth leaves no GEM block"
    return TowerOutput(tower.pool(x), tower.project_tokens(gem), grid, tower.num_prefix_tokens)


GEM = register_dense_method(
    DenseMethod(
        "gem",
        "GEM self-self attention over the last blocks (Bousselham et al., CVPR 2024)",
        lambda tower, depth, temperature: GEMPath(tower, depth, temperature),
        uses_depth=True,
    )
)
