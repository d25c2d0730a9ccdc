"""``mmfinercam eval`` over an annotated folder: photographs of several sizes, broken entries."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import mmfinercam as mf
from mmfinercam.apps.evaluate import EvalItem, MethodSpec, evaluate, folder_items
from mmfinercam.cli import main
from mmfinercam.errors import MMFinerCAMError
from mmfinercam.testbed.generator import held_out
from mmfinercam.testbed.species import siblings

#: two sizes besides the testbed's own 96×96: the folder prepares to three tensor shapes
STRETCH = {1: (128, 96), 3: (96, 144)}


@pytest.fixture(scope="module")
def testbed():
    return mf.load("testbed", device="cpu")


def _write_folder(folder, n=6):
    """Testbed birds as an annotated folder; some stretched to other aspect ratios (masks too)."""
    folder.mkdir()
    rows = []
    for i, s in enumerate(held_out(n, start=300)):
        image, mask = s.image, Image.fromarray(s.masks[s.species.varying_part].astype(np.uint8) * 255)
        if i in STRETCH:
            image, mask = image.resize(STRETCH[i], Image.BICUBIC), mask.resize(STRETCH[i], Image.NEAREST)
        image.save(folder / f"{i}.png")
        mask.save(folder / f"{i}_mask.png")
        rows.append(
            {
                "image": f"{i}.png",
                "mask": f"{i}_mask.png",
                "target": s.species.name,
                "contrast": [sib.name for sib in siblings(s.species)],
            }
        )
    return rows


def test_a_folder_of_several_sizes_scores_each_image_at_its_own(tmp_path, testbed):
    """Photographs keep their aspect ratio, so they prepare to several sizes: each image is scored
    at its own, and the pooled scores are exactly those of the sizes scored apart."""
    rows = _write_folder(tmp_path / "set")
    (tmp_path / "set" / "annotations.json").write_text(json.dumps(rows))
    items, names, skipped = folder_items(tmp_path / "set")
    assert len(items) == 6 and skipped == []
    assert {Image.open(it.image).size for it in items} == {(96, 96), *STRETCH.values()}  # read when used
    methods = [MethodSpec("plain GEM", "gem", 0.0), MethodSpec("Finer GEM (a=1)", "gem", 1.0)]
    scores, maps = evaluate(testbed, items, names, methods, auc_steps=2, keep_maps=4, progress=False)
    square = [i for i in range(6) if i not in STRETCH]
    apart = [
        evaluate(testbed, [items[i] for i in idx], names, methods, auc_steps=2, progress=False)[0]
        for idx in (square, [1], [3])
    ]
    for m, ms in enumerate(scores):
        for key, values in ms.values.items():
            assert len(values) == 6, key
            pooled = sorted(v for part in apart for v in part[m].values[key])
            np.testing.assert_allclose(sorted(values), pooled, atol=1e-5, err_msg=key)
    for name in ("plain GEM", "Finer GEM (a=1)"):
        assert [tuple(t.shape) for t in maps[name]] == [(96, 96), (96, 128), (96, 96), (144, 96)]  # H×W


def test_broken_entries_are_left_out_and_named(tmp_path, testbed, capsys):
    """A missing image, a mask of another size and a mask marking nothing are each left out with
    a warning, named in the report; the rest are scored. A listing that is malformed or leaves
    nothing usable is one error."""
    folder = tmp_path / "set"
    rows = _write_folder(folder, n=5)
    (folder / "0.png").unlink()
    Image.new("L", (40, 40), 255).save(folder / "2_mask.png")
    Image.new("L", (96, 96), 0).save(folder / "4_mask.png")
    (folder / "annotations.json").write_text(json.dumps(rows))
    with pytest.warns(UserWarning, match="left out") as seen:
        items, _, skipped = folder_items(folder)
    assert len(seen) == 3 and [it.source for it in items] == ["1.png", "3.png"]
    assert [(f.index, f.source) for f in skipped] == [(0, "0.png"), (2, "2.png"), (4, "4.png")]
    assert "image file not found" in skipped[0].message
    assert "40×40 px, its image 96×96" in skipped[1].message and "marks no pixel" in skipped[2].message

    out = tmp_path / "report"
    argv = ["eval", "--folder", str(folder), "--methods", "Finer GEM (a=1)", "--alphas", "1"]
    with pytest.warns(UserWarning, match="left out"):
        code = main([*argv, "--cams", "--no-smooth", "--auc-steps", "1", "--gallery", "2", "--out", str(out)])
    assert code == 0
    table = (out / "table.md").read_text()
    assert "(2 images); 3 entries left out: 0.png (image file not found" in table
    assert (out / "table.csv").read_text().splitlines()[1].split(",")[3] == "2"  # n
    assert (out / "gallery.png").stat().st_size > 1000
    capsys.readouterr()

    for change, message in [
        ({"contrast": "Quarry oriole"}, None),  # one contrast as a string is a list of one
        ({"contrast": []}, "contrast must be a non-empty list"),
        ({"contrast": ["a", 3]}, "every contrast must be a non-empty string"),
        ({"target": " "}, "target must be a non-empty string"),
        ({"target": "x", "contrast": ["x"]}, "is among its own contrasts"),
    ]:
        (folder / "annotations.json").write_text(json.dumps([{**rows[1], **change}]))
        if message is None:
            assert folder_items(folder)[0][0].contrast == ["Quarry oriole"]
            continue
        with pytest.raises(MMFinerCAMError, match=f"entry #0 .*{message}"):
            folder_items(folder)
    (folder / "annotations.json").write_text(json.dumps([rows[0], rows[2]]))
    with pytest.warns(UserWarning), pytest.raises(MMFinerCAMError, match="no usable entry .*0.png: image"):
        folder_items(folder)


def test_names_outside_the_class_list_are_refused(testbed):
    """A contrast the re-scoring classifier does not know is named, not a KeyError."""
    s = held_out(1, start=300)[0]
    item = EvalItem(s.image, s.masks[s.species.varying_part], s.species.name, ["a fish"])
    with pytest.raises(MMFinerCAMError, match="missing from the class names: a fish"):
        evaluate(testbed, [item], [s.species.name], [MethodSpec("plain GEM", "gem", 0.0)], progress=False)


def test_a_mask_made_on_the_photo_as_stored_is_named_so(tmp_path):
    """A photo turned upright by its EXIF orientation, with a mask made on its stored pixels: the
    entry is left out, and the message says why the sides are swapped and what to do."""
    folder = tmp_path / "set"
    rows = _write_folder(folder, n=2)
    stored = Image.open(folder / "1.png")  # 128×96 as stored
    exif = stored.getexif()
    exif[0x0112] = 6  # shown 96×128
    stored.save(folder / "1.png", exif=exif)
    (folder / "annotations.json").write_text(json.dumps(rows))
    with pytest.warns(UserWarning, match="left out"):
        items, _, skipped = folder_items(folder)
    assert [it.source for it in items] == ["0.png"] and skipped[0].source == "1.png"
    assert "is 128×96 px, its image 96×128; the image is turned upright by its EXIF" in skipped[0].message
