"""Trait ranking: the smallest margin over the sibling groups, against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import mmfinercam as mf


def picture(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 80, 3), dtype=np.uint8))


def test_scores_are_the_smallest_margin_over_groups(tiny_localizer):
    loc = tiny_localizer
    vocab = ["red wing", "blue wing", "long beak", "striped tail"]
    target = [picture(1), picture(2)]
    groups = [[picture(3), picture(4)], [picture(5)]]
    ranking = mf.rank_traits(loc, target, groups, vocab)

    text = loc.encode_text(vocab, loc.templates)

    def mean_sim(images):
        pixels = torch.stack([p.pixels for p in loc.prepare(images)[0]])
        z = F.normalize(loc.image_tokens(pixels, method="raw").global_embedding, dim=-1)
        return (z @ text.T).mean(0)

    margins = torch.stack([mean_sim(target) - mean_sim(g) for g in groups])
    expected = margins.amin(0)
    order = expected.argsort(descending=True)
    assert ranking.traits == [vocab[i] for i in order]
    torch.testing.assert_close(ranking.scores, expected[order], atol=1e-5, rtol=0)
    torch.testing.assert_close(ranking.margins, margins[:, order], atol=1e-5, rtol=0)
    assert ranking.rank_of(vocab[int(order[0])]) == 1 and len(ranking.table(2)) == 2


def test_needs_a_group_and_a_vocabulary(tiny_localizer):
    image = [picture(1)]
    with pytest.raises(mf.PromptError):
        mf.rank_traits(tiny_localizer, image, [], ["red wing"])
    with pytest.raises(mf.PromptError):
        mf.rank_traits(tiny_localizer, image, [image], [])
