"""The plain pass as a dense method: the last layer's patch tokens, as the model has them.

CLIP's last layer mixes every token into global features, so these maps are coarse and often
noisy (GEM, :mod:`.gem`, is the default); they are the baseline every dense method is compared
with.
"""

from __future__ import annotations

from .tower import DenseMethod, register_dense_method

RAW = register_dense_method(
    DenseMethod("raw", "the last layer's patch tokens, as the model has them", lambda *_: None)
)
