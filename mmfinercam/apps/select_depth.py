"""Choose the testbed model's GEM depth and temperature on validation splits (never the eval split).

    python -m mmfinercam.apps.select_depth DIR --n 480 --smooth   # updates DIR/mmfinercam.json

The validation images are held-out indices 10000..10000+n-1 and 12000..12000+n-1, scored
together (the shipped model's selection used n=480 of each, with maps averaged over 8 views as
in ``mmfinercam eval``'s headline row; one split of 480 left neighbouring settings within its
noise, RESULTS item 14); ``mmfinercam eval`` uses 0..499 by default, the notebooks 2000.., the
tests 3000.. and 5000.. .
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..backends.base import SETTINGS_FILE

VALIDATION_START = 10_000
VALIDATION_STARTS = (VALIDATION_START, 12_000)  #: the held-out splits ``select`` scores


TEMPERATURES = (None, 5.0, 10.0, 20.0, 50.0, 100.0)


def select_gem_depth(
    folder: str | Path,
    n: int = 240,
    alpha: float = 1.0,
    smooth: bool = False,
    starts: tuple[int, ...] = VALIDATION_STARTS,
) -> dict:
    """Choose a testbed model's GEM depth and temperature on the validation splits.

    Finer-CAM pointing on the differing part for every GEM depth and self-self attention
    temperature (None = GEM's adaptive default), over ``n`` images of each validation split in
    ``starts``; the best pair goes into the folder's settings (``mmfinercam.json``) and the
    selection into ``testbed.json``.

    Args:
        folder: the model folder.
        n: images a split.
        alpha: the contrast strength scored.
        smooth: score maps averaged over 8 views (``shifts=2, flip=True``), as the headline row of
            ``mmfinercam eval`` is.
        starts: the validation splits' first held-out indices.

    Returns:
        The selection: every setting's pooled and per-split score, and the chosen one.
    """
    import mmfinercam as mf

    from .evaluate import EvalItem, MethodSpec, evaluate, testbed_items

    folder = Path(folder)
    loc = mf.load("testbed", str(folder), device="cpu")
    items: list[EvalItem] = []
    names: list[str] = []
    for start in starts:
        split, names = testbed_items(n, start=start)
        items += split
    blocks = len(loc.backend.vision.blocks)
    scores: dict[str, float] = {}
    per_split: dict[str, list[float]] = {}
    for depth in range(2, blocks + 2):
        for temp in TEMPERATURES:
            loc.info.default_depth, loc.info.gem_temperature = depth, temp
            spec = MethodSpec("Finer GEM", "gem", alpha, shifts=2 if smooth else 1, flip=smooth)
            (ms,), _ = evaluate(loc, items, names, [spec], auc_steps=0, progress=False, confidence=False)
            key = f"depth={depth} temperature={temp}"
            scores[key] = round(ms.summary()["pointing"], 4)
            hits = ms.values["pointing"]
            per_split[key] = [round(sum(hits[i * n : (i + 1) * n]) / n, 4) for i in range(len(starts))]
            print(f"GEM {key}: validation pointing game {scores[key]:.3f} {per_split[key]}", flush=True)
    best = max(scores, key=lambda k: scores[k])
    depth_text, temp_text = best.split()
    meta_path = folder / "testbed.json"
    meta = json.loads(meta_path.read_text())
    meta["gem_depth"] = int(depth_text.split("=")[1])
    meta["gem_temperature"] = None if temp_text.endswith("None") else float(temp_text.split("=")[1])
    meta["gem_depth_selection"] = {
        "validation": "held-out indices " + ", ".join(f"{s}..{s + n - 1}" for s in starts),
        "metric": f"Finer GEM (alpha={alpha:g}) pointing game on the differing part"
        + (", maps averaged over 8 views (shifts=2, flip)" if smooth else ""),
        "scores": scores,
        "scores_by_split": per_split,
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    settings_path = folder / SETTINGS_FILE  # what the loader reads
    settings = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
    settings.update(default_depth=meta["gem_depth"], gem_temperature=meta["gem_temperature"])
    settings_path.write_text(json.dumps(settings, indent=2) + "\n")
    return meta["gem_depth_selection"] | {"chosen": best}


def main() -> None:
    """``python -m mmfinercam.apps.select_depth``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder")
    parser.add_argument("--n", type=int, default=240)
    parser.add_argument("--smooth", action="store_true", help="score maps averaged over 8 views")
    args = parser.parse_args()
    print(json.dumps(select_gem_depth(args.folder, args.n, smooth=args.smooth)))


if __name__ == "__main__":
    main()
