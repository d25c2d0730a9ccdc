"""The ``mmfinercam`` command line.

    mmfinercam localize bird.jpg --target "Cape May warbler" --contrast "Magnolia warbler" --out out/
    mmfinercam demo --out demo/
    mmfinercam models

Every error a user can cause prints one line (``mmfinercam: error: ...``) and exits 2; a batch
where some images failed still writes the others and exits 1.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .cams import CAM_METHODS
from .errors import ImageLoadError, MMFinerCAMError
from .finer import check_alpha
from .images import IMAGE_SUFFIXES, image_files

DEFAULT_MODEL = "testbed"


def _expand_images(items: Sequence[str], where: str = "given") -> list[str]:
    """Folders expand to the image files inside them (sorted); other paths pass through. None
    at all is an error, ``"no images {where}"``."""
    out: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            out += [str(p) for p in image_files(path)]
        else:
            out.append(item)
    if not out:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise MMFinerCAMError(f"no images {where} (folders are searched for {suffixes})")
    return out


def _output_stems(sources: Sequence[str]) -> list[str]:
    """File stems for outputs, made unique when two inputs share a name."""
    stems = [Path(s).stem for s in sources]
    seen: dict[str, int] = {}
    out = []
    for stem in stems:
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        out.append(stem if n == 0 else f"{stem}-{n}")
    return out


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"open_clip name, hf-hub: id, local folder or shipped name (default {DEFAULT_MODEL})",
    )
    g.add_argument(
        "--pretrained",
        default=None,
        help="pretrained tag (e.g. openai) or checkpoint file; omit for the model's own",
    )
    g.add_argument("--backend", default=None, help="force a backend (open_clip, ...)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"])


def _add_finer_args(p: argparse.ArgumentParser, methods: list[str]) -> None:
    """The Finer-CAM options that ``localize`` and ``batch`` share."""
    p.add_argument(
        "--ranks",
        type=int,
        nargs="+",
        default=[1, 2, 3],
        help="which vocabulary entries to contrast, by closeness rank (default 1 2 3)",
    )
    p.add_argument("--alpha", type=float, default=1.0, help="contrast strength (0 = plain map)")
    p.add_argument("--weighting", choices=["softmax", "uniform"], default="softmax")
    p.add_argument(
        "--method",
        default="gem",
        choices=methods,
        help="gem (default), raw last-layer tokens"
        + (", or a gradient CAM on the CLIP similarity" if len(methods) > 2 else ""),
    )
    p.add_argument("--depth", type=int, default=None, help="GEM depth (default: the model's, 7)")
    p.add_argument("--image-size", type=_POSITIVE, default=None, help="shorter side fed to the model")


def _add_localize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="the concept to localize")
    c = p.add_mutually_exclusive_group()
    c.add_argument("--contrast", nargs="+", default=None, help="similar concepts to subtract")
    c.add_argument(
        "--vocabulary",
        default=None,
        help="file or shipped vocabulary name; the closest entries become the contrasts",
    )
    _add_finer_args(p, methods=["gem", "raw", *CAM_METHODS])
    p.add_argument(
        "--templates", default=None, help="template set name or file; 'verbatim' uses the prompts as written"
    )
    p.add_argument(
        "--smooth",
        action="store_true",
        help="average 8 views (half-patch shifts each way, and mirrored): finer maps, 8 more passes",
    )
    p.add_argument("--batch-size", type=_POSITIVE, default=8)
    p.add_argument("--out", "-o", default="mmfinercam-out", help="output folder")
    p.add_argument("--no-overlay", action="store_true", help="skip the PNG overlays (faster)")
    p.add_argument(
        "--no-heatmap",
        action="store_true",
        help="skip the full-size .npy heatmaps (4 bytes a pixel: 192 MB for a 48-megapixel scan); "
        "the patch-grid .scores.npy make them with mmfinercam.finer.to_heatmap",
    )


def _load(args: argparse.Namespace):
    from .localizer import load

    loc = load(
        args.model,
        args.pretrained,
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
        templates=getattr(args, "templates", None),
    )
    if loc.info.random_weights:
        print(
            f"WARNING: {args.model} has RANDOM weights (no pretrained weights given): the maps "
            "show the method running, not what a trained model sees.",
            file=sys.stderr,
        )
    return loc


def localize(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from tqdm.auto import tqdm

    from .viz import describe_contrast, overlay

    check_alpha(args.alpha)  # before any model is loaded
    images = _expand_images(args.image)
    out = _output_folder(args.out)
    loc = _load_cached(args)
    stems = _output_stems(images)
    summaries, failures = [], []
    bar = tqdm(total=len(images), unit="img", desc="localize", disable=None)
    for start in range(0, len(images), args.batch_size):
        chunk = images[start : start + args.batch_size]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            try:
                res = loc.finer_cam(
                    chunk,
                    args.target,
                    args.contrast,
                    alpha=args.alpha,
                    weighting=args.weighting,
                    vocabulary=args.vocabulary,
                    contrast_ranks=args.ranks,
                    method=args.method,
                    depth=args.depth,
                    image_size=args.image_size,
                    batch_size=args.batch_size,
                    shifts=2 if args.smooth else 1,
                    flip=args.smooth,
                )
            except ImageLoadError as err:
                if not err.failed:
                    raise
                failures += [{"source": f.source, "error": f.message} for f in err.failed]
                bar.update(len(chunk))
                continue
        failures += [{"source": f.source, "error": f.message} for f in res.failed]
        for i in range(len(res)):
            stem = stems[start + res.indices[i]]
            summary = res.summary(i)
            summary.update(
                model=loc.info.name, pretrained=loc.info.pretrained, random_weights=loc.info.random_weights
            )
            heat = res.heatmap(i).numpy()  # one full-size map at a time
            np.save(out / f"{stem}.scores.npy", res.scores[i].numpy().astype(np.float32))
            files = {"scores": f"{stem}.scores.npy", "summary": f"{stem}.json"}
            if not args.no_heatmap:
                np.save(out / f"{stem}.npy", heat.astype(np.float32))
                files["heatmap"] = f"{stem}.npy"
            if not args.no_overlay:
                title = describe_contrast(res.target, res.contrast[i], res.alpha)
                if summary["best_match"] != res.target:  # the picture says so without its JSON
                    title += f"\n(the model matches the image better to {summary['best_match']})"
                fig = overlay(res.sources[i], heat, title=title)
                fig.savefig(out / f"{stem}.png", dpi=120)
                plt.close(fig)
                files["overlay"] = f"{stem}.png"
            summary["files"] = files
            (out / f"{stem}.json").write_text(json.dumps(summary, indent=2))
            summaries.append(summary)
        bar.update(len(chunk))
    bar.close()
    for f in failures:
        print(f"mmfinercam: skipped {f['source']}: {f['error']}", file=sys.stderr)
    (out / "summary.json").write_text(json.dumps({"results": summaries, "failed": failures}, indent=2))
    elsewhere = sum(s["best_match"] != s["target"] for s in summaries)
    print(
        f"wrote {len(summaries)} map(s) to {out}/"
        + (f"; {len(failures)} image(s) failed" if failures else "")
        + (
            f"; in {elsewhere}, the model matches the image better to a contrast than to the target "
            "(their JSON's best_match)"
            if elsewhere
            else ""
        )
    )
    if not summaries:
        return 2
    return 1 if failures else 0


def evaluate_cmd(args: argparse.Namespace) -> int:
    import time

    from .evaluate import default_methods, evaluate, folder_items, testbed_items, write_report

    methods = every = default_methods(args.alphas, args.cams, smooth=not args.no_smooth)
    if args.methods:
        methods = [m for m in every if any(key in m.name for key in args.methods)]
        if not methods:
            known = "; ".join(m.name for m in every)
            raise MMFinerCAMError(f"no method's name contains any of {args.methods}; the methods: {known}")
    _output_folder(args.out)
    if args.folder:
        items, names, skipped = folder_items(args.folder)
        what = f"folder {args.folder} ({len(items)} images)"
        if skipped:
            left_out = "; ".join(f"{f.source} ({f.message})" for f in skipped)
            what += f"; {len(skipped)} entries left out: {left_out}"
    else:
        items, names = testbed_items(args.n, start=args.start)
        what = f"testbed held-out split, {len(items)} images from held-out index {args.start}"
    loc = _load(args)  # after the inputs are known to be usable
    start = time.time()
    scores, maps = evaluate(loc, items, names, methods, auc_steps=args.auc_steps, keep_maps=args.gallery)
    command = args.command_line
    header = (
        f"# mmfinercam eval\n\nModel: {loc.info.name} ({loc.info.pretrained}). Data: {what}. "
        f"Targets vs their contrasts; the part mask is what separates them.\n\nCommand: `{command}` "
        f"({time.time() - start:.0f} s)."
    )
    files = write_report(scores, args.out, items=items, maps=maps, header=header)
    print((Path(args.out) / "table.md").read_text())
    print("wrote " + ", ".join(str(f) for f in files.values()))
    return 0


def demo(args: argparse.Namespace) -> int:
    """Localize the shipped sample birds' discriminative part with the shipped model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .testbed.model import shipped_samples
    from .viz import compare

    samples = shipped_samples()
    out = _output_folder(args.out)
    code = 0
    for s in samples:
        image = s["path"]
        ns = build_parser().parse_args(
            [
                "localize",
                str(image),
                "--target",
                s["target"],
                "--contrast",
                *s["contrast"],
                "--alpha",
                str(args.alpha),
                "--model",
                args.model,
                "--out",
                str(out),
                *(["--device", args.device] if args.device else []),
            ]
        )
        code = max(code, localize(ns))
        loc = _load_cached(ns)
        from .metrics import pointing_game
        from .testbed.generator import render

        part = torch.from_numpy(render(s["species_index"], s["seed"]).masks[s["differs_in"]])[None]
        panels, verdicts = [], []
        for label, method, alpha in (
            ("plain GEM map", "gem", 0.0),
            (f"Finer-CAM, GEM (alpha={args.alpha:g})", "gem", args.alpha),
            (f"Finer-CAM, Layer-CAM (alpha={args.alpha:g})", "layercam", args.alpha),
        ):
            res = loc.finer_cam(image, s["target"], s["contrast"], alpha=alpha, method=method)
            hit = bool(pointing_game(res.heatmaps, part)[0])
            panels.append(
                (f"{label}\npeak on the {s['differs_in']}: {'yes' if hit else 'no'}", res.heatmaps[0])
            )
            verdicts.append(f"{label}: {'on' if hit else 'off'} the {s['differs_in']}")
        fig = compare(
            image,
            panels,
            title=f"{s['target']} vs {', '.join(s['contrast'])}: they differ in the {s['differs_in']}",
        )
        path = out / f"{Path(s['image']).stem}_compare.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        print(
            f"{s['target']} (differs from its siblings in the {s['differs_in']}): map peaks "
            + "; ".join(verdicts)
            + f" -> {path}"
        )
    return code


_LOADED: dict[tuple, object] = {}


def _int_at_least(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number no smaller than ``least`` (a batch of 0 images, 0
    repeats or a chunk of 0 rows would otherwise fail deep inside, or divide by zero)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}")
        return value

    return parse


_POSITIVE, _NON_NEGATIVE = _int_at_least(1), _int_at_least(0)


def _shard(text: str) -> tuple[int, int]:
    """``i/n`` as (i, n): this process's share of n, counted from 0."""
    rank, slash, world = text.partition("/")
    if not (slash and rank.strip().isdigit() and world.strip().isdigit()) or not int(rank) < int(world):
        raise argparse.ArgumentTypeError(f"expected i/n with 0 <= i < n (e.g. 0/4), got {text!r}")
    return int(rank), int(world)


def _output_folder(path: str) -> Path:
    """The ``--out`` folder, made before any work is done, so that a path that cannot be one
    fails at once instead of after a long run whose results would be lost."""
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise MMFinerCAMError(f"--out {path} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MMFinerCAMError(f"cannot make the output folder {path}: {err.strerror or err}") from err
    return out


def _load_cached(args: argparse.Namespace):
    key = (args.model, args.pretrained, args.device, args.dtype)
    if key not in _LOADED:
        _LOADED[key] = _load(args)
    return _LOADED[key]


def bench(args: argparse.Namespace) -> int:
    from .bench import run, write_markdown

    out = _output_folder(args.out)
    model, tokenizer, config = None, None, None
    if args.model == "tiny":
        import open_clip

        from .testing import TINY_VIT_CONFIG, build_tiny_open_clip

        model, tokenizer, config = (
            build_tiny_open_clip(),
            open_clip.get_tokenizer("ViT-B-16"),
            TINY_VIT_CONFIG,
        )
    report = run(
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


def models(args: argparse.Namespace) -> int:
    from .backends import _REGISTRY, known_models, weights_present

    print("Known models (mmfinercam localize --model NAME, mf.load(NAME)):")
    for name, entry in known_models().items():
        present = "present" if weights_present(entry) else "absent"
        source = entry["model"] + (f" / {entry['pretrained']}" if entry.get("pretrained") else "")
        print(f"  {name:18s} {present:15s} {entry['backend']:13s} {source}  - {entry['description']}")
    print("\nBackends (any name or path they recognise also works):")
    for spec in _REGISTRY.values():
        print(f"  {spec.name:13s} {spec.description}")
    return 0


def batch_cmd(args: argparse.Namespace) -> int:
    from .batch import (
        BatchJob,
        PromptSet,
        load_prompt_sets,
        read_collection,
        run_distributed,
        run_with_ray,
        unusable_masks,
    )
    from .finer import check_contrasts, check_prompt

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
        method=args.method,
        alpha=args.alpha,
        weighting=args.weighting,
        depth=args.depth,
        vocabulary=args.vocabulary,
        contrast_ranks=tuple(args.ranks),
        image_size=args.image_size,
        chunk_size=args.chunk_size,
    )
    _output_folder(args.out)
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


def app_cmd(args: argparse.Namespace) -> int:
    try:
        from .app import launch
    except ImportError as err:
        raise MMFinerCAMError("the web app needs Gradio: pip install 'mmfinercam[app]'") from err
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"WARNING: listening on {args.host}: anyone who can reach it can use the app", file=sys.stderr)
    print(f"mmfinercam app on http://{args.host}:{args.port} (Ctrl-C stops it)")
    launch(args.host, args.port, models=args.models, max_upload_mb=args.max_upload_mb)
    return 0


def traits(args: argparse.Namespace) -> int:
    """Rank a vocabulary by how well each trait separates the target's images from every
    contrast group's (:func:`mmfinercam.rank_traits`), with each margin's standard error."""
    import csv

    from .discovery import rank_traits

    check_alpha(args.alpha)
    target = _expand_images(args.images, f"in {', '.join(args.images)}")
    groups = [_expand_images([g], f"in {g}") for g in args.contrast_images]
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    loc = _load(args)
    with warnings.catch_warnings(record=True) as skipped:
        warnings.simplefilter("always", UserWarning)
        ranking = rank_traits(
            loc,
            target,
            groups,
            args.vocabulary,
            neighbours=args.neighbours,
            alpha=args.alpha,
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmfinercam",
        description="Localize concepts named in words, and what separates them from similar ones.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("localize", help="Finer-CAM maps for images: overlay PNG, .npy map, JSON")
    p.add_argument("image", nargs="+", help="image files or folders")
    _add_localize_args(p)
    _add_model_args(p)
    p.set_defaults(func=localize)
    p = sub.add_parser("eval", help="score methods on the testbed (or an annotated folder)")
    p.add_argument("--n", type=_POSITIVE, default=500, help="held-out testbed images")
    p.add_argument("--start", type=_NON_NEGATIVE, default=0, help="first held-out index (seed offset)")
    p.add_argument("--folder", default=None, help="annotated folder (annotations.json) instead")
    p.add_argument("--alphas", type=float, nargs="+", default=[0.4, 0.6, 0.8, 1.0, 1.5])
    p.add_argument(
        "--cams",
        nargs="*",
        default=["gradcam", "layercam"],
        choices=list(CAM_METHODS),
        metavar="CAM",
        help="gradient CAMs to compare, plain and Finer: " + " ".join(CAM_METHODS),
    )
    p.add_argument("--methods", nargs="+", default=None, help="keep methods whose name contains one")
    p.add_argument("--auc-steps", type=_NON_NEGATIVE, default=8, help="deletion/insertion steps (0 = skip)")
    p.add_argument("--gallery", type=_NON_NEGATIVE, default=6, help="images in the gallery")
    p.add_argument("--no-smooth", action="store_true", help="leave out the GEM maps averaged over 8 views")
    p.add_argument("--out", "-o", default="mmfinercam-eval")
    _add_model_args(p)
    p.set_defaults(func=evaluate_cmd, model="testbed")
    p = sub.add_parser("demo", help="the shipped model on the shipped sample birds")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--out", "-o", default="mmfinercam-demo")
    _add_model_args(p)
    p.set_defaults(func=demo, model="testbed")
    p = sub.add_parser("bench", help="throughput of the dense path against its peers")
    p.add_argument("--model", default="ViT-B-16", help="open_clip architecture (random weights) or 'tiny'")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--batch", type=_POSITIVE, default=4)
    p.add_argument("--size", type=_POSITIVE, default=224)
    p.add_argument("--concepts", type=_POSITIVE, nargs="+", default=[1, 10, 100, 1000])
    p.add_argument("--sizes", type=_POSITIVE, nargs="*", default=[224, 448, 896])
    p.add_argument("--batches", type=_POSITIVE, nargs="*", default=[1, 4, 16])
    p.add_argument("--repeats", type=_POSITIVE, default=3)
    p.add_argument("--no-peers", action="store_true", help="skip gem_torch and grad-cam")
    p.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        default=None,
        help="torch.compile the floor and our tower alike (backend, default inductor)",
    )
    p.add_argument(
        "--compile-mode",
        default=None,
        help="torch.compile mode, e.g. reduce-overhead (CUDA graphs) or max-autotune",
    )
    p.add_argument("--ref-dir", default=".gem-ref", help="where gem_torch + open_clip 2.23 are installed")
    p.add_argument("--out", "-o", default="mmfinercam-bench")
    p.set_defaults(func=bench)
    p = sub.add_parser("batch", help="maps for a whole collection: resumable, sharded, Parquet + .npy")
    p.add_argument("input", help="image folder, .csv/.parquet list, or a saved datasets folder")
    p.add_argument("--target", default=None, help="the concept to localize (or per-row 'target' column)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--contrast", nargs="+", default=None, help="similar concepts to subtract")
    g.add_argument("--prompt-sets", default=None, help="JSON list of {name, target, contrast}")
    p.add_argument("--vocabulary", default=None, help="automatic contrasts where none are given")
    _add_finer_args(p, methods=["gem", "raw"])
    p.add_argument("--batch-size", type=_POSITIVE, default=32)
    p.add_argument("--workers", type=_NON_NEGATIVE, default=2, help="DataLoader worker processes")
    p.add_argument("--chunk-size", type=_POSITIVE, default=256, help="images a chunk (the resume unit)")
    p.add_argument("--shard", type=_shard, default=None, help="i/n: this share (default: torchrun's)")
    p.add_argument("--ray", nargs="?", const="", default=None, help="run on Ray (optional cluster address)")
    p.add_argument("--ray-actors", type=_POSITIVE, default=1)
    p.add_argument("--ray-gpus", type=float, default=0.0, help="GPUs per Ray actor")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", "-o", default="mmfinercam-batch")
    _add_model_args(p)
    p.set_defaults(func=batch_cmd)
    p = sub.add_parser("app", help="a local web app: upload an image, type concepts, compare maps")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--models", nargs="+", default=None, help="models offered (default: those present)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload accepted")
    p.set_defaults(func=app_cmd)
    p = sub.add_parser("traits", help="rank a vocabulary's traits by how they separate a species")
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
        "--neighbours", type=_NON_NEGATIVE, default=1, help="nearest phrases whose share is taken off"
    )
    p.add_argument("--alpha", type=float, default=0.25, help="how much of the neighbours' share (0 = none)")
    p.add_argument("--top", type=_POSITIVE, default=20, help="traits to print")
    p.add_argument("--batch-size", type=_POSITIVE, default=32)
    p.add_argument("--out", "-o", default=None, help="CSV of every trait, with each group's margin and se")
    _add_model_args(p)
    p.set_defaults(func=traits)
    p = sub.add_parser("models", help="list the model backends")
    p.set_defaults(func=models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command_line = "mmfinercam " + shlex.join(argv)  # as given, for the reports
    try:
        return args.func(args)
    except (MMFinerCAMError, ValueError, OSError) as err:  # a missing file, a full disk: one line
        print(f"mmfinercam: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmfinercam: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
