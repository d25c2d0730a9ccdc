"""Hugging Face transformers backend: ``CLIPModel``, ``SiglipModel`` and ``Siglip2Model``.

Loads by hub id or local folder with ``from_pretrained`` (``HF_HUB_OFFLINE`` honoured; a
missing model gives one line naming what was looked for), or wraps a built model with
:meth:`TransformersBackend.from_model`.

SigLIP has no CLS token and pools with an attention head (a learned probe attends over all
tokens, then layer norm and an MLP). Here:

* the global embedding is the model's own pooled output (probe attention over all tokens);
* a patch token is mapped into the joint space by the same head applied to that token alone:
  attention over a single key is the identity, leaving the value and output projections, then
  the head's residual MLP. GEM tokens go through the same map, after ``post_layernorm``.

SigLIP 2 (NaFlex) embeds flattened patches with a linear layer and resizes its position table
to each image's patch grid with its own resampler. Our images come as one fixed-size batch, so
every image has the same grid and no padding: the tower patchifies in the processor's order
(rows, columns, then pixel rows, pixel columns, channels) and calls the model's resampler, which
gives what ``Siglip2Model`` gives for the same pixels with an all-ones attention mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UnsupportedModelError, WeightsNotFoundError
from ._hub import hf_cache_dir, hub_offline, in_hub_cache, offline_hint
from ._ops import ModuleFn, call_module, fold_layer_scale, merge_heads, patch_embed, resample_pos_embed
from .base import Backend, ImageConfig, ModelInfo, TransformerBlock, VisionTower
from .registry import BackendSpec, register_backend


class HFBlock(TransformerBlock):
    """View of a CLIP or SigLIP encoder layer (layer_norm1, self_attn's q/k/v/out_proj, layer_norm2, mlp).

    Args:
        layer: the encoder layer.

    Raises:
        UnsupportedModelError: for attention without separate q/k/v projections.
    """

    def __init__(self, layer: Any) -> None:
        attn = layer.self_attn
        if not all(hasattr(attn, a) for a in ("q_proj", "k_proj", "v_proj", "out_proj")):
            raise UnsupportedModelError(f"GEM needs q/k/v projections; {type(attn).__name__} has none")
        self.layer = layer
        self.attn = attn
        self.num_heads = int(getattr(attn, "num_heads", attn.embed_dim // attn.head_dim))
        self.attention_scale = float(attn.scale)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - the interface's
        out = self.layer(x, None)
        return out[0] if isinstance(out, tuple) else out

    @property
    def norm1(self) -> nn.Module:  # noqa: D102 - the interface's
        return self.layer.layer_norm1

    @property
    def norm2(self) -> nn.Module:  # noqa: D102
        return self.layer.layer_norm2

    def qkv(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # noqa: D102 - the interface's
        b, n, c = h.shape

        def split(t: Tensor) -> Tensor:
            return t.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

        return split(self.attn.q_proj(h)), split(self.attn.k_proj(h)), split(self.attn.v_proj(h))

    def attn_out(self, o: Tensor) -> Tensor:  # noqa: D102 - the interface's
        return self.attn.out_proj(merge_heads(o))

    def attn_out_affine(self) -> tuple[Tensor, Tensor | None] | None:  # noqa: D102 - the interface's
        return fold_layer_scale(self.attn.out_proj)

    def mlp(self, h: Tensor, apply: ModuleFn = call_module) -> Tensor:  # noqa: D102
        mlp = self.layer.mlp
        if set(mlp._modules) != {"fc1", "activation_fn", "fc2"}:
            return mlp(h)
        # CLIP's and SigLIP's MLP; its activation through ``apply`` (OpenAI CLIP's QuickGELU fused)
        return mlp.fc2(apply(mlp.fc1(h), mlp.activation_fn))


class HFVisionTower(VisionTower):
    """View of a transformers CLIP or SigLIP vision model plus its projection.

    Args:
        vision: the model's vision tower.
        projection: its ``visual_projection`` (CLIP), or None (SigLIP pools with a head).
    """

    def __init__(self, vision: Any, projection: Any) -> None:
        emb = vision.embeddings
        self.vision = vision
        self.projection = projection
        self.has_cls = hasattr(emb, "class_embedding")
        self.num_prefix_tokens = 1 if self.has_cls else 0
        self.pooled_tokens = 1 if self.has_cls else None  # SigLIP pools all tokens by attention
        self.naflex = isinstance(emb.patch_embedding, nn.Linear)  # SigLIP 2: patches come flattened
        ps = (emb.patch_size, emb.patch_size) if self.naflex else emb.patch_embedding.kernel_size
        self.patch_size = (int(ps[0]), int(ps[1]))
        n_pos = emb.position_embedding.weight.shape[0] - self.num_prefix_tokens
        side = int(n_pos**0.5)
        self.grid_size = (side, side)
        self.blocks = [HFBlock(layer) for layer in vision.encoder.layers]
        self.head: Any = getattr(vision, "head", None)

    def embed(self, pixels: Tensor, apply: ModuleFn = call_module) -> Tensor:  # noqa: D102
        if self.naflex:
            return self._embed_naflex(pixels)
        emb = self.vision.embeddings
        x, (gh, gw) = patch_embed(pixels, emb.patch_embedding)
        b, _, c = x.shape
        if self.has_cls:
            x = torch.cat([emb.class_embedding.to(x.dtype).view(1, 1, c).expand(b, 1, c), x], dim=1)
        pos = resample_pos_embed(
            emb.position_embedding.weight, (gh, gw), self.grid_size, self.num_prefix_tokens
        )
        x = x + pos.to(x.dtype)
        pre = getattr(self.vision, "pre_layrnorm", None)
        return apply(x, pre) if pre is not None else x

    def _embed_naflex(self, pixels: Tensor) -> Tensor:
        emb = self.vision.embeddings
        b, c, h, w = pixels.shape
        ph, pw = self.patch_size
        gh, gw = h // ph, w // pw
        patches = pixels[:, :, : gh * ph, : gw * pw].reshape(b, c, gh, ph, gw, pw)
        patches = patches.permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, ph * pw * c)
        x = emb.patch_embedding(patches.to(emb.patch_embedding.weight.dtype))
        table = emb.position_embedding.weight.reshape(*self.grid_size, -1)
        shapes = torch.tensor([[gh, gw]], device=pixels.device).expand(b, 2)
        return x + emb.resize_positional_embeddings(table, shapes, max_length=gh * gw).to(x.dtype)

    def pool(self, x: Tensor) -> Tensor:  # noqa: D102 - the interface's
        if self.has_cls:
            pooled = self.vision.post_layernorm(x[:, 0])
            return self.projection(pooled) if self.projection is not None else pooled
        return self.head(self.vision.post_layernorm(x))

    def project_tokens(self, x: Tensor, apply: ModuleFn = call_module) -> Tensor:  # noqa: D102
        x = apply(x, self.vision.post_layernorm)
        if self.has_cls:
            return self.projection(x) if self.projection is not None else x
        attn = self.head.attention  # nn.MultiheadAttention: one key -> value and output projections
        w_v = attn.in_proj_weight[2 * attn.embed_dim :]
        b_v = attn.in_proj_bias[2 * attn.embed_dim :] if attn.in_proj_bias is not None else None
        y = attn.out_proj(F.linear(x, w_v, b_v))
        return y + self.head.mlp(self.head.layernorm(y))


class TransformersBackend(Backend):
    """A transformers dual encoder (``CLIPModel``, ``SiglipModel``, ``Siglip2Model``) and its tokenizer.

    Args:
        model: the model.
        tokenizer: its tokenizer (a Hugging Face one, or open_clip's).
        image_config: how images are prepared (default: from its config).
        info: what it is (default: named by its class).

    Raises:
        UnsupportedModelError: for a model without vision and text towers.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Callable[..., Any],
        image_config: ImageConfig | None = None,
        info: ModelInfo | None = None,
    ) -> None:
        if not hasattr(model, "vision_model") or not hasattr(model, "text_model"):
            raise UnsupportedModelError(
                f"expected a transformers CLIPModel/SiglipModel, got {type(model).__name__}"
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.vision = HFVisionTower(model.vision_model, getattr(model, "visual_projection", None))
        cfg = model.config.vision_config
        side = getattr(cfg, "image_size", None) or self.vision.grid_size[0] * self.vision.patch_size[0]
        self.image_config = image_config or ImageConfig(size=(side, side))
        self.is_siglip = not self.vision.has_cls
        self.info = info or ModelInfo(name=type(model).__name__)
        if self.is_siglip and info is None:
            self.info.templates = ["This is a photo of {}."]

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Callable[..., Any],
        *,
        input_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        name: str | None = None,
    ) -> TransformersBackend:
        """Wrap a model the user already built, its image settings given or its config's.

        Args:
            model: a ``CLIPModel``, ``SiglipModel`` or ``Siglip2Model``.
            tokenizer: its tokenizer.
            input_size: the square size it was trained at (default: its config's).
            mean: per-channel normalization mean (default: CLIP's).
            std: per-channel normalization std.
            name: a name for summaries.

        Returns:
            The backend.
        """
        backend = cls(model, tokenizer)
        cfg = backend.image_config
        backend.image_config = ImageConfig(
            size=(input_size, input_size) if input_size else cfg.size,
            mean=tuple(mean) if mean else cfg.mean,
            std=tuple(std) if std else cfg.std,
        )
        if name:
            backend.info.name = name
        return backend

    def _tokens(self, prompts: Sequence[str]) -> dict[str, Tensor]:
        if not hasattr(self.tokenizer, "model_input_names"):  # open_clip-style: ids only, 0-padded
            out = self.tokenizer(list(prompts))
            if self.is_siglip:
                return {"input_ids": out.to(self.device)}
            mask = (out != 0).long()
            mask[:, 0] = 1
            return {"input_ids": out.to(self.device), "attention_mask": mask.to(self.device)}
        # cut to the encoder's context: a tokenizer saved without model_max_length would not cut
        # at all, and the model refuses a longer sequence
        length = self.text_context()
        if self.is_siglip:  # trained on text padded to the full context (64 for SigLIP 2)
            pad: dict[str, Any] = {"padding": "max_length", "max_length": length}
        else:
            pad = {"padding": True, "max_length": length}
        enc = self.tokenizer(list(prompts), truncation=True, return_tensors="pt", **pad)
        # what the tokenizer gives, as `model(**tokenizer(...))` would pass it (SigLIP: ids only;
        # SigLIP 2: ids and its attention mask)
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    @torch.inference_mode()
    def encode_text(self, prompts: Sequence[str]) -> Tensor:  # noqa: D102 - the interface's
        out = self.model.get_text_features(**self._tokens(prompts))
        return _as_tensor(out)

    @property
    def logit_scale(self) -> float:  # noqa: D102 - the interface's
        return float(self.model.logit_scale.detach().exp())

    def text_context(self) -> int:  # noqa: D102 - the interface's
        return int(self.model.config.text_config.max_position_embeddings)


def _as_tensor(out: Any) -> Tensor:
    """transformers >= 5 returns output objects from get_*_features; we want the embedding."""
    if isinstance(out, Tensor):
        return out
    for name in ("pooler_output", "text_embeds", "image_embeds"):
        value = getattr(out, name, None)
        if isinstance(value, Tensor):
            return value
    raise UnsupportedModelError(f"cannot find an embedding in {type(out).__name__}")


def image_config_from_processor(folder_or_id: str) -> ImageConfig | None:
    """Size, mean and std from a saved image processor, if one is there.

    Args:
        folder_or_id: a model folder or hub id.

    Returns:
        The image config, or None where there is no processor config.
    """
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(folder_or_id)
    except Exception:  # noqa: BLE001 - any failure means "no processor config"
        return None
    if getattr(proc, "max_num_patches", None):  # SigLIP 2 NaFlex: the square grid it was trained at
        side = int(proc.max_num_patches**0.5) * int(proc.patch_size)
    else:
        size = getattr(proc, "crop_size", None) or getattr(proc, "size", None) or {}
        side = size.get("height") or size.get("shortest_edge") or 224
    return ImageConfig(size=(side, side), mean=tuple(proc.image_mean), std=tuple(proc.image_std))


def load_transformers(
    model: str,
    pretrained: str | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> TransformersBackend:
    """Load a transformers CLIP, SigLIP or SigLIP 2 by hub id or local folder.

    Args:
        model: a hub id or a folder saved with ``save_pretrained``.
        pretrained: another id or folder to load the weights from (default: ``model``).
        device: where to load it.
        dtype: its precision (default float32).
        **kwargs: passed to ``from_pretrained``.

    Returns:
        The backend.

    Raises:
        WeightsNotFoundError: when the folder is not a model folder, or the model is neither in
            the cache nor downloadable.
    """
    from transformers import AutoModel, AutoTokenizer

    source = pretrained or model
    path = Path(source).expanduser()
    local = path.exists()
    if local and not (path / "config.json").is_file():
        raise WeightsNotFoundError(f"{path} has no config.json: not a transformers model folder")
    offline = hub_offline()
    try:
        net = AutoModel.from_pretrained(
            str(path) if local else source, dtype=dtype or torch.float32, **kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(str(path) if local else source)
    except OSError as err:
        cache = hf_cache_dir()
        where = f"the folder {path}" if local else f"the Hugging Face cache {cache}"
        how = "" if local else (" (offline mode)" if offline else " and could not download it")
        raise WeightsNotFoundError(
            f"could not load transformers model {source!r}: not found in {where}{how}; "
            f"run `hf download {source}` on a connected machine and copy the cache, or pass a "
            f"local folder saved with save_pretrained{'' if local else offline_hint()}"
        ) from err
    net = net.to(device)
    info = ModelInfo(name=model, pretrained=source)
    backend = TransformersBackend(
        net, tokenizer, image_config_from_processor(str(path) if local else source), info
    )
    if backend.is_siglip:
        backend.info.templates = ["This is a photo of {}."]
    return backend


def _claims(model: str) -> bool:
    path = Path(model).expanduser()
    return (
        path.is_dir() and (path / "config.json").is_file() and not (path / "open_clip_config.json").is_file()
    )


def _weights_present(model: str, pretrained: str | None) -> bool:
    source = Path(pretrained or model).expanduser()
    names = ("model.safetensors", "pytorch_model.bin")
    if source.is_dir():
        return any((source / n).is_file() for n in names)
    return in_hub_cache(pretrained or model, names)


SPEC = register_backend(
    BackendSpec(
        "transformers",
        load_transformers,
        _claims,
        _weights_present,
        "transformers CLIPModel / SiglipModel / Siglip2Model: 'transformers:<hub id>' and saved folders",
    )
)
