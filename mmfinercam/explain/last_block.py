"""Dense methods that run the last block again with an attention of their own.

MaskCLIP, SCLIP, ClearCLIP and NACLIP keep the tower as it is up to its last block and change
only that block: its attention (each token to itself, correlative, query-query, key-key within
a neighbourhood) and whether the residual stream and the MLP stay. The original path still runs
the last block for the model's own embedding; the method's path reads the same normalized
tokens and queries, keys and values, so it costs one attention and (where kept) one MLP.

:class:`LastBlockPath` is that path; each method is a module that gives it an attention and
registers itself (:mod:`.maskclip`, :mod:`.sclip`, :mod:`.clearclip`, :mod:`.naclip`).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ..backends.base import TransformerBlock, VisionTower
from .tower import DenseMethod, register_dense_method

#: ``attend(q, k, v, grid, num_prefix_tokens) -> B×heads×N×head_dim``: a method's attention
Attend = Callable[[Tensor, Tensor, Tensor, tuple[int, int], int], Tensor]


class LastBlockPath:
    """A :class:`~mmfinercam.explain.tower.TokenPath` that re-runs the last block.

    Args:
        tower: the tower it runs in.
        attend: the method's attention.
        residual: keep the block's residual stream and its MLP (``x + o``, then
            ``+ mlp(norm2(.))``); False takes the attention output alone (``o``).
    """

    needs_row_norms = False

    def __init__(self, tower: VisionTower, attend: Attend, residual: bool) -> None:
        self.first = len(tower.blocks) - 1
        self.attend, self.residual = attend, residual
        self.num_prefix_tokens = tower.num_prefix_tokens
        self._grid: tuple[int, int] = (0, 0)
        self._tokens: Tensor | None = None

    def begin(self, grid: tuple[int, int]) -> None:
        """Start a pass over images of this patch grid.

        Args:
            grid: the patch grid (rows, columns).
        """
        self._grid, self._tokens = grid, None

    def block(
        self,
        i: int,
        block: TransformerBlock,
        x: Tensor,
        h: Tensor,
        h_norms: Tensor | None,
        qkv: tuple[Tensor, Tensor, Tensor],
    ) -> None:
        """Run the last block with the method's attention.

        Args:
            i: the block's index (the last).
            block: its view.
            x: B×N×C tokens entering it.
            h: their normalization.
            h_norms: unused.
            qkv: the block's queries, keys and values.
        """
        out = block.attn_out(self.attend(*qkv, self._grid, self.num_prefix_tokens))
        if self.residual:
            out = x + out
            out = out + block.mlp(block.norm2(out))
        self._tokens = out

    def tokens(self, x: Tensor) -> Tensor:
        """The method's tokens.

        Args:
            x: the original path's final tokens (unused).

        Returns:
            B×N×C tokens.
        """
        assert self._tokens is not None, "the path saw no block"
        return self._tokens


def register_last_block_method(name: str, description: str, attend: Attend, residual: bool) -> DenseMethod:
    """Register a dense method that re-runs the last block.

    Args:
        name: what users call it.
        description: one line for help texts.
        attend: its attention.
        residual: whether the block's residual stream and MLP stay.

    Returns:
        The registered method.
    """

    def make_path(tower: VisionTower, depth: int, temperature: float | None) -> LastBlockPath:
        return LastBlockPath(tower, attend, residual)

    return register_dense_method(DenseMethod(name, description, make_path))
