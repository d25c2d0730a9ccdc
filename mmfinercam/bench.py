"""``mmfinercam bench``: speed of the dense path against its peers, measured in one run.

Every figure is a median wall time over ``repeats`` runs after a warm-up, on the same model
weights and the same inputs. Peers:

* ``encode_image``: bare open_clip image encoding, the floor (one forward pass);
* ``gem_torch``: the reference GEM (gem_torch 1.0.1 on open_clip 2.23, run in a subprocess with
  ``PYTHONPATH=<ref dir>``; install with ``pip install --no-deps --target .gem-ref
  open_clip_torch==2.23.0 gem_torch==1.0.1``). It re-encodes the prompts on every call;
* ``grad-cam``: pytorch-grad-cam's ``FinerCAM`` on CLIP through a hand-written wrapper, one
  backward pass per concept map.

Ratios are what to read: absolute times depend on the machine.
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
from collections.abc import Callable
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

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def synchronize(device: torch.device) -> None:
    """Wait for a CUDA device's queued work (timings on a GPU are otherwise of the launches)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    fn: Callable[[], object], device: torch.device, repeats: int = 3, warmup: int = 1
) -> tuple[float, float | None]:
    """Median seconds of ``fn()`` and, on CUDA, its peak memory in MB."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return statistics.median(times), peak


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
    from mmfinercam.gem import fused_attention

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    if model is None:
        model = open_clip.create_model(model_name, pretrained=None)
        tokenizer = open_clip.get_tokenizer(model_name)
    tdtype = mf.backends.parse_dtype(dtype) or torch.float32
    model = model.to(dev, tdtype).eval()
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

    def add(name: str, fn, b: int, **extra) -> Timing:
        # a GPU's first calls pick kernels and raise its clocks; CUDA graphs record late
        sec, peak = measure(fn, dev, repeats, warmup=3 if compile or dev.type == "cuda" else 1)
        t = Timing(name, sec, b, peak, extra)
        results.append(t)
        log(
            f"{name:48s} {sec * 1000:9.1f} ms  {t.images_per_s:8.2f} img/s"
            + (f"  {peak:.0f} MB" if peak else "")
        )
        return t

    x = images(batch, size)
    with torch.inference_mode():
        floor = add("open_clip encode_image (floor)", lambda: encode_image(x), batch)
        for k in concepts:
            text = prompts(k)
            loc.encode_text(text[:1] + text[1:], loc.templates)  # cached, like a stream of images
            add(
                f"mmfinercam dense Finer-CAM K={k}",
                lambda text=text: loc.finer_cam(x, text[0], text[1:] or None),
                batch,
                concepts=k,
            )
        if 100 in concepts:  # the same call without GEM: what GEM's self-self attention costs
            text = prompts(100)
            add(
                "mmfinercam dense Finer-CAM K=100, raw tokens (no GEM)",
                lambda: loc.finer_cam(x, text[0], text[1:], method="raw"),
                batch,
                concepts=100,
            )
        if 100 in concepts and kernels.available(x) and x.dtype in (torch.float16, torch.bfloat16):
            text = prompts(100)

            def pytorch_self_self():
                with fused_attention(False):
                    return loc.finer_cam(x, text[0], text[1:])

            add("mmfinercam dense Finer-CAM K=100, GEM without the fused kernel", pytorch_self_self, batch)
        for s in sizes:
            xs = images(1, s)
            # open_clip's encode_image cannot take other sizes (no position resampling): the
            # floor here is our plain forward pass (last-layer tokens, positions resampled)
            add(
                f"plain forward (raw tokens) {s}px b=1",
                lambda xs=xs: loc.image_tokens(xs, method="raw"),
                1,
                size=s,
            )
            add(
                f"mmfinercam dense Finer-CAM K=100 {s}px b=1",
                lambda xs=xs: loc.finer_cam(xs, prompts(100)[0], prompts(100)[1:]),
                1,
                size=s,
            )
        for b in batches:
            xb = images(b, size)
            add(f"open_clip encode_image b={b}", lambda xb=xb: encode_image(xb), b, batch=b)
            add(
                f"mmfinercam dense Finer-CAM K=100 b={b}",
                lambda xb=xb: loc.finer_cam(xb, prompts(100)[0], prompts(100)[1:]),
                b,
                batch=b,
            )

    gem_ref = None
    if peers:
        spec = {"model": model_name, "config": model_config}
        gem_ref = _peer("gem_torch", lambda: _gem_torch(model, spec, x, ref_dir, repeats, log), log)
        gc = _peer(
            "grad-cam", lambda: _gradcam_finer(model, loc, x, gradcam_concepts, dev, repeats, log), log
        )
        results += [t for t in (gem_ref, gc) if t is not None]

    by = {t.name: t for t in results}
    k1 = by.get("mmfinercam dense Finer-CAM K=1")
    k10 = by.get("mmfinercam dense Finer-CAM K=10")
    k100 = by.get("mmfinercam dense Finer-CAM K=100")
    ratios = {}
    if k1 and k100:
        ratios["dense K=100 time / K=1 time (target <= 1.2)"] = k100.seconds / k1.seconds
        ratios["dense K=100 time / bare encode_image (target <= 1.25)"] = k100.seconds / floor.seconds
        ratios["dense K=100 throughput / bare encode_image (GPU bf16 target >= 0.8)"] = (
            floor.seconds / k100.seconds
        )
    unfused = by.get("mmfinercam dense Finer-CAM K=100, GEM without the fused kernel")
    if unfused and k100:
        ratios["dense K=100: fused self-self kernel speed-up"] = unfused.seconds / k100.seconds
    raw = by.get("mmfinercam dense Finer-CAM K=100, raw tokens (no GEM)")
    if raw:
        ratios["dense K=100 without GEM throughput / bare encode_image"] = floor.seconds / raw.seconds
    if gem_ref is not None and k100:
        ratios["dense K=100 throughput / gem_torch K=100 (target >= 5)"] = gem_ref.seconds / k100.seconds
    for b in batches:
        ours = by.get(f"mmfinercam dense Finer-CAM K=100 b={b}")
        bare = by.get(f"open_clip encode_image b={b}")
        if ours and bare:
            ratios[f"b={b}: dense K=100 throughput / bare encode_image"] = bare.seconds / ours.seconds
    gc = by.get(f"grad-cam FinerCAM on CLIP, {gradcam_concepts} maps")
    if gc is not None and k10:
        ratios[f"dense K={gradcam_concepts} throughput / grad-cam FinerCAM (target >= 15)"] = (
            gc.seconds / k10.seconds
        )
    for name, value in ratios.items():
        log(f"{name}: {value:.2f}")
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
                **t.extra,
            }
            for t in results
        ],
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
    }


def _peer(name: str, measure_peer: Callable[[], Timing | None], log) -> Timing | None:
    """A peer that cannot run in this setting (a precision it does not support, say) is reported
    and left out; our own figures stand without it."""
    try:
        return measure_peer()
    except Exception as err:  # noqa: BLE001 - any failure of a third-party peer
        log(f"{name}: failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
        return None


def _gem_torch(model, spec: dict, x, ref_dir, repeats, log) -> Timing | None:
    """The reference GEM in its own environment, same weights and inputs, 100 prompts."""
    ref_dir = Path(ref_dir)
    if not (ref_dir / "gem").is_dir() or not REF_WORKER.is_file():
        log(f"gem_torch: skipped (no reference in {ref_dir}; see the module docstring)")
        return None
    if x.dtype != torch.float32:
        log("gem_torch: measured in fp32 only (its code assumes fp32)")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.save(model.state_dict(), tmp / "weights.pt")
        torch.save(x.cpu(), tmp / "images.pt")
        (tmp / "prompts.json").write_text(json.dumps({"prompts": prompts(100), **spec}))
        path = [str(ref_dir.resolve()), os.environ.get("PYTHONPATH", "")]  # the reference comes first
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p))
        proc = subprocess.run(
            [sys.executable, str(REF_WORKER), str(tmp), str(repeats), str(x.device)],
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            log("gem_torch: failed: " + proc.stderr.strip().splitlines()[-1])
            return None
        data = json.loads(proc.stdout.strip().splitlines()[-1])
    t = Timing(
        "gem_torch K=100 (re-encodes prompts)",
        data["seconds"],
        x.shape[0],
        None,
        {"visual_only_ms": round(data["visual_seconds"] * 1000, 2)},
    )
    log(
        f"{t.name:48s} {t.seconds * 1000:9.1f} ms  {t.images_per_s:8.2f} img/s  (visual tower alone "
        f"{data['visual_seconds'] * 1000:.1f} ms)"
    )
    return t


def _gradcam_finer(model, loc, x, k, device, repeats, log) -> Timing | None:
    """pytorch-grad-cam FinerCAM on CLIP via a wrapper: one CAM call per concept."""
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

    sec, peak = measure(all_maps, device, max(1, repeats // 2))
    t = Timing(f"grad-cam FinerCAM on CLIP, {k} maps", sec, x.shape[0], peak)
    log(f"{t.name:48s} {sec * 1000:9.1f} ms  {t.images_per_s:8.2f} img/s")
    return t


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
        f"median of {report['repeats']}.",
        "",
        "| measurement | ms / call | images/s | peak MB |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {t['name']} | {t['ms']:.1f} | {t['images_per_s']:.2f} | "
        + (f"{t['peak_mb']:.0f} |" if t.get("peak_mb") else "– |")
        for t in report["timings"]
    ]
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in report["ratios"].items()]
    return "\n".join(lines) + "\n"


def write_markdown(report: dict, path: str | Path, command: str | None = None) -> None:
    Path(path).write_text(to_markdown(report, command))
