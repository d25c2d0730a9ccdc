"""The prompt encoder: prompts in templates, embedded once, cached.

Every distinct templated string is encoded once and cached, and so are the most recently used
whole sets of prompts, so a stream of images scored against the same prompts never re-encodes
or re-stacks them. A vocabulary of thousands of phrases times its templates is encoded in
slices of :data:`TEXT_BATCH`, never all at once.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import prompts as prompt_library
from ._checks import check_prompt
from .backends.base import Backend
from .errors import PromptError

TEXT_BATCH = 256  #: templated prompts encoded together
SET_CACHE = 64  #: whole prompt sets kept


class TextEncoder:
    """A backend's text tower with caches.

    Args:
        backend: the model.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._strings: dict[str, Tensor] = {}  #: one embedding per templated string
        self._sets: dict[tuple[tuple[str, ...], tuple[str, ...]], Tensor] = {}  #: whole K×D sets

    def encode(self, prompts: Sequence[str] | str, templates: Sequence[str] | None = None) -> Tensor:
        """L2-normalized text embeddings.

        With ``templates`` each prompt is embedded in every template, the embeddings
        normalized, averaged and normalized again. A set's tensor is shared by later calls for
        the same set: do not modify it in place.

        Args:
            prompts: K prompts (or one).
            templates: templates with ``{}`` for the prompt; None uses the prompts verbatim.

        Returns:
            K×D float32 on the model's device.

        Raises:
            PromptError: for an unusable prompt or template, or none at all.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        templates = ["{}"] if templates is None else list(templates)  # [] is refused below, not "verbatim"
        key = (tuple(prompts), tuple(templates)) if all(isinstance(p, str) for p in prompts) else None
        cached = self._sets.pop(key, None) if key else None  # a stream asks for the same set
        if cached is not None:  # back in as the most recently used; an inference tensor is copied
            self._sets[key] = cached  # type: ignore[index]
            outside = cached.is_inference() and not torch.is_inference_mode_enabled()
            return cached.clone() if outside else cached
        prompts = [check_prompt(p) for p in prompts]
        if not prompts:
            raise PromptError("no prompts given")
        templates = prompt_library.check_templates(templates)
        texts = [t.replace("{}", p) for p in prompts for t in templates]
        self._encode_missing(list(dict.fromkeys(s for s in texts if s not in self._strings)))
        emb = torch.stack([self._strings[s] for s in texts]).view(len(prompts), len(templates), -1)
        out = F.normalize(emb.mean(dim=1), dim=-1)
        if key:
            if len(self._sets) >= SET_CACHE:  # drop the least recently used set
                self._sets.pop(next(iter(self._sets)))
            self._sets[key] = out
        return out

    def _encode_missing(self, missing: list[str]) -> None:
        if not missing:
            return
        cut, context = self.backend.cut_prompts(missing)
        for text in cut:  # the encoder reads their start only: prompts that differ later are one
            head = text[:80] + ("..." if len(text) > 80 else "")
            message = f"prompt longer than the text encoder's {context} tokens; only its start is read"
            warnings.warn(f"{message}: {head!r}", stacklevel=4)
        for start in range(0, len(missing), TEXT_BATCH):
            part = missing[start : start + TEXT_BATCH]
            emb = F.normalize(self.backend.encode_text(part).float(), dim=-1)
            self._strings.update(zip(part, emb))

    def clear(self) -> None:
        """Forget every cached embedding."""
        self._strings.clear()
        self._sets.clear()
