"""A batch run's output folder: its plan, chunk files, merged summary, and reading it back.

    OUT/run.json                     the job and its inputs (a resumed run must match)
    OUT/maps/chunk-NNNNN-HxW.npy     float16 N×S×h×w Finer-CAM scores on the patch grid
    OUT/chunks/chunk-NNNNN.parquet   one row per image and prompt set; written last, atomically:
                                     it marks the chunk done
    OUT/summary.parquet, failed.csv, manifest.json   when every chunk is done

Each row is a :class:`~mmfinercam.results.MapRecord`; the Parquet schema is derived from it.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..options import FinerOptions
from ..results import record_schema
from .inputs import Collection, check_row_prompts
from .job import FORMAT_VERSION, BatchJob


def map_file(c: int, grid: tuple[int, int]) -> str:
    """The map file of chunk ``c`` for one grid size, relative to the run's folder.

    Args:
        c: the chunk.
        grid: (rows, columns).

    Returns:
        ``maps/chunk-NNNNN-HxW.npy``.
    """
    return f"maps/chunk-{c:05d}-{grid[0]}x{grid[1]}.npy"


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name and rename: a reader (or a resumed run) never sees half a file.

    Args:
        path: the file.
        data: its bytes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written temporary behind


def write_parquet_atomic(path: Path, records: list[dict[str, Any]]) -> None:
    """Rows written as a Parquet file of the record schema, atomically.

    Args:
        path: the file.
        records: the rows.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(records, schema=record_schema())
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    write_atomic(path, buf.getvalue().to_pybytes())


class BatchOutput:
    """A run's plan and output folder, without a model.

    It checks the job, owns the chunk files and merges them. The Ray driver needs no more than
    this; :class:`~mmfinercam.batch.runner.BatchRunner` adds the model.

    Args:
        job: the run.
        collection: its inputs.

    Raises:
        ConfigError: when pyarrow is not installed.
        PromptError: when the job's prompts and the rows' targets do not fit together.
    """

    def __init__(self, job: BatchJob, collection: Collection) -> None:
        try:
            import pyarrow  # noqa: F401
        except ImportError as err:
            raise ConfigError("mmfinercam batch writes Parquet: pip install 'mmfinercam[batch]'") from err
        self.job, self.collection = job, collection
        self.out = Path(job.out)
        self.per_row = check_row_prompts(job.prompt_sets, collection)
        self.n_sets = 1 if self.per_row else len(job.prompt_sets)

    def n_chunks(self) -> int:
        """How many chunks the run has.

        Returns:
            At least 1.
        """
        return max(1, -(-len(self.collection.rows) // self.job.chunk_size))

    def chunk_rows(self, c: int) -> list[int]:
        """The row indices of chunk ``c``.

        Args:
            c: the chunk.

        Returns:
            Indices into the collection's rows.
        """
        size = self.job.chunk_size
        return list(range(c * size, min((c + 1) * size, len(self.collection.rows))))

    def chunk_file(self, c: int) -> Path:
        """The Parquet file that marks chunk ``c`` done.

        Args:
            c: the chunk.

        Returns:
            Its path.
        """
        return self.out / "chunks" / f"chunk-{c:05d}.parquet"

    def write_chunk(
        self, c: int, records: list[dict[str, Any]], maps: dict[tuple[int, int], list[np.ndarray]]
    ) -> None:
        """Write a finished chunk: its maps, then (atomically, last) its rows.

        Args:
            c: the chunk.
            records: its rows in input order.
            maps: per grid size, the float16 S×h×w maps the rows point at, in order.
        """
        for (h, w), arrays in maps.items():
            buf = io.BytesIO()
            np.save(buf, np.stack(arrays))
            write_atomic(self.out / map_file(c, (h, w)), buf.getvalue())
        write_parquet_atomic(self.chunk_file(c), records)

    def prepare_output(self) -> None:
        """Create the folder, or check that an existing one holds this same run.

        Raises:
            ConfigError: when the folder holds another run with finished chunks.
        """
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
        old = _with_defaults(json.loads(path.read_text())) if path.exists() else None
        if old == run:
            return
        # a folder holding no finished chunk holds no results: a run that stopped at once (a typo
        # in an option, found when the model was loaded) must not keep its folder from the next
        if old is not None and any((self.out / "chunks").glob("chunk-*.parquet")):
            was, now = _flat(old.get("job", {})), _flat(run["job"])
            changed = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
            if old.get("inputs") != run["inputs"]:
                changed.append("inputs")
            if old.get("format") != run["format"]:
                changed.append("format")
            raise ConfigError(
                f"{self.out} holds another run (differs in: {', '.join(changed)}); "
                "use a new --out folder to start afresh"
            )
        write_atomic(path, json.dumps(run, indent=2).encode())

    def all_done(self) -> bool:
        """Whether every chunk is done.

        Returns:
            True when every chunk's Parquet file exists.
        """
        return all(self.chunk_file(c).exists() for c in range(self.n_chunks()))

    def finalize(self) -> bool:
        """If every chunk is done, write summary.parquet, failed.csv and manifest.json.

        Returns:
            Whether they were written.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.all_done():
            return False
        tables = [pq.read_table(self.chunk_file(c)) for c in range(self.n_chunks())]
        summary = pa.concat_tables(tables, promote_options="default")
        buf = pa.BufferOutputStream()
        pq.write_table(summary, buf)
        write_atomic(self.out / "summary.parquet", buf.getvalue().to_pybytes())
        data = summary.select(["key", "source", "status", "error"]).to_pylist()
        failed = [r for r in data if r["status"] == "failed"]
        table = io.StringIO()
        writer = csv.writer(table, lineterminator="\n")
        writer.writerow(["key", "source", "error"])
        writer.writerows([r["key"], r["source"], r["error"] or ""] for r in failed)
        write_atomic(self.out / "failed.csv", table.getvalue().encode())
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
        write_atomic(self.out / "manifest.json", json.dumps(manifest, indent=2).encode())
        return True


def _flat(job: dict[str, Any]) -> dict[str, Any]:
    """A job's settings with the options' named one by one (``options.alpha``)."""
    flat = {k: v for k, v in job.items() if not isinstance(v, dict)}
    for key, value in job.items():
        if isinstance(value, dict):
            flat |= {f"{key}.{k}": v for k, v in value.items()}
    return flat


def load_map(out: str | Path, record: dict[str, Any]) -> np.ndarray:
    """The score map of one summary row.

    Args:
        out: the run's folder.
        record: a row of :func:`iter_results`.

    Returns:
        The float16 h×w scores on the patch grid.
    """
    arr = np.load(Path(out) / record["map_file"], mmap_mode="r")
    return np.asarray(arr[int(record["map_index"]), int(record["set_index"])])


def unusable_masks(out: str | Path) -> list[tuple[str, str]]:
    """The images of a finished run whose mask could not be used (missing, unreadable, of
    another size): their maps are in the run, their mask energies are not.

    Args:
        out: the run's folder.

    Returns:
        (key, error) of each.
    """
    import pyarrow.parquet as pq

    table = pq.read_table(Path(out) / "summary.parquet", columns=["key", "status", "error"])
    seen = {r["key"]: r["error"] for r in table.to_pylist() if r["status"] == "ok" and r["error"]}
    return list(seen.items())


def iter_results(out: str | Path, *, partial: bool = False) -> Iterator[dict[str, Any]]:
    """The summary rows of a finished run, in input order.

    Args:
        out: the run's folder.
        partial: read the chunks done so far instead (of a run still going, or stopped), each
            in input order: a long run can be looked at before it ends.

    Yields:
        Each row as a dict (:class:`~mmfinercam.results.MapRecord`'s fields).

    Raises:
        ConfigError: where no finished run is (no folder, or chunks still to do).
    """
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
        raise ConfigError(f"no batch run in {out}: the folder does not exist")
    if chunks:
        raise ConfigError(
            f"the run in {out} has not finished ({len(chunks)} chunk(s) done): run the same "
            "command again to finish it, or read what is done with iter_results(out, partial=True)"
        )
    raise ConfigError(f"no batch run in {out}: {summary.name} not found")


def _with_defaults(run: Any) -> Any:
    """A run.json's settings with the options it does not name (it was written before they
    existed) at their defaults: such a run is the same run as one naming them at those values."""
    options = run.get("job", {}).get("options") if isinstance(run, dict) else None
    if isinstance(options, dict):
        defaults = json.loads(json.dumps(FinerOptions().as_dict()))
        run["job"]["options"] = {**defaults, **options}
    return run
