"""The fused self-self attention kernel on a GPU: error against float64, time against PyTorch.

    python benchmarks/ss_kernel_gpu.py [--batch 256] [--configs]

Checks ``mmfinercam.kernels`` against the PyTorch path of ``mmfinercam.gem`` (run in float64)
on fresh random inputs of several shapes, then times one block's self-self attention of
ViT-B/16 (12 heads × 197 tokens × 64) both ways with ``triton.testing.do_bench`` (median).
``--configs`` also times other launch shapes (``blocks=``), to choose the default, and each
launch of a call on its own.
"""

import argparse
import itertools
from dataclasses import replace

import torch
import triton

from mmfinercam import gem, kernels


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
    # tokens (174 registers otherwise; ``kernels.compile_ahead``); not the default until timed
    _, launches = kernels.plan_self_self_attention(q, k, v, temp)
    for launch in launches:
        launch()  # each launch reads what the one before it wrote
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, nargs="+", default=[4, 64, 256])
    parser.add_argument("--configs", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.manual_seed(0)
    check(device)
    for b in args.batch:
        timing(device, b, args.configs and b == max(args.batch))


if __name__ == "__main__":
    main()
