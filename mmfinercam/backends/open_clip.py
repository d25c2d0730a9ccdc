"""OpenCLIP backend: any open_clip ViT (OpenAI CLIP, LAION, BioCLIP, custom configs).

Loads by model name and pretrained tag (``"ViT-B-16", "openai"``), by ``hf-hub:`` id, by a
local folder holding ``open_clip_config.json`` and weights (with mmfinercam's own settings for
it in ``mmfinercam.json``, as the shipped testbed model has), or by a model name plus a local
checkpoint file. ``pretrained=None`` builds random weights.

Blocks are accepted by what their attention has (a fused q/k/v projection ``in_proj_weight``,
an output projection ``out_proj`` and ``num_heads``), not by its class: both
``nn.MultiheadAttention`` and open_clip's own ``Attention`` qualify, with its q/k norms, head
scale and inner norm applied as the model applies them.
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

from ..errors import UnsupportedModelError, WeightsNotFoundError
from ._hub import hf_cache_dir, in_hub_cache, offline_hint
from ._ops import ModuleFn, call_module, fold_layer_scale, merge_heads, patch_embed, resample_pos_embed
from .base import Backend, ImageConfig, ModelInfo, TransformerBlock, VisionTower
from .registry import BackendSpec, register_backend

#: weight files an open_clip folder or hub repository holds
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _identity_or(module: object) -> nn.Module:
    return module if isinstance(module, nn.Module) else nn.Identity()


class OpenCLIPBlock(TransformerBlock):
    """View of an open_clip residual attention block.

    Args:
        block: ``ResidualAttentionBlock`` or ``CustomResidualAttentionBlock``.
        batch_first: whether the model's transformer runs tokens batch first.

    Raises:
        UnsupportedModelError: for attention without a fused q/k/v projection, cross attention,
            or scaled cosine attention.
    """

    def __init__(self, block: Any, batch_first: bool) -> None:
        attn: Any = getattr(block, "attn", None)
        weight = getattr(attn, "in_proj_weight", None)
        heads = getattr(attn, "num_heads", None)
        if not (isinstance(weight, Tensor) and isinstance(getattr(attn, "out_proj", None), nn.Linear)):
            raise UnsupportedModelError(
                "GEM needs attention with a fused q/k/v projection (in_proj_weight), an output "
                f"projection (out_proj) and num_heads; {type(attn).__name__} has not"
            )
        if not isinstance(heads, int) or hasattr(block, "ln_1_kv"):
            raise UnsupportedModelError(f"GEM needs self-attention with num_heads; got {type(attn).__name__}")
        if getattr(attn, "logit_scale", None) is not None:
            raise UnsupportedModelError("GEM does not support open_clip's scaled cosine attention")
        self.block, self.attn, self.batch_first, self.num_heads = block, attn, batch_first, heads
        self._q_norm, self._k_norm = (
            _identity_or(getattr(attn, "ln_q", None)),
            _identity_or(getattr(attn, "ln_k", None)),
        )
        self._inner = _identity_or(getattr(attn, "ln_inner", None))
        self._after = _identity_or(getattr(block, "ln_attn", None))  # scale_attn's norm of the output
        self._head_scale = getattr(attn, "head_scale", None)
        scale = getattr(attn, "scale", None)
        self.attention_scale = None if scale is None else float(scale)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - the interface's
        if self.batch_first:
            return self.block(x)
        return self.block(x.transpose(0, 1)).transpose(0, 1)

    @property
    def norm1(self) -> nn.Module:  # noqa: D102
        return self.block.ln_1

    @property
    def norm2(self) -> nn.Module:  # noqa: D102
        return self.block.ln_2

    def qkv(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # noqa: D102
        b, n, c = h.shape
        qkv = F.linear(h, self.attn.in_proj_weight, self.attn.in_proj_bias)
        qkv = qkv.view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        return self._q_norm(qkv[0]), self._k_norm(qkv[1]), qkv[2]

    def attn_out(self, o: Tensor) -> Tensor:  # noqa: D102
        if self._head_scale is not None:
            o = o * self._head_scale
        return self.block.ls_1(self._after(self.attn.out_proj(self._inner(merge_heads(o)))))

    def attn_out_affine(self) -> tuple[Tensor, Tensor | None] | None:  # noqa: D102
        plain = all(isinstance(m, nn.Identity) for m in (self._inner, self._after))
        if not plain or self._head_scale is not None:
            return None
        return fold_layer_scale(self.attn.out_proj, self.block.ls_1)

    def mlp(self, h: Tensor, apply: ModuleFn = call_module) -> Tensor:  # noqa: D102
        mlp = self.block.mlp
        parts = mlp._modules
        if not {"c_fc", "gelu", "c_proj"} <= set(parts) or not set(parts) <= {"c_fc", "gelu", "ln", "c_proj"}:
            return self.block.ls_2(mlp(h))
        hidden = apply(mlp.c_fc(h), mlp.gelu)  # its activation, through ``apply`` (QuickGELU fused)
        return self.block.ls_2(mlp.c_proj(_identity_or(parts.get("ln"))(hidden)))


class OpenCLIPVisionTower(VisionTower):
    """View of ``open_clip.transformer.VisionTransformer``.

    Args:
        visual: the model's image tower.

    Raises:
        UnsupportedModelError: for towers without patch tokens (ResNet, ConvNeXt) or with
            attentional pooling.
    """

    def __init__(self, visual: Any) -> None:
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
        self.grid_size = (int(visual.grid_size[0]), int(visual.grid_size[1]))
        self.num_prefix_tokens = 1
        self.pooled_tokens = 1 if getattr(visual, "pool_type", "tok") == "tok" else None

    def embed(self, pixels: Tensor, apply: ModuleFn = call_module) -> Tensor:  # noqa: D102
        v = self.visual
        x, (gh, gw) = patch_embed(pixels, v.conv1)
        b, _, c = x.shape
        cls = v.class_embedding.to(x.dtype).view(1, 1, c).expand(b, 1, c)
        pos = resample_pos_embed(v.positional_embedding, (gh, gw), self.grid_size, 1)
        x = torch.cat([cls, x], dim=1) + pos.to(x.dtype)
        return apply(x, v.ln_pre)

    def pool(self, x: Tensor) -> Tensor:  # noqa: D102
        v = self.visual
        pool_type = getattr(v, "pool_type", "tok")
        if getattr(v, "final_ln_after_pool", False):
            pooled = v.ln_post(_global_pool(x, pool_type))
        elif pool_type == "tok":  # the norm is per token: only the pooled one needs it
            pooled = v.ln_post(x[:, 0])
        else:
            pooled = _global_pool(v.ln_post(x), pool_type)
        return pooled @ v.proj if v.proj is not None else pooled

    def project_tokens(self, x: Tensor, apply: ModuleFn = call_module) -> Tensor:  # noqa: D102
        v = self.visual
        x = apply(x, v.ln_post)
        return x @ v.proj if v.proj is not None else x


def _global_pool(x: Tensor, pool_type: str) -> Tensor:
    if pool_type == "avg":
        return x[:, 1:].mean(dim=1)
    if pool_type == "tok":
        return x[:, 0]
    raise UnsupportedModelError(f"unsupported open_clip pool_type {pool_type!r}")


def vision_tower_of(visual: nn.Module) -> VisionTower:
    """The view of an open_clip image tower: its own ViT, or a timm ViT trunk.

    Args:
        visual: the model's ``visual`` module.

    Returns:
        The tower view.
    """
    if hasattr(visual, "trunk"):
        from .timm_vit import TimmVisionTower

        return TimmVisionTower(visual)
    return OpenCLIPVisionTower(visual)


class OpenCLIPBackend(Backend):
    """A built open_clip ``CLIP`` model plus its tokenizer.

    Args:
        model: the model.
        tokenizer: open_clip's tokenizer for it.
        image_config: how images are prepared (default: the model's preprocess config).
        info: what it is (default: named by its class).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Callable[[Sequence[str]], Tensor],
        image_config: ImageConfig | None = None,
        info: ModelInfo | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.vision = vision_tower_of(model.visual)
        self.image_config = image_config or image_config_of(model)
        self.info = info or ModelInfo(name=type(model).__name__)

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Callable[[Sequence[str]], Tensor],
        preprocess: Any = None,
        name: str | None = None,
    ) -> OpenCLIPBackend:
        """Wrap a model the user already built; its ``Normalize`` step read from ``preprocess``.

        Args:
            model: an open_clip ``CLIP`` with a ViT image tower.
            tokenizer: its tokenizer.
            preprocess: its preprocessing transform (a torchvision ``Compose``), or None.
            name: a name for summaries.

        Returns:
            The backend.
        """
        config = image_config_of(model)
        normalize = next(
            (t for t in getattr(preprocess, "transforms", None) or [] if hasattr(t, "std")), None
        )
        if normalize is not None:
            config.mean = tuple(float(m) for m in normalize.mean)
            config.std = tuple(float(s) for s in normalize.std)
        return cls(model, tokenizer, config, ModelInfo(name=name or type(model).__name__))

    @torch.inference_mode()
    def encode_text(self, prompts: Sequence[str]) -> Tensor:  # noqa: D102
        tokens = self.tokenizer(list(prompts)).to(self.device)
        return self.model.encode_text(tokens)

    @property
    def logit_scale(self) -> float:  # noqa: D102
        return float(self.model.logit_scale.detach().exp())

    def text_context(self) -> int | None:  # noqa: D102
        context = getattr(self.tokenizer, "context_length", None)
        return int(context) if context else None


def image_config_of(model: nn.Module) -> ImageConfig:
    """Size, mean and std from an open_clip model's preprocess config (open_clip >= 2.24).

    Args:
        model: an open_clip model.

    Returns:
        Its image config (CLIP's defaults where it has none).
    """
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
    repo = (open_clip.get_pretrained_cfg(name, pretrained) or {}).get("hf_hub") or None
    return repo.rstrip("/") if repo else None


def _missing_weights_message(name: str, pretrained: str | None) -> str:
    what = name if pretrained is None else f"{name} pretrained={pretrained!r}"
    repo = _hub_repo(name, pretrained)
    where = f" (hub repo {repo})" if repo else ""
    fetch = f"run `hf download {repo}` on a connected machine and copy the cache, " if repo else ""
    return (
        f"could not load weights for {what}{where}: not in the Hugging Face cache {hf_cache_dir()} and "
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
    """Build an open_clip model by name, ``hf-hub:`` id, ``local-dir:`` or folder.

    Args:
        model: the name, id or folder.
        pretrained: a pretrained tag or a checkpoint file; None for the folder's or hub's own
            weights, or random weights for an architecture name.
        device: where to build it.
        dtype: its precision (default float32).
        **model_kwargs: passed to ``open_clip.create_model`` (``force_quick_gelu``, ...).

    Returns:
        The backend.

    Raises:
        WeightsNotFoundError: when the weights cannot be found or the name is unknown.
        ValueError: for a precision open_clip cannot build.
    """
    import open_clip

    name = model
    path = Path(model).expanduser()
    folder = path if path.is_dir() else None
    if folder is not None:
        if not (folder / "open_clip_config.json").is_file():
            raise WeightsNotFoundError(
                f"{folder} has no open_clip_config.json; an open_clip folder holds that file and the "
                "weights (open_clip_model.safetensors or open_clip_pytorch_model.bin)"
            )
        name = f"local-dir:{folder}"
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
    random_weights = pretrained is None and folder is None and not name.startswith(("hf-hub:", "local-dir:"))
    info = ModelInfo(
        name=model, pretrained=str(folder) if folder else pretrained, random_weights=random_weights
    )
    if folder is not None:
        info.apply_settings(folder)
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


def _claims(model: str) -> bool:
    if model.startswith(("hf-hub:", "local-dir:")):
        return True
    path = Path(model).expanduser()
    if path.is_dir():
        return (path / "open_clip_config.json").is_file()
    import open_clip

    return model in open_clip.list_models()


def _weights_present(model: str, pretrained: str | None) -> bool:
    folder = Path(model.removeprefix("local-dir:")).expanduser()
    if folder.is_dir():
        return any((folder / n).is_file() for n in WEIGHT_FILES)
    if pretrained is not None and _looks_like_path(pretrained):
        return Path(pretrained).expanduser().is_file()
    repo = _hub_repo(model, pretrained)
    return repo is not None and in_hub_cache(repo, (*WEIGHT_FILES, "open_clip_config.json"))


SPEC = register_backend(
    BackendSpec(
        "open_clip",
        load_open_clip,
        _claims,
        _weights_present,
        "open_clip ViTs: model names with pretrained tags, hf-hub: ids, local folders and files",
    )
)
