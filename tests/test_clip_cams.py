"""Gradient Finer-CAM on CLIP (y_k = image–text similarity), through Localizer.finer_cam."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pgc = pytest.importorskip("pytorch_grad_cam")


class CLIPLogits(torch.nn.Module):
    """What a grad-cam user writes by hand: image -> logit_scale * cos(z, t_k)."""

    def __init__(self, model, text):
        super().__init__()
        self.model, self.text = model, text

    def forward(self, x):
        z = F.normalize(self.model.encode_image(x), dim=-1)
        return self.model.logit_scale.exp() * z @ self.text.T


REFERENCE_BASES = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "scorecam": "ScoreCAM",
}


@pytest.mark.parametrize("method", list(REFERENCE_BASES))
def test_clip_gradient_finer_cam_equals_grad_cam_wrapper(tiny_localizer, tiny_model, sample_images, method):
    """Each base method over a hand-written CLIP logits wrapper in pytorch-grad-cam's FinerCAM."""
    prompts = ["a bird", "a fish", "a cat", "a dog"]
    prepared, _ = tiny_localizer.prepare(sample_images[2])
    x = prepared[0].pixels[None]
    res = tiny_localizer.finer_cam(x, prompts[0], prompts[1:], method=method, alpha=1.0)
    text = tiny_localizer.encode_text(prompts, tiny_localizer.templates)
    grid = x.shape[-1] // 16

    def reshape(t):
        return t[:, 1:].reshape(t.shape[0], grid, grid, t.shape[2]).permute(0, 3, 1, 2)

    layer = tiny_model.visual.transformer.resblocks[-1].ln_1
    base = getattr(pgc, REFERENCE_BASES[method])
    cam = pgc.FinerCAM(CLIPLogits(tiny_model, text), [layer], reshape_transform=reshape, base_method=base)
    outputs = CLIPLogits(tiny_model, text)(x).detach()
    refs = outputs[0].sub(outputs[0, 0]).abs().argsort()[1:4].tolist()
    from pytorch_grad_cam.utils.model_targets import FinerWeightedTarget

    ref = cam(x, targets=[FinerWeightedTarget(0, refs, 1.0)])
    assert res.heatmaps.shape == (1, 224, 224)  # the input tensor's size
    assert (res.heatmaps[0] - torch.from_numpy(ref[0])).abs().max() <= 1e-4
    torch.testing.assert_close(res.weights.sum(dim=1), torch.ones(1))


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam"])
def test_clip_gradient_methods_batch_equals_single(tiny_localizer, sample_images, method):
    same = [sample_images[0], sample_images[0][:, ::-1].copy()]
    batch = tiny_localizer.finer_cam(same, "a bird", ["a fish", "a cat"], method=method)
    assert batch.method == method and batch.target_scores is None
    for i, image in enumerate(same):
        single = tiny_localizer.finer_cam(image, "a bird", ["a fish", "a cat"], method=method)
        torch.testing.assert_close(batch.heatmaps[i], single.heatmaps[0], atol=1e-4, rtol=0)
    assert batch.heatmaps.shape == (2, 96, 128)
    assert batch.scores.shape == (2, 14, 19)


def test_clip_gradient_alpha_zero_is_plain_target(tiny_localizer, sample_images):
    a0 = tiny_localizer.finer_cam(sample_images[1], "a bird", ["a fish"], method="gradcam", alpha=0.0)
    alone = tiny_localizer.finer_cam(sample_images[1], "a bird", method="gradcam", alpha=1.0)
    torch.testing.assert_close(a0.scores, alone.scores, atol=1e-5, rtol=1e-4)


def test_clip_gradient_with_vocabulary(tiny_localizer, sample_images):
    vocab = ["a fish", "a cat", "a dog", "a tree", "a car"]
    dense = tiny_localizer.finer_cam(sample_images[0], "a bird", vocabulary=vocab)
    grad = tiny_localizer.finer_cam(sample_images[0], "a bird", vocabulary=vocab, method="layercam")
    assert grad.contrast == dense.contrast  # the same automatic contrasts, whatever the map


def test_scorecam_on_clip_runs(tiny_localizer, sample_images):
    res = tiny_localizer.finer_cam(sample_images[2], "a bird", ["a fish"], method="scorecam")
    assert res.heatmaps.shape == (1, 128, 128)
    assert 0.0 <= float(res.heatmaps.min()) and float(res.heatmaps.max()) <= 1.0
