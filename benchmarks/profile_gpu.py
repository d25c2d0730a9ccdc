"""Where the dense path's time goes on a GPU, stage by stage, against bare ``encode_image``.

    python benchmarks/profile_gpu.py [--model ViT-B-16] [--dtype bf16] [--batches 4 64] [--table]

Times (median of 20 interleaved rounds, synchronized) the floor, our tower without GEM
("raw"), with GEM (with the fused self-self attention kernel, and without it), and the whole
``finer_cam`` call at K=100, each also with PyTorch's residual adds and norms instead of the
fused ones (and PyTorch's QuickGELU, for a tower that has it), so a gap can be put on the stage
that makes it. "fused at any size" runs the elementwise kernels below their size floor
(``KernelSwitch.min_elements``): the pair with and without them places that floor. With
``--table``, the profiler's top kernels for the whole call.
"""

import argparse
import statistics

import open_clip
import torch

import mmfinercam as mf
from mmfinercam._device import parse_dtype
from mmfinercam.apps.bench import without
from mmfinercam.apps.bench_peers import prompts
from mmfinercam.apps.timing import measure_rounds, synchronize
from mmfinercam.kernels import fused_add_norm, fused_attention, fused_quick_gelu, is_quick_gelu


def at_any_size(call):
    """``call`` with the elementwise fused kernels run whatever the tensors' size."""

    def run():
        with fused_add_norm(True, min_elements=0), fused_quick_gelu(True, min_elements=0):
            return call()

    return run


@torch.inference_mode()
def stage_times(model, loc, x, text) -> dict[str, float]:
    stages = {
        "encode_image": lambda: model.encode_image(x),
        "tower raw": lambda: loc.image_tokens(x, method="raw"),
        "tower gem": lambda: loc.image_tokens(x, method="gem"),
        "tower gem, PyTorch self-self": without(fused_attention, lambda: loc.image_tokens(x)),
        "finer_cam K=100": lambda: loc.finer_cam(x, text[0], text[1:]),
    }
    for name in ("tower raw", "finer_cam K=100"):
        stages[f"{name}, fused at any size"] = at_any_size(stages[name])
    for name in ("tower raw", "tower gem", "finer_cam K=100"):
        stages[f"{name}, PyTorch add+norm"] = without(fused_add_norm, stages[name])
    if any(is_quick_gelu(m) for m in model.modules()):
        stages["finer_cam K=100, PyTorch QuickGELU"] = without(fused_quick_gelu, stages["finer_cam K=100"])
    got = measure_rounds(stages, x.device, repeats=20, warmup=3)
    return {name: statistics.median(samples) * 1000 for name, (samples, _) in got.items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 64])
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    dtype = parse_dtype(args.dtype)
    torch.manual_seed(0)
    model = open_clip.create_model(args.model, pretrained=None).to(args.device, dtype).eval()
    loc = mf.Localizer.from_open_clip(model, open_clip.get_tokenizer(args.model), name=args.model)
    text = prompts(100)
    loc.encode_text(text, loc.templates)
    for b in args.batches:
        x = torch.randn(b, 3, 224, 224, device=args.device, dtype=dtype)
        times = stage_times(model, loc, x, text)
        floor = times["encode_image"]
        summary = ", ".join(f"{k} {v:.2f} ms ({floor / v:.2f}x)" for k, v in times.items())
        print(f"b={b} {args.model} {args.dtype}: {summary}")
        if args.table:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    loc.finer_cam(x, text[0], text[1:])
                synchronize(x.device)
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))


if __name__ == "__main__":
    main()
