"""Model loading: random weights, local folders and files, and one-line errors offline."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import load_errors_offline

import mmfinercam as mf


def test_random_weights_are_flagged():
    loc = mf.load("ViT-B-32", device="cpu")
    assert loc.info.random_weights
    assert "RANDOM" in repr(loc)
    assert loc.device == torch.device("cpu")


def test_dtype_argument():
    loc = mf.load("ViT-B-32", device="cpu", dtype="bf16")
    assert loc.dtype == torch.bfloat16


def test_local_open_clip_folder(tiny_model_dir, tiny_model, sample_images):
    loc = mf.load(str(tiny_model_dir), device="cpu")
    assert not loc.info.random_weights
    for (name, a), b in zip(tiny_model.state_dict().items(), loc.backend.model.state_dict().values()):
        assert torch.equal(a, b), name
    res = loc.finer_cam(sample_images[0], "a bird", ["a fish"])
    assert res.heatmaps.shape == (1, 96, 128)


def test_checkpoint_file_for_a_named_architecture(tmp_path):
    import open_clip

    model = open_clip.create_model("ViT-B-32")
    path = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), path)
    loc = mf.load("ViT-B-32", str(path), device="cpu")
    assert not loc.info.random_weights
    torch.testing.assert_close(loc.backend.model.visual.proj, model.visual.proj)


def test_missing_checkpoint_file():
    with pytest.raises(mf.WeightsNotFoundError, match="checkpoint file not found: /no/such/ckpt.pt"):
        mf.load("ViT-B-32", "/no/such/ckpt.pt")


def test_unknown_tag_and_model():
    with pytest.raises(mf.WeightsNotFoundError, match="no pretrained tag 'nonsense'.*openai"):
        mf.load("ViT-B-32", "nonsense")
    with pytest.raises(mf.WeightsNotFoundError, match="no backend recognises"):
        mf.load("NoSuchNet-99")


def test_folder_without_config(tmp_path):
    (tmp_path / "open_clip_config.json").write_text("{}")
    os.remove(tmp_path / "open_clip_config.json")
    with pytest.raises(mf.WeightsNotFoundError):
        mf.load(str(tmp_path))


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--model", "ViT-B-32", "--pretrained", "openai"], "timm/vit_base_patch32_clip_224.openai"),
        (["--model", "hf-hub:imageomics/bioclip"], "imageomics/bioclip"),
    ],
)
def test_offline_weights_error_is_one_line(tmp_path, args, needle):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run(
        [sys.executable, "-m", "mmfinercam.cli", "localize", "x.png", "--target", "a bird", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mmfinercam: error: could not load weights")
    assert needle in lines[0] and str(tmp_path / "hf") in lines[0]


def test_the_offline_hint_shows_only_where_the_hub_is_on(monkeypatch):
    """Without network the Hub retries for about half a minute before a load fails; the error
    says how to skip that, unless offline mode is already on."""
    from mmfinercam.backends._hub import offline_hint

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    assert "HF_HUB_OFFLINE=1" in offline_hint()
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "true")
    assert offline_hint() == ""


def test_a_cuda_device_without_cuda_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(mf.MMFinerCAMError, match="sees no CUDA GPU.*device='cpu'"):
        mf.load("testbed", device="cuda")


@pytest.mark.parametrize("device", ["CPU", "tpu", 3.5])
def test_an_unknown_device_is_one_clear_error(device):
    with pytest.raises(mf.MMFinerCAMError, match="unknown device .*use 'cpu', 'cuda' or 'cuda:N'"):
        mf.load("testbed", device=device)


def test_a_device_this_torch_cannot_use_is_one_clear_error():
    """Apple's GPU on Linux (or Intel's where there is Apple's): torch's own error was a page of
    dispatcher text, raised while the weights were moved."""
    device = "xpu" if torch.backends.mps.is_available() else "mps"
    with pytest.raises(mf.MMFinerCAMError, match=f"device '{device}' cannot be used here .*use device='cpu'"):
        mf.load("testbed", device=device)


def test_templates_given_at_load_are_checked_at_once():
    with pytest.raises(mf.PromptError, match="exactly one"):
        mf.load("testbed", templates=["a photo"])
    with pytest.raises(mf.PromptError, match="none given"):  # an empty list is not 'the default'
        mf.load("testbed", templates=[])
    loc = mf.load("testbed", templates=["{}"])
    assert loc.templates == ["{}"]
    for call in (
        lambda: loc.encode_text(["a bird"], []),
        lambda: loc.finer_cam(torch.zeros(1, 3, 32, 32), "a", ["b"], templates=[]),
    ):
        with pytest.raises(mf.PromptError, match="none given"):  # not 'verbatim'
            call()


@pytest.mark.parametrize("model", ["testbed", "ViT-B-16"])
def test_an_option_the_backend_lacks_is_named(model):
    """Extra keywords go on to the family's loader (open_clip's ``force_quick_gelu`` ...); one it
    lacks is named with the backend, not left as a model class's constructor error."""
    with pytest.raises(TypeError, match="open_clip|testbed") as err:
        mf.load(model, force_quikc_gelu=True)
    assert "takes no option 'force_quikc_gelu'" in str(err.value) and "\n" not in str(err.value)
    assert mf.load(model, force_quick_gelu=True).backend.info.name == model


def test_gem_refuses_non_vit_towers():
    import open_clip

    model = open_clip.create_model("RN50")
    with pytest.raises(mf.UnsupportedModelError, match="VisionTransformer"):
        mf.Localizer.from_open_clip(model, open_clip.get_tokenizer("RN50"))


@pytest.mark.parametrize("block", ["ResPostBlock", "ParallelScalingBlock", "ParallelThingsBlock"])
def test_gem_refuses_timm_blocks_that_are_not_pre_norm(block):
    """GEM runs a block in its pieces (norm, attention, norm, MLP): a post-norm or parallel
    block would be run wrong, so it is refused by name."""
    from timm.models import vision_transformer

    from mmfinercam.backends.timm_vit import TimmBlock

    with pytest.raises(mf.UnsupportedModelError, match=f"pre-norm Block.*got {block}"):
        TimmBlock(getattr(vision_transformer, block)(32, 2))


@pytest.mark.parametrize(
    "name, tag, forced",
    [
        ("ViT-B-16", "openai", True),  # mf.load("clip-vit-b-16")
        ("ViT-B-32", "laion400m_e31", True),
        ("ViT-B-16", "laion2b_s34b_b88k", False),  # trained with GELU
        ("ViT-B-16-quickgelu", "openai", False),  # the config already says QuickGELU
    ],
)
def test_weights_trained_with_quick_gelu_run_with_it(monkeypatch, tiny_model, name, tag, forced):
    """open_clip 3 builds a built-in config as it is, so OpenAI's ViT-B-16 weights (trained with
    QuickGELU) would run with GELU, a different model, and it only warns: the loader asks for
    QuickGELU where the tag was trained with it."""
    import open_clip

    from mmfinercam.backends.open_clip import load_open_clip

    asked = {}

    def create_model(model_name, **kwargs):  # records what the loader asks for; no download
        asked.update(kwargs, name=model_name)
        return tiny_model

    monkeypatch.setattr(open_clip, "create_model", create_model)
    load_open_clip(name, tag)
    assert asked["name"] == name and asked.get("force_quick_gelu", False) is forced


def test_known_model_names_resolve_offline(tmp_path):
    bioclip, openai = load_errors_offline(tmp_path, "bioclip", "clip-vit-b-16")
    assert "imageomics/bioclip" in bioclip
    assert "ViT-B-16 pretrained='openai'" in openai


def test_models_command_lists_known_and_present(capsys):
    from mmfinercam.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "bioclip" in out and "siglip-base" in out
    assert "testbed            present" in out  # the shipped model is always there


def test_vit_l_14_non_square(sample_images):
    torch.manual_seed(0)
    loc = mf.load("ViT-L-14", device="cpu")
    x = torch.randn(1, 3, 224, 280)
    maps = loc.similarity_maps(x, ["a bird", "a fish"])
    assert maps.shape == (1, 2, 16, 20)  # 14-px patches, rows stay rows


@pytest.fixture(scope="module")
def open_clip_siglip():
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16-SigLIP")  # a timm tower with attention pooling
    return mf.Localizer.from_open_clip(model, open_clip.get_tokenizer("ViT-B-16"))


def test_open_clip_siglip_timm_tower(open_clip_siglip):
    loc = open_clip_siglip
    tower = loc.backend.vision
    assert tower.num_prefix_tokens == 0
    x = torch.randn(1, 3, 224, 256)
    text = torch.randn(
        2, loc.image_tokens(x, method="raw").global_embedding.shape[-1]
    )  # no offline tokenizer
    maps = loc.similarity_maps(x, text)
    assert maps.shape == (1, 2, 14, 16)
    assert loc.similarity_maps(x, text, method="raw").shape == (1, 2, 14, 16)
    # our view of the tower equals the model's own forward at its training size
    x = torch.randn(2, 3, 224, 224)
    ours = loc.image_tokens(x, method="raw").global_embedding
    torch.testing.assert_close(ours, loc.backend.model.encode_image(x).detach(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method, reference", [("gradcam", "GradCAM"), ("layercam", "LayerCAM")])
def test_gradient_cams_on_a_timm_tower_equal_grad_cam(open_clip_siglip, method, reference):
    """A timm tower (no class token, attention pooling) explained through the tower view equals
    pytorch-grad-cam over a hand-written wrapper of the model's own ``encode_image``."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import FinerWeightedTarget

    model = open_clip_siglip.backend.model
    loc = mf.Localizer.from_open_clip(model, lambda t: open_clip_tokenize(t, 64) % 32_000)  # stand-in ids
    prompts = ["a bird", "a fish", "a cat", "a dog"]
    text = loc.encode_text(prompts, loc.templates)

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model  # a submodule: grad-cam finds its device from the parameters

        def forward(self, x):
            z = torch.nn.functional.normalize(self.model.encode_image(x), dim=-1)
            return self.model.logit_scale.exp() * z @ text.T

    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    res = loc.finer_cam(x, prompts[0], prompts[1:], method=method)
    out = Logits()(x).detach()[0]
    refs = out.sub(out[0]).abs().argsort()[1:4].tolist()

    def grid(t):
        return t.reshape(t.shape[0], 14, 14, t.shape[2]).permute(0, 3, 1, 2)

    layer = model.visual.trunk.blocks[-1].norm1
    cam = pgc.FinerCAM(Logits(), [layer], reshape_transform=grid, base_method=getattr(pgc, reference))
    ref = cam(x, targets=[FinerWeightedTarget(0, refs, 1.0)])
    assert res.scores.shape == (1, 14, 14)
    assert (res.heatmaps[0] - torch.from_numpy(ref[0])).abs().max() <= 1e-4


def open_clip_tokenize(texts, context_length):
    import open_clip

    return open_clip.tokenize(texts, context_length=context_length)


def _timm_token_pooled():
    from open_clip.model import CLIP

    torch.manual_seed(0)
    vision = dict(
        image_size=64, timm_model_name="vit_tiny_patch16_224", timm_pool="token", timm_proj="linear"
    )
    model = CLIP(embed_dim=32, vision_cfg=vision, text_cfg=dict(width=32, heads=2, layers=1)).eval()
    return mf.Localizer.from_open_clip(model, None)


@pytest.mark.parametrize("tower", ["open_clip", "timm token", "timm attention pool"])
def test_gem_pass_pools_what_the_model_pools(tower, tiny_localizer, open_clip_siglip):
    """A tower pooled from its class token runs the last block's original path for that token
    alone in a GEM pass; the pooled embedding is the model's own either way."""
    loc = {"open_clip": tiny_localizer, "timm attention pool": open_clip_siglip}.get(tower)
    loc = loc or _timm_token_pooled()
    assert loc.backend.vision.pooled_tokens == (None if tower == "timm attention pool" else 1)
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        gem = loc.image_tokens(x, depth=3)
        raw = loc.image_tokens(x, method="raw")  # every block whole, as the model runs it
    torch.testing.assert_close(gem.global_embedding, raw.global_embedding, atol=1e-5, rtol=1e-5)
    assert gem.tokens.shape == raw.tokens.shape


def test_timm_token_projection_is_the_pool_on_one_token(open_clip_siglip):
    tower = open_clip_siglip.backend.vision
    x = torch.randn(2, 3, tower.trunk.embed_dim)
    ours = tower.project_tokens(x)
    for j in range(3):
        torch.testing.assert_close(ours[:, j], tower.pool(x[:, j : j + 1]), atol=1e-5, rtol=1e-5)


def _layer_scaled(tower: str) -> mf.Localizer:
    """A random tower whose blocks carry layer scales (gamma random, not 1), and for timm one
    block with a norm over the merged heads (an output that is no affine map)."""
    import timm.layers
    from open_clip.model import CLIP

    torch.manual_seed(0)
    if tower == "open_clip":
        vision = dict(image_size=64, layers=4, width=32, head_width=16, patch_size=16, ls_init_value=0.5)
        model = CLIP(embed_dim=16, vision_cfg=vision, text_cfg=dict(width=32, heads=2, layers=1)).eval()
        blocks = model.visual.transformer.resblocks
        scales = [b.ls_1 for b in blocks]
    else:
        model = _timm_token_pooled().backend.model
        blocks = model.visual.trunk.blocks
        width = blocks[0].norm1.normalized_shape[0]
        for block in blocks:
            block.ls1 = timm.layers.LayerScale(width)
        blocks[-2].attn.norm = torch.nn.LayerNorm(width)
        scales = [b.ls1 for b in blocks]
    for ls in scales:
        torch.nn.init.uniform_(ls.gamma, 0.2, 2.0)
    return mf.Localizer.from_open_clip(model.double(), None)


@pytest.mark.parametrize("tower", ["open_clip", "timm"])
def test_gem_sums_folded_projections_as_each_block_projects(tower, monkeypatch):
    """GEM adds every block's output projection into its sum with the layer scale folded into
    the weights and the biases added once; the tokens equal those of each block's own
    projection (``attn_out``), and a block whose output is not affine keeps its own."""
    from mmfinercam.explain.tower import dense_tokens

    vision = _layer_scaled(tower).backend.vision
    affine = [b.attn_out_affine() is not None for b in vision.blocks]
    assert affine == ([True] * 4 if tower == "open_clip" else [True] * 10 + [False, True])
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        folded = dense_tokens(vision, x, depth=4).tokens
        for block in vision.blocks:
            monkeypatch.setattr(block, "attn_out_affine", lambda: None)
        own = dense_tokens(vision, x, depth=4).tokens
    torch.testing.assert_close(folded, own, atol=1e-12, rtol=1e-10)
    assert folded.shape == (2, 21, 16 if tower == "open_clip" else 32)


def test_fold_layer_scale_is_the_scaled_projection_or_none():
    from mmfinercam.backends._ops import fold_layer_scale

    torch.manual_seed(0)
    linear, x = torch.nn.Linear(8, 8).double(), torch.randn(5, 8, dtype=torch.float64)
    scale = type("LayerScale", (torch.nn.Module,), {})()
    scale.gamma = torch.rand(8, dtype=torch.float64)
    for module, expected in [
        (None, linear(x)),
        (torch.nn.Identity(), linear(x)),
        (scale, linear(x) * scale.gamma),
    ]:
        weight, bias = fold_layer_scale(linear, module)
        torch.testing.assert_close(x @ weight.t() + bias, expected)
    assert fold_layer_scale(linear, torch.nn.Dropout()) is None  # no gamma: not known to be affine
    scale.gamma = torch.rand(3, dtype=torch.float64)
    assert fold_layer_scale(linear, scale) is None  # a gamma that does not scale the outputs
