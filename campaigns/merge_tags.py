"""The merge tags a clinic may write in a broadcast's subject, preheader and body.

The allowed tags are data (:data:`ALLOWED`): the name a writer types between
``{{ }}`` and what it prints for each reader.  :func:`check` refuses any other
``{{ word }}`` so a typo such as ``{{ nmae }}`` is an error before anything is
stored or sent, never literal text in a reader's inbox.  Rendering turns each
allowed tag into the reader's value (campaigns/render.py).
"""

from __future__ import annotations

import re

from funnel.errors import InputError

#: tag -> (the recipient value it prints, what the writer is told it means)
ALLOWED: dict[str, tuple[str, str]] = {
    "first_name": ("first_name", "the reader's first name (empty when we don't know it)"),
    "name": ("first_name", "the same as first_name: the name a reader is greeted with"),
}

#: Anything between ``{{`` and ``}}`` on one line: the writer meant a merge tag (spaces
#: optional).  Only an allowed name alone is one; ``{{ first_name | upper }}`` is refused too.
TAG_RE = re.compile(r"\{\{\s*([^{}\n]*?)\s*\}\}")


def allowed_text() -> str:
    return ", ".join("{{ " + tag + " }}" for tag in ALLOWED)


def unknown(text: str) -> list[str]:
    """The unknown tags in ``text``, in order of first appearance."""
    seen: list[str] = []
    for m in TAG_RE.finditer(text or ""):
        tag = m.group(1)
        if tag not in ALLOWED and tag not in seen:
            seen.append(tag)
    return seen


def check(text: str, field: str) -> None:
    """Raise InputError naming the first unknown merge tag in ``text`` and the allowed ones."""
    bad = unknown(text)
    if bad:
        inner = bad[0] if len(bad[0]) <= 40 else bad[0][:37] + "..."
        shown = "{{ " + inner + " }}" if inner else "{{ }}"
        raise InputError(f"{field}: unknown merge tag {shown}; the allowed ones are {allowed_text()}")
