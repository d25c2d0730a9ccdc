"""The benchmark runs end to end on a tiny model (timings are reported, never asserted)."""

import json

import pytest

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
            "2",
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
    for name, value in report["ratios"].items():  # paired over the same 2 rounds: a range
        lo, hi = report["ratio_ranges"][name]
        assert lo <= value <= hi
    assert all(len(t["rounds_ms"]) == 2 for t in report["timings"])
    assert "| ratio | value | range over rounds |" in (out / "bench.md").read_text()


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


def test_rounds_interleave_and_ratios_pair_round_by_round():
    """Each round calls every function once, starting one further along; a paired ratio is the
    median of each round's own ratio, so a drift that slows both sides alike cancels."""
    import torch

    from mmfinercam.bench import Timing, measure_rounds, paired_ratio

    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    got = measure_rounds(fns, torch.device("cpu"), repeats=3, warmup=1)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert all(len(samples) == 3 and peak is None for samples, peak in got.values())

    slow = Timing("ours", 0.0, 1, samples=[1.2, 2.4, 3.6], group=0)  # the machine slows 3x
    floor = Timing("floor", 0.0, 1, samples=[1.0, 2.0, 3.0], group=0)
    assert paired_ratio(slow, floor) == pytest.approx((1.2, 1.2, 1.2))
    apart = Timing("peer", 6.0, 1)  # measured on its own: a ratio of medians, no range
    assert paired_ratio(apart, Timing("ours", 2.0, 1, samples=[2.0], group=1)) == (3.0, 3.0, 3.0)
