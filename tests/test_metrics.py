"""Each metric against a case computed by hand."""

from __future__ import annotations

import pytest
import torch

from mmfinercam import metrics as M


def test_top_fraction_mask_counts_and_picks_the_highest():
    maps = torch.arange(16.0).view(1, 4, 4)
    mask = M.top_fraction_mask(maps, 0.25)
    assert mask.sum() == 4
    assert mask.view(-1)[12:].all() and not mask.view(-1)[:12].any()
    assert M.top_fraction_mask(maps, 0.0).sum() == 0
    with pytest.raises(ValueError):
        M.top_fraction_mask(maps, 1.5)


def _predictor(images):
    """p(class 0) grows with the mean of channel 0 in the left half; class 1 the right half."""
    left = images[:, 0, :, :2].mean(dim=(1, 2))
    right = images[:, 0, :, 2:].mean(dim=(1, 2))
    logits = torch.stack([left, right, torch.zeros_like(left)], dim=1)
    return torch.softmax(logits, dim=1)


def test_relative_confidence_drop_by_hand():
    images = torch.ones(1, 1, 4, 4)
    maps = torch.zeros(1, 4, 4)
    maps[0, :, :2] = 1.0  # the map points at the left half (evidence for class 0)
    rd = M.relative_confidence_drop(_predictor, images, maps, torch.tensor([0]), torch.tensor([1]), 0.5)
    e = torch.e
    p_before = torch.tensor([e, e, 1.0]) / (2 * e + 1)
    p_after = torch.tensor([1.0, e, 1.0]) / (e + 2)  # left half zeroed
    expected = (p_before[0] - p_after[0]) - (p_before[1] - p_after[1])
    torch.testing.assert_close(rd, expected.view(1))
    assert rd.item() > 0
    # pointing at the other half reverses the sign
    rd_wrong = M.relative_confidence_drop(
        _predictor, images, 1 - maps, torch.tensor([0]), torch.tensor([1]), 0.5
    )
    assert rd_wrong.item() < 0


def test_deletion_and_insertion_auc_by_hand():
    images = torch.ones(1, 1, 2, 2)

    def predict(x):  # p(class 0) = fraction of pixels still equal to 1
        p = (x == 1).float().mean(dim=(1, 2, 3))
        return torch.stack([p, 1 - p], dim=1)

    maps = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
    # deleting 0, 1, 2, 3, 4 pixels: p = 1, .75, .5, .25, 0 -> area 0.5
    torch.testing.assert_close(
        M.deletion_auc(predict, images, maps, torch.tensor([0]), steps=4), torch.tensor([0.5])
    )
    curve = M._order_curve(predict, torch.zeros_like(images), images, maps, torch.tensor([0]), 4)
    torch.testing.assert_close(curve, torch.tensor([[0.0, 0.25, 0.5, 0.75, 1.0]]))
    ins = M.insertion_auc(predict, images, maps, torch.tensor([0]), steps=4)
    assert ins.shape == (1,) and 0.0 <= ins.item() <= 1.0


def test_pointing_game_by_hand():
    maps = torch.zeros(3, 5, 5)
    maps[0, 1, 1] = 1.0  # on the mask
    maps[1, 4, 4] = 1.0  # off the mask, 3 px away
    masks = torch.zeros(3, 5, 5, dtype=torch.bool)
    masks[:, 0:2, 0:2] = True
    assert M.pointing_game(maps, masks).tolist() == [True, False, False]  # map 2 is flat: a miss
    assert M.pointing_game(maps, masks, tolerance=3).tolist() == [True, True, False]


def test_energy_pointing_game_by_hand():
    maps = torch.tensor([[[1.0, 3.0], [0.0, 4.0]]])
    masks = torch.tensor([[[True, True], [False, False]]])
    torch.testing.assert_close(M.energy_pointing_game(maps, masks), torch.tensor([0.5]))
    assert M.energy_pointing_game(torch.zeros(1, 2, 2), masks).item() == 0.0


def test_mask_iou_by_hand():
    maps = torch.tensor([[[0.9, 0.6], [0.2, 0.1]]])
    masks = torch.tensor([[[True, False], [True, False]]])
    torch.testing.assert_close(M.mask_iou(maps, masks, 0.5), torch.tensor([1 / 3]))
    torch.testing.assert_close(M.mask_iou(maps, masks, 0.95), torch.tensor([0.0]))


def test_gaussian_blur_preserves_constant_and_mean():
    x = torch.full((1, 3, 8, 8), 2.0)
    torch.testing.assert_close(M.gaussian_blur(x, 2.0), x)
    y = torch.zeros(1, 1, 9, 9)
    y[0, 0, 4, 4] = 1.0
    b = M.gaussian_blur(y, 1.0)
    assert b[0, 0, 4, 4] < 1.0 and abs(b.sum().item() - 1.0) < 1e-3


def test_shape_errors():
    with pytest.raises(ValueError, match="B×H×W"):
        M.pointing_game(torch.zeros(4, 4), torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="match"):
        M.mask_iou(torch.zeros(1, 4, 4), torch.zeros(1, 3, 4, dtype=torch.bool))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_maps_are_refused(bad):
    """A NaN would be taken as the peak (the pointing game scored it a hit) or rank anywhere."""
    maps = torch.rand(2, 4, 4)
    maps[1, 0, 0] = bad
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, 0, 0] = True
    for metric in (M.pointing_game, M.energy_pointing_game, M.mask_iou):
        with pytest.raises(ValueError, match="NaN or infinite"):
            metric(maps, masks)
    with pytest.raises(ValueError, match="NaN or infinite"):
        M.top_fraction_mask(maps, 0.1)


def test_maps_and_classes_must_fit_the_images_and_the_predictor():
    """A single map for a batch used to broadcast over it (every image scored with the first
    image's map), and class indices of another length broadcast too."""
    images = torch.ones(2, 1, 4, 4)
    maps, one = torch.rand(2, 4, 4), torch.tensor([0, 0])
    for metric in (M.deletion_auc, M.insertion_auc):
        with pytest.raises(ValueError, match="one H×W map for each image"):
            metric(_predictor, images, maps[:1], one)
        with pytest.raises(ValueError, match="one H×W map for each image"):
            metric(_predictor, images, maps[:, :3], one)
        with pytest.raises(ValueError, match="2 class indices"):
            metric(_predictor, images, maps, torch.tensor([0]))
        with pytest.raises(ValueError, match=r"lie in 0\.\.2"):
            metric(_predictor, images, maps, torch.tensor([0, 3]))
        with pytest.raises(ValueError, match="steps"):
            metric(_predictor, images, maps, one, steps=0)
    with pytest.raises(ValueError, match="one H×W map for each image"):
        M.relative_confidence_drop(_predictor, images, maps[:1], one, torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="contrast must be 2 class indices"):
        M.relative_confidence_drop(_predictor, images, maps, one, torch.tensor([1]))


def test_blur_width_and_pointing_tolerance_must_be_sensible():
    with pytest.raises(ValueError, match="sigma"):
        M.gaussian_blur(torch.ones(1, 1, 4, 4), 0.0)  # a 0-wide Gaussian: NaN everywhere
    with pytest.raises(ValueError, match="sigma"):
        M.gaussian_blur(torch.ones(1, 1, 4, 4), -1.0)
    with pytest.raises(ValueError, match="tolerance"):
        M.pointing_game(torch.rand(1, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool), tolerance=-1)
