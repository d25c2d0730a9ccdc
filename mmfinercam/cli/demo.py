"""``mmfinercam demo``: the shipped model on the shipped sample birds.

Per bird: ``localize``'s files, and a picture comparing the plain map, dense Finer-CAM and
Layer-CAM Finer-CAM that says whether each peak lands on the part that truly separates the bird
from its siblings.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..options import FinerOptions
from ..outputs import localize_to_folder
from ._common import add_model_args, load_model, output_folder
from .localize import print_report

#: the name the command line calls it
NAME = "demo"
#: its line in ``mmfinercam --help``
HELP = "the shipped model on the shipped sample birds"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the options of ``mmfinercam demo``.

    Args:
        p: the ``demo`` command's parser.
    """
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--out", "-o", default="mmfinercam-demo")
    add_model_args(p, default="testbed")


def run(args: argparse.Namespace) -> int:
    """Localize each shipped sample bird's differing part and draw the maps in one figure.

    Args:
        args: the parsed ``demo`` options.

    Returns:
        0, or 1/2 as ``localize`` would for the samples.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..metrics import pointing_game
    from ..testbed.generator import render
    from ..testbed.model import shipped_samples
    from ..viz import compare

    options = FinerOptions(alpha=args.alpha)
    out = output_folder(args.out)
    loc = load_model(args)
    code = 0
    for s in shipped_samples():
        image = s["path"]
        report = localize_to_folder(loc, [str(image)], s["target"], s["contrast"], out, options=options)
        print_report(report, out)
        code = max(code, 2 if not report.records else 1 if report.failed else 0)
        part = torch.from_numpy(render(s["species_index"], s["seed"]).masks[s["differs_in"]])[None]
        panels, verdicts = [], []
        for label, method, alpha in (
            ("plain GEM map", "gem", 0.0),
            (f"Finer-CAM, GEM (alpha={args.alpha:g})", "gem", args.alpha),
            (f"Finer-CAM, Layer-CAM (alpha={args.alpha:g})", "layercam", args.alpha),
        ):
            res = loc.finer_cam(
                image, s["target"], s["contrast"], options=options.replace(method=method, alpha=alpha)
            )
            hit = bool(pointing_game(res.heatmap(0)[None], part)[0])
            panels.append(
                (f"{label}\npeak on the {s['differs_in']}: {'yes' if hit else 'no'}", res.heatmaps[0])
            )
            verdicts.append(f"{label}: {'on' if hit else 'off'} the {s['differs_in']}")
        title = f"{s['target']} vs {', '.join(s['contrast'])}: they differ in the {s['differs_in']}"
        fig = compare(image, panels, title=title)
        path = out / f"{Path(s['image']).stem}_compare.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        print(
            f"{s['target']} (differs from its siblings in the {s['differs_in']}): map peaks "
            + "; ".join(verdicts)
            + f" -> {path}"
        )
    return code
