"""Backends: one module a model family behind one interface (:mod:`.base`), found by a registry.

Each family's module registers a :class:`~.registry.BackendSpec` beside its implementation;
importing this package registers the shipped ones. See :mod:`.registry` for how a model name
finds its backend.
"""

from __future__ import annotations

from . import open_clip, transformers  # noqa: F401 - each registers its backend
from .base import Backend, ImageConfig, ModelInfo, TransformerBlock, VisionTower
from .registry import (
    BackendSpec,
    ModelName,
    available_backends,
    backend_spec,
    create_backend,
    known_models,
    register_backend,
    resolve_model,
    weights_present,
)

__all__ = [
    "Backend",
    "BackendSpec",
    "ImageConfig",
    "ModelInfo",
    "ModelName",
    "TransformerBlock",
    "VisionTower",
    "available_backends",
    "backend_spec",
    "create_backend",
    "known_models",
    "register_backend",
    "resolve_model",
    "weights_present",
]
