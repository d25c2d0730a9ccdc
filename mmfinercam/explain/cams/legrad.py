"""LeGrad: how sensitive each layer's image feature is to its attention, read off the gradient.

Bousselham et al., "LeGrad: An Explainability Method for Vision Transformers via Feature
Formation Sensitivity", 2024 (https://arxiv.org/abs/2404.03214); reference code
``WalBouss/LeGrad`` (``LeWrapper.compute_legrad_clip``, open_clip <= 2.23).

For each of the last blocks ``l`` (two by default, the reference's ``layer_index=-2``) the
block's output tokens are averaged (every token, the class token too), put through the tower's
final norm and projection and compared with the texts: a score ``s_l``. The gradient of ``s_l``
with respect to that block's attention probabilities is clipped at 0, averaged over heads and
over the attending tokens, and read at each patch; the blocks' maps are summed:

    legrad(p) = sum_l mean_{heads, rows} relu(d s_l / d A_l)[:, :, p]

What is explained is a score function, as for the gradient CAMs: a prompt's logit, or
Finer-CAM's contrast of the target with its contrasts (:func:`~.targets.finer_score`), whose
gradient is the target's minus the weighted contrasts' before the clipping. The reference
scores ``t . f_l``; the logits here are ``logit_scale`` times that, which the final min-max
scaling removes.

Defined for towers that pool a class token (CLIP); a tower that pools by attention (SigLIP) is
refused in one line.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...backends.base import Backend
from ...errors import UnsupportedModelError
from .base import CAMOutput, cam_heatmap
from .clip import ClipRun, register_clip_explainer
from .targets import ScoreFn

#: how many of the last blocks are read (the reference's ``layer_index=-2``)
LEGRAD_LAYERS = 2


def legrad(backend: Backend, layers: int = LEGRAD_LAYERS) -> ClipRun:
    """LeGrad over a CLIP backend's image tower.

    Args:
        backend: the model.
        layers: how many of the last blocks are read.

    Returns:
        ``run(pixels, text, score) -> CAMOutput``: the heatmaps, the B×h×w summed relevance
        as the one layer map, and the B×K logits of the model's own embedding.

    Raises:
        UnsupportedModelError: for a tower that does not pool a class token.
    """
    tower = backend.vision
    if tower.pooled_tokens != 1:
        raise UnsupportedModelError(
            "legrad is defined here for towers that pool a class token (CLIP); this one pools by "
            "attention or averaging (SigLIP): use a dense method or a gradient CAM"
        )
    start = len(tower.blocks) - layers
    scale, prefix = backend.logit_scale, tower.num_prefix_tokens

    def run(pixels: Tensor, text: Tensor, score: ScoreFn) -> CAMOutput:
        with torch.inference_mode(False):  # gradients, also within a caller's inference mode
            return explain(pixels.clone() if pixels.is_inference() else pixels, text.clone(), score)

    def explain(pixels: Tensor, text: Tensor, score: ScoreFn) -> CAMOutput:
        pixels = pixels.to(backend.device, backend.dtype)
        rows = torch.arange(pixels.shape[0], device=pixels.device)
        with torch.no_grad():  # no gradient reaches the blocks before the first read
            x = tower.embed(pixels)
            for block in tower.blocks[:start]:
                x = block.forward(x)
        with torch.enable_grad():
            probs, scores = [], []
            for block in tower.blocks[start:]:
                q, k, v = block.qkv(block.norm1(x))
                a = block.attention_weights(q, k)
                x = block.mlp_residual(x + block.attn_out(a @ v))
                feature = tower.project_tokens(x.mean(dim=1, keepdim=True))[:, 0]
                logits = scale * F.normalize(feature.float(), dim=-1) @ text.T
                probs.append(a)
                scores.append(score(logits, rows).sum())
            relevance = x.new_zeros(x.shape[0], x.shape[1] - prefix, dtype=torch.float32)
            for a, s in zip(probs, scores):
                (grad,) = torch.autograd.grad(s, a, retain_graph=True)
                relevance += grad.float().clamp_min(0).mean(dim=(1, 2))[:, prefix:]
        with torch.no_grad():
            outputs = scale * F.normalize(tower.pool(x).float(), dim=-1) @ text.T
        grid = (pixels.shape[-2] // tower.patch_size[0], pixels.shape[-1] // tower.patch_size[1])
        maps = relevance.view(-1, *grid)
        return CAMOutput(cam_heatmap(maps, tuple(pixels.shape[-2:])), [maps], outputs)  # type: ignore[arg-type]

    return run


register_clip_explainer("legrad", legrad)
