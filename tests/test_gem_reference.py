"""GEM equals the reference gem_torch 1.0.1 (open_clip 2.23) on the same weights and prompts.

The reference maps were made by ``scripts/gem_reference.py make``; the weights are rebuilt from
their names and the seed, so no checkpoint is stored.
"""

from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

import mmfinercam as mf
from mmfinercam.testing import build_tiny_open_clip, deterministic_image

DATA = Path(__file__).parent / "data" / "gem_reference.pt"


@pytest.fixture(scope="module")
def reference():
    return torch.load(DATA)


@pytest.fixture(scope="module")
def localizer(reference):
    model = build_tiny_open_clip(reference["seed"], reference["config"])
    return mf.Localizer.from_open_clip(model, open_clip.get_tokenizer("ViT-B-16"))


@pytest.mark.parametrize("size", [224, 448])
def test_gem_maps_equal_reference(reference, localizer, size):
    image = deterministic_image(size, seed=size)
    prompts = [reference["template"].format(p) for p in reference["prompts"]]
    grid = localizer.similarity_maps(image, prompts, method="gem", depth=reference["depth"])
    assert grid.shape == (1, len(prompts), size // 16, size // 16)
    full = F.interpolate(grid, size=(size, size), mode="bilinear")
    stride = reference["stride"]
    ours = full[..., ::stride, ::stride]
    expected = reference["maps"][size]
    assert ours.shape == expected.shape
    assert (ours - expected).abs().max() <= 1e-4
    # the maps are not trivially flat: the comparison means something
    assert expected.std() > 0.01


def test_raw_method_differs_from_gem(localizer):
    image = deterministic_image(224, seed=3)
    gem = localizer.similarity_maps(image, ["a photo of a bird."], method="gem")
    raw = localizer.similarity_maps(image, ["a photo of a bird."], method="raw")
    assert gem.shape == raw.shape
    assert not torch.allclose(gem, raw, atol=1e-3)


def test_depth_out_of_range(localizer):
    image = deterministic_image(224, seed=3)
    with pytest.raises(ValueError, match="depth"):
        localizer.similarity_maps(image, ["x"], depth=20)
    with pytest.raises(ValueError, match="depth"):
        localizer.similarity_maps(image, ["x"], depth=1)


def test_sharp_self_self_attention_keeps_each_token_local():
    """With a very sharp temperature each (distinct) token attends only to itself: output ≈ v."""
    from mmfinercam.explain.gem import self_self_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8) for _ in range(3))
    out = self_self_attention(q, k, v, inv_temp=1e4)
    torch.testing.assert_close(out, v, atol=1e-4, rtol=0)
    soft = self_self_attention(q, k, v, inv_temp=torch.full((2, 1, 1, 1), 0.1))
    assert (soft - v).abs().max() > 0.1  # a soft temperature mixes tokens


def test_one_temperature_for_all_equals_the_same_per_image():
    """A fixed temperature goes to SDPA as its scale; per-image ones scale the queries: same maps."""
    from mmfinercam.explain.gem import self_self_attention

    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 3, 10, 8) for _ in range(3))
    temps = torch.full((2, 1, 1, 1), 3.0)
    for iterations in (1, 2):
        fixed = self_self_attention(q, k, v, inv_temp=3.0, iterations=iterations)
        per_image = self_self_attention(q, k, v, inv_temp=temps, iterations=iterations)
        torch.testing.assert_close(fixed, per_image, atol=1e-5, rtol=1e-5)


def test_testbed_carries_its_gem_settings():
    """The GEM depth and temperature chosen on the validation split travel with the model."""
    import json

    from mmfinercam.testbed.model import MODEL_DIR

    meta = json.loads((MODEL_DIR / "testbed.json").read_text())
    chosen = meta["gem_depth_selection"]["scores"]
    best = max(chosen, key=chosen.get)
    assert best == f"depth={meta['gem_depth']} temperature={meta['gem_temperature']}"
    loc = mf.load("testbed", device="cpu")
    assert loc.info.default_depth == meta["gem_depth"]
    assert loc.info.gem_temperature == meta["gem_temperature"]
    assert "8 views" in meta["gem_depth_selection"]["metric"]  # chosen for the headline row


@pytest.mark.parametrize("size", [(64, 64), (70, 45)])
def test_patch_embedding_as_one_matrix_product_equals_the_convolution(size):
    """Patchifying convolutions run as a matrix product (a ragged edge dropped, as the stride
    drops it); any other convolution runs as it is."""
    from mmfinercam.backends._ops import patch_embed

    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    for conv, fast in [
        (torch.nn.Conv2d(3, 24, 8, 8, bias=False), True),
        (torch.nn.Conv2d(3, 24, (8, 4), (8, 4)), True),  # rectangular patches, with a bias
        (torch.nn.Conv2d(3, 24, 8, 4), False),  # overlapping: not a patchify
    ]:
        conv = conv.double()
        ref = conv(x)
        tokens, grid = patch_embed(x, conv)
        assert grid == tuple(ref.shape[-2:])
        torch.testing.assert_close(tokens, ref.flatten(2).transpose(1, 2), rtol=1e-12, atol=1e-12)
        assert tokens.is_contiguous() == fast  # the product's output, or the conv's transposed view
