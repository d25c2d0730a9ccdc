"""Towers are accepted by what their attention has, not by its class.

open_clip's development branch replaces ``nn.MultiheadAttention`` in its blocks with its own
``Attention`` class (which open_clip 3 already uses in its ``custom`` blocks). A block view needs
a fused q/k/v projection, an output projection and the number of heads; the class's q/k norms,
per-head scale and inner norm are applied as the model applies them.
"""

from __future__ import annotations

import copy

import open_clip
import pytest
import torch
from open_clip.model import CLIP

import mmfinercam as mf
from mmfinercam.explain.gem import reference_gem_tokens
from mmfinercam.explain.tower import dense_tokens
from mmfinercam.testing import (
    TINY_VIT_CONFIG,
    build_tiny_open_clip,
    deterministic_image,
    deterministic_state_dict,
)


def _custom(**options) -> CLIP:
    """The tiny CLIP with open_clip's ``Attention`` in every image block."""
    config = copy.deepcopy(TINY_VIT_CONFIG)
    config["vision_cfg"] |= {"block_type": "custom", **options}
    model = CLIP(**config)
    model.load_state_dict(deterministic_state_dict(model, seed=0))
    return model.eval()


def _localizer(model) -> mf.Localizer:
    return mf.Localizer.from_open_clip(model, open_clip.get_tokenizer("ViT-B-16"))


def test_a_tower_with_open_clips_own_attention_gives_the_same_maps():
    """The same weights in ``nn.MultiheadAttention`` blocks and in ``Attention`` blocks give the
    same GEM maps, plain maps and Finer-CAM."""
    plain = build_tiny_open_clip(seed=0)
    custom = _custom()
    custom.load_state_dict(plain.state_dict())
    assert type(custom.visual.transformer.resblocks[0].attn).__name__ == "Attention"
    x = deterministic_image((64, 80), seed=3)
    prompts = ["a bird", "a fish", "a red wing"]
    ours, theirs = _localizer(custom), _localizer(plain)
    for method in ("gem", "raw"):
        torch.testing.assert_close(
            ours.similarity_maps(x, prompts, method=method), theirs.similarity_maps(x, prompts, method=method)
        )
    a = ours.finer_cam(x, "a bird", ["a fish"], method="layercam")
    b = theirs.finer_cam(x, "a bird", ["a fish"], method="layercam")
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("option", ["qk_norm", "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc"])
def test_a_blocks_pieces_compose_to_its_own_forward(option):
    """Each view runs a block in its pieces (norm, q/k/v, attention, output, MLP): with q/k
    norms, a per-head scale, an inner or outer attention norm, or a norm inside the MLP, the
    pieces equal the module's own forward, and GEM's fast path equals its readable twin."""
    model = _custom(**{option: True})
    with torch.no_grad():  # the added norms and scales start at the identity: move them
        for name, p in model.visual.named_parameters():
            if any(k in name for k in ("ln_q", "ln_k", "ln_inner", "ln_attn", "head_scale", "mlp.ln")):
                p.add_(0.3 * torch.randn_like(p))
    tower = _localizer(model).backend.vision
    x = torch.randn(2, 5, 96)
    for block in tower.blocks:
        h = block.norm1(x)
        y = x + block.attn_out(block.attention(*block.qkv(h)))
        y = y + block.mlp(block.norm2(y))
        torch.testing.assert_close(y, block.forward(x), atol=1e-5, rtol=1e-5)
    pixels = deterministic_image(64, seed=1)
    with torch.no_grad():
        fast = dense_tokens(tower, pixels, "gem", depth=5)
        twin = reference_gem_tokens(tower, pixels, depth=5)
    torch.testing.assert_close(fast.tokens, twin.tokens, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fast.global_embedding, twin.global_embedding, atol=1e-5, rtol=1e-4)


def test_attention_that_cannot_be_run_in_pieces_is_refused_in_one_line():
    with pytest.raises(mf.UnsupportedModelError, match="scaled cosine attention"):
        _localizer(_custom(scaled_cosine_attn=True))
    model = build_tiny_open_clip()
    block = model.visual.transformer.resblocks[0]
    block.attn = torch.nn.MultiheadAttention(96, 4, kdim=32, vdim=32)  # separate q/k/v projections
    with pytest.raises(mf.UnsupportedModelError, match=r"fused q/k/v projection \(in_proj_weight\)"):
        _localizer(model)


def test_gems_fast_path_equals_its_readable_twin(tiny_localizer):
    """``GEMPath`` (fused adds and norms, projections summed in one product) and
    ``reference_gem_tokens`` (the paper's formula block by block) agree, at the adaptive
    temperature and at a fixed one."""
    tower = tiny_localizer.backend.vision
    pixels = deterministic_image((64, 96), seed=4)
    with torch.no_grad():
        for temperature in (None, 5.0):
            fast = dense_tokens(tower, pixels, "gem", depth=7, temperature=temperature)
            twin = reference_gem_tokens(tower, pixels, depth=7, temperature=temperature)
            torch.testing.assert_close(fast.tokens, twin.tokens, atol=1e-5, rtol=1e-4)
