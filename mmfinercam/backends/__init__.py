"""Backends: one module a model family, found through a registry instead of if-chains.

A backend registers a loader and a ``claims`` test; :func:`create_backend` asks each registered
backend in turn whether it recognises the model identifier, unless ``backend=`` names one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import MMFinerCAMError, WeightsNotFoundError
from .base import Backend, ImageConfig, ModelInfo, TransformerBlock, VisionTower

Loader = Callable[..., Backend]


@dataclass(frozen=True)
class BackendSpec:
    name: str
    loader: Loader
    claims: Callable[[str], bool]
    description: str = ""


_REGISTRY: dict[str, BackendSpec] = {}


def register_backend(name: str, loader: Loader, claims: Callable[[str], bool], description: str = "") -> None:
    """Make a model family available to :func:`mmfinercam.load`."""
    _REGISTRY[name] = BackendSpec(name, loader, claims, description)


def available_backends() -> list[str]:
    return list(_REGISTRY)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``device``, or CUDA when available; a CUDA device where torch sees no GPU is one clear
    error here, before any weights are read or timed."""
    try:
        device = torch.device(device) if device is not None else default_device()
    except (RuntimeError, TypeError) as err:
        raise MMFinerCAMError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MMFinerCAMError(
            f"device {str(device)!r} asked for, but this torch sees no CUDA GPU "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); use device='cpu'"
        )
    try:  # a device this torch or machine cannot use (mps without Apple's GPU, cuda:7 on one GPU)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:
        reason = (str(err).splitlines() or [""])[0]
        reason = reason if len(reason) <= 100 else reason[:97] + "..."
        message = f"device {str(device)!r} cannot be used here ({reason}); use device='cpu'"
        raise MMFinerCAMError(message) from err
    return device


KNOWN_MODELS_FILE = Path(__file__).resolve().parents[1] / "models.json"


@functools.cache
def known_models() -> dict[str, dict[str, str]]:
    """Short names for models users ask for by name (``mf.load("bioclip")``), kept as data.

    Read once per process; treat the result as read-only."""
    import json

    return json.loads(KNOWN_MODELS_FILE.read_text())


def weights_present(entry: dict[str, str]) -> bool:
    """Whether a known model's weights are on this machine (shipped or in the HF cache)."""
    if entry["backend"] == "testbed":
        from ..testbed.model import MODEL_DIR

        return (MODEL_DIR / "testbed.json").is_file()
    from huggingface_hub import try_to_load_from_cache

    if entry["backend"] == "open_clip":
        if entry["model"].startswith("hf-hub:"):
            repo = entry["model"][len("hf-hub:") :]
        else:
            import open_clip

            repo = (
                open_clip.get_pretrained_cfg(entry["model"], entry["pretrained"]).get("hf_hub") or ""
            ).rstrip("/")
        names = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_config.json")
    else:
        repo = entry["model"]
        names = ("model.safetensors", "pytorch_model.bin")
    return bool(repo) and any(isinstance(try_to_load_from_cache(repo, n), str) for n in names)


def create_backend(
    model: str,
    pretrained: str | None = None,
    *,
    backend: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    **kwargs: Any,
) -> Backend:
    """Load ``model`` with the named backend, or with the first backend that claims it."""
    device = resolve_device(device)
    dtype = parse_dtype(dtype)
    alias = known_models().get(model)
    if alias is not None and backend is None:
        model, backend = alias["model"], alias["backend"]
        pretrained = pretrained or alias.get("pretrained")
    if backend is not None:
        if backend not in _REGISTRY:
            raise ValueError(f"unknown backend {backend!r}; known: {', '.join(_REGISTRY)}")
        spec = _REGISTRY[backend]
    else:
        spec = next((s for s in _REGISTRY.values() if s.claims(model)), None)
        if spec is None:
            raise WeightsNotFoundError(
                f"no backend recognises {model!r}: not an open_clip model name, hf-hub: id, "
                "local checkpoint folder or shipped model name (see `mmfinercam models`)"
            )
    try:
        return spec.loader(model, pretrained, device=device, dtype=dtype, **kwargs)
    except TypeError as err:
        if not kwargs or "unexpected keyword argument" not in str(err):
            raise
        raise TypeError(
            f"the {spec.name} backend takes no option {_unknown_keyword(err, kwargs)} "
            f"(load passes extra keywords on to it; {err})"
        ) from err


def _unknown_keyword(err: TypeError, kwargs: dict[str, Any]) -> str:
    """The keyword a loader refused, as named in its TypeError (else all that were given)."""
    named = [repr(k) for k in kwargs if f"'{k}'" in str(err)]
    return ", ".join(named or map(repr, kwargs))


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """Accept ``torch.float16`` as well as ``"fp16"``/``"float16"``; None keeps the default."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def _claims_open_clip(model: str) -> bool:
    if model.startswith(("hf-hub:", "local-dir:")):
        return True
    path = Path(model).expanduser()
    if path.is_dir():
        return (path / "open_clip_config.json").is_file()
    import open_clip

    return model in open_clip.list_models()


def _load_open_clip(*args: Any, **kwargs: Any) -> Backend:
    from .open_clip import load_open_clip

    return load_open_clip(*args, **kwargs)


register_backend(
    "open_clip",
    _load_open_clip,
    _claims_open_clip,
    "open_clip ViTs: model names with pretrained tags, hf-hub: ids, local folders and files",
)


def _claims_transformers(model: str) -> bool:
    path = Path(model).expanduser()
    if path.is_dir():
        return (path / "config.json").is_file() and not (path / "open_clip_config.json").is_file()
    return "/" in model and not model.startswith(("hf-hub:", "local-dir:", "/", ".", "~"))


def _load_transformers(*args: Any, **kwargs: Any) -> Backend:
    from .transformers import load_transformers

    return load_transformers(*args, **kwargs)


register_backend(
    "transformers",
    _load_transformers,
    _claims_transformers,
    "transformers CLIPModel / SiglipModel: hub ids (openai/clip-vit-base-patch16) and saved folders",
)


def _load_testbed(*args: Any, **kwargs: Any) -> Backend:
    from ..testbed.model import load_testbed

    return load_testbed(*args, **kwargs)


register_backend(
    "testbed",
    _load_testbed,
    lambda model: model == "testbed",
    "the shipped tiny CLIP trained on the synthetic birds (mf.load('testbed'))",
)

__all__ = [
    "Backend",
    "BackendSpec",
    "ImageConfig",
    "ModelInfo",
    "TransformerBlock",
    "VisionTower",
    "available_backends",
    "create_backend",
    "default_device",
    "resolve_device",
    "parse_dtype",
    "register_backend",
]
