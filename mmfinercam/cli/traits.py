"""``mmfinercam traits``: which traits of a vocabulary separate a species from each similar one.

Ranks the vocabulary (:func:`mmfinercam.rank_traits`), with each smallest margin, its standard
error and z, and writes every trait's margins to CSV.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from ._common import NON_NEGATIVE, POSITIVE, _Deprecated, add_model_args, expand_images, load_model

#: the name the command line calls it
NAME = "traits"
#: its line in ``mmfinercam --help``
HELP = "rank a vocabulary's traits by how they separate a species"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the options of ``mmfinercam traits``.

    Args:
        p: the ``traits`` command's parser.
    """
    p.add_argument("images", nargs="+", help="the target species' images (files or folders)")
    p.add_argument(
        "--contrast-images",
        nargs="+",
        required=True,
        metavar="GROUP",
        help="one folder (or file) a similar species to separate from",
    )
    p.add_argument("--vocabulary", required=True, help="trait phrases: a file or shipped vocabulary name")
    p.add_argument(
        "--neighbours", type=NON_NEGATIVE, default=1, help="nearest phrases whose share is taken off"
    )
    share: dict[str, Any] = dict(type=float, default=0.25, dest="neighbour_share")
    p.add_argument(
        "--neighbour-share", help="how much of the neighbours' margin (0 = none, at most 1)", **share
    )
    p.add_argument("--alpha", action=_Deprecated, new="--neighbour-share", help=argparse.SUPPRESS, **share)
    p.add_argument("--top", type=POSITIVE, default=20, help="traits to print")
    p.add_argument("--batch-size", type=POSITIVE, default=32)
    p.add_argument("--out", "-o", default=None, help="CSV of every trait, with each group's margin and se")
    add_model_args(p)


def run(args: argparse.Namespace) -> int:
    """Rank a vocabulary of trait phrases by how they separate the target from its neighbours.

    Args:
        args: the parsed ``traits`` options.

    Returns:
        0.
    """
    import csv

    from ..discovery import check_neighbour_share, rank_traits

    check_neighbour_share(args.neighbour_share)  # before any model loads
    target = expand_images(args.images, f"in {', '.join(args.images)}")
    groups = [expand_images([g], f"in {g}") for g in args.contrast_images]
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    loc = load_model(args)
    with warnings.catch_warnings(record=True) as skipped:
        warnings.simplefilter("always", UserWarning)
        ranking = rank_traits(
            loc,
            target,
            groups,
            args.vocabulary,
            neighbours=args.neighbours,
            neighbour_share=args.neighbour_share,
            batch_size=args.batch_size,
        )
    for w in skipped:
        print(f"mmfinercam: {w.message}", file=sys.stderr)
    smallest, errors = ranking.smallest_margin()
    z = smallest / errors
    counts = ranking.counts
    sizes = ", ".join(f"{Path(g).name or g} {n}" for g, n in zip(args.contrast_images, counts[1:]))
    print(f"{len(ranking.traits)} traits; images: target {counts[0]}; contrast groups: {sizes}")
    print(f"{'rank':>4}  {'score':>8}  {'margin':>8}  {'± se':>7}  {'z':>6}  trait")
    for r in range(min(args.top, len(ranking.traits))):
        print(
            f"{r + 1:>4}  {float(ranking.scores[r]):>8.4f}  {float(smallest[r]):>8.4f}  "
            f"{float(errors[r]):>7.4f}  {float(z[r]):>6.1f}  {ranking.traits[r]}"
        )
    print("margin: the smallest over the contrast groups; z under 2: these images cannot tell it from none")
    # the score discounts what a trait shares with its neighbours; the margins' own evidence can
    # point elsewhere, and a trait below the table may hold the most of it
    strongest = torch.nan_to_num(z, nan=-torch.inf).argsort(descending=True)[:3].tolist()
    hidden = [r for r in strongest if r >= args.top and float(z[r]) >= 2]
    if hidden:
        named = ", ".join(f"{ranking.traits[r]} z {float(z[r]):.1f} (rank {r + 1})" for r in hidden)
        print(f"below the table, among the 3 largest z: {named}")
    if args.out:
        with open(args.out, "w", newline="") as f:
            out = csv.writer(f)
            names = [Path(g).name or g for g in args.contrast_images]
            groups_header = [x for g in names for x in (f"margin {g}", f"se {g}")]
            out.writerow(["rank", "trait", "score", "smallest margin", "its se", "z", *groups_header])
            for r, trait in enumerate(ranking.traits):
                per_group = [
                    f"{float(v):.6f}"
                    for g in range(len(groups))
                    for v in (ranking.margins[g, r], ranking.margin_errors[g, r])
                ]
                row = [r + 1, trait, f"{float(ranking.scores[r]):.6f}", f"{float(smallest[r]):.6f}"]
                out.writerow([*row, f"{float(errors[r]):.6f}", f"{float(z[r]):.3f}", *per_group])
        print(f"wrote {args.out}")
    return 0
