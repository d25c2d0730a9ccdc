"""The high-resolution testbed split: a bird at its own scale in a scene eight times larger.

A specimen photograph is often far larger than the model's input and its trait a small part of
it. Here each held-out bird is drawn at the scale the model was trained at (96 px) inside a
768-px scene (:func:`~mmfinercam.testbed.generator.scene`), and the same method explains it
four ways:

* ``native``: the bird's own 96-px picture, the ceiling;
* ``resized``: the whole scene resized to the model's input (the bird shrinks to 12 px);
* ``tiles``: windows of the model's input at full resolution, stitched (:mod:`mmfinercam.tiles`);
* ``multiscale``: the tiles averaged with the resized whole.

Each is scored by the pointing game and energy pointing on the part that separates the species
from its siblings, at the picture's own size.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch

from .. import metrics as M
from ..localizer import Localizer
from .evaluate import MethodScores, MethodSpec

#: the ways a scene is explained, in the table's order
VARIANTS = ("native", "resized", "tiles", "multiscale")
#: the metrics, with their labels in the table
METRICS = {"pointing": "pointing (part)", "energy": "energy (part)"}


def scene_methods(
    methods: Sequence[str] = ("gem",), labels: dict[str, str] | None = None
) -> list[MethodSpec]:
    """Each dense method plain (alpha 0) and Finer (alpha 1).

    Args:
        methods: dense method names.
        labels: method name -> its label in the table.

    Returns:
        The methods.
    """
    labels = labels or {}
    out = []
    for m in methods:
        label = labels.get(m, m)
        out += [MethodSpec(f"plain {label}", m, 0.0), MethodSpec(f"Finer {label} (a=1)", m, 1.0)]
    return out


def evaluate_scenes(
    loc: Localizer,
    n: int,
    methods: Sequence[MethodSpec],
    *,
    start: int = 0,
    factor: int = 8,
    batch_size: int = 64,
    progress: bool = True,
) -> list[MethodScores]:
    """Score each method on ``n`` held-out scenes, every way of :data:`VARIANTS`.

    Args:
        loc: the model (the testbed's).
        n: how many scenes.
        methods: dense methods and their contrast strengths.
        start: the first held-out index.
        factor: how many times larger a scene is than its bird's picture.
        batch_size: images (or windows) a pass.
        progress: show a progress bar.

    Returns:
        Each method's scores, metric keys ``"<metric> <variant>"``.
    """
    from tqdm.auto import tqdm

    from ..testbed.generator import HELD_OUT_SEEDS, scene
    from ..testbed.species import siblings

    pairs = [scene(HELD_OUT_SEEDS.start + start + i, factor) for i in range(n)]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, (_, bird) in enumerate(pairs):
        groups[bird.species.name].append(i)
    scores = [MethodScores(spec) for spec in methods]
    settings = {
        "native": {},
        "resized": {"tiles": False},
        "tiles": {"tiles": True},
        "multiscale": {"tiles": True, "multiscale": True},
    }
    bar = tqdm(total=len(methods) * len(groups), desc="scenes", unit="group", disable=not progress or None)
    for ms in scores:
        for name, idx in groups.items():
            contrast = [s.name for s in siblings(pairs[idx[0]][1].species)]
            for variant in VARIANTS:
                use = [pairs[i][1] if variant == "native" else pairs[i][0] for i in idx]
                options = ms.spec.options.replace(**settings[variant])
                res = loc.finer_cam(
                    [s.image for s in use], name, contrast, options=options, batch_size=batch_size
                )
                for sample, heat in zip(use, res.heatmaps):
                    mask = torch.from_numpy(sample.masks[sample.species.varying_part])[None]
                    ms.values[f"pointing {variant}"] += M.pointing_game(heat[None], mask).float().tolist()
                    ms.values[f"energy {variant}"] += M.energy_pointing_game(heat[None], mask).tolist()
            bar.update(1)
    bar.close()
    return scores


def write_scene_table(scores: Sequence[MethodScores], out: str | Path, header: str = "") -> list[Path]:
    """The scene table as Markdown (means ± standard errors) and CSV.

    Args:
        scores: :func:`evaluate_scenes`' result.
        out: the folder to write into.
        header: Markdown put above the table.

    Returns:
        The files written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keys = [f"{m} {v}" for m in METRICS for v in VARIANTS]
    lines = [header, ""] if header else []
    lines.append("| method | " + " | ".join(f"{METRICS[k.split()[0]]}: {k.split()[1]}" for k in keys) + " |")
    lines.append("|---" * (len(keys) + 1) + "|")
    rows = []
    for ms in scores:
        s = ms.summary()
        lines.append(
            f"| {ms.spec.name} | " + " | ".join(f"{s[k]:.3f} ± {s[k + '_sem']:.3f}" for k in keys) + " |"
        )
        rows.append([ms.spec.name, ms.spec.method, ms.spec.alpha, *(f"{s[k]:.4f}" for k in keys)])
    md, table = out / "scenes.md", out / "scenes.csv"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with table.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "family", "alpha", *keys])
        writer.writerows(rows)
    return [md, table]
