"""A backend whose tokens are known in closed form, to test the contrast math end to end.

Pixels map linearly to token features: red -> e1, green -> e0, blue -> e3 (per patch, averaged).
Text embeddings are fixed vectors. The tower has no blocks: only method="raw" applies.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfinercam.backends._ops import ModuleFn, call_module
from mmfinercam.backends.base import Backend, ImageConfig, ModelInfo, VisionTower

DIM = 8
PATCH = 8


def basis(*idx: int) -> Tensor:
    v = torch.zeros(DIM)
    for i in idx:
        v[i] = 1.0
    return v


class LinearPatchTower(VisionTower):
    def __init__(self, mixing: nn.Module):
        self.mixing = mixing
        self.patch_size = (PATCH, PATCH)
        self.num_prefix_tokens = 0
        self.blocks = []

    def embed(self, pixels: Tensor, apply: ModuleFn = call_module) -> Tensor:
        pooled = F.avg_pool2d(pixels, PATCH)  # B×3×h×w
        return self.mixing(pooled.flatten(2).transpose(1, 2))  # B×N×DIM

    def pool(self, x: Tensor) -> Tensor:
        return x.mean(dim=1)

    def project_tokens(self, x: Tensor, apply: ModuleFn = call_module) -> Tensor:
        return x


class SyntheticBackend(Backend):
    """red -> e1, green -> e0, blue -> e3; texts from a dict of vectors."""

    def __init__(self, texts: dict[str, Tensor], logit_scale: float = 100.0):
        mixing = nn.Linear(3, DIM, bias=False)
        with torch.no_grad():
            mixing.weight.zero_()
            mixing.weight[1, 0] = 1.0  # red
            mixing.weight[0, 1] = 1.0  # green
            mixing.weight[3, 2] = 1.0  # blue
        self.model = nn.Sequential(mixing)
        self.vision = LinearPatchTower(mixing)
        self.image_config = ImageConfig(size=(64, 64), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        self.info = ModelInfo(name="synthetic", templates=["{}"])
        self.texts = texts
        self._logit_scale = logit_scale

    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        return torch.stack([self.texts[p] for p in prompts])

    @property
    def logit_scale(self) -> float:
        return self._logit_scale


def bird_image(height: int = 64, width: int = 64, wing=(slice(24, 40), slice(32, 48))) -> Tensor:
    """Blue background, green bird body, red+green wing patch: a 3×H×W tensor in [0, 1]."""
    img = torch.zeros(3, height, width)
    img[2] = 1.0
    img[:, 16:56, 8:56] = torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1)
    img[0][wing] = 1.0
    return img
