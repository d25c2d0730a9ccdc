"""Tiled maps: window layout, stitching, the same numbers as each window explained alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmfinercam as mf
from mmfinercam.errors import ConfigError, ImageLoadError
from mmfinercam.pixels import MAX_PATCHES
from mmfinercam.tiles import Canvas, TileLayout, window_starts


@pytest.fixture(scope="module")
def testbed():
    return mf.load("testbed", device="cpu")


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def test_windows_cover_the_image_and_end_flush():
    assert window_starts(96, 96, 48) == [0]
    assert window_starts(200, 96, 48) == [0, 48, 96, 104]
    layout = TileLayout.over((200, 304), (96, 96), (8, 8))
    assert layout.grid == (25, 38)
    covered = np.zeros((200, 304), dtype=int)
    for y, x in layout.starts:
        assert y % 8 == 0 and x % 8 == 0  # windows sit on the patch grid
        covered[y : y + 96, x : x + 96] += 1
    assert covered.min() >= 1
    small = TileLayout.over((64, 80), (96, 96), (8, 8))  # smaller than a window: the whole
    assert small.starts == ((0, 0),) and small.window == (64, 80)


def test_canvas_averages_where_windows_overlap():
    canvas = Canvas((2, 4), (8, 8), torch.device("cpu"))
    canvas.add([(0, 0), (0, 16)], {"scores": torch.stack([torch.ones(2, 2), 3 * torch.ones(2, 2)])})
    out = canvas.result()["scores"]
    torch.testing.assert_close(out, torch.tensor([[1.0, 1.0, 3.0, 3.0]] * 2))
    canvas.add([(0, 8)], {"scores": 5 * torch.ones(1, 2, 2)})
    torch.testing.assert_close(canvas.result()["scores"][0], torch.tensor([1.0, 3.0, 4.0, 3.0]))


def test_a_tile_equals_its_window_explained_alone(testbed):
    """Where one window alone covers a cell, the stitched map is that window's own map."""
    image = _image(96, 192, seed=1)
    kw = dict(weighting="uniform", alpha=1.0)
    tiled = testbed.finer_cam(image, "Alder finch", ["Birch finch", "Cedar finch"], tiles=True, **kw)
    assert tiled.scores.shape == (1, 12, 24)  # the image's own size: 96×192 px, patch 8
    left = testbed.finer_cam(image[:, :96], "Alder finch", ["Birch finch", "Cedar finch"], **kw)
    right = testbed.finer_cam(image[:, 96:], "Alder finch", ["Birch finch", "Cedar finch"], **kw)
    torch.testing.assert_close(tiled.scores[0, :, :6], left.scores[0, :, :6], atol=1e-5, rtol=0)
    torch.testing.assert_close(tiled.scores[0, :, 18:], right.scores[0, :, 6:], atol=1e-5, rtol=0)
    assert tiled.heatmaps[0].shape == (96, 192)


def test_contrasts_and_weights_come_from_the_whole_image(testbed):
    image = _image(160, 320, seed=2)
    whole = testbed.finer_cam(image, "Alder finch", vocabulary="testbed-species", contrast_ranks=(1, 2))
    tiled = testbed.finer_cam(
        image, "Alder finch", vocabulary="testbed-species", contrast_ranks=(1, 2), tiles=True
    )
    assert tiled.contrast == whole.contrast
    torch.testing.assert_close(tiled.weights, whole.weights, atol=2e-3, rtol=0)
    assert tiled.scores.shape == (1, 20, 40)


def test_multiscale_and_views_on_tiles(testbed):
    image = _image(96, 200, seed=3)
    args = ("Alder finch", ["Birch finch"])
    tiled = testbed.finer_cam(image, *args, tiles=True)
    both = testbed.finer_cam(image, *args, tiles=True, multiscale=True)
    smooth = testbed.finer_cam(image, *args, tiles=True, shifts=2, flip=True)
    assert both.scores.shape == tiled.scores.shape
    assert (both.scores - tiled.scores).abs().max() > 1e-4
    assert smooth.scores.shape == (1, 24, 50) and smooth.views == 8


def test_past_the_patch_limit_tiles_instead_of_refusing(testbed):
    side = int((MAX_PATCHES**0.5 + 2) * 8)  # just past the limit at the testbed's 8-px patches
    image = _image(side, side, seed=4)
    res = testbed.finer_cam(image, "Alder finch", ["Birch finch"], short_side=side)
    assert res.scores.shape == (1, side // 8, side // 8) and not res.failed
    with pytest.warns(UserWarning, match="tiles=True"), pytest.raises(ImageLoadError, match="tile it"):
        testbed.finer_cam(image, "Alder finch", ["Birch finch"], short_side=side, tiles=False)


def test_tiles_are_for_dense_methods():
    with pytest.raises(ConfigError, match="tiles are for the dense methods"):
        mf.options.FinerOptions(method="gradcam", tiles=True)
    with pytest.raises(ConfigError, match="tiles must be"):
        mf.options.FinerOptions(tiles="yes")


def test_scene_table_from_the_command_line(tmp_path):
    from mmfinercam.cli import main

    out = tmp_path / "scenes"
    argv = ["eval", "--scenes", "3", "--dense", "gem", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    rows = (out / "scenes.csv").read_text().splitlines()
    assert rows[0].startswith("method,family,alpha,pointing native,pointing resized,pointing tiles")
    assert [r.split(",")[0] for r in rows[1:]] == ["plain GEM", "Finer GEM (a=1)"]
    assert "Command: `mmfinercam eval --scenes 3" in (out / "scenes.md").read_text()


def test_scene_keeps_the_bird_and_its_masks_exact():
    from mmfinercam.testbed.generator import scene

    big, bird = scene(1_000_005, factor=4)
    assert big.image.size == (384, 384) and bird.image.size == (96, 96)
    for part, mask in bird.masks.items():
        placed = big.masks[part]
        assert placed.sum() == mask.sum() and placed.shape == (384, 384)
    ys, xs = np.nonzero(np.logical_or.reduce(list(big.masks.values())))
    visible = np.logical_or.reduce(list(bird.masks.values()))
    by, bx = np.nonzero(visible)
    dy, dx = ys.min() - by.min(), xs.min() - bx.min()
    assert (
        np.asarray(big.image)[dy : dy + 96, dx : dx + 96][visible] == np.asarray(bird.image)[visible]
    ).all()


def test_localize_tiles_a_large_photo_and_refines(tmp_path, capsys):
    """``localize --tiles`` writes the map at the photo's own size from scores on its own grid;
    ``--refine pamr`` and ``--multiscale`` go with it; a gradient method with tiles is one line."""
    from PIL import Image

    from mmfinercam.cli import main

    photo = tmp_path / "sheet.png"
    Image.fromarray(_image(200, 296, seed=5)).save(photo)
    argv = ["localize", str(photo), "--target", "Alder finch", "--contrast", "Birch finch"]
    argv += ["--model", "testbed", "--device", "cpu", "--no-overlay"]
    assert main([*argv, "--tiles", "--method", "naclip", "--out", str(tmp_path / "a")]) == 0
    scores = np.load(tmp_path / "a" / "sheet.scores.npy")
    assert scores.shape == (25, 37) and np.load(tmp_path / "a" / "sheet.npy").shape == (200, 296)
    assert main([*argv, "--tiles", "--multiscale", "--refine", "pamr", "--out", str(tmp_path / "b")]) == 0
    assert np.load(tmp_path / "b" / "sheet.scores.npy").shape == (200, 296)  # refined: pixels
    capsys.readouterr()
    assert main([*argv, "--tiles", "--method", "gradcam", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert "tiles are for the dense methods" in err and "\n" not in err


def test_an_absurd_working_size_is_refused_before_any_pixel_is_made(testbed):
    with pytest.warns(UserWarning), pytest.raises(ImageLoadError, match="pixels a tiled image is held at"):
        testbed.finer_cam(_image(60, 80), "Alder finch", ["Birch finch"], tiles=True, short_side=40_000)
    ok = testbed.finer_cam(_image(60, 80), "Alder finch", ["Birch finch"], tiles=True, short_side=400)
    assert ok.scores.shape == (1, 50, 67)
