"""View of a timm VisionTransformer image tower (open_clip's ``TimmModel``: its SigLIPs and others).

Pooling follows the trunk: CLS token, average, or a latent attention pool (``map``, SigLIP).
With attention pooling, a patch token is mapped into the joint space by the pool applied to that
token alone (attention over one key is the identity: the value and output projections and the
pool's MLP remain), as for the transformers SigLIP.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from ._ops import ModuleFn, call_module, fold_layer_scale, merge_heads, patch_embed, resample_pos_embed
from .base import TransformerBlock, VisionTower


class TimmBlock(TransformerBlock):
    """View of ``timm.models.vision_transformer.Block``.

    Args:
        block: a timm pre-norm block.

    Raises:
        UnsupportedModelError: for a block that is not pre-norm with a fused qkv projection
            (timm's ``ResPostBlock`` normalizes after each branch, its parallel blocks run both
            at once).
    """

    def __init__(self, block: Any) -> None:
        attn: Any = getattr(block, "attn", None)
        pre_norm = all(hasattr(block, a) for a in ("norm1", "ls1", "norm2", "mlp", "ls2"))
        if not (pre_norm and hasattr(attn, "qkv") and hasattr(attn, "proj")):
            # timm's ResPostBlock normalizes after each branch, its parallel blocks run both at once
            raise UnsupportedModelError(
                f"GEM needs timm's pre-norm Block (norm1, attn with a fused qkv projection, ls1, norm2, "
                f"mlp, ls2); got {type(block).__name__}"
            )
        self.block = block
        self.attn = attn
        self.num_heads = int(attn.num_heads)
        self.attention_scale = float(attn.scale)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - the interface's
        return self.block(x)

    @property
    def norm1(self) -> nn.Module:  # noqa: D102 - the interface's
        return self.block.norm1

    @property
    def norm2(self) -> nn.Module:  # noqa: D102
        return self.block.norm2

    def qkv(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # noqa: D102 - the interface's
        b, n, c = h.shape
        qkv = self.attn.qkv(h).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return self.attn.q_norm(q), self.attn.k_norm(k), v

    def attn_out(self, o: Tensor) -> Tensor:  # noqa: D102 - the interface's
        return self.block.ls1(self.attn.proj(self.attn.norm(merge_heads(o))))

    def attn_out_affine(self) -> tuple[Tensor, Tensor | None] | None:  # noqa: D102 - the interface's
        if not isinstance(getattr(self.attn, "norm", nn.Identity()), nn.Identity):
            return None  # a norm over the merged heads comes first
        return fold_layer_scale(self.attn.proj, self.block.ls1)

    def mlp(self, h: Tensor, apply: ModuleFn = call_module) -> Tensor:  # noqa: D102
        return self.block.ls2(self.block.mlp(h))


class TimmVisionTower(VisionTower):
    """An open_clip ``TimmModel``: ``trunk`` a timm VisionTransformer, ``head`` the projection.

    Args:
        visual: the open_clip model's image tower.

    Raises:
        UnsupportedModelError: when its trunk is no timm VisionTransformer.
    """

    def __init__(self, visual: Any) -> None:
        trunk = getattr(visual, "trunk", None)
        if trunk is None or not hasattr(trunk, "blocks") or not hasattr(trunk, "patch_embed"):
            raise UnsupportedModelError(
                f"GEM needs a timm VisionTransformer trunk; got {type(trunk).__name__}"
            )
        self.visual = visual
        self.trunk = trunk
        self.blocks = [TimmBlock(b) for b in trunk.blocks]
        ps = trunk.patch_embed.patch_size
        self.patch_size = (int(ps[0]), int(ps[1]))
        self.grid_size = (int(trunk.patch_embed.grid_size[0]), int(trunk.patch_embed.grid_size[1]))
        self.num_prefix_tokens = int(trunk.num_prefix_tokens)
        by_class_token = trunk.global_pool == "token" and getattr(trunk, "attn_pool", None) is None
        self.pooled_tokens = 1 if by_class_token else None

    def embed(self, pixels: Tensor, apply: ModuleFn = call_module) -> Tensor:  # noqa: D102
        t = self.trunk
        pe = t.patch_embed
        x, (gh, gw) = patch_embed(pixels, pe.proj)
        b = x.shape[0]
        x = pe.norm(x)
        prefix = [
            tok.expand(b, -1, -1) for tok in (t.cls_token, getattr(t, "reg_token", None)) if tok is not None
        ]
        pos = t.pos_embed[0]
        if getattr(t, "no_embed_class", False) or not prefix:
            x = x + resample_pos_embed(pos, (gh, gw), self.grid_size, 0).to(x.dtype)
            x = torch.cat([*prefix, x], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1)
            x = x + resample_pos_embed(pos, (gh, gw), self.grid_size, self.num_prefix_tokens).to(x.dtype)
        return apply(x, t.norm_pre)

    def pool(self, x: Tensor) -> Tensor:  # noqa: D102 - the interface's
        return self.visual.head(self.trunk.forward_head(self.trunk.norm(x)))

    def project_tokens(self, x: Tensor, apply: ModuleFn = call_module) -> Tensor:  # noqa: D102
        t = self.trunk
        x = apply(x, t.norm)
        pool = getattr(t, "attn_pool", None)
        if pool is not None:
            c = x.shape[-1]
            v = F.linear(x, pool.kv.weight[c:], pool.kv.bias[c:] if pool.kv.bias is not None else None)
            x = pool.proj(v)
            if pool.mlp is not None:
                x = x + pool.mlp(pool.norm(x))
        return self.visual.head(t.head(t.fc_norm(x)))
