"""Train the testbed's tiny CLIP on generated birds, on a CPU, and ship it.

    python -m mmfinercam.testbed.train                 # 29 min on 2 cores, writes the shipped model
    python -m mmfinercam.testbed.train --steps 20 --out /tmp/tb   # a smoke run

The model is a plain open_clip CLIP from a custom config (ViT image tower, small text tower),
so it loads with ``open_clip.create_model("local-dir:...")`` and ``mf.load("testbed")``. After
training, the GEM depth and temperature are chosen on two validation splits (:mod:`.select`).

Contrastive objectives share the weights; none ever sees a mask:

* the usual CLIP loss on the model's own (CLS) image embedding, for zero-shot classification;
* a token-level loss: the same loss on the mean of the L2-normalized patch tokens. With
  ``--token-path local`` (default) the tokens are each patch's own embedding projected into the
  joint space, which no attention can reach, so the patches showing a trait must carry it.
  ``--token-path gem`` uses the GEM tokens of the inference path instead; with GEM's soft
  default temperature that taught the model to broadcast the species to every token,
  background included (see benchmarks/RESULTS.md);
* a region-caption loss (``--region-weight``, 1 by default): a random window of the token grid
  is captioned with the trait of a part it shows, and its mean GEM token (the inference path:
  ``--gem-depth 4``, ``--gem-temperature 20``) must match that caption and not the traits of
  parts outside it. The captions come from the generator's part masks; the maps never see a
  mask. It raised validation part pointing from 0.41 to 0.56 and accuracy from 91 to 94 %
  (benchmarks/RESULTS.md); ``--region-weight 0`` trains the previous model;
* species prompts on the same windows (``--species-region-weight``, 1 by default): a window's
  mean GEM token must match the inference prompt ("a photo of a {species}.") of every species
  consistent with what the window shows, and not those that differ on a part it shows. On a
  trait siblings share, all siblings are positives, so Finer-CAM's contrast cancels there; on
  the part that separates them only the bird's own species is. It raised part pointing from
  0.56 to 0.64 on the validation split and from 0.53 to 0.61 on the eval split
  (benchmarks/RESULTS.md, item 10);
* windows around the differing part (``--varying-windows``, 0.5 by default): half the windows
  are placed around the part in which the bird's species differs from its siblings, whole,
  and captioned with that part's trait, so both window losses see the separating trait in
  every other window rather than in the few a random window happens to cover. With 8-view
  maps it raised validation part pointing from 0.775 / 0.748 to 0.825 / 0.838 on the two
  validation splits (benchmarks/RESULTS.md, item 14).

Captions are species names, full trait descriptions or single trait phrases; the loss counts
every caption that is true of an image as a positive (many images share "a photo of a X.").
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..backends.open_clip import OpenCLIPVisionTower
from ..gem import run_tower
from .generator import IMAGE_SIZE, TRAIN_SEEDS, Sample, captions, held_out, sample
from .species import SPECIES

MODEL_CONFIG = {
    "embed_dim": 128,
    "vision_cfg": {
        "image_size": IMAGE_SIZE,
        "patch_size": 8,
        "layers": 4,
        "width": 128,
        "head_width": 32,
        "mlp_ratio": 2.0,
    },
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
}
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
GEM_DEPTH = MODEL_CONFIG["vision_cfg"]["layers"] + 1  # GEM over every block
TEMPLATES = ["a photo of a {}."]
GRID = IMAGE_SIZE // MODEL_CONFIG["vision_cfg"]["patch_size"]
TRAIT_PARTS = ("body", "head", "wing", "tail", "beak")  #: the parts that have a trait phrase
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data" / "testbed"


def part_coverage(s: Sample) -> np.ndarray:
    """Share of each patch covered by each traited part: P×G×G uint8 (255 = fully covered)."""
    g, p = GRID, IMAGE_SIZE // GRID
    masks = np.stack([s.masks[name] for name in TRAIT_PARTS]).reshape(len(TRAIT_PARTS), g, p, g, p)
    return np.round(masks.mean(axis=(2, 4)) * 255).astype(np.uint8)


def _render_chunk(seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    samples = [sample(s) for s in seeds]
    return np.stack([np.asarray(s.image) for s in samples]), np.stack([part_coverage(s) for s in samples])


def make_training_set(n: int, workers: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` training images (uint8 N×H×W×3), their species indices and part coverage on the
    token grid (N×P×G×G, for region captions), from the training seeds."""
    seeds = list(TRAIN_SEEDS[:n])
    chunks = [seeds[i : i + 512] for i in range(0, n, 512)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            rendered = list(pool.map(_render_chunk, chunks))
    else:
        rendered = [_render_chunk(c) for c in chunks]
    images = np.concatenate([r[0] for r in rendered])
    coverage = np.concatenate([r[1] for r in rendered])
    labels = np.array([s % len(SPECIES) for s in seeds])
    return images, labels, coverage


def to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def caption_truth(caption: str) -> set[int]:
    """Indices of the species a generated caption is true of."""
    for sp in SPECIES:
        if sp.name in caption:
            return {SPECIES.index(sp)}
    text = caption.removeprefix("a bird with a ").rstrip(".")
    wanted = [t.strip() for t in text.replace(" and a ", ", a ").split(", a ")]
    return {i for i, sp in enumerate(SPECIES) if all(w in sp.traits().values() for w in wanted)}


def multi_positive_nce(
    logits: torch.Tensor, positives: torch.Tensor, ignore: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE where every true pair counts: -log of the softmax mass on positives.

    ``ignore`` marks pairs left out of both softmaxes (neither positive nor negative). Rows or
    columns without any positive take part only as negatives of the other direction.
    """
    if ignore is not None:
        logits = logits.masked_fill(ignore & ~positives, -torch.inf)

    def one_way(lg: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        rows = pos.any(dim=1)  # a row with no positive (a background window) is only a negative
        log_p = lg[rows].log_softmax(dim=1)
        return -(torch.logsumexp(log_p.masked_fill(~pos[rows], -torch.inf), dim=1)).mean()

    return 0.5 * (one_way(logits, positives) + one_way(logits.T, positives.T))


@dataclass
class RegionCaptions:
    """Windows of the token grid, each captioned with the trait of a part it shows (part windows)
    or with nothing (background windows, which every trait caption must not match)."""

    windows: torch.Tensor  #: W×G×G, 1 inside the window
    owner: torch.Tensor  #: W, the batch image each window lies on
    texts: list[str]  #: T = one "a bird with a {trait}." for each part window
    positives: torch.Tensor  #: W×T, window w shows the trait caption t names
    ignore: torch.Tensor  #: W×T, caption t names a part of window w's bird only partly inside it
    #: W×S: species s agrees with window w's bird on every part the window shows (whole or part)
    species_positives: torch.Tensor | None = None
    #: W×S: species s agrees on every part shown whole but differs on one only partly inside
    species_ignore: torch.Tensor | None = None


@functools.cache
def _trait_table() -> np.ndarray:
    """S×P: each species' trait phrase for each of :data:`TRAIT_PARTS` (made once)."""
    return np.array([[sp.traits()[p] for p in TRAIT_PARTS] for sp in SPECIES])


def species_consistency(states: np.ndarray, birds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which species each window is evidence for: (positives, ignore), both W×S bool.

    ``states`` is W×P (1 shown, 0 absent, -1 partly, per :data:`TRAIT_PARTS`), ``birds`` the
    species index of each window's bird. A window is a positive for every species that has the
    bird's trait on each part it shows, a negative for any that differs on a part shown whole,
    and ignored for the rest (they differ only on a part at the window's edge). A window that
    shows no part whole is a negative for every species. A window on a
    trait the siblings share is thus a positive for all of them, so sibling contrasts cancel
    there, and one on the part that separates them is a positive for its own species only.
    """
    table = _trait_table()
    differs = table[None, :, :] != table[birds][:, None, :]  # W×S×P
    shown_differs = (differs & (states == 1)[:, None, :]).any(axis=2)
    partly_differs = (differs & (states == -1)[:, None, :]).any(axis=2)
    shows_a_part = (states == 1).any(axis=1)[:, None]  # a background window is evidence for none
    consistent = ~shown_differs & shows_a_part
    return consistent & ~partly_differs, consistent & partly_differs


def _bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Top row, left column, height and width of the nonzero cells of a G×G grid."""
    rows, cols = np.nonzero(mask)
    r, c = int(rows.min()), int(cols.min())
    return r, c, int(rows.max()) - r + 1, int(cols.max()) - c + 1


def _random_window(rng: random.Random) -> tuple[int, int, int, int]:
    h, w = rng.randint(3, 6), rng.randint(3, 6)
    return rng.randint(0, GRID - h), rng.randint(0, GRID - w), h, w


def _window_around(box: tuple[int, int, int, int], rng: random.Random) -> tuple[int, int, int, int]:
    """A random window (3 to 6 patches a side, or the box's size if larger) holding ``box`` whole."""
    r, c, h, w = box
    wh, ww = max(h, rng.randint(3, 6)), max(w, rng.randint(3, 6))
    top = rng.randint(max(0, r + h - wh), min(r, GRID - wh))
    left = rng.randint(max(0, c + w - ww), min(c, GRID - ww))
    return top, left, wh, ww


def _window_state(cov: np.ndarray, total: np.ndarray, box, shown: float, absent: float) -> np.ndarray:
    """Per part: 1 shown (≥ ``shown`` of its area inside the box), 0 absent, -1 partly."""
    r, c, h, w = box
    frac = cov[:, r : r + h, c : c + w].sum(axis=(1, 2)) / np.maximum(total, 1e-6)
    st = np.where(frac >= shown, 1, np.where(frac <= absent, 0, -1)).astype(np.int8)
    st[total == 0] = 0
    return st


def region_captions(
    coverage: np.ndarray,
    species: np.ndarray,
    rng: random.Random,
    shown: float = 0.5,
    absent: float = 0.1,
    part_windows: float = 0.0,
    windows_per_image: int = 1,
    background_windows: int = 0,
    varying_windows: float = 0.0,
) -> RegionCaptions:
    """Random windows (3 to 6 patches a side) and their captions, from part coverage (B×P×G×G).

    Each image gets ``windows_per_image`` windows that show a part; with probability
    ``part_windows`` such a window is instead the bounding box of one visible part. A part is
    *shown* when at least ``shown`` of its area is inside the window, *absent* when at most
    ``absent`` is. A trait caption is positive for a window that shows that trait; negative when
    the window's bird lacks the trait or the part is absent from the window, so that tokens away
    from a part cannot carry its trait; the partly visible cases are ignored.

    With probability ``varying_windows`` a window is instead a random window around the part in
    which the bird differs from its siblings, and its caption names that part's trait: the
    window's species prompts are then positive for its own species alone.

    ``background_windows`` more windows an image show no part at all (where the bird leaves room
    for one): every trait caption is a negative for them, so background tokens carry no trait.
    """
    n_parts = len(TRAIT_PARTS)
    boxes, owners, states = [], [], []
    named = []  # (part index, phrase) of each part window's caption
    for i in range(len(species)):
        cov = coverage[i].astype(np.float32)
        total = cov.sum(axis=(1, 2))
        visible = np.flatnonzero(total > 0)
        varying = TRAIT_PARTS.index(SPECIES[int(species[i])].varying_part)
        for _ in range(windows_per_image):
            # (no draw at all when these windows are off: the shipped model's random stream stays)
            around = varying_windows > 0 and total[varying] > 0 and rng.random() < varying_windows
            for attempt in range(20):  # redraw until the window shows some part
                if around:  # it shows the varying part whole
                    box = _window_around(_bounding_box(cov[varying]), rng)
                # (no draw at all when part windows are off: the shipped model's random stream stays)
                elif attempt == 0 and part_windows > 0 and len(visible) and rng.random() < part_windows:
                    box = _bounding_box(cov[rng.choice(visible.tolist())])
                else:
                    box = _random_window(rng)
                st = _window_state(cov, total, box, shown, absent)
                if (st == 1).any():
                    break
            else:  # the bird's largest part, whole
                part = int(total.argmax())
                box = _bounding_box(cov[part])
                st = np.zeros(n_parts, np.int8)
                st[part] = 1
            boxes.append(box)
            owners.append(i)
            states.append(st)
            part = varying if around and st[varying] == 1 else rng.choice(np.flatnonzero(st == 1).tolist())
            named.append((part, _trait_table()[species[i], part]))
        for _ in range(background_windows):
            for _attempt in range(20):
                box = _random_window(rng)
                st = _window_state(cov, total, box, shown, absent)
                if not st.any():  # every part absent
                    boxes.append(box)
                    owners.append(i)
                    states.append(st)
                    break
    windows = torch.zeros(len(boxes), GRID, GRID)
    for w, (r, c, h, wd) in enumerate(boxes):
        windows[w, r : r + h, c : c + wd] = 1
    birds = np.asarray(species)[owners]
    caption_parts = [p for p, _ in named]
    phrases = np.array([phrase for _, phrase in named], dtype=str)
    has = _trait_table()[birds][:, caption_parts] == phrases  # W×T: window w's bird has caption t's trait
    part_state = np.stack(states)[:, caption_parts]  # W×T: state in window w of caption t's part
    species_pos, species_ignore = species_consistency(np.stack(states), birds)
    return RegionCaptions(
        windows=windows,
        owner=torch.tensor(owners),
        texts=[f"a bird with a {phrase}." for _, phrase in named],
        positives=torch.from_numpy(has & (part_state == 1)),
        ignore=torch.from_numpy(has & (part_state == -1)),
        species_positives=torch.from_numpy(species_pos),
        species_ignore=torch.from_numpy(species_ignore),
    )


def batch_loss(
    model,
    tokenizer,
    x: torch.Tensor,
    species,
    texts: list[str],
    token_weight: float = 1.0,
    token_path: str = "local",
    regions: RegionCaptions | None = None,
    region_weight: float = 0.0,
    gem_depth: int = GEM_DEPTH,
    gem_temperature: float | None = None,
    species_region_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss of one batch and its parts (see the module docstring).

    * ``cls``: CLIP loss on the model's own image embedding;
    * ``tokens``: the same on the mean of the normalized patch tokens. ``token_path="local"``:
      each patch's own embedding projected into the joint space (no attention, so nothing
      global can reach it); ``"gem"``: the GEM tokens of the inference path;
    * ``regions`` (with ``region_weight``): each window's mean GEM token against trait
      captions of what the window shows (:func:`region_captions`);
    * ``species_regions`` (with ``species_region_weight``): each window's mean GEM token against
      the species prompts of inference, positive for every species consistent with what the
      window shows (:func:`species_consistency`).

    The GEM path uses ``gem_depth`` and ``gem_temperature``, its self-self attention detached.
    """
    truth = [caption_truth(t) for t in texts]
    positives = torch.tensor([[int(s) in t for t in truth] for s in species])
    tower = OpenCLIPVisionTower(model.visual)  # a view: cheap, holds no state
    use_regions = regions is not None and region_weight > 0
    gem_tokens = None
    if token_path == "gem" or use_regions:
        out = run_tower(
            tower, x, method="gem", depth=gem_depth, ss_attn_temp=gem_temperature, gem_attention_grad=False
        )
        z, gem_tokens = out.global_embedding, out.patch_tokens
    else:
        z = model.encode_image(x)
    if token_path == "gem":
        tokens = gem_tokens
    else:
        tokens = tower.project_tokens(tower.embed(x))[:, tower.num_prefix_tokens :]
    z = F.normalize(z, dim=-1)
    g = F.normalize(F.normalize(tokens, dim=-1).mean(dim=1), dim=-1)
    species_texts = (
        [TEMPLATES[0].format(sp.name) for sp in SPECIES] if use_regions and species_region_weight else []
    )
    all_texts = texts + (regions.texts if use_regions else []) + species_texts
    unique = {text: k for k, text in enumerate(dict.fromkeys(all_texts))}  # each caption encoded once
    where = torch.tensor([unique[text] for text in all_texts])
    t = F.normalize(model.encode_text(tokenizer(list(unique))), dim=-1)[where]
    t, t_regions, t_species = t.split(
        [len(texts), len(all_texts) - len(texts) - len(species_texts), len(species_texts)]
    )
    scale = model.logit_scale.exp().clamp(max=100)
    losses = {"cls": multi_positive_nce(scale * z @ t.T, positives)}
    losses["tokens"] = multi_positive_nce(scale * g @ t.T, positives) if token_weight else z.new_zeros(())
    total = losses["cls"] + token_weight * losses["tokens"]
    if use_regions:
        win = regions.windows.flatten(1).to(gem_tokens.dtype)  # W×N
        pooled = torch.einsum("wn,wnd->wd", win, F.normalize(gem_tokens, dim=-1)[regions.owner])
        e = F.normalize(pooled, dim=-1)
        losses["regions"] = multi_positive_nce(scale * e @ t_regions.T, regions.positives, regions.ignore)
        total = total + region_weight * losses["regions"]
        if species_texts:
            losses["species_regions"] = multi_positive_nce(
                scale * e @ t_species.T, regions.species_positives, regions.species_ignore
            )
            total = total + species_region_weight * losses["species_regions"]
    return total, losses


def build_model():
    from open_clip.model import CLIP

    return CLIP(**MODEL_CONFIG)


def zero_shot_accuracy(model, tokenizer, images: torch.Tensor, labels: torch.Tensor) -> float:
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
    tokenizer = open_clip.get_tokenizer("ViT-B-16", context_length=MODEL_CONFIG["text_cfg"]["context_length"])
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
                "loss": round(loss.item(), 4),
                **{f"loss_{k}": round(v.item(), 4) for k, v in parts.items()},
                "lr": round(sched.get_last_lr()[0], 6),
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


def save(model, args: argparse.Namespace, log: list[dict], result: dict) -> None:
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
        "command": "python -m mmfinercam.testbed.train " + " ".join(args.argv),
    }
    (out / "testbed.json").write_text(json.dumps(meta, indent=2))
    with open(out / "train_log.csv", "w", newline="") as f:
        keys = sorted(
            {k for row in log for k in row}, key=lambda k: list(log[-1]).index(k) if k in log[-1] else 99
        )
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(log)
    print(f"saved to {out}: {json.dumps(result)}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
    from .select import select_gem_depth

    args = parse_args(argv)
    train(args)
    select_gem_depth(args.out, n=480, smooth=True)  # two validation splits: about 18 minutes on 2 cores


if __name__ == "__main__":
    main()

__all__ = [
    "MODEL_CONFIG",
    "batch_loss",
    "build_model",
    "caption_truth",
    "main",
    "multi_positive_nce",
    "train",
]
