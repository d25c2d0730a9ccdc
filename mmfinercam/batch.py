"""Batch localization over a collection: resumable, chunked, sharded across processes or Ray.

    mmfinercam batch photos/ --target "red wing" --contrast "blue wing" --out run/
    mmfinercam batch list.csv --out run/                      # per-row target/contrast columns
    torchrun --nproc-per-node 4 -m mmfinercam.cli batch photos/ --prompt-sets sets.json --out run/

Inputs (:func:`read_collection`): a folder of images (recursive), a CSV or Parquet list of paths
with optional per-row ``target``, ``contrast`` (``|``-separated) and ``mask`` columns, or a
Hugging Face ``datasets`` dataset saved with ``save_to_disk`` (an ``image`` column).

The rows are cut into fixed chunks. Each chunk is read by a torch DataLoader (decoding and
preprocessing in worker processes), run through the image tower once per same-sized group for
every prompt set, and written as ``maps/chunk-NNNNN-HxW.npy`` (float16 Finer-CAM scores on the
patch grid, N×S×h×w) and then ``chunks/chunk-NNNNN.parquet`` (one row per image and prompt set,
broken images with their error; an image whose mask cannot be used is still explained, its rows
carrying the mask's error and no mask energy). The Parquet file is written last, atomically,
and marks the chunk done: a killed run resumes at the first chunk without one and every result
is written exactly once. When all chunks are done, ``summary.parquet`` (all rows in input order),
``failed.csv`` and ``manifest.json`` are written.

Shards: process ``rank`` of ``world`` takes chunks ``c % world == rank`` (from ``RANK`` and
``WORLD_SIZE`` as set by ``torchrun`` or ``accelerate launch``, or ``--shard i/n``); chunk files
do not depend on the sharding, so merged output equals a single process's. With Ray
(:func:`run_with_ray`), chunks are handed to GPU (or CPU) actors through Ray Data
``map_batches``, writing to the same folder (a shared file system across machines).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .cams import CAM_METHODS
from .errors import ImageLoadError, MMFinerCAMError, PromptError
from .finer import (
    WEIGHTINGS,
    best_match,
    check_alpha,
    check_contrast_ranks,
    check_contrasts,
    check_prompt,
    check_whole,
    dense_finer_maps,
    rank_contrasts,
)
from .images import IMAGE_SUFFIXES, check_image_size, image_files, prepare_images, read_mask
from .localizer import DENSE_METHODS
from .metrics import energy_pointing_game
from .transfer import to_host

CONTRAST_SEPARATOR = "|"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class PromptSet:
    """A target and what to contrast it with: explicit prompts, or the closest vocabulary entries."""

    name: str
    target: str
    contrast: tuple[str, ...] = ()


@dataclass
class Row:
    """One input image: a key unique in the collection, where to read it, optional prompts and mask."""

    key: str
    source: str | int  #: a path, or a row index of a ``datasets`` dataset
    target: str | None = None
    contrast: tuple[str, ...] = ()
    mask: str | None = None


@dataclass
class Collection:
    rows: list[Row]
    kind: str  #: "folder", "table" or "datasets"
    location: str
    image_column: str = "image"

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for r in self.rows:
            h.update(f"{r.key}\t{r.target}\t{CONTRAST_SEPARATOR.join(r.contrast)}\t{r.mask}\n".encode())
        return h.hexdigest()[:16]


# inputs ---------------------------------------------------------------------------------------
def read_collection(
    location: str | Path,
    *,
    path_column: str = "path",
    image_column: str = "image",
    target_column: str = "target",
    contrast_column: str = "contrast",
    mask_column: str = "mask",
) -> Collection:
    """The rows of a folder, a CSV/Parquet list, or a saved ``datasets`` dataset."""
    path = Path(location).expanduser()
    if not path.exists():
        raise MMFinerCAMError(f"input {path} does not exist")
    if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "state.json").is_file()):
        return _read_datasets(path, image_column, target_column, contrast_column, mask_column)
    if path.is_dir():
        files = image_files(path, recursive=True)
        if not files:
            raise MMFinerCAMError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {path}")
        return Collection([Row(str(p.relative_to(path)), str(p)) for p in files], "folder", str(path))
    if path.suffix.lower() in (".csv", ".parquet", ".pq"):
        return _read_table(path, path_column, target_column, contrast_column, mask_column)
    raise MMFinerCAMError(f"input {path} is not a folder, a .csv/.parquet list or a saved datasets folder")


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


def _read_table(path: Path, path_column: str, target_column: str, contrast_column: str, mask_column: str):
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path) if path.suffix.lower() != ".csv" else pa_csv.read_csv(path)
    except (OSError, ValueError) as err:  # pyarrow's parse errors are ValueErrors
        raise MMFinerCAMError(f"cannot read {path}: {err}") from err
    columns = table.column_names
    if path_column not in columns:
        raise MMFinerCAMError(f"{path} has no {path_column!r} column (columns: {', '.join(columns)})")
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


def _read_datasets(path: Path, image_column: str, target_column: str, contrast_column: str, mask_column: str):
    try:
        from datasets import load_from_disk
    except ImportError as err:
        raise MMFinerCAMError("reading a datasets folder needs `pip install datasets`") from err
    ds = load_from_disk(str(path))
    if hasattr(ds, "keys") and not hasattr(ds, "column_names"):
        raise MMFinerCAMError(
            f"{path} holds several splits ({', '.join(ds.keys())}); pass one split's folder"
        )
    if image_column not in ds.column_names:
        raise MMFinerCAMError(
            f"{path} has no {image_column!r} column (columns: {', '.join(ds.column_names)})"
        )
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
        raise MMFinerCAMError(f"{where} lists no images")
    seen: set[str] = set()
    for r in rows:
        if r.key in seen:
            raise MMFinerCAMError(f"{where} lists {r.key!r} twice; each image must appear once")
        seen.add(r.key)


def load_prompt_sets(path: str | Path) -> list[PromptSet]:
    """A JSON list of ``{"name", "target", "contrast": [...]}`` (or a ``{name: {...}}`` mapping)."""
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


# the job --------------------------------------------------------------------------------------
@dataclass
class BatchJob:
    """Everything that defines a run's output; a resumed run must match it."""

    out: str
    prompt_sets: list[PromptSet] = field(default_factory=list)
    model: str = "testbed"
    pretrained: str | None = None
    backend: str | None = None
    dtype: str | None = None
    method: str = "gem"
    alpha: float = 1.0
    weighting: str = "softmax"
    depth: int | None = None
    vocabulary: str | None = None  #: automatic contrasts for sets (or rows) without explicit ones
    contrast_ranks: tuple[int, ...] = (1, 2, 3)
    templates: list[str] | None = None
    image_size: int | None = None
    chunk_size: int = 256
    top_k: int = 5

    def __post_init__(self) -> None:  # refused before any model is loaded or file written
        if self.method in CAM_METHODS:
            raise MMFinerCAMError(
                f"batch runs the dense methods (gem, raw); {self.method!r} needs a backward pass per "
                "image and prompt: use `mmfinercam localize` for it"
            )
        if self.method not in DENSE_METHODS:
            raise MMFinerCAMError(f"unknown method {self.method!r}; batch runs 'gem' or 'raw'")
        if self.weighting not in WEIGHTINGS:
            raise MMFinerCAMError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.depth is not None:
            check_whole(self.depth, "depth", 2, MMFinerCAMError)
        check_alpha(self.alpha)
        check_whole(self.chunk_size, "chunk_size", 1, MMFinerCAMError)
        check_whole(self.top_k, "top_k", 0, MMFinerCAMError)

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("out")
        d["prompt_sets"] = [asdict(s) for s in self.prompt_sets]
        return d


@dataclass
class BatchReport:
    chunks_done: int  #: by this process
    chunks_skipped: int  #: already done (resume) or another shard's
    images: int
    failed: int
    seconds: float
    finished: bool  #: every chunk of the run is done and the merged files are written

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def shard_from_env() -> tuple[int, int]:
    """(rank, world size) from torchrun / accelerate environment variables; (0, 1) without."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _check_prompts(job: BatchJob, collection: Collection) -> bool:
    """Check where the targets come from (the job's prompt sets or per-row columns); True when
    the rows carry their own targets."""
    rows = collection.rows
    per_row = any(r.target is not None for r in rows)
    if per_row and job.prompt_sets:
        raise PromptError("give prompt sets on the command line or target columns in the list, not both")
    if not per_row and not job.prompt_sets:
        raise PromptError("no target: give --target (or --prompt-sets), or a 'target' column")
    if per_row:
        missing = [r.key for r in rows if r.target is None]
        if missing:
            raise PromptError(f"{len(missing)} rows have no target, e.g. {missing[0]!r}")
        for r in rows:
            check_prompt(r.target, f"target of {r.key}")
            if r.contrast:
                try:
                    check_contrasts(r.target, list(r.contrast))
                except PromptError as err:
                    raise PromptError(f"{r.key}: {err}") from err
    return per_row


class _ImageRows(torch.utils.data.Dataset):
    """Decodes and preprocesses rows in DataLoader workers; a broken image becomes an error string."""

    def __init__(self, collection: Collection, indices: list[int], short_side: int, patch, mean, std):
        self.collection, self.indices = collection, indices
        self.prep = dict(short_side=short_side, patch=patch, mean=mean, std=std)
        self._dataset = None

    def __len__(self) -> int:
        return len(self.indices)

    def _image(self, row: Row):
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
                item["mask"] = _mask_for_energy(read_mask(row.mask, size=item["size"]))
            except ImageLoadError as err:
                item["mask_error"] = f"mask: {err}"
        return item


#: the longest side a mask is kept at for its energy (see ``_mask_for_energy``)
MASK_SIDE = 1024


def _mask_for_energy(mask: np.ndarray) -> Tensor:
    """A bool H×W mask as kept for the energy: as it is, or, past :data:`MASK_SIDE` pixels a side,
    each pixel's covered fraction at that size (box filter). A batch of 48-megapixel masks held
    1.5 GB and their maps upsampled to full size 192 MB each; the map being a smooth upsample of
    a patch grid, its mass on the mask moves by well under a hundredth."""
    h, w = mask.shape
    scale = MASK_SIDE / max(h, w)
    if scale >= 1:
        return torch.from_numpy(mask)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    covered = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BOX)
    return torch.from_numpy(np.asarray(covered, dtype=np.float32) / 255.0)


def _collate(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


class BatchOutput:
    """A run's plan and output folder, without a model: checks the job, owns the chunk files and
    merges them. The Ray driver needs no more than this; :class:`BatchRunner` adds the model."""

    def __init__(self, job: BatchJob, collection: Collection):
        try:
            import pyarrow  # noqa: F401
        except ImportError as err:
            raise MMFinerCAMError("mmfinercam batch writes Parquet: pip install 'mmfinercam[batch]'") from err
        self.job, self.collection = job, collection
        self.out = Path(job.out)
        self.per_row = _check_prompts(job, collection)
        self.n_sets = 1 if self.per_row else len(job.prompt_sets)

    # the folder ------------------------------------------------------------------------------------
    def n_chunks(self) -> int:
        return max(1, -(-len(self.collection.rows) // self.job.chunk_size))

    def chunk_file(self, c: int) -> Path:
        return self.out / "chunks" / f"chunk-{c:05d}.parquet"

    def prepare_output(self) -> None:
        """Create the folder, or check that an existing one holds this same run."""
        self.out.mkdir(parents=True, exist_ok=True)
        run = {
            "format": FORMAT_VERSION,
            "job": self.job.identity(),
            "inputs": {
                "kind": self.collection.kind,
                "location": self.collection.location,
                "rows": len(self.collection.rows),
                "fingerprint": self.collection.fingerprint(),
            },
        }
        run = json.loads(json.dumps(run))  # tuples as lists, as read back
        path = self.out / "run.json"
        old = json.loads(path.read_text()) if path.exists() else None
        if old == run:
            return
        # a folder holding no finished chunk holds no results: a run that stopped at once (a typo
        # in an option, found when the model was loaded) must not keep its folder from the next
        if old is not None and any((self.out / "chunks").glob("chunk-*.parquet")):
            changed = sorted(
                k for k in set(old["job"]) | set(run["job"]) if old["job"].get(k) != run["job"].get(k)
            )
            if old.get("inputs") != run["inputs"]:
                changed.append("inputs")
            raise MMFinerCAMError(
                f"{self.out} holds another run (differs in: {', '.join(changed)}); "
                "use a new --out folder to start afresh"
            )
        _write_atomic(path, json.dumps(run, indent=2).encode())

    # merging -------------------------------------------------------------------------------------
    def all_done(self) -> bool:
        return all(self.chunk_file(c).exists() for c in range(self.n_chunks()))

    def finalize(self) -> bool:
        """If every chunk is done, write summary.parquet, failed.csv and manifest.json."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.all_done():
            return False
        tables = [pq.read_table(self.chunk_file(c)) for c in range(self.n_chunks())]
        summary = pa.concat_tables(tables, promote_options="default")
        buf = pa.BufferOutputStream()
        pq.write_table(summary, buf)
        _write_atomic(self.out / "summary.parquet", buf.getvalue().to_pybytes())
        data = summary.select(["key", "source", "status", "error"]).to_pylist()
        failed = [r for r in data if r["status"] == "failed"]
        table = io.StringIO()
        writer = csv.writer(table, lineterminator="\n")
        writer.writerow(["key", "source", "error"])
        writer.writerows([r["key"], r["source"], r["error"] or ""] for r in failed)
        _write_atomic(self.out / "failed.csv", table.getvalue().encode())
        manifest = {
            "format": FORMAT_VERSION,
            "job": self.job.identity(),
            "inputs": self.collection.location,
            "rows": len(self.collection.rows),
            "prompt_sets": self.n_sets,
            "images_ok": len({r["key"] for r in data if r["status"] == "ok"}),
            "images_failed": len(failed),
            "chunks": [str(self.chunk_file(c).relative_to(self.out)) for c in range(self.n_chunks())],
            # the map files the rows point at (not whatever else lies in maps/: an unfinished
            # chunk's map from a run that stopped before this one took the folder over)
            "maps": sorted({m for m in summary.column("map_file").to_pylist() if m}),
            "maps_layout": "maps/chunk-NNNNN-HxW.npy: float16 N×S×H×W Finer-CAM scores on the patch grid; "
            "summary rows point at (map_file, map_index, set_index)",
        }
        _write_atomic(self.out / "manifest.json", json.dumps(manifest, indent=2).encode())
        return True


class BatchRunner(BatchOutput):
    """Runs a :class:`BatchJob` over a :class:`Collection` with one loaded model."""

    def __init__(self, job: BatchJob, collection: Collection, localizer=None, device: str | None = None):
        from .localizer import load

        super().__init__(job, collection)
        self.loc = localizer or load(
            job.model,
            job.pretrained,
            backend=job.backend,
            device=device,
            dtype=job.dtype,
            templates=job.templates,
        )
        if job.image_size is not None:  # refused now, not image by image
            check_image_size(job.image_size, self.loc.patch_size)
        self._plan_prompts()

    # prompts -----------------------------------------------------------------------------------
    def _plan_prompts(self) -> None:
        """Every prompt the run needs (sets, rows, vocabulary), encoded once."""
        job, rows = self.job, self.collection.rows
        vocabulary: list[str] = []
        if job.vocabulary is not None:
            from . import prompts as prompt_library

            vocabulary = list(dict.fromkeys(prompt_library.load(job.vocabulary)))
        texts = [s.target for s in job.prompt_sets] + [c for s in job.prompt_sets for c in s.contrast]
        if self.per_row:
            texts += [r.target for r in rows] + [c for r in rows for c in r.contrast]  # type: ignore[misc]
        self.prompts = list(dict.fromkeys(texts + vocabulary))
        self.prompt_index = {p: i for i, p in enumerate(self.prompts)}
        self.vocabulary_index = torch.tensor([self.prompt_index[v] for v in vocabulary], dtype=torch.long)
        # the ranks kept for this vocabulary (one of its entries may be a row's target)
        self.ranks = check_contrast_ranks(job.contrast_ranks, len(vocabulary) - 1) if vocabulary else []
        templates = self.loc.templates if job.templates is None else job.templates
        self.text = self.loc.encode_text(self.prompts, templates)  # P×E, on the device

    def _sets_of(self, row: Row) -> list[PromptSet]:
        if self.per_row:
            return [PromptSet(row.target or "", row.target or "", row.contrast)]
        return self.job.prompt_sets

    # running -------------------------------------------------------------------------------------
    def run(
        self,
        *,
        rank: int = 0,
        world: int = 1,
        batch_size: int = 32,
        workers: int = 2,
        progress: bool = True,
        merge: bool = True,
    ) -> BatchReport:
        """Process this shard's chunks that are not done yet; with ``merge``, merge if the whole
        run is then done (whichever shard ends last does it; the files are written atomically)."""
        from tqdm.auto import tqdm

        self.prepare_output()
        mine = [c for c in range(self.n_chunks()) if c % world == rank]
        todo = [c for c in mine if not self.chunk_file(c).exists()]
        size = self.job.chunk_size
        total = sum(len(self.collection.rows[c * size : (c + 1) * size]) for c in todo)
        bar = tqdm(
            total=total,
            desc=f"batch {rank}/{world}" if world > 1 else "batch",
            unit="img",
            disable=not progress or None,
            smoothing=0.1,
        )
        start, images, failed = time.time(), 0, 0
        for c in todo:
            n_ok, n_failed = self.process_chunk(c, batch_size=batch_size, workers=workers, bar=bar)
            images, failed = images + n_ok, failed + n_failed
        bar.close()
        finished = self.finalize() if merge else self.all_done()
        return BatchReport(
            len(todo), self.n_chunks() - len(todo), images, failed, time.time() - start, finished
        )

    def _loader(self, indices: list[int], batch_size: int, workers: int):
        cfg = self.loc.backend.image_config
        data = _ImageRows(
            self.collection,
            indices,
            min(cfg.size) if self.job.image_size is None else self.job.image_size,
            self.loc.patch_size,
            cfg.mean,
            cfg.std,
        )
        return torch.utils.data.DataLoader(
            data,
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=self.loc.device.type == "cuda",
            persistent_workers=False,
        )

    def process_chunk(self, c: int, *, batch_size: int = 32, workers: int = 2, bar=None) -> tuple[int, int]:
        """Compute and write chunk ``c``; returns (images done, images failed)."""
        size = self.job.chunk_size
        indices = list(range(c * size, min((c + 1) * size, len(self.collection.rows))))
        records: dict[int, list[dict[str, Any]]] = {}
        maps: dict[tuple[int, int], list[np.ndarray]] = defaultdict(list)
        n_failed = 0
        for items in self._loader(indices, batch_size, workers):
            groups: dict[tuple[int, ...], list[dict[str, Any]]] = defaultdict(list)
            for it in items:
                if it["error"] is not None:
                    records[it["index"]] = [self._failed_record(it)]
                    n_failed += 1
                else:
                    groups[tuple(it["pixels"].shape)].append(it)
            for group in groups.values():
                for it, scores, recs in zip(group, *self._localize(group)):
                    grid = tuple(scores.shape[-2:])
                    file = f"maps/chunk-{c:05d}-{grid[0]}x{grid[1]}.npy"
                    for rec in recs:
                        rec.update(map_file=file, map_index=len(maps[grid]))
                    maps[grid].append(scores.numpy().astype(np.float16))
                    records[it["index"]] = recs
            if bar is not None:
                bar.update(len(items))
        for (h, w), arrays in maps.items():
            buf = _npy_bytes(np.stack(arrays))
            _write_atomic(self.out / f"maps/chunk-{c:05d}-{h}x{w}.npy", buf)
        ordered = [rec for i in indices for rec in records[i]]
        _write_parquet_atomic(self.chunk_file(c), ordered)
        return len(indices) - n_failed, n_failed

    @torch.inference_mode()
    def _localize(self, group: list[dict[str, Any]]) -> tuple[list[Tensor], list[list[dict[str, Any]]]]:
        """One tower pass for a same-sized group; every prompt set in one gather and matmul."""
        job, loc = self.job, self.loc
        pixels = torch.stack([it["pixels"] for it in group]).to(loc.device, non_blocking=True)
        out = loc.image_tokens(pixels, method=job.method, depth=job.depth)
        z = F.normalize(out.global_embedding, dim=-1)  # B×E
        patches = F.normalize(out.patch_tokens, dim=-1)  # B×N×E
        global_sim = z @ self.text.T  # B×P
        rows = [self.collection.rows[it["index"]] for it in group]
        sets = [self._sets_of(r) for r in rows]
        target = torch.tensor([[self.prompt_index[p.target] for p in ss] for ss in sets], device=z.device)
        contrast, valid = self._contrasts(sets, target, global_sim)  # B×S×D
        contrast_sim = global_sim.gather(1, contrast.flatten(1)).view(contrast.shape)
        scores, _, weights = dense_finer_maps(
            patches,
            self.text[torch.cat([target[..., None], contrast], dim=-1)],  # B×S×(1+D)×E
            contrast_sim,
            out.grid,
            alpha=job.alpha,
            logit_scale=loc.backend.logit_scale,
            weighting=job.weighting,
            valid=valid,
        )
        top = global_sim.topk(min(job.top_k, global_sim.shape[1]), dim=1)
        records = self._records(
            group, rows, sets, scores, global_sim, target, contrast, contrast_sim, valid, weights, top
        )
        return list(scores.float().cpu()), records

    def _contrasts(self, sets: list[list[PromptSet]], target: Tensor, global_sim: Tensor):
        """B×S×D contrast prompt indices and a validity mask: explicit, or ranked from the vocabulary."""
        b, s = target.shape
        ranks = self.ranks
        explicit = [[[self.prompt_index[c] for c in p.contrast] for p in ss] for ss in sets]
        width = max([len(e) for row in explicit for e in row] + [len(ranks)])
        index = torch.zeros(b, s, width, dtype=torch.long, device=target.device)
        valid = torch.zeros(b, s, width, dtype=torch.bool, device=target.device)
        auto = torch.zeros(b, s, dtype=torch.bool)
        for i, row in enumerate(explicit):
            for j, e in enumerate(row):
                if e:
                    index[i, j, : len(e)] = torch.tensor(e)
                    valid[i, j, : len(e)] = True
                else:
                    auto[i, j] = True
        if auto.any() and ranks:  # without a vocabulary such sets get the plain target map
            vocab = self.vocabulary_index.to(target.device)
            vsim = global_sim[:, vocab]  # B×M
            for j in range(s):
                rows = auto[:, j].nonzero().flatten().tolist()
                if not rows:
                    continue
                t = target[rows, j]
                sim = vsim[rows].clone()
                sim[vocab[None, :] == t[:, None]] = 1e4  # the target itself ranks last
                picked = rank_contrasts(global_sim[rows].gather(1, t[:, None])[:, 0], sim, ranks)
                index[rows, j, : len(ranks)] = vocab[picked]
                valid[rows, j, : len(ranks)] = True
        return index, valid

    def _records(
        self, group, rows, sets, scores, global_sim, target, contrast, contrast_sim, valid, weights, top
    ):
        """One JSON-ready record per image and prompt set (tensors copied to the host once)."""
        b, s = target.shape
        gh, gw = scores.shape[-2:]
        peak_val, peak = scores.flatten(2).max(dim=-1)
        host = to_host(
            peak_val,
            peak,
            scores.mean(dim=(-2, -1)),
            global_sim.gather(1, target),
            contrast,
            contrast_sim,
            valid,
            weights,
            top.indices,
            top.values,
        )
        (
            peak_val,
            peak,
            score_mean,
            target_sim,
            contrast,
            contrast_sim,
            valid,
            weights,
            top_index,
            top_values,
        ) = host
        masks_energy = self._mask_energy(group, scores)
        out = []
        for i, (it, row) in enumerate(zip(group, rows)):
            h, w = it["size"]
            top_prompts = [self.prompts[int(k)] for k in top_index[i]]
            recs = []
            for j, ps in enumerate(sets[i]):
                cy, cx = divmod(int(peak[i, j]), gw)
                used = valid[i, j].nonzero().flatten().tolist()
                names = [self.prompts[int(contrast[i, j, k])] for k in used]
                sims = [float(contrast_sim[i, j, k]) for k in used]
                recs.append(
                    {
                        "key": row.key,
                        "source": self._source_name(row),
                        "status": "ok",
                        "error": it["mask_error"],  # the map stands; only its mask energy is missing
                        "prompt_set": ps.name,
                        "target": ps.target,
                        "contrast": names,
                        "weights": [float(weights[i, j, k]) for k in used],
                        "image_height": int(h),
                        "image_width": int(w),
                        "grid_height": int(gh),
                        "grid_width": int(gw),
                        "set_index": j,
                        "peak_x": float((cx + 0.5) * w / gw),
                        "peak_y": float((cy + 0.5) * h / gh),
                        "peak_score": float(peak_val[i, j]),
                        "score_mean": float(score_mean[i, j]),
                        "target_similarity": float(target_sim[i, j]),
                        "contrast_similarity": sims,
                        "best_match": best_match([ps.target, *names], [float(target_sim[i, j]), *sims]),
                        "mask_energy": None if masks_energy is None else masks_energy[i][j],
                        "top_prompts": top_prompts,
                        "top_similarities": [float(v) for v in top_values[i]],
                    }
                )
            out.append(recs)
        return out

    def _mask_energy(self, group, scores: Tensor) -> list[list[float | None]] | None:
        """Share of the positive map inside each image's mask (energy-based pointing)."""
        if all(it["mask"] is None for it in group):
            return None
        out: list[list[float | None]] = []
        for i, it in enumerate(group):
            if it["mask"] is None:
                out.append([None] * scores.shape[1])
                continue
            up = F.interpolate(  # at the mask's size: the image's, or reduced (_mask_for_energy)
                scores[i : i + 1].float(), size=tuple(it["mask"].shape), mode="bilinear", align_corners=False
            )
            mask = it["mask"].to(up.device)[None].expand(up.shape[1], -1, -1)
            out.append(energy_pointing_game(up[0], mask).tolist())
        return out

    def _source_name(self, row: Row) -> str:
        return f"#{row.source}" if self.collection.kind == "datasets" else str(row.source)

    def _failed_record(self, it: dict[str, Any]) -> dict[str, Any]:
        row = self.collection.rows[it["index"]]
        return {
            "key": row.key,
            "source": self._source_name(row),
            "status": "failed",
            "error": it["error"],
        }


def load_map(out: str | Path, record: dict[str, Any]) -> np.ndarray:
    """The float16 score map (grid H×W) of one summary row."""
    arr = np.load(Path(out) / record["map_file"], mmap_mode="r")
    return np.asarray(arr[int(record["map_index"]), int(record["set_index"])])


def unusable_masks(out: str | Path) -> list[tuple[str, str]]:
    """(key, error) of each image of a finished run whose mask could not be used (missing,
    unreadable, of another size): its map is in the run, its mask energy is not."""
    import pyarrow.parquet as pq

    table = pq.read_table(Path(out) / "summary.parquet", columns=["key", "status", "error"])
    seen = {r["key"]: r["error"] for r in table.to_pylist() if r["status"] == "ok" and r["error"]}
    return list(seen.items())


def iter_results(out: str | Path, *, partial: bool = False) -> Iterator[dict[str, Any]]:
    """Summary rows of a finished run, in input order. ``partial=True`` reads the chunks done so
    far instead (of a run still going, or stopped), each in input order: a long run can be looked
    at before it ends."""
    import pyarrow.parquet as pq

    out = Path(out)
    summary = out / "summary.parquet"
    if not partial and summary.is_file():
        yield from pq.read_table(summary).to_pylist()
        return
    chunks = sorted((out / "chunks").glob("chunk-*.parquet"))
    if partial:
        for chunk in chunks:
            yield from pq.read_table(chunk).to_pylist()
        return
    if not out.is_dir():
        raise MMFinerCAMError(f"no batch run in {out}: the folder does not exist")
    if chunks:
        raise MMFinerCAMError(
            f"the run in {out} has not finished ({len(chunks)} chunk(s) done): run the same "
            "command again to finish it, or read what is done with iter_results(out, partial=True)"
        )
    raise MMFinerCAMError(f"no batch run in {out}: {summary.name} not found")


# writing ---------------------------------------------------------------------------------------
def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name and rename: a reader (or a resumed run) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_parquet_atomic(path: Path, records: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(records, schema=_schema())
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    _write_atomic(path, buf.getvalue().to_pybytes())


def _schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("key", pa.string()),
            ("source", pa.string()),
            ("status", pa.string()),
            ("error", pa.string()),
            ("prompt_set", pa.string()),
            ("target", pa.string()),
            ("contrast", pa.list_(pa.string())),
            ("weights", pa.list_(pa.float64())),
            ("image_height", pa.int64()),
            ("image_width", pa.int64()),
            ("grid_height", pa.int64()),
            ("grid_width", pa.int64()),
            ("set_index", pa.int64()),
            ("peak_x", pa.float64()),
            ("peak_y", pa.float64()),
            ("peak_score", pa.float64()),
            ("score_mean", pa.float64()),
            ("target_similarity", pa.float64()),
            ("contrast_similarity", pa.list_(pa.float64())),
            ("best_match", pa.string()),
            ("mask_energy", pa.float64()),
            ("top_prompts", pa.list_(pa.string())),
            ("top_similarities", pa.list_(pa.float64())),
            ("map_file", pa.string()),
            ("map_index", pa.int64()),
        ]
    )


# distributed -----------------------------------------------------------------------------------
def run_distributed(
    job: BatchJob,
    collection: Collection,
    *,
    batch_size: int = 32,
    workers: int = 2,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
    device: str | None = None,
) -> BatchReport:
    """Run this process's shard on ``device`` (default: CUDA when there). Under torchrun or
    accelerate (``WORLD_SIZE`` > 1 with a rendezvous), each rank uses ``cuda:LOCAL_RANK`` when CUDA
    is there and no other device is asked for, and rank 0 merges after a barrier."""
    rank, world = shard or shard_from_env()
    if not 0 <= rank < world:
        raise MMFinerCAMError(f"shard {rank}/{world} is out of range")
    group = False
    if shard is None and world > 1 and "MASTER_ADDR" in os.environ:
        import torch.distributed as dist

        if torch.cuda.is_available() and device in (None, "cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device and device.startswith("cuda") else "gloo")
        group = True
    runner = BatchRunner(job, collection, device=device)
    if group:
        import torch.distributed as dist

        if rank == 0:
            runner.prepare_output()
        dist.barrier()  # run.json exists before anyone writes
    report = runner.run(
        rank=rank, world=world, batch_size=batch_size, workers=workers, progress=progress, merge=not group
    )
    if group:
        import torch.distributed as dist

        dist.barrier()
        if rank == 0:
            report.finished = runner.finalize()
        dist.barrier()  # no rank exits (and so ends the launch) before the merge is written
        dist.destroy_process_group()
    return report


class _ChunkActor:
    """A Ray Data actor: loads the model once, then computes the chunks it is handed."""

    def __init__(
        self, job: BatchJob, collection: Collection, batch_size: int, workers: int, device: str | None
    ):
        self.runner = BatchRunner(job, collection, device=device)  # None: CUDA where the actor has a GPU
        self.batch_size, self.workers = batch_size, workers

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        done, failed = [], []
        for c in batch["chunk"]:
            if self.runner.chunk_file(int(c)).exists():  # another actor (or an earlier run) did it
                done.append(0)
                failed.append(0)
                continue
            n_ok, n_failed = self.runner.process_chunk(
                int(c), batch_size=self.batch_size, workers=self.workers
            )
            done.append(n_ok)
            failed.append(n_failed)
        return {"chunk": np.asarray(batch["chunk"]), "images": np.asarray(done), "failed": np.asarray(failed)}


def run_with_ray(
    job: BatchJob,
    collection: Collection,
    *,
    actors: int = 1,
    gpus_per_actor: float = 0.0,
    batch_size: int = 32,
    workers: int = 0,
    address: str | None = None,
    device: str | None = None,
) -> BatchReport:
    """Chunks as a Ray Dataset, computed by ``actors`` model-holding actors via ``map_batches``
    (each on ``device``; default: its GPU when ``gpus_per_actor`` gives it one).

    ``address`` joins a running cluster (``"auto"``); without it a local Ray starts. Workers write
    to ``job.out``, which must be on a file system every node sees.
    """
    try:
        import ray
    except ImportError as err:
        raise MMFinerCAMError("the Ray path needs `pip install 'mmfinercam[ray]'`") from err
    output = BatchOutput(job, collection)  # the driver holds no model; the actors do
    output.prepare_output()
    todo = [c for c in range(output.n_chunks()) if not output.chunk_file(c).exists()]
    start = time.time()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        results = []
        if todo:
            ds = ray.data.from_items([{"chunk": c} for c in todo])
            results = ds.map_batches(
                _ChunkActor,
                fn_constructor_kwargs={
                    "job": job,
                    "collection": collection,
                    "batch_size": batch_size,
                    "workers": workers,
                    "device": device,
                },
                batch_size=1,
                concurrency=actors,
                num_gpus=gpus_per_actor,
                num_cpus=1,
            ).take_all()
    finally:
        if started_here:
            ray.shutdown()
    images = sum(int(r["images"]) for r in results)
    failed = sum(int(r["failed"]) for r in results)
    finished = output.finalize()
    return BatchReport(
        len(todo), output.n_chunks() - len(todo), images, failed, time.time() - start, finished
    )
