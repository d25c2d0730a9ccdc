"""The transformers backend: parity with open_clip on the same weights, SigLIP, loading, offline."""

from __future__ import annotations

import json
import warnings

import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import load_errors_offline

import mmfinercam as mf
from mmfinercam.testing import deterministic_image, open_clip_to_transformers

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def pair(tiny_model):
    tok = open_clip.get_tokenizer("ViT-B-16")
    oc = mf.Localizer.from_open_clip(tiny_model, tok)
    hf = mf.Localizer.from_transformers(open_clip_to_transformers(tiny_model), tok)
    return oc, hf


def test_same_weights_give_equal_embeddings(pair):
    oc, hf = pair
    prompts = ["a photo of a bird.", "a red wing", "x"]
    torch.testing.assert_close(hf.encode_text(prompts), oc.encode_text(prompts), atol=1e-4, rtol=0)
    x = deterministic_image(224, seed=1)
    a = oc.image_tokens(x, method="raw").global_embedding
    b = hf.image_tokens(x, method="raw").global_embedding
    torch.testing.assert_close(b, a, atol=1e-4, rtol=0)
    ref = hf.backend.model.get_image_features(pixel_values=x)
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    torch.testing.assert_close(b, ref, atol=1e-4, rtol=0)  # our tower view = the model's own forward


@pytest.mark.parametrize("size", [(224, 224), (224, 320), (160, 96)])
def test_same_weights_give_equal_gem_maps(pair, size):
    oc, hf = pair
    x = deterministic_image(size, seed=2)
    prompts = ["a photo of a bird.", "a red wing"]
    a = oc.similarity_maps(x, prompts, method="gem", depth=7)
    b = hf.similarity_maps(x, prompts, method="gem", depth=7)
    assert b.shape == (1, 2, size[0] // 16, size[1] // 16)
    assert (a - b).abs().max() <= 1e-4


@pytest.mark.parametrize("method", ["gradcam", "layercam", "hirescam"])
def test_same_weights_give_equal_gradient_maps(pair, method):
    """The gradient CAMs take the last block's tokens through either backend's tower view."""
    oc, hf = pair
    x = deterministic_image((224, 256), seed=3)
    a = oc.finer_cam(x, "a bird", ["a fish", "a cat"], method=method)
    b = hf.finer_cam(x, "a bird", ["a fish", "a cat"], method=method)
    assert b.heatmaps.shape == (1, 224, 256) and b.scores.shape == (1, 14, 16)
    assert (a.heatmaps - b.heatmaps).abs().max() <= 1e-4
    assert a.contrast == b.contrast


def _char_tokenizer(prompts):  # a stand-in tokenizer: stable ids from the characters
    ids = torch.zeros(len(prompts), 16, dtype=torch.long)
    for i, p in enumerate(prompts):
        codes = [min(ord(ch), 999) for ch in p[:16]]
        ids[i, : len(codes)] = torch.tensor(codes)
    return ids


SIGLIP_TEXT = dict(
    hidden_size=96,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    vocab_size=1000,
    max_position_embeddings=16,
)
SIGLIP_VISION = dict(
    hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4, patch_size=16
)


def _siglip_localizer(kind: str) -> mf.Localizer:
    """A tiny random SigLIP (conv patches, 64 px) or SigLIP 2 (NaFlex linear patches, 4×4 grid)."""
    torch.manual_seed(0)
    if kind == "siglip":
        from transformers import SiglipConfig, SiglipModel

        cfg = SiglipConfig(text_config=SIGLIP_TEXT, vision_config=SIGLIP_VISION | {"image_size": 64})
        model = SiglipModel(cfg).eval()
    else:
        from transformers import Siglip2Config, Siglip2Model

        cfg = Siglip2Config(text_config=SIGLIP_TEXT, vision_config=SIGLIP_VISION | {"num_patches": 16})
        model = Siglip2Model(cfg).eval()
    return mf.Localizer.from_transformers(model, _char_tokenizer, mean=(0.5,) * 3, std=(0.5,) * 3)


@pytest.fixture(scope="module", params=["siglip", "siglip2"])
def siglip(request):
    return _siglip_localizer(request.param)


def _pooled_reference(model, x: torch.Tensor) -> torch.Tensor:
    """The model's own image embedding; SigLIP 2 gets patches made by its image processor's code."""
    if type(model).__name__ != "Siglip2Model":
        ref = model.get_image_features(pixel_values=x)
    else:
        from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches

        p = model.config.vision_config.patch_size
        patches = torch.stack([convert_image_to_patches(img, p) for img in x])
        shapes = torch.tensor([[x.shape[-2] // p, x.shape[-1] // p]] * len(x))
        mask = torch.ones(patches.shape[:2], dtype=torch.long)
        ref = model.get_image_features(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes)
    return ref if isinstance(ref, torch.Tensor) else ref.pooler_output


def test_siglip_has_no_cls_and_maps_every_token(siglip):
    tower = siglip.backend.vision
    assert tower.num_prefix_tokens == 0
    x = deterministic_image((64, 96), seed=3)
    maps = siglip.similarity_maps(x, ["a bird", "a fish"])
    assert maps.shape == (1, 2, 4, 6)  # 24 patch tokens, no CLS to drop
    raw = siglip.similarity_maps(x, ["a bird"], method="raw")
    assert raw.shape == (1, 1, 4, 6)


def test_siglip_global_embedding_is_the_models_pooled_output(siglip):
    """Square for both; SigLIP 2 also non-square (its native aspect-ratio path)."""
    model = siglip.backend.model
    sizes = [64, (64, 96)] if siglip.backend.vision.naflex else [64]
    for size in sizes:
        x = torch.cat([deterministic_image(size, seed=4), deterministic_image(size, seed=5)])
        ours = siglip.image_tokens(x, method="raw").global_embedding
        torch.testing.assert_close(ours, _pooled_reference(model, x), atol=1e-4, rtol=0)


def test_gem_pass_pools_what_the_model_pools(pair, siglip):
    """CLIP pools its class token: a GEM pass runs the last block for that token alone; SigLIP
    pools every token by attention. The pooled embedding is the model's own either way."""
    hf_clip = pair[1]
    for loc, pooled in ((hf_clip, 1), (siglip, None)):
        assert loc.backend.vision.pooled_tokens == pooled
        x = torch.cat([deterministic_image(64, seed=6), deterministic_image(64, seed=7)])
        with torch.inference_mode():
            gem = loc.image_tokens(x, depth=2)
            raw = loc.image_tokens(x, method="raw")
        torch.testing.assert_close(gem.global_embedding, raw.global_embedding, atol=1e-5, rtol=1e-5)


def test_siglip2_image_size_from_its_processor(tmp_path):
    from transformers import Siglip2ImageProcessor

    from mmfinercam.backends.transformers import image_config_from_processor

    Siglip2ImageProcessor(patch_size=16, max_num_patches=196).save_pretrained(tmp_path)
    cfg = image_config_from_processor(str(tmp_path))
    assert cfg is not None and cfg.size == (224, 224)


def test_siglip_token_projection_is_the_head_on_one_token(siglip):
    """Each patch token is mapped by the pooling head run on that token alone."""
    tower = siglip.backend.vision
    x = torch.randn(2, 5, 96)
    ours = tower.project_tokens(x)
    normed = tower.vision.post_layernorm(x)
    for j in range(5):
        torch.testing.assert_close(ours[:, j], tower.head(normed[:, j : j + 1]), atol=1e-5, rtol=0)


def test_siglip_finer_cam(siglip):
    # verbatim prompts: the test tokenizer reads 16 characters, and in SigLIP's template
    # "This is a photo of {}." every prompt would read the same (and cancel out exactly)
    res = siglip.finer_cam(
        deterministic_image((64, 80), seed=5), "a bird", ["a fish", "a cat"], templates=["{}"]
    )
    assert res.scores.shape == (1, 4, 5) and res.heatmaps.shape == (1, 64, 80)
    torch.testing.assert_close(res.weights.sum(dim=1), torch.ones(1))
    x = deterministic_image((64, 80), seed=5)
    grad = siglip.finer_cam(x, "a bird", ["a fish", "a cat"], method="layercam", templates=["{}"])
    assert grad.scores.shape == (1, 4, 5) and grad.heatmaps.shape == (1, 64, 80)
    assert grad.contrast == res.contrast and float(grad.heatmaps.max()) == pytest.approx(1.0, abs=1e-4)


def _save_clip_folder(tiny_model, folder):
    """save_pretrained a CLIPModel with a CLIPTokenizer built from open_clip's bundled BPE."""
    from transformers import CLIPTokenizer

    hf = open_clip_to_transformers(tiny_model)
    hf.save_pretrained(folder)
    st = open_clip.tokenizer.SimpleTokenizer()
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    (folder / "vocab.json").write_text(json.dumps({rename.get(k, k): v for k, v in st.encoder.items()}))
    merges = sorted(st.bpe_ranks.items(), key=lambda kv: kv[1])
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(p) for p, _ in merges) + "\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tok.save_pretrained(folder)


def test_load_saved_folder_offline_with_dtype(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "clip"
    _save_clip_folder(tiny_model, folder)
    loc = mf.load(str(folder), device="cpu")
    assert isinstance(loc.backend, mf.backends.transformers.TransformersBackend)
    tok = open_clip.get_tokenizer("ViT-B-16")
    ref = mf.Localizer.from_open_clip(tiny_model, tok)
    prompts = ["a photo of a bird."]
    torch.testing.assert_close(loc.encode_text(prompts), ref.encode_text(prompts), atol=1e-4, rtol=0)
    half = mf.load(str(folder), device="cpu", dtype="bf16")
    assert half.dtype == torch.bfloat16
    res = half.finer_cam(deterministic_image((224, 288), seed=6), "a bird", ["a fish"])
    assert res.heatmaps.shape == (1, 224, 288) and res.scores.dtype == torch.float32


def test_prompts_past_the_text_context_are_warned_about_once(tmp_path, tiny_model, monkeypatch):
    """Both tokenizers cut a prompt to the encoder's context, so prompts that differ only past it
    embed alike (a target could cancel against its contrast): each such prompt is warned about
    when first encoded, by the open_clip and the transformers backend alike."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "clip"
    _save_clip_folder(tiny_model, folder)
    localizers = {
        "transformers": mf.load(str(folder), device="cpu"),
        "open_clip": mf.Localizer.from_open_clip(tiny_model, open_clip.get_tokenizer("ViT-B-16")),
    }
    long = "a small bird " * 30  # 90 words: past 77 tokens
    for name, loc in localizers.items():
        assert loc.backend.cut_prompts(["a bird", long + "red wing"]) == ([long + "red wing"], 77), name
        with pytest.warns(UserWarning, match="longer than the text encoder's 77 tokens") as seen:
            red, blue = loc.encode_text([long + "red wing", long + "blue wing", "a bird"], ["{}"])[:2]
        assert len(seen) == 2, name  # the two long prompts, not the short one
        torch.testing.assert_close(red, blue)  # the model never saw where they differ
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loc.encode_text([long + "red wing"], ["{}"])  # cached: said once


def test_missing_hub_id_offline_is_one_line(tmp_path):
    (line,) = load_errors_offline(tmp_path, "transformers:openai/clip-vit-base-patch16")
    assert "openai/clip-vit-base-patch16" in line and "offline" in line
    assert str(tmp_path / "hf") in line


def test_folder_without_config_is_clear(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(mf.WeightsNotFoundError):
        mf.load(str(tmp_path))


def test_load_siglip2_folder_offline(tmp_path, monkeypatch):
    """A saved Siglip2Model folder (weights, NaFlex processor, a fast tokenizer) loads offline by
    path; its tokenizer's cut at the 16-token context is warned about."""
    siglip = _siglip_localizer("siglip2")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Siglip2ImageProcessor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    words = ["<pad>", "<unk>", "a", "photo", "of", "bird", "fish", "."]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>").save_pretrained(
        tmp_path
    )
    Siglip2ImageProcessor(patch_size=16, max_num_patches=16).save_pretrained(tmp_path)
    siglip.backend.model.save_pretrained(tmp_path)
    loc = mf.load(str(tmp_path), device="cpu")
    assert loc.backend.vision.naflex and loc.backend.image_config.size == (64, 64)
    from transformers import AutoTokenizer

    prompts = ["a photo of a bird .", "a fish ."]
    enc = AutoTokenizer.from_pretrained(tmp_path)(
        prompts, padding="max_length", max_length=16, return_tensors="pt"
    )
    ref = siglip.backend.model.get_text_features(**enc)  # the transformers pipeline, padded to the context
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    torch.testing.assert_close(loc.encode_text(prompts), F.normalize(ref, dim=-1), atol=1e-4, rtol=0)
    res = loc.finer_cam(deterministic_image((64, 96), seed=7), "a bird", ["a fish"])
    assert res.heatmaps.shape == (1, 64, 96)
    long = " ".join(["a photo of a bird ."] * 4)  # 20 words
    assert loc.backend.cut_prompts(["a fish .", long]) == ([long], 16)
    with pytest.warns(UserWarning, match="longer than the text encoder's 16 tokens"):
        loc.encode_text([long])
