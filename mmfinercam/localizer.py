"""The user-facing object: a loaded model (:class:`~mmfinercam.model.Model`) asked where concepts are.

Data flows one way: images (:mod:`.images`) -> backend tokens (one image-tower pass for any
number of prompts, :mod:`.explain.tower`) -> similarity with cached text embeddings
(:mod:`.text`) -> contrast choice (:mod:`.explain.contrasts`) -> Finer-CAM maps
(:mod:`.explain.dense`, or a gradient CAM, :mod:`.explain.cams`) -> a result
(:mod:`.results`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import renamed_keywords
from .backends import create_backend, known_models
from .errors import ConfigError
from .explain import clipsurgery
from .explain.dense import global_similarity
from .images import ImageInput
from .model import Model
from .options import FinerOptions
from .pipeline import PromptPlan, run_finer_cam
from .results import FinerCAMResult


class Localizer(Model):
    """A CLIP-like model ready to localize concepts named in words.

    Build one with :func:`load`, :meth:`from_open_clip` or :meth:`from_transformers`.

    Example:
        >>> loc = mf.load("testbed")
        >>> res = loc.finer_cam("bird.png", "Alder finch", ["Birch finch", "Cedar finch"])

    It is built as a :class:`~mmfinercam.model.Model` is (a backend, optional templates).
    """

    @classmethod
    def from_open_clip(
        cls,
        model: nn.Module,
        tokenizer: Callable[[Sequence[str]], Tensor],
        preprocess: Any = None,
        *,
        templates: Sequence[str] | str | None = None,
        name: str | None = None,
    ) -> Localizer:
        """Wrap an open_clip model the user already built (weights as they are).

        Args:
            model: an open_clip ``CLIP`` with a ViT image tower.
            tokenizer: its tokenizer.
            preprocess: its preprocessing transform, whose ``Normalize`` step is read.
            templates: prompt templates (default: ``"a photo of a {}."``).
            name: a name for summaries.

        Returns:
            The localizer.
        """
        from .backends.open_clip import OpenCLIPBackend

        return cls(OpenCLIPBackend.from_model(model, tokenizer, preprocess, name), templates=templates)

    @classmethod
    @renamed_keywords(image_size="input_size")
    def from_transformers(
        cls,
        model: nn.Module,
        tokenizer: Callable[..., Any],
        *,
        input_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        templates: Sequence[str] | str | None = None,
        name: str | None = None,
    ) -> Localizer:
        """Wrap a transformers ``CLIPModel``, ``SiglipModel`` or ``Siglip2Model``.

        Args:
            model: the model.
            tokenizer: its tokenizer.
            input_size: the square size it was trained at (default: its config's).
            mean: per-channel normalization mean (default: CLIP's).
            std: per-channel normalization std.
            templates: prompt templates (default: the family's).
            name: a name for summaries.

        Returns:
            The localizer.
        """
        from .backends.transformers import TransformersBackend

        backend = TransformersBackend.from_model(
            model, tokenizer, input_size=input_size, mean=mean, std=std, name=name
        )
        return cls(backend, templates=templates)

    def similarity_maps(
        self,
        images: Tensor,
        prompts: Sequence[str] | Tensor,
        *,
        method: str = "gem",
        depth: int | None = None,
        feature_surgery: bool = False,
    ) -> Tensor:
        """Raw cosine similarity of every patch with every prompt; all prompts cost one pass.

        The batch is taken as it is: an image with NaN or infinite pixels gets NaN rows and
        leaves the others unchanged (:meth:`finer_cam` reports such an image instead).

        Args:
            images: B×3×H×W preprocessed images.
            prompts: K strings used verbatim, or K×D text embeddings.
            method: a registered dense method.
            depth: the method's depth.
            feature_surgery: take away what the K prompts' maps share, as CLIP Surgery does
                (:func:`~mmfinercam.explain.clipsurgery.feature_surgery`); any method.

        Returns:
            B×K×h×w similarities.
        """
        text = self._text_embeddings(prompts)
        out = self.image_tokens(images, method=method, depth=depth)  # checks the pixels
        patches = F.normalize(out.patch_tokens, dim=-1)
        text = _same_width(text, patches)
        sims = torch.einsum("bnd,kd->bkn", patches, text)
        if feature_surgery:
            overall = global_similarity(out, text.to(out.global_embedding.dtype))
            sims = clipsurgery.feature_surgery(sims, overall)
        return sims.reshape(sims.shape[0], sims.shape[1], *out.grid)

    def zero_shot(
        self, images: Tensor, prompts: Sequence[str] | Tensor, *, templates: Sequence[str] | None = None
    ) -> Tensor:
        """Class probabilities of a preprocessed batch over ``prompts``.

        The model's own global embedding and temperature, prompts wrapped in ``templates``
        (default: the model's). The metrics re-score masked images with it.

        Args:
            images: B×3×H×W preprocessed images.
            prompts: K class prompts, or K×D text embeddings.
            templates: templates for the prompts.

        Returns:
            B×K probabilities.
        """
        if isinstance(prompts, Tensor):
            text = self._text_embeddings(prompts)
        else:
            text = self.encode_text(prompts, self.templates if templates is None else templates)
        out = self.image_tokens(images, method="raw")
        z = F.normalize(out.global_embedding, dim=-1)
        return torch.softmax(self.backend.logit_scale * z @ _same_width(text, z).T, dim=-1)

    @renamed_keywords(image_size="short_side")
    def finer_cam(
        self,
        images: ImageInput | Sequence[ImageInput],
        target: str,
        contrast: Sequence[str] | str | None = None,
        *,
        alpha: float = 1.0,
        weighting: str = "softmax",
        vocabulary: Sequence[str] | str | Path | None = None,
        contrast_ranks: Sequence[int] = (1, 2, 3),
        method: str = "gem",
        depth: int | None = None,
        templates: Sequence[str] | None = None,
        short_side: int | None = None,
        batch_size: int | None = None,
        shifts: int = 1,
        flip: bool = False,
        tiles: bool | None = None,
        multiscale: bool = False,
        refine: str | None = None,
        options: FinerOptions | None = None,
    ) -> FinerCAMResult:
        """Where is the evidence for ``target`` and not for the contrasting concepts?

        ``contrast`` lists the similar concepts explicitly; or ``vocabulary`` supplies
        candidates, of which those at ``contrast_ranks`` by ``|<z,t_i> - <z,t_c>|`` are taken
        for each image. A tensor of images runs as the one batch it is; files and arrays are
        read and run ``batch_size`` at a time, so a long list of paths is never held prepared.
        Broken images do not stop the batch: they are listed in ``result.failed``.

        Args:
            images: paths, PIL images, arrays, or a preprocessed B×3×H×W tensor.
            target: the concept to localize.
            contrast: similar concepts to subtract.
            alpha: contrast strength (0: the plain target map).
            weighting: ``"softmax"`` or ``"uniform"`` contrast weights.
            vocabulary: a list, a file or a shipped vocabulary's name, for automatic contrasts.
            contrast_ranks: which vocabulary entries to take, by closeness rank (from 1).
            method: a dense method (``"gem"``, ``"sclip"``, ...) or a gradient method
                (``"layercam"``, ``"legrad"``, ...).
            depth: GEM's depth (default: the model's).
            templates: prompt templates (default: the model's; ``["{}"]``: verbatim).
            short_side: the shorter side images are resized to (default: the model's input; with
                ``tiles=True``, each image's own).
            batch_size: images a pass (default: 16; a tensor runs whole).
            shifts: sub-patch shifts per axis to average over (2 with ``flip``: 8 views).
            flip: also average the mirrored image's map.
            tiles: explain images larger than the model's input window by window, stitched at
                full resolution (True); only those past the patch limit (None); never (False).
            multiscale: with tiles, also average in the whole image's map.
            refine: refine the maps at pixel resolution by the image's edges (``"pamr"``).
            options: all the settings above as one :class:`~mmfinercam.options.FinerOptions`
                (then leave those keywords at their defaults).

        Returns:
            The maps and the numbers behind them.

        Raises:
            ConfigError: for an unusable setting.
            PromptError: for unusable prompts.
            ImageLoadError: when no image can be used.
        """
        given: dict[str, Any] = dict(alpha=alpha, weighting=weighting, contrast_ranks=tuple(contrast_ranks))
        given |= dict(method=method, depth=depth, short_side=short_side, shifts=shifts, flip=flip)
        given |= dict(tiles=tiles, multiscale=multiscale, refine=refine)
        if options is None:
            options = FinerOptions(**given)
        elif any(value != getattr(FinerOptions(), key) for key, value in given.items()):
            raise ConfigError("give the settings either as options= or as keywords, not both")
        plan = PromptPlan.build(self, target, contrast, vocabulary, options, templates)
        return run_finer_cam(self, images, plan, options, batch_size)

    def __repr__(self) -> str:
        info = self.info
        weights = "RANDOM weights" if info.random_weights else f"pretrained={info.pretrained}"
        return f"Localizer({info.name}, {weights}, device={self.device}, dtype={self.dtype})"


def _same_width(text: Tensor, image: Tensor) -> Tensor:
    """Text embeddings given as a tensor, checked against the joint space the image lands in."""
    if text.dim() != 2 or text.shape[-1] != image.shape[-1]:
        raise ConfigError(
            f"text embeddings must be K×{image.shape[-1]} (this model's joint space); got {tuple(text.shape)}"
        )
    return text


def load(
    model: str,
    pretrained: str | None = None,
    *,
    backend: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    templates: Sequence[str] | str | None = None,
    **kwargs: Any,
) -> Localizer:
    """Load a CLIP-like model as a :class:`Localizer`.

    Args:
        model: an open_clip name (``"ViT-B-16"``), an ``hf-hub:`` id, ``"<backend>:<name>"``
            (``"transformers:openai/clip-vit-base-patch16"``), a model folder, or a shipped
            short name (``"bioclip"``, ``"testbed"``; see ``mmfinercam models``).
        pretrained: a pretrained tag (``"openai"``) or a checkpoint file; None on an
            architecture name builds random weights (tests).
        backend: a backend named outright.
        device: where to run it (default: CUDA when available).
        dtype: its precision (``"fp32"``, ``"fp16"``, ``"bf16"``; default: the model's).
        templates: prompt templates (default: the model's own).
        **kwargs: options for the family's loader (open_clip's ``force_quick_gelu``, ...).

    Returns:
        The localizer.
    """
    alias = known_models().get(model, {}) if isinstance(model, str) else {}
    return Localizer(
        create_backend(model, pretrained, backend=backend, device=device, dtype=dtype, **kwargs),
        templates=templates if templates is not None else alias.get("templates"),
    )


class ModelCache:
    """Loads each model once, on first use: the command line and the web app share it.

    Args:
        loader: ``loader(**settings) -> Localizer``; :func:`load` by default.
    """

    def __init__(self, loader: Callable[..., Localizer] | None = None) -> None:
        self._loader = loader or load
        self._models: dict[tuple[tuple[str, Any], ...], Localizer] = {}

    def __call__(self, model: str, **settings: Any) -> Localizer:
        """The model loaded with these settings, loaded now if not before.

        Args:
            model: as for :func:`load`.
            **settings: keywords of :func:`load` (``pretrained``, ``device``, ...).

        Returns:
            The localizer.
        """
        key = (("model", model), *sorted((k, repr(v)) for k, v in settings.items()))
        if key not in self._models:
            self._models[key] = self._loader(model, **settings)
        return self._models[key]
