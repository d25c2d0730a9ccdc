"""A synthetic fine-grained testbed: generated birds with part masks, and a tiny CLIP trained on them.

No pretrained weights can be downloaded everywhere, so the project proves on data it makes
that Finer-CAM finds what separates similar concepts:

* :mod:`.species` — 24 species in 8 families; siblings differ in exactly one part;
* :mod:`.generator` — deterministic images with every part's mask, train/held-out by seed;
* :mod:`.regions` — part coverage and region captions, the training data;
* :mod:`.model` — where the shipped model lies (``mf.load("testbed")`` loads it offline);
  ``python -m mmfinercam.apps.train_testbed`` trains it on a CPU.
"""

from .generator import HELD_OUT_SEEDS, IMAGE_SIZE, TRAIN_SEEDS, Sample, held_out, render, sample
from .model import MODEL_DIR, SAMPLES_DIR, shipped_samples
from .species import SPECIES, Species, siblings, trait_vocabulary

__all__ = [
    "HELD_OUT_SEEDS",
    "IMAGE_SIZE",
    "MODEL_DIR",
    "SAMPLES_DIR",
    "SPECIES",
    "TRAIN_SEEDS",
    "Sample",
    "Species",
    "held_out",
    "render",
    "sample",
    "shipped_samples",
    "siblings",
    "trait_vocabulary",
]
