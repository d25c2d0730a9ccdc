"""How a Finer-CAM map is made: one options object, checked once where it is built.

The command line, the batch runner, the evaluation and the web app each build a
:class:`FinerOptions`; :meth:`~mmfinercam.Localizer.finer_cam` builds one from its keywords.
Every setting is checked here, so the math below receives values it can use as they are, and
the choices a command line offers are read from the registries named here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ._checks import check_alpha, check_whole, is_whole_number
from .errors import ConfigError, PromptError
from .explain.cams import gradient_methods as _gradient_methods
from .explain.finer import WEIGHTINGS
from .explain.refine import REFINERS
from .explain.tower import DENSE_METHODS


def dense_methods() -> list[str]:
    """The registered dense token methods.

    Returns:
        Their names (``"gem"``, ``"raw"``, ...).
    """
    return list(DENSE_METHODS)


def gradient_methods() -> list[str]:
    """The registered gradient methods: the CAMs, then LeGrad and any other explainer.

    Returns:
        Their names (``"gradcam"``, ``"layercam"``, ..., ``"legrad"``).
    """
    return _gradient_methods()


def all_methods() -> list[str]:
    """Every method ``finer_cam`` runs: the dense ones, then the gradient ones.

    Returns:
        Their names.
    """
    return dense_methods() + gradient_methods()


@dataclass(frozen=True)
class FinerOptions:
    """The settings of a Finer-CAM map.

    Args:
        alpha: contrast strength: 0 gives the plain target map, larger values keep only what
            differs from the contrasts (the paper's default 0.6, the official code's 1.0).
        weighting: how the contrasts are weighted (``"softmax"`` by the model's confidence in
            each, or ``"uniform"``).
        method: a dense token method (``"gem"``, ``"raw"``, ``"sclip"``, ...) or a gradient
            method (``"gradcam"``, ``"layercam"``, ..., ``"legrad"``).
        depth: GEM's depth; None for the model's own.
        contrast_ranks: which vocabulary entries become automatic contrasts, by closeness rank
            to the target (rank 0 is the target itself).
        short_side: the shorter side images are resized to; None for the model's input size.
        shifts: sub-patch shifts per axis to average maps over (1: none).
        flip: also average the mirrored image's map.
        tiles: explain an image larger than the model's input window by window
            (:mod:`mmfinercam.tiles`): True for every such image, at ``short_side`` or the
            image's own size; None (the default) only for an image past the patch limit, which
            would otherwise be refused; False never. Dense methods only.
        multiscale: with tiles, average the stitched map with the whole image's.
        refine: a map refiner (``"pamr"``, :mod:`mmfinercam.explain.refine`) run on the maps at
            the size the image was prepared at; None for none.

    Raises:
        ConfigError: for any unusable setting.
        PromptError: for unusable contrast ranks.
    """

    alpha: float = 1.0
    weighting: str = "softmax"
    method: str = "gem"
    depth: int | None = None
    contrast_ranks: tuple[int, ...] = field(default=(1, 2, 3))
    short_side: int | None = None
    shifts: int = 1
    flip: bool = False
    tiles: bool | None = None
    multiscale: bool = False
    refine: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", check_alpha(self.alpha))
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        if self.method not in all_methods():
            raise ConfigError(f"unknown method {self.method!r}; known: {', '.join(all_methods())}")
        if self.depth is not None:
            if not is_whole_number(self.depth) or self.depth < 2:
                raise ConfigError(f"depth must be between 2 and the tower's blocks + 1, got {self.depth!r}")
            object.__setattr__(self, "depth", int(self.depth))
        ranks = self.contrast_ranks
        if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Sequence):
            raise PromptError(f"contrast ranks must be a list of whole numbers, got {ranks!r}")
        if not ranks or not all(is_whole_number(r) and r >= 1 for r in ranks) or len(set(ranks)) < len(ranks):
            raise PromptError(
                f"contrast ranks must be distinct whole numbers from 1 (rank 0 is the target itself); "
                f"got {list(ranks)}"
            )
        object.__setattr__(self, "contrast_ranks", tuple(int(r) for r in ranks))
        if self.short_side is not None:
            object.__setattr__(self, "short_side", check_whole(self.short_side, "short_side"))
        object.__setattr__(self, "shifts", check_whole(self.shifts, "shifts"))
        if not isinstance(self.flip, bool):
            raise ConfigError(f"flip must be True or False, got {self.flip!r}")
        if not (self.tiles is None or isinstance(self.tiles, bool)) or not isinstance(self.multiscale, bool):
            raise ConfigError(
                f"tiles must be True, False or None and multiscale True or False; got {self.tiles!r}"
            )
        if self.refine is not None and self.refine not in REFINERS:
            raise ConfigError(f"unknown refiner {self.refine!r}; known: {', '.join(REFINERS)}")
        if self.gradient and (self.tiles or self.multiscale):
            raise ConfigError(f"tiles are for the dense methods, not the gradient method {self.method!r}")

    @property
    def gradient(self) -> bool:
        """Whether the method is a gradient method (a backward pass an image)."""
        return self.method in _gradient_methods()

    @property
    def views(self) -> int:
        """How many shifted and mirrored views each map averages."""
        return self.shifts**2 * (2 if self.flip else 1)

    def replace(self, **changes: Any) -> FinerOptions:
        """A copy with some settings changed, checked again.

        Args:
            **changes: settings to change.

        Returns:
            The new options.
        """
        return FinerOptions(**{**asdict(self), **changes})

    def as_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (ranks as a list).

        Returns:
            Setting name -> value.
        """
        out = asdict(self)
        out["contrast_ranks"] = list(self.contrast_ranks)
        return out
