"""Gradient CAMs and classifier Finer-CAM, against pytorch-grad-cam on the same weights."""

from __future__ import annotations

import pytest
import torch

import mmfinercam as mf
from mmfinercam.explain.cams import (
    ClassifierFinerCAM,
    GradCAM,
    finer_target,
    logit_score,
    reference_classes,
)

timm = pytest.importorskip("timm")
pgc = pytest.importorskip("pytorch_grad_cam")


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=10).eval()


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=96).eval()


def _vit_reshape(tensor, height=6, width=6):
    return tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2)).permute(0, 3, 1, 2)


def _images(n=3, size=96, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ["resnet", "vit"])
@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_finer_cam_equals_pytorch_grad_cam(request, arch, alpha):
    model = request.getfixturevalue(arch)
    x = _images()
    if arch == "resnet":
        layer, reshape = model.layer4[-1], None
    else:
        layer, reshape = model.blocks[-1].norm1, _vit_reshape
    ref = pgc.FinerCAM(model, [layer], reshape_transform=reshape)(
        x, alpha=alpha, comparison_categories=[1, 2, 3]
    )
    ours = ClassifierFinerCAM(model, method="gradcam")(x, alpha=alpha)
    assert ours.heatmaps.shape == (3, 96, 96)
    assert (ours.heatmaps - torch.from_numpy(ref)).abs().max() <= 1e-5


@pytest.mark.parametrize("arch", ["resnet", "vit"])
def test_plain_gradcam_equals_pytorch_grad_cam(request, arch):
    model = request.getfixturevalue(arch)
    x = _images(seed=2)
    if arch == "resnet":
        layer, reshape = model.layer4[-1], None
    else:
        layer, reshape = model.blocks[-1].norm1, _vit_reshape
    ref = pgc.GradCAM(model, [layer], reshape_transform=reshape)(x, targets=None)
    from mmfinercam.explain.cams import find_target_layer

    found, grid = find_target_layer(model)
    assert found is layer
    with torch.no_grad():
        top = model(x).argmax(dim=1)
    out = GradCAM(model, [found], grid)(x, logit_score(top))
    assert (out.heatmaps - torch.from_numpy(ref)).abs().max() <= 1e-5


@pytest.mark.parametrize(
    "method, reference",
    [
        ("gradcam++", "GradCAMPlusPlus"),
        ("xgradcam", "XGradCAM"),
        ("hirescam", "HiResCAM"),
        ("layercam", "LayerCAM"),
        ("scorecam", "ScoreCAM"),
    ],
)
def test_other_bases_equal_pytorch_grad_cam(resnet, method, reference):
    """Score-CAM at layer1 (64 channels: 64 masked passes an image, not layer4's 512)."""
    x = _images(seed=3)
    layer = resnet.layer1[-1] if method == "scorecam" else resnet.layer4[-1]
    ref = pgc.FinerCAM(resnet, [layer], base_method=getattr(pgc, reference))(x, alpha=1.0)
    ours = ClassifierFinerCAM(resnet, target_layer=layer, method=method)(x, alpha=1.0)
    assert (ours.heatmaps - torch.from_numpy(ref)).abs().max() <= 1e-5


def test_scorecam_runs_and_localizes_a_planted_class():
    """A model whose class 1 fires on a bright top-left square: Score-CAM points there."""

    class Planted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Conv2d(3, 4, 8, stride=8)
            with torch.no_grad():
                self.features.weight.zero_()
                self.features.bias.zero_()
                self.features.weight[0] = 1.0 / 192

        def forward(self, x):
            f = torch.relu(self.features(x))
            s = f[:, 0].amax(dim=(1, 2))
            return torch.stack([torch.zeros_like(s), 4 * s, 2 * s], dim=1)

    x = torch.zeros(1, 3, 32, 32)
    x[:, :, :8, :8] = 1.0
    res = ClassifierFinerCAM(Planted(), target_layer="features", method="scorecam")(x, target=[1])
    y, xx = divmod(int(res.heatmaps[0].argmax()), 32)
    assert y < 12 and xx < 12


def test_alpha_zero_equals_plain_base(resnet):
    x = _images(seed=4)
    finer = ClassifierFinerCAM(resnet)(x, alpha=0.0)
    with torch.no_grad():
        top = resnet(x).argmax(dim=1)
    plain = GradCAM(resnet, [resnet.layer4[-1]])(x, logit_score(top))
    # alpha=0 explains y_c * s / (s + 1e-9) with s = sum_i p_i: the plain logit up to 1e-9
    torch.testing.assert_close(finer.heatmaps, plain.heatmaps, atol=1e-4, rtol=0)
    no_refs = ClassifierFinerCAM(resnet)(x, references=torch.empty(3, 0, dtype=torch.long))
    torch.testing.assert_close(no_refs.heatmaps, plain.heatmaps, atol=1e-6, rtol=0)


def test_batch_equals_one_by_one(vit):
    x = _images(n=3, seed=5)
    cam = ClassifierFinerCAM(vit)
    batch = cam(x, alpha=1.0)
    for i in range(3):
        single = cam(x[i : i + 1], alpha=1.0)
        torch.testing.assert_close(batch.heatmaps[i], single.heatmaps[0], atol=1e-5, rtol=0)
        assert batch.references[i].tolist() == single.references[0].tolist()


def test_explicit_references_and_targets(resnet):
    x = _images(n=2, seed=6)
    res = ClassifierFinerCAM(resnet)(x, target=[3, 7], references=[[4, 5], [1, 2]], alpha=0.8)
    assert res.target.tolist() == [3, 7] and res.references.tolist() == [[4, 5], [1, 2]]
    torch.testing.assert_close(res.weights.sum(dim=1), torch.ones(2))


def test_references_by_rank_and_finer_target_formula():
    logits = torch.tensor([[2.0, 1.9, 0.0, 1.5, 2.3]])
    target, refs = reference_classes(logits, torch.tensor([0]))
    assert target.tolist() == [0] and refs.tolist() == [[1, 4, 3]]  # |gaps| .1 .3 .5
    y = logits.clone().requires_grad_(True)
    value = finer_target(y, target, refs, 1.0)
    p = torch.softmax(logits, dim=1)[0]
    expected = sum(p[i] * (2.0 - logits[0, i]) for i in (1, 4, 3)) / (p[[1, 4, 3]].sum() + 1e-9)
    torch.testing.assert_close(value, expected.view(1))
    value.sum().backward()
    assert y.grad.abs().sum() > 0  # the softmax weights are not detached


def test_bad_input(resnet):
    x = _images(n=1)
    with pytest.raises(mf.MMFinerCAMError, match="out of range"):
        ClassifierFinerCAM(resnet)(x, target=[12])
    with pytest.raises(mf.MMFinerCAMError, match="out of range"):
        ClassifierFinerCAM(resnet)(x, target=[1], references=[[2, 99]])
    with pytest.raises(mf.MMFinerCAMError, match="no layer named 'layer9'"):
        ClassifierFinerCAM(resnet, target_layer="layer9")
    with pytest.raises(ValueError, match="unknown CAM method"):
        ClassifierFinerCAM(resnet, method="magic")
    with pytest.raises(ValueError, match="alpha"):
        ClassifierFinerCAM(resnet)(x, alpha=-1)


def test_classes_for_all_images_or_one_each(resnet):
    x = _images(n=2, seed=7)
    cam = ClassifierFinerCAM(resnet)
    each = cam(x, target=[3, 3], references=[[4, 5], [4, 5]])
    for shared in (cam(x, target=3, references=[4, 5]), cam(x, target=[3], references=[[4, 5]])):
        assert shared.target.tolist() == [3, 3] and shared.references.tolist() == [[4, 5], [4, 5]]
        torch.testing.assert_close(shared.heatmaps, each.heatmaps)
    for bad, message in [
        (dict(target=[1, 2, 3]), "one class or one an image"),
        (dict(references=[[1], [2], [3]]), "a list an image"),
        (dict(target=1.5), "whole class numbers"),
        (dict(target=[1, 2], references=[[4, 1], [4, 5]]), "the target itself"),
        (dict(contrast_ranks=(0, 1)), "distinct whole numbers from 1"),
        (dict(contrast_ranks=(1, 1)), "distinct whole numbers from 1"),
        (dict(contrast_ranks=(10, 11)), "leave no contrast: there are 9 classes besides the target"),
    ]:
        with pytest.raises(mf.MMFinerCAMError, match=message):
            cam(x, **bad)
    with pytest.raises(mf.ImageLoadError, match="float B×C×H×W"):
        cam(x[0])
    with pytest.raises(mf.ImageLoadError, match="float B×C×H×W"):
        cam((x * 50).to(torch.uint8))


def test_an_image_with_nan_is_reported_and_the_rest_explained(resnet):
    x = _images(n=3, seed=8)
    broken = x.clone()
    broken[1, 0, 5, 5] = float("nan")
    cam = ClassifierFinerCAM(resnet)
    with pytest.warns(UserWarning, match="tensor #1"):
        res = cam(broken, target=[2, 3, 4])
    assert res.indices == [0, 2] and [f.index for f in res.failed] == [1]
    clean = cam(x[[0, 2]], target=[2, 4])
    assert res.target.tolist() == [2, 4]
    torch.testing.assert_close(res.heatmaps, clean.heatmaps)
    assert cam(x).indices == [0, 1, 2] and cam(x).failed == []
    with pytest.warns(UserWarning), pytest.raises(mf.ImageLoadError, match="every image"):
        cam(torch.full((2, 3, 32, 32), float("inf")))


TORCHVISION_MODELS = ["resnet18", "vgg11", "mobilenet_v3_small", "vit_b_16", "swin_t", "regnet_y_400mf"]
TORCHVISION_MODELS += ["shufflenet_v2_x0_5"]


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_target_layer_found_for_torchvision(name):
    """The layer is found, and the maps equal grad-cam's there (with the reshape grad-cam needs:
    ViT's tokens on their grid, Swin's channels-last maps permuted, which ours does itself)."""
    import torchvision

    from mmfinercam.explain.cams import find_target_layer

    torch.manual_seed(0)
    kwargs = {"image_size": 64} if name == "vit_b_16" else {}
    model = getattr(torchvision.models, name)(weights=None, num_classes=5, **kwargs).eval()
    x = _images(n=2, size=64)
    res = ClassifierFinerCAM(model)(x, alpha=1.0)
    assert res.heatmaps.shape == (2, 64, 64) and res.references.shape == (2, 3)
    layer, _ = find_target_layer(model)
    reshapes = {"vit_b_16": lambda t: _vit_reshape(t, 4, 4), "swin_t": lambda t: t.permute(0, 3, 1, 2)}
    reshape = reshapes.get(name)
    ref = pgc.FinerCAM(model, [layer], reshape_transform=reshape)(x, alpha=1.0)
    assert (res.heatmaps - torch.from_numpy(ref)).abs().max() <= 1e-5


HF_CLASSIFIERS = {  # name: (config, model, prefix tokens before the patches)
    "vit": ("ViTConfig", "ViTForImageClassification", 1),
    "deit": ("DeiTConfig", "DeiTForImageClassificationWithTeacher", 2),  # class + distillation
    "dinov2": ("Dinov2Config", "Dinov2ForImageClassification", 1),
    "dinov2-registers": ("Dinov2WithRegistersConfig", "Dinov2WithRegistersForImageClassification", 5),
}


@pytest.mark.parametrize("name", list(HF_CLASSIFIERS))
def test_transformers_classifiers_need_no_wrapper(name):
    """A transformers classifier returns an output object, not logits, and its layers sit at
    paths that change between versions: both are handled (the peers' users write a wrapper and
    a reshape_transform), and the maps equal grad-cam's over that hand-written wrapper."""
    transformers = pytest.importorskip("transformers")
    config_name, model_name, prefix = HF_CLASSIFIERS[name]
    if not hasattr(transformers, model_name):
        pytest.skip(f"this transformers has no {model_name}")
    from mmfinercam.explain.cams import find_target_layer

    config = getattr(transformers, config_name)(
        image_size=64, patch_size=16, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, num_labels=6, **({"num_register_tokens": 4} if "registers" in name else {}),
    )  # fmt: skip
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(config).eval()

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x).logits

    def grid(t):
        return t[:, prefix:].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    layer, _ = find_target_layer(model)
    x = _images(n=3, size=64, seed=6)
    ref = pgc.FinerCAM(Logits(), [layer], reshape_transform=grid)(x, alpha=1.0)
    ours = ClassifierFinerCAM(model)(x, alpha=1.0)
    assert ours.heatmaps.shape == (3, 64, 64) and ours.layer_maps[0].shape == (3, 4, 4)
    assert (ours.heatmaps - torch.from_numpy(ref)).abs().max() <= 1e-5


def test_model_outputs_are_read_as_logits():
    from mmfinercam.explain.cams import model_logits

    y = torch.randn(2, 5)
    for wrapped in (y, {"logits": y, "loss": None}, (y, torch.zeros(1)), [y]):
        assert model_logits(wrapped) is y
    with pytest.raises(mf.MMFinerCAMError, match="must return B×K logits .*got \\(2, 5, 3\\)"):
        model_logits(torch.zeros(2, 5, 3))
    with pytest.raises(mf.MMFinerCAMError, match="got str"):
        model_logits("logits")


@pytest.mark.parametrize(
    "name, size",
    [
        ("efficientnet_b0", 96),
        ("regnety_002", 96),
        ("mobilenetv3_small_100", 96),
        ("swin_tiny_patch4_window7_224", 224),
    ],
)
def test_timm_models_by_their_feature_info(name, size):
    """timm models without ``layer4``/``stages``/``features`` are explained at the last stage
    their own ``feature_info`` names; Swin's channels-last maps are laid out channels first.
    The maps equal grad-cam's at that layer (with the permute Swin needs there)."""
    from mmfinercam.explain.cams import ChannelsLast, find_target_layer

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=6).eval()
    layer, reshape = find_target_layer(model)
    assert layer is dict(model.named_modules())[model.feature_info[-1]["module"]]
    assert isinstance(reshape, ChannelsLast) == name.startswith("swin")

    def channels_first(t):
        return t.permute(0, 3, 1, 2)

    x = _images(n=2, size=size, seed=7)
    ref = pgc.FinerCAM(model, [layer], reshape_transform=channels_first if reshape else None)(x, alpha=1.0)
    ours = ClassifierFinerCAM(model)(x, alpha=1.0)
    assert ours.layer_maps[0].shape == ((2, 7, 7) if reshape else (2, 3, 3))
    assert (ours.heatmaps - torch.from_numpy(ref)).abs().max() <= 1e-5
    if reshape:  # a layer the user names inside a channels-last model is laid out the same way
        inner = model.layers[2]
        ref = pgc.FinerCAM(model, [inner], reshape_transform=channels_first)(x, alpha=1.0)
        ours = ClassifierFinerCAM(model, target_layer="layers.2")(x, alpha=1.0)
        assert ours.layer_maps[0].shape == (2, 14, 14)
        assert (ours.heatmaps - torch.from_numpy(ref)).abs().max() <= 1e-5
