"""What one image-tower pass gives: the pooled embedding and the tokens in the joint space."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class TowerOutput:
    """Tokens of one image-tower pass, projected into the joint space.

    Args:
        global_embedding: B×D, the model's own pooled image embedding.
        tokens: B×N×D, the method's tokens (prefix tokens first).
        grid: the patch grid (rows, columns).
        num_prefix_tokens: how many tokens precede the patches.
    """

    global_embedding: Tensor
    tokens: Tensor
    grid: tuple[int, int]
    num_prefix_tokens: int

    @property
    def patch_tokens(self) -> Tensor:
        """B×(rows·columns)×D: the tokens of the patches alone."""
        return self.tokens[:, self.num_prefix_tokens :]
