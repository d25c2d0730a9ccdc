"""Test-time smoothing (``mmfinercam.smoothing``): views, their inverse, and the finer grid."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmfinercam.explain import smoothing
from mmfinercam.explain.smoothing import View


def patch_means(x: torch.Tensor, patch: int = 8) -> dict[str, torch.Tensor]:
    """A stand-in model: each patch's score is its mean brightness (B×h×w)."""
    return {"scores": F.avg_pool2d(x.mean(1, keepdim=True), patch)[:, 0]}


def test_views_are_centred_sub_patch_offsets():
    assert smoothing.views((8, 8), shifts=1, flip=False) == [View(0, 0, False)]
    two = smoothing.views((8, 8), shifts=2, flip=True)
    assert len(two) == 8 and {(v.dy, v.dx) for v in two} == {(-2, -2), (-2, 2), (2, -2), (2, 2)}
    four = smoothing.views((16, 16), shifts=4, flip=False)
    assert sorted({v.dx for v in four}) == [-6, -2, 2, 6]  # 4 px apart, centred on 0
    with pytest.raises(ValueError, match="divide"):
        smoothing.views((16, 16), shifts=3)
    with pytest.raises(ValueError, match=">= 1"):
        smoothing.views((16, 16), shifts=0)


def test_restore_undoes_a_view_away_from_the_border():
    x = torch.arange(24 * 24, dtype=torch.float32).reshape(1, 24, 24)
    for view in smoothing.views((8, 8), shifts=2, flip=True):
        moved = smoothing.apply_view(x[:, None], view)[:, 0]
        assert moved[0, 10, 10] == x[0, 10 + view.dy, (23 - 10 if view.flip else 10) + view.dx]
        back = smoothing.restore_view(moved, view)
        assert torch.equal(back[:, 4:-4, 4:-4], x[:, 4:-4, 4:-4])


def test_smoothed_map_locates_a_part_inside_one_patch():
    """A bright 4×4 square in the top-left quarter of a patch: the plain 8-px grid cannot say
    where in the patch it is; the 4-px grid of the smoothed map peaks on its cell."""
    x = torch.zeros(1, 3, 32, 32)
    x[..., 8:12, 16:20] = 1.0  # patch (1, 2), its top-left 4×4 cell: fine cell (2, 4)
    plain = patch_means(x)["scores"]
    assert plain.shape == (1, 4, 4) and plain[0].argmax() == 1 * 4 + 2
    fine = smoothing.smoothed_maps(patch_means, x, (8, 8), ["scores"], shifts=2, flip=True)["scores"]
    assert fine.shape == (1, 8, 8)
    assert int(fine[0].argmax()) == 2 * 8 + 4
    # one view, no mirror: the map itself, upsampled and pooled to the same grid
    same = smoothing.smoothed_maps(patch_means, x, (8, 8), ["scores"], shifts=1, flip=False)["scores"]
    torch.testing.assert_close(same, plain)


def test_finer_cam_smoothing_keeps_contrasts_and_refines_the_grid(tiny_localizer):
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    plain = tiny_localizer.finer_cam(x, "a red wing", ["a blue wing", "a green wing"])
    smooth = tiny_localizer.finer_cam(x, "a red wing", ["a blue wing", "a green wing"], shifts=2, flip=True)
    assert plain.views == 1 and smooth.views == 8
    assert plain.scores.shape == (2, 4, 6) and smooth.scores.shape == (2, 8, 12)
    assert smooth.target_scores.shape == (2, 8, 12)
    torch.testing.assert_close(smooth.weights, plain.weights)  # contrasts from the image as given
    assert smooth.heatmaps.shape == (2, 64, 96)
    with pytest.raises(ValueError, match="divide"):
        tiny_localizer.finer_cam(x, "a red wing", ["a blue wing"], shifts=3)


def test_gradient_cams_smooth_too(tiny_localizer):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    res = tiny_localizer.finer_cam(x, "a red wing", ["a blue wing"], method="gradcam", shifts=2)
    assert res.views == 4 and res.scores.shape[-2:] == (8, 8) and torch.isfinite(res.scores).all()
