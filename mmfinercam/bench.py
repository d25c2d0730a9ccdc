"""``mmfinercam bench``: speed of the dense path against its peers, measured in one run.

Every figure is a median wall time over ``repeats`` runs after a warm-up, on the same model
weights and the same inputs. Peers:

* ``encode_image``: bare open_clip image encoding, the floor (one forward pass);
* ``gem_torch``: the reference GEM (gem_torch 1.0.1 on open_clip 2.23, kept running in a
  subprocess with ``PYTHONPATH=<ref dir>`` that makes one call whenever asked; install with
  ``pip install --no-deps --target .gem-ref open_clip_torch==2.23.0 gem_torch==1.0.1``). It
  re-encodes the prompts on every call;
* ``grad-cam``: pytorch-grad-cam's ``FinerCAM`` on CLIP through a hand-written wrapper, one
  backward pass per concept map.

Ratios are what to read: absolute times depend on the machine. The calls a ratio compares are
measured **interleaved**, round by round (the floor, then each of ours, in an order that rotates
every round), so that a machine's drift between minutes (a 2-core CPU's speed moves by 10 %)
falls on both sides alike. A ratio is the median over rounds of each round's own ratio, with
its range over the rounds.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

REF_WORKER = Path(__file__).resolve().parents[1] / "benchmarks" / "gem_torch_worker.py"


@dataclass
class Timing:
    name: str
    seconds: float  #: median per call
    images: int  #: images per call
    peak_mb: float | None = None
    extra: dict = field(default_factory=dict)
    samples: list[float] = field(default_factory=list)  #: seconds of each round, in order
    group: int | None = None  #: timings of one group were measured in the same rounds

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def synchronize(device: torch.device) -> None:
    """Wait for a CUDA device's queued work (timings on a GPU are otherwise of the launches)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_rounds(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int = 3, warmup: int = 1
) -> dict[str, tuple[list[float], float | None]]:
    """Seconds of every call of each function, interleaved: ``repeats`` rounds, each calling
    every function once, starting one further along each round. On CUDA, also each function's
    peak memory in MB (reset before each of its calls)."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, float] = {name: 0.0 for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            fns[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
            if device.type == "cuda":
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device) / 2**20)
    return {name: (times[name], peaks[name] if device.type == "cuda" else None) for name in names}


def paired_ratio(numerator: Timing, denominator: Timing) -> tuple[float, float, float]:
    """Median and range over rounds of ``numerator / denominator`` time, round by round: both
    must have been measured in the same rounds."""
    if numerator.group is None or numerator.group != denominator.group:
        raise ValueError(f"{numerator.name!r} and {denominator.name!r} were not measured in the same rounds")
    pairs = [a / b for a, b in zip(numerator.samples, denominator.samples)]
    return statistics.median(pairs), min(pairs), max(pairs)


Switch = Callable[[bool], AbstractContextManager[None]]


def _fused_kernels(model: torch.nn.Module, dtype: torch.dtype) -> list[tuple[str, str, Switch]]:
    """The fused kernels that run for this tower in ``dtype`` on a GPU: the label of the call
    made without each, the name of its speed-up and its switch. The self-self attention kernel
    runs in half precision only, QuickGELU's for towers that have it."""
    from mmfinercam import add_norm, quick_gelu
    from mmfinercam.gem import fused_attention

    found = [("without the fused add and norm", "fused add and norm speed-up", add_norm.fused)]
    if dtype in (torch.float16, torch.bfloat16):
        found.append(("GEM without the fused kernel", "fused self-self kernel speed-up", fused_attention))
    if any(quick_gelu.is_quick_gelu(m) for m in model.modules()):
        found.append(("without the fused QuickGELU", "fused QuickGELU speed-up", quick_gelu.fused))
    return found


def without(switch: Switch, call: Callable[[], object]) -> Callable[[], object]:
    """``call`` with one fused kernel switched off, to time against it."""

    def run() -> object:
        with switch(False):
            return call()

    return run


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def prompts(k: int) -> list[str]:
    return [f"a photo of a bird with trait number {i}." for i in range(k)]


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
    gradcam_concepts: int = 10,
    ref_dir: str | Path = ".gem-ref",
    compile: str | None = None,
    compile_mode: str | None = None,
    model=None,
    tokenizer=None,
    model_config: dict | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Measure everything; returns a JSON-ready dict of timings and ratios."""
    import open_clip

    import mmfinercam as mf
    from mmfinercam import kernels

    dev = mf.backends.resolve_device(device)
    torch.manual_seed(0)
    if model is None:
        model = open_clip.create_model(model_name, pretrained=None)
        tokenizer = open_clip.get_tokenizer(model_name)
    tdtype = mf.backends.parse_dtype(dtype) or torch.float32
    model = model.to(dev, tdtype).eval()
    fused_kernels = _fused_kernels(model, tdtype)
    loc = mf.Localizer.from_open_clip(model, tokenizer, name=model_name)
    encode_image = model.encode_image
    if compile:  # both sides compiled alike: the floor and our tower (``compile`` is the backend)
        # one specialized graph per input shape (each size measured is its own stream of images)
        options = dict(backend=compile, mode=compile_mode, dynamic=False)
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

    def dense(xs: torch.Tensor, k: int = 100, **options) -> Callable[[], object]:
        text = prompts(k)
        loc.encode_text(text, loc.templates)  # cached, like a stream of images
        return lambda: loc.finer_cam(xs, text[0], text[1:] or None, **options)

    x = images(batch, size)
    with torch.inference_mode():
        named = "mmfinercam dense Finer-CAM K="
        headline = [("open_clip encode_image (floor)", lambda: encode_image(x), batch, {})]
        headline += [(f"{named}{k}", dense(x, k), batch, {"concepts": k}) for k in concepts]
        if 100 in concepts:  # the same call without GEM: what GEM's self-self attention costs
            raw = dense(x, method="raw")
            headline.append((f"{named}100, raw tokens (no GEM)", raw, batch, {"concepts": 100}))
        if 100 in concepts and kernels.available(x):  # each fused kernel turned off in turn
            call = dense(x)
            for label, _, switch in fused_kernels:
                headline.append((f"{named}100, {label}", without(switch, call), batch, {}))
        floor = measure_group(*headline)[0]
        for s in sizes:
            xs = images(1, s)
            # open_clip's encode_image cannot take other sizes (no position resampling): the
            # floor here is our plain forward pass (last-layer tokens, positions resampled)
            plain = lambda xs=xs: loc.image_tokens(xs, method="raw")  # noqa: E731
            measure_group(
                (f"plain forward (raw tokens) {s}px b=1", plain, 1, {"size": s}),
                (f"mmfinercam dense Finer-CAM K=100 {s}px b=1", dense(xs), 1, {"size": s}),
            )
        for b in batches:
            xb = images(b, size)
            measure_group(
                (f"open_clip encode_image b={b}", lambda xb=xb: encode_image(xb), b, {"batch": b}),
                (f"mmfinercam dense Finer-CAM K=100 b={b}", dense(xb), b, {"batch": b}),
            )

    gem_ref = gc = None
    if peers:  # each peer interleaved with the call of ours it is compared with
        spec = {"model": model_name, "config": model_config}
        ours_k = "mmfinercam dense Finer-CAM K={} (beside {})"
        with _gem_torch(model, spec, x, ref_dir, log) as reference:
            if reference is not None:
                gem_ref = _peer(
                    "gem_torch",
                    lambda: measure_group(
                        ("gem_torch K=100 (re-encodes prompts)", lambda: reference("full"), batch, {}),
                        ("gem_torch visual tower alone", lambda: reference("visual"), batch, {}),
                        (ours_k.format(100, "gem_torch"), dense(x), batch, {"concepts": 100}),
                    ),
                    log,
                )
        maps = _gradcam_finer(model, loc, x, gradcam_concepts, log)
        if maps is not None:
            gc = _peer(
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
        reference, tower, beside = gem_ref
        ratios["dense K=100 throughput / gem_torch K=100 (target >= 5)"] = paired_ratio(reference, beside)
        ratios["dense K=100 time / gem_torch's visual tower alone"] = paired_ratio(beside, tower)
    for s in sizes:  # against our own plain pass: open_clip's cannot take other sizes
        ours = by.get(f"mmfinercam dense Finer-CAM K=100 {s}px b=1")
        plain = by.get(f"plain forward (raw tokens) {s}px b=1")
        if ours and plain:
            ratios[f"{s}px: dense K=100 time / plain forward"] = paired_ratio(ours, plain)
    for b in batches:
        ours = by.get(f"mmfinercam dense Finer-CAM K=100 b={b}")
        bare = by.get(f"open_clip encode_image b={b}")
        if ours and bare:
            ratios[f"b={b}: dense K=100 throughput / bare encode_image"] = inverse(paired_ratio(ours, bare))
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


def _peer(name: str, measure_peer: Callable[[], list[Timing]], log) -> list[Timing] | None:
    """A peer that cannot run in this setting (a precision it does not support, say) is reported
    and left out; our own figures stand without it."""
    try:
        return measure_peer()
    except Exception as err:  # noqa: BLE001 - any failure of a third-party peer
        log(f"{name}: failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
        return None


@contextmanager
def _gem_torch(model, spec: dict, x, ref_dir, log) -> Iterator[Callable[[str], None] | None]:
    """The reference GEM in its own process and environment, same weights and inputs, 100
    prompts: yields ``call(kind)`` that runs one ``"full"`` or ``"visual"`` call and waits for
    it, or None where it cannot run."""
    ref_dir = Path(ref_dir)
    if not (ref_dir / "gem").is_dir() or not REF_WORKER.is_file():
        log(f"gem_torch: skipped (no reference in {ref_dir}; see the module docstring)")
        yield None
        return
    if x.dtype != torch.float32:
        log("gem_torch: measured in fp32 only (its code assumes fp32)")
        yield None
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.save(model.state_dict(), tmp / "weights.pt")
        torch.save(x.cpu(), tmp / "images.pt")
        (tmp / "prompts.json").write_text(json.dumps({"prompts": prompts(100), **spec}))
        path = [str(ref_dir.resolve()), os.environ.get("PYTHONPATH", "")]  # the reference comes first
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p))
        proc = subprocess.Popen(
            [sys.executable, str(REF_WORKER), str(tmp), str(x.device)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

        def answer(expected: str) -> None:
            """Wait for the worker's word (anything else it prints is passed over)."""
            for line in proc.stdout:
                if line.strip() == expected:
                    return
            proc.wait()
            last = (proc.stderr.read().strip().splitlines() or ["no message"])[-1]
            raise RuntimeError(f"the worker ended: {last}")

        def call(kind: str) -> None:
            proc.stdin.write(kind + "\n")
            proc.stdin.flush()
            answer("done")

        try:
            answer("ready")
        except RuntimeError as err:
            log(f"gem_torch: failed ({err})")
            yield None
            return
        try:
            yield call
        finally:
            proc.stdin.close()
            proc.wait()


def _gradcam_finer(model, loc, x, k, log) -> Callable[[], None] | None:
    """pytorch-grad-cam FinerCAM on CLIP via a wrapper, one CAM call per concept: all ``k``
    maps of the batch in one call."""
    try:
        from pytorch_grad_cam import FinerCAM
    except ImportError:
        log("grad-cam: skipped (pip install grad-cam)")
        return None
    text = loc.encode_text(prompts(k), loc.templates).to(x.dtype)

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, images):
            z = F.normalize(self.model.encode_image(images), dim=-1)
            return self.model.logit_scale.exp() * z @ text.T

    grid = x.shape[-1] // loc.patch_size[0]

    def reshape(t):
        t = t[:, 1:] if t.shape[1] == grid * grid + 1 else t
        return t.reshape(t.shape[0], grid, grid, t.shape[-1]).permute(0, 3, 1, 2)

    cam = FinerCAM(Wrapper(), [model.visual.transformer.resblocks[-1].ln_1], reshape_transform=reshape)

    def all_maps():
        for target in range(k):
            cam(x, target_idx=target)

    return all_maps


def to_markdown(report: dict, command: str | None = None) -> str:
    """A report as RESULTS.md tables: the command, the machine, every timing and every ratio."""
    command = command or report.get("command", "mmfinercam bench")
    compiled = f", torch.compile {report['compile']}" if report.get("compile") else ""
    if report.get("compile_mode"):
        compiled += f" mode={report['compile_mode']}"
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {report['machine']} ({report['device']}, {report['dtype']}{compiled}, "
        f"torch {report['torch']}); "
        f"model {report['model']} (random weights), batch {report['batch']}, {report['size']} px, "
        f"median of {report['repeats']} interleaved rounds.",
        "",
        "| measurement | ms / call | images/s | peak MB |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {t['name']} | {t['ms']:.1f} | {t['images_per_s']:.2f} | "
        + (f"{t['peak_mb']:.0f} |" if t.get("peak_mb") else "– |")
        for t in report["timings"]
    ]
    ranges = report.get("ratio_ranges", {})
    lines += ["", "| ratio | value | range over rounds |", "|---|---|---|"]
    lines += [f"| {k} | {v:.2f} | {_range(ranges.get(k))} |" for k, v in report["ratios"].items()]
    return "\n".join(lines) + "\n"


def _range(bounds: list[float] | None) -> str:
    return f"{bounds[0]:.2f}–{bounds[1]:.2f}" if bounds else "–"


def write_markdown(report: dict, path: str | Path, command: str | None = None) -> None:
    Path(path).write_text(to_markdown(report, command))
