"""mmfinercam: where in an image is a concept named in words, and what separates it from similar ones.

import mmfinercam as mf
loc = mf.load("ViT-B-16", "openai")
res = loc.finer_cam("bird.jpg", "Cape May warbler", ["Magnolia warbler"])
mf.overlay("bird.jpg", res.heatmaps[0], target=res.target, contrast=res.contrast[0])
"""

from __future__ import annotations

from . import prompts
from .backends import available_backends, register_backend
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
