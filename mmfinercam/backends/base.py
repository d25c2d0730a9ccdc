"""The small interface every model family implements.

A backend owns a CLIP-like model and exposes two things:

* a text encoder (:meth:`Backend.encode_text`), strings in, unnormalized embeddings out;
* a :class:`VisionTower`: a view of the image transformer split into the pieces the dense
  methods need (patch embedding, one :class:`TransformerBlock` view per residual block, the
  pooling head and the token projection).

The views never change the wrapped modules: the tower runner
(:mod:`mmfinercam.explain.tower`) runs its own forward pass over them, so nothing in open_clip
or transformers is patched. Where a view applies a norm or an activation module it does so
through an ``apply`` function the runner may pass (``apply(x, module)``, by default
``module(x)``), which is how fused kernels reach the models without the views knowing them.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import WeightsNotFoundError
from ._ops import ModuleFn, call_module

#: the file in a model folder that holds mmfinercam's settings for that model
SETTINGS_FILE = "mmfinercam.json"


class TransformerBlock(ABC):
    """A pre-norm ViT residual block: ``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``.

    Attributes:
        num_heads: attention heads.
        attention_scale: the factor of ``q k^T`` in its attention; None for ``head_dim ** -0.5``.
    """

    num_heads: int
    attention_scale: float | None = None

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """The block as the model runs it.

        Args:
            x: B×N×C tokens.

        Returns:
            B×N×C tokens.
        """

    @property
    @abstractmethod
    def norm1(self) -> nn.Module:
        """The pre-attention normalization module."""

    @property
    @abstractmethod
    def norm2(self) -> nn.Module:
        """The pre-MLP normalization module."""

    @abstractmethod
    def qkv(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values of normalized tokens.

        Args:
            h: B×N×C normalized tokens.

        Returns:
            q, k, v, each B×heads×N×head_dim.
        """

    @abstractmethod
    def attn_out(self, o: Tensor) -> Tensor:
        """Attention outputs merged, projected and scaled back into the residual stream.

        Args:
            o: B×heads×N×head_dim attention outputs.

        Returns:
            B×N×C, what the block adds to its input.
        """

    def attn_out_affine(self) -> tuple[Tensor, Tensor | None] | None:
        """:meth:`attn_out` after the heads are merged, as one affine map, where it is one.

        GEM sums its blocks' projections: with the map in hand it adds all biases once and
        each product straight into the sum (``addmm_``), no pass of its own.

        Returns:
            (weight C×C, bias C or None) with the layer scale folded in; None where the
            projection is not affine (a norm over the merged heads, a per-head scale).
        """
        return None

    @abstractmethod
    def mlp(self, h: Tensor, apply: ModuleFn = call_module) -> Tensor:
        """The MLP branch of normalized tokens, layer scale applied: ``ls2(mlp(h))``.

        Args:
            h: B×N×C normalized tokens.
            apply: how to apply the activation module.

        Returns:
            B×N×C, what the branch adds to the residual stream.
        """

    def mlp_residual(self, x: Tensor) -> Tensor:
        """``x + ls2(mlp(norm2(x)))``.

        Args:
            x: B×N×C tokens.

        Returns:
            B×N×C tokens.
        """
        return x + self.mlp(self.norm2(x))

    def attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The block's own attention (scaled dot product); override for unusual variants.

        Args:
            q: B×heads×N×head_dim queries.
            k: keys, the same shape.
            v: values, the same shape.

        Returns:
            B×heads×N×head_dim outputs.
        """
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=self.attention_scale)

    def attention_weights(self, q: Tensor, k: Tensor) -> Tensor:
        """The block's attention probabilities, written out (for methods that read them).

        Args:
            q: B×heads×N×head_dim queries.
            k: keys, the same shape.

        Returns:
            B×heads×N×N, each row a softmax over the keys.
        """
        scale = q.shape[-1] ** -0.5 if self.attention_scale is None else self.attention_scale
        return torch.softmax((q * scale) @ k.transpose(-1, -2), dim=-1)


class VisionTower(ABC):
    """The image transformer of a CLIP-like model, as the dense methods see it.

    Attributes:
        patch_size: (height, width) of a patch in pixels.
        num_prefix_tokens: tokens before the patches (a class token, registers).
        blocks: one view per residual block.
        pooled_tokens: how many leading tokens of the last layer :meth:`pool` reads (1: the
            class token), or None for all; a dense method then runs the last block's original
            path for those tokens alone.
    """

    patch_size: tuple[int, int]
    num_prefix_tokens: int
    blocks: Sequence[TransformerBlock]
    pooled_tokens: int | None = None

    @abstractmethod
    def embed(self, pixels: Tensor, apply: ModuleFn = call_module) -> Tensor:
        """Patchify, add prefix tokens and (resampled) positions, pre-norm.

        Args:
            pixels: B×3×H×W preprocessed images.
            apply: how to apply the pre-norm module.

        Returns:
            B×N×C tokens.
        """

    @abstractmethod
    def pool(self, x: Tensor) -> Tensor:
        """The model's own global image embedding from the final tokens of the original path.

        Args:
            x: B×N×C tokens (only the first :attr:`pooled_tokens` of them, when that is set).

        Returns:
            B×D unnormalized embeddings.
        """

    @abstractmethod
    def project_tokens(self, x: Tensor, apply: ModuleFn = call_module) -> Tensor:
        """Final norm and projection into the joint space, for every token.

        Args:
            x: B×N×C tokens.
            apply: how to apply the final norm module.

        Returns:
            B×N×D tokens.
        """


@dataclass
class ImageConfig:
    """How images are prepared for a model.

    Args:
        size: the (height, width) the model was trained at.
        mean: per-channel mean for normalization.
        std: per-channel standard deviation.
    """

    size: tuple[int, int] = (224, 224)
    mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ModelInfo:
    """What a loaded model is, for summaries and for honesty about random weights.

    Args:
        name: the name it was loaded by.
        pretrained: the weights' tag, file or folder; None for random weights.
        random_weights: True when no trained weights were loaded.
        default_depth: the GEM depth used when none is asked for.
        gem_temperature: GEM's self-self attention inverse temperature; None for GEM's
            adaptive default.
        templates: the prompt templates used when none are given.
    """

    name: str
    pretrained: str | None = None
    random_weights: bool = False
    default_depth: int = 7
    gem_temperature: float | None = None
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])

    def apply_settings(self, folder: Path) -> None:
        """Take a model folder's own settings (:data:`SETTINGS_FILE`), where it has them.

        The file holds any of ``default_depth``, ``gem_temperature`` and ``templates``.

        Args:
            folder: the model folder.

        Raises:
            WeightsNotFoundError: when the settings file is there but unreadable.
        """
        path = folder / SETTINGS_FILE
        if not path.is_file():
            return
        try:
            settings = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise WeightsNotFoundError(f"cannot read the model settings {path}: {err}") from err
        if not isinstance(settings, dict):
            raise WeightsNotFoundError(f"{path} must hold a JSON object of settings")
        if "default_depth" in settings:
            self.default_depth = int(settings["default_depth"])
        if "gem_temperature" in settings:
            temp = settings["gem_temperature"]
            self.gem_temperature = None if temp is None else float(temp)
        if "templates" in settings:
            self.templates = [str(t) for t in settings["templates"]]


class Backend(ABC):
    """One model family behind one interface.

    Attributes:
        model: the wrapped model.
        vision: the view of its image transformer.
        image_config: how images are prepared for it.
        info: what it is.
        tokenizer: its text tokenizer (open_clip's or a Hugging Face one).
    """

    model: Any
    vision: VisionTower
    image_config: ImageConfig
    info: ModelInfo
    tokenizer: Any

    @abstractmethod
    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        """Embed prompts verbatim.

        Args:
            prompts: K strings.

        Returns:
            K×D unnormalized embeddings on the model's device.
        """

    @property
    @abstractmethod
    def logit_scale(self) -> float:
        """The model's learned temperature (already exponentiated)."""

    def text_context(self) -> int | None:
        """How many tokens the text encoder reads (its tokenizer cuts the rest).

        Returns:
            The context length, or None where unknown.
        """
        return None

    def cut_prompts(self, prompts: Sequence[str]) -> tuple[list[str], int]:
        """The prompts longer than the text encoder reads, of which it sees only the start.

        Args:
            prompts: prompts to measure.

        Returns:
            The prompts that are cut and the context in tokens; ``([], 0)`` where the backend
            or its tokenizer cannot say.
        """
        context = self.text_context()
        if not context:
            return [], 0
        tokenizer = getattr(self, "tokenizer", None)
        counts = [token_count(tokenizer, p) for p in prompts]
        return [p for p, n in zip(prompts, counts) if n is not None and n > context], context

    @property
    def device(self) -> torch.device:
        """The device the model's weights are on."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The precision of the model's weights."""
        return next(self.model.parameters()).dtype


def token_count(tokenizer: Any, text: str) -> int | None:
    """How many tokens ``tokenizer`` makes of ``text`` before any cut, start and end included.

    Args:
        tokenizer: open_clip's own BPE tokenizer, a Hugging Face tokenizer, or open_clip's
            wrapper of one.
        text: the prompt.

    Returns:
        The count, or None for a tokenizer of another kind.
    """
    if hasattr(tokenizer, "sot_token_id") and hasattr(tokenizer, "encode"):  # open_clip's BPE
        return len(tokenizer.encode(text)) + 2
    hf = tokenizer if hasattr(tokenizer, "model_input_names") else getattr(tokenizer, "tokenizer", None)
    if hf is not None and hasattr(hf, "model_input_names"):
        text = tokenizer.clean_fn(text) if hasattr(tokenizer, "clean_fn") else text
        return len(hf(text, truncation=False, verbose=False)["input_ids"])
    return None
