"""The fused self-self attention kernel on a GPU: error against float64, time against PyTorch.

    python benchmarks/ss_kernel_gpu.py [--batch 256] [--configs]

Checks ``mmfinercam.kernels.attention`` against the PyTorch path of ``mmfinercam.explain.gem``
(run in float64) on fresh random inputs of several shapes, then times one block's self-self attention of
ViT-B/16 (12 heads × 197 tokens × 64) both ways with ``triton.testing.do_bench`` (median).
``--configs`` also times other launch shapes (``blocks=``), to choose the default, and each
launch of a call on its own. ``--against FILE`` times these kernels against another version of
``kernels/attention.py`` (e.g. ``git show HEAD~1:mmfinercam/kernels/attention.py > /tmp/old.py``), the two
interleaved on the same inputs: the A/B to decide a kernel change by.
"""

import argparse
import importlib.util
import itertools
import statistics
import sys
from dataclasses import replace

import torch
import triton

from mmfinercam.explain import gem
from mmfinercam.kernels import attention as kernels


def streams(b, heads, n, d, dtype, device):
    """q, k, v as a fused qkv projection leaves them (views of one buffer)."""
    qkv = torch.randn(b, n, 3, heads, d, device=device).mul(3).to(dtype).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def check(device):
    worst = {}
    shapes = [(4, 12, 197, 64), (2, 16, 785, 64), (3, 4, 50, 72), (2, 6, 257, 32), (1, 12, 1, 64)]
    for (b, h, n, d), dtype, it, per_image in itertools.product(
        shapes, [torch.bfloat16, torch.float16], [1, 2], [True, False]
    ):
        q, k, v = streams(b, h, n, d, dtype, device)
        temp = torch.rand(b, 1, 1, 1, device=device) * 8 + 1 if per_image else 6.5
        ref = gem.self_self_attention(q.double(), k.double(), v.double(),
                                      temp.double() if per_image else temp, it)  # fmt: skip
        with gem.fused_attention(False):
            torch_path = gem.self_self_attention(q, k, v, temp, it)
        out = kernels.self_self_attention_fused(q, k, v, temp, it)
        assert torch.isfinite(out).all(), (b, h, n, d, dtype, it)
        err = ((out.double() - ref).norm() / ref.norm()).item()
        err_torch = ((torch_path.double() - ref).norm() / ref.norm()).item()
        key = f"{str(dtype)[6:]}"
        worst[key] = max(worst.get(key, (0, 0)), (err, err_torch))
        print(f"n={n:4d} d={d} b={b} h={h} {key} it={it} per_image={per_image}: "
              f"fused {err:.2e}, PyTorch path {err_torch:.2e}")  # fmt: skip
    for key, (err, err_torch) in worst.items():
        print(f"worst {key}: fused {err:.2e} against PyTorch path {err_torch:.2e}")


def timing(device, batch, configs):
    q, k, v = streams(batch, 12, 197, 64, torch.bfloat16, device)
    temp = torch.rand(batch, 1, 1, 1, device=device) * 8 + 1

    def run_torch():
        with gem.fused_attention(False):
            gem.self_self_attention(q, k, v, temp)

    def run_fused(blocks=None):
        kernels.self_self_attention_fused(q, k, v, temp, blocks=blocks)

    t_torch = triton.testing.do_bench(run_torch, return_mode="median")
    t_fused = triton.testing.do_bench(run_fused, return_mode="median")
    flop = 2 * 2 * 2 * 3 * batch * 12 * 197 * 197 * 64  # two rounds, three streams, QK and PV
    print(f"b={batch} bf16 one block: PyTorch {t_torch:.3f} ms, fused {t_fused:.3f} ms "
          f"({t_torch / t_fused:.2f}x; fused {flop / t_fused / 1e9:.0f} TFLOP/s)")  # fmt: skip
    if not configs:
        return
    # each launch of a call on its own, and the final round held to 168 registers a thread:
    # 3 blocks a multiprocessor instead of 2, with no spills when compiled for sm_90 at 197
    # tokens (174 registers otherwise; ``mmfinercam.kernels.aot.compile_ahead``); not the default until timed
    launches = ran_launches(kernels, q, k, v, temp)
    final = launches[-1]
    variants = [("unit rows", launches[0]), ("round", launches[1]), ("final round", final)]
    held = replace(final, meta={**final.meta, "maxnreg": 168})
    variants.append(("final round, maxnreg=168", held))
    for label, launch in variants:
        try:
            print(f"  {label}: {triton.testing.do_bench(launch, return_mode='median'):.3f} ms")
        except Exception as err:  # noqa: BLE001 - a variant that does not compile is reported
            print(f"  {label}: {type(err).__name__}: {str(err)[:120]}")
    candidates = [
        (64, 32, 4, 2), (64, 32, 4, 3), (64, 32, 4, 4), (64, 64, 4, 3), (64, 64, 4, 4), (128, 32, 8, 3),
        (128, 64, 8, 3), (32, 32, 2, 3),
    ]  # fmt: skip
    for blocks in candidates:
        label = "BLOCK_M={} BLOCK_N={} warps={} stages={}".format(*blocks)
        try:
            t = triton.testing.do_bench(lambda b=blocks: run_fused(b), return_mode="median")
            print(f"  {label}: {t:.3f} ms")
        except Exception as err:  # noqa: BLE001 - a config that does not fit is reported
            print(f"  {label}: {type(err).__name__}")


def ran_launches(module, q, k, v, temp):
    """The launches of one call of ``module``'s kernels, each run once in order (each reads
    what the one before it wrote), so that each can then be timed on its own."""
    _, launches = module.plan_self_self_attention(q, k, v, temp)
    for launch in launches:
        launch()
    return launches


def load_kernels(path):
    """Another version of ``mmfinercam/kernels/attention.py``, imported beside the installed one."""
    spec = importlib.util.spec_from_file_location("mmfinercam.kernels.attention_against", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def against(device, batch, other, rounds=7):
    """This version's kernels against ``other``'s: one block of ViT-B/16 in bf16, the two
    interleaved round by round (median of the rounds' medians), then each launch on its own."""
    q, k, v = streams(batch, 12, 197, 64, torch.bfloat16, device)
    temp = torch.rand(batch, 1, 1, 1, device=device) * 8 + 1
    versions = {"this": kernels, "other": other}
    diff = versions["this"].self_self_attention_fused(q, k, v, temp).float()
    diff -= versions["other"].self_self_attention_fused(q, k, v, temp).float()
    times = {name: [] for name in versions}
    for _ in range(rounds):
        for name, module in versions.items():
            run = lambda m=module: m.self_self_attention_fused(q, k, v, temp)  # noqa: E731
            times[name].append(triton.testing.do_bench(run, return_mode="median"))
    this, that = (statistics.median(times[name]) for name in versions)
    print(f"b={batch} one block: this {this:.4f} ms, other {that:.4f} ms, this/other {this / that:.3f} "
          f"(max |this - other| {diff.abs().max().item():.2e})")  # fmt: skip
    for name, module in versions.items():
        launches = ran_launches(module, q, k, v, temp)
        each = ", ".join(f"{triton.testing.do_bench(fn, return_mode='median'):.3f}" for fn in launches)
        print(f"  {name}, each launch: {each} ms")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, nargs="+", default=[4, 64, 256])
    parser.add_argument("--configs", action="store_true")
    parser.add_argument(
        "--against", metavar="FILE", help="another version of kernels/attention.py to time against"
    )
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.manual_seed(0)
    if args.against:
        other = load_kernels(args.against)
        for b in args.batch:
            against(device, b, other)
        return
    check(device)
    for b in args.batch:
        timing(device, b, args.configs and b == max(args.batch))


if __name__ == "__main__":
    main()
