"""mmfinercam: where in an image is a concept named in words, and what separates it from similar ones.

import mmfinercam as mf
loc = mf.load("ViT-B-16", "openai")
res = loc.finer_cam("bird.jpg", "Cape May warbler", ["Magnolia warbler"])
mf.overlay("bird.jpg", res.heatmaps[0], target=res.target, contrast=res.contrast[0])
"""

from __future__ import annotations

import importlib
from types import ModuleType

from . import prompts
from .backends import available_backends, register_backend
from .cams import ClassifierCAMResult, ClassifierFinerCAM
from .discovery import TraitRanking, rank_traits
from .errors import (
    ImageLoadError,
    MMFinerCAMError,
    PromptError,
    UnsupportedModelError,
    WeightsNotFoundError,
)
from .localizer import FinerCAMResult, Localizer, load
from .viz import overlay

__version__ = "0.1.0"

__all__ = [
    "ClassifierCAMResult",
    "ClassifierFinerCAM",
    "FinerCAMResult",
    "ImageLoadError",
    "Localizer",
    "MMFinerCAMError",
    "PromptError",
    "TraitRanking",
    "UnsupportedModelError",
    "WeightsNotFoundError",
    "available_backends",
    "load",
    "overlay",
    "prompts",
    "rank_traits",
    "register_backend",
]

#: modules reachable as ``mf.metrics``, ``mf.testbed``, ... without importing them by hand,
#: loaded on first use so that ``import mmfinercam`` stays light
_SUBMODULES = frozenset(
    {"batch", "cams", "evaluate", "finer", "gem", "images", "metrics", "smoothing", "testbed", "viz"}
)


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
