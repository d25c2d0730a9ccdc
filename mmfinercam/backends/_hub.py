"""The Hugging Face Hub as loaders meet it: offline switches, the cache, what is already there."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def hub_offline() -> bool:
    """Whether the Hugging Face Hub is switched off.

    Returns:
        True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set to a true value.
    """
    flags = (os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


def offline_hint() -> str:
    """How to skip the Hub's download retries on a machine with no network.

    Returns:
        A clause to append to a missing-weights message, or "" where the Hub is already off.
    """
    if hub_offline():
        return ""
    return "; with no network here, set HF_HUB_OFFLINE=1 to fail (or load from the cache) at once"


def hf_cache_dir() -> str:
    """Where huggingface_hub looks for downloaded models.

    Returns:
        ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``.
    """
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return os.environ.get("HF_HUB_CACHE") or str(home / "hub")


def in_hub_cache(repo: str, names: Sequence[str]) -> bool:
    """Whether one of ``names`` of a hub repository is in the local cache (no network).

    Args:
        repo: the repository id (``imageomics/bioclip``).
        names: file names, any of which will do.

    Returns:
        True when one of the files is cached.
    """
    from huggingface_hub import try_to_load_from_cache

    return bool(repo) and any(isinstance(try_to_load_from_cache(repo, n), str) for n in names)
