"""One record of a map: ``localize``'s JSON, the web app's summary and ``batch``'s Parquet rows
are the same fields, and the Parquet schema is derived from them."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow as pa
import pytest
import torch

import mmfinercam as mf
from mmfinercam.batch import BatchJob, BatchRunner, PromptSet, iter_results, read_collection
from mmfinercam.outputs import output_stems
from mmfinercam.results import MapRecord, grid_statistics, peak_position, record_schema


def test_the_parquet_schema_is_the_records_fields():
    schema = record_schema()
    names = [f.name for f in dataclasses.fields(MapRecord)]
    assert schema.names == names
    assert schema.field("contrast").type == pa.list_(pa.string())
    assert schema.field("weights").type == pa.list_(pa.float64())
    assert schema.field("grid_height").type == pa.int64() and schema.field("peak_x").type == pa.float64()


def test_grid_statistics_and_the_peak_by_hand():
    scores = torch.tensor([[[0.1, -0.2], [0.9, 0.3]], [[-1.0, -2.0], [-0.5, -0.1]]])
    stats = grid_statistics(scores)
    assert stats["peak"].tolist() == [2, 3] and stats["positive_fraction"].tolist() == [0.75, 0.0]
    torch.testing.assert_close(stats["score_mean"], torch.tensor([0.275, -0.9]))
    # the peak cell's centre in image pixels: row 1, column 0 of a 2×2 grid over 40×60 px
    assert peak_position(2, 0.9, (2, 2), (40, 60)) == (15.0, 30.0)
    assert peak_position(3, -0.1, (2, 2), (40, 60)) == (None, None)  # no positive evidence: no peak


def test_localize_the_app_and_batch_write_the_same_record(tmp_path, capsys):
    from mmfinercam.apps.web import localize_for_app
    from mmfinercam.cli import main

    sample = mf.testbed.shipped_samples()[0]
    target, contrast = sample["target"], sample["contrast"]
    assert main(["localize", str(sample["path"]), "--target", target, "--contrast", *contrast,
                 "--no-overlay", "--device", "cpu", "--out", str(tmp_path / "l")]) == 0  # fmt: skip
    localized = json.loads((tmp_path / "l" / f"{sample['path'].stem}.json").read_text())
    app = localize_for_app(
        str(sample["path"]), target, ", ".join(contrast), None, 1.0, "testbed", models=mf.ModelCache(),
        out_dir=tmp_path / "a",
    )  # fmt: skip
    assert [
        str(tmp_path / "a" / f"{sample['path'].stem}{end}") for end in (".npy", ".png", ".json")
    ] == app.files
    from_app = json.loads((tmp_path / "a" / f"{sample['path'].stem}.json").read_text())
    job = BatchJob(out=str(tmp_path / "b"), prompt_sets=[PromptSet(target, target, tuple(contrast))])
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / sample["path"].name).write_bytes(sample["path"].read_bytes())
    BatchRunner(job, read_collection(folder), localizer=mf.load("testbed", device="cpu")).run(
        workers=0, progress=False
    )
    (row,) = list(iter_results(tmp_path / "b"))
    fields = [f.name for f in dataclasses.fields(MapRecord)]
    assert list(row) == fields
    for record in (localized, from_app):
        assert [k for k in record if k in fields] == fields  # the record's fields, in order
    for key in ("target", "contrast", "image_height", "grid_width", "peak_x", "peak_y", "best_match"):
        assert localized[key] == from_app[key] == row[key], key
    for key in ("score_max", "score_mean", "target_similarity", "positive_fraction"):
        assert localized[key] == pytest.approx(row[key], abs=1e-5) == from_app[key], key
    np.testing.assert_allclose(localized["weights"], row["weights"], atol=1e-5)


def test_output_names_are_unique_by_construction():
    """Two inputs never write the same files: a name taken before, by an input or by a name
    made here, moves on to the first free -2, -3 ... (case-blind, as macOS compares names)."""
    assert output_stems(["a/x.png", "b/x.jpg", "b/x-1.png"]) == ["x", "x-2", "x-1"]
    assert output_stems(["x.png", "x-2.png", "c/x.png"]) == ["x", "x-2", "x-3"]
    assert output_stems(["Bird.png", "bird.jpg"]) == ["Bird", "bird-2"]
    assert output_stems(["<ndarray #0>", "a b/c:d.png"]) == ["_ndarray__0_", "c_d"]
    stems = output_stems([f"d{i % 3}/x.png" for i in range(50)] + ["x-7.png"])
    assert len({s.casefold() for s in stems}) == len(stems)
