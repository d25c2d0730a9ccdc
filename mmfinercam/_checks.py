"""Validators shared by every entry to the package, and the renamed-keyword shim.

Each checks one kind of value and raises the one error class for that kind of mistake:
:class:`~mmfinercam.errors.ConfigError` for settings, :class:`~mmfinercam.errors.PromptError`
for prompts. They run where a value enters (an options object, a loader, a command), so the
math below them does not check again.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from .errors import ConfigError, PromptError

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

#: the largest contrast strength taken: past it the contrasts' share dwarfs the target's by more
#: than float32 resolves, and at 1e38 it overflows
MAX_ALPHA = 1e6


def is_whole_number(value: object) -> bool:
    """Whether ``value`` is a Python or NumPy integer, not a bool.

    Counts, sizes and ranks must be: a float would fail later inside a slice or a range, with
    a message about neither.

    Args:
        value: anything.

    Returns:
        True for an integer that is not a bool.
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_whole(value: object, name: str, least: int = 1) -> int:
    """``value`` as an int, if it is a whole number of at least ``least``.

    Args:
        value: the value given.
        name: the setting's name, for the message.
        least: the smallest value allowed.

    Returns:
        The value as an int.

    Raises:
        ConfigError: when it is not a whole number, or smaller than ``least``.
    """
    if not is_whole_number(value) or value < least:  # type: ignore[operator]
        raise ConfigError(f"{name} must be a whole number >= {least}, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def check_alpha(alpha: object) -> float:
    """The contrast strength ``alpha`` as a float: a finite number >= 0.

    A negative strength would add the contrasts' evidence, NaN (which passes ``alpha < 0``)
    would make every map NaN, and a value too large for float32 would overflow to infinity.

    Args:
        alpha: the value given.

    Returns:
        The value as a float.

    Raises:
        ConfigError: when it is not a number, not finite, negative, or beyond float32.
    """
    try:
        value = float(alpha)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"alpha must be a finite number >= 0, got {alpha!r}") from None
    if not math.isfinite(value) or value < 0 or value > MAX_ALPHA:
        raise ConfigError(f"alpha must be a finite number >= 0 (at most {MAX_ALPHA:g}), got {alpha}")
    return value


def check_contrast_ranks(
    ranks: Sequence[int], candidates: int, pool: str = "vocabulary entries"
) -> list[int]:
    """Ranks of automatic contrasts, checked before any image is run.

    Ranks are distinct whole numbers from 1 (rank 0 is the target itself). Ranks past the
    ``candidates`` are dropped, as the reference code does for models with few classes, so the
    default 1, 2, 3 works with a vocabulary of two; ranks that leave none are refused.

    Args:
        ranks: the ranks asked for.
        candidates: how many entries other than the target there are.
        pool: what the entries are, for the message.

    Returns:
        The ranks kept, in order.

    Raises:
        PromptError: when the ranks are not distinct whole numbers from 1, or leave no contrast.
    """
    ranks = [int(r) if is_whole_number(r) else r for r in ranks]
    whole = all(is_whole_number(r) for r in ranks)
    if not ranks or not whole or min(ranks) < 1 or len(set(ranks)) < len(ranks):
        raise PromptError(
            f"contrast ranks must be distinct whole numbers from 1 (rank 0 is the target itself); got {ranks}"
        )
    kept = [r for r in ranks if r <= candidates]
    if not kept:
        raise PromptError(
            f"contrast ranks {ranks} leave no contrast: there are {candidates} {pool} besides the target"
        )
    return kept


def check_prompt(prompt: object, what: str = "prompt") -> str:
    """A usable prompt: a non-empty, non-whitespace string, stripped.

    Args:
        prompt: the value given.
        what: what it is, for the message ("target prompt").

    Returns:
        The prompt without surrounding whitespace.

    Raises:
        PromptError: when it is not a string, or is empty.
    """
    if not isinstance(prompt, str):
        raise PromptError(f"the {what} must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise PromptError(f"the {what} is empty or only whitespace")
    return prompt.strip()


def check_contrasts(target: str, contrast: Sequence[str] | str) -> list[str]:
    """Explicit contrasts: non-empty strings, none equal to the target, no repeats.

    Args:
        target: the target prompt (checked).
        contrast: one contrast prompt or several.

    Returns:
        The contrasts, stripped, in order.

    Raises:
        PromptError: for an unusable, repeated or self-cancelling contrast.
    """
    if isinstance(contrast, str):
        contrast = [contrast]
    out = [check_prompt(c, "contrast prompt") for c in contrast]
    if target in out:
        raise PromptError(
            f"the target {target!r} is also among the contrasts; a concept contrasted with itself cancels out"
        )
    if len(set(out)) != len(out):
        raise PromptError(f"a contrast is repeated: {out}")
    return out


def renamed_keywords(**renames: str) -> Callable[[F], F]:
    """Keep old keyword names of a function working for one release, with a warning.

    ``@renamed_keywords(image_size="short_side")`` passes ``image_size=`` on as
    ``short_side=`` and warns that the old name goes away.

    Args:
        **renames: old keyword name -> new keyword name.

    Returns:
        A decorator.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise ConfigError(f"{fn.__name__}: give {new}= only ({old}= is its old name)")
                    warnings.warn(
                        f"{fn.__name__}({old}=...) is now {new}=; the old name goes in the next release",
                        DeprecationWarning,
                        stacklevel=2,
                    )
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def registered(table: Mapping[str, T], name: str, what: str) -> T:
    """The entry of a registry (backends, dense methods, CAMs) by name.

    Args:
        table: the registry.
        name: the name asked for.
        what: what the registry holds, for the message ("backend", "CAM method").

    Returns:
        The entry.

    Raises:
        ConfigError: for a name nothing is registered under, listing the known ones.
    """
    if name not in table:
        raise ConfigError(f"unknown {what} {name!r}; known: {', '.join(table)}")
    return table[name]
