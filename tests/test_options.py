"""One options object, checked once where it is built; names that mean one thing; old names
that keep working for one release with a warning."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import mmfinercam as mf
from mmfinercam.cli import main


def test_options_normalize_what_they_take():
    options = mf.FinerOptions(alpha=np.float32(0.5), contrast_ranks=[np.int64(2), 1], depth=np.int64(3))
    assert options.alpha == 0.5 and isinstance(options.alpha, float)
    assert options.contrast_ranks == (2, 1) and options.depth == 3 and type(options.depth) is int
    assert mf.FinerOptions(shifts=2, flip=True).views == 8 and mf.FinerOptions().views == 1
    assert mf.FinerOptions(method="layercam").gradient and not mf.FinerOptions().gradient
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.alpha = 2.0  # type: ignore[misc]
    assert options.replace(alpha=0.0).alpha == 0.0
    with pytest.raises(mf.ConfigError, match="alpha"):  # a changed copy is checked again
        options.replace(alpha=-1.0)
    assert options.as_dict()["contrast_ranks"] == [2, 1]


@pytest.mark.parametrize(
    "settings, error, message",
    [
        (dict(alpha=float("nan")), mf.ConfigError, "alpha must be a finite number >= 0"),
        (dict(alpha=1e300), mf.ConfigError, r"at most 1e\+06"),  # float32 maps would be all NaN
        (dict(alpha="strong"), mf.ConfigError, "alpha must be a finite number"),
        (dict(weighting="max"), mf.ConfigError, "weighting must be one of softmax, uniform"),
        (dict(method="magic"), mf.ConfigError, "unknown method 'magic'"),
        (dict(depth=1), mf.ConfigError, "depth must be between 2"),
        (dict(depth=2.5), mf.ConfigError, "depth must be between 2"),
        (dict(contrast_ranks=()), mf.PromptError, "distinct whole numbers from 1"),
        (dict(contrast_ranks=(0, 1)), mf.PromptError, "distinct whole numbers from 1"),
        (dict(contrast_ranks="12"), mf.PromptError, "a list of whole numbers"),
        (dict(short_side=0), mf.ConfigError, "short_side must be a whole number >= 1"),
        (dict(shifts=2.0), mf.ConfigError, "shifts must be a whole number >= 1, got 2.0"),
        (dict(flip="yes"), mf.ConfigError, "flip must be True or False"),
    ],
)
def test_each_bad_setting_is_one_error_of_one_class(settings, error, message):
    with pytest.raises(error, match=message):
        mf.FinerOptions(**settings)


def test_settings_come_as_options_or_keywords_not_both(tiny_localizer, sample_images):
    options = mf.FinerOptions(alpha=0.5)
    via_options = tiny_localizer.finer_cam(sample_images[0], "a bird", ["a fish"], options=options)
    via_keywords = tiny_localizer.finer_cam(sample_images[0], "a bird", ["a fish"], alpha=0.5)
    torch.testing.assert_close(via_options.scores, via_keywords.scores)
    with pytest.raises(mf.ConfigError, match="options= or as keywords, not both"):
        tiny_localizer.finer_cam(sample_images[0], "a bird", ["a fish"], options=options, alpha=0.7)


def test_the_old_keyword_names_work_for_one_release_with_a_warning(tiny_localizer, sample_images):
    image = sample_images[0]
    new = tiny_localizer.finer_cam(image, "a bird", ["a fish"], short_side=48)
    with pytest.warns(DeprecationWarning, match=r"finer_cam\(image_size=...\) is now short_side="):
        old = tiny_localizer.finer_cam(image, "a bird", ["a fish"], image_size=48)
    torch.testing.assert_close(old.scores, new.scores)
    with pytest.warns(DeprecationWarning, match="is now short_side"):
        prepared, _ = tiny_localizer.prepare(image, image_size=48)
    assert min(prepared[0].pixels.shape[-2:]) == 48
    with pytest.raises(mf.ConfigError, match="give short_side= only"):
        tiny_localizer.finer_cam(image, "a bird", ["a fish"], image_size=48, short_side=48)


def test_the_old_name_of_the_classifier_ranks_works_with_a_warning():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=6).eval()
    cam = mf.ClassifierFinerCAM(model)
    x = torch.randn(1, 3, 64, 64)
    with pytest.warns(DeprecationWarning, match="is now contrast_ranks"):
        old = cam(x, ranks=(1, 2))
    new = cam(x, contrast_ranks=(1, 2))
    assert torch.equal(old.references, new.references) and old.references.shape == (1, 2)


def test_the_old_name_of_the_transformers_input_size_works_with_a_warning():
    from transformers import CLIPConfig, CLIPModel

    from mmfinercam.testing import build_tiny_open_clip, open_clip_to_transformers

    hf = open_clip_to_transformers(build_tiny_open_clip())
    assert isinstance(hf, CLIPModel) and isinstance(hf.config, CLIPConfig)
    with pytest.warns(DeprecationWarning, match="is now input_size"):
        loc = mf.Localizer.from_transformers(hf, None, image_size=112)
    assert loc.backend.image_config.size == (112, 112)


@pytest.mark.parametrize(
    "old, new",
    [
        (["--ranks", "1", "2"], ["--contrast-ranks", "1", "2"]),
        (["--image-size", "96"], ["--short-side", "96"]),
    ],
)
def test_the_old_option_names_of_the_command_line_still_work(old, new, tmp_path, capsys):
    sample = mf.testbed.shipped_samples()[0]
    base = ["localize", str(sample["path"]), "--target", sample["target"], "--vocabulary", "testbed-species"]
    base += ["--no-overlay", "--device", "cpu"]
    assert main([*base, *new, "--out", str(tmp_path / "new")]) == 0
    capsys.readouterr()
    assert main([*base, *old, "--out", str(tmp_path / "old")]) == 0
    said = capsys.readouterr().err
    assert f"{old[0]} is now {new[0]}; the old name goes in the next release" in said
    stem = sample["path"].stem
    assert np.array_equal(
        np.load(tmp_path / "old" / f"{stem}.scores.npy"), np.load(tmp_path / "new" / f"{stem}.scores.npy")
    )


def test_settings_are_refused_before_any_model_is_loaded(tmp_path, capsys, monkeypatch):
    """The command line builds the options first: a bad setting costs no model load."""
    import mmfinercam.cli._common as common

    monkeypatch.setattr(common, "MODELS", lambda *a, **k: pytest.fail("a model was loaded"))
    sample = mf.testbed.shipped_samples()[0]
    for bad in (["--alpha", "nan"], ["--depth", "1"], ["--contrast-ranks", "0"]):
        args = ["localize", str(sample["path"]), "--target", "x", *bad, "--out", str(tmp_path)]
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("mmfinercam: error:")
