"""Run each dense method's reference implementation and compare with mmfinercam.

Each reference is its authors' public code at a named commit, checked out in a scratch folder
(``fetch`` clones them) and run there in a subprocess with that folder on ``PYTHONPATH``; none
of it is copied into mmfinercam:

    method       repository                 commit    what runs
    maskclip     mc-lan/ClearCLIP           ad68a40   VisionTransformer(model_type="MaskCLIP",
                                                      ignore_residual=False): MaskCLIP's last
                                                      layer as chongzhou96/MaskCLIP has it
    clearclip    mc-lan/ClearCLIP           ad68a40   model_type="ClearCLIP", ignore_residual=True
    sclip        wangf3014/SCLIP            b56bd30   encode_image(return_all=True, csa=True)
    naclip       sinahmr/NACLIP             0cac3a6   set_params("reduced", "naclip", 5.0)
    clipsurgery  xmed-lab/CLIP_Surgery      d4696d4   build_model("CS-ViT-B/16", ...).encode_image,
                                                      and (clipsurgery-fs) clip_feature_surgery
    legrad       WalBouss/LeGrad            a9edb03   LeWrapper(layer_index=-2).compute_legrad_clip,
                                                      on open_clip_torch 2.23.0 (.gem-ref)
    pamr         sinahmr/NACLIP             0cac3a6   PAMR(10, [8, 16]) (visinf/1-stage-wseg's),
                                                      on two random maps of an image

Both sides get the same weights (a seeded random model with OpenAI CLIP's QuickGELU, its
weights rounded to float16 values because the OpenAI-CLIP code bases store them so) and the
same preprocessed images. The references compare patch tokens with texts; here both sides'
normalized patch tokens meet the same random unit text vectors, so the maps compare the tokens.
At a size other than the tower's own the reference gets the position table as mmfinercam
resamples it (the references resample it each their own way: bicubic with a +0.1 scale factor,
bilinear, timm's), so the comparison is of the methods. LeGrad's maps are compared as the
reference returns them: upsampled to the image and min-max scaled; LeGrad runs square images
only (its resampling assumes a square grid).

    python scripts/dense_reference.py fetch --refs .dense-ref     # clone the references
    python scripts/dense_reference.py make --refs .dense-ref      # tests/data/dense_reference.pt
    python scripts/dense_reference.py check --refs .dense-ref --model ViT-B-16-quickgelu
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REFS = ROOT / ".dense-ref"
DEFAULT_GEM_REF = ROOT / ".gem-ref"
DEFAULT_OUT = ROOT / "tests" / "data" / "dense_reference.pt"
REFERENCES = {
    "maskclip": ("mc-lan/ClearCLIP", "ad68a404d55d48d27330b93554eb64a234ff717f"),
    "clearclip": ("mc-lan/ClearCLIP", "ad68a404d55d48d27330b93554eb64a234ff717f"),
    "sclip": ("wangf3014/SCLIP", "b56bd3014b9e8a3ee3450bcfc53700a67d627b7a"),
    "naclip": ("sinahmr/NACLIP", "0cac3a651f753b11315ea799cfbfabf79da1bd76"),
    "clipsurgery": ("xmed-lab/CLIP_Surgery", "d4696d47f49cfe70f49140afe5eb94f94c5f59bc"),
    "clipsurgery-fs": ("xmed-lab/CLIP_Surgery", "d4696d47f49cfe70f49140afe5eb94f94c5f59bc"),
    "legrad": ("WalBouss/LeGrad", "a9edb031422d5f5829d9e6238a1e21feb1972c92"),
    "pamr": ("sinahmr/NACLIP", "0cac3a651f753b11315ea799cfbfabf79da1bd76"),
}
#: image sizes (height, width): the tower's own, a larger square, a non-square
SIZES = [(224, 224), (448, 448), (224, 336)]
SQUARE_ONLY = {"legrad"}
#: a small CLIP whose heads are 64 wide and whose MLPs use QuickGELU, as the OpenAI-CLIP code
#: bases build them
CONFIG = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 6, "width": 128, "head_width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
}
SEED = 0
TEXTS = 4
STRIDE = 8  # full-size maps (LeGrad's, PAMR's) are stored every 8th pixel
FULL_SIZE = {"legrad", "pamr"}


def checkout(refs: Path, method: str) -> Path:
    return refs / REFERENCES[method][0].split("/")[1]


def fetch(args: argparse.Namespace) -> None:
    for repo, commit in sorted(set(REFERENCES.values())):
        folder = args.refs / repo.split("/")[1]
        if not folder.is_dir():
            subprocess.run(["git", "clone", "-q", f"https://github.com/{repo}", str(folder)], check=True)
        subprocess.run(["git", "-C", str(folder), "checkout", "-q", commit], check=True)
        print(f"{repo} at {commit[:7]} in {folder}")


def rounded_model(model_name: str | None) -> torch.nn.Module:
    """The shared model: seeded random weights rounded to float16 values."""
    import open_clip

    from mmfinercam.testing import build_tiny_open_clip

    if model_name is None:
        model = build_tiny_open_clip(SEED, CONFIG)
    else:
        torch.manual_seed(SEED)
        model = open_clip.create_model(model_name, pretrained=None).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


def position_tables(model: torch.nn.Module, sizes: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """The class token's and the patches' positions for each size, as mmfinercam resamples them."""
    from mmfinercam.backends._ops import resample_pos_embed

    v = model.visual
    patch = v.conv1.kernel_size[0]
    own = (v.positional_embedding.shape[0] - 1) ** 0.5
    table = v.positional_embedding.detach()
    return {
        name(s): resample_pos_embed(table, (s[0] // patch, s[1] // patch), (int(own),) * 2).clone()
        for s in sizes
    }


def name(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


# --- inside a reference's environment ------------------------------------------------------


def _shim_pkg_resources() -> None:
    """The OpenAI-CLIP code bases import ``pkg_resources`` for a version check only."""
    import packaging.version

    sys.modules.setdefault("pkg_resources", types.SimpleNamespace(packaging=packaging))  # type: ignore[arg-type]


def _set_positions(visual: torch.nn.Module, table: torch.Tensor) -> None:
    if visual.positional_embedding.shape != table.shape:
        visual.positional_embedding.data = table.to(visual.positional_embedding.dtype)


def _cosines(tokens: torch.Tensor, texts: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    sims = F.normalize(tokens.float(), dim=-1) @ texts.T  # B×N×K
    return sims.permute(0, 2, 1).reshape(sims.shape[0], texts.shape[0], *grid)


def run_reference(args: argparse.Namespace) -> None:
    method = args.method
    state = torch.load(args.weights)
    images: dict[str, torch.Tensor] = torch.load(args.images)
    tables: dict[str, torch.Tensor] = torch.load(args.positions)
    texts: torch.Tensor = torch.load(args.texts)
    config = json.loads(Path(args.config).read_text()) if args.config else None
    if method == "pamr":
        from pamr import PAMR

        refine = PAMR(10, [8, 16])
        torch.save({k: refine(image, texts)[0] for k, image in images.items()}, args.out)
        return
    patch = state["visual.conv1.weight"].shape[-1]
    out = {}
    with torch.no_grad() if method != "legrad" else torch.enable_grad():
        model = _reference_model(method, state, config, args.model)
        for key, image in images.items():
            grid = (image.shape[-2] // patch, image.shape[-1] // patch)
            _set_positions(model.visual, tables[key])
            if method in ("sclip", "naclip"):
                kwargs = {"csa": True} if method == "sclip" else {}
                tokens = model.encode_image(image, return_all=True, **kwargs)[:, 1:]
            elif method == "clipsurgery":
                tokens = model.encode_image(image)[:, 1:]
            elif method == "clipsurgery-fs":
                import clip

                every = F.normalize(model.encode_image(image).float(), dim=-1)
                sims = clip.clip_feature_surgery(every, texts)[:, 1:]  # B×N×K
                out[key] = sims.permute(0, 2, 1).reshape(1, texts.shape[0], *grid)[0]
                continue
            elif method in ("maskclip", "clearclip"):
                mode = {"maskclip": ("MaskCLIP", False), "clearclip": ("ClearCLIP", True)}[method]
                tokens = model.visual(image, *mode)
            else:
                out[key] = model.compute_legrad_clip(texts, image).detach()[0]
                continue
            out[key] = _cosines(tokens, texts, grid)[0]
    torch.save(out, args.out)


def _reference_model(
    method: str, state: dict, config: dict | None, model_name: str | None
) -> torch.nn.Module:
    if method in ("sclip", "naclip", "clipsurgery", "clipsurgery-fs"):
        _shim_pkg_resources()
        if method.startswith("clipsurgery"):
            from clip.build_model import build_model as build_surgery

            model = build_surgery("CS-ViT-B/16", dict(state)).float()
        else:
            from clip.model import build_model

            model = build_model(dict(state)).float()
            if method == "naclip":
                model.visual.set_params("reduced", "naclip", 5.0)
        return model.eval()
    if method in ("maskclip", "clearclip"):
        import open_clip
        from open_clip.model import CLIP

        model = CLIP(**config) if config else open_clip.create_model(model_name, pretrained=None)
        model.load_state_dict(state)
        return model.eval()
    sys.modules.setdefault("cv2", types.ModuleType("cv2"))  # LeGrad imports cv2 only to draw
    import open_clip
    from legrad import LeWrapper
    from open_clip.model import CLIP
    from open_clip.version import __version__ as version

    assert version == "2.23.0", f"LeGrad's reference needs open_clip_torch 2.23.0, found {version}"
    model = CLIP(**config) if config else open_clip.create_model(model_name, pretrained=None)
    model.load_state_dict(state)
    return LeWrapper(model.eval(), layer_index=-2)


# --- mmfinercam's side -----------------------------------------------------------------------


def ours(
    model: torch.nn.Module, method: str, images: dict[str, torch.Tensor], texts: torch.Tensor
) -> dict[str, torch.Tensor]:
    """mmfinercam's maps of the same images and texts."""
    import open_clip

    import mmfinercam as mf
    from mmfinercam.explain.cams import clip_cam, logit_score

    if method == "pamr":
        from mmfinercam.explain.refine import pamr

        return {key: pamr(image, texts)[0] for key, image in images.items()}
    loc = mf.Localizer.from_open_clip(model, open_clip.get_tokenizer("ViT-B-16"))
    out = {}
    for key, image in images.items():
        if method != "legrad":
            surgery = method == "clipsurgery-fs"
            dense = "clipsurgery" if surgery else method
            out[key] = loc.similarity_maps(image, texts, method=dense, depth=7, feature_surgery=surgery)[0]
            continue
        run = clip_cam(loc.backend, "legrad")
        maps = []
        for k in range(texts.shape[0]):
            relevance = run(image, texts, logit_score(torch.tensor([k]))).layer_maps[0]
            maps.append(_legrad_finish(relevance, model.visual.conv1.kernel_size[0]))
        out[key] = torch.cat(maps)
    return out


def _legrad_finish(relevance: torch.Tensor, patch: int) -> torch.Tensor:
    """The reference's last steps: upsample by the patch size, then min-max over the map."""
    up = F.interpolate(relevance[:, None], scale_factor=patch, mode="bilinear")[:, 0]
    lo, hi = up.amin(dim=(-2, -1), keepdim=True), up.amax(dim=(-2, -1), keepdim=True)
    return (up - lo) / (hi - lo)


def reference_maps(
    model: torch.nn.Module,
    method: str,
    images: dict[str, torch.Tensor],
    texts: torch.Tensor,
    args: argparse.Namespace,
    config: dict | None,
) -> dict[str, torch.Tensor]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.save(model.state_dict(), tmp / "weights.pt")
        torch.save(images, tmp / "images.pt")
        torch.save(texts, tmp / "texts.pt")
        sizes = [tuple(i.shape[-2:]) for i in images.values()]
        torch.save(position_tables(model, sizes), tmp / "positions.pt")
        cmd = [sys.executable, __file__, "_run_reference", "--method", method]
        for part in ("weights", "images", "texts", "positions"):
            cmd += [f"--{part}", str(tmp / f"{part}.pt")]
        cmd += ["--out", str(tmp / "maps.pt")]
        if config is not None:
            (tmp / "config.json").write_text(json.dumps(config))
            cmd += ["--config", str(tmp / "config.json")]
        else:
            cmd += ["--model", args.model]
        path = [str(checkout(args.refs, method))]
        if method == "legrad":
            path.append(str(args.gem_ref))  # open_clip 2.23.0
        subprocess.run(cmd, check=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(path)), cwd=tmp)
        return torch.load(tmp / "maps.pt")


def inputs(
    sizes: list[tuple[int, int]], method: str, dim: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    from mmfinercam.testing import deterministic_image

    kept = [s for s in sizes if method not in SQUARE_ONLY or s[0] == s[1]]
    images = {}
    for h, w in kept:
        image = deterministic_image(max(h, w), seed=h + w)
        images[name((h, w))] = image[..., :h, :w].contiguous()
    texts = F.normalize(torch.randn(TEXTS, dim, generator=torch.Generator().manual_seed(SEED + 1)), dim=-1)
    if method == "pamr":  # two maps on a 16-px grid of each image, to refine
        h, w = kept[0]
        maps = torch.randn(1, 2, h // 16, w // 16, generator=torch.Generator().manual_seed(SEED + 2))
        return {name(kept[0]): images[name(kept[0])]}, maps
    return images, texts


def compare(args: argparse.Namespace, model_name: str | None) -> dict[str, dict[str, torch.Tensor]]:
    config = CONFIG if model_name is None else None
    model = rounded_model(model_name)
    dim = model.text_projection.shape[1]
    found = {}
    worst = 0.0
    for method in args.methods:
        images, texts = inputs(SIZES, method, dim)
        ref = reference_maps(model, method, images, texts, args, config)
        mine = ours(model, method, images, texts)
        for key in images:
            err = float((mine[key] - ref[key]).abs().max())
            worst = max(worst, err)
            print(
                f"{method:12s} {model_name or 'tiny'} {key:8s}: max |ours - reference| = {err:.2e} "
                f"(maps {float(ref[key].min()):+.3f}..{float(ref[key].max()):+.3f})"
            )
        found[method] = ref
    print("PASS" if worst <= 1e-4 else "FAIL", f"(tolerance 1e-4, worst {worst:.2e})")
    if worst > 1e-4:
        sys.exit(1)
    return found


def make(args: argparse.Namespace) -> None:
    found = compare(args, None)
    maps = {
        method: {
            k: (v[..., ::STRIDE, ::STRIDE] if method in FULL_SIZE else v).clone() for k, v in ref.items()
        }
        for method, ref in found.items()
    }
    commits = {m: f"{REFERENCES[m][0]}@{REFERENCES[m][1][:7]}" for m in found}
    torch.save(
        {
            "config": CONFIG,
            "seed": SEED,
            "texts": TEXTS,
            "sizes": SIZES,
            "stride": STRIDE,
            "maps": maps,
            "references": commits,
            "made_by": "scripts/dense_reference.py make",
        },
        args.out,
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    for cmd in ("fetch", "make", "check"):
        p = sub.add_parser(cmd)
        p.add_argument("--refs", type=Path, default=DEFAULT_REFS, help="where the references are checked out")
        p.add_argument(
            "--gem-ref", type=Path, default=DEFAULT_GEM_REF, help="open_clip_torch 2.23.0 (LeGrad)"
        )
        p.add_argument("--methods", nargs="+", default=list(REFERENCES), choices=list(REFERENCES))
    sub.choices["make"].add_argument("--out", type=Path, default=DEFAULT_OUT)
    sub.choices["check"].add_argument("--model", default="ViT-B-16-quickgelu", help="open_clip architecture")
    p = sub.add_parser("_run_reference")
    for a in ("--method", "--weights", "--images", "--texts", "--positions", "--out", "--config", "--model"):
        p.add_argument(a)
    args = parser.parse_args()
    if args.cmd == "fetch":
        fetch(args)
    elif args.cmd == "make":
        make(args)
    elif args.cmd == "check":
        compare(args, args.model)
    else:
        run_reference(args)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
