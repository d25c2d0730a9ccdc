"""The web app: its functions directly, and the page end to end in a real headless Chromium."""

from __future__ import annotations

import json
import shutil
import socket
import time

import numpy as np
import pytest
from PIL import Image

from mmfinercam.apps.web import AppInputError, ModelCache, build_app, localize_for_app, sample_rows
from mmfinercam.cli import build_parser

gradio = pytest.importorskip("gradio")


@pytest.fixture(scope="module")
def cache():
    return ModelCache()


@pytest.fixture(scope="module")
def sample():
    return sample_rows()[0]  # [path, "Alder finch", "Birch finch, Cedar finch"]


def test_a_sample_gives_both_maps_and_the_downloads(tmp_path, cache, sample):
    import mmfinercam as mf

    path, target, contrast = sample
    r = localize_for_app(path, target, contrast, None, 1.0, "testbed", models=cache, out_dir=tmp_path)
    assert r.plain.size == r.finer.size == Image.open(path).size
    assert "Birch finch" in r.details and "Cedar finch" in r.details
    heat = np.load(r.files[0])
    ref = mf.load("testbed", device="cpu").finer_cam(path, target, ["Birch finch", "Cedar finch"])
    np.testing.assert_allclose(heat, ref.heatmaps[0].numpy(), atol=1e-5)
    summary = json.loads(open(r.files[2]).read())
    assert summary["contrast"] == ["Birch finch", "Cedar finch"] and summary["model"] == "testbed"
    plain = localize_for_app(path, target, contrast, None, 0.0, "testbed", models=cache, out_dir=tmp_path)
    assert np.array_equal(np.asarray(plain.plain), np.asarray(plain.finer))  # alpha 0 is the plain map


def test_the_page_says_when_the_model_sees_a_contrast_rather_than_the_target(tmp_path, cache, sample):
    """The sample is an Alder finch: its map against Birch and Cedar finch is read plainly, and
    "Birch finch vs Alder finch" comes with the warning that the model sees the contrast here."""
    path, target, contrast = sample
    r = localize_for_app(path, target, contrast, None, 1.0, "testbed", models=cache, out_dir=tmp_path)
    assert "better to" not in r.details and json.loads(open(r.files[2]).read())["best_match"] == target
    r = localize_for_app(path, "Birch finch", target, None, 1.0, "testbed", models=cache, out_dir=tmp_path)
    assert f"The model matches this image better to **{target}** than to the target" in r.details


def test_a_large_upload_is_shown_at_display_size_and_downloaded_whole(tmp_path, cache, sample, monkeypatch):
    """The page's pictures are drawn at what a page shows (a 40-megapixel blend held gigabytes);
    the map download keeps the image's own size."""
    from mmfinercam import viz

    monkeypatch.setattr(viz, "DISPLAY_SIDE", 64)
    path, target, contrast = sample
    r = localize_for_app(path, target, contrast, None, 1.0, "testbed", models=cache, out_dir=tmp_path)
    width, height = Image.open(path).size
    assert max(r.plain.size) == max(r.finer.size) == 64 and r.finer.size == r.plain.size
    assert np.load(r.files[0]).shape == (height, width) and Image.open(r.files[1]).size == r.finer.size


def test_vocabulary_gives_automatic_contrasts(tmp_path, cache, sample):
    r = localize_for_app(
        sample[0], "Alder finch", "", "testbed-species", 1.0, "testbed", models=cache, out_dir=tmp_path
    )
    summary = json.loads(open(r.files[2]).read())
    assert len(summary["contrast"]) == 3 and "Alder finch" not in summary["contrast"]


@pytest.mark.parametrize(
    "case, message",
    [
        ("no image", "Upload an image"),
        ("empty target", "Type a target"),
        ("not an image", "not an image"),
        ("huge image", "megapixels"),
        ("contrast equals target", "target"),
    ],
)
def test_bad_input_is_one_sentence(tmp_path, cache, sample, case, message):
    path, target, contrast = sample
    kwargs = dict(models=cache, out_dir=tmp_path)
    if case == "no image":
        path = None
    elif case == "empty target":
        target = "   "
    elif case == "not an image":
        path = tmp_path / "notes.png"
        path.write_text("this is text")
    elif case == "huge image":
        path = tmp_path / "big.png"
        Image.new("RGB", (3000, 2000)).save(path)
        kwargs["max_pixels"] = 5_000_000
    elif case == "contrast equals target":
        contrast = target
    with pytest.raises(AppInputError, match=message) as info:
        localize_for_app(str(path) if path else None, target, contrast, None, 1.0, "testbed", **kwargs)
    assert "\n" not in str(info.value)


def test_listens_on_loopback_by_default():
    args = build_parser().parse_args(["app"])
    assert args.host == "127.0.0.1" and args.max_upload_mb == 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(cache):
    port = _free_port()
    page = build_app(["testbed"], cache=cache)
    page.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, show_error=True,
        max_file_size="10mb",
    )  # fmt: skip
    yield f"http://127.0.0.1:{port}"
    page.close()


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("the end-to-end test needs Debian's chromium and chromium-driver (.ci/run installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(flag)
    b = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver), options=opts)
    yield b
    b.quit()


def _wait(predicate, timeout=90.0):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("timed out waiting for the page")


def test_page_end_to_end_in_chromium(server, browser, sample, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(server)
    _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#run"))
    run = browser.find_element(By.CSS_SELECTOR, "#run")
    run.click()  # nothing entered yet: a message, not a stack trace
    toast = _wait(
        lambda: [e for e in browser.find_elements(By.CSS_SELECTOR, ".toast-body") if e.text.strip()]
    )
    assert "Upload an image" in toast[0].text and "Traceback" not in browser.page_source

    browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(sample[0])
    _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#image img"))
    browser.find_element(By.CSS_SELECTOR, "#target textarea").send_keys(sample[1])
    browser.find_element(By.CSS_SELECTOR, "#contrast textarea").send_keys(sample[2])
    run.click()
    finer = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#finer img"))
    assert finer[0].get_attribute("src")
    details = _wait(lambda: browser.find_element(By.CSS_SELECTOR, "#details").text.strip())
    assert "Alder finch" in details and "Birch finch" in details
    browser.save_screenshot(str(tmp_path / "app.png"))


def test_the_page_runs_any_dense_method(tmp_path, cache, sample):
    path, target, contrast = sample
    gem = localize_for_app(path, target, contrast, None, 1.0, "testbed", models=cache, out_dir=tmp_path / "g")
    sclip = localize_for_app(
        path, target, contrast, None, 1.0, "testbed", models=cache, out_dir=tmp_path / "s", method="sclip"
    )
    assert "method `sclip`" in sclip.details and "method `gem`" in gem.details
    assert not np.array_equal(np.load(gem.files[0]), np.load(sclip.files[0]))
    with pytest.raises(AppInputError, match="dense method"):
        localize_for_app(path, target, contrast, None, 1.0, "testbed", models=cache, method="legrad")
