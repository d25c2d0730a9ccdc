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
    """A full state dict for ``model`` whose values depend only on names, shapes and ``seed``."""
    out = {}
    for name, value in model.state_dict().items():
        if not value.is_floating_point():
            out[name] = value
            continue
        gen = torch.Generator().manual_seed(zlib.crc32(name.encode()) + 1000003 * seed)
        out[name] = _init_tensor(name, value.shape, gen).to(value.dtype)
    return out


def deterministic_image(size: int | tuple[int, int], seed: int = 0) -> torch.Tensor:
    """A reproducible 1×3×H×W input with smooth structure (not white noise)."""
    h, w = (size, size) if isinstance(size, int) else size
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 3, max(h // 16, 2), max(w // 16, 2), generator=gen)
    fine = torch.randn(1, 3, h, w, generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return smooth + 0.25 * fine


def build_tiny_open_clip(seed: int = 0, config: dict[str, Any] | None = None) -> nn.Module:
    """The tiny open_clip CLIP of :data:`TINY_VIT_CONFIG` with deterministic weights."""
    from open_clip.model import CLIP

    model = CLIP(**(config or TINY_VIT_CONFIG))
    model.load_state_dict(deterministic_state_dict(model, seed))
    return model.eval()
