"""mmfinercam: where in an image is a concept named in words, and what separates it from similar ones.

    import mmfinercam as mf
    loc = mf.load("ViT-B-16", "openai")
    res = loc.finer_cam("bird.jpg", "Cape May warbler", ["Magnolia warbler"])
    mf.overlay("bird.jpg", res.heatmaps[0], target=res.target, contrast=res.contrast[0])

The data path, one folder or module a stage: images (:mod:`.images`) -> backend tokens
(:mod:`.backends`, :mod:`.explain.tower`) -> similarity and contrast choice
(:mod:`.explain.contrasts`) -> Finer-CAM maps (:mod:`.explain`) -> results, records and
overlays (:mod:`.results`, :mod:`.outputs`, :mod:`.viz`) and metrics (:mod:`.metrics`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from . import prompts
from .backends import BackendSpec, available_backends, register_backend
from .discovery import TraitRanking, rank_traits
from .errors import (
    ConfigError,
    ImageLoadError,
    MMFinerCAMError,
    PromptError,
    UnsupportedModelError,
    WeightsNotFoundError,
)
from .explain.cams import ClassifierCAMResult, ClassifierFinerCAM
from .localizer import Localizer, ModelCache, load
from .options import FinerOptions
from .results import FinerCAMResult, MapRecord
from .viz import overlay

__version__ = "0.2.0"

__all__ = [
    "BackendSpec",
    "ClassifierCAMResult",
    "ClassifierFinerCAM",
    "ConfigError",
    "FinerCAMResult",
    "FinerOptions",
    "ImageLoadError",
    "Localizer",
    "MMFinerCAMError",
    "MapRecord",
    "ModelCache",
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

#: modules reachable as ``mf.metrics``, ``mf.finer``, ... without importing them by hand, loaded
#: on first use so that ``import mmfinercam`` stays light; the short names of the explain stage
#: (``mf.finer``, ``mf.gem``, ``mf.cams``, ``mf.smoothing``) and of the apps stay as they were
_SUBMODULES = {
    "backends": "backends",
    "batch": "batch",
    "cams": "explain.cams",
    "contrasts": "explain.contrasts",
    "evaluate": "apps.evaluate",
    "explain": "explain",
    "finer": "explain.finer",
    "gem": "explain.gem",
    "images": "images",
    "kernels": "kernels",
    "masks": "masks",
    "metrics": "metrics",
    "model": "model",
    "options": "options",
    "outputs": "outputs",
    "results": "results",
    "smoothing": "explain.smoothing",
    "testbed": "testbed",
    "tower": "explain.tower",
    "viz": "viz",
}


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{_SUBMODULES[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
