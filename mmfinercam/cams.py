"""Gradient CAMs and Finer-CAM for any image classifier (design §4).

One base class computes a layer's activations and the gradients of a scalar per image; each
method is a short subclass that turns them into a map (Grad-CAM, Grad-CAM++, XGrad-CAM,
HiResCAM, Layer-CAM, Score-CAM). ViT token layers are reshaped to their patch grid
automatically (prefix tokens dropped), so no ``reshape_transform`` is needed.

Finer-CAM changes *what* is explained: instead of the target logit ``y_c`` the CAM explains

    y_finer = sum_i p_i (y_c - alpha * y_i) / (sum_i p_i + 1e-9),   p = softmax(all logits)

over the reference classes ``i`` (by default those ranked 1, 2, 3 by ``|y_i - y_c|``). The
softmax weights are not detached, the CAM is ReLU'd and min-max scaled per layer, resized
bilinearly to the input, averaged over layers and min-max scaled again: the same steps as
``pytorch-grad-cam``'s ``FinerCAM``, which the tests compare against.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ImageLoadError, MMFinerCAMError, PromptError
from .finer import check_alpha, check_contrast_ranks
from .images import NON_FINITE, FailedImage, finite_images

#: (outputs M×K, rows M) -> M scalars; ``rows[j]`` is the batch image that output ``j`` is of
#: (``arange(B)`` for a plain pass; Score-CAM scores many masked copies of one image)
ScoreFn = Callable[[Tensor, Tensor], Tensor]


def logit_score(target: Tensor) -> ScoreFn:
    """Explain the plain logit of ``target[b]`` for each image ``b``."""
    return lambda y, rows: y[torch.arange(len(y), device=y.device), target[rows]]


def finer_score(target: Tensor, references: Tensor, alpha: float) -> ScoreFn:
    """Explain the Finer-CAM target of each image."""
    return lambda y, rows: finer_target(y, target[rows], references[rows], alpha)


# -- what to explain ------------------------------------------------------------------------
def finer_target(logits: Tensor, target: Tensor, references: Tensor, alpha: float) -> Tensor:
    """``sum_i p_i (y_c - alpha y_i) / (sum_i p_i + 1e-9)`` per image (B); p keeps its gradient."""
    alpha = check_alpha(alpha)
    rows = torch.arange(logits.shape[0], device=logits.device)
    y_c = logits[rows, target]
    if references.shape[1] == 0:
        return y_c
    p = torch.softmax(logits, dim=-1).gather(1, references)
    y_i = logits.gather(1, references)
    return (p * (y_c[:, None] - alpha * y_i)).sum(dim=1) / (p.sum(dim=1) + 1e-9)


def target_classes(logits: Tensor, target: Tensor | None = None) -> Tensor:
    """The classes to explain (B): ``target`` checked against the model's classes, or the argmax."""
    k = logits.shape[1]
    if target is None:
        return logits.argmax(dim=1)
    target = target.to(logits.device)
    if int(target.min()) < 0 or int(target.max()) >= k:
        raise MMFinerCAMError(f"target class out of range for a model with {k} classes: {target.tolist()}")
    return target


def reference_classes(
    logits: Tensor, target: Tensor | None = None, ranks: Sequence[int] = (1, 2, 3)
) -> tuple[Tensor, Tensor]:
    """The target (argmax if not given) and the classes at ``ranks`` by ``|y_i - y_c|``.

    Rank 0 is the target itself. Ranks beyond the number of classes are dropped, as the
    reference code does for models with few classes; ranks that leave no class are refused.
    """
    target = target_classes(logits, target)
    ranks = check_contrast_ranks(ranks, logits.shape[1] - 1, "classes")
    gap = (logits - logits.gather(1, target[:, None])).abs()
    gap = gap.scatter(1, target[:, None], -1.0)  # the target is rank 0 even when logits tie
    order = gap.argsort(dim=1, stable=True)
    return target, order[:, ranks]


# -- layers, activations, gradients -----------------------------------------------------------
class TokenGrid:
    """Reshape ViT tokens (B×N×C) to B×C×h×w, dropping ``num_prefix`` leading tokens.

    With ``patch`` given, ``num_prefix=None`` drops however many tokens precede the image's
    patches (a class token, a distillation token, registers)."""

    def __init__(
        self,
        num_prefix: int | None = 1,
        grid: tuple[int, int] | None = None,
        patch: int | tuple[int, int] | None = None,
    ):
        if num_prefix is None and patch is None:
            raise MMFinerCAMError("TokenGrid(num_prefix=None) needs the patch size to count the prefix")
        self.num_prefix = num_prefix
        self.grid = grid
        self.patch = (patch, patch) if isinstance(patch, int) else patch

    def __call__(self, tokens: Tensor, image_size: tuple[int, int]) -> Tensor:
        if self.patch:
            h, w = image_size[0] // self.patch[0], image_size[1] // self.patch[1]
            prefix = tokens.shape[1] - h * w if self.num_prefix is None else self.num_prefix
            x = tokens[:, max(prefix, 0) :]
        else:
            x = tokens[:, self.num_prefix :]
            n = x.shape[1]
            h, w = self.grid if self.grid and self.grid[0] * self.grid[1] == n else (math.isqrt(n),) * 2
        if h * w != x.shape[1]:
            raise MMFinerCAMError(
                f"cannot lay {x.shape[1]} tokens on a {h}×{w} grid; pass reshape=TokenGrid(...)"
            )
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


def model_logits(output: object) -> Tensor:
    """A classifier's B×K logits from what its forward returns: a tensor, a Hugging Face output
    (``.logits``), a dict with ``"logits"``, or a tuple whose first item is them."""
    if isinstance(output, dict) and "logits" in output:  # also a ModelOutput, which is a dict
        output = output["logits"]
    elif not isinstance(output, Tensor) and isinstance(getattr(output, "logits", None), Tensor):
        output = output.logits
    elif isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        output = output[0]
    if not isinstance(output, Tensor) or output.dim() != 2:
        what = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise MMFinerCAMError(
            f"the model must return B×K logits (a tensor, or an output with .logits); got {what}"
        )
    return output


class ChannelsLast:
    """Maps a layer outputs as B×h×w×C (timm's Swin stages), laid out as B×C×h×w."""

    def __call__(self, maps: Tensor, image_size: tuple[int, int]) -> Tensor:
        if maps.dim() != 4:
            raise MMFinerCAMError(f"a channels-last layer outputs B×h×w×C maps; got {tuple(maps.shape)}")
        return maps.permute(0, 3, 1, 2)


#: how a CAM layer's output becomes B×C×h×w maps: tokens on their grid, or channels moved first
Reshape = TokenGrid | ChannelsLast


def _as_maps(value: Tensor, reshape: Reshape | None, image_size: tuple[int, int]) -> Tensor:
    if isinstance(reshape, ChannelsLast):
        return reshape(value, image_size)
    if value.dim() == 4:
        return value
    if value.dim() == 3:
        return (reshape or TokenGrid())(value, image_size)
    raise MMFinerCAMError(f"a CAM layer must output B×C×h×w maps or B×N×C tokens; got {tuple(value.shape)}")


class _Recorder:
    """Forward hooks that keep each layer's output (and its gradient) for one pass."""

    def __init__(self, layers: Sequence[nn.Module]):
        self.outputs: list[Tensor] = []
        self.handles = [layer.register_forward_hook(self._keep) for layer in layers]

    def _keep(self, module: nn.Module, inputs, output) -> None:
        if isinstance(output, (tuple, list)):
            output = output[0]
        self.outputs.append(output)

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _minmax(x: Tensor) -> Tensor:
    """Per-map ``(x - min) / (1e-7 + max)`` as pytorch-grad-cam's ``scale_cam_image``."""
    flat = x.flatten(1)
    x = x - flat.min(dim=1).values.view(-1, *([1] * (x.dim() - 1)))  # the one copy: then in place
    return x.div_(1e-7 + x.flatten(1).max(dim=1).values.view(-1, *([1] * (x.dim() - 1))))


def _scaled_layer(cams: Tensor, size: tuple[int, int]) -> Tensor:
    """One layer's B×h×w maps as pytorch-grad-cam scales them: ReLU, min-max, bilinear resize."""
    cam = _minmax(cams.float().clamp_min(0))
    return F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def cam_heatmap(cams: Tensor, size: tuple[int, int]) -> Tensor:
    """The finished heatmap of one layer's B×h×w maps (scaled, resized, min-max again)."""
    return _minmax(_scaled_layer(cams, size).clamp_min(0))


@dataclass
class CAMOutput:
    """A CAM for a batch."""

    heatmaps: Tensor  #: B×H×W in [0, 1] at the input size
    layer_maps: list[Tensor]  #: per layer, B×h×w raw weighted sums (before ReLU)
    outputs: Tensor  #: the model outputs (B×K), detached


class BaseCAM:
    """Activations × gradients of one scalar per image, at one or more layers.

    Subclasses override :meth:`layer_cam` (or just :meth:`channel_weights`).
    """

    uses_gradients = True

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module] = (),
        reshape: Reshape | None = None,
        capture: Callable[[Tensor], tuple[Tensor, list[Tensor]]] | None = None,
    ):
        self.model = model.eval()
        self.target_layers = list(target_layers)
        self.reshape = reshape
        self.capture = capture
        if not self.target_layers and capture is None:
            raise MMFinerCAMError("a CAM needs target layers or a capture function")

    def channel_weights(self, activations: Tensor, grads: Tensor) -> Tensor:
        raise NotImplementedError

    def layer_cam(self, activations: Tensor, grads: Tensor | None, images: Tensor, score: ScoreFn) -> Tensor:
        """B×h×w map of one layer (before ReLU)."""
        w = self.channel_weights(activations, grads)
        return (w[:, :, None, None] * activations).sum(dim=1)

    def forward_with_activations(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Model outputs and the target layers' outputs.

        By forward hooks on the target layers, or by the ``capture`` function given (which
        runs its own forward, e.g. over a CLIP tower view).
        """
        if self.capture is not None:
            return self.capture(images)
        recorder = _Recorder(self.target_layers)
        try:
            # the input requires grad so layers have gradients even when parameters are frozen
            outputs = model_logits(self.model(images.detach().requires_grad_(self.uses_gradients)))
        finally:
            recorder.close()
        return outputs, recorder.outputs[-len(self.target_layers) :]

    def __call__(self, images: Tensor, score: ScoreFn) -> CAMOutput:
        """Explain ``score(outputs)`` (one scalar per image) at the target layers."""
        size = (images.shape[-2], images.shape[-1])
        with torch.enable_grad():
            outputs, acts = self.forward_with_activations(images)
            grads: list[Tensor | None] = [None] * len(acts)
            if self.uses_gradients:
                if not all(a.requires_grad for a in acts):
                    raise MMFinerCAMError("the score does not depend on a target layer's output")
                total = score(outputs, torch.arange(len(outputs), device=outputs.device)).sum()
                grads = list(torch.autograd.grad(total, acts, allow_unused=True))
        layer_maps, scaled = [], []
        with torch.no_grad():
            for a, g in zip(acts, grads):
                if self.uses_gradients and g is None:
                    raise MMFinerCAMError("the score does not depend on a target layer's output")
                a = _as_maps(a.detach().float(), self.reshape, size)
                g = _as_maps(g.float(), self.reshape, size) if g is not None else None
                cam = self.layer_cam(a, g, images, score)
                layer_maps.append(cam)
                scaled.append(_scaled_layer(cam, size))
            heat = _minmax(torch.stack(scaled, dim=1).clamp_min(0).mean(dim=1))
        return CAMOutput(heat, layer_maps, outputs.detach())


class GradCAM(BaseCAM):
    """Selvaraju et al. 2017: channel weights are the spatially averaged gradients."""

    def channel_weights(self, activations: Tensor, grads: Tensor) -> Tensor:
        return grads.mean(dim=(2, 3))


class GradCAMPlusPlus(BaseCAM):
    """Chattopadhyay et al. 2018: higher-order weighting of positive gradients (their eq. 19)."""

    def channel_weights(self, activations: Tensor, grads: Tensor) -> Tensor:
        g2 = grads.pow(2)
        sum_a = activations.sum(dim=(2, 3), keepdim=True)
        aij = g2 / (2 * g2 + sum_a * g2 * grads + 1e-6)
        aij = torch.where(grads != 0, aij, torch.zeros_like(aij))
        return (grads.clamp_min(0) * aij).sum(dim=(2, 3))


class XGradCAM(BaseCAM):
    """Fu et al. 2020: gradients averaged with each location's share of its channel's
    activation as the weight (axiom-based Grad-CAM)."""

    def channel_weights(self, activations: Tensor, grads: Tensor) -> Tensor:
        share = activations / (activations.sum(dim=(2, 3), keepdim=True) + 1e-7)
        return (grads * share).sum(dim=(2, 3))


class HiResCAM(BaseCAM):
    """Draelos & Carin 2020: gradients times activations summed over channels, location by
    location, without Grad-CAM's spatial averaging: the map sums to the explained score's
    first-order change, so it cannot show a region the model did not use."""

    def layer_cam(self, activations: Tensor, grads: Tensor | None, images: Tensor, score: ScoreFn) -> Tensor:
        return (grads * activations).sum(dim=1)


class LayerCAM(BaseCAM):
    """Jiang et al. 2021: each location weighted by its own positive gradient."""

    def layer_cam(self, activations: Tensor, grads: Tensor | None, images: Tensor, score: ScoreFn) -> Tensor:
        return (grads.clamp_min(0) * activations).sum(dim=1)


class ScoreCAM(BaseCAM):
    """Wang et al. 2020: channel weights from the score of the input masked by each channel.

    Gradient-free: each channel's upsampled, min-max scaled map masks the input and the score
    of the masked batch (softmax over channels) weighs the channel, as pytorch-grad-cam's
    ``ScoreCAM`` does it (the tests compare). Channels are scored in batches of ``batch_size``
    masked images.
    """

    uses_gradients = False
    batch_size = 64

    def layer_cam(self, activations: Tensor, grads: Tensor | None, images: Tensor, score: ScoreFn) -> Tensor:
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


#: name -> CAM class; add your own with ``CAM_METHODS["name"] = MyCAM``
CAM_METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "hirescam": HiResCAM,
    "layercam": LayerCAM,
    "scorecam": ScoreCAM,
}


def cam_class(method: str) -> type[BaseCAM]:
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; known: {', '.join(CAM_METHODS)}")
    return CAM_METHODS[method]


# -- CLIP ---------------------------------------------------------------------------------------
def clip_capture(backend, text: Tensor) -> Callable[[Tensor], tuple[Tensor, list[Tensor]]]:
    """Forward over a CLIP image tower that returns ``logit_scale * cos(z, t_k)`` (B×K) and the
    last block's normalized input tokens (the usual CAM layer for CLIP ViTs)."""
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


def clip_cam(backend, method: str = "gradcam") -> Callable[..., CAMOutput]:
    """A CAM over a CLIP backend: call it with ``(pixels, text, score)``."""
    grid = TokenGrid(num_prefix=backend.vision.num_prefix_tokens, patch=backend.vision.patch_size)

    def run(pixels: Tensor, text: Tensor, score: ScoreFn) -> CAMOutput:
        cam = cam_class(method)(backend.model, reshape=grid, capture=clip_capture(backend, text))
        return cam(pixels, score)

    return run


# -- classifiers ------------------------------------------------------------------------------
def find_target_layer(model: nn.Module) -> tuple[nn.Module, Reshape | None]:
    """The usual CAM layer of common timm / torchvision architectures, and how to reshape it.

    ViTs (timm ``blocks``, DINOv2): the last block's ``norm1``; torchvision ViTs: the last
    encoder layer's ``ln_1``; transformers ViT classifiers (ViT, DeiT, DINOv2, BEiT): the last
    layer's first norm, its prefix tokens counted from the patch grid; ResNets: ``layer4[-1]``;
    ConvNeXt / timm stage models: the last stage; other timm models (EfficientNet, RegNet,
    Swin, MobileNetV3 ...): the last stage their ``feature_info`` names; VGG / DenseNet /
    MobileNet / torchvision Swin: ``features[-1]``; torchvision RegNet, ShuffleNet, MaxViT:
    ``trunk_output``, ``conv5``, ``blocks[-1]``. Swin's channels-last maps (timm's and
    torchvision's) are laid out channels first.
    Anything else: pass ``target_layer`` (a module or its name).
    """
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks) and hasattr(blocks[-1], "norm1"):
        prefix = int(getattr(model, "num_prefix_tokens", 1 + int(getattr(model, "num_register_tokens", 0))))
        patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
        patch = patch[0] if isinstance(patch, (tuple, list)) else patch
        return blocks[-1].norm1, TokenGrid(num_prefix=prefix, patch=patch)
    encoder = getattr(model, "encoder", None)  # torchvision VisionTransformer
    if encoder is not None and hasattr(encoder, "layers") and hasattr(model, "conv_proj"):
        return encoder.layers[-1].ln_1, TokenGrid(num_prefix=1, patch=int(model.patch_size))
    hf_layer = _hugging_face_vit_layer(model)
    if hf_layer is not None:
        return hf_layer, TokenGrid(num_prefix=None, patch=int(model.config.patch_size))
    for name in ("layer4", "stages", "features", "trunk_output", "conv5"):
        layer = getattr(model, name, None)
        if isinstance(layer, nn.Module):
            layer = layer[-1] if isinstance(layer, nn.Sequential) and len(layer) else layer
            return layer, ChannelsLast() if channels_last(model) else None
    timm_stage = _timm_last_stage(model)
    if timm_stage is not None:
        return timm_stage, ChannelsLast() if channels_last(model) else None
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks):  # torchvision's MaxViT
        return blocks[-1], None
    raise MMFinerCAMError(
        f"no known CAM layer for {type(model).__name__}; pass target_layer=<module> explicitly"
    )


def channels_last(model: nn.Module) -> bool:
    """Whether the model's feature maps are B×h×w×C: timm models that say so (``output_fmt``,
    Swin) and torchvision's Swin, which permutes only before pooling."""
    kind = type(model)
    torchvision_swin = kind.__module__.startswith("torchvision") and kind.__name__ == "SwinTransformer"
    return torchvision_swin or getattr(model, "output_fmt", "NCHW") == "NHWC"


def _timm_last_stage(model: nn.Module) -> nn.Module | None:
    """A timm model's last feature stage, as its own ``feature_info`` names it (EfficientNet's
    ``blocks.6``, RegNet's ``s4``, Swin's ``layers.3``, MobileNetV3, MaxViT ...)."""
    info = getattr(model, "feature_info", None)
    if not isinstance(info, list) or not info or not isinstance(info[-1], dict) or "module" not in info[-1]:
        return None
    return dict(model.named_modules()).get(str(info[-1]["module"]))


def _hugging_face_vit_layer(model: nn.Module) -> nn.Module | None:
    """A transformers ViT classifier's (ViT, DeiT, DINOv2, BEiT ...) last layer's first norm:
    the last list of layers that have one, found by what they hold rather than by a path that
    changes between versions (``vit.encoder.layer`` became ``vit.layers``)."""
    if not isinstance(getattr(getattr(model, "config", None), "patch_size", None), int):
        return None
    found = None
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module):
            norm = getattr(module[-1], "layernorm_before", None) or getattr(module[-1], "norm1", None)
            if isinstance(norm, nn.Module):
                found = norm
    return found


def _resolve_layer(model: nn.Module, layer: nn.Module | str) -> nn.Module:
    if isinstance(layer, nn.Module):
        return layer
    modules = dict(model.named_modules())
    if layer not in modules:
        close = [n for n in modules if n.endswith(layer.split(".")[-1])][:5]
        raise MMFinerCAMError(
            f"the model has no layer named {layer!r}" + (f"; similar: {close}" if close else "")
        )
    return modules[layer]


@dataclass
class ClassifierCAMResult:
    """Like the official code's return: the map, the outputs, the target and the references."""

    heatmaps: Tensor  #: B×H×W in [0, 1]
    outputs: Tensor  #: B×K logits
    target: Tensor  #: B
    references: Tensor  #: B×D
    weights: Tensor  #: B×D, the softmax weights p_i / sum p_i
    layer_maps: list[Tensor]
    #: position in the input of each row (all of them unless an image was unusable)
    indices: list[int] = field(default_factory=list)
    failed: list[FailedImage] = field(default_factory=list)  #: images holding NaN or infinity


class ClassifierFinerCAM:
    """Finer-CAM for any torch model that returns logits (timm, torchvision, DINOv2 + head).

    >>> cam = ClassifierFinerCAM(model)                 # target layer found for common models
    >>> res = cam(images, alpha=1.0)                    # target = argmax, refs = ranks 1..3
    >>> res = cam(images, target=[3, 7], references=[[4, 5], [1, 2]])
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | str | Sequence[nn.Module | str] | None = None,
        method: str = "gradcam",
        reshape: Reshape | None = None,
    ):
        if target_layer is None:
            layer, auto_reshape = find_target_layer(model)
            layers = [layer]
            reshape = reshape or auto_reshape
        else:
            seq = target_layer if isinstance(target_layer, (list, tuple)) else [target_layer]
            layers = [_resolve_layer(model, layer) for layer in seq]
            if reshape is None and channels_last(model):  # its maps are B×h×w×C at any layer
                reshape = ChannelsLast()
        self.model = model.eval()
        self.cam = cam_class(method)(model, layers, reshape)

    def __call__(
        self,
        images: Tensor,
        target: int | Sequence[int] | Tensor | None = None,
        references: Sequence[Sequence[int]] | Tensor | None = None,
        *,
        alpha: float = 1.0,
        ranks: Sequence[int] = (1, 2, 3),
    ) -> ClassifierCAMResult:
        """Maps for a B×C×H×W float batch. ``target``: one class for all or one an image
        (default: the argmax); ``references``: classes for all (D) or an image each (B×D;
        none: the plain CAM), else those at ``ranks`` by ``|y_i - y_c|``. An image holding NaN
        or infinity is reported in ``failed`` (and warned about) and the rest are explained."""
        alpha = check_alpha(alpha)
        if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ImageLoadError(f"images must be a float B×C×H×W tensor (preprocessed); got {shape}")
        b = images.shape[0]
        device = next(self.model.parameters()).device
        target = _per_image(target, b, per_image=0, what="target class", device=device)
        references = _per_image(references, b, per_image=1, what="references", device=device)
        finite = finite_images(images)
        keep = [i for i, ok in enumerate(finite) if ok]
        failed = [FailedImage(i, f"<tensor #{i}>", NON_FINITE) for i, ok in enumerate(finite) if not ok]
        for f in failed:
            warnings.warn(f"skipped image {f.source}: {f.message}", stacklevel=2)
        if not keep:
            raise ImageLoadError("no usable image: every image holds NaN or infinite values", failed)
        if failed:
            images, target, references = (t if t is None else t[keep] for t in (images, target, references))
        images = images.to(device)
        with torch.no_grad():
            logits = model_logits(self.model(images))
        k = logits.shape[1]
        if references is None:
            target, refs = reference_classes(logits, target, ranks)
        else:
            target, refs = target_classes(logits, target), references
            if refs.numel() and (int(refs.min()) < 0 or int(refs.max()) >= k):
                raise MMFinerCAMError(f"reference class out of range for a model with {k} classes")
            if bool((refs == target[:, None]).any()):
                raise PromptError("a reference class is the target itself: it would cancel out")
        out = self.cam(images, finer_score(target, refs, alpha))
        if out.outputs.shape != logits.shape:
            raise MMFinerCAMError("the model's outputs changed between passes")
        p = torch.softmax(out.outputs, dim=-1).gather(1, refs)
        weights = p / (p.sum(dim=1, keepdim=True) + 1e-9)
        maps = out.heatmaps, out.outputs, target, refs, weights, out.layer_maps
        return ClassifierCAMResult(*maps, indices=keep, failed=failed)


def _per_image(classes: object, b: int, *, per_image: int, what: str, device: torch.device) -> Tensor | None:
    """Classes for ``b`` images as a long tensor of ``b`` rows: ``per_image`` is 0 for one class
    an image (a target: B), 1 for a list an image (references: B×D). Given without the image
    axis, or for one image, they hold for every image."""
    if classes is None:
        return None
    t = torch.as_tensor(classes, device=device)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise MMFinerCAMError(f"{what} must be whole class numbers, got {t.dtype}")
    if t.dim() == per_image:
        t = t.unsqueeze(0)
    if t.dim() != per_image + 1 or t.shape[0] not in (1, b):
        expected = "a list of classes or a list an image (B×D)" if per_image else "one class or one an image"
        raise MMFinerCAMError(f"{what}: give {expected} for the {b} images; got shape {tuple(t.shape)}")
    return t.long().expand(b, *t.shape[1:])


__all__ = [
    "BaseCAM",
    "CAM_METHODS",
    "ChannelsLast",
    "ClassifierCAMResult",
    "channels_last",
    "ClassifierFinerCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "ScoreCAM",
    "TokenGrid",
    "XGradCAM",
    "find_target_layer",
    "finer_score",
    "finer_target",
    "logit_score",
    "model_logits",
    "reference_classes",
    "target_classes",
]
