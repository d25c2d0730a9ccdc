"""A loaded CLIP-like model, as the explanations use it: image tower, cached text, preparation.

:class:`Model` holds a backend and answers the three questions every explanation asks of it:
the tokens of a batch of images with a dense method (:meth:`Model.image_tokens`), the embeddings
of prompts, cached (:meth:`Model.encode_text`), and the images prepared at the model's input
size (:meth:`Model.prepare`). :class:`~mmfinercam.Localizer` adds the explanations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from . import prompts as prompt_library
from ._checks import renamed_keywords
from .backends import Backend
from .backends.base import ModelInfo
from .explain.tokens import TowerOutput
from .explain.tower import check_depth, dense_method, dense_tokens
from .images import ImageInput
from .pixels import FailedImage, PreparedImage, check_pixel_batch, prepare_in_chunks
from .text import TextEncoder


class Model:
    """A backend with its text cache and image preparation.

    Args:
        backend: the loaded model.
        templates: prompt templates (a list, a shipped set's name or a file); None uses the
            model's own.

    Raises:
        PromptError: for unusable templates.
    """

    def __init__(self, backend: Backend, *, templates: Sequence[str] | str | None = None) -> None:
        self.backend = backend
        if isinstance(templates, str):
            templates = prompt_library.load_templates(templates)
        elif templates is not None:  # refused now, not at the first prompt
            templates = prompt_library.check_templates(templates)
        self.templates: list[str] = list(backend.info.templates if templates is None else templates)
        self.text = TextEncoder(backend)
        self._compiled: Callable[..., TowerOutput] | None = None

    def compile(self, **options: Any) -> Model:
        """Run the image tower (the dense method's path included) through ``torch.compile``.

        Worth it on a GPU for repeated same-sized batches; the first call of each new shape
        compiles. With ``mode="reduce-overhead"`` (CUDA graphs) the tower's outputs live in
        buffers the next call reuses: :meth:`finer_cam` and the batch runner consume them at
        once, but keep a copy of anything taken from :meth:`image_tokens`.

        Args:
            **options: passed to ``torch.compile``.

        Returns:
            This model.
        """
        self._compiled = torch.compile(dense_tokens, **options)
        return self

    @property
    def device(self) -> torch.device:
        """The device the model runs on."""
        return self.backend.device

    @property
    def dtype(self) -> torch.dtype:
        """The model's precision."""
        return self.backend.dtype

    @property
    def info(self) -> ModelInfo:
        """What the model is."""
        return self.backend.info

    @property
    def patch_size(self) -> tuple[int, int]:
        """The image tower's patch (height, width)."""
        return self.backend.vision.patch_size

    def default_depth(self) -> int:
        """The GEM depth used when none is asked for: the model's, within its tower.

        Returns:
            The depth.
        """
        return min(self.info.default_depth, len(self.backend.vision.blocks) + 1)

    def encode_text(self, prompts: Sequence[str] | str, templates: Sequence[str] | None = None) -> Tensor:
        """L2-normalized text embeddings, cached (:class:`~mmfinercam.text.TextEncoder`).

        Args:
            prompts: K prompts (or one).
            templates: templates to embed each in and average; None uses the prompts verbatim.

        Returns:
            K×D float32 on the model's device.
        """
        return self.text.encode(prompts, templates)

    def clear_cache(self) -> None:
        """Forget every cached text embedding."""
        self.text.clear()

    @renamed_keywords(image_size="short_side")
    def prepare(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        short_side: int | None = None,
        tiles: bool | None = False,
    ) -> tuple[list[PreparedImage], list[FailedImage]]:
        """Read and preprocess images for this model (:mod:`mmfinercam.images`).

        Args:
            images: paths, PIL images, arrays or tensors.
            short_side: the shorter side to resize to (default: the model's input size).
            tiles: as for :meth:`prepare_in_chunks`.

        Returns:
            The prepared images and those that could not be used.
        """
        chunks = self.prepare_in_chunks(images, 2**62, short_side=short_side, tiles=tiles)
        return next(iter(chunks), ([], []))

    @renamed_keywords(image_size="short_side")
    def prepare_in_chunks(
        self,
        images: ImageInput | Sequence[ImageInput],
        chunk: int,
        *,
        short_side: int | None = None,
        tiles: bool | None = False,
    ) -> Iterator[tuple[list[PreparedImage], list[FailedImage]]]:
        """:meth:`prepare`, ``chunk`` inputs at a time (:func:`mmfinercam.pixels.prepare_in_chunks`).

        Args:
            images: paths, PIL images, arrays or tensors.
            chunk: inputs prepared at a time.
            short_side: the shorter side to resize to (default: the model's input size; with
                ``tiles=True``, each image's own).
            tiles: explain images larger than the model's input window by window: True, None
                (only those past the patch limit) or False (:mod:`mmfinercam.tiles`).

        Returns:
            An iterator of (prepared, failed) per chunk.
        """
        cfg = self.backend.image_config
        side = short_side
        if side is None and tiles is not True:
            side = min(cfg.size)
        window = (
            cfg.size[0] // self.patch_size[0] * self.patch_size[0],
            cfg.size[1] // self.patch_size[1] * self.patch_size[1],
        )
        return prepare_in_chunks(
            images,
            chunk,
            short_side=side,
            patch=self.patch_size,
            mean=cfg.mean,
            std=cfg.std,
            window=window,
            tiles=tiles,
        )

    @torch.inference_mode()
    def image_tokens(self, pixels: Tensor, *, method: str = "gem", depth: int | None = None) -> TowerOutput:
        """One image-tower pass over a preprocessed batch with a dense method.

        Args:
            pixels: B×3×H×W preprocessed images.
            method: a registered dense method (``"gem"``, ``"raw"``).
            depth: the method's depth (default: the model's).

        Returns:
            The pass's tokens in float32.
        """
        if dense_method(method).uses_depth:
            depth = check_depth(self.default_depth() if depth is None else depth, self.backend.vision)
        pixels = check_pixel_batch(pixels, self.patch_size).to(self.device, self.dtype, non_blocking=True)
        run = self._compiled or dense_tokens
        out = run(self.backend.vision, pixels, method, depth or 0, self.info.gem_temperature)
        return TowerOutput(out.global_embedding.float(), out.tokens.float(), out.grid, out.num_prefix_tokens)

    def _text_embeddings(self, prompts: Sequence[str] | Tensor) -> Tensor:
        if isinstance(prompts, Tensor):
            emb = prompts.unsqueeze(0) if prompts.dim() == 1 else prompts
            return F.normalize(emb.to(self.device).float(), dim=-1)
        return self.encode_text(prompts)
