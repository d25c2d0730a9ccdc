"""The backend registry: one spec a model family, found by explicit names, never by guessing.

A model is named in one of these ways, each recognised by one rule:

* ``"<backend>:<name>"``: the backend named outright (``"transformers:openai/clip-vit-base-patch16"``,
  ``"open_clip:ViT-B-16"``);
* a shipped short name from ``models.json`` (``"bioclip"``, ``"testbed"``), which says its
  backend;
* a model folder, claimed by the backend whose files it holds (``open_clip_config.json``,
  ``config.json``);
* a name a backend knows as its own (an open_clip architecture, an ``hf-hub:`` id).

Each backend module registers a :class:`BackendSpec` beside its implementation
(:func:`register_backend`); a new family is one new module and one import line in
``backends/__init__.py``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._checks import registered
from .._device import parse_dtype, resolve_device
from ..errors import ConfigError, WeightsNotFoundError
from .base import Backend

#: the package folder, which shipped models' folders are named relative to
PACKAGE_DIR = Path(__file__).resolve().parents[1]
KNOWN_MODELS_FILE = PACKAGE_DIR / "models.json"


@dataclass(frozen=True)
class BackendSpec:
    """How one model family is recognised, loaded and checked for weights.

    Args:
        name: the family's name (``"open_clip"``), also its explicit prefix.
        loader: ``loader(model, pretrained, *, device, dtype, **options) -> Backend``.
        claims: whether a model name or folder (prefix removed) is this family's.
        weights_present: ``weights_present(model, pretrained)``: whether the weights are on this
            machine (shipped, in a folder, or in the Hugging Face cache), without a network.
        description: one line for ``mmfinercam models``.
    """

    name: str
    loader: Callable[..., Backend]
    claims: Callable[[str], bool]
    weights_present: Callable[[str, str | None], bool]
    description: str = ""


_REGISTRY: dict[str, BackendSpec] = {}


def register_backend(spec: BackendSpec) -> BackendSpec:
    """Make a model family available to :func:`mmfinercam.load`.

    Args:
        spec: the family's spec; a spec of the same name is replaced.

    Returns:
        The spec, so a module can register and keep it in one line.
    """
    _REGISTRY[spec.name] = spec
    return spec


def available_backends() -> list[str]:
    """The names of the registered backends.

    Returns:
        Names, in registration order.
    """
    return list(_REGISTRY)


def backend_spec(name: str) -> BackendSpec:
    """The registered spec of a backend.

    Args:
        name: the backend's name.

    Returns:
        Its spec.

    Raises:
        ConfigError: for a name no backend is registered under.
    """
    return registered(_REGISTRY, name, "backend")


@functools.cache
def known_models() -> dict[str, dict[str, str]]:
    """Short names for models users ask for by name (``mf.load("bioclip")``), kept as data.

    Read once per process; treat the result as read-only.

    Returns:
        Name -> entry (``backend``, ``model`` or ``folder``, optional ``pretrained``,
        ``templates``, ``hint``, ``description``).
    """
    return json.loads(KNOWN_MODELS_FILE.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class ModelName:
    """A model name resolved to its backend.

    Args:
        spec: the backend that loads it.
        model: what its loader is given (a name, id or folder).
        pretrained: the weights' tag or file, if any.
        alias: the shipped short name it was asked by, if any.
    """

    spec: BackendSpec
    model: str
    pretrained: str | None
    alias: str | None = None


def resolve_model(model: str, pretrained: str | None = None, backend: str | None = None) -> ModelName:
    """Which backend loads ``model``, by the module's rules.

    Args:
        model: a name, ``"<backend>:<name>"``, a shipped short name or a folder.
        pretrained: a tag or checkpoint file; for a shipped model kept as a folder, another
            folder of that kind.
        backend: a backend named outright (overrides the rules).

    Returns:
        The resolved name.

    Raises:
        ConfigError: for an unknown backend, or a model name that is not a string.
        WeightsNotFoundError: when no backend recognises the name, or a shipped folder is missing.
    """
    if not isinstance(model, str) or not model.strip():
        raise ConfigError(f"a model is named by a non-empty string, got {model!r}")
    prefix, _, rest = model.partition(":")
    if backend is None and rest and prefix in _REGISTRY:
        backend, model = prefix, rest
    entry = known_models().get(model) if backend is None else None
    if entry is not None:
        spec = backend_spec(entry["backend"])
        if "folder" in entry:  # a shipped model kept as a folder; ``pretrained``: another one
            folder = Path(pretrained).expanduser() if pretrained else PACKAGE_DIR / entry["folder"]
            if not spec.claims(str(folder)):
                raise WeightsNotFoundError(
                    f"no {model} model in {folder}: {entry.get('hint', '')}".rstrip(": ")
                )
            return ModelName(spec, str(folder), None, model)
        return ModelName(spec, entry["model"], pretrained or entry.get("pretrained"), model)
    if backend is not None:
        return ModelName(backend_spec(backend), model, pretrained)
    claimed = next((s for s in _REGISTRY.values() if s.claims(model)), None)
    if claimed is None:
        raise WeightsNotFoundError(
            f"no backend recognises {model!r}: not an open_clip model name, hf-hub: id, model folder "
            "or shipped model name; a transformers hub id is named 'transformers:<id>' "
            "(see `mmfinercam models`)"
        )
    return ModelName(claimed, model, pretrained)


def create_backend(
    model: str,
    pretrained: str | None = None,
    *,
    backend: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    **kwargs: Any,
) -> Backend:
    """Load ``model`` with the backend that the module's rules give it.

    Args:
        model: a name, ``"<backend>:<name>"``, a shipped short name or a folder.
        pretrained: a tag or checkpoint file (None: the model's own, or random weights for an
            architecture name).
        backend: a backend named outright.
        device: where to load it (default: CUDA when there).
        dtype: the precision (default: the model's own).
        **kwargs: options passed on to the family's loader.

    Returns:
        The loaded backend.

    Raises:
        TypeError: when the family's loader takes no such option.
    """
    device = resolve_device(device)
    dtype = parse_dtype(dtype)
    name = resolve_model(model, pretrained, backend)
    try:
        loaded = name.spec.loader(name.model, name.pretrained, device=device, dtype=dtype, **kwargs)
    except TypeError as err:
        if not kwargs or "unexpected keyword argument" not in str(err):
            raise
        raise TypeError(
            f"the {name.spec.name} backend takes no option {_unknown_keyword(err, kwargs)} "
            f"(load passes extra keywords on to it; {err})"
        ) from err
    if name.alias is not None:
        loaded.info.name = name.alias
    return loaded


def weights_present(name: str) -> bool:
    """Whether a shipped short name's weights are on this machine (no network).

    Args:
        name: a key of :func:`known_models`.

    Returns:
        True when its weights are shipped, in a folder or in the Hugging Face cache.
    """
    try:
        resolved = resolve_model(name)
    except WeightsNotFoundError:
        return False
    return resolved.spec.weights_present(resolved.model, resolved.pretrained)


def _unknown_keyword(err: TypeError, kwargs: dict[str, Any]) -> str:
    """The keyword a loader refused, as named in its TypeError (else all that were given)."""
    named = [repr(k) for k in kwargs if f"'{k}'" in str(err)]
    return ", ".join(named or map(repr, kwargs))
