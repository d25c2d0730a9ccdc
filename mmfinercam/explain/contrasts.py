"""Which concepts an image is contrasted with: the one contrast selector.

Finer-CAM subtracts the evidence of *similar* concepts. Which ones are similar is decided here,
for every caller alike (:class:`~mmfinercam.Localizer`, the batch runner, trait discovery and
:class:`~mmfinercam.ClassifierFinerCAM`):

* given explicitly, a list a prompt set (padded to a common width, with a validity mask);
* or automatically: the entries of a vocabulary ranked by closeness to the target,
  ``|s_i - s_c|`` (the official code's rule; rank 0 is the target itself), taking the ranks
  asked for (by default 1, 2, 3: the three most similar).

:func:`closest_entries` is the ranking rule; :class:`ContrastPlan` applies it, or the explicit
lists, to a batch of images and prompt sets; :class:`ContrastChoice` is what it chose.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def closest_entries(
    similarity: Tensor, reference: Tensor, ranks: Sequence[int], exclude: Tensor | None = None
) -> Tensor:
    """Indices of the entries at ``ranks`` by closeness of their score to a reference score.

    Entries are sorted by ``|similarity - reference|`` (stably: ties keep their order); rank 1
    is the closest entry other than the reference itself, which is rank 0 and must not be among
    the entries, or be marked in ``exclude`` (excluded entries rank last).

    Args:
        similarity: ...×M scores of the entries (global similarities, logits, cosines).
        reference: ... scores of the reference (the target).
        ranks: which ranks to take, each from 1 (checked by the caller).
        exclude: ...×M bool marking entries never to take (the target among them).

    Returns:
        ...×len(ranks) entry indices.
    """
    gap = (similarity - reference[..., None]).abs()
    if exclude is not None:
        gap = gap.masked_fill(exclude, torch.inf)
    order = gap.argsort(dim=-1, stable=True)
    return order[..., [r - 1 for r in ranks]]


@dataclass
class ContrastChoice:
    """The contrasts chosen for a batch of B images and S prompt sets.

    Args:
        index: B×S×D bank indices of the contrasts (0 where padded).
        valid: B×S×D bool, True where a contrast is real.
        target_similarity: B×S global similarity of each image to each set's target.
        contrast_similarity: B×S×D global similarity to each contrast.
    """

    index: Tensor
    valid: Tensor
    target_similarity: Tensor
    contrast_similarity: Tensor

    def repeated(self, n: int) -> ContrastChoice:
        """One image's choice for ``n`` views of it (the windows of a tiled image).

        Args:
            n: how many.

        Returns:
            The choice with each tensor's batch of one expanded to ``n``.
        """
        return ContrastChoice(
            *(
                t.expand(n, *t.shape[1:])
                for t in (self.index, self.valid, self.target_similarity, self.contrast_similarity)
            )
        )


@dataclass
class ContrastPlan:
    """How the contrasts of a run are chosen: explicit lists, or ranks over a vocabulary.

    Prompts are indices into the run's text bank (every prompt encoded once). A set with an
    explicit list uses it; a set without one takes the vocabulary entries at ``ranks`` for
    each image, the set's own target excluded. Without a vocabulary such a set has no
    contrasts (its Finer-CAM map is the plain target map).

    Args:
        vocabulary: M bank indices of the vocabulary (empty for none).
        ranks: the ranks taken from it, each from 1, already checked against its size.
    """

    vocabulary: Tensor
    ranks: list[int]

    @classmethod
    def explicit_lists(
        cls, lists: Sequence[Sequence[Sequence[int]]], device: torch.device | None = None
    ) -> tuple[Tensor, Tensor]:
        """Explicit contrast lists of B images × S sets as padded tensors.

        Args:
            lists: ``lists[b][s]`` the bank indices of image b's set s (empty: automatic).
            device: where the tensors go.

        Returns:
            B×S×W indices (0 where padded) and B×S×W validity; W is the longest list.
        """
        b, s = len(lists), len(lists[0]) if lists else 0
        width = max([len(e) for row in lists for e in row] + [0])
        index = torch.zeros(b, s, width, dtype=torch.long)
        valid = torch.zeros(b, s, width, dtype=torch.bool)
        for i, row in enumerate(lists):
            for j, entries in enumerate(row):
                if entries:
                    index[i, j, : len(entries)] = torch.as_tensor(list(entries), dtype=torch.long)
                    valid[i, j, : len(entries)] = True
        return index.to(device), valid.to(device)

    def choose(
        self, global_similarity: Tensor, target: Tensor, index: Tensor, valid: Tensor
    ) -> ContrastChoice:
        """The contrasts of a batch: the explicit lists, and vocabulary ranks where none.

        Args:
            global_similarity: B×P similarity of each image to every prompt of the bank.
            target: B×S bank indices of each set's target.
            index: B×S×W explicit contrast indices (:meth:`explicit_lists`).
            valid: B×S×W validity of ``index``.

        Returns:
            The choice, padded to the wider of the explicit lists and the ranks.
        """
        b, s = target.shape
        automatic = ~valid.any(dim=-1)  # B×S: sets that name no contrast
        ranks = self.ranks if len(self.vocabulary) else []
        width = max(index.shape[-1], len(ranks) if bool(automatic.any()) else 0)
        if width > index.shape[-1]:
            pad = width - index.shape[-1]
            index = torch.nn.functional.pad(index, (0, pad))
            valid = torch.nn.functional.pad(valid, (0, pad))
        if ranks and bool(automatic.any()):
            vocabulary = self.vocabulary.to(target.device)
            rows, sets = automatic.nonzero(as_tuple=True)
            targets = target[rows, sets]
            similarity = global_similarity[rows][:, vocabulary]  # n×M
            exclude = vocabulary[None, :] == targets[:, None]  # a set's target is never its contrast
            reference = global_similarity[rows, targets]
            picked = vocabulary[closest_entries(similarity, reference, ranks, exclude)]
            index = index.clone()
            valid = valid.clone()
            index[rows, sets, : len(ranks)] = picked
            valid[rows, sets, : len(ranks)] = True
        target_similarity = global_similarity.gather(1, target)
        contrast_similarity = global_similarity.gather(1, index.flatten(1)).view(index.shape)
        return ContrastChoice(index, valid, target_similarity, contrast_similarity)
