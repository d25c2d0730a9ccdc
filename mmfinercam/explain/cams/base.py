"""The one base class of the gradient CAMs: a layer's activations and the gradients of a score.

A method is a short subclass (:mod:`.methods`) that turns activations and gradients into a map,
registered by name with :func:`register_cam`. Maps are scaled as ``pytorch-grad-cam`` scales
them (ReLU, min-max per layer, bilinear resize, min-max again across layers), which the tests
compare against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..._checks import registered
from ...errors import UnsupportedModelError
from .layers import Reshape, as_maps, model_logits
from .targets import ScoreFn


class _Recorder:
    """Forward hooks that keep each layer's output (and its gradient) for one pass."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        self.outputs: list[Tensor] = []
        self.handles = [layer.register_forward_hook(self._keep) for layer in layers]

    def _keep(self, module: nn.Module, inputs: Any, output: Any) -> None:
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
    """The finished heatmap of one layer's maps: scaled, resized, min-max scaled again.

    Args:
        cams: B×h×w raw maps of one layer.
        size: the (height, width) of the input.

    Returns:
        B×H×W in [0, 1].
    """
    return _minmax(_scaled_layer(cams, size).clamp_min(0))


@dataclass
class CAMOutput:
    """A CAM for a batch.

    Args:
        heatmaps: B×H×W in [0, 1] at the input size.
        layer_maps: per layer, B×h×w raw weighted sums (before ReLU).
        outputs: the model outputs (B×K), detached.
    """

    heatmaps: Tensor  #: B×H×W in [0, 1] at the input size
    layer_maps: list[Tensor]  #: per layer, B×h×w raw weighted sums (before ReLU)
    outputs: Tensor  #: the model outputs (B×K), detached


class BaseCAM:
    """Activations × gradients of one scalar per image, at one or more layers.

    Subclasses override :meth:`layer_cam` (or just :meth:`channel_weights`) and are registered by
    name with :func:`register_cam`. Maps are scaled as pytorch-grad-cam scales them.

    Args:
        model: the model (put in eval mode).
        target_layers: the layers whose outputs are explained (found by forward hooks).
        reshape: how a layer's output becomes B×C×h×w maps (ViT tokens, channels last).
        capture: instead of hooks, a forward that returns the outputs and the layers' outputs
            (a CLIP tower view).

    Raises:
        UnsupportedModelError: with neither target layers nor a capture function.
    """

    uses_gradients = True

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module] = (),
        reshape: Reshape | None = None,
        capture: Callable[[Tensor], tuple[Tensor, list[Tensor]]] | None = None,
    ) -> None:
        self.model = model.eval()
        self.target_layers = list(target_layers)
        self.reshape = reshape
        self.capture = capture
        if not self.target_layers and capture is None:
            raise UnsupportedModelError("a CAM needs target layers or a capture function")

    def channel_weights(self, activations: Tensor, grads: Tensor) -> Tensor:  # noqa: D102
        """One weight a channel, for methods that weigh whole channels (Grad-CAM and its kin).

        Args:
            activations: B×C×h×w.
            grads: B×C×h×w gradients of the score.

        Returns:
            B×C weights.
        """
        raise NotImplementedError

    def layer_cam(self, activations: Tensor, grads: Tensor | None, images: Tensor, score: ScoreFn) -> Tensor:
        """One layer's map, before ReLU: by default ``sum_k w_k A_k`` with :meth:`channel_weights`.

        Args:
            activations: B×C×h×w.
            grads: B×C×h×w gradients (None for gradient-free methods).
            images: the input batch (Score-CAM re-scores masked copies of it).
            score: the explained score.

        Returns:
            B×h×w.
        """
        assert grads is not None, "a method that uses gradients gets them"
        w = self.channel_weights(activations, grads)
        return (w[:, :, None, None] * activations).sum(dim=1)

    def forward_with_activations(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The model's outputs and the target layers' outputs.

        By forward hooks on the target layers, or by the ``capture`` function given (which runs its
        own forward, e.g. over a CLIP tower view).

        Args:
            images: B×C×H×W.

        Returns:
            B×K outputs and the layers' outputs.
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
        """Explain one scalar per image at the target layers.

        Args:
            images: B×C×H×W input batch.
            score: what to explain (:mod:`.targets`).

        Returns:
            The maps and the outputs.

        Raises:
            UnsupportedModelError: when the score does not depend on a target layer's output.
        """
        size = (images.shape[-2], images.shape[-1])
        with torch.inference_mode(False), torch.enable_grad():  # a caller's inference mode too
            images = images.clone() if images.is_inference() else images
            outputs, acts = self.forward_with_activations(images)
            grads: list[Tensor | None] = [None] * len(acts)
            if self.uses_gradients:
                if not all(a.requires_grad for a in acts):
                    raise UnsupportedModelError("the score does not depend on a target layer's output")
                total = score(outputs, torch.arange(len(outputs), device=outputs.device)).sum()
                grads = list(torch.autograd.grad(total, acts, allow_unused=True))
        layer_maps, scaled = [], []
        with torch.no_grad():
            for a, g in zip(acts, grads):
                if self.uses_gradients and g is None:
                    raise UnsupportedModelError("the score does not depend on a target layer's output")
                a = as_maps(a.detach().float(), self.reshape, size)
                g = as_maps(g.float(), self.reshape, size) if g is not None else None
                cam = self.layer_cam(a, g, images, score)
                layer_maps.append(cam)
                scaled.append(_scaled_layer(cam, size))
            heat = _minmax(torch.stack(scaled, dim=1).clamp_min(0).mean(dim=1))
        return CAMOutput(heat, layer_maps, outputs.detach())


#: name -> CAM class; :func:`register_cam` adds to it
CAM_METHODS: dict[str, type[BaseCAM]] = {}


def register_cam(name: str, cam: type[BaseCAM]) -> type[BaseCAM]:
    """Make a CAM available by name (``method="name"``).

    Args:
        name: what users call it.
        cam: the subclass of :class:`BaseCAM`.

    Returns:
        The class, so a module can define and register it in one place.
    """
    CAM_METHODS[name] = cam
    return cam


def cam_class(method: str) -> type[BaseCAM]:
    """A registered CAM by name.

    Args:
        method: its name.

    Returns:
        The class.

    Raises:
        ConfigError: for an unknown name, listing the known ones.
    """
    return registered(CAM_METHODS, method, "CAM method")
