"""The one reader of content files' front matter, CTA lists and TOML lines.

Articles (``content/articles/*.md``), series steps, broadcasts and webinar
files all start with YAML front matter between ``---`` lines; their call to
action lists share one shape and one set of kinds; TOML files (series.toml,
webinar files) report errors at the line of the key.  Every error is an
InputError that names ``file:line`` and the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from funnel.errors import InputError

#: The call-to-action kinds content may carry (articles, steps, broadcasts).
CTA_KINDS = ("webinar", "appointment", "programme", "newsletter")


def toml_line(text: str, key: str) -> int | None:
    """Line number of ``key = ...`` in a TOML document (tomllib keeps no positions)."""
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return None


def split_front_matter(text: str, path: Path) -> tuple[dict[str, Any], dict[str, int], str]:
    """``(front_matter, line_of_key, body)`` from a Markdown file with YAML front matter.

    Line numbers are 1-based file lines so errors can say ``file:line``.
    """
    text = text.lstrip("\ufeff")
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        raise InputError(f"{path}:1: front matter missing; the file must start with a '---' line")
    for end in range(1, len(lines)):
        if lines[end].strip() in ("---", "..."):
            break
    else:
        raise InputError(f"{path}:1: front matter is not closed with a '---' line")
    source = "".join(lines[1:end])
    try:
        node = yaml.compose(source, Loader=yaml.SafeLoader)
        data = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        # an error at the end of the stream points past the last front-matter line
        line = min(mark.line + 2, end) if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(f"{path}:{line}: front matter is not valid YAML ({problem})") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{path}:2: front matter must be 'key: value' lines")
    lines_of: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            lines_of[str(key_node.value)] = key_node.start_mark.line + 2
    body = "".join(lines[end + 1 :]).strip("\n") + "\n"
    return data, lines_of, body


def validate_ctas(value: object, where: str) -> list[dict]:
    """``[{kind, text}]`` with a known kind and non-empty text."""
    if not isinstance(value, list):
        raise InputError(f"{where}: front matter 'ctas' must be a list of {{kind, text}}")
    ctas = []
    for index, item in enumerate(value, start=1):
        if not isinstance(item, dict) or set(item) - {"kind", "text"}:
            raise InputError(
                f"{where}: front matter 'ctas' item {index} must have only 'kind' and 'text'"
            )
        kind, text = item.get("kind"), item.get("text")
        if kind not in CTA_KINDS:
            raise InputError(
                f"{where}: front matter 'ctas' item {index} has unknown kind {kind!r}; "
                f"use one of {', '.join(CTA_KINDS)}"
            )
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{where}: front matter 'ctas' item {index} needs a non-empty 'text'")
        ctas.append({"kind": kind, "text": text.strip()})
    return ctas
