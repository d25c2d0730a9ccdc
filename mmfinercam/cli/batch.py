"""``mmfinercam batch``: maps for a whole collection, resumable, sharded, Parquet and .npy."""

from __future__ import annotations

import argparse
from pathlib import Path

from .._checks import check_contrasts, check_prompt
from ._common import NON_NEGATIVE, POSITIVE, add_finer_args, add_model_args, finer_options, output_folder

#: the name the command line calls it
NAME = "batch"
#: its line in ``mmfinercam --help``
HELP = "maps for a whole collection: resumable, sharded, Parquet + .npy"


def shard(text: str) -> tuple[int, int]:
    """An argparse type: ``i/n`` as (i, n), this process's share of n, counted from 0.

    Args:
        text: the option's value.

    Returns:
        (i, n).

    Raises:
        argparse.ArgumentTypeError: unless 0 <= i < n.
    """
    rank, slash, world = text.partition("/")
    if not (slash and rank.strip().isdigit() and world.strip().isdigit()) or not int(rank) < int(world):
        raise argparse.ArgumentTypeError(f"expected i/n with 0 <= i < n (e.g. 0/4), got {text!r}")
    return int(rank), int(world)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the options of ``mmfinercam batch``.

    Args:
        p: the ``batch`` command's parser.
    """
    p.add_argument("input", help="image folder, .csv/.parquet list, or a saved datasets folder")
    p.add_argument("--target", default=None, help="the concept to localize (or per-row 'target' column)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--contrast", nargs="+", default=None, help="similar concepts to subtract")
    g.add_argument("--prompt-sets", default=None, help="JSON list of {name, target, contrast}")
    p.add_argument("--vocabulary", default=None, help="automatic contrasts where none are given")
    add_finer_args(p, gradient=False)
    p.add_argument("--batch-size", type=POSITIVE, default=32)
    p.add_argument("--workers", type=NON_NEGATIVE, default=2, help="DataLoader worker processes")
    p.add_argument("--chunk-size", type=POSITIVE, default=256, help="images a chunk (the resume unit)")
    p.add_argument("--shard", type=shard, default=None, help="i/n: this share (default: torchrun's)")
    p.add_argument("--ray", nargs="?", const="", default=None, help="run on Ray (optional cluster address)")
    p.add_argument("--ray-actors", type=POSITIVE, default=1)
    p.add_argument("--ray-gpus", type=float, default=0.0, help="GPUs per Ray actor")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", "-o", default="mmfinercam-batch")
    add_model_args(p)


def run(args: argparse.Namespace) -> int:
    """Map a folder or manifest of images into resumable Parquet chunks, one row a map.

    Args:
        args: the parsed ``batch`` options.

    Returns:
        0, or 1 when some images failed.
    """
    from ..batch import (
        BatchJob,
        PromptSet,
        load_prompt_sets,
        read_collection,
        run_distributed,
        run_with_ray,
        unusable_masks,
    )

    options = finer_options(args)
    collection = read_collection(args.input)
    sets = []
    if args.prompt_sets:
        sets = load_prompt_sets(args.prompt_sets)
    elif args.target is not None:
        target = check_prompt(args.target, "target prompt")
        contrast = check_contrasts(target, args.contrast) if args.contrast else []
        sets = [PromptSet(target, target, tuple(contrast))]
    job = BatchJob(
        out=args.out,
        prompt_sets=sets,
        model=args.model,
        pretrained=args.pretrained,
        backend=args.backend,
        dtype=args.dtype,
        options=options,
        vocabulary=args.vocabulary,
        chunk_size=args.chunk_size,
    )
    output_folder(args.out)
    if args.ray is not None:
        report = run_with_ray(
            job,
            collection,
            actors=args.ray_actors,
            gpus_per_actor=args.ray_gpus,
            batch_size=args.batch_size,
            address=args.ray or None,
            device=args.device,
        )
    else:
        report = run_distributed(
            job,
            collection,
            batch_size=args.batch_size,
            workers=args.workers,
            progress=not args.quiet,
            shard=args.shard,
            device=args.device,
        )
    print(
        f"{report.images} images done, {report.failed} failed, {report.chunks_skipped} chunks skipped "
        f"(done before or another shard's), {report.images_per_second:.1f} images/s"
    )
    if report.finished:
        print(f"all chunks done: {Path(args.out) / 'summary.parquet'}, failed.csv, manifest.json")
        masks = unusable_masks(args.out)
        if masks:
            first = "; ".join(f"{key}: {error}" for key, error in masks[:3])
            print(
                f"{len(masks)} mask(s) could not be used, their images explained without a mask "
                f"energy ({first}{'; ...' if len(masks) > 3 else ''}); the summary's error column has each"
            )
    return 1 if report.failed else 0
