"""Procedural fine-grained bird images with exact part masks.

A bird is drawn from polygons (tail, body, wing, head, beak, eye) in a canonical frame, then
placed with a random pose (facing, rotation, scale, position) on a textured, cluttered
background under random lighting. Every sample is a pure function of its seed, so splits are
made by seed ranges: :data:`TRAIN_SEEDS` and :data:`HELD_OUT_SEEDS` never overlap.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .species import COLOURS, PART_IDS, PARTS, SPECIES, Species

IMAGE_SIZE = 96
TRAIN_SEEDS = range(0, 1_000_000)
HELD_OUT_SEEDS = range(1_000_000, 2_000_000)


@dataclass
class Sample:
    """One generated bird with every part's mask.

    Args:
        image: the RGB picture.
        species: its species.
        species_index: the species' index in :data:`~mmfinercam.testbed.species.SPECIES`.
        masks: part name -> H×W bool, the visible pixels of that part.
        seed: the seed it was drawn from.
    """

    image: Image.Image  #: RGB
    species: Species
    species_index: int
    masks: dict[str, np.ndarray]  #: part name -> H×W bool (visible pixels of that part)
    seed: int

    @property
    def label_map(self) -> np.ndarray:
        """H×W uint8: each pixel's part id (``PART_IDS``), 0 the background."""
        out = np.zeros(self.image.size[::-1], np.uint8)
        for name, mask in self.masks.items():
            out[mask] = PART_IDS[name]
        return out


def _ellipse(
    cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, n: int = 28
) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    pts = []
    for i in range(n):
        t = 2 * math.pi * i / n
        x, y = rx * math.cos(t), ry * math.sin(t)
        pts.append((cx + c * x - s * y, cy + s * x + c * y))
    return pts


_TAILS = {
    "fan": [(-0.40, -0.06), (-0.78, -0.34), (-0.90, 0.0), (-0.78, 0.34), (-0.40, 0.08)],
    "forked": [(-0.40, -0.06), (-0.95, -0.36), (-0.60, 0.0), (-0.95, 0.36), (-0.40, 0.08)],
    "pointed": [(-0.40, -0.07), (-1.05, 0.01), (-0.40, 0.09)],
}
_BEAKS = {
    "short": [(0.62, -0.33), (0.62, -0.11), (0.90, -0.22)],
    "long": [(0.62, -0.31), (0.62, -0.13), (1.12, -0.22)],
    "hooked": [(0.62, -0.34), (0.86, -0.33), (0.98, -0.18), (0.88, -0.06), (0.84, -0.19), (0.62, -0.12)],
}


def _shapes(sp: Species) -> list[tuple[str, list[tuple[float, float]]]]:
    """Part polygons in the canonical frame (body length 1, facing right, y down)."""
    return [
        ("tail", _TAILS[sp.tail_shape]),
        ("body", _ellipse(0.0, 0.0, 0.50, 0.28)),
        ("wing", _ellipse(-0.08, -0.05, 0.27, 0.13, angle=-0.12)),
        ("head", _ellipse(0.46, -0.22, 0.23, 0.23)),
        ("beak", _BEAKS[sp.beak_shape]),
        ("eye", _ellipse(0.55, -0.27, 0.05, 0.05, n=12)),
    ]


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int = 14) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, c + rng.randint(-amount, amount)))) for c in rgb)  # type: ignore[return-value]


def _background(size: int, rng: random.Random, nprng: np.random.Generator) -> Image.Image:
    """A smooth colour field with fine texture and a few clutter shapes."""
    coarse = nprng.uniform(40, 220, (4, 4, 3))
    coarse = (0.55 * coarse + 0.45 * coarse.mean(axis=-1, keepdims=True)).astype(np.uint8)
    field = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(field).astype(np.float32)
    arr += nprng.normal(0, rng.uniform(4, 16), (size, size, 1))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(2, 6)):
        colour = _jitter(rng.choice(list(COLOURS.values())), rng, 40)
        x, y = rng.uniform(0, size), rng.uniform(0, size)
        if rng.random() < 0.5:
            r = rng.uniform(3, size / 8)
            draw.ellipse([x - r, y - r * rng.uniform(0.4, 1), x + r, y + r], fill=colour)
        else:
            x2, y2 = x + rng.uniform(-size / 2, size / 2), y + rng.uniform(-size / 2, size / 2)
            draw.line([x, y, x2, y2], fill=colour, width=rng.randint(1, 4))
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))


def _pattern_layer(
    kind: str, size: int, colour: tuple[int, ...], rng: random.Random, scale: float
) -> Image.Image | None:
    if kind == "plain":
        return None
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    if kind == "striped":
        step = max(4.0, scale * 0.14)
        width = max(2, int(round(step * 0.5)))
        offset = rng.uniform(0, step)
        x = -size + offset
        while x < 2 * size:
            draw.line([x, 0, x + size * 0.5, size], fill=colour, width=width)
            x += step
    else:  # spotted
        r = max(1.5, scale * 0.045)
        step = max(4.5, scale * 0.13)
        y = rng.uniform(0, step)
        while y < size:
            x = rng.uniform(0, step)
            while x < size:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
                x += step
            y += step * 0.9
    return layer


def render(species_index: int, seed: int, size: int = IMAGE_SIZE, species: Species | None = None) -> Sample:
    """Draw one bird of a species; the same arguments give the same sample.

    Args:
        species_index: the species' index.
        seed: the scene's seed (background, pose, jitter).
        size: the picture's side in pixels.
        species: draw this species instead, in exactly the same scene and pose (for tests and
            counterfactual pictures).

    Returns:
        The sample.
    """
    sp = species or SPECIES[species_index]
    rng = random.Random(seed * 1009 + species_index)
    nprng = np.random.default_rng(seed * 1009 + species_index)
    img = _background(size, rng, nprng)
    labels = Image.new("L", (size, size), 0)

    scale = size * rng.uniform(0.38, 0.47)  # pixels per body length
    angle = math.radians(rng.uniform(-25, 25))
    facing = rng.choice((-1, 1))
    c, s = math.cos(angle), math.sin(angle)
    shapes = _shapes(sp)

    def place(
        points: list[tuple[float, float]], cx: float = 0.0, cy: float = 0.0
    ) -> list[tuple[float, float]]:
        return [
            (cx + scale * (c * x * facing - s * y), cy + scale * (s * x * facing + c * y)) for x, y in points
        ]

    # position: the whole bird inside the frame, with a 2 px margin
    xs, ys = zip(*(pt for _, poly in shapes for pt in place(poly)))
    cx = rng.uniform(2 - min(xs), max(2 - min(xs), size - 2 - max(xs)))
    cy = rng.uniform(2 - min(ys), max(2 - min(ys), size - 2 - max(ys)))

    colours = {
        "body": COLOURS[sp.body],
        "head": COLOURS[sp.head],
        "wing": COLOURS[sp.wing],
        "tail": COLOURS[sp.tail],
        "beak": COLOURS[sp.beak],
        "eye": (15, 15, 15),
    }
    light = rng.uniform(0.85, 1.1)
    cast = [rng.uniform(-8, 8) for _ in range(3)]
    draw = ImageDraw.Draw(img)
    label_draw = ImageDraw.Draw(labels)
    for name, poly in shapes:
        pts = place(poly, cx, cy)
        base = _jitter(colours[name], rng)
        fill = tuple(int(min(255, max(0, v * light + k))) for v, k in zip(base, cast))
        draw.polygon(pts, fill=fill)
        label_draw.polygon(pts, fill=PART_IDS[name])
        if name == "wing":
            dark = tuple(int(v * 0.35) for v in fill) if sum(fill) > 240 else (235, 235, 225)
            layer = _pattern_layer(sp.wing_pattern, size, dark + (255,), rng, scale)
            if layer is not None:
                wing_mask = Image.new("L", (size, size), 0)
                ImageDraw.Draw(wing_mask).polygon(pts, fill=255)
                alpha = Image.fromarray(np.minimum(np.asarray(layer)[..., 3], np.asarray(wing_mask)))
                img.paste(layer.convert("RGB"), (0, 0), alpha)
        if name == "eye":
            r = 0.02 * scale
            ex, ey = place([(0.56, -0.28)], cx, cy)[0]
            draw.ellipse([ex - r, ey - r, ex + r, ey + r], fill=(230, 230, 230))

    arr = np.asarray(img).astype(np.float32)
    arr += nprng.normal(0, 3.0, arr.shape)
    image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    lab = np.asarray(labels)
    masks = {name: lab == PART_IDS[name] for name in PARTS}
    return Sample(image, sp, SPECIES.index(sp), masks, seed)


def sample(seed: int, size: int = IMAGE_SIZE) -> Sample:
    """The sample of a seed: its species is drawn from the seed too (uniform over species).

    Args:
        seed: a seed from :data:`TRAIN_SEEDS` or :data:`HELD_OUT_SEEDS`.
        size: the picture's side.

    Returns:
        The sample.
    """
    out = render(seed % len(SPECIES), seed // len(SPECIES), size)
    out.seed = seed
    return out


def held_out(n: int, start: int = 0, size: int = IMAGE_SIZE) -> list[Sample]:
    """Held-out samples (seeds disjoint from training), species balanced.

    Args:
        n: how many.
        start: the first held-out index (each use of the testbed keeps to its own range).
        size: the pictures' side.

    Returns:
        The samples.
    """
    first = HELD_OUT_SEEDS.start + start
    return [sample(first + i, size) for i in range(n)]


def scene(seed: int, factor: int = 8, size: int = IMAGE_SIZE) -> tuple[Sample, Sample]:
    """A held-out bird at its own scale inside a scene ``factor`` times larger.

    The bird of :func:`sample` (drawn at ``size``, the scale the model was trained at) is pasted,
    its own pixels only, at a random place on a background of ``factor × size`` pixels a side;
    its part masks move with it, so they stay exact.

    Args:
        seed: the sample's seed.
        factor: how many times larger the scene is than the bird's picture.
        size: the bird's picture's side.

    Returns:
        The scene and the bird's own picture.
    """
    bird = sample(seed, size)
    rng = random.Random(seed * 7919 + factor)
    nprng = np.random.default_rng(seed * 7919 + factor)
    side = factor * size
    img = _background(side, rng, nprng)
    x0, y0 = rng.randrange(side - size + 1), rng.randrange(side - size + 1)
    visible = np.logical_or.reduce(list(bird.masks.values()))
    img.paste(bird.image, (x0, y0), Image.fromarray(visible.astype(np.uint8) * 255))
    masks = {}
    for name, mask in bird.masks.items():
        placed = np.zeros((side, side), dtype=bool)
        placed[y0 : y0 + size, x0 : x0 + size] = mask
        masks[name] = placed
    arr = np.asarray(img).astype(np.float32)
    background = ~np.logical_or.reduce(list(masks.values()))
    arr[background] += nprng.normal(0, 3.0, (int(background.sum()), 3))  # the bird has its own
    image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return Sample(image, bird.species, bird.species_index, masks, seed), bird


def captions(sp: Species, rng: random.Random) -> str:
    """One training caption: the species name, a full description, or one trait phrase.

    Args:
        sp: the species.
        rng: the random stream.

    Returns:
        The caption.
    """
    traits = sp.traits()
    u = rng.random()
    if u < 0.4:
        return rng.choice(["a photo of a {}.", "a {}.", "a photo of the {}, a bird."]).format(sp.name)
    if u < 0.7:
        parts = [traits[p] for p in rng.sample(list(traits), k=len(traits))]
        return "a bird with a " + ", a ".join(parts[:-1]) + " and a " + parts[-1] + "."
    if u < 0.85:
        return f"a {sp.name} with a {traits[sp.varying_part]}."
    return f"a bird with a {traits[rng.choice(list(traits))]}."
