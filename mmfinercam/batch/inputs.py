"""A batch run's inputs: collections of images, prompt sets, and the worker-side dataset."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._checks import check_contrasts, check_prompt
from ..errors import ConfigError, ImageLoadError, PromptError
from ..images import IMAGE_SUFFIXES, image_files
from ..masks import mask_for_energy, read_mask
from ..pixels import prepare_images

CONTRAST_SEPARATOR = "|"


@dataclass(frozen=True)
class PromptSet:
    """A target and what to contrast it with: explicit prompts, or the closest vocabulary entries.

    Args:
        name: the set's name in the outputs.
        target: the target prompt.
        contrast: explicit contrasts; empty for automatic ones (or none).
    """

    name: str
    target: str
    contrast: tuple[str, ...] = ()


@dataclass
class Row:
    """One input image: a key unique in the collection, where to read it, optional prompts and mask.

    Args:
        key: unique in the collection (a path relative to the folder, a list's path).
        source: a path, or a row index of a ``datasets`` dataset.
        target: the row's own target prompt.
        contrast: the row's own contrasts.
        mask: a part mask file.
    """

    key: str
    source: str | int
    target: str | None = None
    contrast: tuple[str, ...] = ()
    mask: str | None = None


@dataclass
class Collection:
    """The rows of one input: a folder, a list, or a saved ``datasets`` dataset.

    Args:
        rows: one an image.
        kind: ``"folder"``, ``"table"`` or ``"datasets"``.
        location: where it was read from.
        image_column: a dataset's image column.
    """

    rows: list[Row]
    kind: str
    location: str
    image_column: str = "image"

    def fingerprint(self) -> str:
        """A short hash of the rows (keys, prompts, masks): a resumed run must match it.

        Returns:
            16 hex digits.
        """
        h = hashlib.sha256()
        for r in self.rows:
            h.update(f"{r.key}\t{r.target}\t{CONTRAST_SEPARATOR.join(r.contrast)}\t{r.mask}\n".encode())
        return h.hexdigest()[:16]


def read_collection(
    location: str | Path,
    *,
    path_column: str = "path",
    image_column: str = "image",
    target_column: str = "target",
    contrast_column: str = "contrast",
    mask_column: str = "mask",
) -> Collection:
    """The rows of a folder, a CSV/Parquet list, or a saved ``datasets`` dataset.

    A folder yields its image files (recursively, hidden ones left out); a list has a path
    column and optional target, contrast (``|``-separated) and mask columns, paths relative to
    the list's folder; a dataset has an image column.

    Args:
        location: the folder, list or dataset folder.
        path_column: a list's path column.
        image_column: a dataset's image column.
        target_column: the per-row target column.
        contrast_column: the per-row contrasts column.
        mask_column: the per-row mask column.

    Returns:
        The collection.

    Raises:
        ConfigError: for an input that is none of these, or lists no image, or one twice.
    """
    path = Path(location).expanduser()
    if not path.exists():
        raise ConfigError(f"input {path} does not exist")
    if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "state.json").is_file()):
        return _read_datasets(path, image_column, target_column, contrast_column, mask_column)
    if path.is_dir():
        files = image_files(path, recursive=True)
        if not files:
            raise ConfigError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {path}")
        return Collection([Row(str(p.relative_to(path)), str(p)) for p in files], "folder", str(path))
    if path.suffix.lower() in (".csv", ".parquet", ".pq"):
        return _read_table(path, path_column, target_column, contrast_column, mask_column)
    raise ConfigError(f"input {path} is not a folder, a .csv/.parquet list or a saved datasets folder")


def _split_contrast(value: Any) -> tuple[str, ...]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ()
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(str(v).strip() for v in value if str(v).strip())
    return tuple(v.strip() for v in str(value).split(CONTRAST_SEPARATOR) if v.strip())


def _optional(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
        return None
    return str(value)


def _read_table(
    path: Path, path_column: str, target_column: str, contrast_column: str, mask_column: str
) -> Collection:
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path) if path.suffix.lower() != ".csv" else pa_csv.read_csv(path)
    except (OSError, ValueError) as err:  # pyarrow's parse errors are ValueErrors
        raise ConfigError(f"cannot read {path}: {err}") from err
    columns = table.column_names
    if path_column not in columns:
        raise ConfigError(f"{path} has no {path_column!r} column (columns: {', '.join(columns)})")
    data = table.to_pydict()
    n = table.num_rows
    base = path.parent
    rows = []
    for i in range(n):
        src = str(data[path_column][i])
        full = Path(src).expanduser()
        full = full if full.is_absolute() else base / full
        mask = _optional(data[mask_column][i]) if mask_column in columns else None
        if mask is not None and not Path(mask).is_absolute():
            mask = str(base / mask)
        rows.append(
            Row(
                key=src,
                source=str(full),
                target=_optional(data[target_column][i]) if target_column in columns else None,
                contrast=_split_contrast(data[contrast_column][i]) if contrast_column in columns else (),
                mask=mask,
            )
        )
    _check_rows(rows, path)
    return Collection(rows, "table", str(path))


def _read_datasets(
    path: Path, image_column: str, target_column: str, contrast_column: str, mask_column: str
) -> Collection:
    try:
        from datasets import load_from_disk
    except ImportError as err:
        raise ConfigError("reading a datasets folder needs `pip install datasets`") from err
    ds = load_from_disk(str(path))
    if hasattr(ds, "keys") and not hasattr(ds, "column_names"):
        raise ConfigError(f"{path} holds several splits ({', '.join(ds.keys())}); pass one split's folder")
    if image_column not in ds.column_names:
        raise ConfigError(f"{path} has no {image_column!r} column (columns: {', '.join(ds.column_names)})")
    meta = ds.remove_columns([image_column]).to_dict()
    rows = []
    for i in range(len(ds)):
        rows.append(
            Row(
                key=str(meta["key"][i]) if "key" in meta else f"{i:08d}",
                source=i,
                target=_optional(meta[target_column][i]) if target_column in meta else None,
                contrast=_split_contrast(meta[contrast_column][i]) if contrast_column in meta else (),
                mask=_optional(meta[mask_column][i]) if mask_column in meta else None,
            )
        )
    _check_rows(rows, path)
    return Collection(rows, "datasets", str(path), image_column)


def _check_rows(rows: list[Row], where: Path) -> None:
    """A list names some images, each once."""
    if not rows:
        raise ConfigError(f"{where} lists no images")
    seen: set[str] = set()
    for r in rows:
        if r.key in seen:
            raise ConfigError(f"{where} lists {r.key!r} twice; each image must appear once")
        seen.add(r.key)


def load_prompt_sets(path: str | Path) -> list[PromptSet]:
    """Prompt sets from a JSON file.

    Args:
        path: a JSON list of ``{"name", "target", "contrast": [...]}``, or a ``{name: {...}}``
            mapping.

    Returns:
        The sets.

    Raises:
        PromptError: for an unreadable file or unusable sets.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PromptError(f"cannot read prompt sets from {path}: {err}") from err
    if isinstance(data, dict):
        data = [{"name": k, **v} if isinstance(v, dict) else v for k, v in data.items()]
    if not isinstance(data, list) or not data:
        raise PromptError(f"{path} must hold a non-empty list of prompt sets (or a mapping of name to set)")
    sets = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or "target" not in entry:
            raise PromptError(f"prompt set #{i} in {path} needs a 'target'")
        target = check_prompt(entry["target"], "target prompt")
        contrast = check_contrasts(target, entry.get("contrast", []))
        sets.append(PromptSet(str(entry.get("name", target)), target, tuple(contrast)))
    return sets


def check_row_prompts(prompt_sets: list[PromptSet], collection: Collection) -> bool:
    """Check where the targets come from: the job's prompt sets, or per-row columns.

    Args:
        prompt_sets: the job's sets (empty when the rows carry targets).
        collection: the rows.

    Returns:
        True when the rows carry their own targets.

    Raises:
        PromptError: for both or neither, or an unusable row.
    """
    rows = collection.rows
    per_row = any(r.target is not None for r in rows)
    if per_row and prompt_sets:
        raise PromptError("give prompt sets on the command line or target columns in the list, not both")
    if not per_row and not prompt_sets:
        raise PromptError("no target: give --target (or --prompt-sets), or a 'target' column")
    if per_row:
        missing = [r.key for r in rows if r.target is None]
        if missing:
            raise PromptError(f"{len(missing)} rows have no target, e.g. {missing[0]!r}")
        for r in rows:
            target = check_prompt(r.target, f"target of {r.key}")
            if r.contrast:
                try:
                    check_contrasts(target, list(r.contrast))
                except PromptError as err:
                    raise PromptError(f"{r.key}: {err}") from err
    return per_row


class ImageRows(torch.utils.data.Dataset):
    """Rows decoded and preprocessed in DataLoader workers; a broken image becomes an error.

    An item is a dict: ``index``, ``pixels`` (3×h×w), ``size`` (the image's), ``mask`` (as
    kept for its energy), ``error`` (why the image cannot be used) and ``mask_error`` (why its
    mask cannot, while the image is still explained).

    Args:
        collection: the rows.
        indices: which rows (one chunk's).
        short_side: the shorter side images are resized to.
        patch: the model's patch size.
        mean: normalization mean.
        std: normalization std.
    """

    def __init__(
        self,
        collection: Collection,
        indices: list[int],
        short_side: int,
        patch: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.collection, self.indices = collection, indices
        self.prep: dict[str, Any] = dict(short_side=short_side, patch=patch, mean=mean, std=std)
        self._dataset: Any = None

    def __len__(self) -> int:
        return len(self.indices)

    def _image(self, row: Row) -> Any:
        if self.collection.kind != "datasets":
            return row.source
        if self._dataset is None:  # opened lazily, once per worker (memory-mapped)
            from datasets import load_from_disk

            self._dataset = load_from_disk(self.collection.location)
        return self._dataset[int(row.source)][self.collection.image_column]

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = self.indices[i]
        row = self.collection.rows[index]
        item: dict[str, Any] = {"index": index, "pixels": None, "size": None, "mask": None, "error": None}
        item["mask_error"] = None  # a mask that cannot be used: the image is still explained
        try:
            prepared, failed = prepare_images([self._image(row)], **self.prep)
        except Exception as err:  # noqa: BLE001 - a dataset row that cannot even be fetched
            prepared, failed = [], []
            item["error"] = f"{type(err).__name__}: {err}"
        if failed:
            item["error"] = failed[0].message
        if not prepared:
            return item
        item["pixels"], item["size"] = prepared[0].pixels, prepared[0].original_size
        if row.mask is not None:
            try:
                item["mask"] = mask_for_energy(read_mask(row.mask, size=item["size"]))
            except ImageLoadError as err:
                item["mask_error"] = f"mask: {err}"
        return item


def collate(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items as they are (a list of dicts), for the DataLoader.

    Args:
        items: the batch's items.

    Returns:
        The same list.
    """
    return items
