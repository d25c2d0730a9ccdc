"""``mmfinercam eval``: methods × metrics on the synthetic testbed, or on an annotated folder."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import ConfigError
from ..options import cam_methods
from ._common import NON_NEGATIVE, POSITIVE, add_model_args, load_model, output_folder

#: the name the command line calls it
NAME = "eval"
#: its line in ``mmfinercam --help``
HELP = "score methods on the testbed (or an annotated folder)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the options of ``mmfinercam eval``.

    Args:
        p: the ``eval`` command's parser.
    """
    p.add_argument("--n", type=POSITIVE, default=500, help="held-out testbed images")
    p.add_argument("--start", type=NON_NEGATIVE, default=0, help="first held-out index (seed offset)")
    p.add_argument("--folder", default=None, help="annotated folder (annotations.json) instead")
    p.add_argument("--alphas", type=float, nargs="+", default=[0.4, 0.6, 0.8, 1.0, 1.5])
    cams = cam_methods()
    p.add_argument(
        "--cams",
        nargs="*",
        default=["gradcam", "layercam"],
        choices=cams,
        metavar="CAM",
        help="gradient CAMs to compare, plain and Finer: " + " ".join(cams),
    )
    p.add_argument("--methods", nargs="+", default=None, help="keep methods whose name contains one")
    p.add_argument("--auc-steps", type=NON_NEGATIVE, default=8, help="deletion/insertion steps (0 = skip)")
    p.add_argument("--gallery", type=NON_NEGATIVE, default=6, help="images in the gallery (0 = none)")
    p.add_argument("--no-smooth", action="store_true", help="leave out the GEM maps averaged over 8 views")
    p.add_argument("--out", "-o", default="mmfinercam-eval")
    add_model_args(p, default="testbed")


def run(args: argparse.Namespace) -> int:
    """Score every method on the testbed (or an annotated folder) and write the table, plot and gallery.

    Args:
        args: the parsed ``eval`` options.

    Returns:
        0.

    Raises:
        ConfigError: when ``--methods`` keeps no method.
    """
    from ..apps.eval_report import write_report
    from ..apps.evaluate import default_methods, evaluate, folder_items, testbed_items

    methods = every = default_methods(args.alphas, args.cams, smooth=not args.no_smooth)
    for method in every:  # each method's settings checked before any model loads
        method.options  # noqa: B018
    if args.methods:
        methods = [m for m in every if any(key in m.name for key in args.methods)]
        if not methods:
            known = "; ".join(m.name for m in every)
            raise ConfigError(f"no method's name contains any of {args.methods}; the methods: {known}")
    out = output_folder(args.out)
    if args.folder:
        items, names, skipped = folder_items(args.folder)
        what = f"folder {args.folder} ({len(items)} images)"
        if skipped:
            left_out = "; ".join(f"{f.source} ({f.message})" for f in skipped)
            what += f"; {len(skipped)} entries left out: {left_out}"
    else:
        items, names = testbed_items(args.n, start=args.start)
        what = f"testbed held-out split, {len(items)} images from held-out index {args.start}"
    loc = load_model(args)  # after the inputs are known to be usable
    start = time.time()
    scores, maps = evaluate(loc, items, names, methods, auc_steps=args.auc_steps, keep_maps=args.gallery)
    header = (
        f"# mmfinercam eval\n\nModel: {loc.info.name} ({loc.info.pretrained}). Data: {what}. "
        "Targets vs their contrasts; the part mask is what separates them.\n\n"
        f"Command: `{args.command_line}` ({time.time() - start:.0f} s)."
    )
    files = write_report(scores, out, items=items, maps=maps, header=header)
    print((Path(out) / "table.md").read_text())
    print("wrote " + ", ".join(str(f) for f in files.values()))
    return 0
