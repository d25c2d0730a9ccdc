"""The transformers backend: parity with open_clip on the same weights, SigLIP, loading, offline."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
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


@pytest.fixture(scope="module")
def siglip():
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(0)
    cfg = SiglipConfig(
        text_config=dict(
            hidden_size=96,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            vocab_size=1000,
            max_position_embeddings=16,
        ),
        vision_config=dict(
            hidden_size=96,
            intermediate_size=192,
            num_hidden_layers=3,
            num_attention_heads=4,
            image_size=64,
            patch_size=16,
        ),
    )
    model = SiglipModel(cfg).eval()

    def tokenizer(prompts):  # a stand-in tokenizer: stable ids from the characters
        ids = torch.zeros(len(prompts), 16, dtype=torch.long)
        for i, p in enumerate(prompts):
            codes = [min(ord(ch), 999) for ch in p[:16]]
            ids[i, : len(codes)] = torch.tensor(codes)
        return ids

    return mf.Localizer.from_transformers(model, tokenizer, mean=(0.5,) * 3, std=(0.5,) * 3)


def test_siglip_has_no_cls_and_maps_every_token(siglip):
    tower = siglip.backend.vision
    assert tower.num_prefix_tokens == 0
    x = deterministic_image((64, 96), seed=3)
    maps = siglip.similarity_maps(x, ["a bird", "a fish"])
    assert maps.shape == (1, 2, 4, 6)  # 24 patch tokens, no CLS to drop
    raw = siglip.similarity_maps(x, ["a bird"], method="raw")
    assert raw.shape == (1, 1, 4, 6)


def test_siglip_global_embedding_is_the_models_pooled_output(siglip):
    model = siglip.backend.model
    x = deterministic_image(64, seed=4)
    ours = siglip.image_tokens(x, method="raw").global_embedding
    ref = model.get_image_features(pixel_values=x)
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_siglip_token_projection_is_the_head_on_one_token(siglip):
    """Each patch token is mapped by the pooling head run on that token alone."""
    tower = siglip.backend.vision
    x = torch.randn(2, 5, 96)
    ours = tower.project_tokens(x)
    normed = tower.vision.post_layernorm(x)
    for j in range(5):
        torch.testing.assert_close(ours[:, j], tower.head(normed[:, j : j + 1]), atol=1e-5, rtol=0)


def test_siglip_finer_cam(siglip):
    res = siglip.finer_cam(deterministic_image((64, 80), seed=5), "a bird", ["a fish", "a cat"])
    assert res.scores.shape == (1, 4, 5) and res.heatmaps.shape == (1, 64, 80)
    torch.testing.assert_close(res.weights.sum(dim=1), torch.ones(1))


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


def test_missing_hub_id_offline_is_one_line(tmp_path):
    (line,) = load_errors_offline(tmp_path, "openai/clip-vit-base-patch16")
    assert "openai/clip-vit-base-patch16" in line and "offline" in line
    assert str(tmp_path / "hf") in line


def test_folder_without_config_is_clear(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(mf.WeightsNotFoundError):
        mf.load(str(tmp_path))
