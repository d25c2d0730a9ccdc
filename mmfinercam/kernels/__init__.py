"""Performance code behind one door: fused GPU kernels (Triton) and their switches.

The explain stage calls these helpers; nothing else in the package imports the kernels'
modules. Each helper takes the same arguments as the PyTorch it stands in for and falls back
to that PyTorch where its kernel does not apply (a CPU, a gradient to carry, an unusual norm),
so callers never branch on hardware:

* :func:`layer_norm`, :func:`add_norm`, :func:`add_norm_row_norms`: a residual add and the
  LayerNorm after it in one pass (:mod:`.add_norm`);
* :func:`activation`: QuickGELU in one pass (:mod:`.quick_gelu`);
* :func:`self_self_attention`: GEM's self-self attention of a block in three launches
  (:mod:`.attention`), where :func:`self_self_attention_applies` says so; its PyTorch twin is
  :func:`mmfinercam.explain.gem.self_self_attention`.

Every kernel has a switch (:data:`SWITCHES`): ``with kernels.fused_attention(False):`` runs
the PyTorch path within the block, to compare the two.
"""

from __future__ import annotations

from ._launch import KernelSwitch, available
from .attention import fused_attention, self_self_attention
from .attention import runs_fused as self_self_attention_applies
from .fused_norm import add_norm, add_norm_row_norms, layer_norm
from .fused_norm import fused as fused_add_norm
from .quick_gelu import activation, is_quick_gelu
from .quick_gelu import fused as fused_quick_gelu

#: every fused kernel's switch, by name
SWITCHES: dict[str, KernelSwitch] = {
    "add_norm": fused_add_norm,
    "quick_gelu": fused_quick_gelu,
    "self_self_attention": fused_attention,
}

__all__ = [
    "SWITCHES",
    "KernelSwitch",
    "activation",
    "add_norm",
    "add_norm_row_norms",
    "available",
    "fused_add_norm",
    "fused_attention",
    "fused_quick_gelu",
    "is_quick_gelu",
    "layer_norm",
    "self_self_attention",
    "self_self_attention_applies",
]
