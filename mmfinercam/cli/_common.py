"""What the commands share: argument groups, argument types, inputs, the output folder, models.

Choice lists come from the registries (methods, CAMs, weightings, precisions), so a method
registered in the library is offered on the command line without an edit here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._device import DTYPE_CHOICES
from ..errors import ConfigError
from ..explain.finer import WEIGHTINGS
from ..explain.refine import REFINERS
from ..images import IMAGE_SUFFIXES, image_files
from ..localizer import Localizer, ModelCache
from ..options import FinerOptions, all_methods, dense_methods

DEFAULT_MODEL = "testbed"

#: the one model cache of a process: ``demo`` runs ``localize``'s work with the model it loaded
MODELS = ModelCache()


def int_at_least(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number no smaller than ``least``.

    A batch of 0 images, 0 repeats or a chunk of 0 rows would otherwise fail deep inside, or
    divide by zero.

    Args:
        least: the smallest value allowed.

    Returns:
        The type function.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}")
        return value

    return parse


POSITIVE, NON_NEGATIVE = int_at_least(1), int_at_least(0)


def add_model_args(p: argparse.ArgumentParser, default: str = DEFAULT_MODEL) -> None:
    """The model options every command that loads one takes.

    Args:
        p: the command's parser.
        default: the model the command loads when ``--model`` is not given.
    """
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=default,
        help=f"a model name, <backend>:<name>, hf-hub: id, folder or shipped name (default {default})",
    )
    g.add_argument("--pretrained", default=None, help="pretrained tag (e.g. openai) or checkpoint file")
    g.add_argument("--backend", default=None, help="force a backend (open_clip, transformers)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--dtype", default=None, choices=DTYPE_CHOICES)


class _Deprecated(argparse.Action):
    """An old option name that still works for one release, with a line saying its new name."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str = "", **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: Any = None
    ) -> None:
        print(
            f"mmfinercam: {option} is now {self.new}; the old name goes in the next release", file=sys.stderr
        )
        setattr(namespace, self.dest, values)


def add_finer_args(p: argparse.ArgumentParser, *, gradient: bool, tiles: bool = False) -> None:
    """The Finer-CAM options that ``localize`` and ``batch`` share.

    Args:
        p: the command's parser.
        gradient: whether the command offers the gradient methods too.
        tiles: whether it offers tiled and refined maps (``--tiles``, ``--multiscale``,
            ``--refine``).
    """
    methods = all_methods() if gradient else dense_methods()
    ranks: dict[str, Any] = dict(type=int, nargs="+", default=[1, 2, 3], dest="contrast_ranks")
    p.add_argument(
        "--contrast-ranks", help="which vocabulary entries to contrast, by closeness rank", **ranks
    )
    p.add_argument("--ranks", action=_Deprecated, new="--contrast-ranks", help=argparse.SUPPRESS, **ranks)
    p.add_argument("--alpha", type=float, default=1.0, help="contrast strength (0 = plain map)")
    p.add_argument("--weighting", choices=WEIGHTINGS, default="softmax")
    p.add_argument("--method", default="gem", choices=methods, help="dense token method or gradient method")
    p.add_argument("--depth", type=int, default=None, help="GEM depth (default: the model's)")
    side: dict[str, Any] = dict(type=POSITIVE, default=None, dest="short_side")
    p.add_argument(
        "--short-side", help="the shorter side images are resized to (default: the model's)", **side
    )
    p.add_argument("--image-size", action=_Deprecated, new="--short-side", help=argparse.SUPPRESS, **side)
    if not tiles:
        return
    p.add_argument(
        "--refine", choices=list(REFINERS), default=None, help="refine the maps by the image's edges"
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--tiles",
        action="store_const",
        const=True,
        default=None,
        help="explain images larger than the model's input window by window at full resolution "
        "(--short-side sets the working size; default: only images past the patch limit)",
    )
    group.add_argument("--no-tiles", action="store_const", const=False, dest="tiles", help="never tile")
    p.add_argument("--multiscale", action="store_true", help="with tiles, average in the whole image's map")


def finer_options(args: argparse.Namespace, **more: Any) -> FinerOptions:
    """The options object of a command's Finer-CAM arguments, checked before any model loads.

    Args:
        args: the parsed arguments (:func:`add_finer_args`).
        **more: further settings (``shifts``, ``flip``).

    Returns:
        The options.
    """
    return FinerOptions(
        alpha=args.alpha,
        weighting=args.weighting,
        method=args.method,
        depth=args.depth,
        contrast_ranks=tuple(args.contrast_ranks),
        short_side=args.short_side,
        tiles=getattr(args, "tiles", False),
        refine=getattr(args, "refine", None),
        multiscale=getattr(args, "multiscale", False),
        **more,
    )


def expand_images(items: Sequence[str], where: str = "given") -> list[str]:
    """Folders expanded to the image files inside them (sorted); other paths as they are.

    Args:
        items: files and folders.
        where: how to say where none were found.

    Returns:
        The image files.

    Raises:
        ConfigError: when there are none.
    """
    out: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            out += [str(p) for p in image_files(path)]
        else:
            out.append(item)
    if not out:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise ConfigError(f"no images {where} (folders are searched for {suffixes})")
    return out


def output_folder(path: str) -> Path:
    """The ``--out`` folder, made before any work is done.

    A path that cannot be a folder fails at once instead of after a long run whose results
    would be lost.

    Args:
        path: the folder.

    Returns:
        It, existing.

    Raises:
        ConfigError: when it exists as a file or cannot be made.
    """
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {path} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot make the output folder {path}: {err.strerror or err}") from err
    return out


def load_model(args: argparse.Namespace) -> Localizer:
    """The model the command's arguments name, from the process's cache.

    Random weights are said plainly on standard error.

    Args:
        args: the parsed arguments (:func:`add_model_args`).

    Returns:
        The localizer.
    """
    templates = getattr(args, "templates", None)
    loc = MODELS(
        args.model,
        pretrained=args.pretrained,
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
        templates=templates,
    )
    if loc.info.random_weights:
        print(
            f"WARNING: {args.model} has RANDOM weights (no pretrained weights given): the maps "
            "show the method running, not what a trained model sees.",
            file=sys.stderr,
        )
    return loc
