"""Bad input gets a clear error or a documented conversion, and a batch loses nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import counted_calls
from PIL import Image

import mmfinercam as mf
from mmfinercam.images import read_image
from mmfinercam.masks import read_mask
from mmfinercam.pixels import prepare_images, target_size, to_pixels


def test_grayscale_rgba_palette_16bit_are_converted(tmp_path):
    gray = Image.fromarray(np.full((20, 30), 128, np.uint8), "L")
    assert read_image(gray).mode == "RGB"
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    assert read_image(rgba).getpixel((0, 0)) == (255, 255, 255)  # composited over white
    half = Image.new("RGBA", (10, 10), (0, 0, 0, 128))
    assert read_image(half).getpixel((0, 0)) == (127, 127, 127)
    pal = Image.new("P", (10, 10))
    assert read_image(pal).mode == "RGB"
    deep = np.full((8, 8), 65535, np.uint16)
    deep[0, 0] = 32768
    path = tmp_path / "deep.png"
    Image.fromarray(deep).save(path)
    rgb = read_image(path)
    assert rgb.getpixel((1, 1)) == (255, 255, 255)  # scaled by the 16-bit range, not clipped
    assert rgb.getpixel((0, 0))[0] == 128
    floats = np.zeros((6, 6, 3), np.float32)
    floats[..., 1] = 0.5
    assert read_image(floats).getpixel((0, 0)) == (0, 128, 0)
    chw = np.zeros((3, 6, 9), np.uint8)
    assert read_image(chw).size == (9, 6)


def _part() -> np.ndarray:
    """A 24×32 part: a filled ellipse, so that a lossy file has curved edges to blur."""
    yy, xx = np.mgrid[:24, :32]
    return ((yy - 11) / 8.0) ** 2 + ((xx - 15) / 11.0) ** 2 <= 1


def test_masks_are_read_as_annotation_tools_write_them(tmp_path):
    """One part, written as the tools people annotate with write it: each reads as that part."""
    part = _part()
    u8 = part.astype(np.uint8)
    written = {
        "white.png": Image.fromarray(u8 * 255),
        "label.png": Image.fromarray(u8),  # a label map: the part is 1
        "label16.png": Image.fromarray(u8.astype(np.uint16) * 3),  # 16-bit labels
        "bilevel.png": Image.fromarray(part),
        "red.png": Image.fromarray(np.stack([u8 * 255, 0 * u8, 0 * u8], -1)),  # red on black
        "opaque.png": Image.fromarray(np.stack([u8 * 255] * 3 + [np.full_like(u8, 255)], -1)),
    }
    # black strokes on a transparent layer (composited over white, as images are, they would be
    # read inverted)
    strokes = np.zeros((24, 32, 4), np.uint8)
    strokes[..., 3] = u8 * 255
    written["strokes.png"] = Image.fromarray(strokes)
    palette = Image.fromarray(u8)
    palette.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)  # now "P"; index 1 a dark red, 38 as grey
    written["palette.png"] = palette
    for name, image in written.items():
        image.save(tmp_path / name)
        assert np.array_equal(read_mask(tmp_path / name), part), name
    assert np.array_equal(read_mask(written["label.png"]), part)  # a PIL image as it is
    assert np.array_equal(read_mask(u8 * 7), part) and read_mask(part[..., None]).shape == part.shape
    # a JPEG's compression noise around edges is not part of the mask: its pixels count past
    # mid-grey (every non-zero pixel would take in a ring around the part)
    Image.fromarray(u8 * 255).save(tmp_path / "lossy.jpg", quality=75)
    assert (np.asarray(Image.open(tmp_path / "lossy.jpg")) != 0).sum() > part.sum()
    assert (read_mask(tmp_path / "lossy.jpg") != part).mean() < 0.02


def test_a_mask_turns_with_its_exif_and_bad_masks_are_one_line(tmp_path):
    stored = Image.fromarray(_part().astype(np.uint8) * 255)  # 32 wide, 24 high
    exif = stored.getexif()
    exif[0x0112] = 6  # shown turned a quarter clockwise
    stored.save(tmp_path / "turned.jpg", exif=exif, quality=95)
    assert read_mask(tmp_path / "turned.jpg").shape == (32, 24)
    assert read_mask(tmp_path / "turned.jpg", size=(32, 24)).shape == (32, 24)
    with pytest.raises(mf.ImageLoadError, match=r"mask wing.jpg is 24×32 px, its image 33×24$"):
        read_mask(tmp_path / "turned.jpg", size=(24, 33), name="wing.jpg")
    (tmp_path / "garbage.png").write_bytes(b"not a png")
    (tmp_path / "folder").mkdir()
    for source, message in [
        (tmp_path / "none.png", "mask file not found"),
        (tmp_path / "folder", "expected a mask file, got a folder"),
        (tmp_path / "garbage.png", "cannot read mask"),
        (np.zeros((4, 4, 3)), "a mask array must be H×W"),
        (Image.new("L", (0, 0)), "the mask is empty"),
        (3, "unsupported mask type int"),
    ]:
        with pytest.raises(mf.ImageLoadError, match=message):
            read_mask(source)


def test_a_camera_orientation_is_applied_as_a_viewer_shows_it(tmp_path, tiny_localizer):
    """A phone photo stored landscape with EXIF orientation 6 (turn 90° clockwise) is explained
    upright: the map has the displayed size and equals that of the image turned by hand."""
    rng = np.random.default_rng(3)
    stored = Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    exif = stored.getexif()
    exif[0x0112] = 6
    path = tmp_path / "phone.png"
    stored.save(path, exif=exif)
    shown = stored.transpose(Image.Transpose.ROTATE_270)  # what a viewer shows: 64 wide, 96 high
    upright = read_image(path)
    assert upright.size == (64, 96) and np.array_equal(np.asarray(upright), np.asarray(shown))
    res = tiny_localizer.finer_cam(path, "a bird", ["a fish"])
    assert res.heatmaps.shape == (1, 96, 64)
    torch.testing.assert_close(res.heatmaps, tiny_localizer.finer_cam(shown, "a bird", ["a fish"]).heatmaps)
    assert read_image(stored).size == (64, 96)  # an opened PIL image carries its tag too
    plain = Image.fromarray(rng.integers(0, 255, (8, 12, 3), dtype=np.uint8))
    assert read_image(plain).size == (12, 8)  # no tag: as stored


def _natural_image(height: int, width: int, seed: int) -> Image.Image:
    """Colour noise with a photograph's 1/f spectrum (most energy in coarse structure)."""
    rng = np.random.default_rng(seed)
    f = np.hypot(np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :])
    f[0, 0] = 1.0
    planes = []
    for _ in range(3):
        plane = np.fft.irfft2(
            (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f, s=(height, width)
        )
        planes.append(np.clip(128 + 40 * (plane - plane.mean()) / plane.std(), 0, 255))
    return Image.fromarray(np.stack(planes, axis=-1).astype(np.uint8))


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_a_large_photo_is_read_reduced_for_its_resize(tmp_path, suffix):
    """A photo many times the model's input is decoded smaller (JPEG) or reduced (others) before
    the resize, keeping five times the input's side: the pixels stay within a grey level
    of the direct resize, and the map keeps the photo's own size, upright."""
    photo = _natural_image(960, 1280, seed=5)
    exif = photo.getexif()
    exif[0x0112] = 6  # shown turned: 960 wide, 1280 high
    path = tmp_path / f"photo{suffix}"
    photo.save(path, exif=exif, **({"quality": 95} if suffix == ".jpg" else {}))
    kw = dict(short_side=32, patch=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3)
    from mmfinercam.images import _read

    assert _read(path, 32)[0].size == (240, 320)  # quartered: 240 px is 7.5 times 32
    (reduced,), _ = prepare_images([path], **kw)
    assert reduced.original_size == (1280, 960)
    direct = to_pixels(read_image(path), target_size(1280, 960, 32, (16, 16)), kw["mean"], kw["std"])
    assert reduced.pixels.shape == direct.shape == (3, 48, 32)
    diff = (reduced.pixels - direct).abs() / (2 / 255)  # in grey levels
    assert float(diff.mean()) < 0.25 and float(diff.max()) < 1  # measured: 0.08 and 0.46
    small = read_image(path).resize((150, 200))  # under ten times 32: as it is
    (kept,), _ = prepare_images([small], **kw)
    assert torch.equal(kept.pixels, to_pixels(small, (48, 32), kw["mean"], kw["std"]))


def test_an_image_is_checked_for_its_size_without_a_full_read(tmp_path):
    """``checked_size`` gives the upright size a read gives, decoding a large JPEG at 1/8 scale;
    a truncated file fails it as it fails a read."""
    from PIL import JpegImagePlugin

    from mmfinercam.images import checked_size

    photo = _natural_image(480, 640, seed=2)
    exif = photo.getexif()
    exif[0x0112] = 6  # shown 480 wide, 640 high
    path = tmp_path / "photo.jpg"
    photo.save(path, exif=exif, quality=90)
    with counted_calls(JpegImagePlugin.JpegImageFile, "draft") as drafts:
        assert checked_size(path) == (640, 480) == read_image(path).size[::-1]
    assert len(drafts) == 1
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for check in (checked_size, read_image):
        with pytest.raises(mf.ImageLoadError, match="cannot read image .*cut.jpg"):
            check(cut)


def test_folders_list_their_images_not_hidden_files(tmp_path):
    from mmfinercam.images import image_files

    for name in ["b.JPG", "a.png", "._a.png", "notes.txt", "sub/c.tif", "sub/.d.png", ".thumbs/e.jpg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in image_files(tmp_path)] == ["a.png", "b.JPG"]
    assert [str(p.relative_to(tmp_path)) for p in image_files(tmp_path, recursive=True)] == [
        "a.png",
        "b.JPG",
        "sub/c.tif",
    ]


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_an_image_read_for_drawing_keeps_its_longer_side(tmp_path, suffix):
    """``read_image(..., long_side=n)`` halves a large image while its longer side stays >= n
    (a JPEG decoded smaller), so a figure never decodes more than about twice what it shows."""
    path = tmp_path / f"scan{suffix}"
    _natural_image(1500, 2000, seed=2).save(path)
    assert read_image(path, long_side=300).size == (500, 375)  # a quarter: 2000 / 8 < 300
    assert read_image(path, long_side=2000).size == (2000, 1500)
    assert read_image(path).size == (2000, 1500)


def test_bad_images_are_clear_errors(tmp_path):
    with pytest.raises(mf.ImageLoadError, match="not found"):
        read_image(tmp_path / "nope.jpg")
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    with pytest.raises(mf.ImageLoadError, match="cannot read"):
        read_image(junk)
    with pytest.raises(mf.ImageLoadError, match="folder"):
        read_image(tmp_path)
    with pytest.raises(mf.ImageLoadError, match="shape"):
        read_image(np.zeros((5, 4, 7), np.uint8))
    with pytest.raises(mf.ImageLoadError, match="NaN"):
        read_image(np.full((4, 4), np.nan, np.float32))
    with pytest.raises(mf.ImageLoadError, match="unsupported"):
        read_image(42)


def test_an_image_past_pillows_pixel_limit_is_a_broken_image_with_the_way_out(tmp_path, monkeypatch):
    """Pillow refuses files over twice MAX_IMAGE_PIXELS with an error that is not an OSError (a
    whole-slide or herbarium scan can be that large): it is reported like any unreadable image,
    the batch goes on, and the message says how to allow it."""
    big, small = tmp_path / "scan.png", tmp_path / "small.png"
    Image.new("RGB", (120, 100)).save(big)
    Image.new("RGB", (40, 30)).save(small)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)  # 12,000 px is past twice the limit
    with pytest.raises(mf.ImageLoadError, match=r"scan.png has more pixels .*MAX_IMAGE_PIXELS = None"):
        read_image(big)
    norm = dict(mean=(0.0,) * 3, std=(1.0,) * 3)
    prepared, failed = prepare_images([big, small], short_side=32, patch=(16, 16), **norm)
    assert [p.index for p in prepared] == [1] and [f.index for f in failed] == [0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert read_image(big).size == (120, 100)


def test_target_size_keeps_aspect_and_patches():
    assert target_size(480, 640, 224, (16, 16)) == (224, 304)
    assert target_size(640, 480, 224, (16, 16)) == (304, 224)
    assert target_size(10, 1000, 224, (14, 14)) == (224, 22400)
    assert target_size(100, 100, 8, (16, 16)) == (16, 16)  # at least one patch


def test_image_smaller_than_a_patch(tiny_localizer):
    with pytest.warns(UserWarning), pytest.raises(mf.ImageLoadError, match="smaller than one"):
        tiny_localizer.finer_cam(np.zeros((8, 40, 3), np.uint8), "a bird")
    with pytest.raises(mf.ImageLoadError, match="smaller than one"):
        tiny_localizer.similarity_maps(torch.zeros(1, 3, 8, 8), ["a bird"])


def test_batch_with_broken_image_keeps_the_rest(tiny_localizer, sample_images, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    images = [sample_images[0], broken, sample_images[1], tmp_path / "missing.png"]
    with pytest.warns(UserWarning, match="skipped image"):
        res = tiny_localizer.finer_cam(images, "a bird", ["a fish"])
    assert res.indices == [0, 2]
    assert [f.index for f in res.failed] == [1, 3]
    assert "cannot read" in res.failed[0].message and "not found" in res.failed[1].message
    alone = tiny_localizer.finer_cam(sample_images[1], "a bird", ["a fish"])
    torch.testing.assert_close(res.scores[1], alone.scores[0], atol=1e-5, rtol=0)


def test_all_images_broken_raises(tiny_localizer, tmp_path):
    with pytest.warns(UserWarning), pytest.raises(mf.ImageLoadError, match="no usable image"):
        tiny_localizer.finer_cam(tmp_path / "missing.png", "a bird")
    for nothing in ([], torch.zeros(0, 3, 64, 64)):  # an empty list or batch: no images given
        with pytest.raises(mf.ImageLoadError, match="no usable image: no images given"):
            tiny_localizer.finer_cam(nothing, "a bird", ["a fish"])


@pytest.mark.parametrize("prompt", ["", "   ", "\n"])
def test_empty_prompts(tiny_localizer, sample_images, prompt):
    with pytest.raises(mf.PromptError, match="empty"):
        tiny_localizer.finer_cam(sample_images[0], prompt, ["a fish"])
    with pytest.raises(mf.PromptError, match="empty"):
        tiny_localizer.finer_cam(sample_images[0], "a bird", ["a fish", prompt])
    with pytest.raises(mf.PromptError, match="empty"):
        tiny_localizer.encode_text([prompt])


def test_target_among_contrasts_and_repeats(tiny_localizer, sample_images):
    with pytest.raises(mf.PromptError, match="also among the contrasts"):
        tiny_localizer.finer_cam(sample_images[0], "a bird", ["a fish", "a bird"])
    with pytest.raises(mf.PromptError, match="repeated"):
        tiny_localizer.finer_cam(sample_images[0], "a bird", ["a fish", "a fish"])
    with pytest.raises(mf.PromptError, match="either"):
        tiny_localizer.finer_cam(sample_images[0], "a bird", ["a fish"], vocabulary=["a cat"])
    with pytest.raises(mf.PromptError, match="no entry other"):
        tiny_localizer.finer_cam(sample_images[0], "a bird", vocabulary=["a bird"])


@pytest.mark.parametrize(
    "ranks, message",
    [
        ((), "distinct whole numbers from 1"),
        ((0, 1), "distinct whole numbers from 1"),
        ((2, 2), "distinct whole numbers from 1"),
        ((1.5,), "distinct whole numbers from 1"),
        ((True,), "distinct whole numbers from 1"),
        ((3, 4), "leave no contrast: there are 2 vocabulary entries besides the target"),
    ],
)
def test_contrast_ranks_are_refused_before_any_image_runs(tiny_localizer, sample_images, ranks, message):
    """Automatic contrasts take distinct whole ranks; ranks past the vocabulary's other entries
    (here two) are dropped, as the reference code does, and a bad set is one clear error before
    the image tower runs."""
    image, vocabulary = sample_images[0], ["a fish", "a cat"]
    with counted_calls(mf.model, "dense_tokens") as passes:
        calls = mf.Localizer(tiny_localizer.backend)
        with pytest.raises(mf.PromptError, match=message):
            calls.finer_cam(image, "a bird", vocabulary=vocabulary, contrast_ranks=ranks)
        assert not passes
        res = calls.finer_cam(image, "a bird", vocabulary=vocabulary)  # the default 1, 2, 3
    assert len(res.contrast[0]) == 2 and set(res.contrast[0]) == set(vocabulary)
    assert res.weights.shape == (1, 2)


def test_negative_alpha_and_bad_options(tiny_localizer, sample_images):
    with pytest.raises(ValueError, match="alpha"):
        tiny_localizer.finer_cam(sample_images[0], "a bird", ["a fish"], alpha=-0.5)
    with pytest.raises(ValueError, match="weighting"):
        tiny_localizer.finer_cam(sample_images[0], "a bird", ["a fish"], weighting="max")
    with pytest.raises(ValueError, match="method"):
        tiny_localizer.finer_cam(sample_images[0], "a bird", ["a fish"], method="magic")


def test_wrong_tensor_shape(tiny_localizer):
    with pytest.raises(mf.ImageLoadError, match="B×3×H×W"):
        tiny_localizer.finer_cam(torch.zeros(2, 1, 64, 64), "a bird")


def test_prompt_library(tmp_path):
    assert "birds-parts" in mf.prompts.available()
    assert "red wing" in mf.prompts.load("birds-parts")
    assert mf.prompts.load_templates("single") == ["a photo of a {}."]
    vocab = tmp_path / "v.txt"
    vocab.write_text("# comment\nred wing\n\nblue wing\nred wing\n")
    assert mf.prompts.load(vocab) == ["red wing", "blue wing"]
    js = tmp_path / "v.json"
    js.write_text('{"wing": ["red wing"], "tail": ["forked tail"]}')
    assert mf.prompts.load(js) == ["red wing", "forked tail"]
    with pytest.raises(mf.PromptError, match="no vocabulary"):
        mf.prompts.load("no-such-vocabulary")
    bad = tmp_path / "t.txt"
    bad.write_text("a photo\n")
    with pytest.raises(mf.PromptError, match="exactly one"):
        mf.prompts.load_templates(bad)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("v.json", b"{not json", "not valid JSON"),
        ("v.json", b'{"wing": "red wing"}', "list of strings or a dict of lists"),  # not letters
        ("v.json", b"[1, 2]", "list of strings"),
        ("v.txt", b"\xff\xfe red wing", "cannot read .* as UTF-8"),
        ("t.txt", b"", "holds no prompts"),
    ],
)
def test_unreadable_vocabulary_files_are_one_clear_error(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(mf.PromptError, match=message):
        mf.prompts.load(path)


def test_shipped_vocabularies_and_taxon():
    for name in ("birds-parts", "fish-traits", "testbed-species", "testbed-traits"):
        assert len(mf.prompts.load(name)) >= 20
    assert "adipose fin" in mf.prompts.load("fish-traits")
    assert "Alder finch" in mf.prompts.load("testbed-species")
    ranks = ["Animalia", "Chordata", "Aves", "Passeriformes", "Parulidae", "Setophaga", "tigrina"]
    assert mf.prompts.taxon(ranks) == "Setophaga tigrina"
    assert mf.prompts.taxon(ranks, form="taxonomic") == " ".join(ranks)
    assert mf.prompts.taxon(ranks, common="Cape May warbler").endswith("with common name Cape May warbler")
    with pytest.raises(mf.PromptError, match="genus"):
        mf.prompts.taxon({"family": "Parulidae"})
    assert "bioclip" in mf.prompts.available_templates()


def test_tensor_batch_rows_are_its_cropped_images():
    """A preprocessed batch is kept whole; each row reads as its own image, cropped to patches."""
    x = torch.randn(5, 3, 70, 64)
    prepared, failed = prepare_images(x, short_side=64, patch=(16, 16), mean=(0, 0, 0), std=(1, 1, 1))
    assert failed == [] and [p.index for p in prepared] == list(range(5))
    for i, p in enumerate(prepared):
        assert p.source == f"<tensor #{i}>" and p.original_size == (70, 64)
        assert p.pixels.shape == (3, 64, 64) and torch.equal(p.pixels, x[i, :, :64])


def test_non_finite_pixels_are_reported_and_the_rest_kept(tiny_localizer):
    """A preprocessed image holding NaN or infinity is a broken image, as an unreadable file is:
    reported, not given a NaN map; the other images are as they are alone."""
    x = torch.randn(3, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    x[1, 0, 5, 5] = float("nan")
    with pytest.warns(UserWarning, match="tensor #1.*NaN or infinite"):
        res = tiny_localizer.finer_cam(x, "a bird", ["a fish"])
    assert res.indices == [0, 2] and [f.index for f in res.failed] == [1]
    assert torch.isfinite(res.scores).all()
    whole = tiny_localizer.finer_cam(x[[0, 2]], "a bird", ["a fish"])
    torch.testing.assert_close(res.scores, whole.scores, atol=1e-5, rtol=0)
    # the same for one image given as a tensor in a list
    inf = x[2].clone()
    inf[2, 0, 0] = float("inf")
    with pytest.warns(UserWarning, match="NaN or infinite"):
        res = tiny_localizer.finer_cam([x[0], inf], "a bird", ["a fish"])
    assert res.indices == [0] and res.failed[0].index == 1
    with pytest.warns(UserWarning), pytest.raises(mf.ImageLoadError, match="NaN or infinite"):
        tiny_localizer.finer_cam(x[1:2], "a bird", ["a fish"])


@pytest.mark.parametrize("method", ["gem", "raw"])
def test_low_level_calls_keep_a_non_finite_image_to_its_own_rows(tiny_localizer, method):
    """``similarity_maps``, ``zero_shot`` and ``image_tokens`` take a batch as it is: an image with
    a NaN pixel gets NaN rows (nothing to report to at this level), and no other image's rows
    change, so a batched call is never spoiled by one bad image."""
    x = torch.randn(3, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    x[1, 0, 5, 5] = float("nan")
    kept = [0, 2]
    sims = tiny_localizer.similarity_maps(x, ["a bird", "a fish"], method=method)
    assert sims.isnan().flatten(1).all(1).tolist() == [False, True, False]
    alone = tiny_localizer.similarity_maps(x[kept], ["a bird", "a fish"], method=method)
    torch.testing.assert_close(sims[kept], alone, atol=1e-6, rtol=0)
    tokens = tiny_localizer.image_tokens(x, method=method).tokens
    assert tokens.isnan().flatten(1).any(1).tolist() == [False, True, False]
    probs = tiny_localizer.zero_shot(x, ["a bird", "a fish"])
    assert probs.isnan().all(1).tolist() == [False, True, False]
    torch.testing.assert_close(probs[kept], tiny_localizer.zero_shot(x[kept], ["a bird", "a fish"]))


def test_a_long_list_is_read_a_batch_at_a_time(tiny_localizer, sample_images, monkeypatch):
    """Files and arrays are prepared ``batch_size`` at a time as they run (thousands of paths
    are never held prepared at once); results, indices and the names of broken images count
    from the whole list, and equal one call over everything."""
    from mmfinercam import pixels as images

    chunks = []
    prepare = images.prepare_images
    monkeypatch.setattr(images, "prepare_images", lambda c, **kw: chunks.append(len(c)) or prepare(c, **kw))
    broken = np.full((64, 80, 3), np.nan, np.float32)
    listed = [sample_images[0], sample_images[1], sample_images[2], broken, sample_images[0]]
    with pytest.warns(UserWarning, match="skipped image <ndarray #3>: the image holds NaN"):
        res = tiny_localizer.finer_cam(listed, "a bird", ["a fish", "a cat"], batch_size=2)
    assert chunks == [2, 2, 1] and res.indices == [0, 1, 2, 4]
    assert [(f.index, f.source) for f in res.failed] == [(3, "<ndarray #3>")]
    assert res.sources == ["<ndarray #0>", "<ndarray #1>", "<ndarray #2>", "<ndarray #4>"]
    monkeypatch.setattr(images, "prepare_images", prepare)
    alone = tiny_localizer.finer_cam([listed[i] for i in res.indices], "a bird", ["a fish", "a cat"])
    for got, want in zip(res.scores, alone.scores):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert res.image_sizes == alone.image_sizes


def test_tensors_in_a_list_are_preprocessed_images(tiny_localizer):
    """A 3×H×W tensor among other images is one preprocessed image: the row of a batch, cropped
    to whole patches and not resized, with its own size as given."""
    x = torch.randn(2, 3, 70, 80, generator=torch.Generator().manual_seed(1))
    batch = tiny_localizer.finer_cam(x, "a bird", ["a fish"])
    listed = tiny_localizer.finer_cam([x[0], x[1][None]], "a bird", ["a fish"])
    torch.testing.assert_close(listed.scores, batch.scores, atol=1e-5, rtol=0)
    assert listed.image_sizes == [(70, 80), (70, 80)] == batch.image_sizes
    with pytest.warns(UserWarning), pytest.raises(mf.ImageLoadError, match="one image, 3×H×W"):
        tiny_localizer.finer_cam([x], "a bird", ["a fish"])


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), -1e-9])
def test_alpha_must_be_finite_and_not_negative(tiny_localizer, sample_images, alpha):
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        tiny_localizer.finer_cam(sample_images[0], "a bird", ["a fish"], alpha=alpha)
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        tiny_localizer.finer_cam(sample_images[0], "a bird", ["a fish"], alpha=alpha, method="gradcam")


def test_options_out_of_range_are_refused_not_replaced(tiny_localizer, sample_images):
    """0 is a value, not "the default": a depth, batch size or image size of 0 is refused, as
    are templates that do not place the prompt once, and raw integer pixels given as a tensor."""
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match="depth must be between 2"):
        tiny_localizer.similarity_maps(x, ["a bird"], depth=0)
    for batch_size in (0, 2.5):  # a float failed inside range()
        with pytest.raises(ValueError, match="batch_size must be a whole number >= 1"):
            tiny_localizer.finer_cam(sample_images, "a bird", ["a fish"], batch_size=batch_size)
    with pytest.raises(ValueError, match="depth must be between 2"):  # a float failed in a slice
        tiny_localizer.similarity_maps(x, ["a bird"], depth=3.5)
    for size, message in ((0, "a whole number >= 1"), (3, "at least one 16×16 patch"), (64.5, "whole")):
        with pytest.raises(mf.ConfigError, match=f"short_side must be .*{message}"):
            tiny_localizer.finer_cam(sample_images[0], "a bird", ["a fish"], short_side=size)
    # NumPy integers are whole numbers
    whole = dict(batch_size=np.int64(2), depth=np.int64(3))
    res = tiny_localizer.finer_cam(sample_images, "a bird", ["a fish"], **whole)
    assert len(res) == len(sample_images)
    for templates in (["a photo"], ["{} and {}"]):
        with pytest.raises(mf.PromptError, match="exactly one"):
            tiny_localizer.finer_cam(x, "a bird", ["a fish"], templates=templates)
    with pytest.raises(mf.ImageLoadError, match="must be preprocessed"):
        tiny_localizer.similarity_maps(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), ["a bird"])
    with pytest.raises(mf.ImageLoadError, match="no images given"):
        tiny_localizer.finer_cam([], "a bird", ["a fish"])
    # braces elsewhere in a template are its own text, not a format field
    braces = tiny_localizer.encode_text(["a bird"], ["{a} {}"])
    torch.testing.assert_close(braces, tiny_localizer.encode_text(["{a} a bird"], ["{}"]))


def test_text_embeddings_of_another_width_are_refused(tiny_localizer):
    x = torch.randn(1, 3, 64, 64)
    width = tiny_localizer.encode_text(["a bird"]).shape[-1]
    with pytest.raises(ValueError, match=f"K×{width}"):
        tiny_localizer.similarity_maps(x, torch.randn(2, width + 1))
    with pytest.raises(ValueError, match=f"K×{width}"):
        tiny_localizer.zero_shot(x, torch.randn(2, 3, width))


def test_a_map_with_no_positive_evidence_has_no_peak(tiny_localizer, sample_images):
    """All scores at or below zero: the heatmap is all zeros and the summary names no peak
    (argmax would put it at the top-left corner); the web app says so in words."""
    import dataclasses

    from mmfinercam.apps.web import _details

    res = tiny_localizer.finer_cam(sample_images[0], "a bird", ["a fish"])
    assert res.summary(0)["peak_x"] is not None and res.summary(0)["peak_y"] is not None
    empty = dataclasses.replace(res, scores=-res.scores.abs() - 1.0, _heatmaps=None)
    assert float(empty.heatmaps.max()) == 0.0
    summary = empty.summary(0)
    assert summary["peak_x"] is None and summary["peak_y"] is None and summary["positive_fraction"] == 0.0
    assert "no peak" in _details(summary | {"model": "tiny"})


def test_an_image_that_would_resize_to_too_many_patches_is_reported(tiny_localizer, sample_images):
    """A 16×5,000 px strip at the model's shorter side would be tens of thousands of patches:
    with tiles=False reported with what to do, and the other images go on; by default tiled."""
    from mmfinercam.pixels import MAX_PATCHES

    strip = np.zeros((16, 5000, 3), np.uint8)
    with pytest.warns(UserWarning, match="more than the 16,384"):
        res = tiny_localizer.finer_cam([strip, sample_images[0]], "a bird", ["a fish"], tiles=False)
    assert res.indices == [1] and "crop it, pass a smaller short_side, or tile it" in res.failed[0].message
    tiled = tiny_localizer.finer_cam([strip, sample_images[0]], "a bird", ["a fish"])
    assert tiled.indices == [0, 1] and tiled.scores[0].shape == (14, 4375)
    assert MAX_PATCHES == 16_384
    # at a smaller shorter side the same strip fits
    assert len(tiny_localizer.finer_cam(strip, "a bird", ["a fish"], short_side=16)) == 1
