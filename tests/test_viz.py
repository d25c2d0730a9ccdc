"""Pictures of maps: drawn at the image's size, titled with what was contrasted, and only
heatmaps in [0, 1] drawn (anything else is refused, not clipped into a misleading picture)."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

import mmfinercam as mf
from mmfinercam.viz import blend, compare


@pytest.fixture()
def image():
    return Image.fromarray(np.full((30, 50, 3), 200, np.uint8))


def test_blend_is_the_image_where_the_map_is_zero_and_resizes_the_map(image):
    heat = torch.zeros(3, 5)
    heat[0, 0] = 1.0  # a low-resolution map: resized to the image
    out = blend(image, heat, opacity=0.5)
    assert out.size == image.size and out.mode == "RGB"
    pixels = np.asarray(out, np.float32)
    blue = np.asarray(matplotlib.colormaps["jet"](0.0)[:3]) * 255  # jet's colour for 0
    np.testing.assert_allclose(pixels[-1, -1], 0.5 * 200 + 0.5 * blue, atol=1)
    assert not np.allclose(pixels[0, 0], pixels[-1, -1])  # the hot corner is drawn


def test_overlay_says_what_was_contrasted(image):
    fig = mf.overlay(image, np.zeros((30, 50)), target="red wing", contrast=["blue wing"], alpha=0.6)
    assert fig.axes[0].get_title() == "red wing vs blue wing (alpha=0.6)"
    plt.close(fig)
    fig = compare(image, [("plain", np.zeros((30, 50))), ("finer", np.ones((30, 50)))], title="t")
    assert [ax.get_title() for ax in fig.axes] == ["image", "plain", "finer"]
    plt.close(fig)


def test_a_large_image_is_drawn_at_display_size_with_its_map(monkeypatch):
    """A scan many times what a figure shows is drawn at DISPLAY_SIDE on its longer side (it took
    seconds to resample at full size), its map resized with it; smaller images as they are."""
    from mmfinercam import viz

    monkeypatch.setattr(viz, "DISPLAY_SIDE", 64)
    big = Image.fromarray(np.full((120, 200, 3), 90, np.uint8))
    heat = np.zeros((120, 200), np.float32)
    heat[:, 100:] = 1.0  # the right half
    for fig in (mf.overlay(big, heat), compare(big, [("map", heat)])):
        picture, layer = _layers(fig)
        assert picture.get_array().shape[:2] == (38, 64) == layer.get_array().shape
        assert layer.get_array()[:, :30].max() == 0 and layer.get_array()[:, 34:].min() == 1
        plt.close(fig)
    small = mf.overlay(big.resize((50, 30)), heat[::4, ::4])
    assert small.axes[0].images[0].get_array().shape[:2] == (30, 50)
    plt.close(small)


def _layers(fig):
    """The image and heatmap layers of the first axes that has both."""
    ax = next(a for a in fig.axes if len(a.images) == 2)
    return ax.images[0], ax.images[1]


@pytest.mark.parametrize("draw", [mf.overlay, blend], ids=["overlay", "blend"])
def test_maps_that_are_not_heatmaps_are_refused(image, draw):
    scores = torch.linspace(-0.03, 0.05, 15).view(3, 5)  # raw Finer-CAM scores, not a heatmap
    with pytest.raises(ValueError, match="to_heatmap"):
        draw(image, scores)
    with pytest.raises(ValueError, match="NaN or infinity"):
        draw(image, torch.full((3, 5), float("nan")))
    with pytest.raises(ValueError, match="H×W"):
        draw(image, torch.zeros(1, 3, 5))
    heat = mf.finer.to_heatmap(scores[None], (30, 50))[0]  # what the message says to do
    drawn = draw(image, heat)
    plt.close("all")
    assert drawn is not None
