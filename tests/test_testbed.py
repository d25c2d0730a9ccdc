"""The synthetic testbed: determinism, masks, the taxonomy, training, the shipped model, eval."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import mmfinercam as mf
from mmfinercam.apps.testbed_losses import batch_loss
from mmfinercam.apps.train_testbed import build_model, to_tensor
from mmfinercam.testbed import HELD_OUT_SEEDS, SPECIES, TRAIN_SEEDS, held_out, render, sample, siblings
from mmfinercam.testbed.generator import captions
from mmfinercam.testbed.regions import (
    GRID,
    TRAIT_PARTS,
    caption_truth,
    part_coverage,
    region_captions,
    species_consistency,
)
from mmfinercam.testbed.species import COLOURS, PART_IDS

SPECIES_NAMES = [s.name for s in SPECIES]


def test_generator_is_deterministic():
    a, b = sample(1234), sample(1234)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    for part in a.masks:
        assert np.array_equal(a.masks[part], b.masks[part])
    assert not np.array_equal(np.asarray(sample(1235).image), np.asarray(a.image))


def test_splits_are_disjoint():
    assert TRAIN_SEEDS.stop <= HELD_OUT_SEEDS.start
    assert held_out(2)[0].seed == HELD_OUT_SEEDS.start


def test_masks_are_disjoint_and_nonempty():
    for i in range(len(SPECIES)):
        s = render(i, seed=42)
        stack = np.stack(list(s.masks.values()))
        assert stack.sum(axis=0).max() <= 1  # every pixel belongs to one part at most
        assert s.masks[s.species.varying_part].sum() > 20  # the differing part is visible
        assert np.array_equal(s.label_map > 0, stack.any(axis=0))
        assert set(np.unique(s.label_map)) <= {0, *PART_IDS.values()}


@pytest.mark.parametrize("family", ["finch", "warbler", "oriole", "thrush", "bunting"])
def test_part_mask_is_exactly_where_a_colour_change_shows(family):
    """Redraw the same scene with a sibling whose part colour differs: only that part changes."""
    for seed in (3, 4, 5):
        index = next(i for i, sp in enumerate(SPECIES) if sp.family == family)
        a = render(index, seed)
        b = render(index, seed, species=siblings(a.species)[0])
        changed = np.abs(np.asarray(a.image, int) - np.asarray(b.image, int)).sum(axis=-1) > 24
        part = a.masks[a.species.varying_part]
        assert changed.sum() > 20
        assert (changed & ~part).sum() <= 0.02 * changed.sum()  # nothing changes off the part
        assert (changed & part).sum() >= 0.9 * part.sum()  # and the part changes almost everywhere
        assert (
            COLOURS[getattr(a.species, a.species.varying)] != COLOURS[getattr(b.species, b.species.varying)]
        )


def test_siblings_differ_in_exactly_one_part():
    for sp in SPECIES:
        for sib in siblings(sp):
            diff = {k for k, v in sp.traits().items() if sib.traits()[k] != v}
            assert diff == {sp.varying_part}, (sp.name, sib.name, diff)
    assert len({s.name for s in SPECIES}) == len(SPECIES) == 24


def test_siblings_by_name():
    sp = SPECIES[0]
    assert siblings(sp.name) == siblings(sp) and len(siblings(sp)) == 2  # a family holds three
    with pytest.raises(KeyError, match="no testbed species named 'Dodo'"):
        siblings("Dodo")


def test_captions_are_true_of_their_species():
    rng = random.Random(0)
    for _ in range(200):
        sp = SPECIES[rng.randrange(len(SPECIES))]
        text = captions(sp, rng)
        assert SPECIES.index(sp) in caption_truth(text), text


def test_training_steps_lower_the_loss():
    torch.manual_seed(0)
    import open_clip

    model = build_model().train()
    tok = open_clip.get_tokenizer("ViT-B-16", context_length=32)
    batch = [sample(s) for s in range(16)]
    coverage = np.stack([part_coverage(b) for b in batch])
    rng = random.Random(0)
    x = to_tensor(np.stack([np.asarray(b.image) for b in batch]))
    species = [b.species_index for b in batch]
    texts = [f"a photo of a {b.species.name}." for b in batch]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        regions = region_captions(coverage, np.array(species), rng)
        loss, parts = batch_loss(
            model,
            tok,
            x,
            species,
            texts,
            token_path="gem",
            regions=regions,
            region_weight=1.0,
            species_region_weight=1.0,
        )
        assert set(parts) == {"cls", "tokens", "regions", "species_regions"}
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0]


def test_region_captions_name_what_the_window_shows():
    """Hand-made coverage: a wing at the top left, a head at the bottom right of the grid."""
    coverage = np.zeros((2, len(TRAIT_PARTS), GRID, GRID), np.uint8)
    wing, head = TRAIT_PARTS.index("wing"), TRAIT_PARTS.index("head")
    coverage[:, wing, 0:2, 0:2] = 255
    coverage[:, head, GRID - 2 :, GRID - 2 :] = 255
    coverage[1, head, 0, 2] = 255  # image 1: a sliver of head next to the wing (partly visible)
    finch = next(i for i, s in enumerate(SPECIES) if s.family == "finch")
    species = np.array([finch, finch])
    for seed in range(20):
        reg = region_captions(coverage, species, random.Random(seed))
        assert reg.windows.shape == (2, GRID, GRID)
        for i, text in enumerate(reg.texts):
            assert reg.positives[i, i]  # each window shows the trait its caption names
            part = "wing" if "wing" in text else "head"
            inside = reg.windows[i][torch.from_numpy(coverage[i, TRAIT_PARTS.index(part)] > 0)]
            assert inside.sum() >= 0.5 * len(inside)
        for i in range(2):  # the other window's caption: positive only if this window shows that part
            j = 1 - i
            part = TRAIT_PARTS.index("wing" if "wing" in reg.texts[j] else "head")
            cov = coverage[i, part].astype(float)
            frac = (reg.windows[i].numpy() * cov).sum() / cov.sum()
            assert bool(reg.positives[i, j]) == (frac >= 0.5)
            assert bool(reg.ignore[i, j]) == (0.1 < frac < 0.5)


@pytest.fixture(scope="module")
def testbed():
    return mf.load("testbed", device="cpu")


def test_shipped_model_loads_and_classifies(testbed):
    assert testbed.info.name == "testbed" and not testbed.info.random_weights
    meta = json.loads((mf.testbed.model.MODEL_DIR / "testbed.json").read_text())
    assert meta["result"]["val_accuracy"] >= 0.9
    items = held_out(96, start=5000)  # outside the indices the training log validated on
    prepared, _ = testbed.prepare([s.image for s in items])
    probs = testbed.zero_shot(torch.stack([p.pixels for p in prepared]), [s.name for s in SPECIES])
    accuracy = (probs.argmax(dim=1) == torch.tensor([s.species_index for s in items])).float().mean()
    assert accuracy >= 0.85


def test_eval_end_to_end(tmp_path):
    from mmfinercam.cli import main

    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            "--n",
            "24",
            "--auc-steps",
            "2",
            "--alphas",
            "1.0",
            "--dense",
            "gem",
            "raw",
            "--cams",
            "gradcam",
            "layercam",
            "--gallery",
            "2",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    table = (out / "table.md").read_text()
    assert "plain GEM" in table and "Finer GEM (a=1)" in table and "RD@5%" in table
    rows = (out / "table.csv").read_text().splitlines()
    # header + each of GEM, raw tokens, Grad-CAM and Layer-CAM plain and Finer, one view and 8
    assert len(rows) == 1 + 16
    assert "Finer GEM (a=1), 8 views" in table and "gem, 8 views" in rows[4]
    assert "Finer Grad-CAM (a=1)" in table and "plain Layer-CAM" in table
    for f in ("metric_vs_alpha.png", "gallery.png"):
        assert (out / f).stat().st_size > 1000


def test_select_scores_every_validation_split_and_writes_the_best(tmp_path):
    """``select`` scores the grid on each validation split (never the eval split) and pools them."""
    import shutil

    from mmfinercam.apps.select_depth import TEMPERATURES, VALIDATION_STARTS, select_gem_depth

    folder = tmp_path / "testbed"
    shutil.copytree(Path(mf.__file__).parent / "data" / "testbed", folder)
    chosen = select_gem_depth(folder, n=2)
    meta = json.loads((folder / "testbed.json").read_text())
    selection = meta["gem_depth_selection"]
    assert len(selection["scores"]) == 4 * len(TEMPERATURES)  # depths 2..5 of a 4-block tower
    assert all(len(v) == len(VALIDATION_STARTS) for v in selection["scores_by_split"].values())
    for key, pooled in selection["scores"].items():  # the pooled score is the splits' mean
        assert pooled == pytest.approx(np.mean(selection["scores_by_split"][key]), abs=1e-3)
    best = max(selection["scores"], key=selection["scores"].get)
    assert chosen["chosen"] == best == f"depth={meta['gem_depth']} temperature={meta['gem_temperature']}"
    assert min(VALIDATION_STARTS) >= 10_000  # far from the eval split (0..499) and the tests' images


def test_testbed_missing_folder_is_clear(tmp_path):
    with pytest.raises(mf.WeightsNotFoundError, match="mmfinercam.apps.train_testbed"):
        mf.load("testbed", str(tmp_path))


def test_part_windows_are_one_parts_bounding_box():
    coverage = np.zeros((1, len(TRAIT_PARTS), GRID, GRID), np.uint8)
    wing, head = TRAIT_PARTS.index("wing"), TRAIT_PARTS.index("head")
    coverage[0, wing, 0:2, 0:3] = 255
    coverage[0, head, GRID - 2 :, GRID - 1 :] = 255
    finch = next(i for i, s in enumerate(SPECIES) if s.family == "finch")
    seen = set()
    for seed in range(20):
        reg = region_captions(coverage, np.array([finch]), random.Random(seed), part_windows=1.0)
        window = reg.windows[0].numpy() > 0
        part = wing if "wing" in reg.texts[0] else head
        np.testing.assert_array_equal(window, coverage[0, part] > 0)  # exactly the part's box
        seen.add(part)
    assert seen == {wing, head}


def test_varying_windows_hold_the_part_siblings_differ_in_and_name_its_trait():
    """--varying-windows 1: every window holds the family's varying part whole, its caption names
    that part's trait, and the window's species prompts are positive for its own species alone."""
    coverage = np.zeros((1, len(TRAIT_PARTS), GRID, GRID), np.uint8)
    wing, head, body = (TRAIT_PARTS.index(p) for p in ("wing", "head", "body"))
    coverage[0, body, 3:9, 2:9] = 255
    coverage[0, wing, 4:6, 4:7] = 255
    coverage[0, head, 1:3, 8:10] = 255
    finch = next(i for i, s in enumerate(SPECIES) if s.family == "finch")  # finches differ in the wing
    for seed in range(20):
        reg = region_captions(coverage, np.array([finch]), random.Random(seed), varying_windows=1.0)
        window = reg.windows[0].numpy() > 0
        assert window[coverage[0, wing] > 0].all() and 3 <= window.sum(0).max() <= 6
        assert reg.texts[0] == f"a bird with a {SPECIES[finch].wing} wing."
        assert reg.species_positives[0].nonzero().flatten().tolist() == [finch]


def test_part_windows_off_draws_what_the_shipped_recipe_drew():
    """--part-windows 0 consumes no random numbers, so the default training run is unchanged."""
    coverage = np.zeros((3, len(TRAIT_PARTS), GRID, GRID), np.uint8)
    coverage[:, TRAIT_PARTS.index("wing"), 2:6, 3:8] = 255
    coverage[:, TRAIT_PARTS.index("head"), 7:9, 1:3] = 255
    species = np.array([0, 1, 2])
    rng = random.Random(7)
    region_captions(coverage, species, rng)
    reference = random.Random(7)
    for i in range(3):  # the draws of the random windows alone, as before the option existed
        for _ in range(20):
            h, w = reference.randint(3, 6), reference.randint(3, 6)
            r, c = reference.randint(0, GRID - h), reference.randint(0, GRID - w)
            cov = coverage[i].astype(np.float32)
            frac = cov[:, r : r + h, c : c + w].sum(axis=(1, 2)) / np.maximum(cov.sum(axis=(1, 2)), 1e-6)
            if (frac >= 0.5).any():
                break
        shown = [p for p in range(len(TRAIT_PARTS)) if frac[p] >= 0.5 and cov[p].sum() > 0]
        reference.choice(shown)
    assert rng.getstate() == reference.getstate()


def test_species_consistency_marks_what_a_window_is_evidence_for():
    """A window on the trait that separates siblings is evidence for its species alone; one on a
    trait they share is evidence for all of them; a differing part at the edge is ignored."""
    finches = [s.name for s in SPECIES if s.family == "finch"]
    alder = SPECIES_NAMES.index(finches[0])
    wing, body = TRAIT_PARTS.index("wing"), TRAIT_PARTS.index("body")
    states = np.zeros((3, len(TRAIT_PARTS)), np.int8)
    states[0, wing] = 1  # the red wing, whole
    states[1, body] = 1  # the brown body all finches share
    states[2, body], states[2, wing] = 1, -1  # the body, and the wing cut by the window's edge
    pos, ignore = species_consistency(states, np.array([alder] * 3))
    names = lambda row: {SPECIES_NAMES[i] for i in np.flatnonzero(row)}  # noqa: E731
    assert names(pos[0]) == {finches[0]} and not ignore[0].any()
    assert set(finches) <= names(pos[1]) and not ignore[1].any()
    assert names(pos[1]) == {s.name for s in SPECIES if s.body == "brown"}
    assert names(pos[2]) == {finches[0]} and names(ignore[2]) == set(finches[1:])


def test_background_windows_show_no_part_and_extra_windows_show_one():
    coverage = np.zeros((2, len(TRAIT_PARTS), GRID, GRID), np.uint8)
    coverage[:, TRAIT_PARTS.index("wing"), 0:3, 0:3] = 255
    coverage[:, TRAIT_PARTS.index("head"), 3:5, 3:5] = 255
    species = np.array([0, 1])
    reg = region_captions(coverage, species, random.Random(3), windows_per_image=2, background_windows=1)
    assert len(reg.texts) == 4 and reg.windows.shape == (6, GRID, GRID)
    assert reg.owner.tolist() == [0, 0, 0, 1, 1, 1]
    background = [2, 5]
    bird = torch.from_numpy(coverage.max(axis=1) > 0)
    for w in background:
        assert reg.windows[w].sum() >= 9
        assert (reg.windows[w].bool() & bird[reg.owner[w]]).sum() <= 0.1 * bird[0].sum()
        assert not reg.positives[w].any() and not reg.species_positives[w].any()
    for w in (0, 1, 3, 4):
        assert reg.positives[w].any() and reg.species_positives[w, species[reg.owner[w]]]
