"""The shape of the package: small modules and classes, and docstrings that say what and why.

Every public function, method and class documents its arguments (``Args:``), what it returns
(``Returns:`` / ``Yields:``) and what it raises on purpose (``Raises:``): the documentation site
is built from them. Interface methods implemented by a backend (marked ``noqa: D102``) take the
interface's docstring.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mmfinercam"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_MODULE_LINES, MAX_CLASS_LINES = 500, 250


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def test_no_module_over_500_lines_and_no_class_over_250():
    too_long = []
    for path in MODULES:
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(PACKAGE)}: {lines} lines")
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                too_long.append(f"{path.relative_to(PACKAGE)}: class {node.name}")
    assert not too_long, too_long


def _raises(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether the function's own body (not a nested function's) raises a named exception."""
    stack: list[ast.AST] = list(fn.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Raise) and node.exc is not None:
            name = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(name, ast.Name) and name.id[0].isupper() and name.id != "NotImplementedError":
                return True
        stack.extend(ast.iter_child_nodes(node))
    return False


def _parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    args = fn.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    names += [f"*{a.arg}" for a in (args.vararg, args.kwarg) if a is not None]
    return [n for n in names if n not in ("self", "cls")]


def _returns_value(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    returns = fn.returns
    return returns is not None and not (isinstance(returns, ast.Constant) and returns.value is None)


def _problems(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    where = path.relative_to(PACKAGE)
    out = []

    def check_function(fn: ast.FunctionDef | ast.AsyncFunctionDef, owner: str) -> None:
        name = f"{where}: {owner}{fn.name}"
        if fn.name.startswith("_") and fn.name != "__call__":
            return
        if "noqa: D102" in " ".join(lines[fn.lineno - 1 : fn.body[0].lineno - 1]):
            return  # an interface's method: the interface documents it
        doc = ast.get_docstring(fn) or ""
        if not doc:
            out.append(f"{name}: no docstring")
            return
        decorators = {d.id if isinstance(d, ast.Name) else getattr(d, "attr", "") for d in fn.decorator_list}
        if "property" in decorators:
            return  # a property's docstring says what it is
        if _parameters(fn) and "Args:" not in doc:
            out.append(f"{name}: no Args")
        if _returns_value(fn) and "Returns:" not in doc and "Yields:" not in doc:
            out.append(f"{name}: no Returns")
        if _raises(fn) and "Raises:" not in doc:
            out.append(f"{name}: no Raises")

    for node in _tree(path).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            check_function(node, "")
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            doc = ast.get_docstring(node) or ""
            init = next(
                (n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None
            )
            fields = [n for n in node.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
            dataclass = any("dataclass" in ast.unparse(d) for d in node.decorator_list)
            takes = (init is not None and _parameters(init)) or (dataclass and fields)
            if not doc:
                out.append(f"{where}: class {node.name}: no docstring")
            elif takes and "Args:" not in doc:
                out.append(f"{where}: class {node.name}: no Args")
            elif init is not None and _raises(init) and "Raises:" not in doc:
                out.append(f"{where}: class {node.name}: no Raises")
            for member in node.body:
                if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)) and member.name != "__init__":
                    check_function(member, f"{node.name}.")
    return out


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_public_names_are_documented(path):
    assert ast.get_docstring(_tree(path)), f"{path.relative_to(PACKAGE)}: no module docstring"
    problems = _problems(path)
    assert not problems, "\n".join(problems)


def test_the_documentation_checker_finds_what_is_missing(tmp_path, monkeypatch):
    """The checker above is itself checked: a function without Args or Raises is caught."""
    module = tmp_path / "m.py"
    module.write_text(
        '"""A module."""\n\n\n'
        'def f(x: int) -> int:\n    """Do it."""\n    raise ValueError("no")\n\n\n'
        'class C:\n    """A class."""\n\n    def __init__(self, a: int) -> None:\n        self.a = a\n'
    )
    monkeypatch.setattr(f"{__name__}.PACKAGE", tmp_path)
    assert _problems(module) == [
        "m.py: f: no Args",
        "m.py: f: no Returns",
        "m.py: f: no Raises",
        "m.py: class C: no Args",
    ]
