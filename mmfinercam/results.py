"""What a Finer-CAM run gives back: the result object, and the one record of a map.

:class:`FinerCAMResult` holds a call's maps and the numbers behind them. :class:`MapRecord` is
the one description of one map (where it peaks, its contrasts and weights, similarities, where
it is stored) that ``localize``'s JSON, the web app's summary and ``batch``'s Parquet rows all
write; :func:`record_schema` derives the Parquet schema from it, and :func:`grid_statistics`
computes its numbers on the device for a whole batch at once.
"""

from __future__ import annotations

import types
import typing
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Union

import torch
from torch import Tensor

from .explain.cams import cam_heatmap, gradient_methods
from .explain.finer import best_match, to_heatmap
from .pixels import FailedImage


class ContrastNames(Sequence[list[str]]):
    """The contrast prompts of each image, named when read.

    A call over 256 images against 99 contrasts would otherwise build 25,000 strings on the
    host before returning.

    Args:
        entries: the prompts the indices point at.
        index: B×D indices into ``entries``.
    """

    def __init__(self, entries: Sequence[str], index: Tensor) -> None:
        self._entries, self._index = list(entries), index.cpu()

    def __len__(self) -> int:
        return self._index.shape[0]

    def __getitem__(self, i: Any) -> Any:  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return [self._entries[j] for j in self._index[i].tolist()]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return repr(list(self))


@dataclass
class MapRecord:
    """One map described: the record ``localize``, the app and ``batch`` all write.

    Args:
        key: the input's name in its run (a path relative to a folder, a list's row key).
        source: where the image was read from.
        status: ``"ok"``, or ``"failed"`` for an image that could not be used.
        error: why it failed; on an ``"ok"`` row, why its mask could not be used.
        prompt_set: the prompt set's name.
        set_index: the set's position among the run's sets.
        target: the target prompt.
        contrast: the contrast prompts used.
        weights: their weights.
        alpha: the contrast strength.
        method: the method that made the map.
        image_height: the image's height as given.
        image_width: its width.
        grid_height: the score grid's rows.
        grid_width: its columns.
        peak_x: the centre of the highest-scoring cell, in image pixels; None where no cell
            has positive evidence.
        peak_y: likewise.
        score_min: the smallest raw score.
        score_max: the largest.
        score_mean: the mean.
        positive_fraction: the share of cells with positive evidence.
        target_similarity: global cosine of the image and the target.
        contrast_similarity: the same for each contrast.
        best_match: the prompt the model matches the whole image to best.
        mask_energy: the share of the positive map inside the image's mask, if one was given.
        top_prompts: the run's prompts the image is most similar to.
        top_similarities: their similarities.
        map_file: the file the scores are stored in.
        map_index: the row of that file, for a file of many maps.
    """

    key: str
    source: str
    status: str = "ok"
    error: str | None = None
    prompt_set: str | None = None
    set_index: int | None = None
    target: str | None = None
    contrast: list[str] | None = None
    weights: list[float] | None = None
    alpha: float | None = None
    method: str | None = None
    image_height: int | None = None
    image_width: int | None = None
    grid_height: int | None = None
    grid_width: int | None = None
    peak_x: float | None = None
    peak_y: float | None = None
    score_min: float | None = None
    score_max: float | None = None
    score_mean: float | None = None
    positive_fraction: float | None = None
    target_similarity: float | None = None
    contrast_similarity: list[float] | None = None
    best_match: str | None = None
    mask_energy: float | None = None
    top_prompts: list[str] | None = None
    top_similarities: list[float] | None = None
    map_file: str | None = None
    map_index: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict, in field order.

        Returns:
            Field name -> value.
        """
        return asdict(self)


def record_schema() -> Any:
    """The Parquet (pyarrow) schema of :class:`MapRecord`, derived from its fields' types.

    Returns:
        A ``pyarrow.Schema`` with one nullable column a field.
    """
    import pyarrow as pa

    scalars = {str: pa.string(), int: pa.int64(), float: pa.float64()}
    hints = typing.get_type_hints(MapRecord)
    columns = []
    for f in fields(MapRecord):
        kind = hints[f.name]
        if typing.get_origin(kind) in (Union, types.UnionType):  # X | None
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if typing.get_origin(kind) is list:
            columns.append((f.name, pa.list_(scalars[typing.get_args(kind)[0]])))
        else:
            columns.append((f.name, scalars[kind]))
    return pa.schema(columns)


def grid_statistics(scores: Tensor) -> dict[str, Tensor]:
    """The numbers a record keeps of score grids, for any number of maps at once.

    Args:
        scores: ...×h×w raw scores.

    Returns:
        ``peak`` (flat index of the highest cell), ``score_max``, ``score_min``,
        ``score_mean`` and ``positive_fraction``, each of shape ``...``.
    """
    flat = scores.flatten(-2).float()
    top, peak = flat.max(dim=-1)
    return {
        "peak": peak,
        "score_max": top,
        "score_min": flat.min(dim=-1).values,
        "score_mean": flat.mean(dim=-1),
        "positive_fraction": (flat > 0).float().mean(dim=-1),
    }


def peak_position(
    peak: int, score_max: float, grid: tuple[int, int], size: tuple[int, int]
) -> tuple[float | None, float | None]:
    """Where a map peaks, in image pixels: the centre of its highest cell.

    Args:
        peak: the cell's flat index in the grid.
        score_max: its score.
        grid: the grid's (rows, columns).
        size: the image's (height, width).

    Returns:
        (x, y), or (None, None) where no cell has positive evidence.
    """
    if not score_max > 0:
        return None, None
    row, col = divmod(int(peak), grid[1])
    return (col + 0.5) * size[1] / grid[1], (row + 0.5) * size[0] / grid[0]


def make_record(
    *,
    key: str,
    source: str,
    target: str,
    contrast: list[str],
    weights: list[float],
    target_similarity: float,
    contrast_similarity: list[float],
    stats: dict[str, float],
    size: tuple[int, int],
    grid: tuple[int, int],
    **fields: Any,
) -> MapRecord:
    """A map's record from its numbers: where it peaks, its spread, what it best matches.

    Args:
        key: the input's name in its run.
        source: where the image was read from.
        target: the target prompt.
        contrast: the contrasts used.
        weights: their weights.
        target_similarity: the image's global cosine with the target.
        contrast_similarity: the same for each contrast.
        stats: one map's :func:`grid_statistics`, as numbers.
        size: the image's (height, width).
        grid: the score grid's (rows, columns).
        **fields: any other :class:`MapRecord` fields.

    Returns:
        The record.
    """
    peak_x, peak_y = peak_position(int(stats["peak"]), stats["score_max"], grid, size)
    return MapRecord(
        key=key,
        source=source,
        target=target,
        contrast=contrast,
        weights=weights,
        image_height=size[0],
        image_width=size[1],
        grid_height=grid[0],
        grid_width=grid[1],
        peak_x=peak_x,
        peak_y=peak_y,
        score_min=stats["score_min"],
        score_max=stats["score_max"],
        score_mean=stats["score_mean"],
        positive_fraction=stats["positive_fraction"],
        target_similarity=target_similarity,
        contrast_similarity=contrast_similarity,
        best_match=best_match([target, *contrast], [target_similarity, *contrast_similarity]),
        **fields,
    )


@dataclass
class FinerCAMResult:
    """Maps and the numbers behind them, for the images that could be used.

    ``scores`` (and ``heatmaps``) are stacked tensors when every image has the same size, lists
    of per-image tensors otherwise.

    Args:
        scores: B×h×w raw Finer-CAM scores on the patch grid (a finer grid with ``shifts``).
        target: the target prompt.
        contrast: the contrast prompts used, a list an image.
        weights: B×D contrast weights (rows sum to 1).
        alpha: the contrast strength.
        method: the method that made the maps.
        target_similarity: B global cosines of each image with the target.
        contrast_similarity: B×D the same for each contrast.
        sources: each image's name.
        indices: ``indices[i]`` is the position of result ``i`` in the input.
        image_sizes: (height, width) of each image as given.
        failed: the inputs that could not be used, and why.
        target_scores: B×h×w plain target maps (alpha = 0); None for gradient methods.
        views: how many shifted or mirrored views each map averages.
    """

    scores: Tensor | list[Tensor]
    target: str
    contrast: Sequence[list[str]]
    weights: Tensor
    alpha: float
    method: str
    target_similarity: Tensor
    contrast_similarity: Tensor
    sources: list[str]
    indices: list[int]
    image_sizes: list[tuple[int, int]]
    failed: list[FailedImage] = field(default_factory=list)
    target_scores: Tensor | list[Tensor] | None = None
    views: int = 1
    _heatmaps: Tensor | list[Tensor] | None = field(default=None, repr=False, compare=False)
    _last_heatmap: tuple[int, Tensor] | None = field(default=None, repr=False, compare=False)

    @property
    def heatmaps(self) -> Tensor | list[Tensor]:
        """B×H×W in [0, 1], each at its image's own size.

        The scores upsampled, rectified and min-max normalized; made on first use, so a run that
        keeps only the patch-grid scores never pays for full-size maps.
        """
        if self._heatmaps is None:
            maps = _heatmaps_at_sizes(list(self.scores), self.image_sizes, self._make_heatmaps)
            self._heatmaps = stack_if_uniform(maps)
        return self._heatmaps

    @property
    def _make_heatmaps(self) -> Callable[[Tensor, tuple[int, int]], Tensor]:
        """How this method's scores become heatmaps: a gradient CAM's scaling, or the dense one."""
        return cam_heatmap if self.method in gradient_methods() else to_heatmap

    def heatmap(self, i: int) -> Tensor:
        """Image ``i``'s heatmap alone, equal to ``heatmaps[i]``.

        A loop over a batch of large scans then holds one full-size map at a time; the last
        one made is kept.

        Args:
            i: the result's position.

        Returns:
            H×W in [0, 1].
        """
        if self._heatmaps is not None:
            return self._heatmaps[i]
        if self._last_heatmap is None or self._last_heatmap[0] != i:
            self._last_heatmap = (i, self._make_heatmaps(self.scores[i][None], self.image_sizes[i])[0])
        return self._last_heatmap[1]

    def __len__(self) -> int:
        return len(self.indices)

    def best_match(self, i: int) -> str:
        """Of the target and image ``i``'s contrasts, the prompt the model matches it to best.

        When it is a contrast, the map still shows where the image leans towards the target,
        but the model does not see the target here.

        Args:
            i: the result's position.

        Returns:
            The prompt (the target on a tie).
        """
        sims = [float(self.target_similarity[i]), *map(float, self.contrast_similarity[i].reshape(-1))]
        return best_match([self.target, *self.contrast[i]], sims)

    def record(self, i: int) -> MapRecord:
        """Result ``i`` described as the one record every output writes.

        Args:
            i: the result's position.

        Returns:
            Its record (no ``map_file``: the writer fills that).
        """
        score = self.scores[i]
        return make_record(
            key=self.sources[i],
            source=self.sources[i],
            target=self.target,
            contrast=list(self.contrast[i]),
            weights=[round(float(w), 6) for w in self.weights[i]],
            target_similarity=float(self.target_similarity[i]),
            contrast_similarity=[float(s) for s in self.contrast_similarity[i].reshape(-1)],
            stats={k: v.item() for k, v in grid_statistics(score).items()},
            size=self.image_sizes[i],
            grid=(int(score.shape[-2]), int(score.shape[-1])),
            prompt_set=self.target,
            set_index=0,
            alpha=self.alpha,
            method=self.method,
        )

    def summary(self, i: int) -> dict[str, Any]:
        """Result ``i``'s record as a JSON-ready dict.

        Args:
            i: the result's position.

        Returns:
            :meth:`record` as a dict.
        """
        return self.record(i).as_dict()


def stack_if_uniform(items: list[Tensor]) -> Tensor | list[Tensor]:
    """Tensors stacked where they share a shape, else the list.

    Args:
        items: tensors.

    Returns:
        One tensor, or the list as it is.
    """
    if items and all(t.shape == items[0].shape for t in items):
        return torch.stack(items)
    return items


def in_input_order(chunks: list[Tensor], positions: list[int]) -> Tensor | list[Tensor]:
    """Rows of per-batch tensors put back in input order.

    Args:
        chunks: batches' tensors, rows first.
        positions: ``positions[r]`` is where the r-th row (counting through the chunks) belongs.

    Returns:
        One tensor when every row has the same shape, else a list of rows.
    """
    if len(chunks) == 1 and positions == list(range(len(positions))):
        return chunks[0]  # one batch in input order (a tensor of images): nothing to move
    order = torch.empty(len(positions), dtype=torch.long)
    order[torch.tensor(positions)] = torch.arange(len(positions))
    if all(c.shape[1:] == chunks[0].shape[1:] for c in chunks):
        return torch.cat(chunks)[order]
    flat = [row for c in chunks for row in c]
    return [flat[r] for r in order.tolist()]


def _heatmaps_at_sizes(
    scores: list[Tensor], sizes: list[tuple[int, int]], make: Callable[[Tensor, tuple[int, int]], Tensor]
) -> list[Tensor]:
    """Each image's heatmap at its own size; same-sized maps are made together."""
    out: list[Tensor | None] = [None] * len(scores)
    groups: dict[tuple[tuple[int, int], tuple[int, ...]], list[int]] = defaultdict(list)
    for i, (s, size) in enumerate(zip(scores, sizes)):
        groups[(size, tuple(s.shape))].append(i)
    for (size, _), idx in groups.items():
        for i, heatmap in zip(idx, make(torch.stack([scores[i] for i in idx]), size)):
            out[i] = heatmap
    return out  # type: ignore[return-value]
