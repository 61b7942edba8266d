"""Compare the content extractors on the HTML test corpus (tests/data/pages).

    .venv/bin/python bench/extractors.py

For each extractor (trafilatura, readability-lxml) every page goes through the
whole import path (prune, extract, Markdown, cleaning rules) and is checked
against tests/data/pages/expectations.json both ways: furniture lines left in
the body, body paragraphs lost (or out of order).  A page the extractor finds
no article in counts all its paragraphs as lost.  Also prints the time taken.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from campaigns.htmlpage import EXTRACTORS, parse_page, plain_lines  # noqa: E402
from funnel.errors import InputError  # noqa: E402

PAGES = ROOT / "tests" / "data" / "pages"


def score(body_md: str, expected: dict) -> tuple[list[str], list[str]]:
    """(furniture lines left, body paragraphs lost or out of order)."""
    lines = plain_lines(body_md)
    text = "\n".join(lines)
    left = [f for f in expected["furniture"] if f in text]
    lost, pos = [], 0
    for para in expected["body"]:
        at = next((k for k in range(pos, len(lines)) if lines[k] == para), None)
        if at is None:
            lost.append(para)
        else:
            pos = at + 1
    return left, lost


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


def main() -> None:
    expectations = json.loads((PAGES / "expectations.json").read_text(encoding="utf-8"))
    paragraphs = sum(len(e["body"]) for e in expectations.values())
    furniture = sum(len(e["furniture"]) for e in expectations.values())
    print(f"{len(expectations)} pages, {paragraphs} body paragraphs, {furniture} furniture lines")
    print(f"{'extractor':<12} {'furniture left':>15} {'paragraphs lost':>16} {'media lost':>11} "
          f"{'no article':>11} {'ms/page':>8}")
    for name in EXTRACTORS:
        left = lost = media = failed = 0
        start = time.perf_counter()
        for page, expected in expectations.items():
            try:
                result = parse_page((PAGES / page).read_bytes(), page, extractor=name)
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
        print(f"{name:<12} {left:>15} {lost:>16} {media:>11} {failed:>11} {ms:>8.1f}")


if __name__ == "__main__":
    main()
