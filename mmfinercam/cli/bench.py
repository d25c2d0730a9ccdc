"""``mmfinercam bench``: speed of the dense path against bare ``encode_image`` and its peers."""

from __future__ import annotations

import argparse
import json

from .._device import DTYPE_CHOICES
from ._common import POSITIVE, output_folder

#: the name the command line calls it
NAME = "bench"
#: its line in ``mmfinercam --help``
HELP = "throughput of the dense path against its peers"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the options of ``mmfinercam bench``.

    Args:
        p: the ``bench`` command's parser.
    """
    p.add_argument("--model", default="ViT-B-16", help="open_clip architecture (random weights) or 'tiny'")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="fp32", choices=DTYPE_CHOICES)
    p.add_argument("--batch", type=POSITIVE, default=4)
    p.add_argument("--size", type=POSITIVE, default=224)
    p.add_argument("--concepts", type=POSITIVE, nargs="+", default=[1, 10, 100, 1000])
    p.add_argument("--sizes", type=POSITIVE, nargs="*", default=[224, 448, 896])
    p.add_argument("--batches", type=POSITIVE, nargs="*", default=[1, 4, 16])
    p.add_argument("--repeats", type=POSITIVE, default=3)
    p.add_argument("--no-peers", action="store_true", help="skip gem_torch and grad-cam")
    p.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        default=None,
        help="torch.compile the floor and our tower alike (backend, default inductor)",
    )
    p.add_argument(
        "--compile-mode", default=None, help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)"
    )
    p.add_argument("--ref-dir", default=".gem-ref", help="where gem_torch + open_clip 2.23 are installed")
    p.add_argument("--out", "-o", default="mmfinercam-bench")


def run(args: argparse.Namespace) -> int:
    """Time the dense path against its peers measured in the same run and write the report.

    Args:
        args: the parsed ``bench`` options.

    Returns:
        0.
    """
    from ..apps.bench import run as measure
    from ..apps.timing import write_markdown

    out = output_folder(args.out)
    model, tokenizer, config = None, None, None
    if args.model == "tiny":
        import open_clip

        from ..testing import TINY_VIT_CONFIG, build_tiny_open_clip

        model, tokenizer, config = (
            build_tiny_open_clip(),
            open_clip.get_tokenizer("ViT-B-16"),
            TINY_VIT_CONFIG,
        )
    report = measure(
        args.model,
        device=args.device,
        dtype=args.dtype,
        batch=args.batch,
        size=args.size,
        concepts=tuple(args.concepts),
        sizes=tuple(args.sizes),
        batches=tuple(args.batches),
        repeats=args.repeats,
        peers=not args.no_peers,
        ref_dir=args.ref_dir,
        compile=args.compile,
        compile_mode=args.compile_mode,
        model=model,
        tokenizer=tokenizer,
        model_config=config,
    )
    report["command"] = args.command_line
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    write_markdown(report, out / "bench.md")
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")
    return 0
