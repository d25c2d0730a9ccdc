"""Train the testbed's tiny CLIP on generated birds, on a CPU, and ship it.

    python -m mmfinercam.apps.train_testbed                 # writes the shipped model (~30 min, 2 cores)
    python -m mmfinercam.apps.train_testbed --steps 20 --out /tmp/tb   # a smoke run

The model is a plain open_clip CLIP from a custom config (ViT image tower, small text tower),
so it loads with ``open_clip.create_model("local-dir:...")`` and ``mf.load("testbed")``. After
training, the GEM depth and temperature are chosen on two validation splits
(:mod:`.select_depth`) and written to the folder's ``mmfinercam.json``.

Contrastive objectives share the weights; none ever sees a mask:

* the usual CLIP loss on the model's own (CLS) image embedding, for zero-shot classification;
* a token-level loss: the same loss on the mean of the L2-normalized patch tokens. With
  ``--token-path local`` (default) the tokens are each patch's own embedding projected into the
  joint space, which no attention can reach, so the patches showing a trait must carry it.
  ``--token-path gem`` uses the GEM tokens of the inference path instead; with GEM's soft
  default temperature that teaches the model to broadcast the species to every token,
  background included;
* a region-caption loss (``--region-weight``): a random window of the token grid is captioned
  with the trait of a part it shows (:mod:`mmfinercam.testbed.regions`), and its mean GEM token
  (the inference path: ``--gem-depth``, ``--gem-temperature``) must match that caption and not
  the traits of parts outside it;
* species prompts on the same windows (``--species-region-weight``): a window's mean GEM token
  must match the inference prompt ("a photo of a {species}.") of every species consistent with
  what the window shows, and not those that differ on a part it shows. On a trait siblings
  share, all siblings are positives, so Finer-CAM's contrast cancels there; on the part that
  separates them only the bird's own species is;
* windows around the differing part (``--varying-windows``): that share of the windows is
  placed around the part in which the bird's species differs from its siblings, whole, so both
  window losses see the separating trait often rather than when a random window covers it.

What each objective does to the maps is measured in ``benchmarks/RESULTS.md``. Captions are
species names, full trait descriptions or single trait phrases; the loss counts every caption
that is true of an image as a positive (many images share "a photo of a X.").
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..backends.base import SETTINGS_FILE
from ..testbed.generator import IMAGE_SIZE, captions, held_out
from ..testbed.regions import (
    make_training_set,
    region_captions,
)
from ..testbed.species import SPECIES
from .testbed_losses import MEAN, MODEL_CONFIG, STD, TEMPLATES, TEXT_CONTEXT, batch_loss

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data" / "testbed"  #: the shipped model


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """Rendered images as the model's normalized input.

    Args:
        images: uint8 N×H×W×3.

    Returns:
        N×3×H×W float.
    """
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def build_model() -> Any:
    """A fresh testbed CLIP of :data:`MODEL_CONFIG`.

    Returns:
        The open_clip model.
    """
    from open_clip.model import CLIP

    return CLIP(**MODEL_CONFIG)


def zero_shot_accuracy(model: Any, tokenizer: Any, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Zero-shot species accuracy of the model on a set of images.

    Args:
        model: the open_clip model.
        tokenizer: its tokenizer.
        images: N×3×H×W.
        labels: N species indices.

    Returns:
        The share classified right.
    """
    model.eval()
    with torch.inference_mode():
        text = F.normalize(
            model.encode_text(tokenizer([TEMPLATES[0].format(s.name) for s in SPECIES])), dim=-1
        )
        pred = []
        for chunk in images.split(256):
            z = F.normalize(model.encode_image(chunk), dim=-1)
            pred.append((z @ text.T).argmax(dim=1))
    model.train()
    return float((torch.cat(pred) == labels).float().mean())


def train(args: argparse.Namespace) -> dict:
    """Train the testbed model and save it.

    Args:
        args: the command's arguments (:func:`parse_args`).

    Returns:
        The result: steps, minutes and validation accuracy.
    """
    import open_clip

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(args.threads)
    start = time.time()
    images, labels, coverage = make_training_set(args.images, workers=args.workers)
    print(f"rendered {len(images)} training images in {time.time() - start:.0f}s", flush=True)
    val = held_out(args.val_images)
    val_x = to_tensor(np.stack([np.asarray(s.image) for s in val]))
    val_y = torch.tensor([s.species_index for s in val])

    model = build_model()
    if args.init:
        from safetensors.torch import load_file

        state = load_file(str(Path(args.init) / "open_clip_model.safetensors"))
        model.load_state_dict({k: v.float() for k, v in state.items()})
    model.train()
    tokenizer = open_clip.get_tokenizer("ViT-B-16", context_length=TEXT_CONTEXT)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    warmup = max(1, args.steps // 20)
    deadline = start + 60 * args.minutes
    train_start = time.time()

    def schedule(step: int) -> float:
        """Linear warmup, then cosine to zero by the last step or the time limit, whichever first."""
        by_time = (time.time() - train_start) / max(1.0, deadline - train_start)
        progress = min(1.0, max(step / args.steps, by_time))
        return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    rng = random.Random(args.seed)
    log = []
    step = 0
    for step in range(1, args.steps + 1):
        idx = torch.randint(len(images), (args.batch_size,))
        x = to_tensor(images[idx.numpy()])
        species = labels[idx.numpy()]
        texts = [captions(SPECIES[s], rng) for s in species]
        regions = (
            region_captions(
                coverage[idx.numpy()],
                species,
                rng,
                part_windows=args.part_windows,
                windows_per_image=args.region_windows,
                background_windows=args.background_windows,
                varying_windows=args.varying_windows,
            )
            if args.region_weight
            else None
        )
        loss, parts = batch_loss(
            model,
            tokenizer,
            x,
            species,
            texts,
            args.token_weight,
            args.token_path,
            regions,
            args.region_weight,
            args.gem_depth,
            args.gem_temperature or None,  # 0: the adaptive temperature
            args.species_region_weight,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % args.log_every == 0 or step == args.steps:
            row = {
                "step": step,
                "minutes": round((time.time() - start) / 60, 2),
                "loss": round(float(loss.item()), 4),
                **{f"loss_{k}": round(v.item(), 4) for k, v in parts.items()},
                "lr": round(float(sched.get_last_lr()[0]), 6),
            }
            if step % (args.log_every * 5) == 0 or step == args.steps:
                row["val_accuracy"] = round(zero_shot_accuracy(model, tokenizer, val_x, val_y), 4)
            log.append(row)
            print(json.dumps(row), flush=True)
        if time.time() > deadline - 0.2 * 60:  # leave time to validate and save
            print(f"time limit of {args.minutes} min reached at step {step}", flush=True)
            break
    model.eval()
    accuracy = zero_shot_accuracy(model, tokenizer, val_x, val_y)
    result = {"steps": step, "minutes": round((time.time() - start) / 60, 2), "val_accuracy": accuracy}
    save(model, args, log, result)
    return result


def save(model: Any, args: argparse.Namespace, log: list[dict], result: dict) -> None:
    """Save the model as an open_clip folder with its settings and training record.

    Args:
        model: the trained model.
        args: the command's arguments.
        log: the training log's rows.
        result: the result of :func:`train`.
    """
    from safetensors.torch import save_file

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": MODEL_CONFIG,
        "preprocess_cfg": {
            "mean": list(MEAN),
            "std": list(STD),
            "size": IMAGE_SIZE,
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    meta = {
        "name": "testbed",
        "description": "tiny CLIP trained on mmfinercam.testbed birds (24 species, 8 families)",
        "gem_depth": args.gem_depth,
        "gem_temperature": args.gem_temperature,
        "templates": TEMPLATES,
        "seed": args.seed,
        "training": {k: v for k, v in vars(args).items() if k != "out"},
        "result": result,
        "species": [s.name for s in SPECIES],
        "command": "python -m mmfinercam.apps.train_testbed " + " ".join(args.argv),
    }
    (out / "testbed.json").write_text(json.dumps(meta, indent=2))
    settings = {
        "default_depth": args.gem_depth,
        "gem_temperature": args.gem_temperature,
        "templates": TEMPLATES,
    }
    (out / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    with open(out / "train_log.csv", "w", newline="") as f:
        keys = sorted(
            {k for row in log for k in row}, key=lambda k: list(log[-1]).index(k) if k in log[-1] else 99
        )
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(log)
    print(f"saved to {out}: {json.dumps(result)}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The training command's arguments.

    Args:
        argv: the arguments (default: the process's).

    Returns:
        The parsed arguments.
    """
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2100, help="at most; the --minutes limit may end it first")
    p.add_argument("--minutes", type=float, default=29.0, help="stop early at this wall time")
    p.add_argument("--batch-size", type=int, default=96)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--token-weight", type=float, default=1.0, help="weight of the token-level loss")
    p.add_argument(
        "--token-path",
        choices=["local", "gem"],
        default="local",
        help="tokens the token-level loss sees: patch embeddings alone, or GEM tokens",
    )
    p.add_argument(
        "--region-weight",
        type=float,
        default=1.0,
        help="weight of the region-caption loss on GEM tokens (0: off)",
    )
    p.add_argument(
        "--part-windows",
        type=float,
        default=0.0,
        help="share of region windows that are one part's bounding box (the rest random)",
    )
    p.add_argument(
        "--species-region-weight",
        type=float,
        default=1.0,
        help="weight of the species-prompt loss on region windows (0: off)",
    )
    p.add_argument("--region-windows", type=int, default=1, help="part windows an image per step")
    p.add_argument(
        "--varying-windows",
        type=float,
        default=0.5,
        help="share of region windows placed around the part in which siblings differ",
    )
    p.add_argument(
        "--background-windows",
        type=int,
        default=0,
        help="windows an image per step that show no part: negatives for every caption",
    )
    p.add_argument("--gem-depth", type=int, default=4, help="GEM depth of the training path")
    p.add_argument(
        "--gem-temperature",
        type=float,
        default=20.0,
        help="GEM inverse temperature of the training path (0: GEM's adaptive one)",
    )
    p.add_argument("--init", default=None, help="start from this testbed model folder (fine-tuning)")
    p.add_argument("--images", type=int, default=64000, help="training images rendered up front")
    p.add_argument("--val-images", type=int, default=480)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    import sys

    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> None:
    """``python -m mmfinercam.apps.train_testbed``: train, then choose the GEM settings.

    Args:
        argv: the arguments (default: the process's).
    """
    from .select_depth import select_gem_depth

    args = parse_args(argv)
    train(args)
    select_gem_depth(args.out, n=480, smooth=True)  # two validation splits: about 18 minutes on 2 cores


if __name__ == "__main__":
    main()
