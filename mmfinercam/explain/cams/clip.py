"""Gradient CAMs on a CLIP-like model: explain the image-text similarity over its ViT tokens.

The explained outputs are ``y_k = logit_scale * cos(z, t_k)`` over the target and its
contrasts; the CAM layer is the last block's normalized input, laid out on the patch grid.
Finer-CAM explains ``sum_i p_i (y_c - alpha y_i) / sum_i p_i`` over the chosen contrasts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ...backends.base import Backend
from .base import CAMOutput, cam_class
from .layers import TokenGrid
from .targets import ScoreFn, finer_score


def clip_capture(backend: Backend, text: Tensor) -> Callable[[Tensor], tuple[Tensor, list[Tensor]]]:
    """A forward over a CLIP image tower that returns the outputs and the CAM layer.

    Args:
        backend: the model.
        text: K×E normalized text embeddings.

    Returns:
        ``capture(pixels) -> (logit_scale * cos(z, t_k) as B×K, [last block's normalized
        input tokens])``.
    """
    tower = backend.vision
    scale = backend.logit_scale

    def capture(pixels: Tensor) -> tuple[Tensor, list[Tensor]]:
        x = tower.embed(pixels.to(backend.device, backend.dtype))
        *early, last = tower.blocks
        for block in early:
            x = block.forward(x)
        h = last.norm1(x.detach().requires_grad_(True))
        q, k, v = last.qkv(h)
        x = x + last.attn_out(last.attention(q, k, v))
        z = F.normalize(tower.pool(last.mlp_residual(x)).float(), dim=-1)
        return scale * z @ text.T, [h]

    return capture


def clip_cam(backend: Backend, method: str = "gradcam") -> Callable[[Tensor, Tensor, ScoreFn], CAMOutput]:
    """A registered CAM over a CLIP backend.

    Args:
        backend: the model.
        method: a name registered with :func:`~.base.register_cam`.

    Returns:
        ``run(pixels, text, score) -> CAMOutput``.
    """
    grid = TokenGrid(num_prefix=backend.vision.num_prefix_tokens, patch=backend.vision.patch_size)
    cam = cam_class(method)

    def run(pixels: Tensor, text: Tensor, score: ScoreFn) -> CAMOutput:
        return cam(backend.model, reshape=grid, capture=clip_capture(backend, text))(pixels, score)

    return run


def clip_finer_cam(
    backend: Backend,
    method: str,
    pixels: Tensor,
    text: Tensor,
    target: Tensor,
    contrast: Tensor,
    alpha: float,
) -> tuple[Tensor, Tensor]:
    """Gradient Finer-CAM on CLIP for a batch with one prompt set an image.

    Args:
        backend: the model.
        method: a registered CAM.
        pixels: B×3×H×W preprocessed images.
        text: P×E normalized text embeddings (the run's bank).
        target: B bank indices of each image's target.
        contrast: B×D bank indices of its contrasts.
        alpha: the contrast strength.

    Returns:
        B×h×w raw CAM maps (the layer's weighted sums, before ReLU) and the B×D weights
        ``p_i / sum p_i``.
    """
    out = clip_cam(backend, method)(pixels, text, finer_score(target, contrast, alpha))
    p = torch.softmax(out.outputs, dim=-1).gather(1, contrast)
    return out.layer_maps[0], p / (p.sum(dim=1, keepdim=True) + 1e-9)
