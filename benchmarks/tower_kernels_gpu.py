"""The fused kernels of the tower's unmodified parts on a GPU, against PyTorch: the residual add
and LayerNorm (:mod:`mmfinercam.kernels.fused_norm`) and QuickGELU (:mod:`mmfinercam.kernels.quick_gelu`).

    python benchmarks/tower_kernels_gpu.py [--batch 64 256] [--width 768] [--shapes]

For ViT-B/16's residual stream (batch × 197 tokens × 768) in bf16: the sum checked equal to
PyTorch's and the norm's largest difference, then ``x + y`` followed by ``F.layer_norm``
(PyTorch, two launches) against the fused add and norm (one), and the norm alone against
``F.layer_norm``; for the MLP's activations (batch × 197 × 4·768), QuickGELU's three PyTorch
passes against one. Timed with ``triton.testing.do_bench`` (median) and read as memory
bandwidth. ``--shapes`` also times other launch shapes of the add and norm (rows a program,
warps).
"""

import argparse

import torch
import torch.nn.functional as F
import triton
from open_clip.transformer import QuickGELU

from mmfinercam.kernels import fused_norm as add_norm
from mmfinercam.kernels import quick_gelu


def bandwidth(tensors: int, x: torch.Tensor, ms: float) -> str:
    return f"{ms:.3f} ms ({tensors * x.numel() * x.element_size() / ms / 1e9:.2f} TB/s)"


def timing(device, batch: int, width: int, dtype, shapes: bool) -> None:
    x = torch.randn(batch, 197, width, device=device).mul(3).to(dtype)
    y = torch.randn_like(x)
    weight = torch.randn(width, device=device).to(dtype)
    bias = torch.randn(width, device=device).to(dtype)
    eps = 1e-5

    def pytorch():
        total = x + y
        return total, F.layer_norm(total, (width,), weight, bias, eps)

    def fused(shape=None, y=y, row_norms=False):
        total, out, _, launch = add_norm.plan_add_layer_norm(
            x, y, weight, bias, eps, row_norms=row_norms, shape=shape
        )
        launch()
        return total, out

    (total, out), (ref_total, ref) = fused(), pytorch()
    differ = (out != ref).float().mean().item()
    print(f"b={batch} width {width} {str(dtype)[6:]}: sum equal {torch.equal(total, ref_total)}, "
          f"norm max diff {(out.float() - ref.float()).abs().max().item():.2e}, "
          f"{differ:.1e} of elements differ")  # fmt: skip
    t_torch = triton.testing.do_bench(pytorch, return_mode="median")
    t_fused = triton.testing.do_bench(fused, return_mode="median")
    # PyTorch reads x and y and writes the sum, then reads the sum and writes its norm: five
    # passes; the fused kernel's four are the least there is
    print(f"  add + norm: PyTorch {bandwidth(5, x, t_torch)}, fused {bandwidth(4, x, t_fused)}, "
          f"{t_torch / t_fused:.2f}x")  # fmt: skip
    # GEM's temperature: the norm of each normalized row, in the same pass or in a pass of its own
    t_norms = triton.testing.do_bench(lambda: fused(row_norms=True), return_mode="median")
    t_torch_norms = triton.testing.do_bench(lambda: pytorch()[1].norm(dim=-1), return_mode="median")
    print(f"  with row norms: PyTorch (+ Tensor.norm) {t_torch_norms:.3f} ms, fused {t_norms:.3f} ms, "
          f"{t_torch_norms / t_norms:.2f}x; the norms cost {t_norms - t_fused:+.3f} ms fused, "
          f"{t_torch_norms - t_torch:+.3f} ms in PyTorch")  # fmt: skip
    t_ln = triton.testing.do_bench(lambda: F.layer_norm(x, (width,), weight, bias, eps), return_mode="median")
    t_ln_fused = triton.testing.do_bench(lambda: fused(y=None), return_mode="median")
    print(f"  norm alone: PyTorch {bandwidth(2, x, t_ln)}, fused {bandwidth(2, x, t_ln_fused)}, "
          f"{t_ln / t_ln_fused:.2f}x")  # fmt: skip
    # QuickGELU over the MLP's activations: three passes (x read three times, two temporaries
    # written and read) against one
    h = torch.randn(batch, 197, 4 * width, device=device).mul(3).to(dtype)
    act = QuickGELU()
    with quick_gelu.fused(False):
        t_act = triton.testing.do_bench(lambda: quick_gelu.activation(h, act), return_mode="median")
    t_act_fused = triton.testing.do_bench(lambda: quick_gelu.activation(h, act), return_mode="median")
    same = torch.equal(quick_gelu.activation(h, act), act(h))
    print(f"  QuickGELU: PyTorch {bandwidth(7, h, t_act)}, fused {bandwidth(2, h, t_act_fused)}, "
          f"{t_act / t_act_fused:.2f}x, the same numbers {same}")  # fmt: skip
    if shapes:
        for shape in [(1, 1), (1, 2), (1, 4), (2, 4), (4, 4), (8, 4), (4, 8), (8, 8), (16, 8)]:
            t = triton.testing.do_bench(lambda s=shape: fused(s), return_mode="median")
            print(f"  shape {shape} (rows a program, warps): {bandwidth(4, x, t)}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--width", type=int, nargs="+", default=[768])
    parser.add_argument("--shapes", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.manual_seed(0)
    for width in args.width:
        for b in args.batch:
            timing(device, b, width, torch.bfloat16, args.shapes and b == max(args.batch))


if __name__ == "__main__":
    main()
