"""The house has floors: imports only go down, and never in a circle.

Reads every project module's imports with ``ast`` (top-level and inside
functions, ``import x`` and ``from x import y``, relative imports resolved)
and checks them against the order in DESIGN.md ("Layers")::

    cli.py, web/   ->   campaigns/   ->   subscribers/   ->   funnel/

``cli.py`` and ``web/`` may import anything below them (``web/`` not
``cli``); sideways imports inside one package are fine as long as they form
no circle.  An ``except ImportError`` around one of our own modules is a
fallback between floors and fails too.

The checker is a plain function over ``{module name: source text}`` so the
self-test below can hand it a made-up house with a back-import and a circle
and see that it reports both.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

#: Top-level package (or module) -> floor; a higher number sits higher.
FLOORS = {"funnel": 0, "subscribers": 1, "campaigns": 2, "web": 3, "cli": 3}
#: Pairs on the same floor that still must not import each other (importer, imported).
FORBIDDEN_SIDEWAYS = {("web", "cli")}


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name, e.g. "subscribers.optin"
    imported: str  # dotted module name of ours, resolved
    line: int
    guarded: bool  # inside a try whose handler catches ImportError


def project_sources(root: Path = REPO) -> dict[str, str]:
    """{dotted module name: source} for cli.py and every module of our packages."""
    sources: dict[str, str] = {}
    if (root / "cli.py").exists():
        sources["cli"] = (root / "cli.py").read_text(encoding="utf-8")
    for top in FLOORS:
        folder = root / top
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            sources[".".join(parts)] = path.read_text(encoding="utf-8")
    return sources


def _is_package(name: str, sources: dict[str, str]) -> bool:
    return any(other.startswith(name + ".") for other in sources)


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = []
    kind = handler.type
    if kind is None:
        return True
    for node in kind.elts if isinstance(kind, ast.Tuple) else [kind]:
        if isinstance(node, ast.Name):
            names.append(node.id)
        elif isinstance(node, ast.Attribute):
            names.append(node.attr)
    return bool({"ImportError", "ModuleNotFoundError", "Exception", "BaseException"} & set(names))


def _ours(dotted: str, sources: dict[str, str]) -> str | None:
    """The longest module of ours that ``dotted`` names (``a.b.func`` -> ``a.b``)."""
    parts = dotted.split(".")
    while parts:
        name = ".".join(parts)
        if name in sources:
            return name
        parts.pop()
    return None


def imports_of(module: str, source: str, sources: dict[str, str]) -> list[Import]:
    """Every import of one of our modules made anywhere in ``source``."""
    tree = ast.parse(source, filename=module)
    guarded_nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(_catches_import_error(h) for h in node.handlers):
            for stmt in node.body:
                for inner in ast.walk(stmt):
                    guarded_nodes.add(id(inner))
    package = module if _is_package(module, sources) else module.rpartition(".")[0]
    found: list[Import] = []

    def add(target: str, node: ast.stmt) -> None:
        name = _ours(target, sources)
        if name is not None and name != module:
            found.append(Import(module, name, node.lineno, id(node) in guarded_nodes))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                # ``from pkg import mod`` imports the submodule; ``from mod import f`` the module.
                add(f"{base}.{alias.name}" if base else alias.name, node)
    return found


def floor_of(module: str) -> str:
    return module.split(".")[0]


def check(sources: dict[str, str]) -> list[str]:
    """One line per problem: back-imports, ImportError fallbacks, circles."""
    problems: list[str] = []
    graph: dict[str, set[str]] = {name: set() for name in sources}
    for module, source in sorted(sources.items()):
        for imp in imports_of(module, source, sources):
            graph[module].add(imp.imported)
            low, high = floor_of(imp.importer), floor_of(imp.imported)
            where = f"{module}:{imp.line}"
            if (low, high) in FORBIDDEN_SIDEWAYS or FLOORS[high] > FLOORS[low]:
                problems.append(f"{where} imports {imp.imported} (runs back up: {low} -> {high})")
            if imp.guarded:
                problems.append(f"{where} imports {imp.imported} inside a try/except ImportError")
    for group in circles(graph):
        problems.append("circle among: " + ", ".join(group))
    return list(dict.fromkeys(problems))  # one line per problem, in order


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected group of two or more modules (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


# --------------------------------------------------------------------------- tests


def test_the_house_has_no_back_imports_no_circles_no_fallbacks():
    problems = check(project_sources())
    assert problems == [], "\n".join(problems)


def test_checker_reads_every_floor():
    sources = project_sources()
    assert {floor_of(name) for name in sources} >= {"cli", "funnel", "subscribers", "campaigns"}
    # Function-level and relative imports are seen too: subscribers.optin uses
    # "from . import lifecycle", and that edge must be in the graph.
    edges = {imp.imported for imp in imports_of("subscribers.optin",
                                                 sources["subscribers.optin"], sources)}
    assert "subscribers.lifecycle" in edges


FAKE_HOUSE = {
    "cli": "import campaigns.series\nfrom web import create_app\n",
    "web": "from campaigns import series\n",
    "web.pages": "from . import common\nimport cli\n",  # web must not import cli
    "web.common": "from funnel.db import connect\n",
    "campaigns": "",
    "campaigns.outbox": "from funnel.db import iso\n",
    "campaigns.series": "from subscribers.optin import confirm\nfrom .messages import build\n",
    "campaigns.messages": "from . import series\n",  # circle with series
    "subscribers": "",
    "subscribers.optin": (
        "from funnel.db import iso\n"
        "def late():\n"
        "    from campaigns.outbox import enqueue\n"  # back up, inside a function
        "    return enqueue\n"
    ),
    "subscribers.io": (
        "try:\n"
        "    from ..campaigns import outbox\n"  # relative, guarded and back up
        "except ImportError:\n"
        "    outbox = None\n"
    ),
    "funnel": "",
    "funnel.db": "import json\nfrom funnel import errors\n",
    "funnel.errors": "",
}


def test_checker_reports_back_imports_circles_and_fallbacks():
    assert check(FAKE_HOUSE) == [
        "subscribers.io:2 imports campaigns.outbox (runs back up: subscribers -> campaigns)",
        "subscribers.io:2 imports campaigns.outbox inside a try/except ImportError",
        "subscribers.optin:3 imports campaigns.outbox (runs back up: subscribers -> campaigns)",
        "web.pages:2 imports cli (runs back up: web -> cli)",
        "circle among: campaigns.messages, campaigns.series",
    ]


def test_checker_accepts_a_clean_house():
    clean = {k: v for k, v in FAKE_HOUSE.items()
             if k not in {"web.pages", "campaigns.messages", "subscribers.optin", "subscribers.io"}}
    assert check(clean) == []


def test_the_footer_reason_is_written_only_in_the_template():
    """The "why you are getting this" sentence has one home: templates/email/reason.txt.j2."""
    from campaigns.render import footer_reason

    written = [name for name, source in project_sources().items() if "You are getting this" in source]
    assert written == []
    assert footer_reason("series", "Clinic", "Back & neck") == (
        "You are getting this because you subscribed to Clinic's emails and are receiving "
        "the series \u201cBack & neck\u201d."
    )
    with pytest.raises(ValueError, match="no footer reason 'nope'"):
        footer_reason("nope", "Clinic")


def test_consent_rows_have_one_writer():
    """Only subscribers.lifecycle.record_consent inserts into the consent ledger."""
    writers = [name for name, source in project_sources().items()
               if "INSERT INTO consent" in source.replace("\n", " ")]
    assert writers == ["subscribers.lifecycle"]
