"""What ``mmfinercam eval`` writes: the table (Markdown and CSV), metric-vs-alpha plots, a gallery.

The tables are written first, so a failure in drawing keeps them.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..masks import resize_mask
from ..viz import read_for_display
from .evaluate import EvalItem, MethodScores

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


#: the most methods a gallery shows (past it: each one-view plain and Finer map, alpha 1)
GALLERY_COLUMNS = 24


def write_report(
    scores: Sequence[MethodScores],
    out: str | Path,
    *,
    items: Sequence[EvalItem] = (),
    maps: dict[str, list[torch.Tensor]] | None = None,
    header: str = "",
) -> dict[str, Path]:
    """Write ``table.md``, ``table.csv``, ``metric_vs_alpha.png`` and ``gallery.png``.

    The tables are written first, so a failure in drawing keeps them.

    Args:
        scores: each method's scores.
        out: the folder.
        items: the items, for the gallery.
        maps: the maps kept, for the gallery.
        header: the table's heading.

    Returns:
        File name -> path of each file written.
    """
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

    n = min((len(v) for v in (maps or {}).values()), default=0)
    if maps and items and n > 0:  # --gallery 0 keeps no maps: no gallery
        methods = list(maps)
        if len(methods) > GALLERY_COLUMNS:  # a wide table: each method's plain and Finer (a=1) map
            specs = {ms.spec.name: ms.spec for ms in scores}
            methods = [
                m for m in methods if m in specs and specs[m].views == 1 and specs[m].alpha in (0.0, 1.0)
            ][:GALLERY_COLUMNS]
        fig, axes = plt.subplots(
            n, len(methods) + 1, figsize=(1.9 * (len(methods) + 1), 1.9 * n), squeeze=False
        )
        for r in range(n):
            image = read_for_display(items[r].image)
            mask = resize_mask(items[r].mask, (image.height, image.width)).numpy()
            axes[r, 0].imshow(image)
            axes[r, 0].contour(mask, levels=[0.5], colors="white", linewidths=0.8)
            axes[r, 0].set_title(items[r].target, fontsize=7)
            extent = (-0.5, image.width - 0.5, image.height - 0.5, -0.5)
            for col, name in enumerate(methods, start=1):
                axes[r, col].imshow(image)  # the map, at the prepared size, over all of it
                heat = maps[name][r].numpy()
                axes[r, col].imshow(heat, cmap="jet", alpha=0.5, vmin=0, vmax=1, extent=extent)
                axes[r, col].contour(mask, levels=[0.5], colors="white", linewidths=0.8)
                if r == 0:
                    axes[r, col].set_title(name, fontsize=7)
        for ax in axes.flat:
            ax.set_axis_off()
        fig.tight_layout()
        fig.savefig(out / "gallery.png", dpi=100)
        plt.close(fig)
        files["gallery.png"] = out / "gallery.png"
    return files
