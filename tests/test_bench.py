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
            "--size",
            "224",
            "--sizes",
            "112",
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
    assert "112px: dense K=100 time / plain forward" in report["ratios"]
    assert report["size"] == 224  # the headline's size, not the last of the size sweep
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

    from mmfinercam.apps.timing import Timing, measure_rounds, paired_ratio

    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    got = measure_rounds(fns, torch.device("cpu"), repeats=3, warmup=1)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert all(len(samples) == 3 and peak is None for samples, peak in got.values())

    slow = Timing("ours", 0.0, 1, samples=[1.2, 2.4, 3.6], group=0)  # the machine slows 3x
    floor = Timing("floor", 0.0, 1, samples=[1.0, 2.0, 3.0], group=0)
    assert paired_ratio(slow, floor) == pytest.approx((1.2, 1.2, 1.2))
    apart = Timing("peer", 6.0, 1, samples=[6.0], group=1)  # not in the same rounds: refused
    with pytest.raises(ValueError, match="same rounds"):
        paired_ratio(apart, floor)


FAKE_GEM = '''
class GEMWrapper:
    """Stands in for gem_torch's wrapper: the same calls, plain CLIP similarities."""

    def __init__(self, model, tokenizer, depth):
        self.model, self.tokenizer = model, tokenizer

    def __call__(self, images, prompts, normalize=False):
        return self.model.encode_image(images) @ self.model.encode_text(self.tokenizer(prompts)).T
'''


def test_peers_run_interleaved_with_ours(tmp_path):
    """gem_torch's worker stays up and makes one call whenever asked (here with a stand-in for
    the gem package); each peer's ratio pairs it with our call measured in the same rounds."""
    ref = tmp_path / "ref"
    (ref / "gem").mkdir(parents=True)
    (ref / "gem" / "__init__.py").write_text(FAKE_GEM)
    out = tmp_path / "bench"
    args = (
        "bench --model tiny --device cpu --batch 2 --concepts 1 10 100 --sizes --batches --repeats 2".split()
    )
    assert main([*args, "--ref-dir", str(ref), "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    rounds = {t["name"]: len(t["rounds_ms"]) for t in report["timings"]}
    assert rounds["gem_torch K=100 (re-encodes prompts)"] == rounds["gem_torch visual tower alone"] == 2
    assert rounds["mmfinercam dense Finer-CAM K=100 (beside gem_torch)"] == 2
    assert (
        rounds["grad-cam FinerCAM on CLIP, 10 maps"]
        == rounds["mmfinercam dense Finer-CAM K=10 (beside grad-cam)"]
    )
    for name in (
        "dense K=100 throughput / gem_torch K=100 (target >= 5)",
        "dense K=100 time / gem_torch's visual tower alone",
        "dense K=10 throughput / grad-cam FinerCAM (target >= 15)",
    ):
        lo, hi = report["ratio_ranges"][name]
        assert 0 < lo <= report["ratios"][name] <= hi


def test_a_broken_reference_is_reported_and_the_rest_measured(tmp_path, capsys):
    ref = tmp_path / "ref"
    (ref / "gem").mkdir(parents=True)
    (ref / "gem" / "__init__.py").write_text("raise ImportError('no GEMWrapper here')\n")
    out = tmp_path / "bench"
    args = (
        "bench --model tiny --device cpu --batch 1 --concepts 1 10 100 --sizes --batches --repeats 1".split()
    )
    assert main([*args, "--ref-dir", str(ref), "--out", str(out)]) == 0
    assert "gem_torch: failed" in capsys.readouterr().out
    report = json.loads((out / "bench.json").read_text())
    assert not any(t["name"].startswith("gem_torch") for t in report["timings"])
    assert "dense K=10 throughput / grad-cam FinerCAM (target >= 15)" in report["ratios"]
