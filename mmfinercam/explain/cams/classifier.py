"""Finer-CAM for any image classifier: timm, torchvision, transformers, DINOv2 plus a head."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..._checks import check_alpha, renamed_keywords
from ...errors import ConfigError, ImageLoadError, PromptError, UnsupportedModelError
from ...images import NON_FINITE
from ...pixels import FailedImage, finite_images
from .base import cam_class
from .layers import ChannelsLast, Reshape, channels_last, find_target_layer, model_logits, resolve_layer
from .targets import finer_score, reference_classes, target_classes


@dataclass
class ClassifierCAMResult:
    """A classifier's Finer-CAM, like the official code's return: maps, outputs, target, references.

    Args:
        heatmaps: B×H×W in [0, 1].
        outputs: B×K logits.
        target: B explained classes.
        references: B×D reference classes.
        weights: B×D, the softmax weights ``p_i / sum p_i``.
        layer_maps: per layer, B×h×w raw maps.
        indices: position in the input of each row (all of them unless an image was unusable).
        failed: images holding NaN or infinity.
    """

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

    Finer-CAM (Zhang et al., CVPR 2025, https://arxiv.org/abs/2501.11309) explains
    ``sum_i p_i (y_c - alpha y_i) / sum_i p_i`` over the reference classes ``i`` with any CAM.

    Example:
        >>> cam = ClassifierFinerCAM(model)              # target layer found for common models
        >>> res = cam(images, alpha=1.0)                 # target = argmax, refs = ranks 1..3
        >>> res = cam(images, target=[3, 7], references=[[4, 5], [1, 2]])

    Args:
        model: the classifier; its forward returns logits (or an output holding them).
        target_layer: the CAM layer(s), modules or their names (default: found for common
            architectures, :func:`~.layers.find_target_layer`).
        method: a registered CAM (``"gradcam"``, ``"layercam"``, ...).
        reshape: how the layer's output becomes maps (default: found with the layer).

    Raises:
        UnsupportedModelError: when no layer is given and none is known for the model.
        ConfigError: for an unknown method.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | str | Sequence[nn.Module | str] | None = None,
        method: str = "gradcam",
        reshape: Reshape | None = None,
    ) -> None:
        if target_layer is None:
            layer, auto_reshape = find_target_layer(model)
            layers = [layer]
            reshape = reshape or auto_reshape
        else:
            seq: Sequence[nn.Module | str] = (
                target_layer if isinstance(target_layer, (list, tuple)) else [target_layer]  # type: ignore[list-item]
            )
            layers = [resolve_layer(model, layer) for layer in seq]
            if reshape is None and channels_last(model):  # its maps are B×h×w×C at any layer
                reshape = ChannelsLast()
        self.model = model.eval()
        self.cam = cam_class(method)(model, layers, reshape)

    @renamed_keywords(ranks="contrast_ranks")
    def __call__(
        self,
        images: Tensor,
        target: int | Sequence[int] | Tensor | None = None,
        references: Sequence[Sequence[int]] | Tensor | None = None,
        *,
        alpha: float = 1.0,
        contrast_ranks: Sequence[int] = (1, 2, 3),
    ) -> ClassifierCAMResult:
        """Finer-CAM maps for a batch.

        An image holding NaN or infinity is reported in ``failed`` (and warned about) and the rest
        are explained.

        Args:
            images: a B×C×H×W float batch.
            target: one class for all or one an image (default: the argmax).
            references: classes for all (D) or an image each (B×D; none: the plain CAM); default:
                those at ``contrast_ranks`` by ``|y_i - y_c|``.
            alpha: the contrast strength.
            contrast_ranks: which classes become references, by closeness rank.

        Returns:
            The maps, outputs, targets, references and weights.

        Raises:
            ConfigError: for an unusable alpha, or classes out of range.
            ImageLoadError: for a batch that is not a float tensor, or no usable image.
            PromptError: for a reference that is the target itself.
        """
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
            images = images[keep]
            target = None if target is None else target[keep]
            references = None if references is None else references[keep]
        images = images.to(device)
        with torch.no_grad():
            logits = model_logits(self.model(images))
        k = logits.shape[1]
        if references is None:
            target, refs = reference_classes(logits, target, contrast_ranks)
        else:
            target, refs = target_classes(logits, target), references
            if refs.numel() and (int(refs.min()) < 0 or int(refs.max()) >= k):
                raise ConfigError(f"reference class out of range for a model with {k} classes")
            if bool((refs == target[:, None]).any()):
                raise PromptError("a reference class is the target itself: it would cancel out")
        out = self.cam(images, finer_score(target, refs, alpha))
        if out.outputs.shape != logits.shape:
            raise UnsupportedModelError("the model's outputs changed between passes")
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
        raise ConfigError(f"{what} must be whole class numbers, got {t.dtype}")
    if t.dim() == per_image:
        t = t.unsqueeze(0)
    if t.dim() != per_image + 1 or t.shape[0] not in (1, b):
        expected = "a list of classes or a list an image (B×D)" if per_image else "one class or one an image"
        raise ConfigError(f"{what}: give {expected} for the {b} images; got shape {tuple(t.shape)}")
    return t.long().expand(b, *t.shape[1:])
