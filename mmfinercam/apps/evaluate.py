"""``mmfinercam eval``: methods × metrics over a held-out testbed split or an annotated folder.

Each item is an image, the mask of the part that separates its target from the contrasts, the
target prompt and the contrast prompts. On the testbed the target is the image's species, the
contrasts are its siblings (which differ from it in exactly one part), and the mask is that
part. The re-scoring model for RD and deletion/insertion is the same model's zero-shot
classifier over all class names.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import metrics as M
from ..errors import ConfigError, ImageLoadError
from ..images import checked_size
from ..localizer import Localizer
from ..masks import read_mask, resize_mask
from ..options import FinerOptions
from ..pixels import FailedImage


@dataclass
class EvalItem:
    """An image, the mask of its separating part, its target and contrasts.

    Image and mask may be files, read when used: a folder of hundreds of photographs is not held
    decoded.

    Args:
        image: the image or its file.
        mask: H×W bool (or a mask file): the part that separates target from contrasts.
        target: the target prompt.
        contrast: the contrast prompts.
        object_mask: H×W bool, the whole object (optional).
        source: how to name the item in messages.
    """

    image: Image.Image | Path
    mask: np.ndarray | Path  #: H×W bool (or a mask file), the part that separates target from contrasts
    target: str
    contrast: list[str]
    object_mask: np.ndarray | None = None  #: H×W bool, the whole object (optional)
    source: str = ""


@dataclass(frozen=True)
class MethodSpec:
    """One explanation method: a family (a dense method or a gradient CAM), an alpha, its views.

    Args:
        name: its row's name in the tables.
        method: a dense method or CAM name.
        alpha: the contrast strength (0: the plain map).
        shifts: sub-patch shifts per axis (:mod:`mmfinercam.explain.smoothing`); 1 = none.
        flip: also average the mirrored image's map.
    """

    name: str
    method: str
    alpha: float
    shifts: int = 1  #: sub-patch shifts per axis (:mod:`mmfinercam.smoothing`); 1 = none
    flip: bool = False  #: also average the mirrored image's map

    @property
    def is_plain(self) -> bool:
        """Whether this is a plain map (alpha 0)."""
        return self.alpha == 0

    @property
    def options(self) -> FinerOptions:
        """The settings that make this method's maps."""
        return FinerOptions(alpha=self.alpha, method=self.method, shifts=self.shifts, flip=self.flip)

    @property
    def views(self) -> int:
        """How many shifted and mirrored views each map averages."""
        return self.shifts**2 * (2 if self.flip else 1)

    @property
    def family(self) -> str:
        """The method and its smoothing: one line in the metric-vs-alpha plot."""
        return self.method if self.views == 1 else f"{self.method}, {self.views} views"


#: each method's name in the tables
LABELS = {
    "gem": "GEM",
    "raw": "raw tokens",
    "maskclip": "MaskCLIP",
    "sclip": "SCLIP",
    "clearclip": "ClearCLIP",
    "naclip": "NACLIP",
    "clipsurgery": "CLIP Surgery",
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "xgradcam": "XGrad-CAM",
    "hirescam": "HiResCAM",
    "layercam": "Layer-CAM",
    "scorecam": "Score-CAM",
    "legrad": "LeGrad",
}


def default_methods(
    alphas: Sequence[float] = (0.4, 0.6, 0.8, 1.0, 1.5),
    cams: Sequence[str] = ("gradcam", "layercam", "legrad"),
    smooth: bool = True,
    dense: Sequence[str] | None = None,
) -> list[MethodSpec]:
    """The methods ``mmfinercam eval`` compares.

    Each method's plain map (alpha 0) and Finer-CAM at alpha 1 (GEM also at ``alphas``); with
    ``smooth``, each also averaged over 8 shifted and mirrored views.

    Args:
        alphas: GEM's contrast strengths.
        cams: gradient methods, after the dense ones.
        smooth: also the 8-view maps.
        dense: dense methods (default: every registered one).

    Returns:
        The methods.
    """
    from ..options import dense_methods

    methods = []
    for name in [*(dense_methods() if dense is None else dense), *cams]:
        label = LABELS.get(name, name)
        strengths = sorted({1.0, *(float(a) for a in alphas)}) if name == "gem" else [1.0]
        methods.append(MethodSpec(f"plain {label}", name, 0.0))
        methods += [MethodSpec(f"Finer {label} (a={a:g})", name, a) for a in strengths]
        if smooth:  # 8 views: half-patch shifts each way, and mirrored
            methods.append(MethodSpec(f"plain {label}, 8 views", name, 0.0, shifts=2, flip=True))
            methods.append(MethodSpec(f"Finer {label} (a=1), 8 views", name, 1.0, shifts=2, flip=True))
    return methods


def testbed_items(n: int, start: int = 0) -> tuple[list[EvalItem], list[str]]:
    """Held-out testbed images (seeds disjoint from training) and every species name.

    Args:
        n: how many images.
        start: the first held-out index.

    Returns:
        The items and the class names for re-scoring.
    """
    from ..testbed.generator import held_out
    from ..testbed.species import SPECIES, siblings

    items = []
    for s in held_out(n, start=start):
        parts = [m for name, m in s.masks.items()]
        items.append(
            EvalItem(
                image=s.image,
                mask=s.masks[s.species.varying_part],
                target=s.species.name,
                contrast=[sib.name for sib in siblings(s.species)],
                object_mask=np.logical_or.reduce(parts),
                source=f"testbed seed {s.seed} ({s.species.name})",
            )
        )
    return items, [sp.name for sp in SPECIES]


def folder_items(folder: str | Path) -> tuple[list[EvalItem], list[str], list[FailedImage]]:
    """Items from ``folder/annotations.json``: a list of {image, mask, target, contrast}.

    Paths are relative to the folder; masks are read by :func:`~mmfinercam.masks.read_mask`. Class
    names for re-scoring are every target and contrast mentioned. An entry whose image or mask
    cannot be used (missing, unreadable, of another size, or a mask marking nothing) is left out
    with a warning, as a batch reports a broken image.

    Args:
        folder: the annotated folder.

    Returns:
        The items, the class names, and the entries left out.

    Raises:
        ConfigError: for a missing or malformed listing, or one that leaves no usable entry.
    """
    folder = Path(folder)
    listing = folder / "annotations.json"
    if not listing.is_file():
        raise ConfigError(
            f"{listing} not found: an evaluation folder holds its images, their part masks and an "
            'annotations.json listing [{"image", "mask", "target", "contrast": [...]}, ...]'
        )
    try:
        spec = json.loads(listing.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{listing} is not JSON: {err}") from err
    keys = ("image", "mask", "target", "contrast")
    if not isinstance(spec, list) or not spec:
        raise ConfigError(f"{listing} must be a non-empty list of objects with {', '.join(keys)}")
    items: list[EvalItem] = []
    names: dict[str, None] = {}
    skipped: list[FailedImage] = []
    for i, row in enumerate(spec):
        where = f"entry #{i} of {listing}"
        if not isinstance(row, dict) or any(k not in row for k in keys):
            raise ConfigError(f"{where} needs {', '.join(keys)}")
        target, contrast = _entry_prompts(row, where)
        try:
            _check_entry_files(folder, row)  # read once to check, then only when used
        except ImageLoadError as err:
            skipped.append(FailedImage(i, str(row["image"]), str(err)))
            warnings.warn(f"{where} left out: {err}", stacklevel=2)
            continue
        image, mask = folder / str(row["image"]), folder / str(row["mask"])
        items.append(EvalItem(image, mask, target, contrast, source=str(row["image"])))
        for name in [target, *contrast]:
            names.setdefault(name, None)
    if not items:
        why = "; ".join(f"{f.source}: {f.message}" for f in skipped)
        raise ConfigError(f"no usable entry in {listing}: {why}")
    return items, list(names), skipped


def _entry_prompts(row: dict, where: str) -> tuple[str, list[str]]:
    """An entry's target and contrasts, checked: one contrast may be given as a string."""
    target, contrast = row["target"], row["contrast"]
    contrast = [contrast] if isinstance(contrast, str) else contrast
    if not isinstance(target, str) or not target.strip():
        raise ConfigError(f"{where}: target must be a non-empty string, got {target!r}")
    if not isinstance(contrast, list) or not contrast:
        raise ConfigError(f"{where}: contrast must be a non-empty list of strings, got {contrast!r}")
    if not all(isinstance(c, str) and c.strip() for c in contrast):
        raise ConfigError(f"{where}: every contrast must be a non-empty string, got {contrast!r}")
    if target in contrast:
        raise ConfigError(f"{where}: the target {target!r} is among its own contrasts")
    return target, list(contrast)


def _check_entry_files(folder: Path, row: dict) -> None:
    """That an entry's image and part mask can be used, or :class:`ImageLoadError` saying why."""
    size = checked_size(folder / str(row["image"]))
    mask = read_mask(folder / str(row["mask"]), size=size, name=row["mask"])
    if not mask.any():
        raise ImageLoadError(f"mask {row['mask']} marks no pixel (every metric would score it as a miss)")


@dataclass
class MethodScores:
    """One method's per-image metric values, gathered over the items.

    Args:
        spec: the method.
        values: metric name -> one value an image.
    """

    spec: MethodSpec
    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def summary(self) -> dict[str, float]:
        """Each metric's mean and its standard error of the mean.

        Returns:
            ``metric`` -> mean and ``metric_sem`` -> standard error (0 for one image).
        """
        out: dict[str, float] = {}
        for key, vals in self.values.items():
            arr = np.asarray(vals, dtype=np.float64)
            out[key] = float(arr.mean())
            out[key + "_sem"] = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else 0.0
        return out


def evaluate(
    loc: Localizer,
    items: Sequence[EvalItem],
    class_names: Sequence[str],
    methods: Sequence[MethodSpec],
    *,
    auc_steps: int = 8,
    batch_size: int = 128,
    progress: bool = True,
    keep_maps: int = 0,
    confidence: bool = True,
) -> tuple[list[MethodScores], dict[str, list[torch.Tensor]]]:
    """Score every method on every item.

    Images keep their aspect ratio, so a folder of photographs prepares to several sizes: items
    are scored in groups of one size (the scores pool over all of them). Within a group, maps are
    made per target (all its images in one call), metrics in large mixed batches.

    Args:
        loc: the model.
        items: the images, masks and prompts.
        class_names: every class the re-scoring classifier chooses among.
        methods: the methods.
        auc_steps: deletion/insertion steps (0: skip them).
        batch_size: images a call.
        progress: show a progress bar.
        keep_maps: how many items' maps to return (at each prepared image's size).
        confidence: also the re-scoring metrics (RD, AUCs); False keeps the mask metrics only.

    Returns:
        Each method's scores, and method name -> the first ``keep_maps`` maps.

    Raises:
        ConfigError: for an image that cannot be prepared, or a prompt missing from the classes.
    """
    from tqdm.auto import tqdm

    prepared, failed = loc.prepare([it.image for it in items])
    if failed:
        why = "; ".join(f"{items[f.index].source or f'item #{f.index}'}: {f.message}" for f in failed)
        raise ConfigError(f"{len(failed)} evaluation image(s) could not be prepared: {why}")
    missing = sorted({n for it in items for n in (it.target, *it.contrast)} - set(class_names))
    if missing:
        raise ConfigError(f"targets and contrasts missing from the class names: {', '.join(missing)}")
    by_size: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, p in enumerate(prepared):
        by_size[tuple(p.pixels.shape)].append(i)
    scores = [MethodScores(spec) for spec in methods]
    first = min(keep_maps, len(items))
    kept: dict[str, list[torch.Tensor | None]] = {spec.name: [None] * first for spec in methods}
    with_objects = all(it.object_mask is not None for it in items)  # else no item's is scored
    bar = tqdm(total=len(methods) * len(by_size), desc="eval", unit="method", disable=not progress or None)
    for idx in by_size.values():
        pixels = torch.stack([prepared[i].pixels for i in idx])
        group = _SizeGroup(loc, [items[i] for i in idx], pixels, class_names, with_objects, batch_size)
        for ms in scores:
            maps = group.score(ms, auc_steps=auc_steps, batch_size=batch_size, confidence=confidence)
            for j, i in enumerate(idx):
                if i < keep_maps:
                    kept[ms.spec.name][i] = maps[j]
            bar.update(1)
    bar.close()
    return scores, kept  # type: ignore[return-value]  # every slot is filled: idx cover all items


class _SizeGroup:
    """Items whose images prepare to one size: their pixels, masks and re-scoring baseline."""

    def __init__(
        self,
        loc: Localizer,
        items: Sequence[EvalItem],
        pixels: torch.Tensor,
        class_names: Sequence[str],
        with_objects: bool,
        batch_size: int,
    ) -> None:
        self.loc, self.pixels = loc, pixels
        size = (int(pixels.shape[-2]), int(pixels.shape[-1]))
        self.masks = torch.stack([resize_mask(it.mask, size) for it in items])
        self.object_masks = (
            torch.stack([resize_mask(it.object_mask, size) for it in items if it.object_mask is not None])
            if with_objects
            else None
        )
        class_index = {name: i for i, name in enumerate(class_names)}
        self.groups: dict[tuple[str, tuple[str, ...]], list[int]] = defaultdict(list)
        for i, it in enumerate(items):
            self.groups[(it.target, tuple(it.contrast))].append(i)
        self.c = torch.tensor([class_index[it.target] for it in items])
        self.predict = lambda x: loc.zero_shot(x.to(loc.device), list(class_names)).cpu()
        n = len(items)
        self.probs = torch.cat([self.predict(pixels[j : j + batch_size]) for j in range(0, n, batch_size)])
        self.d = torch.empty(n, dtype=torch.long)  # the most probable contrast of each image
        for (_, contrast), idx in self.groups.items():
            sib = torch.tensor([class_index[s] for s in contrast])
            self.d[idx] = sib[self.probs[idx][:, sib].argmax(dim=1)]

    def score(self, ms: MethodScores, *, auc_steps: int, batch_size: int, confidence: bool) -> torch.Tensor:
        """Append one method's metrics over these items to ``ms``; return its maps (n×H×W)."""
        pixels, n = self.pixels, len(self.pixels)
        maps = torch.empty(n, *pixels.shape[-2:])
        options = ms.spec.options
        for (target, contrast), idx in self.groups.items():
            for j in range(0, len(idx), batch_size):
                sub = idx[j : j + batch_size]
                heat = self.loc.finer_cam(pixels[sub], target, list(contrast), options=options).heatmaps
                maps[sub] = heat if isinstance(heat, torch.Tensor) else torch.stack(heat)
        v = ms.values
        v["pointing"] += M.pointing_game(maps, self.masks).float().tolist()
        v["energy"] += M.energy_pointing_game(maps, self.masks).tolist()
        v["iou"] += M.mask_iou(maps, self.masks).tolist()
        if self.object_masks is not None:
            v["object_pointing"] += M.pointing_game(maps, self.object_masks).float().tolist()
        for j in range(0, n if confidence else 0, batch_size):
            sl = slice(j, j + batch_size)
            x, m, cc, dd, pb = pixels[sl], maps[sl], self.c[sl], self.d[sl], self.probs[sl]
            predict = self.predict
            v["rd5"] += M.relative_confidence_drop(predict, x, m, cc, dd, 0.05, probs_before=pb).tolist()
            v["rd10"] += M.relative_confidence_drop(predict, x, m, cc, dd, 0.10, probs_before=pb).tolist()
            if auc_steps:
                v["deletion"] += M.deletion_auc(predict, x, m, cc, steps=auc_steps).tolist()
                v["insertion"] += M.insertion_auc(predict, x, m, cc, steps=auc_steps).tolist()
        return maps
