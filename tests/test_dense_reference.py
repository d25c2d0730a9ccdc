"""Each dense method, and LeGrad and PAMR, equals its authors' implementation on the same input.

The reference maps were made by ``scripts/dense_reference.py make`` from each reference's
public code at the commit it names (MaskCLIP and ClearCLIP from mc-lan/ClearCLIP, SCLIP,
NACLIP, CLIP Surgery and its feature surgery, LeGrad, and PAMR as NACLIP ships it); the weights
are rebuilt here from the config and the seed, so no checkpoint is stored.
"""

from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

import mmfinercam as mf
from mmfinercam.explain.cams import clip_cam, logit_score
from mmfinercam.explain.refine import pamr
from mmfinercam.testing import build_tiny_open_clip, deterministic_image

DATA = Path(__file__).parent / "data" / "dense_reference.pt"
REFERENCE = torch.load(DATA)
CASES = [(m, k) for m, maps in REFERENCE["maps"].items() for k in maps]


@pytest.fixture(scope="module")
def localizer():
    model = build_tiny_open_clip(REFERENCE["seed"], REFERENCE["config"])
    with torch.no_grad():
        for p in model.parameters():  # the references hold their weights as float16 values
            p.copy_(p.half().float())
    return mf.Localizer.from_open_clip(model, open_clip.get_tokenizer("ViT-B-16"))


def _inputs(key: str):
    h, w = (int(s) for s in key.split("x"))
    image = deterministic_image(max(h, w), seed=h + w)[..., :h, :w].contiguous()
    dim = REFERENCE["config"]["embed_dim"]
    gen = torch.Generator().manual_seed(REFERENCE["seed"] + 1)
    return image, F.normalize(torch.randn(REFERENCE["texts"], dim, generator=gen), dim=-1)


@pytest.mark.parametrize(("method", "key"), CASES)
def test_method_equals_its_reference(localizer, method, key):
    image, texts = _inputs(key)
    expected = REFERENCE["maps"][method][key]
    stride = REFERENCE["stride"]
    if method == "pamr":  # two random maps on the 16-px grid, refined by the image
        maps = torch.randn(1, 2, 14, 14, generator=torch.Generator().manual_seed(REFERENCE["seed"] + 2))
        ours = pamr(image, maps)[0][..., ::stride, ::stride]
        assert (ours - pamr(image, maps, iterations=9)[0][..., ::stride, ::stride]).abs().max() > 1e-3
    elif method == "legrad":
        run = clip_cam(localizer.backend, "legrad")
        maps = []
        for k in range(len(texts)):
            relevance = run(image, texts, logit_score(torch.tensor([k]))).layer_maps[0]
            up = F.interpolate(relevance[:, None], scale_factor=16, mode="bilinear")[:, 0]
            lo, hi = up.amin(dim=(-2, -1), keepdim=True), up.amax(dim=(-2, -1), keepdim=True)
            maps.append((up - lo) / (hi - lo))
        ours = torch.cat(maps)[..., ::stride, ::stride]
    elif method == "clipsurgery-fs":  # CLIP Surgery's feature surgery over the same prompts
        ours = localizer.similarity_maps(image, texts, method="clipsurgery", depth=7, feature_surgery=True)[0]
    else:
        ours = localizer.similarity_maps(image, texts, method=method, depth=7)[0]
    assert ours.shape == expected.shape
    assert (ours - expected).abs().max() <= 1e-4
    assert expected.std() > 0.01  # the maps are not flat: the comparison means something


def test_the_methods_differ_from_each_other(localizer):
    image, texts = _inputs("224x224")
    dense = [m for m in REFERENCE["maps"] if m in mf.options.dense_methods()]
    maps = {m: localizer.similarity_maps(image, texts, method=m, depth=7) for m in dense}
    names = sorted(maps)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert (maps[a] - maps[b]).abs().max() > 1e-3, (a, b)
