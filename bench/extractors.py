"""Compare the content extractors on the HTML test corpus (tests/data/pages).

    .venv/bin/python bench/extractors.py

For each extractor (trafilatura, readability-lxml) every page goes through the
whole import path (prune, extract, Markdown, cleaning rules) and is checked
against tests/data/pages/expectations.json both ways: furniture lines left in
the body, body paragraphs lost (or out of order).  A page the extractor finds
no article in counts all its paragraphs as lost.  Also prints the time taken.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lxml.html  # noqa: E402

from campaigns.articles import clean_blocks  # noqa: E402
from campaigns.htmlpage import (  # noqa: E402
    EXTRACTORS,
    decode_page,
    parse_document,
    parse_page,
    read_front,
    score,
    to_blocks,
)
from funnel.errors import InputError  # noqa: E402

PAGES = ROOT / "tests" / "data" / "pages"
MODULES = {"trafilatura": "trafilatura", "readability": "readability"}


def media_lost(body_md: str, expected: dict) -> int:
    """Images and videos missing from the body (or out of order)."""
    pos, lost = 0, 0
    for md in expected["media"]:
        at = body_md.find(md, pos)
        if at < 0:
            lost += 1
        else:
            pos = at
    return lost


def extractor_alone(data: bytes, name: str, extractor: str):
    """The extractor on the whole page (no pruning by html_rules.toml), then our text rules."""
    doc = parse_document(decode_page(data), name)
    front = read_front(doc)
    html = lxml.html.tostring(doc, encoding="unicode")
    blocks = to_blocks(EXTRACTORS[extractor](html, front.base) or "", front.base)
    blocks = [b for b in blocks if not (b.kind == "h" and b.text == front.title)]
    return clean_blocks(blocks, title=front.title or name, source=name)


def main() -> None:
    expectations = json.loads((PAGES / "expectations.json").read_text(encoding="utf-8"))
    paragraphs = sum(len(e["body"]) for e in expectations.values())
    furniture = sum(len(e["furniture"]) for e in expectations.values())
    media = sum(len(e["media"]) for e in expectations.values())
    print(f"{len(expectations)} pages, {paragraphs} body paragraphs, {furniture} furniture lines, "
          f"{media} images and videos")
    print(f"{'extractor':<18} {'furniture left':>15} {'paragraphs lost':>16} {'media lost':>11} "
          f"{'no article':>11} {'ms/page':>8}")
    names = [n for n in EXTRACTORS if importlib.util.find_spec(MODULES[n])]
    for n in sorted(set(EXTRACTORS) - set(names)):
        print(f"{n}: not installed (pip install -e '.[bench]'), left out")
    runs = [(name, name, parse_page) for name in names]
    runs += [(f"{name} alone", name, extractor_alone) for name in names]
    for label, name, how in runs:
        left = lost = media = failed = 0
        start = time.perf_counter()
        for page, expected in expectations.items():
            try:
                if how is parse_page:
                    result = parse_page((PAGES / page).read_bytes(), page, extractor=name)
                else:
                    result = how((PAGES / page).read_bytes(), page, name)
            except InputError:
                failed += 1
                lost += len(expected["body"])
                media += len(expected["media"])
                continue
            page_left, page_lost = score(result.article.body_md, expected)
            left += len(page_left)
            lost += len(page_lost)
            media += media_lost(result.article.body_md, expected)
        ms = (time.perf_counter() - start) * 1000 / len(expectations)
        print(f"{label:<18} {left:>15} {lost:>16} {media:>11} {failed:>11} {ms:>8.1f}")


if __name__ == "__main__":
    main()
