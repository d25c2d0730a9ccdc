"""Where a CAM looks: finding a model's CAM layer, and laying its output out as maps.

ViT token layers are reshaped to their patch grid automatically (prefix tokens dropped), and
channels-last feature maps (Swin) are laid out channels first, so no ``reshape_transform`` is
needed for the architectures :func:`find_target_layer` knows.
"""

from __future__ import annotations

import math
from typing import Any, cast

from torch import Tensor, nn

from ...errors import ConfigError, UnsupportedModelError


class TokenGrid:
    """Reshape ViT tokens (B×N×C) to B×C×h×w maps, dropping leading prefix tokens.

    Args:
        num_prefix: tokens before the patches; None (with ``patch``) drops however many precede
            the image's patches (a class token, a distillation token, registers).
        grid: the patch grid, where the image size cannot give it.
        patch: the patch size, from which the grid is read off the image size.

    Raises:
        ConfigError: for ``num_prefix=None`` without a patch size.
    """

    def __init__(
        self,
        num_prefix: int | None = 1,
        grid: tuple[int, int] | None = None,
        patch: int | tuple[int, int] | None = None,
    ) -> None:
        if num_prefix is None and patch is None:
            raise ConfigError("TokenGrid(num_prefix=None) needs the patch size to count the prefix")
        self.num_prefix = num_prefix
        self.grid = grid
        self.patch = (patch, patch) if isinstance(patch, int) else patch

    def __call__(self, tokens: Tensor, image_size: tuple[int, int]) -> Tensor:
        """Lay tokens on their grid.

        Args:
            tokens: B×N×C.
            image_size: the input's (height, width).

        Returns:
            B×C×h×w.

        Raises:
            UnsupportedModelError: when the tokens do not fill the grid.
        """
        if self.patch:
            h, w = image_size[0] // self.patch[0], image_size[1] // self.patch[1]
            prefix = tokens.shape[1] - h * w if self.num_prefix is None else self.num_prefix
            x = tokens[:, max(prefix, 0) :]
        else:
            x = tokens[:, self.num_prefix :]
            n = x.shape[1]
            h, w = self.grid if self.grid and self.grid[0] * self.grid[1] == n else (math.isqrt(n),) * 2
        if h * w != x.shape[1]:
            raise UnsupportedModelError(
                f"cannot lay {x.shape[1]} tokens on a {h}×{w} grid; pass reshape=TokenGrid(...)"
            )
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


def model_logits(output: Any) -> Tensor:
    """A classifier's logits from what its forward returns.

    Args:
        output: a tensor, a Hugging Face output (``.logits``), a dict with ``"logits"``, or a
            tuple whose first item is them.

    Returns:
        B×K logits.

    Raises:
        UnsupportedModelError: when there are none of B×K.
    """
    if isinstance(output, dict) and "logits" in output:  # also a ModelOutput, which is a dict
        output = output["logits"]
    elif not isinstance(output, Tensor) and isinstance(getattr(output, "logits", None), Tensor):
        output = output.logits
    elif isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        output = output[0]
    if not isinstance(output, Tensor) or output.dim() != 2:
        what = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise UnsupportedModelError(
            f"the model must return B×K logits (a tensor, or an output with .logits); got {what}"
        )
    return output


class ChannelsLast:
    """Maps a layer outputs as B×h×w×C (timm's Swin stages), laid out as B×C×h×w."""

    def __call__(self, maps: Tensor, image_size: tuple[int, int]) -> Tensor:
        """Move a channels-last layer's channels first.

        Args:
            maps: B×h×w×C.
            image_size: the input's (height, width) (unused).

        Returns:
            B×C×h×w.

        Raises:
            UnsupportedModelError: for an output that is not 4-D.
        """
        if maps.dim() != 4:
            raise UnsupportedModelError(
                f"a channels-last layer outputs B×h×w×C maps; got {tuple(maps.shape)}"
            )
        return maps.permute(0, 3, 1, 2)


#: how a CAM layer's output becomes B×C×h×w maps: tokens on their grid, or channels moved first
Reshape = TokenGrid | ChannelsLast


def as_maps(value: Tensor, reshape: Reshape | None, image_size: tuple[int, int]) -> Tensor:
    """A CAM layer's output as B×C×h×w maps.

    Args:
        value: the layer's output (maps, tokens, or channels-last maps).
        reshape: how to lay it out (default: tokens on a square grid after one class token).
        image_size: the input's (height, width).

    Returns:
        B×C×h×w.

    Raises:
        UnsupportedModelError: for an output of another rank.
    """
    if isinstance(reshape, ChannelsLast):
        return reshape(value, image_size)
    if value.dim() == 4:
        return value
    if value.dim() == 3:
        return (reshape or TokenGrid())(value, image_size)
    raise UnsupportedModelError(
        f"a CAM layer must output B×C×h×w maps or B×N×C tokens; got {tuple(value.shape)}"
    )


def find_target_layer(model: Any) -> tuple[nn.Module, Reshape | None]:
    """The usual CAM layer of common timm / torchvision / transformers architectures.

    ViTs (timm ``blocks``, DINOv2): the last block's ``norm1``; torchvision ViTs: the last
    encoder layer's ``ln_1``; transformers ViT classifiers (ViT, DeiT, DINOv2, BEiT): the last
    layer's first norm, its prefix tokens counted from the patch grid; ResNets: ``layer4[-1]``;
    ConvNeXt / timm stage models: the last stage; other timm models (EfficientNet, RegNet,
    Swin, MobileNetV3 ...): the last stage their ``feature_info`` names; VGG / DenseNet /
    MobileNet / torchvision Swin: ``features[-1]``; torchvision RegNet, ShuffleNet, MaxViT:
    ``trunk_output``, ``conv5``, ``blocks[-1]``. Swin's channels-last maps (timm's and
    torchvision's) are laid out channels first.

    Args:
        model: the classifier.

    Returns:
        The layer and how to reshape its output (None: already B×C×h×w).

    Raises:
        UnsupportedModelError: for an architecture it does not know (pass ``target_layer``).
    """
    blocks: Any = getattr(model, "blocks", None)
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks) and hasattr(blocks[-1], "norm1"):
        prefix = int(getattr(model, "num_prefix_tokens", 1 + int(getattr(model, "num_register_tokens", 0))))
        patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
        patch = patch[0] if isinstance(patch, (tuple, list)) else patch
        norm = cast(nn.Module, blocks[-1].norm1)
        return norm, TokenGrid(num_prefix=prefix, patch=patch)
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
    raise UnsupportedModelError(
        f"no known CAM layer for {type(model).__name__}; pass target_layer=<module> explicitly"
    )


def channels_last(model: nn.Module) -> bool:
    """Whether a model's feature maps are B×h×w×C.

    Args:
        model: the classifier.

    Returns:
        True for timm models that say so (``output_fmt``, Swin) and torchvision's Swin, which
        permutes only before pooling.
    """
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


def resolve_layer(model: nn.Module, layer: nn.Module | str) -> nn.Module:
    """A layer given as a module or by its name in the model.

    Args:
        model: the model.
        layer: the module, or its dotted name.

    Returns:
        The module.

    Raises:
        UnsupportedModelError: for a name the model has no module of (similar names are listed).
    """
    if isinstance(layer, nn.Module):
        return layer
    modules = dict(model.named_modules())
    if layer not in modules:
        close = [n for n in modules if n.endswith(layer.split(".")[-1])][:5]
        raise UnsupportedModelError(
            f"the model has no layer named {layer!r}" + (f"; similar: {close}" if close else "")
        )
    return modules[layer]
