"""The user-facing object: a model plus cached text, turning images and words into maps.

Data flows one way: images -> backend tokens (one image-tower pass for any number of prompts)
-> cosine similarity with cached text embeddings -> Finer-CAM contrast -> heatmaps.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import prompts as prompt_library
from . import smoothing
from .backends import Backend, create_backend
from .backends.base import ModelInfo
from .cams import CAM_METHODS, cam_heatmap, clip_cam, finer_score
from .errors import ImageLoadError, PromptError
from .finer import (
    best_match,
    check_alpha,
    check_contrast_ranks,
    check_contrasts,
    check_prompt,
    check_whole,
    contrast_weights,
    mixed_finer_maps,
    rank_contrasts,
    to_heatmap,
)
from .gem import TowerOutput, run_tower
from .images import (
    FailedImage,
    ImageInput,
    PreparedImage,
    check_pixel_batch,
    pixel_batches,
    prepare_images,
    prepare_in_chunks,
)
from .transfer import to_host

DENSE_METHODS = ("gem", "raw")
TEXT_BATCH = 256  #: prompts encoded together by :meth:`Localizer.encode_text`


class ContrastNames(Sequence[list[str]]):
    """The contrast prompts of each image, named when read: a call over 256 images against 99
    contrasts would otherwise build 25,000 strings on the host before returning."""

    def __init__(self, entries: Sequence[str], index: Tensor):
        self._entries, self._index = list(entries), index.cpu()

    def __len__(self) -> int:
        return self._index.shape[0]

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return [self._entries[j] for j in self._index[i].tolist()]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return repr(list(self))


@dataclass
class FinerCAMResult:
    """Maps and the numbers behind them, for the images that could be used.

    ``scores`` (and ``heatmaps``) are stacked tensors when every image has the same size, lists
    of per-image tensors otherwise. ``indices[i]`` is the position of result ``i`` in the input;
    ``failed`` lists the inputs that could not be used and why.
    """

    scores: Tensor | list[Tensor]  #: B×h×w raw Finer-CAM scores on the patch grid (finer with ``shifts``)
    target: str
    contrast: Sequence[list[str]]  #: the contrast prompts used, per image (a list per image)
    weights: Tensor  #: B×D contrast weights (rows sum to 1)
    alpha: float
    method: str
    target_similarity: Tensor  #: B, cosine of the global image embedding and the target
    contrast_similarity: Tensor  #: B×D, the same for each contrast
    sources: list[str]
    indices: list[int]
    image_sizes: list[tuple[int, int]]  #: (height, width) of each image as given
    failed: list[FailedImage] = field(default_factory=list)
    target_scores: Tensor | list[Tensor] | None = None  #: B×h×w plain target map (alpha = 0)
    views: int = 1  #: how many shifted/mirrored views each map averages (see ``shifts``, ``flip``)
    _heatmaps: Tensor | list[Tensor] | None = field(default=None, repr=False, compare=False)
    _last_heatmap: tuple[int, Tensor] | None = field(default=None, repr=False, compare=False)

    @property
    def heatmaps(self) -> Tensor | list[Tensor]:
        """B×H×W in [0, 1], each at its image's own size: the scores upsampled, rectified and
        min-max normalized. Made on first use, so a run that keeps only the patch-grid scores
        (trait discovery over many images) never pays for full-size maps."""
        if self._heatmaps is None:
            maps = _heatmaps_at_sizes(list(self.scores), self.image_sizes, self._make_heatmaps)
            self._heatmaps = _stack_if_uniform(maps)
        return self._heatmaps

    @property
    def _make_heatmaps(self) -> Callable[[Tensor, tuple[int, int]], Tensor]:
        """How this method's scores become heatmaps: a gradient CAM's scaling, or the dense one."""
        return cam_heatmap if self.method in CAM_METHODS else to_heatmap

    def heatmap(self, i: int) -> Tensor:
        """Image ``i``'s heatmap alone (H×W), equal to ``heatmaps[i]``: a loop over a batch of
        large scans then holds one full-size map at a time, not the whole batch's. The last one
        made is kept, so ``summary(i)`` and then ``heatmap(i)`` make it once."""
        if self._heatmaps is not None:
            return self._heatmaps[i]
        if self._last_heatmap is None or self._last_heatmap[0] != i:
            self._last_heatmap = (i, self._make_heatmaps(self.scores[i][None], self.image_sizes[i])[0])
        return self._last_heatmap[1]

    def __len__(self) -> int:
        return len(self.indices)

    def best_match(self, i: int) -> str:
        """Of the target and image ``i``'s contrasts, the prompt the model matches the whole image
        to best (global cosine; the target on a tie). When it is a contrast, the map still shows
        where the image leans towards the target, but the model does not see the target here."""
        sims = [float(self.target_similarity[i]), *map(float, self.contrast_similarity[i].reshape(-1))]
        return best_match([self.target, *self.contrast[i]], sims)

    def summary(self, i: int) -> dict[str, Any]:
        """JSON-ready numbers for result ``i``: where the map peaks, contrasts, weights."""
        heat = self.heatmap(i)
        score = self.scores[i]
        peak = int(torch.argmax(heat))
        height, width = heat.shape
        # a map with no positive evidence is all zeros: it has no peak (argmax would say 0, 0)
        peak_xy = [peak % width, peak // width] if float(heat.max()) > 0 else None
        return {
            "source": self.sources[i],
            "target": self.target,
            "contrast": self.contrast[i],
            "weights": [round(float(w), 6) for w in self.weights[i]],
            "alpha": self.alpha,
            "method": self.method,
            "image_size": [height, width],
            "grid_size": list(score.shape),
            "peak_xy": peak_xy,
            "score_min": float(score.min()),
            "score_max": float(score.max()),
            "score_mean": float(score.mean()),
            "positive_fraction": int(torch.count_nonzero(heat)) / heat.numel(),  # heat is >= 0; no copy
            "target_similarity": float(self.target_similarity[i]),
            "contrast_similarity": [float(s) for s in self.contrast_similarity[i]],
            "best_match": self.best_match(i),
        }


def _same_width(text: Tensor, image: Tensor) -> Tensor:
    """Text embeddings given as a tensor, checked against the joint space the image lands in."""
    if text.dim() != 2 or text.shape[-1] != image.shape[-1]:
        raise ValueError(
            f"text embeddings must be K×{image.shape[-1]} (this model's joint space); got {tuple(text.shape)}"
        )
    return text


def _stack_if_uniform(items: list[Tensor]) -> Tensor | list[Tensor]:
    if items and all(t.shape == items[0].shape for t in items):
        return torch.stack(items)
    return items


def _in_order(chunks: list[Tensor], positions: list[int]) -> Tensor | list[Tensor]:
    """Rows of per-group tensors put back in input order: ``positions[r]`` is where the r-th row
    (counting through the chunks) belongs. Stacked when every row has the same shape."""
    if len(chunks) == 1 and positions == list(range(len(positions))):
        return chunks[0]  # one batch in input order (a tensor of images): nothing to move
    order = torch.empty(len(positions), dtype=torch.long)
    order[torch.tensor(positions)] = torch.arange(len(positions))
    if all(c.shape[1:] == chunks[0].shape[1:] for c in chunks):
        return torch.cat(chunks)[order]
    flat = [row for c in chunks for row in c]
    return [flat[r] for r in order.tolist()]


def _heatmaps_at_sizes(
    scores: list[Tensor], sizes: list[tuple[int, int]], make: Callable[[Tensor, tuple[int, int]], Tensor]
) -> list[Tensor]:
    """Each image's heatmap at its own size; same-sized maps are made together."""
    out: list[Tensor | None] = [None] * len(scores)
    groups: dict[tuple[tuple[int, int], tuple[int, ...]], list[int]] = defaultdict(list)
    for i, (s, size) in enumerate(zip(scores, sizes)):
        groups[(size, tuple(s.shape))].append(i)
    for (size, _), idx in groups.items():
        for i, heatmap in zip(idx, make(torch.stack([scores[i] for i in idx]), size)):
            out[i] = heatmap
    return out  # type: ignore[return-value]


class Localizer:
    """A CLIP-like model ready to localize concepts named in words.

    Build one with :func:`mmfinercam.load` or :meth:`Localizer.from_open_clip`.
    """

    def __init__(self, backend: Backend, *, templates: Sequence[str] | str | None = None):
        self.backend = backend
        if isinstance(templates, str):
            templates = prompt_library.load_templates(templates)
        elif templates is not None:  # refused now, not at the first prompt
            templates = prompt_library.check_templates(templates)
        self.templates: list[str] = list(backend.info.templates if templates is None else templates)
        self._text_cache: dict[str, Tensor] = {}  #: one embedding per templated string
        self._prompt_set_cache: dict[tuple[tuple[str, ...], tuple[str, ...]], Tensor] = {}  #: whole K×D sets
        self._run_tower: Callable[..., TowerOutput] = run_tower

    def compile(self, **options: Any) -> Localizer:
        """Run the image tower (GEM path included) through ``torch.compile(**options)``.

        Worth it on a GPU for repeated same-sized batches; the first call of each new shape
        compiles (seconds to minutes). With ``mode="reduce-overhead"`` (CUDA graphs) the tower's
        outputs live in buffers the next call reuses: :meth:`finer_cam` and the batch runner
        consume them at once, but keep a copy of anything taken from :meth:`image_tokens`.
        Returns ``self``.
        """
        self._run_tower = torch.compile(run_tower, **options)
        return self

    # construction -------------------------------------------------------------------------
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
        """Wrap an open_clip model the user already built (weights as they are)."""
        from .backends.open_clip import OpenCLIPBackend, image_config_of

        config = image_config_of(model)
        normalize = _find_normalize(preprocess)
        if normalize is not None:
            config.mean = tuple(float(m) for m in normalize.mean)
            config.std = tuple(float(s) for s in normalize.std)
        info = ModelInfo(name=name or type(model).__name__)
        return cls(OpenCLIPBackend(model, tokenizer, config, info), templates=templates)

    @classmethod
    def from_transformers(
        cls,
        model: nn.Module,
        tokenizer: Callable[..., Any],
        *,
        image_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        templates: Sequence[str] | str | None = None,
        name: str | None = None,
    ) -> Localizer:
        """Wrap a transformers ``CLIPModel``/``SiglipModel`` and its tokenizer."""
        from .backends.base import ImageConfig
        from .backends.transformers import TransformersBackend

        backend = TransformersBackend(model, tokenizer)
        cfg = backend.image_config
        backend.image_config = ImageConfig(
            size=(image_size, image_size) if image_size else cfg.size,
            mean=tuple(mean) if mean else cfg.mean,
            std=tuple(std) if std else cfg.std,
        )
        if name:
            backend.info.name = name
        return cls(backend, templates=templates)

    # properties ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.backend.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backend.dtype

    @property
    def info(self) -> ModelInfo:
        return self.backend.info

    @property
    def patch_size(self) -> tuple[int, int]:
        return self.backend.vision.patch_size

    def default_depth(self) -> int:
        return min(self.info.default_depth, len(self.backend.vision.blocks) + 1)

    # text -----------------------------------------------------------------------------------
    def encode_text(self, prompts: Sequence[str] | str, templates: Sequence[str] | None = None) -> Tensor:
        """L2-normalized text embeddings, K×D float32 on the model's device.

        With ``templates`` each prompt is embedded in every template, the embeddings normalized,
        averaged and normalized again. Every distinct string is encoded once and cached, and so
        are the 64 most recently used whole sets, so a stream of images scored against the same
        prompts never re-encodes or re-stacks them (a set's tensor is shared: do not modify it in
        place).
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        templates = ["{}"] if templates is None else list(templates)  # [] is refused below, not "verbatim"
        key = (tuple(prompts), tuple(templates)) if all(isinstance(p, str) for p in prompts) else None
        cached = self._prompt_set_cache.pop(key, None) if key else None  # a stream asks for the same set
        if cached is not None:  # back in as the most recently used; an inference tensor is copied
            self._prompt_set_cache[key] = cached
            outside = cached.is_inference() and not torch.is_inference_mode_enabled()
            return cached.clone() if outside else cached
        prompts = [check_prompt(p) for p in prompts]
        if not prompts:
            raise PromptError("no prompts given")
        templates = prompt_library.check_templates(templates)
        texts = [t.replace("{}", p) for p in prompts for t in templates]
        missing = list(dict.fromkeys(s for s in texts if s not in self._text_cache))
        if missing:
            cut, context = self.backend.cut_prompts(missing)
            for text in cut:  # the encoder reads their start only: prompts that differ later are one
                head = text[:80] + ("..." if len(text) > 80 else "")
                message = f"prompt longer than the text encoder's {context} tokens; only its start is read"
                warnings.warn(f"{message}: {head!r}", stacklevel=2)
            # in slices: a vocabulary of thousands of phrases times its templates would otherwise
            # run the text tower on them all at once (gigabytes of activations on a laptop)
            for start in range(0, len(missing), TEXT_BATCH):
                part = missing[start : start + TEXT_BATCH]
                emb = F.normalize(self.backend.encode_text(part).float(), dim=-1)
                self._text_cache.update(zip(part, emb))
        emb = torch.stack([self._text_cache[s] for s in texts]).view(len(prompts), len(templates), -1)
        out = F.normalize(emb.mean(dim=1), dim=-1)
        if key:
            if len(self._prompt_set_cache) >= 64:  # drop the least recently used set
                self._prompt_set_cache.pop(next(iter(self._prompt_set_cache)))
            self._prompt_set_cache[key] = out
        return out

    def _text_embeddings(self, prompts: Sequence[str] | Tensor) -> Tensor:
        if isinstance(prompts, Tensor):
            emb = prompts.unsqueeze(0) if prompts.dim() == 1 else prompts
            return F.normalize(emb.to(self.device).float(), dim=-1)
        return self.encode_text(prompts)

    def clear_cache(self) -> None:
        self._text_cache.clear()
        self._prompt_set_cache.clear()

    # images ---------------------------------------------------------------------------------
    def prepare(
        self, images: ImageInput | Sequence[ImageInput], *, image_size: int | None = None
    ) -> tuple[list[PreparedImage], list[FailedImage]]:
        """Read and preprocess images for this model (see :mod:`mmfinercam.images`)."""
        cfg = self.backend.image_config
        return prepare_images(
            images,
            short_side=min(cfg.size) if image_size is None else image_size,
            patch=self.patch_size,
            mean=cfg.mean,
            std=cfg.std,
        )

    def prepare_in_chunks(
        self, images: ImageInput | Sequence[ImageInput], chunk: int, *, image_size: int | None = None
    ) -> Iterator[tuple[list[PreparedImage], list[FailedImage]]]:
        """:meth:`prepare`, ``chunk`` files at a time (:func:`mmfinercam.images.prepare_in_chunks`)."""
        cfg = self.backend.image_config
        short_side = min(cfg.size) if image_size is None else image_size
        return prepare_in_chunks(
            images, chunk, short_side=short_side, patch=self.patch_size, mean=cfg.mean, std=cfg.std
        )

    @torch.inference_mode()
    def image_tokens(self, pixels: Tensor, *, method: str = "gem", depth: int | None = None) -> TowerOutput:
        """One image-tower pass over a preprocessed B×3×H×W batch; tokens in float32."""
        if method not in DENSE_METHODS:
            raise ValueError(f"dense method must be one of {DENSE_METHODS}, got {method!r}")
        pixels = check_pixel_batch(pixels, self.patch_size).to(self.device, self.dtype, non_blocking=True)
        out = self._run_tower(
            self.backend.vision,
            pixels,
            method=method,
            depth=self.default_depth() if depth is None else depth,
            ss_attn_temp=self.info.gem_temperature,
        )
        return TowerOutput(out.global_embedding.float(), out.tokens.float(), out.grid, out.num_prefix_tokens)

    def similarity_maps(
        self,
        images: Tensor,
        prompts: Sequence[str] | Tensor,
        *,
        method: str = "gem",
        depth: int | None = None,
    ) -> Tensor:
        """Raw cosine similarity of every patch with every prompt: B×K×h×w.

        ``images`` is a preprocessed batch (B×3×H×W); ``prompts`` are strings used verbatim or
        text embeddings (K×D). All K prompts cost one image-tower pass. The batch is taken as it
        is: an image with NaN or infinite pixels gets NaN rows and leaves the others unchanged
        (:meth:`finer_cam` reports such an image instead).
        """
        text = self._text_embeddings(prompts)
        out = self.image_tokens(images, method=method, depth=depth)  # checks the pixels
        patches = F.normalize(out.patch_tokens, dim=-1)
        sims = torch.einsum("bnd,kd->bkn", patches, _same_width(text, patches))
        return sims.reshape(sims.shape[0], sims.shape[1], *out.grid)

    def zero_shot(
        self,
        images: Tensor,
        prompts: Sequence[str] | Tensor,
        *,
        templates: Sequence[str] | None = None,
    ) -> Tensor:
        """Class probabilities (B×K) of a preprocessed batch over ``prompts``.

        The model's own global embedding and temperature, prompts wrapped in ``templates``
        (default: the model's). Used by the metrics to re-score masked images.
        """
        if isinstance(prompts, Tensor):
            text = self._text_embeddings(prompts)
        else:
            text = self.encode_text(prompts, self.templates if templates is None else templates)
        out = self.image_tokens(images, method="raw")
        z = F.normalize(out.global_embedding, dim=-1)
        return torch.softmax(self.backend.logit_scale * z @ _same_width(text, z).T, dim=-1)

    # Finer-CAM ------------------------------------------------------------------------------
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
        image_size: int | None = None,
        batch_size: int | None = None,
        shifts: int = 1,
        flip: bool = False,
    ) -> FinerCAMResult:
        """Where is the evidence for ``target`` and not for the contrasting concepts?

        ``contrast`` lists the similar concepts explicitly; or ``vocabulary`` (a list, a file
        or a shipped vocabulary name) supplies candidates, of which those at ``contrast_ranks``
        by ``|<z,t_i> - <z,t_c>|`` are taken for each image (ranks past the vocabulary are
        dropped, as the reference code does for few classes). ``alpha=0`` gives the plain target
        map; larger values keep only what differs. Prompts are wrapped in ``templates``
        (default: the model's own, e.g. ``"a photo of a {}."``; ``["{}"]`` uses them verbatim).

        ``shifts=2, flip=True`` averages the maps of 8 views of each image (shifted by half a
        patch each way, and mirrored; :mod:`mmfinercam.smoothing`) on a grid twice as fine: 8
        more passes, for maps that depend less on where the patch grid falls. Contrasts and
        weights come from the image as given.

        A tensor of images runs as the one batch it is; files and arrays are read and run
        ``batch_size`` (default 16) at a time, so a long list of paths is never held prepared.
        Broken images do not stop the batch: they are listed in ``result.failed``; if no image
        can be used, :class:`~mmfinercam.errors.ImageLoadError` is raised.
        """
        if method not in DENSE_METHODS and method not in CAM_METHODS:
            raise ValueError(f"method must be one of {DENSE_METHODS + tuple(CAM_METHODS)}, got {method!r}")
        target = check_prompt(target, "target prompt")
        alpha = check_alpha(alpha)
        if batch_size is not None:
            check_whole(batch_size, "batch_size")
        if contrast is not None and vocabulary is not None:
            raise PromptError("give either explicit contrasts or a vocabulary, not both")
        n_views = len(smoothing.views(self.patch_size, shifts, flip))  # checks shifts early
        templates = self.templates if templates is None else list(templates)
        target_text = self.encode_text([target], templates)[0]
        if vocabulary is not None:
            entries = _vocabulary_entries(vocabulary, target)
            contrast_ranks = check_contrast_ranks(contrast_ranks, len(entries))
            candidate_text = self.encode_text(entries, templates)
        else:
            entries = check_contrasts(target, contrast) if contrast is not None else []
            candidate_text = (
                self.encode_text(entries, templates)
                if entries
                else target_text.new_zeros(0, target_text.shape[0])
            )

        gradient = method not in DENSE_METHODS
        from_vocabulary = vocabulary is not None

        def explain(pixels: Tensor) -> dict[str, Tensor]:
            """One batch's scores, weights, similarities and contrasts, copied to the host."""
            out = self.image_tokens(pixels, method="raw" if gradient else method, depth=depth)
            z = F.normalize(out.global_embedding, dim=-1)
            pick = _pick_contrasts(z, target_text, candidate_text, from_vocabulary, contrast_ranks)
            if gradient:
                parts = self._gradient_batch(pixels, target_text, candidate_text, pick, alpha, method)
            else:
                parts = self._dense_batch(out, target_text, candidate_text, pick, alpha, weighting)
            if shifts > 1 or flip:

                def run(view: Tensor) -> dict[str, Tensor]:
                    if gradient:
                        return self._gradient_batch(view, target_text, candidate_text, pick, alpha, method)
                    tokens = self.image_tokens(view, method=method, depth=depth)
                    return self._dense_batch(tokens, target_text, candidate_text, pick, alpha, weighting)

                keys = ("scores",) if gradient else ("scores", "target_scores")
                parts.update(
                    smoothing.smoothed_maps(run, pixels, self.patch_size, keys, shifts=shifts, flip=flip)
                )
            parts.update(pick)
            return dict(zip(parts, to_host(*parts.values())))  # on the device until here

        step = batch_size or (max(len(images), 1) if isinstance(images, Tensor) else 16)
        used: list[tuple[int, str, tuple[int, int]]] = []  # (index, source, size) of each image run
        failed: list[FailedImage] = []
        positions: list[int] = []  # where each batch's rows sit in ``used``
        outputs: list[dict[str, Tensor]] = []
        # files are read ``step`` at a time as they are run, so thousands of paths are never held
        # prepared at once; a tensor runs as the one batch it is
        for prepared, broken in self.prepare_in_chunks(images, step, image_size=image_size):
            failed += broken
            whole = images if isinstance(images, Tensor) and not broken else None
            for members, pixels in pixel_batches(prepared, step, whole):
                outputs.append(explain(pixels))
                positions += [len(used) + m for m in members]
            used += [(p.index, p.source, p.original_size) for p in prepared]
        for f in failed:
            warnings.warn(f"skipped image {f.source}: {f.message}", stacklevel=2)
        if not used:
            why = "; ".join(f"{f.source}: {f.message}" for f in failed) or "no images given"
            raise ImageLoadError(f"no usable image: {why}", failed)

        def rows(key: str) -> Tensor | list[Tensor]:
            """One output for every prepared image, in input order (stacked if sizes agree)."""
            return _in_order([o[key] for o in outputs], positions)

        contrast_index = rows("contrast_index")
        assert isinstance(contrast_index, Tensor)  # every image has as many contrasts
        return FinerCAMResult(
            scores=rows("scores"),
            target=target,
            contrast=ContrastNames(entries, contrast_index),
            weights=rows("weights"),
            alpha=float(alpha),
            views=n_views,
            method=method,
            target_similarity=rows("target_similarity"),
            contrast_similarity=rows("contrast_similarity"),
            sources=[source for _, source, _ in used],
            indices=[index for index, _, _ in used],
            image_sizes=[size for _, _, size in used],
            failed=failed,
            target_scores=None if gradient else rows("target_scores"),
        )

    def _dense_batch(
        self,
        out: TowerOutput,
        target_text: Tensor,
        candidate_text: Tensor,
        pick: dict[str, Tensor],
        alpha: float,
        weighting: str,
    ) -> dict[str, Tensor]:
        """Dense Finer-CAM for one batch of same-sized images: the contrasts mixed by weight
        first (one small matmul over the candidates, no per-image copies of their texts), then
        two maps an image."""
        index = pick["contrast_index"]  # B×D into the candidates
        weights = contrast_weights(pick["contrast_similarity"], self.backend.logit_scale, weighting)
        # every image's weights spread over all M candidates: B×M, zero where not picked
        spread = weights.new_zeros(index.shape[0], candidate_text.shape[0]).scatter_(1, index, weights)
        scores, target_maps = mixed_finer_maps(
            F.normalize(out.patch_tokens, dim=-1),
            target_text.expand(index.shape[0], 1, -1),
            (spread @ candidate_text)[:, None],
            out.grid,
            alpha,
        )
        return {"scores": scores[:, 0], "target_scores": target_maps[:, 0], "weights": weights}

    def _gradient_batch(
        self,
        pixels: Tensor,
        target_text: Tensor,
        candidate_text: Tensor,
        pick: dict[str, Tensor],
        alpha: float,
        method: str,
    ) -> dict[str, Tensor]:
        """Gradient Finer-CAM on CLIP: explain sum_i p_i (y_c - alpha y_i) / sum_i p_i.

        ``y_k = logit_scale * cos(z, t_k)`` over the target (k = 0) and every candidate; the
        references are the picked contrasts. The CAM layer is the last block's normalized input.
        """
        text = torch.cat([target_text[None], candidate_text])
        b = pixels.shape[0]
        target = torch.zeros(b, dtype=torch.long, device=self.device)
        refs = pick["contrast_index"].to(self.device) + 1
        out = clip_cam(self.backend, method)(pixels, text, finer_score(target, refs, alpha))
        p = torch.softmax(out.outputs, dim=-1).gather(1, refs)
        weights = p / (p.sum(dim=1, keepdim=True) + 1e-9)
        return {"scores": out.layer_maps[0], "weights": weights}

    def __repr__(self) -> str:
        info = self.info
        weights = "RANDOM weights" if info.random_weights else f"pretrained={info.pretrained}"
        return f"Localizer({info.name}, {weights}, device={self.device}, dtype={self.dtype})"


def _pick_contrasts(
    z: Tensor, target_text: Tensor, candidate_text: Tensor, automatic: bool, ranks: Sequence[int]
) -> dict[str, Tensor]:
    """Which candidates each image is contrasted with, and the global similarities."""
    target_similarity = z @ target_text
    candidate_similarity = z @ candidate_text.T  # B×M
    if automatic:
        index = rank_contrasts(target_similarity, candidate_similarity, ranks)
    else:
        index = torch.arange(candidate_text.shape[0], device=z.device).expand(z.shape[0], -1)
    return {
        "contrast_index": index,
        "target_similarity": target_similarity,
        "contrast_similarity": candidate_similarity.gather(1, index),
    }


def _vocabulary_entries(vocabulary: Sequence[str] | str | Path, target: str) -> list[str]:
    if isinstance(vocabulary, (str, Path)):
        entries = prompt_library.load(vocabulary)
    else:
        entries = [check_prompt(v, "vocabulary entry") for v in vocabulary]
    entries = [e for e in dict.fromkeys(entries) if e != target]
    if not entries:
        raise PromptError("the vocabulary holds no entry other than the target")
    return entries


def _find_normalize(preprocess: Any) -> Any:
    """The ``Normalize`` step of a torchvision ``Compose``, if any."""
    for t in getattr(preprocess, "transforms", []) or []:
        if hasattr(t, "mean") and hasattr(t, "std"):
            return t
    return None


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

    ``model`` is an open_clip name (with ``pretrained`` a tag such as ``"openai"`` or a local
    checkpoint file), an ``hf-hub:`` id, a local folder, or a shipped model name such as
    ``"testbed"``. ``pretrained=None`` on an architecture name builds random weights (tests).
    ``device`` defaults to CUDA when available.
    """
    from .backends import known_models

    alias = known_models().get(model, {})
    return Localizer(
        create_backend(model, pretrained, backend=backend, device=device, dtype=dtype, **kwargs),
        templates=templates if templates is not None else alias.get("templates"),
    )
