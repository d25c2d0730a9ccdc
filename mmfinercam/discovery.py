"""Trait discovery: which phrases of a vocabulary separate a species from each similar one.

A trait separates the target species from a sibling when the target's images match it more than
the sibling's images do. Averaging over all siblings lets one very different sibling hide that
the trait does not separate the target from another; so a trait's margin is its *smallest*
margin over the siblings:

    margin_g(t) = mean_{i in target} <z_i, t> - mean_{j in group g} <z_j, t>
    m(t)        = min_g margin_g(t)

Phrases that share words share evidence: if the target has a red wing, "red head" also gains a
margin from the red. Finer-CAM's own remedy, applied to the vocabulary, cancels it: a trait's
score is its margin minus ``neighbour_share`` times the mean margin of its ``neighbours``
nearest phrases (cosine of their text embeddings, chosen by the same rule as every contrast:
:func:`~mmfinercam.explain.contrasts.closest_entries`),

    score(t) = m(t) - share * mean_{t' in NN_k(t)} m(t')

so "red head" loses what it owes to "red wing", and "red wing" keeps what no neighbour explains.
``neighbours=0`` gives the plain margin. The defaults (k = 1, a share of 0.25) were chosen for
the shipped testbed model by ``scripts/select_trait_defaults.py`` on held-out testbed splits
and reported on two others (``benchmarks/RESULTS.md``). Larger shares lift a trait whose
neighbours favour the siblings (negative margins), even when its own margin is noise.

Each image costs one image-tower pass for the whole vocabulary. Where the top traits lie in the
image is then shown with Finer-CAM (see notebooks/02_trait_discovery.ipynb).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_prompt, check_whole, renamed_keywords
from .errors import ConfigError, ImageLoadError, PromptError
from .explain.contrasts import closest_entries
from .images import ImageInput
from .pixels import pixel_batches

if TYPE_CHECKING:
    from .localizer import Localizer


@dataclass
class TraitRanking:
    """The vocabulary ranked, with each margin's standard error.

    With a few images a group, a margin of a few hundredths can be noise, and the ranking alone
    would not say so.

    Args:
        traits: the vocabulary, best-separating trait first.
        scores: V, the smallest margin less the neighbours' share, in ``traits`` order.
        margins: G×V, the margin over each contrast group, in ``traits`` order.
        margin_errors: G×V, each margin's standard error (Welch: the two groups' variances over
            their sizes; NaN where a group has one image, which gives no variance).
        counts: images used: the target's, then each contrast group's.
    """

    traits: list[str]
    scores: Tensor
    margins: Tensor
    margin_errors: Tensor
    counts: list[int]

    def smallest_margin(self) -> tuple[Tensor, Tensor]:
        """Each trait's smallest margin over the groups and that margin's standard error.

        Returns:
            V margins and V standard errors, in ``traits`` order.
        """
        g = self.margins.argmin(dim=0, keepdim=True)
        return self.margins.gather(0, g)[0], self.margin_errors.gather(0, g)[0]

    def smallest_margin_z(self) -> Tensor:
        """Each trait's smallest margin over its standard error.

        Returns:
            V: how many errors above no separation; under 2, the data cannot tell the trait
            from none.
        """
        margin, error = self.smallest_margin()
        return margin / error

    def rank_of(self, trait: str) -> int:
        """Where a trait ranks.

        Args:
            trait: one of :attr:`traits`.

        Returns:
            Its 1-based rank.
        """
        return self.traits.index(trait) + 1

    def table(self, k: int = 10) -> list[tuple[str, float]]:
        """The top of the ranking.

        Args:
            k: how many traits.

        Returns:
            (trait, score) of the first ``k``.
        """
        return [(t, round(float(s), 4)) for t, s in zip(self.traits[:k], self.scores[:k])]


def _similarity_moments(
    loc: Localizer, images: Sequence[ImageInput], text: Tensor, batch_size: int, group: str
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


def contrast_with_neighbours(margin: Tensor, text: Tensor, neighbours: int, share: float) -> Tensor:
    """Each phrase's margin less a share of the mean margin of its nearest other phrases.

    Args:
        margin: V margins.
        text: V×E normalized text embeddings of the phrases.
        neighbours: how many nearest phrases (by cosine) to take.
        share: how much of their mean margin to take off.

    Returns:
        V scores.
    """
    k = min(neighbours, len(margin) - 1)
    if k <= 0 or share == 0:
        return margin
    similarity = text @ text.T  # a phrase's own cosine is 1: its closest entry
    own = torch.eye(len(margin), dtype=torch.bool, device=margin.device)
    nearest = closest_entries(similarity, similarity.diagonal(), range(1, k + 1), exclude=own)  # V×k
    return margin - share * margin[nearest].mean(dim=1)


@renamed_keywords(alpha="neighbour_share")
def rank_traits(
    loc: Localizer,
    target_images: Sequence[ImageInput],
    contrast_groups: Sequence[Sequence[ImageInput]],
    vocabulary: Sequence[str] | str,
    *,
    templates: Sequence[str] | None = None,
    neighbours: int = 1,
    neighbour_share: float = 0.25,
    batch_size: int = 32,
) -> TraitRanking:
    """Rank a vocabulary by how well each trait separates a species from each similar one.

    Each image costs one image-tower pass for the whole vocabulary; files are read a few
    batches at a time.

    Args:
        loc: the model.
        target_images: the species' images (files, PIL images, arrays).
        contrast_groups: one group of images a similar species to separate from.
        vocabulary: trait phrases, or a shipped vocabulary's name or a file.
        templates: prompt templates (default: the model's).
        neighbours: how many nearest phrases' margins to discount (0: the plain margin).
        neighbour_share: how much of their mean margin to take off (module docstring).
        batch_size: images a pass.

    Returns:
        The ranking, best-separating trait first, with each margin's standard error.

    Raises:
        ConfigError: for unusable numbers.
        PromptError: for an empty vocabulary or no contrast group.
        ImageLoadError: when a group has no usable image.
    """
    from . import prompts

    share = check_neighbour_share(neighbour_share)
    neighbours = check_whole(neighbours, "neighbours", least=0)
    batch_size = check_whole(batch_size, "batch_size")
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
    scores = contrast_with_neighbours(margins.amin(dim=0), text, neighbours, share)
    order = scores.argsort(descending=True, stable=True)
    return TraitRanking(
        [entries[i] for i in order],
        scores[order].cpu(),
        margins[:, order].cpu(),
        errors[:, order].cpu(),
        [n_target, *(n for _, _, n in groups)],
    )


def check_neighbour_share(share: object) -> float:
    """The neighbours' share: a number from 0 to 1.

    Beyond 1 a trait would lose more than its neighbours' whole margin.

    Args:
        share: the value given.

    Returns:
        It as a float.

    Raises:
        ConfigError: when it is not a number from 0 to 1.
    """
    try:
        value = float(share)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = float("nan")
    if not 0 <= value <= 1:  # NaN fails too
        raise ConfigError(f"neighbour_share must be a number from 0 to 1, got {share!r}")
    return value
