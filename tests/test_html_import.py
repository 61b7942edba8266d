"""Saved HTML pages become articles: the theme corpus both ways, front matter, Markdown, bad input.

The corpus (tests/data/pages, written by make_corpus.py) wraps our own articles in
the markup of real WordPress themes and a Squarespace-like page, with share bars,
cookie banners, breadcrumbs, related posts, comment forms, newsletter and author
boxes and teaser links.  expectations.json says, per page, which body paragraphs
must be kept in order and which furniture lines must be gone.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from campaigns.articles import Filters, load_article
from campaigns.htmlpage import decode_page, parse_page, score
from campaigns.importer import import_paths
from funnel.errors import InputError

PAGES = Path(__file__).parent / "data" / "pages"
EXPECTED = json.loads((PAGES / "expectations.json").read_text(encoding="utf-8"))
SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"


def media_in_order(body_md: str, expected: dict) -> bool:
    pos = 0
    for md in expected["media"]:
        pos = body_md.find(md, pos)
        if pos < 0:
            return False
    return True


def page(name: str) -> bytes:
    return (PAGES / name).read_bytes()


# ------------------------------------------------------------------ corpus
def test_corpus_is_large_and_covers_every_theme():
    assert len(EXPECTED) >= 30
    themes = {name.split("-", 1)[0] for name in EXPECTED}
    assert themes == {"astra", "divi", "elementor", "generatepress", "avada", "kadence", "squarespace"}
    assert sorted(p.name for p in PAGES.glob("*.html")) == sorted(EXPECTED)


def test_corpus_every_furniture_line_gone_every_paragraph_kept_in_order():
    left_total, lost_total = {}, {}
    for name, expected in EXPECTED.items():
        result = parse_page(page(name), name)
        left, lost = score(result.article.body_md, expected)
        if left:
            left_total[name] = left
        if lost:
            lost_total[name] = lost
        if not media_in_order(result.article.body_md, expected):
            lost_total[name] = expected["media"]
    assert left_total == {} and lost_total == {}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_front_matter(name):
    expected = EXPECTED[name]
    a = parse_page(page(name), name).article
    assert a.title == expected["title"]
    assert a.date == dt.date.fromisoformat(expected["date"])
    assert a.category == expected["categories"][0]
    assert a.tags == expected["tags"]
    assert a.source == name


def test_title_falls_back_to_h1_then_title_without_site_name():
    html = (b"<html><head><title>Knees and Stairs | Northside Physio</title></head><body>"
            b"<article><p>Going down stairs loads the knee more than going up, so lead with the good leg.</p>"
            b"</article></body></html>")
    assert parse_page(html, "p.html").article.title == "Knees and Stairs"
    with_h1 = html.replace(b"<article>", b"<article><h1>Stairs Without Knee Pain</h1>")
    a = parse_page(with_h1, "p.html").article
    assert a.title == "Stairs Without Knee Pain"
    assert "Stairs Without Knee Pain" not in a.body_md  # the title is front matter, not body


# ----------------------------------------------------------------- Markdown
def test_markdown_keeps_headings_lists_emphasis_links_quotes_and_tables():
    a = parse_page(page("avada-5-core-strength-part-2.html"), "p.html").article
    assert "## The dead bug" in a.body_md
    assert "| Exercise | Sets | How often |\n|---|---|---|\n| Dead bug | 3 x 8 | Daily |" in a.body_md
    b = parse_page(page("astra-2-sitting-at-a-desk-without-stiffness.html"), "p.html").article
    assert "1. Raise the screen so the top edge sits at eye level.\n2. Keep both feet" in b.body_md
    assert "> After a week of setting a timer" in b.body_md
    assert "[sitting](https://northside-physio.example/blog/more/)" in b.body_md  # made absolute
    c = parse_page(page("astra-1-why-walking-helps-a-sore-back.html"), "p.html").article
    assert "- Start with ten minutes on flat ground.\n- Add two minutes" in c.body_md
    assert "**with**" in c.body_md


def test_images_get_absolute_https_urls_and_alt_text_or_a_caption_placeholder():
    a = parse_page(page("astra-1-why-walking-helps-a-sore-back.html"), "p.html").article
    assert ("![A person walking on a park path](https://northside-physio.example/wp-content/"
            "uploads/2025/03/walk-path.jpg)") in a.body_md
    b = parse_page(page("astra-3-sleeping-positions-for-back-pain.html"), "p.html").article
    assert ("![](https://northside-physio.example/wp-content/uploads/2024/11/pillow-knees.jpg)\n"
            "*Caption needed: describe this image.*") in b.body_md


def test_video_embeds_become_a_linked_thumbnail_line():
    a = parse_page(page("astra-4-core-strength-part-1.html"), "p.html").article
    assert ("[![Watch the video on YouTube](https://img.youtube.com/vi/dQw4w9WgXcQ/hqdefault.jpg)]"
            "(https://www.youtube.com/watch?v=dQw4w9WgXcQ)") in a.body_md
    b = parse_page(page("divi-3-stretches-for-tight-hips.html"), "p.html").article
    assert "[\u25b6 Watch the video on Vimeo](https://vimeo.com/76979871)" in b.body_md
    assert "iframe" not in a.body_md + b.body_md


def test_series_and_cta_detection_run_on_the_extracted_text():
    a = parse_page(page("elementor-4-core-strength-part-1.html"), "p.html").article
    assert (a.series, a.part) == ("core-strength-for-a-stronger-back", 1)
    stress = parse_page(page("divi-4-back-pain-and-stress.html"), "p.html").article
    assert [c["kind"] for c in stress.ctas] == ["webinar"]


# ------------------------------------------------------------------- dry run
def test_dry_run_shows_what_was_removed_and_why(run, tmp_path):
    out = tmp_path / "out"
    res = run("content", "import", PAGES / "kadence-4-back-pain-and-stress.html", "--out", out,
              "--dry-run")
    assert res.exit_code == 0, res.output
    assert not out.exists()
    assert "  title:    How Stress Turns Up Back Pain" in res.output
    assert "remove [cookie banner] We use cookies" in res.output
    assert "remove [share bar] Share this article:" in res.output
    assert "remove [read next teaser] Read next:" in res.output
    assert "keep   Pain is produced by the nervous system" in res.output
    assert "dry run: 1 file(s) checked, nothing written" in res.output


def test_cli_import_writes_an_article_the_series_code_can_load(run, tmp_path):
    out = tmp_path / "out"
    res = run("content", "import", PAGES / "astra-4-core-strength-part-1.html",
              PAGES / "astra-5-core-strength-part-2.html", "--out", out)
    assert res.exit_code == 0, res.output
    first = load_article(out / "core-strength-for-a-stronger-back-part-1.md")
    assert first.part == 1 and first.tags == ["core", "series"]
    assert "series core-strength-for-a-stronger-back: parts 1, 2" in res.output


# ----------------------------------------------------------------- bad input
def test_windows_1252_page_without_a_charset_is_decoded():
    body = ("<html><head><title>Caf\u00e9 stretches</title></head><body><article><h1>Caf\u00e9 Stretches</h1>"
            "<p>A na\u00efve \u2018quick\u2019 stretch at the caf\u00e9 table \u2013 held for thirty "
            "seconds \u2013 eases a stiff back.</p></article></body></html>")
    data = body.encode("cp1252")
    assert decode_page(data) == body
    a = parse_page(data, "cafe.html").article
    assert a.title == "Caf\u00e9 Stretches"
    assert "na\u00efve \u2018quick\u2019 stretch" in a.body_md


def test_declared_charset_is_used_when_the_bytes_fit():
    body = "<html><head><meta charset='iso-8859-1'></head><body><p>caf\u00e9</p></body></html>"
    assert decode_page(body.encode("latin-1")) == body
    assert decode_page(body.encode("utf-8")) == body  # a wrong label: the bytes are UTF-8


def test_a_page_with_no_article_is_one_line_naming_the_file(tmp_path):
    f = tmp_path / "menu.html"
    f.write_text("<html><head><title>Menu</title></head><body><nav><a href='/'>Home</a></nav>"
                 "<footer>Copyright</footer></body></html>", encoding="utf-8")
    with pytest.raises(InputError, match=rf"^{f}: no discernible article") as err:
        import_paths([f], tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_a_50_mb_page_is_refused_by_size(tmp_path):
    f = tmp_path / "huge.html"
    with open(f, "wb") as fh:
        fh.write(b"<html><body><p>")
        fh.truncate(50 * 1024 * 1024)
    with pytest.raises(InputError, match=r"huge\.html: the page is 52\.4 MB, more than the 10 MB"):
        import_paths([f], tmp_path / "out")


def test_multi_file_import_with_skip_invalid_imports_the_good_and_reports_the_rest(run, tmp_path):
    bad = tmp_path / "empty.html"
    bad.write_bytes(b"")
    out = tmp_path / "out"
    good = PAGES / "generatepress-2-lifting-without-hurting-your-back.html"
    res = run("content", "import", good, bad, "--out", out, "--skip-invalid")
    assert res.exit_code == 1
    assert f"skipped {bad}: the file is empty" in res.output
    assert (out / "lifting-without-hurting-your-back.md").exists()
    # Without --skip-invalid: all or nothing, as for text files.
    out2 = tmp_path / "out2"
    res = run("content", "import", good, bad, "--out", out2)
    assert res.exit_code == 1 and not out2.exists()


def test_filters_choose_pages(tmp_path):
    names = sorted(PAGES.glob("astra-*.html"))
    report = import_paths(names, tmp_path / "out", dry_run=True,
                          filters=Filters(tags=("core",), since=dt.date(2025, 2, 5)))
    assert {r.article.slug for r in report.results} == {"core-strength-for-a-stronger-back-part-2"}


def test_a_saved_mhtml_page_imports_like_the_html(tmp_path):
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText

    name = "kadence-2-lifting-without-hurting-your-back.html"
    msg = MIMEMultipart("related", type="text/html")
    msg["Subject"] = "Lifting Without Hurting Your Back"
    part = MIMEText(page(name).decode("utf-8"), "html", "utf-8")
    part["Content-Location"] = "https://northside-physio.example/lifting-without-hurting-your-back/"
    msg.attach(part)
    f = tmp_path / "lifting.mhtml"
    f.write_bytes(msg.as_bytes())
    (result,) = import_paths([f], tmp_path / "out").results
    assert result.article.body_md == parse_page(page(name), name).article.body_md
    left, lost = score(result.article.body_md, EXPECTED[name])
    assert left == [] and lost == []


def test_a_posts_html_keeps_ordered_lists_without_extraction():
    from campaigns.htmlpage import fragment_article

    html = ("<p>Three steps for getting out of bed without a twist.</p>"
            "<ol><li>Roll onto your side.</li><li>Drop your feet over the edge.</li>"
            "<li>Push up with your arms.</li></ol>")
    a = fragment_article(html, title="Out of Bed", source="x", label="x").article
    assert a.body_md.endswith("1. Roll onto your side.\n2. Drop your feet over the edge.\n"
                              "3. Push up with your arms.")
