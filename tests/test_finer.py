"""Dense Finer-CAM: the contrast math, automatic contrasts, batching, sizes and orientation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from synthetic_backend import SyntheticBackend, basis, bird_image

import mmfinercam as mf
from mmfinercam._checks import check_contrast_ranks
from mmfinercam.explain.contrasts import closest_entries
from mmfinercam.explain.finer import (
    contrast_mixture,
    contrast_weights,
    finer_maps,
    finer_scores,
    mixed_finer_maps,
    to_heatmap,
)

TARGET, CONTRAST = "red-winged bird", "plain bird"


@pytest.fixture()
def synthetic():
    texts = {
        TARGET: F.normalize(basis(0, 1), dim=0),  # shared body (e0) + red wing (e1)
        CONTRAST: F.normalize(basis(0, 2), dim=0),  # shared body + something absent (e2)
        "background": basis(3),
        "other": F.normalize(basis(0, 4), dim=0),
    }
    return mf.Localizer(SyntheticBackend(texts))


def test_finer_peaks_on_the_differing_part(synthetic):
    image = bird_image()
    res = synthetic.finer_cam(image, TARGET, [CONTRAST], alpha=1.0, method="raw")
    plain = synthetic.finer_cam(image, TARGET, [CONTRAST], alpha=0.0, method="raw")
    heat, plain_heat = res.heatmaps[0], plain.heatmaps[0]
    wing = torch.zeros_like(heat, dtype=torch.bool)
    wing[24:40, 32:48] = True
    near_wing = torch.zeros_like(wing)  # bilinear upsampling spreads half a patch (4 px)
    near_wing[20:44, 28:52] = True
    # the Finer map's peak is on the wing, and all its energy is there
    assert wing.flatten()[int(heat.argmax())]
    assert heat[near_wing].sum() / heat.sum() > 0.999
    # the plain map lights up the whole bird: most of its energy is off the wing
    assert plain_heat[near_wing].sum() / plain_heat.sum() < 0.5
    # on the body (shared evidence) the raw Finer score cancels to zero
    assert res.scores[0][3, 2].abs() < 1e-6


def test_alpha_zero_is_plain_target_map(tiny_localizer, sample_images):
    res = tiny_localizer.finer_cam(sample_images[0], "a bird", ["a fish", "a cat"], alpha=0.0)
    prepared, _ = tiny_localizer.prepare(sample_images[0])
    plain = tiny_localizer.similarity_maps(
        prepared[0].pixels, tiny_localizer.encode_text(["a bird"], tiny_localizer.templates)
    )
    torch.testing.assert_close(res.scores[0], plain[0, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(res.target_scores[0], plain[0, 0], atol=1e-6, rtol=0)


def test_scores_are_linear_in_alpha(tiny_localizer, sample_images):
    run = lambda a: tiny_localizer.finer_cam(sample_images[1], "a bird", ["a fish", "a cat"], alpha=a)
    s0, s1, s07 = run(0.0).scores[0], run(1.0).scores[0], run(0.7).scores[0]
    torch.testing.assert_close(s07, s0 + 0.7 * (s1 - s0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("weighting", ["softmax", "uniform"])
def test_weights_sum_to_one(tiny_localizer, sample_images, weighting):
    res = tiny_localizer.finer_cam(sample_images, "a bird", ["a fish", "a cat", "a dog"], weighting=weighting)
    assert res.weights.shape == (3, 3)
    torch.testing.assert_close(res.weights.sum(dim=1), torch.ones(3))
    if weighting == "uniform":
        torch.testing.assert_close(res.weights, torch.full((3, 3), 1 / 3))
    else:
        scale = tiny_localizer.backend.logit_scale
        expected = torch.softmax(scale * res.contrast_similarity, dim=1)
        torch.testing.assert_close(res.weights, expected)


def test_softmax_weights_restricted_and_renormalized():
    sims = torch.tensor([[0.30, 0.25, 0.10]])
    target = torch.tensor([[0.35]])
    full = torch.softmax(10.0 * torch.cat([target, sims], dim=1), dim=1)[:, 1:]
    torch.testing.assert_close(contrast_weights(sims, 10.0), full / full.sum())


def test_finer_scores_formula():
    t = torch.randn(2, 3, 4)
    c = torch.randn(2, 2, 3, 4)
    w = torch.tensor([[0.25, 0.75], [0.5, 0.5]])
    expected = t - 0.8 * (w[:, 0, None, None] * c[:, 0] + w[:, 1, None, None] * c[:, 1])
    torch.testing.assert_close(finer_scores(t, c, w, 0.8), expected)
    with pytest.raises(mf.ConfigError, match="alpha"):  # checked once, where the settings are made
        mf.FinerOptions(alpha=-0.1)


def test_mixing_texts_equals_mixing_every_contrast_map():
    """The dense path's shortcut: <p, t_c - a sum w_d t_d> is the paper's formula over all maps."""
    gen = torch.Generator().manual_seed(3)
    b, s, d, e, grid = 2, 3, 5, 16, (3, 4)
    patches = F.normalize(torch.randn(b, 12, e, generator=gen, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(b, s, 1 + d, e, generator=gen, dtype=torch.float64), dim=-1)
    w = torch.softmax(torch.randn(b, s, d, generator=gen, dtype=torch.float64), dim=-1)
    every = torch.einsum("bne,bske->bskn", patches, text).reshape(b * s, 1 + d, *grid)
    expected = finer_scores(every[:, 0], every[:, 1:], w.reshape(b * s, d), 0.7).view(b, s, *grid)
    scores, target = mixed_finer_maps(patches, text[:, :, 0], contrast_mixture(text[:, :, 1:], w), grid, 0.7)
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(target, every[:, 0].view(b, s, *grid), rtol=0, atol=1e-12)
    # the same from one text bank (every prompt once): padded contrasts weigh nothing, and a
    # set with none gives the plain target map
    bank = text.reshape(-1, e)  # P = b·s·(1+d) prompts
    index = torch.arange(bank.shape[0]).view(b, s, 1 + d)
    sims = torch.randn(b, s, d, generator=gen, dtype=torch.float64)
    valid = torch.ones(b, s, d, dtype=torch.bool)
    valid[0, 1, 3:] = False
    valid[1, 2] = False
    weights = contrast_weights(sims, 10.0, "softmax", valid)
    scores, target = finer_maps(patches, bank, index[..., 0], index[..., 1:], weights, grid, 1.0)
    assert (weights[~valid] == 0).all() and (weights[1, 2] == 0).all()
    every = every.view(b, s, 1 + d, *grid)
    expected = every[0, 1, 0] - torch.einsum("dhw,d->hw", every[0, 1, 1:4], weights[0, 1, :3].double())
    torch.testing.assert_close(scores[0, 1], expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(scores[1, 2], target[1, 2], rtol=0, atol=0)


@pytest.mark.parametrize("contrasts", ["explicit", "vocabulary"])
def test_finer_cam_equals_the_formula_over_every_map(tiny_localizer, sample_images, contrasts):
    """finer_cam against s_c - alpha sum_d w_d s_d built from each contrast's own similarity map."""
    loc = tiny_localizer
    kwargs = (
        dict(contrast=["a fish", "a cat", "a dog"])
        if contrasts == "explicit"
        else dict(vocabulary=["a fish", "a cat", "a dog", "a tree", "a car"])
    )
    res = loc.finer_cam(sample_images[:2], "a bird", alpha=0.8, **kwargs)
    for i, image in enumerate(sample_images[:2]):
        prepared, _ = loc.prepare(image)
        names = ["a bird", *res.contrast[i]]
        maps = loc.similarity_maps(prepared[0].pixels[None], loc.encode_text(names, loc.templates))[0]
        expected = finer_scores(maps[None, 0], maps[None, 1:], res.weights[i][None], 0.8)[0]
        torch.testing.assert_close(res.scores[i], expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(res.target_scores[i], maps[0], rtol=0, atol=1e-6)


def test_heatmap_range_and_all_negative():
    scores = torch.tensor([[[-1.0, 0.5], [2.0, 1.0]], [[-1.0, -2.0], [-0.5, -3.0]]])
    heat = to_heatmap(scores, (8, 8))
    assert heat.shape == (2, 8, 8)
    assert heat[0].min() == 0 and heat[0].max() == 1
    assert torch.count_nonzero(heat[1]) == 0  # no positive evidence: zeros, not NaN
    flat = to_heatmap(torch.full((1, 2, 2), 0.3), (4, 4))
    assert torch.equal(flat, torch.zeros(1, 4, 4))  # evidence, but the same everywhere: no peak


def test_closest_entries_hand_case():
    target = torch.tensor([0.50])
    vocab = torch.tensor([[0.10, 0.45, 0.52, 0.30, 0.49]])  # gaps .40 .05 .02 .20 .01
    assert closest_entries(vocab, target, [1, 2, 3]).tolist() == [[4, 2, 1]]
    assert closest_entries(vocab, target, [2]).tolist() == [[2]]
    own = torch.tensor([[False, False, True, False, False]])  # an excluded entry ranks last
    assert closest_entries(vocab, target, [1, 2, 3], exclude=own).tolist() == [[4, 1, 3]]
    with pytest.raises(mf.PromptError):
        check_contrast_ranks([0], 5)
    with pytest.raises(mf.PromptError):
        check_contrast_ranks([6], 5)


def test_automatic_contrasts_from_vocabulary(tiny_localizer, sample_images):
    vocab = ["a fish", "a cat", "a dog", "a tree", "a car", "a bird"]
    res = tiny_localizer.finer_cam(sample_images, "a bird", vocabulary=vocab)
    entries = vocab[:-1]  # the target is dropped from the candidates
    text = tiny_localizer.encode_text(entries, tiny_localizer.templates)
    for i in range(len(res)):
        gaps = (res.target_similarity[i] - text @ _global(tiny_localizer, sample_images[i])).abs()
        expected = [entries[j] for j in gaps.argsort()[:3].tolist()]
        assert res.contrast[i] == expected
        assert "a bird" not in res.contrast[i]


def _global(loc, image):
    prepared, _ = loc.prepare(image)
    out = loc.image_tokens(prepared[0].pixels[None])
    return F.normalize(out.global_embedding[0], dim=-1)


def test_vocabulary_by_shipped_name(tiny_localizer, sample_images):
    res = tiny_localizer.finer_cam(sample_images[0], "red wing", vocabulary="birds-parts")
    assert len(res.contrast[0]) == 3
    assert set(res.contrast[0]) <= set(mf.prompts.load("birds-parts"))


def test_batch_equals_single(tiny_localizer, sample_images):
    kwargs = dict(target="a bird", contrast=["a fish", "a cat"], alpha=0.8)
    batch = tiny_localizer.finer_cam(sample_images, **kwargs)
    for i, image in enumerate(sample_images):
        single = tiny_localizer.finer_cam(image, **kwargs)
        torch.testing.assert_close(batch.scores[i], single.scores[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(batch.heatmaps[i], single.heatmaps[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(batch.weights[i], single.weights[0], atol=1e-6, rtol=0)


def test_batch_of_same_size_equals_single_with_small_batches(tiny_localizer, sample_images):
    same = [sample_images[0]] * 2 + [sample_images[0][::-1].copy()]
    a = tiny_localizer.finer_cam(same, "a bird", ["a fish"], batch_size=1)
    b = tiny_localizer.finer_cam(same, "a bird", ["a fish"], batch_size=8)
    assert isinstance(a.heatmaps, torch.Tensor) and a.heatmaps.shape == (3, 96, 128)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)


def test_interleaved_sizes_come_back_in_input_order(tiny_localizer, sample_images):
    """Same-sized images run together within each chunk; the results follow the input order."""
    a, b = sample_images[0], sample_images[2]
    images = [a, b, a[::-1].copy(), b[:, ::-1].copy(), a]
    res = tiny_localizer.finer_cam(images, "a bird", ["a fish", "a cat"], batch_size=3)
    assert [tuple(h.shape) for h in res.heatmaps] == [(96, 128), (128, 128), (96, 128), (128, 128), (96, 128)]
    assert res.indices == [0, 1, 2, 3, 4] and res.image_sizes[1] == (128, 128)
    for i, image in enumerate(images):
        single = tiny_localizer.finer_cam(image, "a bird", ["a fish", "a cat"])
        torch.testing.assert_close(res.scores[i], single.scores[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(res.weights[i], single.weights[0], atol=1e-6, rtol=0)


def test_heatmaps_are_made_from_the_scores_on_first_use(tiny_localizer, sample_images):
    res = tiny_localizer.finer_cam([sample_images[0]] * 2, "a bird", ["a fish"])
    assert res._heatmaps is None  # nothing full-size made until asked for
    torch.testing.assert_close(res.heatmaps, to_heatmap(res.scores, (96, 128)))
    assert res.heatmaps is res.heatmaps  # made once


@pytest.mark.parametrize("method", ["gem", "layercam"])
def test_one_heatmap_at_a_time_is_that_of_the_whole_batch(tiny_localizer, sample_images, method):
    """``heatmap(i)`` makes image i's full-size map alone (a loop over large scans holds one at a
    time) and equals ``heatmaps[i]``, whatever the images' sizes."""
    res = tiny_localizer.finer_cam(sample_images, "a bird", ["a fish", "a cat"], method=method)
    alone = [res.heatmap(i) for i in range(len(res))]
    assert res._heatmaps is None and [tuple(h.shape) for h in alone] == [(96, 128), (112, 128), (128, 128)]
    for i, heat in enumerate(res.heatmaps):
        assert torch.equal(alone[i], heat)
    assert res.heatmap(1) is res.heatmaps[1]  # once made for all, taken from them
    again = tiny_localizer.finer_cam(sample_images, "a bird", ["a fish", "a cat"], method=method)
    again.summary(2)
    assert again.heatmap(2) is again.heatmap(2) and again._heatmaps is None  # the last one kept


def test_non_square_images_keep_orientation(synthetic):
    # a wide image with the red wing in the top-right corner only
    image = torch.zeros(3, 64, 160)
    image[2] = 1.0
    image[1, 8:56, 16:150] = 1.0
    image[0, 8:24, 120:150] = 1.0
    res = synthetic.finer_cam(image, TARGET, [CONTRAST], method="raw")
    heat = res.heatmaps[0]
    assert heat.shape == (64, 160)
    assert res.scores[0].shape == (8, 20)
    y, x = divmod(int(heat.argmax()), heat.shape[1])
    assert y < 32 and x > 100


def test_non_square_real_model(tiny_localizer, sample_images):
    res = tiny_localizer.finer_cam(sample_images[2], "a bird", ["a fish"])  # 128×128
    wide = tiny_localizer.finer_cam(sample_images[0], "a bird", ["a fish"])  # 96×128
    assert wide.heatmaps[0].shape == (96, 128)
    assert wide.scores[0].shape == (14, 19)  # shorter side 224 px -> 14 rows, 298.7 -> 19 cols
    assert res.heatmaps[0].shape == (128, 128)


def test_mixed_sizes_give_lists(tiny_localizer, sample_images):
    res = tiny_localizer.finer_cam(sample_images, "a bird", ["a fish"])
    assert isinstance(res.heatmaps, list)
    assert [tuple(h.shape) for h in res.heatmaps] == [(96, 128), (112, 128), (128, 128)]
    for h in res.heatmaps:
        assert 0.0 <= float(h.min()) and float(h.max()) <= 1.0


def test_no_contrast_is_plain_map(tiny_localizer, sample_images):
    res = tiny_localizer.finer_cam(sample_images[0], "a bird")
    assert res.weights.shape == (1, 0) and res.contrast == [[]]
    torch.testing.assert_close(res.scores[0], res.target_scores[0])


def test_templates_are_averaged(tiny_localizer):
    templates = ["a photo of a {}.", "a drawing of a {}."]
    emb = tiny_localizer.encode_text(["bird"], templates)
    parts = tiny_localizer.encode_text(["a photo of a bird.", "a drawing of a bird."])
    torch.testing.assert_close(emb[0], F.normalize(parts.mean(0), dim=0))
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(1))


def test_text_embeddings_are_cached(tiny_localizer):
    tiny_localizer.clear_cache()
    calls = []
    backend = tiny_localizer.backend
    original = backend.encode_text
    backend.encode_text = lambda prompts: calls.append(list(prompts)) or original(prompts)
    try:
        tiny_localizer.encode_text(["a", "b"])
        tiny_localizer.encode_text(["b", "c", "a"])
    finally:
        del backend.encode_text
    assert calls == [["a", "b"], ["c"]]
    again = tiny_localizer.encode_text(["b", "c", "a"])  # the whole set, cached
    assert again is tiny_localizer.encode_text(["b", "c", "a"])
    tiny_localizer.clear_cache()
    fresh = tiny_localizer.encode_text(["b", "c", "a"])
    assert fresh is not again
    torch.testing.assert_close(fresh, again)


def test_a_large_vocabulary_is_encoded_in_bounded_slices(tiny_localizer, monkeypatch):
    """600 prompts run the text tower in slices of at most TEXT_BATCH, with the embeddings of one
    pass over them all."""
    from mmfinercam import text as localizer

    prompts = [f"trait number {i}" for i in range(600)]
    tiny_localizer.clear_cache()
    monkeypatch.setattr(localizer, "TEXT_BATCH", 10_000)
    whole = tiny_localizer.encode_text(prompts).clone()
    tiny_localizer.clear_cache()
    monkeypatch.setattr(localizer, "TEXT_BATCH", 256)
    sizes = []
    backend = tiny_localizer.backend
    original = backend.encode_text
    backend.encode_text = lambda part: sizes.append(len(part)) or original(part)
    try:
        sliced = tiny_localizer.encode_text(prompts)
    finally:
        del backend.encode_text
        tiny_localizer.clear_cache()
    assert sizes == [256, 256, 88]
    torch.testing.assert_close(sliced, whole, atol=1e-6, rtol=0)


def test_prompt_set_in_use_outlives_newer_sets(tiny_localizer):
    """The whole-set cache drops the least recently used set, not the one a stream keeps using."""
    tiny_localizer.clear_cache()
    kept = tiny_localizer.encode_text(["a bird", "a fish"])
    first_other = tiny_localizer.encode_text(["prompt 0"])
    for i in range(1, 70):
        assert tiny_localizer.encode_text(["a bird", "a fish"]) is kept  # the stream's set, reused
        tiny_localizer.encode_text([f"prompt {i}"])
    assert tiny_localizer.encode_text(["a bird", "a fish"]) is kept
    assert tiny_localizer.encode_text(["prompt 0"]) is not first_other  # evicted, made anew
    tiny_localizer.clear_cache()


def test_text_cached_under_inference_mode_can_join_autograd(tiny_localizer):
    """A set first encoded under torch.inference_mode (a dense run) serves a gradient CAM later."""
    tiny_localizer.clear_cache()
    with torch.inference_mode():
        tiny_localizer.encode_text(["a bird", "a fish"])
    text = tiny_localizer.encode_text(["a bird", "a fish"])
    z = torch.randn(1, text.shape[1], requires_grad=True)
    (z @ text.T).sum().backward()  # would raise if ``text`` were an inference tensor
    assert z.grad is not None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_fp32(tiny_model, sample_images, dtype):
    import copy

    import open_clip

    tok = open_clip.get_tokenizer("ViT-B-16")
    fp32 = mf.Localizer.from_open_clip(tiny_model, tok)
    half = mf.Localizer.from_open_clip(copy.deepcopy(tiny_model).to(dtype), tok)
    assert half.dtype == dtype
    a = fp32.finer_cam(sample_images[2], "a bird", ["a fish"])
    b = half.finer_cam(sample_images[2], "a bird", ["a fish"])
    assert b.scores.dtype == torch.float32
    assert torch.corrcoef(torch.stack([a.scores.flatten(), b.scores.flatten()]))[0, 1] > 0.95


@pytest.mark.parametrize("weighting", ["softmax", "uniform"])
def test_padded_contrasts_weigh_like_unpadded(weighting):
    """Rows padded to a common D (batch runs with ragged contrasts) give the unpadded weights."""
    sim = torch.tensor([[0.3, 0.1, 0.7], [0.2, 0.5, -0.4]])
    valid = torch.tensor([[True, True, False], [False, False, False]])
    w = contrast_weights(sim, 10.0, weighting, valid)
    torch.testing.assert_close(w[0, :2], contrast_weights(sim[:1, :2], 10.0, weighting)[0])
    assert w[0, 2] == 0 and torch.equal(w[1], torch.zeros(3))  # a row with no contrast weighs nothing


def test_contrast_names_are_made_per_image_when_read():
    from mmfinercam.results import ContrastNames

    names = ContrastNames(["blue wing", "green wing", "red body"], torch.tensor([[0, 2], [1, 0], [2, 1]]))
    assert len(names) == 3 and names[1] == ["green wing", "blue wing"]
    assert names[-1] == ["red body", "green wing"] and names[:2] == [["blue wing", "red body"], names[1]]
    assert names == [["blue wing", "red body"], ["green wing", "blue wing"], ["red body", "green wing"]]
    assert names != [["blue wing", "red body"]] and list(names)[2] == names[2]


def test_tensor_batch_is_sliced_in_chunks_in_order(tiny_localizer):
    x = torch.randn(5, 3, 64, 70, generator=torch.Generator().manual_seed(2))  # 70: cropped to 64
    whole = tiny_localizer.finer_cam(x, "a red wing", ["a blue wing"])
    chunked = tiny_localizer.finer_cam(x, "a red wing", ["a blue wing"], batch_size=2)
    assert whole.scores.shape == (5, 4, 4) and whole.indices == [0, 1, 2, 3, 4]
    torch.testing.assert_close(chunked.scores, whole.scores, atol=1e-5, rtol=1e-5)


def test_best_match_is_the_most_similar_prompt_and_the_target_on_a_tie():
    from mmfinercam.explain.finer import best_match

    assert best_match(["target", "a", "b"], [0.2, 0.3, 0.25]) == "a"
    assert best_match(["target", "a"], [0.3, 0.3]) == "target"
    assert best_match(["target"], [0.1]) == "target"
