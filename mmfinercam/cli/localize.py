"""``mmfinercam localize``: Finer-CAM maps for images, an overlay, the map and a JSON record each."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..outputs import FolderReport, localize_to_folder
from ._common import (
    POSITIVE,
    add_finer_args,
    add_model_args,
    expand_images,
    finer_options,
    load_model,
    output_folder,
)

#: the name the command line calls it
NAME = "localize"
#: its line in ``mmfinercam --help``
HELP = "Finer-CAM maps for images: overlay PNG, .npy map, JSON"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the options of ``mmfinercam localize``.

    Args:
        p: the ``localize`` command's parser.
    """
    p.add_argument("image", nargs="+", help="image files or folders")
    p.add_argument("--target", required=True, help="the concept to localize")
    c = p.add_mutually_exclusive_group()
    c.add_argument("--contrast", nargs="+", default=None, help="similar concepts to subtract")
    c.add_argument(
        "--vocabulary", default=None, help="file or shipped vocabulary; the closest entries become contrasts"
    )
    add_finer_args(p, gradient=True, tiles=True)
    p.add_argument(
        "--templates", default=None, help="template set name or file; 'verbatim' uses the prompts as written"
    )
    p.add_argument(
        "--smooth",
        action="store_true",
        help="average 8 views (half-patch shifts each way, and mirrored): finer maps, 8 more passes",
    )
    p.add_argument("--batch-size", type=POSITIVE, default=8)
    p.add_argument("--out", "-o", default="mmfinercam-out", help="output folder")
    p.add_argument("--no-overlay", action="store_true", help="skip the PNG overlays (faster)")
    p.add_argument(
        "--no-heatmap",
        action="store_true",
        help="skip the full-size .npy heatmaps (4 bytes a pixel: 192 MB for a 48-megapixel scan); "
        "the patch-grid .scores.npy make them with mmfinercam.finer.to_heatmap",
    )
    add_model_args(p)


def run(args: argparse.Namespace) -> int:
    """Localize the target in each image and write its map, record and overlay.

    Args:
        args: the parsed ``localize`` options.

    Returns:
        0, 1 when some images failed, 2 when none could be used.
    """
    options = finer_options(args, shifts=2 if args.smooth else 1, flip=args.smooth)  # before any model loads
    images = expand_images(args.image)
    out = output_folder(args.out)
    report = localize_to_folder(
        load_model(args),
        images,
        args.target,
        args.contrast,
        out,
        options=options,
        vocabulary=args.vocabulary,
        batch_size=args.batch_size,
        overlay=not args.no_overlay,
        heatmap=not args.no_heatmap,
        progress=True,
    )
    print_report(report, out)
    if not report.records:
        return 2
    return 1 if report.failed else 0


def print_report(report: FolderReport, out: Path) -> None:
    """Say what a folder run wrote and what failed: one line an image that failed, one closing.

    Args:
        report: what was written.
        out: the folder.
    """
    for f in report.failed:
        print(f"mmfinercam: skipped {f['source']}: {f['error']}", file=sys.stderr)
    elsewhere = report.elsewhere
    print(
        f"wrote {len(report.records)} map(s) to {out}/"
        + (f"; {len(report.failed)} image(s) failed" if report.failed else "")
        + (
            f"; in {elsewhere}, the model matches the image better to a contrast than to the target "
            "(their JSON's best_match)"
            if elsewhere
            else ""
        )
    )
