"""Where the shipped testbed model and sample birds lie (``mf.load("testbed")`` loads the model).

The model folder is an open_clip folder with mmfinercam's settings for it (``mmfinercam.json``:
GEM depth, temperature, templates) and its training record (``testbed.json``); ``models.json``
names it ``testbed``. ``python -m mmfinercam.apps.train_testbed`` makes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MODEL_DIR = Path(__file__).resolve().parents[1] / "data" / "testbed"  #: the shipped model
SAMPLES_DIR = MODEL_DIR.parent / "samples"  #: the shipped sample birds (scripts/make_samples.py)


def shipped_samples() -> list[dict[str, Any]]:
    """The sample birds shipped with the package.

    Returns:
        The entries of ``samples.json`` (image, target, contrast, differs_in, ...), each with
        ``path``, the image file, added.
    """
    entries = json.loads((SAMPLES_DIR / "samples.json").read_text())
    return [e | {"path": SAMPLES_DIR / e["image"]} for e in entries]
