"""The dense methods and LeGrad on every backend: parity, Finer-CAM on top, where each is defined."""

from __future__ import annotations

import open_clip
import pytest
import torch

import mmfinercam as mf
from mmfinercam.errors import ConfigError, UnsupportedModelError
from mmfinercam.explain.clipsurgery import feature_surgery
from mmfinercam.explain.naclip import neighbourhood
from mmfinercam.options import dense_methods
from mmfinercam.testing import deterministic_image, open_clip_to_transformers

NEW = ["maskclip", "sclip", "clearclip", "naclip", "clipsurgery"]


@pytest.fixture(scope="module")
def pair(tiny_model):
    pytest.importorskip("transformers")
    tok = open_clip.get_tokenizer("ViT-B-16")
    return mf.Localizer.from_open_clip(tiny_model, tok), mf.Localizer.from_transformers(
        open_clip_to_transformers(tiny_model), tok
    )


def test_every_method_is_registered_with_gem_first():
    names = dense_methods()
    assert names[:2] == ["gem", "raw"] and set(NEW) <= set(names)
    assert "legrad" in mf.options.gradient_methods()


@pytest.mark.parametrize("method", NEW)
def test_open_clip_and_transformers_give_the_same_maps(pair, method):
    oc, hf = pair
    x = deterministic_image((224, 288), seed=5)
    prompts = ["a photo of a bird.", "a red wing"]
    a = oc.similarity_maps(x, prompts, method=method)
    b = hf.similarity_maps(x, prompts, method=method)
    assert a.shape == (1, 2, 14, 18)
    assert (a - b).abs().max() <= 1e-4


def test_legrad_is_the_same_on_both_backends(pair):
    oc, hf = pair
    x = deterministic_image(224, seed=6)
    a = oc.finer_cam(x, "a bird", ["a fish", "a cat"], method="legrad")
    b = hf.finer_cam(x, "a bird", ["a fish", "a cat"], method="legrad")
    assert (a.scores - b.scores).abs().max() <= 1e-4 * a.scores.abs().max()
    assert a.scores.min() >= 0 and a.heatmaps.max() == pytest.approx(1.0)


@pytest.mark.parametrize("method", NEW)
def test_finer_cam_on_each_method(tiny_localizer, method):
    x = deterministic_image(224, seed=7)
    plain = tiny_localizer.finer_cam(x, "a bird", ["a fish", "a cat"], method=method, alpha=0.0)
    finer = tiny_localizer.finer_cam(x, "a bird", ["a fish", "a cat"], method=method, alpha=1.0)
    text = tiny_localizer.encode_text(["a bird"], tiny_localizer.templates)
    own = tiny_localizer.similarity_maps(x, text, method=method)[0, 0]
    torch.testing.assert_close(plain.scores[0], own, atol=1e-5, rtol=0)  # alpha 0: the target's own map
    assert finer.method == method and torch.isfinite(finer.scores).all()
    assert (finer.scores - plain.scores).abs().max() > 1e-4  # the contrasts take something away


@pytest.mark.parametrize("kind", ["siglip", "siglip2"])
def test_siglip_runs_every_dense_method(kind):
    pytest.importorskip("transformers")
    from test_transformers import _siglip_localizer

    loc = _siglip_localizer(kind)
    x = torch.randn(2, 3, 64, 64)
    for method in NEW:
        maps = loc.similarity_maps(x, ["a", "b"], method=method)
        assert maps.shape == (2, 2, 4, 4) and torch.isfinite(maps).all(), method
        res = loc.finer_cam(x, "a", ["b", "c"], method=method)
        assert res.scores.shape == (2, 4, 4)


def test_a_timm_tower_runs_every_method_and_legrad():
    from open_clip.model import CLIP

    torch.manual_seed(0)  # open_clip with a timm ViT trunk pooled by its class token
    vision = dict(
        image_size=64, timm_model_name="vit_tiny_patch16_224", timm_pool="token", timm_proj="linear"
    )
    model = CLIP(embed_dim=32, vision_cfg=vision, text_cfg=dict(width=32, heads=2, layers=1)).eval()
    loc = mf.Localizer.from_open_clip(model, open_clip.get_tokenizer("ViT-B-16"))
    x = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(2))
    for method in [*NEW, "legrad"]:
        res = loc.finer_cam(x, "a", ["b"], method=method, templates=["{}"])
        assert res.scores.shape == (1, 4, 5) and torch.isfinite(res.scores).all(), method


def test_legrad_on_a_tower_without_a_class_token_is_one_line():
    pytest.importorskip("transformers")
    from test_transformers import _siglip_localizer

    loc = _siglip_localizer("siglip")
    with pytest.raises(UnsupportedModelError, match="legrad") as err:
        loc.finer_cam(torch.randn(1, 3, 64, 64), "a", ["b"], method="legrad")
    assert "\n" not in str(err.value)


def test_an_unknown_method_lists_the_known_ones(tiny_localizer):
    with pytest.raises(ConfigError, match="known: gem, raw, .*sclip.*legrad"):
        tiny_localizer.finer_cam(deterministic_image(224), "a", ["b"], method="segment-anything")
    with pytest.raises(ConfigError, match="known: gem, raw"):
        tiny_localizer.similarity_maps(deterministic_image(224), ["a"], method="nope")


def test_naclip_neighbourhood_is_a_gaussian_of_grid_distance():
    omega = neighbourhood((3, 4), 1, std=5.0, device=torch.device("cpu"), dtype=torch.float32)
    assert omega.shape == (13, 13)
    assert omega[0].abs().sum() == 0 and omega[:, 0].abs().sum() == 0  # the class token: no bias
    torch.testing.assert_close(omega[1:, 1:].diagonal(), torch.ones(12))
    # patches (0, 0) and (2, 3): squared distance 4 + 9
    assert omega[1, 1 + 2 * 4 + 3] == pytest.approx(torch.exp(torch.tensor(-13 / 50)).item())
    torch.testing.assert_close(omega, omega.T)


def test_feature_surgery_takes_away_what_the_prompts_share():
    maps = torch.randn(2, 3, 5, 5)
    shared = torch.randn(2, 1, 5, 5)
    out = feature_surgery(maps + shared, torch.zeros(2, 3))  # equal plausibility: weights 1
    torch.testing.assert_close(out, maps - maps.mean(dim=1, keepdim=True))
    torch.testing.assert_close(out.mean(dim=1), torch.zeros(2, 5, 5), atol=1e-6, rtol=0)
    # a more plausible prompt weighs more
    tilted = feature_surgery(torch.ones(1, 2, 1, 1), torch.tensor([[1.0, 0.0]]))
    assert tilted[0, 0, 0, 0] > 0 > tilted[0, 1, 0, 0]
