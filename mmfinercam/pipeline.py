"""One Finer-CAM call end to end: its prompts as a text bank, its batches, its result.

:meth:`~mmfinercam.Localizer.finer_cam` builds the call's :class:`PromptPlan` (every prompt
encoded once, target first, and how contrasts are chosen) and runs :func:`run_finer_cam`: files
are read ``batch_size`` at a time, each same-sized batch makes one image-tower pass, its
contrasts are chosen from the image as given, and its maps are made by the dense path or a
gradient CAM (averaged over shifted and mirrored views where asked). Results stay on the device
until each batch's are copied to the host once.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from . import prompts as prompt_library
from ._checks import check_contrast_ranks, check_contrasts, check_prompt, check_whole
from ._device import to_host
from .errors import ImageLoadError, PromptError
from .explain import smoothing
from .explain.cams import clip_finer_cam
from .explain.contrasts import ContrastChoice, ContrastPlan
from .explain.dense import explain_dense, global_similarity
from .explain.refine import refiner
from .explain.tokens import TowerOutput
from .explain.tower import check_depth, dense_method
from .images import ImageInput
from .options import FinerOptions
from .pixels import FailedImage, PreparedImage, pixel_batches
from .results import ContrastNames, FinerCAMResult, in_input_order
from .tiles import Canvas

if TYPE_CHECKING:
    from .localizer import Localizer


@dataclass
class PromptPlan:
    """One call's prompts as a text bank, target first, and how its contrasts are chosen.

    Args:
        prompts: the target, then the explicit contrasts or the vocabulary's entries.
        text: their normalized embeddings, P×E on the model's device.
        plan: how each image's contrasts are chosen.
        explicit: 1×1×D explicit contrast indices and validity (empty with a vocabulary).
    """

    prompts: list[str]
    text: Tensor
    plan: ContrastPlan
    explicit: tuple[Tensor, Tensor]

    @classmethod
    def build(
        cls,
        loc: Localizer,
        target: str,
        contrast: Sequence[str] | str | None,
        vocabulary: Sequence[str] | str | Path | None,
        options: FinerOptions,
        templates: Sequence[str] | None,
    ) -> PromptPlan:
        """Check a call's prompts and encode them.

        Args:
            loc: the model.
            target: the target prompt.
            contrast: explicit contrasts, or None.
            vocabulary: a vocabulary for automatic contrasts, or None.
            options: the call's settings (for its contrast ranks).
            templates: prompt templates (default: the model's).

        Returns:
            The plan.

        Raises:
            PromptError: for unusable prompts, both contrasts and a vocabulary, or ranks that
                leave no contrast.
        """
        target = check_prompt(target, "target prompt")
        if contrast is not None and vocabulary is not None:
            raise PromptError("give either explicit contrasts or a vocabulary, not both")
        entries = check_contrasts(target, contrast) if contrast is not None else []
        ranks: list[int] = []
        if vocabulary is not None:
            entries = vocabulary_entries(vocabulary, target)
            ranks = check_contrast_ranks(options.contrast_ranks, len(entries))
        prompts = [target, *entries]
        text = loc.encode_text(prompts, loc.templates if templates is None else list(templates))
        others = list(range(1, len(prompts)))
        vocab = torch.tensor(others if vocabulary is not None else [], dtype=torch.long)
        explicit = ContrastPlan.explicit_lists([[others if vocabulary is None else []]], loc.device)
        return cls(prompts, text, ContrastPlan(vocab, ranks), explicit)


def vocabulary_entries(vocabulary: Sequence[str] | str | Path, target: str) -> list[str]:
    """A vocabulary's distinct entries other than the target.

    Args:
        vocabulary: phrases, or a shipped vocabulary's name or a file.
        target: the target prompt.

    Returns:
        The entries, in order.

    Raises:
        PromptError: when no entry other than the target is left.
    """
    if isinstance(vocabulary, (str, Path)):
        entries = prompt_library.load(vocabulary)
    else:
        entries = [check_prompt(v, "vocabulary entry") for v in vocabulary]
    entries = [e for e in dict.fromkeys(entries) if e != target]
    if not entries:
        raise PromptError("the vocabulary holds no entry other than the target")
    return entries


def run_finer_cam(
    loc: Localizer,
    images: ImageInput | Sequence[ImageInput],
    plan: PromptPlan,
    options: FinerOptions,
    batch_size: int | None = None,
) -> FinerCAMResult:
    """A Finer-CAM call's batches, put back together in input order.

    Args:
        loc: the model.
        images: paths, PIL images, arrays, or a preprocessed tensor.
        plan: the call's prompts.
        options: its settings.
        batch_size: images a pass (default 16; a tensor runs as the one batch it is).

    Returns:
        The result.

    Raises:
        ConfigError: for a batch size, depth or shift count this model cannot run.
        ImageLoadError: when no image can be used.
    """
    if batch_size is not None:
        batch_size = check_whole(batch_size, "batch_size")
    if options.depth is not None and not options.gradient and dense_method(options.method).uses_depth:
        check_depth(options.depth, loc.backend.vision)
    smooth = len(smoothing.views(loc.patch_size, options.shifts, options.flip)) > 1  # shifts divide the patch
    step = batch_size or (max(len(images), 1) if isinstance(images, Tensor) else 16)
    used: list[tuple[int, str, tuple[int, int]]] = []  # (index, source, size) of each image run
    failed: list[FailedImage] = []
    positions: list[int] = []  # where each batch's rows sit in ``used``
    outputs: list[dict[str, Tensor]] = []
    tiles = False if options.gradient else options.tiles
    for prepared, broken in loc.prepare_in_chunks(images, step, short_side=options.short_side, tiles=tiles):
        failed += broken
        whole = images if isinstance(images, Tensor) and not broken else None
        at_once = [i for i, p in enumerate(prepared) if p.tiled is None]
        for members, pixels in pixel_batches([prepared[i] for i in at_once], step, whole):
            outputs.append(explain_batch(loc, pixels, plan, options, smooth))
            positions += [len(used) + at_once[m] for m in members]
        for i, p in enumerate(prepared):
            if p.tiled is not None:
                outputs.append(explain_tiled(loc, p, plan, options, smooth, step))
                positions.append(len(used) + i)
        used += [(p.index, p.source, p.original_size) for p in prepared]
    for f in failed:
        warnings.warn(f"skipped image {f.source}: {f.message}", stacklevel=4)
    if not used:
        why = "; ".join(f"{f.source}: {f.message}" for f in failed) or "no images given"
        raise ImageLoadError(f"no usable image: {why}", failed)

    def rows(key: str) -> Any:
        return in_input_order([o[key] for o in outputs], positions)

    return FinerCAMResult(
        scores=rows("scores"),
        target=plan.prompts[0],
        contrast=ContrastNames(plan.prompts, rows("contrast_index")),
        weights=rows("weights"),
        alpha=options.alpha,
        method=options.method,
        target_similarity=rows("target_similarity"),
        contrast_similarity=rows("contrast_similarity"),
        sources=[source for _, source, _ in used],
        indices=[i for i, _, _ in used],
        image_sizes=[size for _, _, size in used],
        failed=failed,
        target_scores=None if options.gradient else rows("target_scores"),
        views=options.views,
    )


def explain_batch(
    loc: Localizer, pixels: Tensor, plan: PromptPlan, options: FinerOptions, smooth: bool
) -> dict[str, Tensor]:
    """One same-sized batch's maps, weights, similarities and contrasts, copied to the host.

    Args:
        loc: the model.
        pixels: B×3×H×W preprocessed images.
        plan: the call's prompts.
        options: its settings.
        smooth: average the maps over the shifted and mirrored views of ``options``.

    Returns:
        ``scores``, ``target_scores`` (dense methods), ``weights``, ``contrast_index``,
        ``target_similarity`` and ``contrast_similarity``, on the host.
    """
    tokens, choice = _choose(loc, pixels, plan, options)
    run = _maps(loc, plan, options, choice)
    parts = run(pixels, None if options.gradient else tokens)
    if smooth:
        parts |= _smoothed(loc, run, pixels, options)
    return _finished(_refined(parts, pixels, options), choice)


def explain_tiled(
    loc: Localizer, image: PreparedImage, plan: PromptPlan, options: FinerOptions, smooth: bool, step: int
) -> dict[str, Tensor]:
    """One tiled image's maps (:mod:`mmfinercam.tiles`), as :func:`explain_batch` gives them.

    The contrasts and their weights are chosen once, from the whole image at the model's input
    size; each window's maps use them and are stitched on the working image's grid.

    Args:
        loc: the model.
        image: the prepared image, with its working image and windows.
        plan: the call's prompts.
        options: its settings (a dense method).
        smooth: average each window's maps over the views of ``options``.
        step: windows a pass.

    Returns:
        As :func:`explain_batch`, for one image.
    """
    assert image.tiled is not None, "explain_tiled takes a tiled image"
    whole = image.pixels[None].to(loc.device)
    tokens, choice = _choose(loc, whole, plan, options)
    own = _maps(loc, plan, options, choice)(whole, tokens)
    fine = options.shifts if smooth else 1
    layout = image.tiled.layout
    grid = (layout.grid[0] * fine, layout.grid[1] * fine)
    cell = (loc.patch_size[0] // fine, loc.patch_size[1] // fine)
    if options.refine:  # refined windows are at pixel resolution
        grid, cell = layout.size, (1, 1)
    canvas = Canvas(grid, cell, loc.device)
    cfg = loc.backend.image_config
    for starts, windows in image.tiled.batches(step, cfg.mean, cfg.std):
        windows = windows.to(loc.device)
        run = _maps(loc, plan, options, choice.repeated(len(starts)))
        parts = _smoothed(loc, run, windows, options) if smooth else run(windows)
        parts = _refined({key: parts[key] for key in ("scores", "target_scores")}, windows, options)
        canvas.add(starts, parts)
    maps = {key: m[None] for key, m in canvas.result().items()}
    if options.multiscale:  # the whole image's map on the same grid, averaged in
        for key in maps:
            up = F.interpolate(own[key][:, None].float(), size=grid, mode="bilinear", align_corners=False)
            maps[key] = (maps[key] + up[:, 0]) / 2
    return _finished({**maps, "weights": own["weights"]}, choice)


def _choose(
    loc: Localizer, pixels: Tensor, plan: PromptPlan, options: FinerOptions
) -> tuple[TowerOutput, ContrastChoice]:
    """The batch's tokens and its contrasts, chosen from the images as given."""
    b = pixels.shape[0]
    method = "raw" if options.gradient else options.method
    tokens = loc.image_tokens(pixels, method=method, depth=options.depth)
    target = torch.zeros(b, 1, dtype=torch.long, device=tokens.tokens.device)
    explicit = [t.expand(b, *t.shape[1:]) for t in plan.explicit]
    return tokens, plan.plan.choose(global_similarity(tokens, plan.text), target, *explicit)


def _maps(
    loc: Localizer, plan: PromptPlan, options: FinerOptions, choice: ContrastChoice
) -> Callable[..., dict[str, Tensor]]:
    """``run(view, view_tokens=None) -> maps``: the maps of a view of the batch with its contrasts."""
    index = choice.index[:, 0]
    target = torch.zeros(choice.index.shape[0], 1, dtype=torch.long, device=index.device)  # the bank's first
    settings = dict(alpha=options.alpha, weighting=options.weighting, logit_scale=loc.backend.logit_scale)

    def run(view: Tensor, view_tokens: TowerOutput | None = None) -> dict[str, Tensor]:
        if options.gradient:
            scores, weights = clip_finer_cam(
                loc.backend, options.method, view, plan.text, target[:, 0], index, options.alpha
            )
            return {"scores": scores, "weights": weights}
        if view_tokens is None:
            view_tokens = loc.image_tokens(view, method=options.method, depth=options.depth)
        maps = explain_dense(view_tokens, plan.text, target, choice, **settings)  # type: ignore[arg-type]
        return {
            "scores": maps.scores[:, 0],
            "target_scores": maps.target_scores[:, 0],
            "weights": maps.weights[:, 0],
        }

    return run


def _smoothed(
    loc: Localizer, run: Callable[..., dict[str, Tensor]], pixels: Tensor, options: FinerOptions
) -> dict[str, Tensor]:
    """The maps of ``run`` averaged over the shifted and mirrored views of ``options``."""
    keys = ("scores",) if options.gradient else ("scores", "target_scores")
    return smoothing.smoothed_maps(
        run, pixels, loc.patch_size, keys, shifts=options.shifts, flip=options.flip
    )


def _refined(parts: dict[str, Tensor], pixels: Tensor, options: FinerOptions) -> dict[str, Tensor]:
    """The maps refined at the pixels' resolution by the options' refiner (as they are without)."""
    if options.refine is None:
        return parts
    refine = refiner(options.refine)
    keys = [key for key in ("scores", "target_scores") if key in parts]
    maps = refine(pixels, torch.stack([parts[key] for key in keys], dim=1).float())
    return {**parts, **{key: maps[:, i] for i, key in enumerate(keys)}}


def _finished(parts: dict[str, Tensor], choice: ContrastChoice) -> dict[str, Tensor]:
    """A batch's maps with its contrasts and similarities, copied to the host."""
    parts = {
        **parts,
        "contrast_index": choice.index[:, 0],
        "target_similarity": choice.target_similarity[:, 0],
        "contrast_similarity": choice.contrast_similarity[:, 0],
    }
    return dict(zip(parts, to_host(*parts.values())))  # on the device until here
