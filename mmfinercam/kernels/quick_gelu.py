"""QuickGELU, ``x * sigmoid(1.702 * x)``, in one pass over an MLP's activations (Triton).

OpenAI's CLIP towers (and those trained with the same activation: LAION-400M's, MetaCLIP's)
use QuickGELU between their MLP's two products. PyTorch runs it as three elementwise passes over
the 4×-wide activations (a product, a sigmoid, a product), where an exact GELU is one: here it is
one launch that reads them once and writes the result once.

Same numbers as the three passes: each step is computed in fp32 and rounded to the activations'
dtype as PyTorch rounds it, the sigmoid with CUDA's own ``expf`` and a correctly rounded
division, as PyTorch's kernel computes it (on the CPU, under Triton's interpreter, NumPy's
``exp`` stands in, a last-bit difference in fp32). It runs on a CUDA GPU (or under Triton's
interpreter) for the activation modules of :data:`QUICK_GELUS`, with no gradient to carry and
not while ``torch.compile`` traces (inductor fuses the three itself); anything else runs the
module.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._launch import INTERPRETED, KernelSwitch, Launch, cdiv, class_is_one_of, triton

if triton is not None:
    import triton.language as tl
    from triton.language.extra import libdevice

#: activation modules whose forward is ``x * torch.sigmoid(1.702 * x)`` and nothing else
QUICK_GELUS = frozenset(
    {
        "open_clip.transformer.QuickGELU",
        "transformers.activations.QuickGELUActivation",
        "timm.layers.activations.QuickGELU",
    }
)

#: the fused kernel, on by default: ``with fused(False):`` runs the module's three passes
fused = KernelSwitch()

_BLOCK = 2048  #: elements a program: 8 warps, 8 a thread (a 16-byte vector in half precision)
_META = dict(BLOCK=_BLOCK, CUDA_EXP=not INTERPRETED, num_warps=8)


def is_quick_gelu(act: nn.Module) -> bool:
    """Whether an activation module is one of :data:`QUICK_GELUS` (a subclass may compute otherwise).

    Args:
        act: the activation module.

    Returns:
        True for a known QuickGELU.
    """
    return class_is_one_of(act, QUICK_GELUS)


def takes_kernel(x: Tensor, act: nn.Module) -> bool:
    """Whether :func:`activation` runs the fused kernel for these activations and this module.

    Args:
        x: the activations.
        act: the activation module.

    Returns:
        True for a known QuickGELU on contiguous GPU tensors, with no gradient to carry.
    """
    return is_quick_gelu(act) and x.is_floating_point() and x.is_contiguous() and fused.allows(x)


def activation(x: Tensor, act: nn.Module) -> Tensor:
    """``act(x)``: in the fused kernel where :func:`takes_kernel` says so, else the module.

    Args:
        x: the activations.
        act: the activation module.

    Returns:
        ``act(x)``.
    """
    if not takes_kernel(x, act):
        return act(x)
    out, launch = plan_quick_gelu(x)
    launch()
    return out


def plan_quick_gelu(x: Tensor) -> tuple[Tensor, Launch]:
    """The output and the launch of the fused QuickGELU, not yet run.

    Args:
        x: contiguous activations.

    Returns:
        The output buffer and the launch that fills it.

    Raises:
        RuntimeError: without Triton.
    """
    if triton is None:
        raise RuntimeError("the fused QuickGELU needs triton (pip install triton)")
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    n = x.numel()
    return out, Launch(_quick_gelu, (max(1, cdiv(n, _BLOCK)),), (x, out, n), _META)


if triton is not None:

    @triton.jit
    def _quick_gelu(x_ptr, out_ptr, n, BLOCK: tl.constexpr, CUDA_EXP: tl.constexpr):
        """``BLOCK`` elements of ``x * sigmoid(1.702 * x)``, each step rounded as PyTorch's."""
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
        dtype = x.dtype
        u = x.to(tl.float32)
        scaled = (u * 1.702).to(dtype).to(tl.float32)  # 1.702 * x
        # torch.sigmoid on a GPU: 1 / (1 + expf(-t)), CUDA's expf and a correctly rounded division
        if CUDA_EXP:
            e = libdevice.exp(-scaled)
        else:  # Triton's interpreter has no libdevice: NumPy's exp stands in
            e = tl.exp(-scaled)
        gate = tl.div_rn(1.0, 1.0 + e).to(dtype).to(tl.float32)
        tl.store(out_ptr + offsets, (u * gate).to(dtype), mask=mask)  # x * gate
