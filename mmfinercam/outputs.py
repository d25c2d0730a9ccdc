"""Maps written to a folder: per image an overlay, the heatmap, the scores and a JSON record.

``mmfinercam localize``, ``mmfinercam demo`` and the web app's downloads write through here, so
a map is stored one way: ``STEM.scores.npy`` (raw scores on the patch grid, float32),
``STEM.npy`` (the heatmap at the image's size, optional), ``STEM.png`` (the overlay, optional)
and ``STEM.json`` (the :class:`~mmfinercam.results.MapRecord`, the model, the files).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ImageLoadError
from .images import ImageInput
from .options import FinerOptions
from .results import FinerCAMResult

if TYPE_CHECKING:
    from .localizer import Localizer


def output_stems(sources: Sequence[str]) -> list[str]:
    """File stems for outputs, unique by construction.

    A name taken before (by another input, or by a name made here) gets the first free
    ``-2``, ``-3`` ... after it, compared without regard to case (as macOS and Windows compare
    file names), so no two inputs write the same files.

    Args:
        sources: the inputs' names (paths or descriptions).

    Returns:
        One stem an input, in order.
    """
    taken: set[str] = set()
    out = []
    for source in sources:
        stem = _safe_stem(Path(str(source)).stem)
        name, n = stem, 1
        while name.casefold() in taken:
            n += 1
            name = f"{stem}-{n}"
        taken.add(name.casefold())
        out.append(name)
    return out


def _safe_stem(stem: str) -> str:
    """A stem with characters that no file system mishandles: letters, digits, ``-_.``."""
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem).strip(".")[:100]
    return keep or "image"


def write_result(
    result: FinerCAMResult,
    i: int,
    folder: Path,
    stem: str,
    *,
    overlay: bool = True,
    heatmap: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write one result's files.

    Args:
        result: a Finer-CAM result.
        i: the result's position in it.
        folder: where to write (it exists).
        stem: the files' stem (:func:`output_stems`).
        overlay: write the overlay picture.
        heatmap: write the full-size heatmap (4 bytes a pixel).
        extra: more fields for the JSON (the model, say).

    Returns:
        The record as written to ``STEM.json``, with ``files``.
    """
    record = result.record(i)
    record.map_file = f"{stem}.scores.npy"
    summary = record.as_dict() | (extra or {})
    np.save(folder / record.map_file, result.scores[i].numpy().astype(np.float32))
    files = {"scores": record.map_file, "summary": f"{stem}.json"}
    if heatmap or overlay:
        heat = result.heatmap(i).numpy()  # one full-size map at a time
        if heatmap:
            np.save(folder / f"{stem}.npy", heat.astype(np.float32))
            files["heatmap"] = f"{stem}.npy"
        if overlay:
            _save_overlay(result, i, heat, folder / f"{stem}.png", record.best_match)
            files["overlay"] = f"{stem}.png"
    summary["files"] = files
    (folder / f"{stem}.json").write_text(json.dumps(summary, indent=2))
    return summary


def _save_overlay(result: FinerCAMResult, i: int, heat: np.ndarray, path: Path, best: str | None) -> None:
    import matplotlib.pyplot as plt

    from .viz import describe_contrast, overlay

    title = describe_contrast(result.target, result.contrast[i], result.alpha)
    if best is not None and best != result.target:  # the picture says so without its JSON
        title += f"\n(the model matches the image better to {best})"
    fig = overlay(result.sources[i], heat, title=title)
    try:
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


@dataclass
class FolderReport:
    """What :func:`localize_to_folder` wrote.

    Args:
        records: each map's record as written.
        failed: ``{"source", "error"}`` of each image that could not be used.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)

    @property
    def elsewhere(self) -> int:
        """How many images the model matches better to a contrast than to the target."""
        return sum(r["best_match"] != r["target"] for r in self.records)


def localize_to_folder(
    loc: Localizer,
    images: Sequence[ImageInput],
    target: str,
    contrast: Sequence[str] | None,
    out: Path,
    *,
    options: FinerOptions,
    vocabulary: str | None = None,
    batch_size: int = 8,
    overlay: bool = True,
    heatmap: bool = True,
    progress: bool = False,
) -> FolderReport:
    """Explain images in batches and write each one's files and a ``summary.json``.

    Images that cannot be used are reported, not fatal; the rest are written as they are done.

    Args:
        loc: the model.
        images: image files (or anything :meth:`~mmfinercam.Localizer.finer_cam` takes).
        target: the target prompt.
        contrast: explicit contrasts, or None.
        out: the output folder (it exists).
        options: how the maps are made.
        vocabulary: automatic contrasts from this vocabulary, or None.
        batch_size: images a call.
        overlay: write overlay pictures.
        heatmap: write full-size heatmaps.
        progress: show a progress bar.

    Returns:
        The records written and the images that failed.
    """
    from tqdm.auto import tqdm

    images = list(images)
    stems = output_stems([str(s) for s in images])
    extra = {
        "model": loc.info.name,
        "pretrained": loc.info.pretrained,
        "random_weights": loc.info.random_weights,
    }
    report = FolderReport()
    bar = tqdm(total=len(images), unit="img", desc="localize", disable=not progress or None)
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # broken images are reported below
            try:
                res = loc.finer_cam(
                    chunk, target, contrast, vocabulary=vocabulary, options=options, batch_size=batch_size
                )
            except ImageLoadError as err:
                if not err.failed:
                    raise
                report.failed += [{"source": f.source, "error": f.message} for f in err.failed]
                bar.update(len(chunk))
                continue
        report.failed += [{"source": f.source, "error": f.message} for f in res.failed]
        for i in range(len(res)):
            stem = stems[start + res.indices[i]]
            report.records.append(
                write_result(res, i, out, stem, overlay=overlay, heatmap=heatmap, extra=extra)
            )
        bar.update(len(chunk))
    bar.close()
    summary = {"results": report.records, "failed": report.failed}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return report
