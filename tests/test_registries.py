"""Registries instead of if-chains: a dense method, a CAM or a backend is one registration away.

What is registered is offered everywhere at once: the options object accepts it, the command
line lists it, ``finer_cam`` runs it. Model names find their backend by explicit rules (a
``<backend>:`` prefix, a shipped name, a folder's files, a backend's own names), never by
guessing from a slash.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from synthetic_backend import SyntheticBackend, basis, bird_image

import mmfinercam as mf
from mmfinercam.backends import BackendSpec, register_backend, resolve_model
from mmfinercam.backends.registry import _REGISTRY
from mmfinercam.cli import build_parser
from mmfinercam.explain.cams import CAM_METHODS, GradCAM, register_cam
from mmfinercam.explain.tower import DENSE_METHODS, DenseMethod, register_dense_method


def _choices(command: str, option: str) -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return list(next(a for a in sub._actions if option in a.option_strings).choices)


@pytest.fixture()
def registered_method():
    """A dense method registered for one test: the last layer's tokens under another name."""
    method = register_dense_method(DenseMethod("last-layer", "the raw tokens again", lambda *_: None))
    try:
        yield method
    finally:
        DENSE_METHODS.pop("last-layer")


def test_a_registered_dense_method_is_offered_and_runs_everywhere(
    registered_method, tiny_localizer, sample_images
):
    assert mf.FinerOptions(method="last-layer").method == "last-layer"
    assert "last-layer" in _choices("localize", "--method") and "last-layer" in _choices("batch", "--method")
    ours = tiny_localizer.finer_cam(sample_images[0], "a bird", ["a fish"], method="last-layer")
    raw = tiny_localizer.finer_cam(sample_images[0], "a bird", ["a fish"], method="raw")
    torch.testing.assert_close(ours.scores, raw.scores)


def test_an_unknown_method_lists_the_known_ones():
    with pytest.raises(mf.ConfigError, match="unknown method 'magic'; known: gem, raw, .*layercam"):
        mf.FinerOptions(method="magic")
    with pytest.raises(mf.ConfigError, match="unknown dense method 'layercam'; known: gem, raw"):
        mf.explain.tower.dense_method("layercam")


def test_a_registered_cam_is_offered_and_runs(tiny_localizer, sample_images):
    register_cam("my-gradcam", GradCAM)
    try:
        assert "my-gradcam" in _choices("localize", "--method") and "my-gradcam" in _choices("eval", "--cams")
        ours = tiny_localizer.finer_cam(sample_images[0], "a bird", ["a fish"], method="my-gradcam")
        theirs = tiny_localizer.finer_cam(sample_images[0], "a bird", ["a fish"], method="gradcam")
        torch.testing.assert_close(ours.scores, theirs.scores)
        assert ours.method == "my-gradcam" and ours.target_scores is None  # a gradient method
    finally:
        CAM_METHODS.pop("my-gradcam")


def _synthetic(model: str, pretrained: str | None = None, **kwargs) -> SyntheticBackend:
    texts = {"red": F.normalize(basis(0, 1), dim=0), "plain": F.normalize(basis(0, 2), dim=0)}
    return SyntheticBackend(texts)


def test_a_registered_backend_loads_by_its_prefix_and_by_what_it_claims():
    spec = BackendSpec(
        "synthetic",
        _synthetic,
        claims=lambda name: name.startswith("synthetic-"),
        weights_present=lambda model, pretrained: True,
        description="closed-form tokens (tests)",
    )
    register_backend(spec)
    try:
        for name in ("synthetic:anything", "synthetic-bird"):
            loc = mf.load(name, device="cpu")
            assert isinstance(loc.backend, SyntheticBackend)
            res = loc.finer_cam(bird_image()[None], "red", ["plain"], method="raw")
            assert res.scores.shape == (1, 8, 8)
        assert resolve_model("synthetic:x").model == "x"  # the prefix names the backend, not the model
    finally:
        _REGISTRY.pop("synthetic")
    with pytest.raises(mf.WeightsNotFoundError, match="no backend recognises 'synthetic-bird'"):
        mf.load("synthetic-bird", device="cpu")


def test_a_hub_id_is_not_guessed_from_its_slash(tmp_path):
    """A bare 'org/name' is no backend's own name: it is named 'transformers:org/name', and the
    message says so without any network attempt."""
    with pytest.raises(mf.WeightsNotFoundError, match=r"named 'transformers:<id>'"):
        resolve_model("openai/clip-vit-base-patch16")
    name = resolve_model("transformers:openai/clip-vit-base-patch16")
    assert name.spec.name == "transformers" and name.model == "openai/clip-vit-base-patch16"
    assert resolve_model("hf-hub:imageomics/bioclip").spec.name == "open_clip"
    assert resolve_model("ViT-B-16", "openai").spec.name == "open_clip"
    bioclip = resolve_model("bioclip")  # a shipped short name says its backend and its model
    assert (bioclip.spec.name, bioclip.model, bioclip.alias) == (
        "open_clip",
        "hf-hub:imageomics/bioclip",
        "bioclip",
    )
    with pytest.raises(mf.ConfigError, match="unknown backend 'nope'; known: open_clip, transformers"):
        resolve_model("x", backend="nope")
    with pytest.raises(mf.ConfigError, match="non-empty string"):
        resolve_model(None)  # type: ignore[arg-type]


def test_folders_are_claimed_by_the_files_they_hold(tiny_model_dir, tmp_path):
    assert resolve_model(str(tiny_model_dir)).spec.name == "open_clip"
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert resolve_model(str(hf)).spec.name == "transformers"
    testbed = resolve_model("testbed")  # a shipped model kept as a folder
    assert testbed.spec.name == "open_clip" and testbed.model.endswith("data/testbed")


def test_a_model_folder_brings_its_own_settings(tiny_model_dir, tmp_path):
    """``mmfinercam.json`` in a model folder sets its GEM depth, temperature and templates."""
    import json
    import shutil

    folder = tmp_path / "tiny"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "mmfinercam.json").write_text(
        json.dumps({"default_depth": 3, "gem_temperature": 7.5, "templates": ["a {} here."]})
    )
    loc = mf.load(str(folder), device="cpu")
    assert (loc.info.default_depth, loc.info.gem_temperature, loc.templates) == (3, 7.5, ["a {} here."])
    assert not loc.info.random_weights and loc.info.pretrained == str(folder)
    (folder / "mmfinercam.json").write_text("[1, 2]")
    with pytest.raises(mf.WeightsNotFoundError, match="must hold a JSON object"):
        mf.load(str(folder), device="cpu")
