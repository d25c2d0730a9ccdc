"""``mmfinercam bench``: speed of the dense path against bare ``encode_image`` and its peers.

Every figure is a median wall time over ``repeats`` interleaved rounds after a warm-up, on the
same model weights and the same inputs (:mod:`.timing`). The floor is bare open_clip
``encode_image`` (one forward pass); the peers are gem_torch and pytorch-grad-cam
(:mod:`.bench_peers`).
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from .bench_peers import gem_torch_peer, gradcam_peer, peer, prompts
from .timing import Timing, machine, measure_rounds, paired_ratio

Switch = Callable[[bool], AbstractContextManager[None]]


#: how each fused kernel's call without it and its speed-up are labelled
_FUSION_LABELS = {
    "add_norm": ("without the fused add and norm", "fused add and norm speed-up"),
    "self_self_attention": ("GEM without the fused kernel", "fused self-self kernel speed-up"),
    "quick_gelu": ("without the fused QuickGELU", "fused QuickGELU speed-up"),
}


def _fused_kernels(model: torch.nn.Module, dtype: torch.dtype) -> list[tuple[str, str, Switch]]:
    """The fused kernels that run for this tower in ``dtype`` on a GPU: the label of the call
    made without each, the name of its speed-up and its switch."""
    from ..explain.tower import fusion_switches

    return [(*_FUSION_LABELS[name], switch) for name, switch in fusion_switches(model, dtype).items()]


def without(switch: Switch, call: Callable[[], object]) -> Callable[[], object]:
    """A call with one fused kernel switched off, to time against it.

    Args:
        switch: the kernel's switch.
        call: the call.

    Returns:
        The call run with the kernel off.
    """

    def run() -> object:
        with switch(False):
            return call()

    return run


def run(
    model_name: str = "ViT-B-16",
    *,
    device: str | None = None,
    dtype: str = "fp32",
    batch: int = 4,
    size: int = 224,
    concepts: tuple[int, ...] = (1, 10, 100, 1000),
    sizes: tuple[int, ...] = (224, 448, 896),
    batches: tuple[int, ...] = (1, 4, 16),
    repeats: int = 3,
    peers: bool = True,
    methods: tuple[str, ...] | None = None,
    tiles: bool = True,
    gradcam_concepts: int = 10,
    ref_dir: str | Path = ".gem-ref",
    compile: str | None = None,
    compile_mode: str | None = None,
    model: Any = None,
    tokenizer: Any = None,
    model_config: dict | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Measure the dense path against bare ``encode_image`` and the peers, in one run.

    Args:
        model_name: an open_clip architecture (random weights), or the name of ``model``.
        device: where to run (default: CUDA when there).
        dtype: ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        batch: images a call in the headline group.
        size: their side in pixels.
        concepts: prompt counts K of the headline group.
        sizes: image sides of the size group (batch 1).
        batches: batch sizes of the batch group.
        repeats: interleaved rounds.
        peers: also time gem_torch and grad-cam.
        methods: the dense methods (and LeGrad) timed against GEM and bare ``encode_image``
            (default: every registered dense method and LeGrad; empty: none).
        tiles: also time a tiled image against its windows as one batch.
        gradcam_concepts: maps a grad-cam call makes.
        ref_dir: where gem_torch and open_clip 2.23 are installed.
        compile: a ``torch.compile`` backend for the floor and our tower alike, or None.
        compile_mode: its mode.
        model: a built open_clip model to time instead of ``model_name``'s.
        tokenizer: its tokenizer.
        model_config: its config, for gem_torch's copy.
        log: where progress lines go.

    Returns:
        A JSON-ready report: the machine, every timing and every paired ratio with its range.
    """
    import open_clip

    import mmfinercam as mf

    from .._device import parse_dtype, resolve_device
    from ..explain.tower import fusion_available

    dev = resolve_device(device)
    torch.manual_seed(0)
    if model is None:
        model = open_clip.create_model(model_name, pretrained=None)
        tokenizer = open_clip.get_tokenizer(model_name)
    tdtype = parse_dtype(dtype) or torch.float32
    model = model.to(dev, tdtype).eval()
    fused_kernels = _fused_kernels(model, tdtype)
    loc = mf.Localizer.from_open_clip(model, tokenizer, name=model_name)
    encode_image = model.encode_image
    if compile:  # both sides compiled alike: the floor and our tower (``compile`` is the backend)
        # one specialized graph per input shape (each size measured is its own stream of images)
        options: dict[str, Any] = dict(backend=compile, mode=compile_mode, dynamic=False)
        encode_image = torch.compile(model.encode_image, **options)
        loc.compile(**options)
    gen = torch.Generator().manual_seed(0)
    results: list[Timing] = []

    def images(b: int, s: int) -> torch.Tensor:
        return torch.randn(b, 3, s, s, generator=gen).to(dev, tdtype)

    def measure_group(
        *calls: tuple[str, Callable[[], object], int, dict], rounds: int | None = None
    ) -> list[Timing]:
        """Calls to be compared, measured in the same interleaved rounds."""
        # a GPU's first calls pick kernels and raise its clocks; CUDA graphs record late
        warmup = 3 if compile or dev.type == "cuda" else 1
        got = measure_rounds({name: fn for name, fn, _, _ in calls}, dev, rounds or repeats, warmup)
        group = len(results)
        timings = []
        for name, _, b, extra in calls:
            samples, peak = got[name]
            t = Timing(name, statistics.median(samples), b, peak, extra, samples, group)
            log(
                f"{name:48s} {t.seconds * 1000:9.1f} ms  {t.images_per_s:8.2f} img/s"
                + (f"  {peak:.0f} MB" if peak else "")
            )
            timings.append(t)
        results.extend(timings)
        return timings

    def dense(xs: torch.Tensor, k: int = 100, **options: Any) -> Callable[[], object]:
        text = prompts(k)
        loc.encode_text(text, loc.templates)  # cached, like a stream of images
        return lambda: loc.finer_cam(xs, text[0], text[1:] or None, **options)

    x = images(batch, size)
    with torch.inference_mode():
        named = "mmfinercam dense Finer-CAM K="
        headline: list[tuple[str, Callable[[], object], int, dict]] = [
            ("open_clip encode_image (floor)", lambda: encode_image(x), batch, {})
        ]
        headline += [(f"{named}{k}", dense(x, k), batch, {"concepts": k}) for k in concepts]
        if 100 in concepts:  # the same call without GEM: what GEM's self-self attention costs
            headline.append(
                (f"{named}100, raw tokens (no GEM)", dense(x, method="raw"), batch, {"concepts": 100})
            )
        if 100 in concepts and fusion_available(x):  # each fused kernel turned off in turn
            call = dense(x)
            for label, _, switch in fused_kernels:
                headline.append((f"{named}100, {label}", without(switch, call), batch, {}))
        floor = measure_group(*headline)[0]
        for s in sizes:
            xs = images(1, s)
            # open_clip's encode_image cannot take other sizes (no position resampling): the
            # floor here is our plain forward pass (last-layer tokens, positions resampled)
            measure_group(
                (
                    f"plain forward (raw tokens) {s}px b=1",
                    functools.partial(loc.image_tokens, xs, method="raw"),
                    1,
                    {"size": s},
                ),
                (f"mmfinercam dense Finer-CAM K=100 {s}px b=1", dense(xs), 1, {"size": s}),
            )
        for b in batches:
            xb = images(b, size)
            measure_group(
                (f"open_clip encode_image b={b}", functools.partial(encode_image, xb), b, {"batch": b}),
                (f"mmfinercam dense Finer-CAM K=100 b={b}", dense(xb), b, {"batch": b}),
            )
        if methods is None:
            from ..options import dense_methods

            methods = (*(m for m in dense_methods() if m != "gem"), "legrad")
        if methods:  # each method beside GEM and the floor, K=100 (LeGrad: 3 contrasts)
            group: list[tuple[str, Callable[[], object], int, dict]] = [
                ("open_clip encode_image (methods)", lambda: encode_image(x), batch, {})
            ]
            group.append(("method gem, K=100", dense(x), batch, {"method": "gem"}))
            for m in methods:
                k = 4 if m == "legrad" else 100
                group.append((f"method {m}, K={k}", dense(x, k, method=m), batch, {"method": m}))
            measure_group(*group)
        if tiles:  # a 2×3-window image tiled, against its windows as one batch
            big = (torch.rand(2 * size, 3 * size, 3, generator=gen) * 255).to(torch.uint8).numpy()
            windows = loc.prepare(big, short_side=2 * size, tiles=True)[0][0].tiled
            assert windows is not None
            cfg = loc.backend.image_config
            xw = torch.cat([w for _, w in windows.batches(64, cfg.mean, cfg.std)]).to(dev, tdtype)
            n = len(xw)
            measure_group(
                (f"open_clip encode_image of the {n} windows", lambda: encode_image(xw), n, {}),
                (f"dense Finer-CAM K=100 of the {n} windows as a batch", dense(xw), n, {}),
                (
                    f"dense Finer-CAM K=100 tiled, {2 * size}x{3 * size} px",
                    dense(big, tiles=True, batch_size=n, short_side=2 * size),  # type: ignore[arg-type]
                    n,
                    {},
                ),
                (
                    f"dense Finer-CAM K=100 tiled, raw tokens, {2 * size}x{3 * size} px",
                    dense(big, tiles=True, batch_size=n, short_side=2 * size, method="raw"),  # type: ignore[arg-type]
                    n,
                    {},
                ),
            )

    gem_ref: list[Timing] | None = None
    gc: list[Timing] | None = None
    if peers:  # each peer interleaved with the call of ours it is compared with
        spec = {"model": model_name, "config": model_config}
        ours_k = "mmfinercam dense Finer-CAM K={} (beside {})"
        with gem_torch_peer(model, spec, x, ref_dir, log) as reference:
            if reference is not None:
                gem_ref = peer(
                    "gem_torch",
                    lambda: measure_group(
                        ("gem_torch K=100 (re-encodes prompts)", lambda: reference("full"), batch, {}),
                        ("gem_torch visual tower alone", lambda: reference("visual"), batch, {}),
                        (ours_k.format(100, "gem_torch"), dense(x), batch, {"concepts": 100}),
                    ),
                    log,
                )
        maps = gradcam_peer(model, loc, x, gradcam_concepts, log)
        if maps is not None:
            gc = peer(
                "grad-cam",
                lambda: measure_group(
                    (f"grad-cam FinerCAM on CLIP, {gradcam_concepts} maps", maps, batch, {}),
                    (ours_k.format(gradcam_concepts, "grad-cam"), dense(x, gradcam_concepts), batch, {}),
                    rounds=max(1, repeats // 2),
                ),
                log,
            )

    by = {t.name: t for t in results}
    k1 = by.get("mmfinercam dense Finer-CAM K=1")
    k100 = by.get("mmfinercam dense Finer-CAM K=100")
    ratios: dict[str, tuple[float, float, float]] = {}

    def inverse(r: tuple[float, float, float]) -> tuple[float, float, float]:
        return 1 / r[0], 1 / r[2], 1 / r[1]

    if k1 and k100:
        against_floor = paired_ratio(k100, floor)
        ratios["dense K=100 time / K=1 time (target <= 1.2)"] = paired_ratio(k100, k1)
        ratios["dense K=100 time / bare encode_image (target <= 1.25)"] = against_floor
        ratios["dense K=100 throughput / bare encode_image (GPU bf16 target >= 0.8)"] = inverse(against_floor)
    k1000 = by.get("mmfinercam dense Finer-CAM K=1000")
    if k1 and k1000:
        ratios["dense K=1000 time / K=1 time"] = paired_ratio(k1000, k1)
    for label, speed_up, _ in fused_kernels:
        unfused = by.get(f"mmfinercam dense Finer-CAM K=100, {label}")
        if unfused and k100:
            ratios[f"dense K=100: {speed_up}"] = paired_ratio(unfused, k100)
    raw = by.get("mmfinercam dense Finer-CAM K=100, raw tokens (no GEM)")
    if raw:
        ratios["dense K=100 without GEM throughput / bare encode_image"] = inverse(paired_ratio(raw, floor))
    if gem_ref is not None:  # gem_torch, its visual tower, ours beside them
        full, visual, beside = gem_ref
        ratios["dense K=100 throughput / gem_torch K=100 (target >= 5)"] = paired_ratio(full, beside)
        ratios["dense K=100 time / gem_torch's visual tower alone"] = paired_ratio(beside, visual)
    for s in sizes:  # against our own plain pass: open_clip's cannot take other sizes
        ours = by.get(f"mmfinercam dense Finer-CAM K=100 {s}px b=1")
        forward = by.get(f"plain forward (raw tokens) {s}px b=1")
        if ours and forward:
            ratios[f"{s}px: dense K=100 time / plain forward"] = paired_ratio(ours, forward)
    for b in batches:
        ours = by.get(f"mmfinercam dense Finer-CAM K=100 b={b}")
        bare = by.get(f"open_clip encode_image b={b}")
        if ours and bare:
            ratios[f"b={b}: dense K=100 throughput / bare encode_image"] = inverse(paired_ratio(ours, bare))
    gem_call = by.get("method gem, K=100")
    floor_m = by.get("open_clip encode_image (methods)")
    for t in results:
        if t.name.startswith("method ") and gem_call and floor_m and t is not gem_call:
            m = t.extra["method"]
            ratios[f"{m}: throughput / GEM"] = paired_ratio(gem_call, t)
            ratios[f"{m}: throughput / bare encode_image"] = paired_ratio(floor_m, t)
    tiled = [t for t in results if "tiled" in t.name or "windows" in t.name]
    if len(tiled) == 4:
        bare_w, batch_w, tiled_call, tiled_raw = tiled
        ratios["tiled time / its windows as one batch (target <= 1.2)"] = paired_ratio(tiled_call, batch_w)
        ratios["tiled time / bare encode_image of its windows"] = paired_ratio(tiled_call, bare_w)
        ratios["tiled raw tokens time / bare encode_image of its windows (target <= 1.2)"] = paired_ratio(
            tiled_raw, bare_w
        )
    if gc is not None:  # grad-cam, ours beside it
        name = f"dense K={gradcam_concepts} throughput / grad-cam FinerCAM (target >= 15)"
        ratios[name] = paired_ratio(gc[0], gc[1])
    for name, (value, lo, hi) in ratios.items():
        log(f"{name}: {value:.2f}" + (f" (rounds: {lo:.2f}-{hi:.2f})" if hi > lo else ""))
    return {
        "machine": machine(),
        "device": str(dev),
        "dtype": dtype,
        "compile": compile,
        "compile_mode": compile_mode,
        "model": model_name,
        "batch": batch,
        "size": size,
        "repeats": repeats,
        "torch": torch.__version__,
        "timings": [
            {
                "name": t.name,
                "ms": round(t.seconds * 1000, 2),
                "images_per_s": round(t.images_per_s, 3),
                "peak_mb": t.peak_mb,
                "rounds_ms": [round(v * 1000, 2) for v in t.samples],
                **t.extra,
            }
            for t in results
        ],
        "ratios": {k: round(v[0], 3) for k, v in ratios.items()},
        #: each ratio's range over the rounds
        "ratio_ranges": {k: [round(v[1], 3), round(v[2], 3)] for k, v in ratios.items()},
    }
