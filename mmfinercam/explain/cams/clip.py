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
from .base import CAM_METHODS, CAMOutput, cam_class
from .layers import TokenGrid
from .targets import ScoreFn, finer_score

#: a gradient explainer of one CLIP model: ``run(pixels, text, score) -> CAMOutput``
ClipRun = Callable[[Tensor, Tensor, ScoreFn], CAMOutput]

#: gradient explainers of a CLIP tower that are not a layer CAM, by name: ``make(backend) -> run``
CLIP_EXPLAINERS: dict[str, Callable[[Backend], ClipRun]] = {}


def register_clip_explainer(name: str, make: Callable[[Backend], ClipRun]) -> Callable[[Backend], ClipRun]:
    """Make a gradient explainer of CLIP towers available by name (beside the layer CAMs).

    Args:
        name: what users call it (``method="legrad"``).
        make: ``make(backend) -> run(pixels, text, score) -> CAMOutput``.

    Returns:
        ``make``.
    """
    CLIP_EXPLAINERS[name] = make
    return make


def gradient_methods() -> list[str]:
    """Every gradient method of a CLIP model: the layer CAMs, then the other explainers.

    Returns:
        Their names.
    """
    return [*CAM_METHODS, *CLIP_EXPLAINERS]


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


def clip_cam(backend: Backend, method: str = "gradcam") -> ClipRun:
    """A registered gradient method over a CLIP backend.

    Args:
        backend: the model.
        method: a name registered with :func:`register_clip_explainer` or, for a CAM over the
            last block's normalized input, with :func:`~.base.register_cam`.

    Returns:
        ``run(pixels, text, score) -> CAMOutput``.

    Raises:
        ConfigError: for an unknown name.
    """
    if method in CLIP_EXPLAINERS:
        return CLIP_EXPLAINERS[method](backend)
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
        B×h×w raw maps (a CAM's weighted sums before ReLU, LeGrad's relevance) and the B×D
        weights ``p_i / sum p_i``.
    """
    out = clip_cam(backend, method)(pixels, text, finer_score(target, contrast, alpha))
    p = torch.softmax(out.outputs, dim=-1).gather(1, contrast)
    return out.layer_maps[0], p / (p.sum(dim=1, keepdim=True) + 1e-9)
