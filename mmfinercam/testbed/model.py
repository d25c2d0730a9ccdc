"""The shipped testbed model: a tiny CLIP trained on the generated birds, loadable offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..backends.base import Backend
from ..errors import WeightsNotFoundError

MODEL_DIR = Path(__file__).resolve().parents[1] / "data" / "testbed"
SAMPLES_DIR = MODEL_DIR.parent / "samples"  #: the shipped sample birds (scripts/make_samples.py)


def shipped_samples() -> list[dict[str, Any]]:
    """The sample birds' entries of ``samples.json`` (image, target, contrast, differs_in, ...),
    with ``path``, the image file, added."""
    entries = json.loads((SAMPLES_DIR / "samples.json").read_text())
    return [e | {"path": SAMPLES_DIR / e["image"]} for e in entries]


def load_testbed(
    model: str = "testbed",
    pretrained: str | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> Backend:
    """Load the shipped testbed CLIP, or another testbed folder given as ``pretrained``."""
    from ..backends.open_clip import load_open_clip

    folder = Path(pretrained).expanduser() if pretrained else MODEL_DIR
    meta_path = folder / "testbed.json"
    if not meta_path.is_file() or not (folder / "open_clip_config.json").is_file():
        raise WeightsNotFoundError(
            f"no testbed model in {folder} (testbed.json + open_clip_config.json + weights); "
            "train one with `python -m mmfinercam.testbed.train`"
        )
    meta = json.loads(meta_path.read_text())
    backend = load_open_clip(str(folder), device=device, dtype=dtype, **kwargs)
    backend.info.name = "testbed"
    backend.info.pretrained = str(folder)
    backend.info.random_weights = False
    backend.info.default_depth = int(meta["gem_depth"])
    backend.info.gem_temperature = meta.get("gem_temperature")
    backend.info.templates = list(meta["templates"])
    return backend
