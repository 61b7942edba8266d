"""The shape of the public door, read from its source with ast (nothing is imported).

* Each blueprint (web/pages.py, web/webinars.py) imports only web/common.py
  from the web package, never another blueprint or the factory.
* web/__init__.py only builds the app: create_app is its one function.
* No function in web/ runs over 80 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[1] / "web"
BLUEPRINTS = ["pages.py", "webinars.py"]
MAX_LINES = 80


def _tree(name: str) -> ast.Module:
    return ast.parse((WEB / name).read_text(encoding="utf-8"), filename=str(WEB / name))


def web_imports(tree: ast.Module) -> set[str]:
    """The web modules a file imports, as 'web.X' (relative imports resolved)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                base = "web" + (f".{node.module}" if node.module else "")
            elif node.module and (node.module == "web" or node.module.startswith("web.")):
                base = node.module
            else:
                continue
            if base == "web":  # "from . import x" / "from web import x"
                found.update(f"web.{alias.name}" for alias in node.names)
            else:
                found.add(base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "web")
    return found


@pytest.mark.parametrize("name", BLUEPRINTS)
def test_blueprints_import_only_web_common(name):
    assert web_imports(_tree(name)) == {"web.common"}


def test_web_imports_reads_relative_and_absolute_forms():
    tree = ast.parse("from . import pages\nfrom .common import db\nimport web.serve\nfrom funnel import db")
    assert web_imports(tree) == {"web.pages", "web.common", "web.serve"}


def test_factory_only_builds_the_app():
    functions = [
        n.name
        for n in _tree("__init__.py").body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    ]
    assert functions == ["create_app"]


def test_no_function_in_web_over_80_lines():
    long = [
        f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in sorted(WEB.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_LINES
    ]
    assert long == []
