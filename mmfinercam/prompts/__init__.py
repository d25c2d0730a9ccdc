"""Prompt templates and concept vocabularies, shipped as plain text and JSON.

* ``templates/NAME.txt``: one template a line, ``{}`` standing for the concept.
* ``vocabularies/NAME.txt``: one concept a line; ``vocabularies/NAME.json``: a list of strings,
  or an object whose values are lists (flattened in order).

``load("birds-parts")`` reads a shipped vocabulary by name; ``load("my/file.txt")`` reads a file.
Blank lines and lines starting with ``#`` are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..errors import PromptError

HERE = Path(__file__).parent
TEMPLATES_DIR = HERE / "templates"
VOCABULARIES_DIR = HERE / "vocabularies"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PromptError(f"cannot read {path} as UTF-8 text: {err}") from err


def _read_lines(path: Path) -> list[str]:
    lines = [ln.strip() for ln in _read_text(path).splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _read_entries(path: Path) -> list[str]:
    if path.suffix == ".json":
        try:
            data = json.loads(_read_text(path))
        except json.JSONDecodeError as err:
            raise PromptError(f"{path} is not valid JSON: {err}") from err
        if isinstance(data, dict) and all(isinstance(values, list) for values in data.values()):
            data = [item for values in data.values() for item in values]
        if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
            raise PromptError(f"{path}: a JSON vocabulary is a list of strings or a dict of lists")
        entries = [s.strip() for s in data if s.strip()]
    else:
        entries = _read_lines(path)
    if not entries:
        raise PromptError(f"{path} holds no prompts")
    return list(dict.fromkeys(entries))


def _shipped(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.glob("*")) if p.suffix in (".txt", ".json")}


def available() -> list[str]:
    """The shipped vocabularies.

    Returns:
        Their names (``birds-parts``, ``testbed-species``, ...).
    """
    return list(_shipped(VOCABULARIES_DIR))


def available_templates() -> list[str]:
    """The shipped template sets.

    Returns:
        Their names (``single``, ``short``, ``ensemble``, ``bioclip``, ...).
    """
    return list(_shipped(TEMPLATES_DIR))


def load(name_or_path: str | Path) -> list[str]:
    """A vocabulary by shipped name or by file path, duplicates removed in order.

    Args:
        name_or_path: a shipped vocabulary's name, or a ``.txt`` (one entry a line) or ``.json``
            file.

    Returns:
        The entries.

    Raises:
        PromptError: for no such file or name, or an unreadable or empty one.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return _read_entries(path)
    shipped = _shipped(VOCABULARIES_DIR)
    if str(name_or_path) in shipped:
        return _read_entries(shipped[str(name_or_path)])
    raise PromptError(
        f"no vocabulary file or shipped vocabulary named {str(name_or_path)!r}; shipped: "
        + ", ".join(shipped)
    )


def load_templates(name_or_path: str | Path) -> list[str]:
    """A template set by shipped name (``single``, ``short``, ``ensemble``, ...) or file path.

    Args:
        name_or_path: the name or a file of one template a line.

    Returns:
        The templates, checked (:func:`check_templates`).

    Raises:
        PromptError: for no such file or name, or an unusable template.
    """
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        shipped = _shipped(TEMPLATES_DIR)
        if str(name_or_path) not in shipped:
            raise PromptError(
                f"no template file or shipped template set named {str(name_or_path)!r}; "
                "shipped: " + ", ".join(shipped)
            )
        path = shipped[str(name_or_path)]
    return check_templates(_read_lines(path), where=f"{path}: ")


def check_templates(templates: Sequence[str], *, where: str = "") -> list[str]:
    """Templates that each place the prompt once, at ``{}``.

    A template with no ``{}`` would give every prompt the same text, and the target would cancel
    itself.

    Args:
        templates: the templates.
        where: what to name them by in the message.

    Returns:
        The templates as a list.

    Raises:
        PromptError: for none at all, or one without exactly one ``{}``.
    """
    templates = list(templates)
    bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]
    if bad or not templates:
        raise PromptError(f"{where}each template needs exactly one '{{}}'; bad: {bad[:3] or 'none given'}")
    return templates


RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")


def taxon(ranks: dict[str, str] | list[str], form: str = "scientific", common: str | None = None) -> str:
    """A BioCLIP-style name for a taxon, to put in the ``bioclip`` templates.

    Args:
        ranks: a dict keyed by :data:`RANKS`, or the list kingdom..species (the species epithet
            alone, e.g. ``"tigrina"``).
        form: ``"scientific"`` gives ``"Setophaga tigrina"``; ``"taxonomic"`` the full path
            ``"Animalia Chordata Aves ... Setophaga tigrina"``.
        common: a common name, appended with ``" with common name ..."`` as BioCLIP was trained.

    Returns:
        The name.

    Raises:
        PromptError: for unknown ranks, a missing genus or species, or an unknown form.
    """
    if isinstance(ranks, (list, tuple)):
        ranks = dict(zip(RANKS, ranks))
    unknown = set(ranks) - set(RANKS)
    if unknown:
        raise PromptError(f"unknown taxonomic ranks {sorted(unknown)}; use {RANKS}")
    if form == "scientific":
        if "genus" not in ranks or "species" not in ranks:
            raise PromptError("the scientific form needs a genus and a species")
        text = f"{ranks['genus']} {ranks['species']}"
    elif form == "taxonomic":
        text = " ".join(ranks[r] for r in RANKS if r in ranks)
    else:
        raise PromptError(f"form must be 'scientific' or 'taxonomic', got {form!r}")
    if not text.strip():
        raise PromptError("a taxon needs at least one rank")
    return f"{text} with common name {common}" if common else text


__all__ = ["RANKS", "available", "available_templates", "load", "load_templates", "taxon"]
