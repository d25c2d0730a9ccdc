"""Helpers for tests and reference scripts: small model configs and reproducible weights.

Weights made by :func:`deterministic_state_dict` depend only on each tensor's name, shape and a
seed, never on module construction order, so the same model built by two open_clip releases
gets identical weights. That is how the GEM reference maps in ``tests/data`` are reproduced
without shipping a checkpoint.
"""

from __future__ import annotations

import zlib
from typing import Any

import torch
from torch import nn

#: A small open_clip ViT with enough blocks for GEM's default depth 7.
TINY_VIT_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {
        "image_size": 224,
        "layers": 8,
        "width": 96,
        "head_width": 24,
        "patch_size": 16,
        "mlp_ratio": 4.0,
    },
    "text_cfg": {
        "context_length": 77,
        "vocab_size": 49408,
        "width": 64,
        "heads": 2,
        "layers": 2,
    },
}


def _init_tensor(name: str, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
    randn = torch.randn(shape, generator=gen, dtype=torch.float32)
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith("logit_scale"):
        return torch.full(shape, 2.6592)  # log(1 / 0.07), CLIP's initial temperature
    if len(shape) == 0:
        return randn * 0.02
    if len(shape) == 1:
        if leaf == "weight" or leaf == "gamma":  # norms and layer scales
            return 1.0 + 0.1 * randn
        if leaf == "class_embedding":
            return randn * shape[0] ** -0.5
        return 0.02 * randn  # biases
    if leaf in ("positional_embedding", "token_embedding", "weight") and "token_embedding" in name:
        return 0.02 * randn
    if leaf == "positional_embedding":
        return 0.1 * randn
    if leaf in ("proj", "text_projection"):  # stored (in, out), used as x @ proj
        return randn * shape[0] ** -0.5
    fan_in = shape.numel() // shape[0]
    return randn * fan_in**-0.5


def deterministic_state_dict(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A full state dict whose values depend only on names, shapes and a seed.

    Args:
        model: the model whose state dict's names and shapes are used.
        seed: the seed.

    Returns:
        Name -> tensor.
    """
    out = {}
    for name, value in model.state_dict().items():
        if not value.is_floating_point():
            out[name] = value
            continue
        gen = torch.Generator().manual_seed(zlib.crc32(name.encode()) + 1000003 * seed)
        out[name] = _init_tensor(name, value.shape, gen).to(value.dtype)
    return out


def deterministic_image(size: int | tuple[int, int], seed: int = 0) -> torch.Tensor:
    """A reproducible input with smooth structure (not white noise).

    Args:
        size: the side, or (height, width).
        seed: the seed.

    Returns:
        1×3×H×W.
    """
    h, w = (size, size) if isinstance(size, int) else size
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 3, max(h // 16, 2), max(w // 16, 2), generator=gen)
    fine = torch.randn(1, 3, h, w, generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return smooth + 0.25 * fine


def build_tiny_open_clip(seed: int = 0, config: dict[str, Any] | None = None) -> nn.Module:
    """A tiny open_clip CLIP with deterministic weights.

    Args:
        seed: the weights' seed.
        config: the model config (default :data:`TINY_VIT_CONFIG`).

    Returns:
        The model in eval mode.
    """
    from open_clip.model import CLIP

    model = CLIP(**(config or TINY_VIT_CONFIG))
    model.load_state_dict(deterministic_state_dict(model, seed))
    return model.eval()


def open_clip_to_transformers(model: Any) -> nn.Module:
    """A transformers ``CLIPModel`` holding the same weights as an open_clip ViT CLIP.

    Supports the plain open_clip layout (GELU or QuickGELU, pre-norm blocks, CLS pooling,
    projections); used by the parity tests between the two backends.

    Args:
        model: the open_clip model.

    Returns:
        The transformers model in eval mode.

    Raises:
        ValueError: when the weights do not map completely.
    """
    from transformers import CLIPConfig, CLIPModel

    v, t = model.visual, model.transformer
    vb, tb = v.transformer.resblocks, t.resblocks
    width_v, width_t = v.conv1.out_channels, model.token_embedding.embedding_dim
    act = "quick_gelu" if type(vb[0].mlp.gelu).__name__ == "QuickGELU" else "gelu"
    cfg = CLIPConfig(
        projection_dim=v.proj.shape[1],
        vision_config=dict(
            hidden_size=width_v,
            intermediate_size=vb[0].mlp.c_fc.out_features,
            num_hidden_layers=len(vb),
            num_attention_heads=vb[0].attn.num_heads,
            image_size=v.image_size[0],
            patch_size=v.patch_size[0],
            hidden_act=act,
            layer_norm_eps=1e-5,
        ),
        text_config=dict(
            hidden_size=width_t,
            intermediate_size=tb[0].mlp.c_fc.out_features,
            num_hidden_layers=len(tb),
            num_attention_heads=tb[0].attn.num_heads,
            vocab_size=model.vocab_size,
            max_position_embeddings=model.context_length,
            hidden_act=act,
            layer_norm_eps=1e-5,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=0,
        ),
    )
    hf = CLIPModel(cfg).eval()
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": sd["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": sd["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": sd["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": sd["visual.ln_post.bias"],
        "visual_projection.weight": sd["visual.proj"].T,
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "text_model.final_layer_norm.weight": sd["ln_final.weight"],
        "text_model.final_layer_norm.bias": sd["ln_final.bias"],
        "text_projection.weight": sd["text_projection"].T,
        "logit_scale": sd["logit_scale"],
    }
    for src, dst, n in (
        ("visual.transformer", "vision_model.encoder", len(vb)),
        ("transformer", "text_model.encoder", len(tb)),
    ):
        for i in range(n):
            a, b = f"{src}.resblocks.{i}", f"{dst}.layers.{i}"
            q, k, val = sd[f"{a}.attn.in_proj_weight"].chunk(3)
            qb, kb, vb_ = sd[f"{a}.attn.in_proj_bias"].chunk(3)
            out.update(
                {
                    f"{b}.self_attn.q_proj.weight": q,
                    f"{b}.self_attn.q_proj.bias": qb,
                    f"{b}.self_attn.k_proj.weight": k,
                    f"{b}.self_attn.k_proj.bias": kb,
                    f"{b}.self_attn.v_proj.weight": val,
                    f"{b}.self_attn.v_proj.bias": vb_,
                    f"{b}.self_attn.out_proj.weight": sd[f"{a}.attn.out_proj.weight"],
                    f"{b}.self_attn.out_proj.bias": sd[f"{a}.attn.out_proj.bias"],
                    f"{b}.layer_norm1.weight": sd[f"{a}.ln_1.weight"],
                    f"{b}.layer_norm1.bias": sd[f"{a}.ln_1.bias"],
                    f"{b}.layer_norm2.weight": sd[f"{a}.ln_2.weight"],
                    f"{b}.layer_norm2.bias": sd[f"{a}.ln_2.bias"],
                    f"{b}.mlp.fc1.weight": sd[f"{a}.mlp.c_fc.weight"],
                    f"{b}.mlp.fc1.bias": sd[f"{a}.mlp.c_fc.bias"],
                    f"{b}.mlp.fc2.weight": sd[f"{a}.mlp.c_proj.weight"],
                    f"{b}.mlp.fc2.bias": sd[f"{a}.mlp.c_proj.bias"],
                }
            )
    missing, unexpected = hf.load_state_dict(out, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"state dict mapping incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return hf
