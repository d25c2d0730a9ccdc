"""The gradient CAMs, each a short subclass of :class:`~.base.BaseCAM`, registered by name."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import BaseCAM, register_cam
from .targets import ScoreFn


class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al., ICCV 2017, https://arxiv.org/abs/1610.02391).

    Channel weights are the spatially averaged gradients:
    ``w_k = mean_ij dy/dA_kij``, map ``sum_k w_k A_k``.

    Example:
        >>> cam = ClassifierFinerCAM(model, method="gradcam")
    """

    def channel_weights(self, activations: Tensor, grads: Tensor) -> Tensor:  # noqa: D102 - the base's
        return grads.mean(dim=(2, 3))


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++ (Chattopadhyay et al., WACV 2018, https://arxiv.org/abs/1710.11063).

    Higher-order weighting of positive gradients (their eq. 19):
    ``w_k = sum_ij a_kij relu(g_kij)``, ``a = g² / (2 g² + sum_ij A_k · g³)``.
    """

    def channel_weights(self, activations: Tensor, grads: Tensor) -> Tensor:  # noqa: D102 - the base's
        g2 = grads.pow(2)
        sum_a = activations.sum(dim=(2, 3), keepdim=True)
        aij = g2 / (2 * g2 + sum_a * g2 * grads + 1e-6)
        aij = torch.where(grads != 0, aij, torch.zeros_like(aij))
        return (grads.clamp_min(0) * aij).sum(dim=(2, 3))


class XGradCAM(BaseCAM):
    """XGrad-CAM (Fu et al., BMVC 2020, https://arxiv.org/abs/2008.02312).

    Gradients averaged with each location's share of its channel's activation as the weight
    (axiom-based Grad-CAM): ``w_k = sum_ij g_kij A_kij / sum_ij A_kij``.
    """

    def channel_weights(self, activations: Tensor, grads: Tensor) -> Tensor:  # noqa: D102 - the base's
        share = activations / (activations.sum(dim=(2, 3), keepdim=True) + 1e-7)
        return (grads * share).sum(dim=(2, 3))


class HiResCAM(BaseCAM):
    """HiResCAM (Draelos & Carin, 2020, https://arxiv.org/abs/2011.08891).

    Gradients times activations summed over channels, location by location, without Grad-CAM's
    spatial averaging: ``sum_k g_kij A_kij``. The map sums to the explained score's first-order
    change, so it cannot show a region the model did not use.
    """

    def layer_cam(self, activations: Tensor, grads: Tensor | None, images: Tensor, score: ScoreFn) -> Tensor:  # noqa: D102
        assert grads is not None
        return (grads * activations).sum(dim=1)


class LayerCAM(BaseCAM):
    """Layer-CAM (Jiang et al., IEEE TIP 2021, https://doi.org/10.1109/TIP.2021.3089943).

    Each location weighted by its own positive gradient: ``sum_k relu(g_kij) A_kij``.
    """

    def layer_cam(self, activations: Tensor, grads: Tensor | None, images: Tensor, score: ScoreFn) -> Tensor:  # noqa: D102
        assert grads is not None
        return (grads.clamp_min(0) * activations).sum(dim=1)


class ScoreCAM(BaseCAM):
    """Score-CAM (Wang et al., CVPR workshops 2020, https://arxiv.org/abs/1910.01279).

    Gradient-free: each channel's upsampled, min-max scaled map masks the input, and the score
    of the masked batch (softmax over channels) weighs the channel,
    ``w = softmax_k(score(x ⊙ norm(up(A_k))))``, as pytorch-grad-cam's ``ScoreCAM`` does it
    (the tests compare). Channels are scored in batches of ``batch_size`` masked images.
    """

    uses_gradients = False
    batch_size = 64

    def layer_cam(self, activations: Tensor, grads: Tensor | None, images: Tensor, score: ScoreFn) -> Tensor:  # noqa: D102
        forward = lambda x: self.forward_with_activations(x)[0]  # noqa: E731
        b, c = activations.shape[:2]
        # as the reference: corner-aligned bilinear upsampling, min-max with 1e-8 (a flat channel masks all)
        up = F.interpolate(activations, size=images.shape[-2:], mode="bilinear", align_corners=True)
        flat = up.flatten(2)
        lo, hi = flat.min(dim=2).values, flat.max(dim=2).values
        up = (up - lo[..., None, None]) / (hi - lo + 1e-8)[..., None, None]
        weights = torch.empty(b, c, device=activations.device)
        for i in range(b):
            scores = []
            for j in range(0, c, self.batch_size):
                masked = images[i : i + 1] * up[i, j : j + self.batch_size, None]
                out = forward(masked)
                scores.append(score(out, torch.full((len(out),), i, device=out.device)))
            weights[i] = torch.softmax(torch.cat(scores), dim=0)
        return (weights[:, :, None, None] * activations).sum(dim=1)


register_cam("gradcam", GradCAM)
register_cam("gradcam++", GradCAMPlusPlus)
register_cam("xgradcam", XGradCAM)
register_cam("hirescam", HiResCAM)
register_cam("layercam", LayerCAM)
register_cam("scorecam", ScoreCAM)
