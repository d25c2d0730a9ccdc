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
