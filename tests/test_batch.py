"""`mmfinercam batch`: inputs, resume, broken images, shards, Ray, and agreement with finer_cam."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import mmfinercam as mf
from mmfinercam.batch import (
    BatchJob,
    BatchRunner,
    PromptSet,
    iter_results,
    load_map,
    read_collection,
    unusable_masks,
)
from mmfinercam.cli import main
from mmfinercam.errors import MMFinerCAMError
from mmfinercam.testbed import held_out

N_IMAGES = 7  # index 3 is broken
SETS = [
    PromptSet("finch", "Alder finch", ("Birch finch", "Cedar finch")),
    PromptSet("red-wing", "a bird with a red wing", ("a bird with a blue wing",)),
]


@pytest.fixture(scope="module")
def testbed():
    return mf.load("testbed", device="cpu")


@pytest.fixture(scope="module")
def collection_dir(tmp_path_factory):
    """Seven held-out birds as PNGs with their wing masks; the fourth file is not an image."""
    root = tmp_path_factory.mktemp("collection")
    images = root / "images"
    images.mkdir()
    rows = ["path,target,contrast,mask"]
    for i, s in enumerate(held_out(N_IMAGES, start=7000)):
        name = f"bird{i}.png"
        if i == 3:
            (images / name).write_bytes(b"not a png at all")
        else:
            s.image.save(images / name)
        Image.fromarray((s.masks["wing"] * 255).astype(np.uint8)).save(root / f"mask{i}.png")
        sibs = [x.name for x in mf.testbed.siblings(s.species)]
        rows.append(f"images/{name},{s.species.name},{'|'.join(sibs)},mask{i}.png")
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    return root


FINER = {"alpha", "weighting", "method", "depth", "contrast_ranks", "short_side"}


def _job(out, **kw):
    """A job on the testbed model; Finer-CAM settings given as keywords go into its options."""
    options = mf.FinerOptions(**{k: kw.pop(k) for k in FINER & set(kw)})
    base = dict(out=str(out), prompt_sets=SETS, model="testbed", chunk_size=2, options=options)
    return BatchJob(**(base | kw))


def _outputs(out: Path) -> tuple[list[dict], dict[str, bytes]]:
    rows = list(iter_results(out))
    maps = {p.name: p.read_bytes() for p in sorted((out / "maps").glob("*.npy"))}
    return rows, maps


def assert_same_outputs(a: Path, b: Path) -> None:
    """Same rows, files and maps; numbers to float rounding (other processes may use other thread
    counts, which reorders float sums)."""
    rows_a, maps_a = _outputs(a)
    rows_b, maps_b = _outputs(b)
    assert len(rows_a) == len(rows_b) and list(maps_a) == list(maps_b)
    for ra, rb in zip(rows_a, rows_b):
        assert ra.keys() == rb.keys()
        for k in ra:
            if isinstance(ra[k], float) or (
                isinstance(ra[k], list) and ra[k] and isinstance(ra[k][0], float)
            ):
                np.testing.assert_allclose(ra[k], rb[k], atol=1e-4, err_msg=k)
            else:
                assert ra[k] == rb[k], k
    for name in maps_a:
        np.testing.assert_allclose(
            np.load(a / "maps" / name).astype(np.float32),
            np.load(b / "maps" / name).astype(np.float32),
            atol=2e-3,
        )


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, collection_dir, testbed):
    out = tmp_path_factory.mktemp("ref")
    runner = BatchRunner(_job(out), read_collection(collection_dir / "images"), localizer=testbed)
    report = runner.run(workers=0, progress=False)
    return out, report


def test_folder_run_writes_every_image_and_lists_the_broken_one(reference_run):
    out, report = reference_run
    assert report.finished and report.images == N_IMAGES - 1 and report.failed == 1
    rows = list(iter_results(out))
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == (N_IMAGES - 1) * len(SETS)
    (bad,) = [r for r in rows if r["status"] == "failed"]
    assert bad["key"] == "bird3.png" and bad["error"]
    assert "bird3.png" in (out / "failed.csv").read_text()
    assert [r["key"] for r in rows if r["status"] == "ok"][::2] == [
        f"bird{i}.png" for i in (0, 1, 2, 4, 5, 6)
    ]
    manifest = (out / "manifest.json").read_text()
    assert '"images_ok": 6' in manifest and '"images_failed": 1' in manifest
    for r in ok:
        grid = load_map(out, r)
        assert grid.dtype == np.float16 and grid.shape == (r["grid_height"], r["grid_width"]) == (12, 12)
        assert 0 <= r["peak_x"] <= r["image_width"] and len(r["top_prompts"]) == 5


def test_batch_maps_equal_finer_cam(reference_run, collection_dir, testbed):
    """The batch path and Localizer.finer_cam compute the same Finer-CAM scores and weights."""
    out, _ = reference_run
    rows = [r for r in iter_results(out) if r["status"] == "ok" and r["prompt_set"] == "red-wing"]
    paths = [str(collection_dir / "images" / r["key"]) for r in rows]
    ref = testbed.finer_cam(paths, "a bird with a red wing", ["a bird with a blue wing"])
    for i, r in enumerate(rows):
        np.testing.assert_allclose(load_map(out, r), ref.scores[i].numpy(), atol=2e-3)
        np.testing.assert_allclose(r["weights"], ref.weights[i].numpy(), atol=1e-5)
        assert r["contrast"] == ["a bird with a blue wing"]


def test_resume_after_interruption_equals_an_uninterrupted_run(
    tmp_path, reference_run, collection_dir, testbed
):
    collection = read_collection(collection_dir / "images")
    runner = BatchRunner(_job(tmp_path), collection, localizer=testbed)
    calls = []
    original = runner.process_chunk

    def dies_at_third(c, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process is killed mid-run
        calls.append(c)
        return original(c, **kw)

    runner.process_chunk = dies_at_third
    with pytest.raises(KeyboardInterrupt):
        runner.run(workers=0, progress=False)
    assert not (tmp_path / "summary.parquet").exists()
    assert len(list((tmp_path / "chunks").glob("*.parquet"))) == 2
    with pytest.raises(MMFinerCAMError, match=r"has not finished \(2 chunk\(s\) done\).*partial=True"):
        list(iter_results(tmp_path))
    so_far = list(iter_results(tmp_path, partial=True))  # the two chunks' rows, in input order
    finished = list(iter_results(reference_run[0]))
    assert so_far == finished[: len(so_far)] and 0 < len(so_far) < len(finished)
    resumed = BatchRunner(_job(tmp_path), collection, localizer=testbed)
    done = []
    resumed_original = resumed.process_chunk
    resumed.process_chunk = lambda c, **kw: done.append(c) or resumed_original(c, **kw)
    report = resumed.run(workers=0, progress=False)
    assert done == [2, 3] and report.chunks_skipped == 2  # each chunk computed exactly once
    assert _outputs(tmp_path) == _outputs(reference_run[0])


def test_reading_results_where_no_run_is_says_so(tmp_path):
    with pytest.raises(MMFinerCAMError, match="no batch run in .*: the folder does not exist"):
        list(iter_results(tmp_path / "none"))
    with pytest.raises(MMFinerCAMError, match="no batch run in .*: summary.parquet not found"):
        list(iter_results(tmp_path))
    assert list(iter_results(tmp_path, partial=True)) == []


def test_a_different_run_in_the_same_folder_is_refused(reference_run, collection_dir, testbed):
    out, _ = reference_run
    with pytest.raises(MMFinerCAMError, match="alpha"):
        BatchRunner(_job(out, alpha=0.5), read_collection(collection_dir / "images"), localizer=testbed).run(
            workers=0, progress=False
        )


def test_dataloader_workers_give_the_same_output(tmp_path, reference_run, collection_dir, testbed):
    runner = BatchRunner(_job(tmp_path), read_collection(collection_dir / "images"), localizer=testbed)
    runner.run(workers=2, batch_size=3, progress=False)
    assert _outputs(tmp_path) == _outputs(reference_run[0])


def test_csv_rows_with_their_own_targets_and_masks(tmp_path, collection_dir, testbed):
    collection = read_collection(collection_dir / "list.csv")
    assert collection.rows[0].contrast and collection.rows[0].mask
    report = BatchRunner(_job(tmp_path, prompt_sets=[]), collection, localizer=testbed).run(
        workers=0, progress=False
    )
    assert report.images == N_IMAGES - 1 and report.failed == 1
    rows = [r for r in iter_results(tmp_path) if r["status"] == "ok"]
    truth = {f"images/bird{i}.png": s for i, s in enumerate(held_out(N_IMAGES, start=7000))}
    for r in rows:
        sp = truth[r["key"]].species
        assert r["target"] == sp.name and r["contrast"] == [x.name for x in mf.testbed.siblings(sp)]
        assert 0.0 <= r["mask_energy"] <= 1.0
        # the prompt the model matches the image to best, of the target and the row's contrasts
        sims = [r["target_similarity"], *r["contrast_similarity"]]
        assert len(sims) == 1 + len(r["contrast"])
        assert r["best_match"] == [r["target"], *r["contrast"]][int(np.argmax(sims))]
    assert sum(r["best_match"] == r["target"] for r in rows) >= len(rows) - 1  # the trained model sees them
    # the mask energy is the share of the positive upsampled map inside the mask
    r = rows[0]
    heat = load_map(tmp_path, r).astype(np.float32)
    import torch
    import torch.nn.functional as F

    up = F.interpolate(
        torch.from_numpy(heat)[None, None], size=(96, 96), mode="bilinear", align_corners=False
    )[0, 0].clamp_min(0)  # upsampled, then ReLU, as heatmaps are made
    mask = torch.from_numpy(truth[r["key"]].masks["wing"])
    assert r["mask_energy"] == pytest.approx(float((up * mask).sum() / up.sum()), abs=2e-3)


def test_masks_as_label_maps_or_transparent_layers_and_unusable_masks(
    tmp_path, collection_dir, testbed, capsys
):
    """The masks written as label maps (the part 1) and as strokes on a transparent layer give the
    white masks' energies (before, the first marked nothing, the second the rest of the image);
    an image whose mask is missing or of another size is still explained, its map the same, its
    row carrying the mask's error and no energy (before, the image failed)."""
    lines = (collection_dir / "list.csv").read_text().splitlines()
    rows, unusable = [lines[0]], {"bird2.png": "mask file not found", "bird5.png": "is 40×30 px"}
    for i, line in enumerate(lines[1:]):
        part = np.asarray(Image.open(collection_dir / f"mask{i}.png")) > 0
        if i == 5:
            mask = Image.new("L", (40, 30), 255)
        elif i % 2:
            mask = Image.fromarray(part.astype(np.uint8))
        else:
            black = np.zeros((*part.shape, 3), np.uint8)  # black strokes, painted where opaque
            mask = Image.fromarray(np.dstack([black, part.astype(np.uint8) * 255]))
        if i != 2:
            mask.save(tmp_path / f"mask{i}.png")
        image = collection_dir / line.split(",")[0]
        rows.append(",".join([str(image), *line.split(",")[1:]]))
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    runs = []
    for listing in (collection_dir / "list.csv", tmp_path / "list.csv"):
        out = tmp_path / f"run{len(runs)}"
        BatchRunner(_job(out, prompt_sets=[]), read_collection(listing), localizer=testbed).run(
            workers=0, progress=False
        )
        runs.append((out, {Path(r["key"]).name: r for r in iter_results(out) if r["status"] == "ok"}))
    (white_out, white), (other_out, other) = runs
    assert white.keys() == other.keys() and len(white) == N_IMAGES - 1  # bird3 is no image
    for name, r in other.items():
        if name in unusable:
            assert r["mask_energy"] is None and unusable[name] in r["error"]
            assert np.array_equal(load_map(other_out, r), load_map(white_out, white[name]))
        else:
            assert r["error"] is None and r["mask_energy"] == white[name]["mask_energy"]
            assert 0.0 < r["mask_energy"] < 1.0
    assert {Path(key).name for key, _ in unusable_masks(other_out)} == set(unusable)
    assert unusable_masks(white_out) == []
    capsys.readouterr()
    listing, out = str(tmp_path / "list.csv"), str(tmp_path / "c")
    code = main(["batch", listing, "--model", "testbed", "--quiet", "--out", out])
    said = capsys.readouterr().out
    assert code == 1 and "6 images done, 1 failed" in said  # bird3 is no image
    assert "2 mask(s) could not be used" in said and "bird2.png: mask: mask file not found" in said


def test_a_large_mask_is_kept_bounded_for_its_energy(tmp_path, collection_dir, testbed, monkeypatch):
    """Past MASK_SIDE pixels a side a mask is kept as covered fractions at that size (a batch of
    48-megapixel masks held gigabytes): each energy stays within a hundredth of the full-size one."""
    from mmfinercam import masks

    collection = read_collection(collection_dir / "list.csv")
    energies = []
    for side, out in [(masks.MASK_SIDE, tmp_path / "full"), (40, tmp_path / "bounded")]:
        monkeypatch.setattr(masks, "MASK_SIDE", side)  # the testbed's masks are 96 px a side
        BatchRunner(_job(out, prompt_sets=[]), collection, localizer=testbed).run(workers=0, progress=False)
        energies.append({r["key"]: r["mask_energy"] for r in iter_results(out) if r["status"] == "ok"})
    assert energies[0].keys() == energies[1].keys() and len(energies[0]) == N_IMAGES - 1
    for key, full in energies[0].items():
        assert energies[1][key] == pytest.approx(full, abs=0.01), key
    assert any(energies[1][k] != energies[0][k] for k in energies[0])  # the bounded path did run
    reduced = masks.mask_for_energy(np.eye(96, dtype=bool))
    assert tuple(reduced.shape) == (40, 40) and reduced.is_floating_point()
    assert float(reduced.sum()) == pytest.approx(96 * (40 / 96) ** 2, rel=0.05)  # the area, rescaled


def test_parquet_list_and_vocabulary_contrasts(tmp_path, collection_dir, testbed):
    import pyarrow as pa

    table = pa.table({"path": [f"images/bird{i}.png" for i in (0, 1, 2)]})
    pq.write_table(table, collection_dir / "list.parquet")
    job = _job(tmp_path, prompt_sets=[PromptSet("t", "Alder finch")], vocabulary="testbed-species")
    BatchRunner(job, read_collection(collection_dir / "list.parquet"), localizer=testbed).run(
        workers=0, progress=False
    )
    rows = list(iter_results(tmp_path))
    paths = [str(collection_dir / "images" / f"bird{i}.png") for i in (0, 1, 2)]
    ref = testbed.finer_cam(paths, "Alder finch", vocabulary="testbed-species")
    assert [r["contrast"] for r in rows] == ref.contrast
    for i, r in enumerate(rows):
        np.testing.assert_allclose(load_map(tmp_path, r), ref.scores[i].numpy(), atol=2e-3)


def test_contrast_ranks_outside_the_vocabulary_are_refused_first(tmp_path, collection_dir, testbed):
    # testbed-species holds 24 names: the target may be one of them, so ranks run to 23
    cases = [((24, 25), "there are 23 vocabulary entries"), ((3, 3), "distinct"), ((), "distinct")]
    for ranks, message in cases:
        sets = [PromptSet("t", "Alder finch")]
        with pytest.raises(mf.PromptError, match=message):
            job = _job(tmp_path, prompt_sets=sets, vocabulary="testbed-species", contrast_ranks=ranks)
            BatchRunner(job, read_collection(collection_dir / "images"), localizer=testbed)
    assert not (tmp_path / "chunks").exists()


def test_a_small_vocabulary_holding_the_target_contrasts_the_others(tmp_path, collection_dir, testbed):
    """Default ranks 1, 2, 3 against three names, one of them the target: the two others, never
    the target itself (ranks past the vocabulary's other entries are dropped)."""
    vocabulary = tmp_path / "finches.txt"
    vocabulary.write_text("Alder finch\nBirch finch\nCedar finch\n")
    sets = [PromptSet("t", "Alder finch")]
    job = _job(tmp_path / "run", prompt_sets=sets, vocabulary=str(vocabulary))
    runner = BatchRunner(job, read_collection(collection_dir / "images"), localizer=testbed)
    runner.run(workers=0, progress=False)
    rows = [r for r in iter_results(tmp_path / "run") if r["status"] == "ok"]
    assert rows and all(sorted(r["contrast"]) == ["Birch finch", "Cedar finch"] for r in rows)


def test_saved_datasets_folder(tmp_path, collection_dir, testbed):
    datasets = pytest.importorskip("datasets")
    images = [Image.open(collection_dir / "images" / f"bird{i}.png").convert("RGB") for i in (0, 1, 2)]
    ds = datasets.Dataset.from_dict({"image": images, "key": ["a", "b", "c"]})
    ds = ds.cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "ds"))
    collection = read_collection(tmp_path / "ds")
    assert collection.kind == "datasets" and [r.key for r in collection.rows] == ["a", "b", "c"]
    BatchRunner(_job(tmp_path / "out"), collection, localizer=testbed).run(workers=1, progress=False)
    rows = [r for r in iter_results(tmp_path / "out") if r["prompt_set"] == "finch"]
    ref = testbed.finer_cam(images, "Alder finch", ["Birch finch", "Cedar finch"])
    for i, r in enumerate(rows):
        np.testing.assert_allclose(load_map(tmp_path / "out", r), ref.scores[i].numpy(), atol=2e-3)


def _cli_batch_args(collection_dir, out):
    return [
        "batch", str(collection_dir / "images"), "--target", "Alder finch", "--contrast", "Birch finch",
        "Cedar finch", "--chunk-size", "2", "--workers", "0", "--quiet", "--out", str(out),
    ]  # fmt: skip


#: two processes on this machine, as a user starts them: torchrun, and accelerate (whose
#: ``--multi_gpu`` spawns the ranks with torchrun's launcher; without a GPU they run on the CPU)
LAUNCHERS = {
    "torchrun": ["torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533"],
    "accelerate": ["accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29534"],
}  # fmt: skip


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_two_processes_under_a_launcher_equal_one(tmp_path, collection_dir, launcher):
    single = tmp_path / "single"
    assert main(_cli_batch_args(collection_dir, single)) == 1  # one image failed: exit 1
    sharded = tmp_path / "sharded"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cli = ["-m", "mmfinercam.cli", *_cli_batch_args(collection_dir, sharded)]
    cmd = [sys.executable, "-m", *LAUNCHERS[launcher], *cli]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]  # rank 1's share holds the broken image
    assert (sharded / "summary.parquet").exists(), proc.stderr[-2000:]
    # two ranks ran, each its every other chunk of two images (rank 1's with the broken one)
    assert sorted(re.findall(r"(\d+) images done, (\d+) failed", proc.stdout)) == [("2", "1"), ("4", "0")]
    assert_same_outputs(sharded, single)


def test_ray_on_a_local_instance_equals_one_process(tmp_path, reference_run, collection_dir):
    pytest.importorskip("ray")
    from mmfinercam.batch import run_with_ray

    report = run_with_ray(_job(tmp_path), read_collection(collection_dir / "images"), actors=1)
    assert report.finished and report.images == N_IMAGES - 1 and report.failed == 1
    assert_same_outputs(tmp_path, reference_run[0])


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("l.csv", "path,target\n", "lists no images"),
        ("l.csv", "file,target\na.png,x\n", "has no 'path' column"),
        ("l.csv", "path,target\na.png,x\na.png,y\n", "lists 'a.png' twice"),
        ("l.csv", "path,target\na.png,x,extra\n", "cannot read .*l.csv: CSV parse error"),
        ("l.parquet", "not parquet", "cannot read .*l.parquet"),
    ],
)
def test_lists_that_name_no_usable_rows_are_refused(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(MMFinerCAMError, match=message):
        read_collection(path)


def test_a_rows_repeated_contrast_names_the_row(tmp_path, testbed):
    path = tmp_path / "l.csv"
    rows = ["path,target,contrast", "a.png,Alder finch,Birch finch", "b.png,Alder finch,Birch|Birch"]
    path.write_text("\n".join(rows) + "\n")
    job = BatchJob(out=str(tmp_path / "o"), prompt_sets=[], model="testbed")
    with pytest.raises(mf.PromptError, match="b.png: a contrast is repeated: \\['Birch', 'Birch'\\]"):
        BatchRunner(job, read_collection(path), localizer=testbed)


def test_bad_inputs_are_one_line(tmp_path, collection_dir, capsys):
    assert main(["batch", str(tmp_path / "nope"), "--target", "x", "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["batch", str(collection_dir / "images"), "--out", str(tmp_path / "o")]) == 2
    assert "no target" in capsys.readouterr().err
    (tmp_path / "a-file").touch()
    images = str(collection_dir / "images")
    assert main(["batch", images, "--target", "x", "--out", str(tmp_path / "a-file")]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    # --device reaches the runner (it was parsed and then not passed on: the run used the default)
    assert main(["batch", images, "--target", "x", "--device", "tpu", "--out", str(tmp_path / "o3")]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err
    assert main(["batch", str(collection_dir / "images"), "--target", " ", "--out", str(tmp_path / "o")]) == 2
    assert main(["batch", str(collection_dir / "images"), "--target", "x", "--method", "raw", "--out",
                 str(tmp_path / "o2"), "--quiet", "--workers", "0", "--chunk-size", "100"]) == 1  # fmt: skip


KILLED_RUN = """
import os, signal, sys
from mmfinercam.batch import BatchJob, BatchRunner, PromptSet, read_collection
sets = [PromptSet("finch", "Alder finch", ("Birch finch", "Cedar finch")),
        PromptSet("red-wing", "a bird with a red wing", ("a bird with a blue wing",))]
runner = BatchRunner(BatchJob(out=sys.argv[2], prompt_sets=sets, model="testbed", chunk_size=2),
                     read_collection(sys.argv[1]))
done = []
original = runner.process_chunk
def dies_after_two(c, **kw):
    if len(done) == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: as a killed job
    done.append(c)
    return original(c, **kw)
runner.process_chunk = dies_after_two
runner.run(workers=0, progress=False)
"""


def test_a_sigkilled_process_resumes_to_the_same_output(tmp_path, reference_run, collection_dir, testbed):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(collection_dir / "images"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"OMP_NUM_THREADS": "2"},
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert len(list((out / "chunks").glob("*.parquet"))) == 2 and not (out / "summary.parquet").exists()
    report = BatchRunner(_job(out), read_collection(collection_dir / "images"), localizer=testbed).run(
        workers=0, progress=False
    )
    assert report.chunks_done == 2 and report.chunks_skipped == 2 and report.finished
    assert_same_outputs(out, reference_run[0])


def test_an_image_size_under_a_patch_is_refused_before_any_image(tmp_path, collection_dir, testbed):
    """It used to make every image fail, one by one, and call the run done."""
    with pytest.raises(MMFinerCAMError, match="short_side must be whole pixels, at least one 8×8 patch; got"):
        BatchRunner(
            _job(tmp_path / "o", short_side=3), read_collection(collection_dir / "images"), localizer=testbed
        )
    assert not (tmp_path / "o").exists()


def test_bad_job_settings_and_prompt_set_files_are_one_line(tmp_path, collection_dir, capsys):
    """Refused before a model is loaded: a chunk size of 0 (it divided by zero), a prompt-set
    file whose sets are not objects (a TypeError) or that holds none."""
    images = str(collection_dir / "images")
    base = ["batch", images, "--workers", "0", "--quiet", "--out", str(tmp_path / "o")]
    for size in (0, 2.5):
        with pytest.raises(MMFinerCAMError, match="chunk_size must be a whole number >= 1"):  # argparse's too
            BatchJob(out=str(tmp_path / "o"), chunk_size=size)
    for text, message in [
        ('{"a": 1}', "needs a 'target'"),
        ("[]", "non-empty list"),
        ('"x"', "non-empty list"),
    ]:
        sets = tmp_path / "sets.json"
        sets.write_text(text)
        assert main([*base, "--prompt-sets", str(sets)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        _job(tmp_path / "o", alpha=float("nan"))
    for bad, message in [
        (dict(method="magic"), "unknown method 'magic'"),
        (dict(method="gradcam"), "needs a backward pass"),
        (dict(weighting="max"), "weighting must be one of"),
        (dict(depth=1), "depth must be between 2"),
        (dict(depth=3.5), "depth must be between 2"),
    ]:
        with pytest.raises(MMFinerCAMError, match=message):
            _job(tmp_path / "o", **bad)
    with pytest.raises(MMFinerCAMError, match="one view an image"):
        BatchJob(out=str(tmp_path / "o"), options=mf.FinerOptions(shifts=2))
    assert not (tmp_path / "o").exists()


def test_a_run_that_stopped_before_any_chunk_does_not_keep_its_folder(tmp_path, collection_dir, testbed):
    """A depth past the model's blocks is found at the first image-tower pass, after the folder
    and its run.json are made: the corrected run takes the folder over (it used to be refused
    as 'another run'), and lists only the maps its rows point at."""
    collection = read_collection(collection_dir / "images")
    with pytest.raises(ValueError, match="depth must be between 2"):
        BatchRunner(_job(tmp_path, depth=99), collection, localizer=testbed).run(workers=0, progress=False)
    assert (tmp_path / "run.json").exists() and not list((tmp_path / "chunks").glob("*.parquet"))
    (tmp_path / "maps").mkdir(exist_ok=True)
    np.save(tmp_path / "maps" / "chunk-00000-3x3.npy", np.zeros((1, 1, 3, 3), np.float16))  # a stray map
    report = BatchRunner(_job(tmp_path), collection, localizer=testbed).run(workers=0, progress=False)
    assert report.finished
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert "maps/chunk-00000-3x3.npy" not in manifest["maps"]
    assert {r["map_file"] for r in iter_results(tmp_path) if r["map_file"]} == set(manifest["maps"])
    # once a chunk is done, the folder is that run's
    with pytest.raises(MMFinerCAMError, match="holds another run"):
        BatchRunner(_job(tmp_path, alpha=0.5), collection, localizer=testbed).run(workers=0, progress=False)


def test_a_run_made_before_a_setting_existed_resumes(tmp_path, collection_dir, testbed):
    """A run.json written before an option was added (so without it) is the same run when the
    option is at its default: the folder is resumed, not refused."""
    collection = read_collection(collection_dir / "images")
    BatchRunner(_job(tmp_path), collection, localizer=testbed).run(workers=0, progress=False)
    run = json.loads((tmp_path / "run.json").read_text())
    for key in ("tiles", "multiscale", "refine"):
        run["job"]["options"].pop(key)
    (tmp_path / "run.json").write_text(json.dumps(run))
    report = BatchRunner(_job(tmp_path), collection, localizer=testbed).run(workers=0, progress=False)
    assert report.finished
    with pytest.raises(MMFinerCAMError, match=r"differs in: .*alpha"):
        BatchRunner(_job(tmp_path, alpha=0.5), collection, localizer=testbed).run(workers=0, progress=False)


@pytest.mark.parametrize("method", ["sclip", "naclip"])
def test_batch_runs_the_other_dense_methods_as_finer_cam_does(tmp_path, collection_dir, testbed, method):
    collection = read_collection(collection_dir / "images")
    BatchRunner(_job(tmp_path, method=method), collection, localizer=testbed).run(workers=0, progress=False)
    rows = [r for r in iter_results(tmp_path) if r["status"] == "ok" and r["prompt_set"] == "red-wing"]
    paths = [str(collection_dir / "images" / r["key"]) for r in rows]
    ref = testbed.finer_cam(paths, "a bird with a red wing", ["a bird with a blue wing"], method=method)
    for i, r in enumerate(rows):
        np.testing.assert_allclose(load_map(tmp_path, r), ref.scores[i].numpy(), atol=2e-3)
