"""The tower runner and the registry of dense token methods.

A dense token method turns one image-tower pass into patch tokens that can be compared with
text. The plain pass (``"raw"``) takes the last layer's tokens; GEM (``"gem"``, :mod:`.gem`)
and CLIP Surgery (:mod:`.clipsurgery`) run a second path through the last blocks; MaskCLIP,
SCLIP, ClearCLIP and NACLIP (:mod:`.last_block`) run the last block again with an attention of
their own. Every method shares one forward pass
of the original model, :func:`run_tower`, and adds what it needs through a :class:`TokenPath`:
a hook that sees each block's normalized input and its queries, keys and values from the block
it starts at, and makes the tokens at the end.

A method is one :class:`DenseMethod` registered with :func:`register_dense_method`, beside its
implementation: a new method is one new file and one import line in ``explain/__init__.py``.

The blocks run in their pieces (norms, q/k/v, attention, output projection, MLP), not as the
model's modules, so that on a GPU each residual add and the norm after it are one fused pass
(:mod:`mmfinercam.kernels`); the same numbers to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from .. import kernels
from .._checks import registered
from ..backends.base import TransformerBlock, VisionTower
from ..errors import ConfigError
from .tokens import TowerOutput


class TokenPath(Protocol):
    """A dense method's hook into :func:`run_tower`.

    Attributes:
        first: the index of the first block the path reads.
        needs_row_norms: whether :meth:`block` needs the L2 norms of each normalized token
            (the fused add-and-norm gives them at no extra pass).
    """

    first: int
    needs_row_norms: bool

    def begin(self, grid: tuple[int, int]) -> None:
        """Start a pass over images of this patch grid.

        Args:
            grid: the patch grid (rows, columns).
        """

    def block(
        self,
        i: int,
        block: TransformerBlock,
        x: Tensor,
        h: Tensor,
        h_norms: Tensor | None,
        qkv: tuple[Tensor, Tensor, Tensor],
    ) -> None:
        """See block ``i`` (from :attr:`first` on) as the original path runs it.

        Args:
            i: the block's index.
            block: its view.
            x: B×N×C tokens entering it (its residual stream).
            h: B×N×C their normalization (``norm1(x)``).
            h_norms: B×N L2 norms of ``h``'s rows, when :attr:`needs_row_norms`.
            qkv: the block's queries, keys and values of ``h``.
        """

    def tokens(self, x: Tensor) -> Tensor:
        """The method's B×N×C tokens, before the tower's final norm and projection.

        Args:
            x: the original path's final tokens (only the pooled ones, where the tower pools a
                prefix).

        Returns:
            B×N×C tokens for every position.
        """


@dataclass(frozen=True)
class DenseMethod:
    """A registered dense token method.

    Args:
        name: what users call it (``method="gem"``).
        description: one line for help texts.
        make_path: ``make_path(tower, depth, temperature) -> TokenPath | None`` (None: the
            last layer's tokens).
        uses_depth: whether ``depth`` means anything to it.
    """

    name: str
    description: str
    make_path: Callable[[VisionTower, int, float | None], TokenPath | None]
    uses_depth: bool = False


DENSE_METHODS: dict[str, DenseMethod] = {}


def register_dense_method(method: DenseMethod) -> DenseMethod:
    """Make a dense token method available by name.

    Args:
        method: the method; one of the same name is replaced.

    Returns:
        The method.
    """
    DENSE_METHODS[method.name] = method
    return method


def dense_method(name: str) -> DenseMethod:
    """A registered dense token method by name.

    Args:
        name: its name.

    Returns:
        The method.

    Raises:
        ConfigError: for an unknown name, listing the known ones.
    """
    return registered(DENSE_METHODS, name, "dense method")


def run_tower(tower: VisionTower, pixels: Tensor, path: TokenPath | None = None) -> TowerOutput:
    """One forward pass of the image tower, with a dense method's path where one is given.

    Args:
        tower: the model's tower view.
        pixels: B×3×H×W preprocessed images, H and W whole patches.
        path: the method's hook; None returns the last layer's tokens.

    Returns:
        The pooled embedding and the tokens, projected into the joint space.
    """
    blocks = tower.blocks
    grid = (pixels.shape[-2] // tower.patch_size[0], pixels.shape[-1] // tower.patch_size[1])
    x = tower.embed(pixels, kernels.layer_norm)
    first = len(blocks) if path is None else path.first
    if path is not None:
        path.begin(grid)
    # each branch's output is added to x in the pass of the norm that reads the sum
    pending: Tensor | None = None
    for i, block in enumerate(blocks):
        if path is not None and i >= first and path.needs_row_norms:
            x, h, h_norms = kernels.add_norm_row_norms(x, pending, block.norm1)
        else:
            (x, h), h_norms = kernels.add_norm(x, pending, block.norm1), None
        q, k, v = block.qkv(h)
        if path is not None and i >= first:
            path.block(i, block, x, h, h_norms, (q, k, v))
        if i == len(blocks) - 1 and path is not None and tower.pooled_tokens is not None:
            # after the last block only the pooled tokens of the original path are read: their
            # queries alone (the last block's MLP is a few percent of a pass)
            x, q = x[:, : tower.pooled_tokens], q[:, :, : tower.pooled_tokens]
        x, h = kernels.add_norm(x, block.attn_out(block.attention(q, k, v)), block.norm2)
        pending = block.mlp(h, kernels.activation)
    if pending is not None:
        x = x + pending
    tokens = x if path is None else path.tokens(x)
    return TowerOutput(
        tower.pool(x), tower.project_tokens(tokens, kernels.layer_norm), grid, tower.num_prefix_tokens
    )


def dense_tokens(
    tower: VisionTower, pixels: Tensor, method: str = "gem", depth: int = 7, temperature: float | None = None
) -> TowerOutput:
    """One pass of the tower with a registered dense method.

    Args:
        tower: the model's tower view.
        pixels: B×3×H×W preprocessed images.
        method: a name in :data:`DENSE_METHODS`.
        depth: for methods that use it, how many of the last blocks (plus one) they read.
        temperature: GEM's self-self attention inverse temperature (None: adaptive).

    Returns:
        The pass's tokens.
    """
    return run_tower(tower, pixels, dense_method(method).make_path(tower, depth, temperature))


def check_depth(depth: object, tower: VisionTower) -> int:
    """A depth the tower can run: a whole number from 2 to one more than its blocks.

    Args:
        depth: the value given.
        tower: the tower.

    Returns:
        The depth.

    Raises:
        ConfigError: when it is not.
    """
    from .._checks import is_whole_number

    n = len(tower.blocks)
    if not is_whole_number(depth) or not 2 <= depth <= n + 1:  # type: ignore[operator]
        raise ConfigError(f"depth must be between 2 and {n + 1} for a tower of {n} blocks, got {depth!r}")
    return int(depth)  # type: ignore[call-overload]


def fusion_switches(model: object, dtype: object) -> dict[str, kernels.KernelSwitch]:
    """The fused kernels that run for a model in a precision on a GPU, by name.

    The self-self attention kernel runs in half precision only, QuickGELU's for towers that
    have it. Benchmarks time a call with each switched off.

    Args:
        model: the model (its modules are searched for QuickGELU).
        dtype: the precision it runs in.

    Returns:
        Name -> switch.
    """
    import torch

    found = {"add_norm": kernels.fused_add_norm}
    if dtype in (torch.float16, torch.bfloat16):
        found["self_self_attention"] = kernels.fused_attention
    modules = model.modules() if hasattr(model, "modules") else []  # type: ignore[attr-defined]
    if any(kernels.is_quick_gelu(m) for m in modules):
        found["quick_gelu"] = kernels.fused_quick_gelu
    return found


def fusion_available(x: Tensor) -> bool:
    """Whether the fused kernels can run on ``x``'s device.

    Args:
        x: a tensor.

    Returns:
        True on a CUDA GPU with Triton (or under Triton's interpreter).
    """
    return kernels.available(x)
