"""The shape of the public door, read from its source with ast (nothing is imported).

* Each blueprint (web/pages.py, web/webinars.py) imports only web/common.py
  from the web package, never another blueprint or the factory.
* web/__init__.py only builds the app: create_app is its one function.
* Each admin screen (web/admin/*.py) imports only web/admin/common.py from
  the web package; web/admin/common.py only web/common.py.
* No function in web/ (web/admin/ included) runs over 80 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[1] / "web"
BLUEPRINTS = ["pages.py", "webinars.py"]
ADMIN_SCREENS = sorted(p.name for p in (WEB / "admin").glob("*.py")
                       if p.name not in ("__init__.py", "common.py"))
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


@pytest.mark.parametrize("name", ADMIN_SCREENS)
def test_admin_screens_import_only_admin_common(name):
    tree = _tree(f"admin/{name}")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            found.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.ImportFrom | ast.Import):
            modules = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found.update(m for m in modules if m and m.split(".")[0] == "web")
    assert found == {".common"}


def test_admin_common_imports_only_web_common():
    tree = _tree("admin/common.py")
    relative = {(n.level, n.module, tuple(a.name for a in n.names))
                for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level}
    assert relative == {(2, None, ("common",))}


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
        for path in sorted(WEB.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_LINES
    ]
    assert long == []
