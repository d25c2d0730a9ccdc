"""Run the reference GEM (gem_torch 1.0.1 on open_clip_torch 2.23.0) and compare with mmfinercam.

The reference lives in its own folder, installed with

    pip install --no-deps --target .gem-ref open_clip_torch==2.23.0 gem_torch==1.0.1

(``--install`` does it), and runs in a subprocess with ``PYTHONPATH=.gem-ref`` on the same torch.

    # regenerate tests/data/gem_reference.pt (tiny ViT, deterministic weights, 224 and 448 px)
    python scripts/gem_reference.py make --install
    # the same check on a full random ViT-B-16 (outside the test suite; a few minutes on CPU)
    python scripts/gem_reference.py check --model ViT-B-16 --install

Weights cross between the two open_clip releases by state dict. gem_torch wraps each prompt as
"a photo of a {}." itself; mmfinercam gets the wrapped strings verbatim.
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

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REF_DIR = ROOT / ".gem-ref"
DEFAULT_OUT = ROOT / "tests" / "data" / "gem_reference.pt"
PROMPTS = ["red wing", "a bird", "striped tail", "background"]
SIZES = [224, 448]
STRIDE = 4  # stored maps keep every 4th pixel: 16 samples per 16-px patch, a few hundred KB
SEED = 0


def install(ref_dir: Path) -> None:
    if (ref_dir / "gem").is_dir() and (ref_dir / "open_clip").is_dir():
        return
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(ref_dir),
            "open_clip_torch==2.23.0",
            "gem_torch==1.0.1",
        ],
        check=True,
    )


def run_reference(args: argparse.Namespace) -> None:
    """Inside the reference environment: build the model, load weights, run GEMWrapper."""
    sys.modules.setdefault("cv2", types.ModuleType("cv2"))  # gem imports cv2 only to draw
    import open_clip
    from gem import GEMWrapper
    from open_clip.version import __version__ as version

    assert version == "2.23.0", f"reference needs open_clip_torch 2.23.0, found {version}"
    if args.config:
        from open_clip.model import CLIP

        model = CLIP(**json.loads(Path(args.config).read_text()))
    else:
        model = open_clip.create_model(args.model, pretrained=None)
    model.load_state_dict(torch.load(args.weights), strict=True)
    model.eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    gem = GEMWrapper(model, tokenizer, depth=7)
    images = torch.load(args.images)
    maps = {}
    with torch.no_grad():
        for size, image in images.items():
            maps[size] = gem(image, PROMPTS, normalize=False)
    torch.save(maps, args.out)


def reference_maps(
    model: torch.nn.Module,
    images: dict[int, torch.Tensor],
    ref_dir: Path,
    config: dict | None = None,
    model_name: str | None = None,
) -> dict[int, torch.Tensor]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.save(model.state_dict(), tmp / "weights.pt")
        torch.save(images, tmp / "images.pt")
        cmd = [
            sys.executable,
            __file__,
            "_run_reference",
            "--weights",
            str(tmp / "weights.pt"),
            "--images",
            str(tmp / "images.pt"),
            "--out",
            str(tmp / "maps.pt"),
        ]
        if config is not None:
            (tmp / "config.json").write_text(json.dumps(config))
            cmd += ["--config", str(tmp / "config.json")]
        else:
            cmd += ["--model", model_name]
        env = dict(os.environ, PYTHONPATH=str(ref_dir))
        subprocess.run(cmd, check=True, env=env, cwd=tmp)
        return torch.load(tmp / "maps.pt")


def ours(model: torch.nn.Module, images: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """mmfinercam's raw GEM maps, upsampled to the image size as gem_torch does."""
    import open_clip

    import mmfinercam as mf

    loc = mf.Localizer.from_open_clip(model, open_clip.get_tokenizer("ViT-B-16"))
    texts = [f"a photo of a {p}." for p in PROMPTS]
    out = {}
    for size, image in images.items():
        grid = loc.similarity_maps(image, texts, method="gem", depth=7)
        out[size] = torch.nn.functional.interpolate(grid, size=image.shape[-2:], mode="bilinear")
    return out


def make(args: argparse.Namespace) -> None:
    from mmfinercam.testing import TINY_VIT_CONFIG, build_tiny_open_clip, deterministic_image

    install(args.ref_dir)
    model = build_tiny_open_clip(SEED)
    images = {s: deterministic_image(s, seed=s) for s in SIZES}
    ref = reference_maps(model, images, args.ref_dir, config=TINY_VIT_CONFIG)
    mine = ours(model, images)
    for s in SIZES:
        print(f"{s}px: max |ours - reference| = {(mine[s] - ref[s]).abs().max():.3e}")
    torch.save(
        {
            "config": TINY_VIT_CONFIG,
            "seed": SEED,
            "prompts": PROMPTS,
            "template": "a photo of a {}.",
            "depth": 7,
            "stride": STRIDE,
            "maps": {s: ref[s][..., ::STRIDE, ::STRIDE].clone() for s in SIZES},
            "made_by": "scripts/gem_reference.py make (gem_torch 1.0.1, open_clip_torch 2.23.0)",
        },
        args.out,
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")


def check(args: argparse.Namespace) -> None:
    import open_clip

    from mmfinercam.testing import deterministic_image

    install(args.ref_dir)
    torch.manual_seed(SEED)
    model = open_clip.create_model(args.model, pretrained=None).eval()
    images = {s: deterministic_image(s, seed=s) for s in args.sizes}
    ref = reference_maps(model, images, args.ref_dir, model_name=args.model)
    mine = ours(model, images)
    worst = 0.0
    for s in args.sizes:
        err = float((mine[s] - ref[s]).abs().max())
        worst = max(worst, err)
        print(
            f"{args.model} {s}px: max |ours - reference| = {err:.3e} "
            f"(maps range {float(ref[s].min()):.3f}..{float(ref[s].max()):.3f})"
        )
    print("PASS" if worst <= 1e-4 else "FAIL", f"(tolerance 1e-4, worst {worst:.3e})")
    sys.exit(0 if worst <= 1e-4 else 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("make", "check"):
        p = sub.add_parser(name)
        p.add_argument("--ref-dir", type=Path, default=DEFAULT_REF_DIR)
        p.add_argument("--install", action="store_true", help="install the reference if missing")
    sub.choices["make"].add_argument("--out", type=Path, default=DEFAULT_OUT)
    sub.choices["check"].add_argument("--model", default="ViT-B-16")
    sub.choices["check"].add_argument("--sizes", type=int, nargs="+", default=SIZES)
    p = sub.add_parser("_run_reference")
    for a in ("--weights", "--images", "--out", "--config", "--model"):
        p.add_argument(a)
    args = parser.parse_args()
    if args.cmd in ("make", "check") and not args.install and not (args.ref_dir / "gem").is_dir():
        parser.error(f"reference not installed in {args.ref_dir}; add --install")
    {"make": make, "check": check, "_run_reference": run_reference}[args.cmd](args)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
