"""Training data for the testbed's tiny CLIP: rendered birds, part coverage, region captions.

Pure data, from the generator's part masks: which patches each part covers, which captions are
true of which species, and windows of the token grid captioned with the traits of the parts
they show (``python -m mmfinercam.apps.train_testbed`` trains on them; the maps never see a
mask).
"""

from __future__ import annotations

import functools
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from .generator import IMAGE_SIZE, TRAIN_SEEDS, Sample, sample
from .species import SPECIES

PATCH = 8  #: the testbed model's patch size
GRID = IMAGE_SIZE // PATCH  #: its token grid's side
TRAIT_PARTS = ("body", "head", "wing", "tail", "beak")  #: the parts that have a trait phrase


def part_coverage(s: Sample) -> np.ndarray:
    """Share of each patch of the token grid covered by each traited part.

    Args:
        s: a sample.

    Returns:
        P×G×G uint8 (255 = fully covered), parts in :data:`TRAIT_PARTS` order.
    """
    g, p = GRID, IMAGE_SIZE // GRID
    masks = np.stack([s.masks[name] for name in TRAIT_PARTS]).reshape(len(TRAIT_PARTS), g, p, g, p)
    return np.round(masks.mean(axis=(2, 4)) * 255).astype(np.uint8)


def _render_chunk(seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    samples = [sample(s) for s in seeds]
    return np.stack([np.asarray(s.image) for s in samples]), np.stack([part_coverage(s) for s in samples])


def make_training_set(n: int, workers: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training images, their species and their part coverage, from the training seeds.

    Args:
        n: how many images.
        workers: processes rendering them.

    Returns:
        Images (uint8 N×H×W×3), species indices (N) and part coverage on the token grid
        (N×P×G×G, for region captions).
    """
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


def caption_truth(caption: str) -> set[int]:
    """The species a generated caption is true of.

    Args:
        caption: a caption from :func:`~mmfinercam.testbed.generator.captions`.

    Returns:
        Their indices.
    """
    for sp in SPECIES:
        if sp.name in caption:
            return {SPECIES.index(sp)}
    text = caption.removeprefix("a bird with a ").rstrip(".")
    wanted = [t.strip() for t in text.replace(" and a ", ", a ").split(", a ")]
    return {i for i, sp in enumerate(SPECIES) if all(w in sp.traits().values() for w in wanted)}


@dataclass
class RegionCaptions:
    """Windows of the token grid, each captioned with the trait of a part it shows, or with nothing.

    Background windows (captioned with nothing) are negatives for every trait caption.

    Args:
        windows: W×G×G, 1 inside the window.
        owner: W, the batch image each window lies on.
        texts: T = one "a bird with a {trait}." for each part window.
        positives: W×T, window w shows the trait caption t names.
        ignore: W×T, caption t names a part of window w's bird only partly inside it.
        species_positives: W×S, species s agrees with window w's bird on every part the window
            shows (whole or partly).
        species_ignore: W×S, species s agrees on every part shown whole but differs on one only
            partly inside.
    """

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
    """Which species each window is evidence for.

    A window is a positive for every species that has the bird's trait on each part it shows, a
    negative for any that differs on a part shown whole, and ignored for the rest (they differ only
    on a part at the window's edge). A window that shows no part whole is a negative for every
    species. A window on a trait the siblings share is thus a positive for all of them, so sibling
    contrasts cancel there, and one on the part that separates them is a positive for its own
    species only.

    Args:
        states: W×P, each part 1 shown, 0 absent, -1 partly (per :data:`TRAIT_PARTS`).
        birds: W, the species index of each window's bird.

    Returns:
        (positives, ignore), both W×S bool.
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


def _window_state(
    cov: np.ndarray, total: np.ndarray, box: tuple[int, int, int, int], shown: float, absent: float
) -> np.ndarray:
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
    """Random windows of the token grid (3 to 6 patches a side) and their captions.

    Each image gets ``windows_per_image`` windows that show a part; with probability
    ``part_windows`` such a window is instead the bounding box of one visible part. A part is
    *shown* when at least ``shown`` of its area is inside the window, *absent* when at most
    ``absent`` is. A trait caption is positive for a window that shows that trait; negative when
    the window's bird lacks the trait or the part is absent from the window, so that tokens away
    from a part cannot carry its trait; the partly visible cases are ignored.

    Args:
        coverage: B×P×G×G part coverage (:func:`part_coverage`).
        species: B species indices.
        rng: the random stream.
        shown: the share of a part inside a window from which it counts as shown.
        absent: the share up to which it counts as absent.
        part_windows: the probability a window is one part's bounding box.
        windows_per_image: windows an image that show a part.
        background_windows: more windows an image that show no part (where the bird leaves room).
        varying_windows: the probability a window is placed around the part in which the bird
            differs from its siblings (its caption then names that part's trait).

    Returns:
        The windows and their captions.
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
