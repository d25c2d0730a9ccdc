"""The small interface every model family implements.

A backend owns a CLIP-like model and exposes two things:

* a text encoder (:meth:`Backend.encode_text`), strings in, unnormalized embeddings out;
* a :class:`VisionTower`: a view of the image transformer split into the pieces GEM needs
  (patch embedding, one :class:`TransformerBlock` view per residual block, the pooling head
  and the token projection).

The views never change the wrapped modules: GEM (``mmfinercam.gem``) runs its own forward pass
over them, so nothing in open_clip or transformers is patched.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def hub_offline() -> bool:
    """Whether the Hugging Face Hub is switched off (``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``)."""
    flags = (os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


def offline_hint() -> str:
    """How to skip the Hub's download retries (about half a minute) on a machine with no network."""
    if hub_offline():
        return ""
    return "; with no network here, set HF_HUB_OFFLINE=1 to fail (or load from the cache) at once"


def hf_cache_dir() -> str:
    """Where huggingface_hub looks for downloaded models (HF_HUB_CACHE, else HF_HOME/hub)."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return os.environ.get("HF_HUB_CACHE") or str(home / "hub")


def patch_embed(pixels: Tensor, conv: nn.Conv2d) -> tuple[Tensor, tuple[int, int]]:
    """A ViT's patchifying convolution as one matrix product: (B×N×C tokens, grid).

    The same numbers as ``conv(pixels).flatten(2).transpose(1, 2)``, in a row-major grid. Why:
    cuDNN runs this convolution (kernel = stride) as a generic kernel plus layout conversions,
    about 2 ms of a 36 ms Finer-CAM call at batch 256 in bf16 on an H200; the matrix product
    takes a tenth of a millisecond. Other convolutions are run as they are.
    """
    kh, kw = conv.kernel_size
    pixels = pixels.to(conv.weight.dtype)
    patchify = tuple(conv.stride) == (kh, kw) and conv.padding in ((0, 0), "valid")
    if not (patchify and tuple(conv.dilation) == (1, 1) and conv.groups == 1):
        x = conv(pixels)
        return x.flatten(2).transpose(1, 2), (int(x.shape[-2]), int(x.shape[-1]))
    b, c, h, w = pixels.shape
    gh, gw = h // kh, w // kw
    patches = pixels[:, :, : gh * kh, : gw * kw].reshape(b, c, gh, kh, gw, kw)
    patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * kh * kw)
    return F.linear(patches, conv.weight.reshape(conv.out_channels, -1), conv.bias), (gh, gw)


def merge_heads(o: Tensor) -> Tensor:
    """B×heads×N×head_dim attention outputs as B×N×(heads·head_dim), as an output projection
    reads them: a view where the heads already lie merged in memory (the fused kernel's output),
    else a copy."""
    b, h, n, d = o.shape
    return o.transpose(1, 2).reshape(b, n, h * d)


def fold_layer_scale(
    linear: nn.Linear, layer_scale: nn.Module | None = None
) -> tuple[Tensor, Tensor | None] | None:
    """``layer_scale(linear(x))`` as one (weight, bias): the identity, or a per-channel ``gamma``
    (open_clip's and timm's ``LayerScale``) folded into the rows; None for anything else."""
    weight, bias = linear.weight, linear.bias
    if layer_scale is None or isinstance(layer_scale, nn.Identity):
        return weight, bias
    gamma = getattr(layer_scale, "gamma", None)
    if not isinstance(gamma, Tensor) or gamma.shape != weight.shape[:1]:
        return None
    return weight * gamma[:, None], None if bias is None else bias * gamma


class TransformerBlock(ABC):
    """A pre-norm ViT residual block: ``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``."""

    num_heads: int

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """The block unchanged (B×N×C in, B×N×C out)."""

    @property
    @abstractmethod
    def norm1_layer(self) -> nn.Module:
        """The pre-attention normalization module (the tower runs it fused with the residual
        add before it where it is a plain LayerNorm: :mod:`mmfinercam.add_norm`)."""

    @property
    @abstractmethod
    def norm2_layer(self) -> nn.Module:
        """The pre-MLP normalization module."""

    def norm1(self, x: Tensor) -> Tensor:
        """The pre-attention normalization."""
        return self.norm1_layer(x)

    @abstractmethod
    def qkv(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values of the normalized tokens, each B×heads×N×head_dim."""

    @abstractmethod
    def attn_out(self, o: Tensor) -> Tensor:
        """Merge heads (B×heads×N×head_dim), apply the output projection and layer scale."""

    def attn_out_affine(self) -> tuple[Tensor, Tensor | None] | None:
        """:meth:`attn_out` after the heads are merged, as one affine map (weight C×C, bias C),
        the layer scale folded in; None where it is not affine (a norm over the merged heads).

        GEM sums the six blocks' projections of its own path: with the map in hand it adds all
        biases once and each product straight into the sum (``addmm_``), no pass of its own."""
        return None

    @abstractmethod
    def mlp(self, h: Tensor) -> Tensor:
        """The MLP branch of normalized tokens, layer scale applied: ``ls2(mlp(h))``."""

    def mlp_residual(self, x: Tensor) -> Tensor:
        """``x + ls2(mlp(norm2(x)))``."""
        return x + self.mlp(self.norm2_layer(x))

    def attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The block's own attention (scaled dot product); override for unusual variants."""
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


class VisionTower(ABC):
    """The image transformer of a CLIP-like model, as GEM sees it."""

    patch_size: tuple[int, int]
    num_prefix_tokens: int
    blocks: Sequence[TransformerBlock]
    #: how many leading tokens of the last layer :meth:`pool` reads (1: the class token), or
    #: None for all; GEM then runs the last block's original path for those tokens alone
    pooled_tokens: int | None = None

    @abstractmethod
    def embed(self, pixels: Tensor) -> Tensor:
        """Patchify, add prefix tokens and (resampled) positions, pre-norm: B×N×C."""

    @abstractmethod
    def pool(self, x: Tensor) -> Tensor:
        """Global image embedding (B×D, unnormalized) from the final tokens of the original path
        (only the first :attr:`pooled_tokens` of them, when that is set)."""

    @abstractmethod
    def project_tokens(self, x: Tensor) -> Tensor:
        """Final norm and projection into the joint space for every token: B×N×D."""


@dataclass
class ImageConfig:
    """How images are prepared for a model."""

    size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ModelInfo:
    """What a loaded model is, for summaries and for honesty about random weights."""

    name: str
    pretrained: str | None = None
    random_weights: bool = False
    default_depth: int = 7
    #: GEM's self-self attention inverse temperature; None = GEM's adaptive default
    gem_temperature: float | None = None
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])


class Backend(ABC):
    """One model family behind one interface."""

    model: nn.Module
    vision: VisionTower
    image_config: ImageConfig
    info: ModelInfo
    tokenizer: Any  #: the text tokenizer (open_clip's or a Hugging Face one; a backend may have none)

    @abstractmethod
    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        """Embed prompts verbatim: K×D, unnormalized, on the model's device."""

    @property
    @abstractmethod
    def logit_scale(self) -> float:
        """The model's learned temperature (already exponentiated)."""

    def text_context(self) -> int | None:
        """How many tokens the text encoder reads (its tokenizer cuts the rest); None if unknown."""
        return None

    def cut_prompts(self, prompts: Sequence[str]) -> tuple[list[str], int]:
        """The prompts longer than the text encoder's context, which it reads only the start of,
        and that context in tokens; ``([], 0)`` where the backend or its tokenizer cannot say."""
        context = self.text_context()
        if not context:
            return [], 0
        tokenizer = getattr(self, "tokenizer", None)
        counts = [token_count(tokenizer, p) for p in prompts]
        return [p for p, n in zip(prompts, counts) if n is not None and n > context], context

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def token_count(tokenizer: Any, text: str) -> int | None:
    """How many tokens ``tokenizer`` makes of ``text`` before any cut, start and end tokens
    included: for open_clip's own BPE tokenizer, a Hugging Face tokenizer, or open_clip's
    wrapper of one; None for a tokenizer of another kind."""
    if hasattr(tokenizer, "sot_token_id") and hasattr(tokenizer, "encode"):  # open_clip's BPE
        return len(tokenizer.encode(text)) + 2
    hf = tokenizer if hasattr(tokenizer, "model_input_names") else getattr(tokenizer, "tokenizer", None)
    if hf is not None and hasattr(hf, "model_input_names"):
        text = tokenizer.clean_fn(text) if hasattr(tokenizer, "clean_fn") else text
        return len(hf(text, truncation=False, verbose=False)["input_ids"])
    return None
