"""Trait discovery: which phrases of a vocabulary separate a species from each similar one.

A trait separates the target species from a sibling when the target's images match it more than
the sibling's images do. Averaging over all siblings lets one very different sibling hide that
the trait does not separate the target from another; so a trait's margin is its *smallest*
margin over the siblings:

    margin_g(t) = mean_{i in target} <z_i, t> - mean_{j in group g} <z_j, t>
    m(t)        = min_g margin_g(t)

Phrases that share words share evidence: if the target has a red wing, "red head" also gains a
margin from the red. Finer-CAM's own remedy, applied to the vocabulary, cancels it: a trait's
score is its margin minus ``alpha`` times the mean margin of its ``neighbours`` nearest phrases
(cosine of their text embeddings),

    score(t) = m(t) - alpha * mean_{t' in NN_k(t)} m(t')

so "red head" loses what it owes to "red wing", and "red wing" keeps what no neighbour explains.
``neighbours=0`` gives the plain margin. The defaults (k = 1, alpha = 0.25: a quarter of the
nearest phrase's margin) were chosen for the shipped testbed model by
``scripts/select_trait_defaults.py`` on two held-out testbed splits (start 4000 and 6000, 8
images a species; k in 0..6 × alpha in 0.25..1) and reported on two others (14000 and 16000):
there they put the known differing trait first for 13 and 13 of the 24 species (plain margin: 10
and 11) and in the top 3 for all 24 on both (plain: 23 and 22). The earlier default, k = 6 and
alpha = 1, chosen for an earlier testbed model, gave 13 and 10 first and 22 in the top 3 on
both: with larger shares, a trait whose neighbours favour the siblings (negative margins) is
lifted by them, even when its own margin is noise.

Each image costs one image-tower pass for the whole vocabulary. Where the top traits lie in the
image is then shown with Finer-CAM (see notebooks/02_trait_discovery.ipynb).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ImageLoadError, PromptError
from .finer import check_alpha, check_prompt, is_whole_number
from .images import ImageInput, pixel_batches


@dataclass
class TraitRanking:
    """The vocabulary ranked, with each margin's standard error: with a few images a group, a
    margin of a few hundredths can be noise, and the ranking alone would not say so."""

    traits: list[str]  #: the vocabulary, best-separating trait first
    scores: Tensor  #: V, the smallest margin less the neighbours' share, in ``traits`` order
    margins: Tensor  #: G×V, the margin over each contrast group, in ``traits`` order
    #: G×V, each margin's standard error (Welch: the two groups' variances over their sizes;
    #: NaN where a group has one image, which gives no variance)
    margin_errors: Tensor | None = None
    counts: list[int] | None = None  #: images used: the target's, then each contrast group's

    def smallest_margin(self) -> tuple[Tensor, Tensor]:
        """V and V: each trait's smallest margin over the groups and that margin's standard
        error, in ``traits`` order."""
        if self.margin_errors is None:
            raise ValueError("this ranking was made without standard errors")
        g = self.margins.argmin(dim=0, keepdim=True)
        return self.margins.gather(0, g)[0], self.margin_errors.gather(0, g)[0]

    def smallest_margin_z(self) -> Tensor:
        """V: each trait's smallest margin over its standard error (how many errors above no
        separation; under 2, the data cannot tell the trait from none), in ``traits`` order."""
        margin, error = self.smallest_margin()
        return margin / error

    def rank_of(self, trait: str) -> int:
        """1-based rank of ``trait``."""
        return self.traits.index(trait) + 1

    def table(self, k: int = 10) -> list[tuple[str, float]]:
        return [(t, round(float(s), 4)) for t, s in zip(self.traits[:k], self.scores[:k])]


def _similarity_moments(
    loc, images: Sequence[ImageInput], text: Tensor, batch_size: int, group: str
) -> tuple[Tensor, Tensor, int]:
    """The mean and the (unbiased) variance over the images of each phrase's similarity, and
    how many images were used. Files are read a few batches at a time, so a group of thousands
    of specimens never sits in memory whole."""
    # sums of the similarities less a shift (the first batch's mean), so the variance is not the
    # small difference of two large sums (float32, as on any device)
    shift: Tensor | None = None
    total = text.new_zeros(text.shape[0])
    squares = torch.zeros_like(total)
    n, failed = 0, []
    for prepared, broken in loc.prepare_in_chunks(images, 4 * batch_size):
        failed += broken
        for _, pixels in pixel_batches(prepared, batch_size):
            out = loc.image_tokens(pixels, method="raw")
            sims = F.normalize(out.global_embedding, dim=-1) @ text.T
            shift = sims.mean(0) if shift is None else shift
            total += (sims - shift).sum(0)
            squares += (sims - shift).square().sum(0)
        n += len(prepared)
    if not n:
        why = "; ".join(f"{f.source}: {f.message}" for f in failed) or "no images given"
        raise ImageLoadError(f"no usable image among {group}: {why}", failed)
    for f in failed:  # reported, as finer_cam reports them; the group's mean is of the rest
        warnings.warn(f"skipped image {f.source}: {f.message}", stacklevel=3)
    assert shift is not None  # at least one image was used
    mean = shift + total / n
    nan = torch.full_like(mean, float("nan"))  # one image: no variance
    variance = (squares - total.square() / n).clamp_min(0) / (n - 1) if n > 1 else nan
    return mean, variance, n


def contrast_with_neighbours(margin: Tensor, text: Tensor, neighbours: int, alpha: float) -> Tensor:
    """``margin`` (V) less ``alpha`` times the mean margin of each phrase's ``neighbours`` nearest
    other phrases by cosine of their (normalized) embeddings ``text`` (V×E)."""
    k = min(neighbours, len(margin) - 1)
    if k <= 0 or alpha == 0:
        return margin
    similarity = text @ text.T
    similarity.fill_diagonal_(float("-inf"))
    nearest = similarity.topk(k, dim=1).indices  # V×k
    return margin - alpha * margin[nearest].mean(dim=1)


def rank_traits(
    loc,
    target_images: Sequence[ImageInput],
    contrast_groups: Sequence[Sequence[ImageInput]],
    vocabulary: Sequence[str] | str,
    *,
    templates: Sequence[str] | None = None,
    neighbours: int = 1,
    alpha: float = 0.25,
    batch_size: int = 32,
) -> TraitRanking:
    """Rank ``vocabulary`` (phrases, or a shipped vocabulary name / file) by how well each trait
    separates ``target_images`` from every group of ``contrast_groups`` (one group a species).

    ``neighbours`` and ``alpha`` set how much of the margins of each trait's nearest phrases is
    subtracted (module docstring); ``neighbours=0`` ranks by the smallest margin alone."""
    from . import prompts

    alpha = check_alpha(alpha)
    whole = is_whole_number(neighbours) and is_whole_number(batch_size)
    if not whole or neighbours < 0 or batch_size < 1:
        raise ValueError(
            f"neighbours must be whole and >= 0, batch_size whole and >= 1; "
            f"got {neighbours!r} and {batch_size!r}"
        )
    if isinstance(vocabulary, str):
        entries = prompts.load(vocabulary)
    else:
        entries = list(dict.fromkeys(check_prompt(v, "vocabulary entry") for v in vocabulary))
    if not entries:
        raise PromptError("the vocabulary is empty")
    if not contrast_groups:
        raise PromptError("give at least one group of images of a similar species to separate from")
    text = loc.encode_text(entries, loc.templates if templates is None else templates)
    target, target_var, n_target = _similarity_moments(
        loc, target_images, text, batch_size, "the target images"
    )
    groups = [
        _similarity_moments(loc, g, text, batch_size, f"contrast group {i + 1}")
        for i, g in enumerate(contrast_groups)
    ]
    margins = target[None] - torch.stack([mean for mean, _, _ in groups])
    errors = torch.stack([(target_var / n_target + var / n).sqrt() for _, var, n in groups])
    scores = contrast_with_neighbours(margins.amin(dim=0), text, neighbours, alpha)
    order = scores.argsort(descending=True, stable=True)
    return TraitRanking(
        [entries[i] for i in order],
        scores[order].cpu(),
        margins[:, order].cpu(),
        errors[:, order].cpu(),
        [n_target, *(n for _, _, n in groups)],
    )
