"""WordPress exports: the WXR file (50 posts, two series, drafts) and a saved REST answer.

tests/data/wordpress/make_wordpress.py wrote both files (our own text).
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

from campaigns.articles import Filters, load_article
from campaigns.importer import import_paths
from campaigns.series import build_series
from campaigns.wordpress import clean_content
from funnel.errors import InputError

DATA = Path(__file__).parent / "data" / "wordpress"
EXPORT = DATA / "export.xml"


def imported(tmp_path, *paths, **kw):
    return import_paths(list(paths), tmp_path / "out", **kw)


def test_wxr_imports_every_published_post_and_skips_drafts_pages_and_attachments(tmp_path):
    report = imported(tmp_path, EXPORT)
    slugs = {r.article.slug for r in report.results}
    assert len(slugs) == 45  # 50 posts, 5 drafts
    assert "core-strength-basics-part-3" not in slugs and "desk-health-part-5" not in slugs
    assert "back-care-tip-6" not in slugs  # a draft
    assert "contact" not in slugs and "stretch" not in slugs  # a page, an attachment
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(written) == 45


def test_wxr_builds_two_series_with_the_right_parts_and_gaps(tmp_path):
    report = imported(tmp_path, EXPORT)
    assert report.series() == [
        "series core-strength-basics: parts 1, 2, 4, 5 (part 3 missing)",
        "series desk-health: parts 1, 2, 4 (part 3 missing)",
    ]
    out = tmp_path / "out"
    desk = [load_article(p) for p in sorted(out.glob("desk-health-part-*.md"))]
    assert [(a.series, a.part) for a in desk] == [("desk-health", 1), ("desk-health", 2), ("desk-health", 4)]
    built = build_series("desk-health", desk, tmp_path / "series")
    assert built.gaps == [3]


def test_wxr_front_matter(tmp_path):
    report = imported(tmp_path, EXPORT)
    a = {r.article.slug: r.article for r in report.results}["desk-health-part-2"]
    assert a.title == "Desk Health, Part Two"
    assert a.date == dt.date(2024, 2, 20)
    assert a.category == "Exercise" and a.tags == ["desk"]
    assert a.source == "export.xml#desk-health-part-2"


def test_wxr_content_loses_block_comments_and_shortcodes(tmp_path):
    report = imported(tmp_path, EXPORT)
    by_slug = {r.article.slug: r.article.body_md for r in report.results}
    classic = by_slug["back-care-tip-1"]
    assert classic.split("\n\n") == [
        "Tip 1 is about morning stiffness and what it asks of your back.",
        "![A seated stretch](https://clinic.example/wp-content/uploads/stretch.jpg)",
        "A seated stretch for the lower back",  # the caption's text stays
        "Move a little more often than feels necessary, and keep the movement easy.",
    ]
    assert "[![Watch the video on YouTube](https://img.youtube.com/vi/abc123XYZ/hqdefault.jpg)]" in by_slug["back-care-tip-2"]
    for body in by_slug.values():
        assert "wp:" not in body and "[caption" not in body and "contact-form" not in body


def test_clean_content_removes_comments_and_shortcodes():
    html = ('<!-- wp:paragraph -->\n<p>Kept [su_note]note text[/su_note].</p>\n<!-- /wp:paragraph -->'
            '\n\n[gallery ids="1,2"]\n\nPlain paragraph.')
    assert clean_content(html) == "<p>Kept note text.</p>\n<p>Plain paragraph.</p>"


@pytest.mark.parametrize(
    "filters, expected",
    [
        (Filters(categories=("posture",)), 10),  # 3 desk-health + 7 tips (case-insensitive)
        (Filters(tags=("core",)), 4),
        (Filters(since=dt.date(2025, 1, 1)), 0),
        (Filters(since=dt.date(2024, 10, 1)), 11),
        (Filters(slugs=("back-care-tip-2", "desk-health-part-4")), 2),
    ],
    ids=["category", "tag", "since-none", "since", "slug"],
)
def test_filters_choose_posts(tmp_path, filters, expected):
    report = imported(tmp_path, EXPORT, filters=filters, dry_run=True)
    assert len(report.results) == expected


def test_cli_filters_and_series_lines(run, tmp_path):
    out = tmp_path / "out"
    res = run("content", "import", EXPORT, "--out", out, "--tag", "core", "--since", "2024-01-01")
    assert res.exit_code == 0, res.output
    assert "series core-strength-basics: parts 1, 2, 4, 5 (part 3 missing)" in res.output
    assert sorted(p.name for p in out.iterdir()) == [
        f"core-strength-basics-part-{n}.md" for n in (1, 2, 4, 5)
    ]


def test_rest_json_imports_published_posts_with_term_names(tmp_path):
    report = imported(tmp_path, DATA / "posts.json")
    arts = [r.article for r in report.results]
    assert [a.slug for a in arts] == ["core-strength-basics-part-1", "core-strength-basics-part-2",
                                      "back-care-tip-4"]  # part 3 is a draft
    assert arts[0].title == "Core Strength Basics, Part 1"  # entities decoded
    assert arts[2].category == "Wellbeing" and arts[2].tags == ["standing"]
    assert arts[0].body_md.startswith("Session 1 of the core programme")


def test_wxr_from_another_system_is_refused_naming_the_file(tmp_path):
    f = tmp_path / "blog-export.xml"
    f.write_text('<?xml version="1.0"?><blog-export xmlns="http://example.org/blog/1.0">'
                 '<post><title>T</title></post></blog-export>', encoding="utf-8")
    with pytest.raises(InputError, match=rf"^{f}: not a WordPress export \(WXR 1.0-1.2\); the root element is <blog-export>$"):
        imported(tmp_path, f)
    g = tmp_path / "future.xml"
    g.write_text('<rss version="2.0" xmlns:wp="http://wordpress.org/export/9.0/"><channel/></rss>',
                 encoding="utf-8")
    with pytest.raises(InputError, match=r"future\.xml: not a WordPress export \(WXR 1.0-1.2\); its 'wp' namespace"):
        imported(tmp_path, g)
    assert not (tmp_path / "out").exists()


def test_a_broken_post_names_the_file_and_the_entry(tmp_path):
    text = EXPORT.read_text(encoding="utf-8").replace(
        "<title><![CDATA[Back Care Tip 9: Phone Posture]]></title>", "<title></title>", 1)
    f = tmp_path / "export.xml"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=rf"^{f}: item 18: the post has no title$"):
        imported(tmp_path, f)
    assert not (tmp_path / "out").exists()


def test_a_truncated_export_is_one_line_with_the_line_number(tmp_path):
    f = tmp_path / "export.xml"
    f.write_bytes(EXPORT.read_bytes()[:20000])
    with pytest.raises(InputError, match=rf"^{f}:\d+: not well-formed XML"):
        imported(tmp_path, f)
    assert not (tmp_path / "out").exists()


STREAM_SCRIPT = r"""
import sys, tracemalloc
from pathlib import Path
from campaigns.articles import Filters
from campaigns.wordpress import iter_wxr
src = Path(sys.argv[1]).read_text(encoding="utf-8")
head, rest = src.split("<item>", 1)
items = "<item>" + rest.rsplit("</channel>", 1)[0]
big = Path(sys.argv[2])
with open(big, "w", encoding="utf-8") as fh:
    fh.write(head)
    for _ in range(400):
        fh.write(items)
    fh.write("</channel></rss>")
tracemalloc.start()
n = sum(1 for _ in iter_wxr(big, "big.xml"))
print(n, big.stat().st_size, tracemalloc.get_traced_memory()[1])
"""


def test_the_export_is_streamed_not_loaded(tmp_path):
    done = subprocess.run([sys.executable, "-c", STREAM_SCRIPT, str(EXPORT), str(tmp_path / "big.xml")],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    items, size, peak = map(int, done.stdout.split())
    assert items == 400 * 52 and size > 20_000_000
    assert peak < size / 10  # peak Python memory is a small fraction of the file
