"""The names the README and the design notes give users resolve after ``import mmfinercam as mf``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import mmfinercam as mf

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_names() -> list[str]:
    return sorted(set(re.findall(r"\bmf\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)", README.read_text())))


def test_the_readme_names_names_there_are():
    names = _readme_names()
    assert "ClassifierFinerCAM" in names and "load" in names  # the pattern finds the README's calls
    for dotted in names:
        obj = mf
        for part in dotted.split("."):
            assert hasattr(obj, part), f"mf.{dotted} (README) does not resolve"
            obj = getattr(obj, part)


def test_submodules_load_on_first_use_and_nothing_else_is_made_up():
    assert callable(mf.metrics.relative_confidence_drop)  # the design notes' mf.metrics.*
    assert callable(mf.testbed.siblings)
    with pytest.raises(AttributeError, match="no attribute 'not_a_module'"):
        mf.not_a_module  # noqa: B018
