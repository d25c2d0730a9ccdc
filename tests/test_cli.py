"""The command line end to end: outputs per image, broken inputs, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmfinercam.cli import main


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = []
    for i, size in enumerate([(80, 120), (96, 96)]):
        p = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_localize_writes_overlay_map_and_json(tiny_model_dir, images, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "localize",
            *map(str, images),
            "--target",
            "a bird",
            "--contrast",
            "a fish",
            "a cat",
            "--alpha",
            "0.8",
            "--model",
            str(tiny_model_dir),
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    for i, size in enumerate([(80, 120), (96, 96)]):
        heat = np.load(out / f"img{i}.npy")
        assert heat.shape == size and heat.min() >= 0 and heat.max() <= 1
        assert Image.open(out / f"img{i}.png").size[0] > 100
        summary = json.loads((out / f"img{i}.json").read_text())
        assert summary["target"] == "a bird" and summary["contrast"] == ["a fish", "a cat"]
        assert summary["alpha"] == 0.8 and abs(sum(summary["weights"]) - 1) < 1e-5
        assert summary["random_weights"] is False
        scores = np.load(out / f"img{i}.scores.npy")
        assert list(scores.shape) == [summary["grid_height"], summary["grid_width"]]
        assert summary["map_file"] == f"img{i}.scores.npy" and summary["files"]["overlay"] == f"img{i}.png"
        sims = [summary["target_similarity"], *summary["contrast_similarity"]]
        assert summary["best_match"] == ["a bird", "a fish", "a cat"][int(np.argmax(sims))]
    assert "wrote 2 map(s)" in capsys.readouterr().out


def test_localize_counts_images_the_model_matches_better_to_a_contrast(tmp_path, capsys, monkeypatch):
    """The shipped sample is an Alder finch: as the target it is its own best match; as a contrast
    of "Birch finch" it is the best match, which the JSON, the closing line and the overlay's
    title say (a picture is shared without its JSON)."""
    from mmfinercam import viz
    from mmfinercam.testbed.model import shipped_samples

    titles = []
    draw = viz.overlay
    monkeypatch.setattr(viz, "overlay", lambda *a, **kw: titles.append(kw["title"]) or draw(*a, **kw))
    path = next(e["path"] for e in shipped_samples() if e["target"] == "Alder finch")
    argv = ["localize", str(path), "--model", "testbed", "--device", "cpu"]
    cases = [("Alder finch", "Birch finch", False), ("Birch finch", "Alder finch", True)]
    for target, contrast, said in cases:
        out = tmp_path / target
        assert main([*argv, "--target", target, "--contrast", contrast, "--out", str(out)]) == 0
        assert json.loads((out / "alder_finch.json").read_text())["best_match"] == "Alder finch"
        text = capsys.readouterr().out
        assert ("in 1, the model matches the image better to a contrast than to the target" in text) == said
    assert titles == [
        "Alder finch vs Birch finch (alpha=1)",
        "Birch finch vs Alder finch (alpha=1)\n(the model matches the image better to Alder finch)",
    ]


def test_localize_can_leave_out_the_full_size_heatmap(tmp_path, capsys):
    """``--no-heatmap`` writes no full-size .npy (192 MB for a 48-megapixel scan); the patch-grid
    scores it keeps make exactly the map that would have been written."""
    from mmfinercam.explain.finer import to_heatmap
    from mmfinercam.testbed.model import shipped_samples

    path = next(e["path"] for e in shipped_samples() if e["target"] == "Alder finch")
    argv = ["localize", str(path), "--target", "Alder finch", "--contrast", "Birch finch"]
    argv += ["--model", "testbed", "--device", "cpu", "--no-overlay", "--out"]
    assert main([*argv, str(tmp_path / "all")]) == 0
    assert main([*argv, str(tmp_path / "lean"), "--no-heatmap"]) == 0
    capsys.readouterr()
    lean = json.loads((tmp_path / "lean" / "alder_finch.json").read_text())
    assert "heatmap" not in lean["files"] and not (tmp_path / "lean" / "alder_finch.npy").exists()
    scores = torch.from_numpy(np.load(tmp_path / "lean" / "alder_finch.scores.npy"))
    written = np.load(tmp_path / "all" / "alder_finch.npy")
    np.testing.assert_allclose(to_heatmap(scores[None], written.shape)[0].numpy(), written, atol=1e-6)


def test_folder_input_vocabulary_and_broken_image(tiny_model_dir, images, tmp_path, capsys):
    (images[0].parent / "broken.png").write_bytes(b"garbage")
    (images[0].parent / "._img0.png").write_bytes(b"\x00\x05\x16\x07")  # macOS AppleDouble: not a photo
    out = tmp_path / "out"
    code = main(
        [
            "localize",
            str(images[0].parent),
            "--target",
            "red wing",
            "--vocabulary",
            "birds-parts",
            "--model",
            str(tiny_model_dir),
            "--device",
            "cpu",
            "--out",
            str(out),
            "--no-overlay",
        ]
    )
    assert code == 1  # some images failed, the others were written
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["results"]) == 2 and len(summary["failed"]) == 1
    assert summary["failed"][0]["source"].endswith("broken.png")
    assert len(summary["results"][0]["contrast"]) == 3
    assert "skipped" in capsys.readouterr().err


def test_random_weights_say_so(images, tmp_path, capsys):
    code = main(
        [
            "localize",
            str(images[1]),
            "--target",
            "a bird",
            "--contrast",
            "a fish",
            "--model",
            "ViT-B-32",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "o"),
            "--no-overlay",
        ]
    )
    assert code == 0
    assert "RANDOM weights" in capsys.readouterr().err
    assert json.loads((tmp_path / "o" / "img1.json").read_text())["random_weights"] is True


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--target", "  "], "empty"),
        (["--target", "a bird", "--contrast", "a bird"], "also among the contrasts"),
        (["--target", "a bird", "--alpha", "-1"], "alpha"),
        (["--target", "a bird", "--vocabulary", "nope-vocab"], "no vocabulary"),
    ],
)
def test_bad_input_is_one_line(tiny_model_dir, images, tmp_path, capsys, extra, message):
    code = main(
        [
            "localize",
            str(images[0]),
            *extra,
            "--model",
            str(tiny_model_dir),
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("mmfinercam: error:") and message in err[0]


@pytest.mark.parametrize("command", ["localize", "bench", "eval"])
def test_an_output_path_that_cannot_be_a_folder_fails_before_the_work(command, images, tmp_path, capsys):
    """One line and exit 2, before a model is loaded or a benchmark run, whose results would
    otherwise be lost at the end; no model is named here that could even be loaded."""
    taken = tmp_path / "taken"
    taken.write_text("a file")
    args = {
        "localize": ["localize", str(images[0]), "--target", "a bird", "--model", "no-such-model"],
        "bench": ["bench", "--model", "no-such-model", "--device", "cpu"],
        "eval": ["eval", "--model", "no-such-model", "--n", "2"],
    }[command]
    assert main([*args, "--out", str(taken)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mmfinercam: error: --out {taken} exists and is not a folder"]
    assert taken.read_text() == "a file"


def test_only_broken_images(tiny_model_dir, tmp_path, capsys):
    code = main(
        [
            "localize",
            str(tmp_path / "missing.png"),
            "--target",
            "a bird",
            "--model",
            str(tiny_model_dir),
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "not found" in capsys.readouterr().err


def test_demo_runs_on_the_shipped_model(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--device", "cpu", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Alder finch" in text and "wing" in text
    for stem in ("alder_finch", "fern_warbler", "heath_tanager"):
        assert (out / f"{stem}.png").stat().st_size > 1000
        assert (out / f"{stem}_compare.png").stat().st_size > 1000
        summary = json.loads((out / f"{stem}.json").read_text())
        assert summary["model"] == "testbed" and summary["random_weights"] is False


def test_eval_settings_and_folders_that_cannot_work_are_one_line(tmp_path, capsys):
    """Refused before the model loads: a --methods filter that keeps none (it failed in
    matplotlib), an evaluation folder without its annotations or with an entry short of a key
    (a KeyError traceback)."""
    folder = tmp_path / "evalset"
    folder.mkdir()
    base = ["eval", "--model", "no-such-model", "--out", str(tmp_path / "o")]
    cases = [
        (["--n", "2", "--methods", "nothing-like-it"], "no method's name contains"),
        (["--folder", str(folder)], "annotations.json not found"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    from mmfinercam.apps.evaluate import folder_items
    from mmfinercam.errors import MMFinerCAMError

    (folder / "annotations.json").write_text('[{"image": "a.png", "target": "a bird"}]')
    with pytest.raises(MMFinerCAMError, match="entry #0 .* needs image, mask, target, contrast"):
        folder_items(folder)
    (folder / "annotations.json").write_text("{not json")
    with pytest.raises(MMFinerCAMError, match="is not JSON"):
        folder_items(folder)


@pytest.mark.parametrize(
    "args, message",
    [
        (["bench", "--batch", "0"], "argument --batch: must be >= 1, got 0"),
        (["bench", "--repeats", "0"], "argument --repeats: must be >= 1, got 0"),
        (["bench", "--concepts", "1", "0"], "argument --concepts: must be >= 1, got 0"),
        (["batch", "x", "--chunk-size", "0"], "argument --chunk-size: must be >= 1, got 0"),
        (["batch", "x", "--workers", "-1"], "argument --workers: must be >= 0, got -1"),
        (["localize", "x", "--target", "a", "--batch-size", "two"], "expected a whole number, got 'two'"),
        (["eval", "--n", "0"], "argument --n: must be >= 1, got 0"),
        (["eval", "--cams", "gradcam", "grad-cam"], "argument --cams: invalid choice: 'grad-cam'"),
        (["batch", "x", "--shard", "abc"], "argument --shard: expected i/n with 0 <= i < n"),
        (["batch", "x", "--shard", "2/2"], "argument --shard: expected i/n with 0 <= i < n"),
    ],
)
def test_counts_out_of_range_are_usage_errors(args, message, capsys):
    """A batch of 0 images, 0 repeats or a chunk of 0 rows used to fail deep in the run (a
    reshape, an empty median, a division by zero): now argparse's usage error, exit 2."""
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_bench_on_cuda_without_a_gpu_is_one_line(monkeypatch, tmp_path, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "--model", "tiny", "--device", "cuda", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sees no CUDA GPU" in err[0]


def test_traits_ranks_the_vocabulary_from_folders(tmp_path, capsys):
    """``mmfinercam traits``: the target's folder against one folder a sibling; the known
    differing trait of the testbed species ranks in the top 3, with its margin's error and z,
    and the CSV holds every trait with each group's margin."""
    import csv

    from mmfinercam.prompts import load as load_vocabulary
    from mmfinercam.testbed.generator import held_out
    from mmfinercam.testbed.species import SPECIES

    pool = held_out(24 * 8, start=4000)
    for name in ["Alder finch", "Birch finch", "Cedar finch"]:
        (tmp_path / name).mkdir()
        for i, s in enumerate([s for s in pool if s.species.name == name][:6]):
            s.image.save(tmp_path / name / f"{i}.png")
    truth = next(sp for sp in SPECIES if sp.name == "Alder finch").traits()["wing"]
    out = tmp_path / "traits.csv"
    argv = ["traits", str(tmp_path / "Alder finch"), "--contrast-images"]
    argv += [str(tmp_path / "Birch finch"), str(tmp_path / "Cedar finch")]
    argv += ["--vocabulary", "testbed-traits", "--top", "3", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "images: target 6; contrast groups: Birch finch 6, Cedar finch 6" in text
    table = [line.split() for line in text.splitlines()[2:5]]  # the top 3, as chosen for (24 of 24)
    assert truth.split() in [row[-2:] for row in table]
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == len(load_vocabulary("testbed-traits"))
    known = next(r for r in rows if r["trait"] == truth)
    assert int(known["rank"]) <= 3 and [r["trait"] for r in rows[:3]] == [" ".join(r[-2:]) for r in table]
    assert float(known["z"]) > 2 and set(known) >= {"margin Birch finch", "se Cedar finch"}
    smallest = min(float(known["margin Birch finch"]), float(known["margin Cedar finch"]))
    assert float(known["smallest margin"]) == pytest.approx(smallest, abs=1e-6)
    # the traits of the 3 largest z that rank below the table are named under it
    by_z = sorted(rows, key=lambda r: -float(r["z"]))[:3]
    for top in (3, 1):
        if top == 1:
            assert main([*argv[:-2], "--top", "1"]) == 0
            text = capsys.readouterr().out
        hidden = [r for r in by_z if int(r["rank"]) > top and float(r["z"]) >= 2]
        named = [line for line in text.splitlines() if line.startswith("below the table")]
        assert len(named) == (1 if hidden else 0) and (hidden or top == 3)  # at top 1, two at least
        for r in hidden:
            assert f"{r['trait']} z {float(r['z']):.1f} (rank {r['rank']})" in named[0]
    (tmp_path / "empty").mkdir()
    assert main([*argv[:3], str(tmp_path / "empty"), "--vocabulary", "testbed-traits"]) == 2
    assert "no images in" in capsys.readouterr().err


def test_localize_on_a_folder_without_images_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "._a.jpg").write_bytes(b"\x00")  # hidden: not an image
    argv = ["localize", str(tmp_path / "empty"), "--target", "a bird", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no images given (folders are searched for .bmp" in err[0]
