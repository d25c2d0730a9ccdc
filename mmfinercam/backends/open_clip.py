"""OpenCLIP backend: any open_clip ViT (OpenAI CLIP, LAION, BioCLIP, custom configs).

Loads by model name and pretrained tag (``"ViT-B-16", "openai"``), by ``hf-hub:`` id, by a
local folder holding ``open_clip_config.json`` and weights, or by a model name plus a local
checkpoint file. ``pretrained=None`` builds random weights.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..add_norm import layer_norm
from ..errors import UnsupportedModelError, WeightsNotFoundError
from ..gem import resample_pos_embed
from ..quick_gelu import activation
from .base import (
    Backend,
    ImageConfig,
    ModelInfo,
    TransformerBlock,
    VisionTower,
    fold_layer_scale,
    hf_cache_dir,
    merge_heads,
    offline_hint,
    patch_embed,
)

log = logging.getLogger(__name__)


class OpenCLIPBlock(TransformerBlock):
    """View of ``open_clip.transformer.ResidualAttentionBlock`` with ``nn.MultiheadAttention``."""

    def __init__(self, block: nn.Module, batch_first: bool):
        attn = getattr(block, "attn", None)
        if not isinstance(attn, nn.MultiheadAttention) or hasattr(block, "ln_1_kv"):
            raise UnsupportedModelError(
                f"GEM needs open_clip blocks with nn.MultiheadAttention; got {type(attn).__name__}"
            )
        if not isinstance(getattr(block, "ln_attn", nn.Identity()), nn.Identity):
            raise UnsupportedModelError("GEM does not support open_clip blocks with scale_attn")
        self.block = block
        self.attn = attn
        self.batch_first = batch_first
        self.num_heads = attn.num_heads

    def forward(self, x: Tensor) -> Tensor:
        if self.batch_first:
            return self.block(x)
        return self.block(x.transpose(0, 1)).transpose(0, 1)

    @property
    def norm1_layer(self) -> nn.Module:
        return self.block.ln_1

    @property
    def norm2_layer(self) -> nn.Module:
        return self.block.ln_2

    def qkv(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, n, c = h.shape
        qkv = F.linear(h, self.attn.in_proj_weight, self.attn.in_proj_bias)
        qkv = qkv.view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def attn_out(self, o: Tensor) -> Tensor:
        return self.block.ls_1(self.attn.out_proj(merge_heads(o)))

    def attn_out_affine(self) -> tuple[Tensor, Tensor | None] | None:
        return fold_layer_scale(self.attn.out_proj, self.block.ls_1)

    def mlp(self, h: Tensor) -> Tensor:
        mlp = self.block.mlp
        if list(mlp._modules) != ["c_fc", "gelu", "c_proj"]:  # scale_fc: a norm in between
            return self.block.ls_2(mlp(h))
        # its activation may be QuickGELU, one pass on a GPU instead of three
        return self.block.ls_2(mlp.c_proj(activation(mlp.c_fc(h), mlp.gelu)))


class OpenCLIPVisionTower(VisionTower):
    """View of ``open_clip.transformer.VisionTransformer``."""

    def __init__(self, visual: nn.Module):
        needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer")
        if not all(hasattr(visual, a) for a in needed):
            raise UnsupportedModelError(
                f"GEM needs an open_clip VisionTransformer image tower; got {type(visual).__name__} "
                "(ResNet, ConvNeXt and timm towers have no patch tokens to refine)"
            )
        if getattr(visual, "attn_pool", None) is not None:
            raise UnsupportedModelError("GEM does not support attentional pooling (CoCa) towers")
        self.visual = visual
        batch_first = getattr(visual.transformer, "batch_first", False)
        self.blocks = [OpenCLIPBlock(b, batch_first) for b in visual.transformer.resblocks]
        ps = visual.patch_size
        self.patch_size = (ps, ps) if isinstance(ps, int) else (int(ps[0]), int(ps[1]))
        self.grid_size = tuple(int(g) for g in visual.grid_size)
        self.num_prefix_tokens = 1
        self.pooled_tokens = 1 if getattr(visual, "pool_type", "tok") == "tok" else None

    def embed(self, pixels: Tensor) -> Tensor:
        v = self.visual
        x, (gh, gw) = patch_embed(pixels, v.conv1)
        b, _, c = x.shape
        cls = v.class_embedding.to(x.dtype).view(1, 1, c).expand(b, 1, c)
        pos = resample_pos_embed(v.positional_embedding, (gh, gw), self.grid_size, 1)
        x = torch.cat([cls, x], dim=1) + pos.to(x.dtype)
        return layer_norm(x, v.ln_pre)

    def pool(self, x: Tensor) -> Tensor:
        v = self.visual
        pool_type = getattr(v, "pool_type", "tok")
        if getattr(v, "final_ln_after_pool", False):
            pooled = v.ln_post(_global_pool(x, pool_type))
        elif pool_type == "tok":  # the norm is per token: only the pooled one needs it
            pooled = v.ln_post(x[:, 0])
        else:
            pooled = _global_pool(v.ln_post(x), pool_type)
        return pooled @ v.proj if v.proj is not None else pooled

    def project_tokens(self, x: Tensor) -> Tensor:
        v = self.visual
        x = layer_norm(x, v.ln_post)
        return x @ v.proj if v.proj is not None else x


def _global_pool(x: Tensor, pool_type: str) -> Tensor:
    if pool_type == "avg":
        return x[:, 1:].mean(dim=1)
    if pool_type == "tok":
        return x[:, 0]
    raise UnsupportedModelError(f"unsupported open_clip pool_type {pool_type!r}")


def vision_tower_of(visual: nn.Module) -> VisionTower:
    """The GEM view of an open_clip image tower: its own ViT, or a timm ViT trunk."""
    if hasattr(visual, "trunk"):
        from .timm_vit import TimmVisionTower

        return TimmVisionTower(visual)
    return OpenCLIPVisionTower(visual)


class OpenCLIPBackend(Backend):
    """A built open_clip ``CLIP`` model plus its tokenizer."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable[[Sequence[str]], Tensor],
        image_config: ImageConfig | None = None,
        info: ModelInfo | None = None,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.vision = vision_tower_of(model.visual)
        self.image_config = image_config or image_config_of(model)
        self.info = info or ModelInfo(name=type(model).__name__)

    @torch.inference_mode()
    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        tokens = self.tokenizer(list(prompts)).to(self.device)
        return self.model.encode_text(tokens)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())

    def text_context(self) -> int | None:
        context = getattr(self.tokenizer, "context_length", None)
        return int(context) if context else None


def image_config_of(model: nn.Module) -> ImageConfig:
    """Read size, mean and std from the model's preprocess config (open_clip >= 2.24)."""
    cfg: dict[str, Any] = getattr(model.visual, "preprocess_cfg", None) or {}
    size = cfg.get("size", getattr(model.visual, "image_size", (224, 224)))
    size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    defaults = ImageConfig()
    return ImageConfig(
        size=size,
        mean=tuple(cfg.get("mean", defaults.mean)),
        std=tuple(cfg.get("std", defaults.std)),
    )


def _hub_repo(name: str, pretrained: str | None) -> str | None:
    """The Hugging Face repo open_clip downloads ``name``/``pretrained`` from, if any."""
    import open_clip

    if name.startswith("hf-hub:"):
        return name[len("hf-hub:") :]
    if pretrained is None:
        return None
    repo = open_clip.get_pretrained_cfg(name, pretrained).get("hf_hub") or None
    return repo.rstrip("/") if repo else None


def _missing_weights_message(name: str, pretrained: str | None) -> str:
    cache = hf_cache_dir()
    what = name if pretrained is None else f"{name} pretrained={pretrained!r}"
    repo = _hub_repo(name, pretrained)
    where = f" (hub repo {repo})" if repo else ""
    fetch = f"run `hf download {repo}` on a connected machine and copy the cache, " if repo else ""
    return (
        f"could not load weights for {what}{where}: not in the Hugging Face cache {cache} and "
        f"no network; {fetch}or pass a local checkpoint file/folder{offline_hint()}"
    )


@contextmanager
def _quiet_open_clip_logging() -> Iterator[None]:
    """open_clip reports through the root logger; our exceptions say it better, once."""
    root = logging.getLogger()
    guard = logging.NullHandler() if not root.handlers else None
    if guard:
        root.addHandler(guard)
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        if guard:
            root.removeHandler(guard)


def load_open_clip(
    model: str,
    pretrained: str | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    **model_kwargs: Any,
) -> OpenCLIPBackend:
    """Build an open_clip model by name/``hf-hub:``/``local-dir:``/folder, with or without weights."""
    import open_clip

    name = model
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "open_clip_config.json").is_file():
            raise WeightsNotFoundError(
                f"{path} has no open_clip_config.json; an open_clip folder holds that file and the "
                "weights (open_clip_model.safetensors or open_clip_pytorch_model.bin)"
            )
        name = f"local-dir:{path}"
    if pretrained is not None and _looks_like_path(pretrained):
        if not Path(pretrained).expanduser().is_file():
            raise WeightsNotFoundError(
                f"checkpoint file not found: {pretrained} (pass an existing .pt/.bin/.safetensors "
                f"file holding {model} weights)"
            )
    elif pretrained is not None and not name.startswith(("hf-hub:", "local-dir:")):
        known = [t for m, t in open_clip.list_pretrained() if m == name]
        if known and pretrained not in known:
            raise WeightsNotFoundError(
                f"open_clip has no pretrained tag {pretrained!r} for {name}; known tags: " + ", ".join(known)
            )
        if _tag_needs_quick_gelu(name, pretrained):
            model_kwargs.setdefault("force_quick_gelu", True)
    if not name.startswith(("hf-hub:", "local-dir:")) and name not in open_clip.list_models():
        raise WeightsNotFoundError(
            f"unknown model {model!r}: not an open_clip model name, hf-hub: id, open_clip folder "
            "or transformers folder (see `mmfinercam models`)"
        )
    precision = {None: "fp32", torch.float32: "fp32", torch.float16: "pure_fp16", torch.bfloat16: "pure_bf16"}
    if dtype not in precision:
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    try:
        with _quiet_open_clip_logging():
            clip = open_clip.create_model(
                name, pretrained=pretrained, precision=precision[dtype], device=device, **model_kwargs
            )
    except (RuntimeError, OSError) as err:
        if pretrained is None and not name.startswith("hf-hub:"):
            raise
        raise WeightsNotFoundError(_missing_weights_message(name, pretrained)) from err
    tokenizer = open_clip.get_tokenizer(name)
    random_weights = pretrained is None and not name.startswith(("hf-hub:", "local-dir:"))
    info = ModelInfo(name=model, pretrained=pretrained, random_weights=random_weights)
    return OpenCLIPBackend(clip, tokenizer, info=info)


def _tag_needs_quick_gelu(name: str, pretrained: str) -> bool:
    """Whether a built-in model's weights under this tag were trained with QuickGELU while its
    config says GELU (OpenAI's ``ViT-B-16``, LAION-400M's, MetaCLIP's ...). open_clip 3 builds
    the config as it is and only warns, so the model would run with the wrong activation."""
    import open_clip

    trained_with = bool((open_clip.get_pretrained_cfg(name, pretrained) or {}).get("quick_gelu"))
    return trained_with and not (open_clip.get_model_config(name) or {}).get("quick_gelu")


def _looks_like_path(s: str) -> bool:
    return os.sep in s or s.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))
