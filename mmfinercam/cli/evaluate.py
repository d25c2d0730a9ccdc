"""``mmfinercam eval``: methods × metrics on the synthetic testbed, or on an annotated folder."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import ConfigError
from ..options import dense_methods, gradient_methods
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
    dense, cams = dense_methods(), gradient_methods()
    p.add_argument(
        "--dense",
        nargs="*",
        default=None,
        choices=dense,
        metavar="METHOD",
        help="dense methods to compare, plain and Finer (default: all): " + " ".join(dense),
    )
    p.add_argument(
        "--cams",
        nargs="*",
        default=["gradcam", "layercam", "legrad"],
        choices=cams,
        metavar="METHOD",
        help="gradient methods to compare, plain and Finer: " + " ".join(cams),
    )
    p.add_argument(
        "--scenes",
        type=POSITIVE,
        default=None,
        metavar="N",
        help="instead: N birds in scenes 8x larger, explained resized, tiled and at native size",
    )
    p.add_argument("--methods", nargs="+", default=None, help="keep methods whose name contains one")
    p.add_argument("--auc-steps", type=NON_NEGATIVE, default=8, help="deletion/insertion steps (0 = skip)")
    p.add_argument("--gallery", type=NON_NEGATIVE, default=6, help="images in the gallery (0 = none)")
    p.add_argument("--no-smooth", action="store_true", help="leave out the maps averaged over 8 views")
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

    if args.scenes:
        return run_scenes(args)
    methods = every = default_methods(args.alphas, args.cams, smooth=not args.no_smooth, dense=args.dense)
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


def run_scenes(args: argparse.Namespace) -> int:
    """The high-resolution table (:mod:`mmfinercam.apps.scenes`) of the dense methods asked.

    Args:
        args: the parsed ``eval`` options (``--scenes``, ``--start``, ``--dense``).

    Returns:
        0.

    Raises:
        ConfigError: for a model folder or annotated folder, which have no scenes.
    """
    from ..apps.evaluate import LABELS
    from ..apps.scenes import evaluate_scenes, scene_methods, write_scene_table

    if args.folder:
        raise ConfigError("--scenes draws testbed scenes; it does not take --folder")
    methods = scene_methods(args.dense or ["gem"], LABELS)
    out = output_folder(args.out)
    loc = load_model(args)
    start = time.time()
    scores = evaluate_scenes(loc, args.scenes, methods, start=args.start)
    header = (
        f"# mmfinercam eval --scenes\n\nModel: {loc.info.name}. {args.scenes} held-out birds from index "
        f"{args.start}, each at its own scale in a scene 8 times larger; the part that separates it "
        f"from its siblings scored.\n\nCommand: `{args.command_line}` ({time.time() - start:.0f} s)."
    )
    files = write_scene_table(scores, out, header)
    print(files[0].read_text())
    print("wrote " + ", ".join(str(f) for f in files))
    return 0
