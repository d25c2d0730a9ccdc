"""The data path from tokens to maps: tower, dense methods, contrasts, Finer-CAM, smoothing, CAMs.

* :mod:`.tower`: one image-tower pass and the registry of dense token methods;
* :mod:`.gem`: GEM, the default dense method; :mod:`.raw`: the last layer's tokens;
  :mod:`.clipsurgery`, :mod:`.maskclip`, :mod:`.sclip`, :mod:`.clearclip`, :mod:`.naclip`: the
  other training-free dense methods (the last four through :mod:`.last_block`);
* :mod:`.contrasts`: which concepts an image is contrasted with;
* :mod:`.finer`: the contrast math; :mod:`.dense`: one batch of dense Finer-CAM;
* :mod:`.smoothing`: maps averaged over shifted and mirrored views;
* :mod:`.cams`: gradient CAMs and Finer-CAM for CLIP and for classifiers.
"""

from __future__ import annotations

# each module registers its method; gem and raw first, as the choice lists show them
from . import gem, raw  # noqa: F401

# isort: split
from . import clearclip, clipsurgery, maskclip, naclip, sclip  # noqa: F401
from .tower import DENSE_METHODS, DenseMethod, TowerOutput, dense_method, register_dense_method, run_tower

__all__ = [
    "DENSE_METHODS",
    "DenseMethod",
    "TowerOutput",
    "dense_method",
    "register_dense_method",
    "run_tower",
]
