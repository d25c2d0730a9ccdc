"""``mmfinercam eval``: methods × metrics over a held-out testbed split or an annotated folder.

Each item is an image, the mask of the part that separates its target from the contrasts, the
target prompt and the contrast prompts. On the testbed the target is the image's species, the
contrasts are its siblings (which differ from it in exactly one part), and the mask is that
part. The re-scoring model for RD and deletion/insertion is the same model's zero-shot
classifier over all class names.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import metrics as M
from .cams import CAM_METHODS
from .errors import MMFinerCAMError
from .localizer import FinerCAMResult, Localizer


@dataclass
class EvalItem:
    image: Image.Image
    mask: np.ndarray  #: H×W bool, the part that separates target from contrasts
    target: str
    contrast: list[str]
    object_mask: np.ndarray | None = None  #: H×W bool, the whole object (optional)
    source: str = ""


@dataclass(frozen=True)
class MethodSpec:
    """One explanation method: a family (``gem``, ``raw`` or a gradient CAM) and an alpha."""

    name: str
    method: str
    alpha: float
    shifts: int = 1  #: sub-patch shifts per axis (:mod:`mmfinercam.smoothing`); 1 = none
    flip: bool = False  #: also average the mirrored image's map

    @property
    def is_plain(self) -> bool:
        return self.alpha == 0

    @property
    def family(self) -> str:
        """The method and its smoothing: one line in the metric-vs-alpha plot."""
        if self.shifts == 1 and not self.flip:
            return self.method
        return f"{self.method}, {self.shifts**2 * (2 if self.flip else 1)} views"


CAM_LABELS = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "layercam": "Layer-CAM",
    "scorecam": "Score-CAM",
}


def default_methods(
    alphas: Sequence[float] = (0.4, 0.6, 0.8, 1.0, 1.5),
    cams: Sequence[str] = ("gradcam", "layercam"),
    smooth: bool = True,
) -> list[MethodSpec]:
    """Plain maps (alpha 0) of each family, and Finer-CAM at several alphas (GEM) or at 1;
    with ``smooth``, also the GEM maps averaged over 8 shifted and mirrored views."""
    methods = [MethodSpec("plain GEM", "gem", 0.0), MethodSpec("plain raw tokens", "raw", 0.0)]
    methods.append(MethodSpec("Finer raw tokens (a=1)", "raw", 1.0))
    methods += [MethodSpec(f"Finer GEM (a={a:g})", "gem", float(a)) for a in alphas]
    if smooth:  # 8 views: half-patch shifts each way, and mirrored
        methods.append(MethodSpec("plain GEM, 8 views", "gem", 0.0, shifts=2, flip=True))
        methods.append(MethodSpec("Finer GEM (a=1), 8 views", "gem", 1.0, shifts=2, flip=True))
    for cam in cams:
        label = CAM_LABELS.get(cam, cam)
        methods += [MethodSpec(f"plain {label}", cam, 0.0), MethodSpec(f"Finer {label} (a=1)", cam, 1.0)]
    return methods


def testbed_items(n: int, start: int = 0) -> tuple[list[EvalItem], list[str]]:
    """``n`` held-out testbed images (seeds disjoint from training) and all species names."""
    from .testbed.generator import held_out
    from .testbed.species import SPECIES, siblings

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


def folder_items(folder: str | Path) -> tuple[list[EvalItem], list[str]]:
    """Items from ``folder/annotations.json``: a list of {image, mask, target, contrast}.

    Paths are relative to the folder; masks are images whose non-zero pixels mark the part.
    Class names for re-scoring are every target and contrast mentioned.
    """
    folder = Path(folder)
    listing = folder / "annotations.json"
    if not listing.is_file():
        raise MMFinerCAMError(
            f"{listing} not found: an evaluation folder holds its images, their part masks and an "
            'annotations.json listing [{"image", "mask", "target", "contrast": [...]}, ...]'
        )
    try:
        spec = json.loads(listing.read_text())
    except json.JSONDecodeError as err:
        raise MMFinerCAMError(f"{listing} is not JSON: {err}") from err
    keys = ("image", "mask", "target", "contrast")
    if not isinstance(spec, list) or not spec:
        raise MMFinerCAMError(f"{listing} must be a non-empty list of objects with {', '.join(keys)}")
    for i, row in enumerate(spec):
        if not isinstance(row, dict) or any(k not in row for k in keys):
            raise MMFinerCAMError(f"entry #{i} of {listing} needs {', '.join(keys)}")
    items, names = [], {}
    for row in spec:
        image = Image.open(folder / row["image"]).convert("RGB")
        mask = np.asarray(Image.open(folder / row["mask"]).convert("L")) > 0
        if mask.shape != (image.height, image.width):
            raise ValueError(f"{row['mask']}: mask size {mask.shape} differs from its image")
        items.append(EvalItem(image, mask, row["target"], list(row["contrast"]), source=row["image"]))
        for name in [row["target"], *row["contrast"]]:
            names.setdefault(name, None)
    return items, list(names)


Runner = Callable[[Localizer, torch.Tensor, str, list[str], MethodSpec], FinerCAMResult]


def _run_localizer(loc: Localizer, pixels: torch.Tensor, target: str, contrast: list[str], spec: MethodSpec):
    return loc.finer_cam(
        pixels, target, contrast, alpha=spec.alpha, method=spec.method, shifts=spec.shifts, flip=spec.flip
    )


#: method family -> how to run it (dense maps and the gradient CAMs on CLIP)
RUNNERS: dict[str, Runner] = {name: _run_localizer for name in ("gem", "raw", *CAM_METHODS)}


@dataclass
class MethodScores:
    spec: MethodSpec
    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, vals in self.values.items():
            arr = np.asarray(vals, dtype=np.float64)
            out[key] = float(arr.mean())
            out[key + "_sem"] = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else 0.0
        return out


METRIC_COLUMNS = [
    ("pointing", "pointing game (part)"),
    ("energy", "energy pointing (part)"),
    ("iou", "IoU@0.5 (part)"),
    ("object_pointing", "pointing game (object)"),
    ("rd5", "RD@5%"),
    ("rd10", "RD@10%"),
    ("deletion", "deletion AUC (lower better)"),
    ("insertion", "insertion AUC"),
]


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
    """Score every method on every item; returns per-method scores and the first maps.

    Maps are made per target (all its images in one call), metrics in large mixed batches.
    ``confidence=False`` keeps only the mask metrics (no re-scoring passes for RD and AUCs).
    """
    from tqdm.auto import tqdm

    prepared, failed = loc.prepare([it.image for it in items])
    if failed:
        raise ValueError(f"{len(failed)} evaluation images could not be prepared: {failed[0].message}")
    shapes = {tuple(p.pixels.shape) for p in prepared}
    if len(shapes) != 1:
        raise ValueError(f"evaluation images must share one size after preparation; got {sorted(shapes)}")
    pixels = torch.stack([p.pixels for p in prepared])
    size = pixels.shape[-2:]
    masks = torch.stack([_resize_mask(it.mask, size) for it in items])
    object_masks = (
        torch.stack([_resize_mask(it.object_mask, size) for it in items])
        if all(it.object_mask is not None for it in items)
        else None
    )
    class_index = {name: i for i, name in enumerate(class_names)}
    predict = lambda x: loc.zero_shot(x.to(loc.device), list(class_names)).cpu()  # noqa: E731
    groups: dict[tuple[str, tuple[str, ...]], list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        groups[(it.target, tuple(it.contrast))].append(i)

    n = len(items)
    c = torch.tensor([class_index[it.target] for it in items])
    probs = torch.cat([predict(pixels[j : j + batch_size]) for j in range(0, n, batch_size)])
    d = torch.empty(n, dtype=torch.long)  # the most probable contrast of each image
    for (_, contrast), idx in groups.items():
        sib = torch.tensor([class_index[s] for s in contrast])
        d[idx] = sib[probs[idx][:, sib].argmax(dim=1)]

    scores = [MethodScores(spec) for spec in methods]
    kept: dict[str, list[torch.Tensor]] = {}
    bar = tqdm(total=len(methods), desc="eval", unit="method", disable=not progress or None)
    for ms in scores:
        maps = torch.empty(n, *size)
        for (target, contrast), idx in groups.items():
            for j in range(0, len(idx), batch_size):
                sub = idx[j : j + batch_size]
                res = RUNNERS[ms.spec.method](loc, pixels[sub], target, list(contrast), ms.spec)
                maps[sub] = (
                    res.heatmaps if isinstance(res.heatmaps, torch.Tensor) else torch.stack(res.heatmaps)
                )
        v = ms.values
        v["pointing"] = M.pointing_game(maps, masks).float().tolist()
        v["energy"] = M.energy_pointing_game(maps, masks).tolist()
        v["iou"] = M.mask_iou(maps, masks).tolist()
        if object_masks is not None:
            v["object_pointing"] = M.pointing_game(maps, object_masks).float().tolist()
        for j in range(0, n if confidence else 0, batch_size):
            sl = slice(j, j + batch_size)
            x, m, cc, dd, pb = pixels[sl], maps[sl], c[sl], d[sl], probs[sl]
            v["rd5"] += M.relative_confidence_drop(predict, x, m, cc, dd, 0.05, probs_before=pb).tolist()
            v["rd10"] += M.relative_confidence_drop(predict, x, m, cc, dd, 0.10, probs_before=pb).tolist()
            if auc_steps:
                v["deletion"] += M.deletion_auc(predict, x, m, cc, steps=auc_steps).tolist()
                v["insertion"] += M.insertion_auc(predict, x, m, cc, steps=auc_steps).tolist()
        kept[ms.spec.name] = list(maps[:keep_maps])
        bar.update(1)
    bar.close()
    return scores, kept


def _resize_mask(mask: np.ndarray, size) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(mask, dtype=bool))
    if tuple(t.shape) == tuple(size):
        return t
    img = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).resize((size[1], size[0]), Image.NEAREST)
    return torch.from_numpy(np.asarray(img) > 0)


def write_report(
    scores: Sequence[MethodScores],
    out: str | Path,
    *,
    items: Sequence[EvalItem] = (),
    maps: dict[str, list[torch.Tensor]] | None = None,
    header: str = "",
) -> dict[str, Path]:
    """Write ``table.md``, ``table.csv``, ``metric_vs_alpha.png`` and ``gallery.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [(ms.spec, ms.summary()) for ms in scores]
    keys = [k for k, _ in METRIC_COLUMNS if any(k in s for _, s in rows)]
    with open(out / "table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "family", "alpha", "n"] + [x for k in keys for x in (k, k + "_sem")])
        for spec, s in rows:
            n = len(next(iter(scores[0].values.values()), []))
            w.writerow(
                [spec.name, spec.family, spec.alpha, n]
                + [f"{s[x]:.4f}" for k in keys for x in (k, k + "_sem")]
            )
    names = dict(METRIC_COLUMNS)
    lines = [header, "", "| method | " + " | ".join(names[k] for k in keys) + " |"]
    lines.append("|---" * (len(keys) + 1) + "|")
    for spec, s in rows:
        lines.append(
            f"| {spec.name} | " + " | ".join(f"{s[k]:.3f} ± {s[k + '_sem']:.3f}" for k in keys) + " |"
        )
    (out / "table.md").write_text("\n".join(lines).strip() + "\n")
    files = {"table.md": out / "table.md", "table.csv": out / "table.csv"}

    by_family: dict[str, list[tuple[float, dict]]] = defaultdict(list)
    for spec, s in rows:
        by_family[spec.family].append((spec.alpha, s))
    plot_keys = [k for k in ("pointing", "energy", "rd5") if k in keys]
    fig, axes = plt.subplots(1, len(plot_keys), figsize=(4 * len(plot_keys), 3.2))
    for ax, key in zip(np.atleast_1d(axes), plot_keys):
        for family, pts in by_family.items():
            pts = sorted(pts, key=lambda t: t[0])
            ax.errorbar(
                [a for a, _ in pts],
                [s[key] for _, s in pts],
                yerr=[s[key + "_sem"] for _, s in pts],
                marker="o",
                capsize=2,
                label=family,
            )
        ax.set_xlabel("alpha (0 = plain map)")
        ax.set_title(names[key], fontsize=9)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "metric_vs_alpha.png", dpi=110)
    plt.close(fig)
    files["metric_vs_alpha.png"] = out / "metric_vs_alpha.png"

    if maps and items:
        methods = list(maps)
        n = min(len(v) for v in maps.values())
        fig, axes = plt.subplots(
            n, len(methods) + 1, figsize=(1.9 * (len(methods) + 1), 1.9 * n), squeeze=False
        )
        for r in range(n):
            axes[r, 0].imshow(items[r].image)
            axes[r, 0].contour(items[r].mask, levels=[0.5], colors="white", linewidths=0.8)
            axes[r, 0].set_title(items[r].target, fontsize=7)
            for col, name in enumerate(methods, start=1):
                axes[r, col].imshow(items[r].image)
                axes[r, col].imshow(maps[name][r].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
                axes[r, col].contour(items[r].mask, levels=[0.5], colors="white", linewidths=0.8)
                if r == 0:
                    axes[r, col].set_title(name, fontsize=7)
        for ax in axes.flat:
            ax.set_axis_off()
        fig.tight_layout()
        fig.savefig(out / "gallery.png", dpi=100)
        plt.close(fig)
        files["gallery.png"] = out / "gallery.png"
    return files
