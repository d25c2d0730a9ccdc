"""The benchmark runs end to end on a tiny model (timings are reported, never asserted)."""

import json

from mmfinercam.cli import main


def test_bench_runs_on_a_tiny_model(tmp_path):
    out = tmp_path / "bench"
    code = main(
        [
            "bench",
            "--model",
            "tiny",
            "--device",
            "cpu",
            "--batch",
            "2",
            "--concepts",
            "1",
            "10",
            "100",
            "--sizes",
            "224",
            "--batches",
            "1",
            "--repeats",
            "1",
            "--no-peers",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads((out / "bench.json").read_text())
    names = [t["name"] for t in report["timings"]]
    assert "open_clip encode_image (floor)" in names
    assert "mmfinercam dense Finer-CAM K=100" in names
    assert all(t["ms"] > 0 and t["images_per_s"] > 0 for t in report["timings"])
    assert "dense K=100 time / K=1 time (target <= 1.2)" in report["ratios"]
    assert "| ratio | value |" in (out / "bench.md").read_text()


def test_compiled_tower_traces_whole_and_gives_the_same_maps(tiny_localizer):
    """``Localizer.compile`` captures the GEM tower as one graph (no breaks) with equal output."""
    import torch

    import mmfinercam as mf

    loc = mf.Localizer(tiny_localizer.backend, templates=tiny_localizer.templates)
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    eager = loc.similarity_maps(x, ["a bird", "a red wing"])
    loc.compile(backend="eager", fullgraph=True)  # fullgraph: a graph break would raise
    torch.testing.assert_close(loc.similarity_maps(x, ["a bird", "a red wing"]), eager, atol=1e-5, rtol=0)


def test_bench_compile_option_reaches_the_report(tmp_path):
    out = tmp_path / "bench"
    args = "bench --model tiny --device cpu --batch 1 --concepts 1 100 --sizes --batches --repeats 1".split()
    args += ["--no-peers", "--compile", "eager", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "bench.json").read_text())
    assert report["compile"] == "eager" and "torch.compile eager" in (out / "bench.md").read_text()
