"""Tests for campaigns/articles.py and `funnel content import`.

The seed test reads the clinic's scraped pages from ../shared/seeds at test
time (they are third-party text and never copied into the repo) and compares
the result with tests/data/seed_expectations.toml, both ways: every furniture
line gone, every body line kept verbatim and in order.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from campaigns.articles import (
    RULES_PATH,
    Article,
    detect_series,
    dump_article,
    load_article,
    load_rules,
    parse_raw,
    rules_from_dict,
    slugify,
)
from campaigns.importer import import_paths
from cli import App, main
from funnel.errors import FunnelError, InputError
from funnel.settings import test_settings as make_settings

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"
EXPECTATIONS = tomllib.loads(
    (Path(__file__).parent / "data" / "seed_expectations.toml").read_text(encoding="utf-8")
)["seeds"]


# ------------------------------------------------------------ seed helpers
def norm(text: str) -> str:
    """The test's own whitespace normalisation (independent of the module's)."""
    return " ".join(text.split())


def expand(specs: list, nonblank: set[int]) -> list[int]:
    out: list[int] = []
    for spec in specs:
        if isinstance(spec, int):
            out.append(spec)
        else:
            lo, hi = (int(x) for x in spec.split("-"))
            out.extend(n for n in range(lo, hi + 1) if n in nonblank)
    return out


def plain(md_line: str) -> str:
    """A Markdown body line back to the text it came from (list numbers stay)."""
    for prefix in ("## ", "\\"):
        if md_line.startswith(prefix):
            return md_line[len(prefix) :]
    return md_line


def words(md_line: str) -> int:
    """Words of a body line, not counting a list item's number."""
    head, _, rest = plain(md_line).partition(" ")
    if head[:-1].isdigit() and head[-1:] in ".)":
        return len(rest.split())
    return len(plain(md_line).split())


def check_seed(name: str, text: str, exp: dict, rules=None):
    """Assert the cleaning of one seed matches its expectations; returns the result."""
    raw = text.split("\n")
    nonblank = {i for i, line in enumerate(raw, start=1) if norm(line)}
    front = expand(exp["front"], nonblank)
    cruft = expand(exp["cruft"], nonblank)
    body = expand(exp["body"], nonblank)

    # The expectations themselves: a partition of the non-blank lines, and the
    # body lines still point at the text they were written for.
    listed = front + cruft + body
    assert len(listed) == len(set(listed)), f"{name}: a line is listed twice"
    assert set(listed) == nonblank, f"{name}: unlisted lines {sorted(nonblank - set(listed))}"
    body_text = [norm(raw[n - 1]) for n in body]
    digest = hashlib.sha256("\n".join(body_text).encode()).hexdigest()[:16]
    assert digest == exp["body_sha256"], f"{name}: the seed changed since the expectations"

    result = parse_raw(text, name, rules)
    a = result.article

    kept = [n for n, _ in result.kept]
    assert kept == body, (
        f"{name}: body lines lost {sorted(set(body) - set(kept))}, "
        f"cruft kept {sorted(set(kept) - set(body))}"
    )
    removed = {n for n, _, _ in result.removed} & nonblank
    assert removed == set(front) | set(cruft), f"{name}: removed lines differ"

    # The Markdown holds exactly the body lines, verbatim and in order.
    md_lines = [line for line in a.body_md.split("\n") if line]
    md_plain = [plain(line) for line in md_lines]
    assert md_plain == body_text, f"{name}: body text changed"
    for n in cruft + front:
        if norm(raw[n - 1]) not in body_text:
            assert norm(raw[n - 1]) not in md_plain, f"{name}: line {n} leaked into the body"
    assert "\u00a0" not in a.body_md

    headings = [f"## {norm(raw[n - 1])}" for n in exp["headings"]]
    assert [line for line in md_lines if line.startswith("## ")] == headings, f"{name}: headings"
    items = [line for line in md_lines if line[:1].isdigit()]
    assert items == [norm(raw[n - 1]) for n in exp["lists"]], f"{name}: list items"

    # Front matter.
    assert a.title in [norm(raw[n - 1]) for n in front]
    assert a.title.split()[:4] == exp["title_start"].split()
    assert hashlib.sha256(a.slug.encode()).hexdigest()[:16] == exp["slug_sha256"]
    assert a.slug == slugify(a.title)
    assert a.date == exp.get("date")
    assert a.category == exp.get("category")
    assert a.series == exp.get("series")
    assert a.part == exp.get("part")
    assert [c["kind"] for c in a.ctas] == exp["ctas"]
    assert a.source == name
    assert a.words == sum(words(line) for line in md_lines)
    return result


@pytest.fixture
def seeds() -> Path:
    if not SEEDS.is_dir():
        pytest.skip(f"{SEEDS} is missing; the seed tests need the clinic's scraped pages")
    return SEEDS


def seed_text(seeds: Path, name: str) -> str:
    return (seeds / name).read_text(encoding="utf-8")


# ------------------------------------------------------------------ seeds
@pytest.mark.parametrize("name", sorted(EXPECTATIONS))
def test_seed_is_cleaned_as_expected(seeds, name):
    check_seed(name, seed_text(seeds, name), EXPECTATIONS[name])


def test_every_seed_has_expectations(seeds):
    assert sorted(p.name for p in seeds.glob("*.txt")) == sorted(EXPECTATIONS)


def _rules_data() -> dict:
    return tomllib.loads(RULES_PATH.read_text(encoding="utf-8"))


def test_seed_check_catches_a_rule_that_drops_body(seeds):
    """The seed check can fail: a greedy rule that eats a body paragraph is caught."""
    data = _rules_data()
    data["line"].append({"name": "greedy", "patterns": [r"(?i)\bpsoas\b"]})
    name = "001_c9f9500b0f530aaa.txt"
    with pytest.raises(AssertionError, match="body lines lost"):
        check_seed(name, seed_text(seeds, name), EXPECTATIONS[name], rules_from_dict(data))


def test_seed_check_catches_a_missing_furniture_rule(seeds):
    data = _rules_data()
    data["line"] = [r for r in data["line"] if r["name"] != "placeholder text"]
    name = "001_c9f9500b0f530aaa.txt"
    with pytest.raises(AssertionError, match="cruft kept"):
        check_seed(name, seed_text(seeds, name), EXPECTATIONS[name], rules_from_dict(data))


def test_seed_articles_round_trip_through_files(seeds, tmp_path):
    results = import_paths(sorted(seeds.glob("*.txt")), tmp_path / "out").results
    assert len(list((tmp_path / "out").glob("*.md"))) == len(EXPECTATIONS)
    for result in results:
        loaded = load_article(result.out_path)
        assert loaded == result.article


def test_dry_run_on_seeds_reports_rules_and_writes_nothing(seeds, tmp_path):
    out = tmp_path / "out"
    runner = CliRunner()
    res = runner.invoke(
        main,
        [
            "content",
            "import",
            str(seeds / "001_c9f9500b0f530aaa.txt"),
            "--out",
            str(out),
            "--dry-run",
        ],
        obj=App(settings_override=make_settings(tmp_path)),
    )
    assert res.exit_code == 0, res.output
    assert not out.exists()
    assert "nothing written" in res.output
    assert "[newsletter box]" in res.output and "[placeholder text]" in res.output
    assert "importance-of-exercise-for-low-back-pain (part 4)" in res.output
    assert "webinar (line 26)" in res.output


# ------------------------------------------------------- synthetic pages
# Written for these tests; shaped like the scraped pages, in our own words.
PAGE = """\
desk posture

Sitting Well At A Desk, Part 2

March 3, 2021

Raise the screen until its top edge sits level with your eyes.

What about the chair?

  1. Keep both feet flat on the floor.
  2. Let the hips sit a little higher than the knees.

If you would like a hand, contact our physio clinic on any weekday.

# hashtags are not headings

Stay connected with us
Subscribe
Close

50% complete

Lorem ipsum dolor sit amet.

Neck Stiffness And What To Do
"""


def test_synthetic_page_front_matter_and_body():
    result = parse_raw(PAGE, "desk.txt")
    a = result.article
    assert a.title == "Sitting Well At A Desk, Part 2"
    assert a.slug == "sitting-well-at-a-desk-part-2"
    assert (a.series, a.part) == ("sitting-well-at-a-desk", 2)
    assert a.date == dt.date(2021, 3, 3)
    assert a.category == "desk posture"  # unlisted, lower case, above the title
    assert a.ctas == [
        {"kind": "appointment", "text": "Request an appointment"},
        {"kind": "newsletter", "text": "Join the monthly newsletter"},
    ]
    assert a.body_md == (
        "Raise the screen until its top edge sits level with your eyes.\n\n"
        "## What about the chair?\n\n"
        "1. Keep both feet flat on the floor.\n"
        "2. Let the hips sit a little higher than the knees.\n\n"
        "If you would like a hand, contact our physio clinic on any weekday.\n\n"
        "\\# hashtags are not headings"
    )
    rules = {no: rule for no, _, rule in result.removed}
    assert rules[18] == rules[19] == rules[20] == "newsletter box"
    assert rules[22] == "form step"
    assert rules[24] == "placeholder text"
    assert rules[26] == "next article's title"
    assert a.words == 51


def test_cta_sentence_in_body_is_kept_and_recorded():
    text = "Moving more\n\nWalk daily.\n\nYou can save a seat on our free webinar here.\n"
    a = parse_raw(text, "w.txt").article
    assert "You can save a seat on our free webinar here." in a.body_md
    assert [c["kind"] for c in a.ctas] == ["webinar"]
    assert a.ctas[0]["text"] != "You can save a seat on our free webinar here."


def test_nbsp_lines_dropped_and_spaces_normalised():
    text = "A title\n\u00a0\nOne\u00a0 two   three.\n \u00a0 \n"
    result = parse_raw(text, "n.txt")
    assert result.article.body_md == "One two three."
    assert [(n, rule) for n, _, rule in result.removed][1:] == [
        (2, "whitespace-only line"),
        (4, "whitespace-only line"),
    ]


def test_adjacent_lines_stay_one_paragraph_and_order_is_kept():
    text = "Title here\n\nfirst line\nsecond line\n\nthird\n"
    assert parse_raw(text, "p.txt").article.body_md == "first line\nsecond line\n\nthird"


def test_stray_title_rules_keep_short_subheadings():
    text = (
        "Lifting Without Fear\n\n"
        "Bend the knees first.\n\n"
        "Good Lifting Habits\n\n"  # short Title Case subheading: kept
        "Keep the load close.\n\n"
        "Seven Simple Ways To Calm A Stiff Neck\n\n"  # related article: removed
        "Breathe out as you lift.\n"
    )
    result = parse_raw(text, "t.txt")
    assert [n for n, _ in result.kept] == [3, 5, 7, 11]
    assert (9, "related article's title") in [(n, r) for n, _, r in result.removed]


def test_repeated_date_and_byline_go_but_longer_lines_stay():
    text = (
        "A question about sleep\n\nMay 4, 2020\n\nHi team,\n\nMy back aches at night.\n\n"
        "Sam\nMay 4, 2020\n\nSam from Leeds wrote\n4 May 2020\n\nTry a pillow under the knees.\n"
    )
    result = parse_raw(text, "q.txt")
    removed = {n: r for n, _, r in result.removed}
    assert result.article.date == dt.date(2020, 5, 4)
    assert (removed[9], removed[10], removed[13]) == ("byline", "repeated date", "repeated date")
    assert [n for n, _ in result.kept] == [5, 7, 12, 15]  # four-word line is not a byline


def test_unfinished_block_never_swallows_a_paragraph():
    text = "Title line\n\nFirst point.\n\nHave more questions?\n\nA real paragraph.\n"
    result = parse_raw(text, "b.txt")
    assert [n for n, _ in result.kept] == [3, 7]
    assert (5, "Have more questions?", "appointment box") in result.removed


def test_windows_line_endings_keep_line_numbers():
    result = parse_raw("Title\r\n\r\nBody one.\r\n\r\nBody two.\r\n", "w.txt")
    assert result.kept == [(3, "Body one."), (5, "Body two.")]


# -------------------------------------------------------------- bad input
def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_non_utf8_file_is_reported_with_line(tmp_path):
    bad = write(tmp_path / "bad.txt", b"A title\n\nSome text \xff here\n")
    with pytest.raises(InputError, match=r"bad\.txt:3: not UTF-8 text \(byte 0xff"):
        import_paths([bad], tmp_path / "out")


@pytest.mark.parametrize(
    "data", [b"", b"\n\n", b"  \n\xc2\xa0\n\t\n"], ids=["empty", "newlines", "nbsp"]
)
def test_empty_file_is_reported(tmp_path, data):
    f = write(tmp_path / "empty.txt", data)
    with pytest.raises(InputError, match=r"empty\.txt: the file is empty"):
        import_paths([f], tmp_path / "out")


@pytest.mark.parametrize(
    "text, reason",
    [
        (
            " ".join(["word"] * 30) + ".\n\nMore text.\n",
            r"p\.txt:1: no detectable title; .* 30 words",
        ),
        ("Subscribe\nClose\n\nLorem ipsum dolor.\n", r"p\.txt: no detectable title \(every line"),
        ("?!?\n\nBody text.\n", r"p\.txt:1: no detectable title; '\?!\?' has no letters"),
        ("Only A Title\n\nSubscribe\n", r"p\.txt: nothing is left after the title"),
        ("---\ntitle: x\n---\nbody\n", r"p\.txt:1: starts with '---' front matter"),
    ],
    ids=["paragraph-first", "only-furniture", "no-letters", "no-body", "markdown"],
)
def test_pages_without_a_usable_title_or_body(tmp_path, text, reason):
    f = write(tmp_path / "p.txt", text.encode())
    with pytest.raises(InputError, match=reason):
        import_paths([f], tmp_path / "out")


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(InputError, match=r"nope\.txt: cannot read the file"):
        import_paths([tmp_path / "nope.txt"], tmp_path / "out")


def test_one_bad_file_writes_nothing(tmp_path):
    good = write(tmp_path / "good.txt", PAGE.encode())
    bad = write(tmp_path / "bad.txt", b"\xfe\xff")
    out = tmp_path / "out"
    with pytest.raises(InputError, match="bad.txt"):
        import_paths([good, bad], out)
    assert not out.exists()


def test_two_files_with_the_same_slug_are_refused(tmp_path):
    a = write(tmp_path / "a.txt", b"Same Title\n\nOne.\n")
    b = write(tmp_path / "b.txt", b"Same title!\n\nTwo.\n")
    with pytest.raises(InputError, match=r"b\.txt: its title gives the slug 'same-title'"):
        import_paths([a, b], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_dry_run_writes_nothing(tmp_path):
    f = write(tmp_path / "page.txt", PAGE.encode())
    out = tmp_path / "out"
    results = import_paths([f], out, dry_run=True).results
    assert not out.exists()
    assert results[0].out_path == out / "sitting-well-at-a-desk-part-2.md"
    assert results[0].article.path is None


def test_import_writes_and_reimport_replaces(tmp_path):
    f = write(tmp_path / "page.txt", PAGE.encode())
    out = tmp_path / "out"
    (result,) = import_paths([f], out).results
    target = out / "sitting-well-at-a-desk-part-2.md"
    assert result.article.path == target
    first = target.read_text(encoding="utf-8")
    assert first.startswith("---\ntitle: Sitting Well At A Desk, Part 2\ndate: 2021-03-03\n")
    assert "\nsource: page.txt\n" in first and "\npart: 2\n" in first
    import_paths([f], out)
    assert target.read_text(encoding="utf-8") == first
    assert sorted(p.name for p in out.iterdir()) == [target.name]  # no temp files left


# ---------------------------------------------------- series and slugs
@pytest.mark.parametrize(
    "title, series, part",
    [
        (
            "The importance of exercise for low back pain part 4",
            "importance-of-exercise-for-low-back-pain",
            4,
        ),
        ("Five Reasons Your Low Back Hurts (Part 2)", "five-reasons-your-low-back-hurts", 2),
        ("Sitting and your spine, Part II", "sitting-and-your-spine", 2),
        ("Core basics pt. 3", "core-basics", 3),
        ("Core basics Pt 3", "core-basics", 3),
        ("Hip flexors [Part Three]", "hip-flexors", 3),
        ("Posture part 2 of 5", "posture", 2),
        ("A guide to lifting - Part IV", "guide-to-lifting", 4),
        ("Part 1: Why backs hurt", "why-backs-hurt", 1),
        ("Walking plan part 12", "walking-plan", 12),
        ("Why posture is part of the problem", None, None),
        ("Part-time desk work and your back", None, None),
        ("Counterpart 2 exercises", None, None),
        ("Departure lounge stretches", None, None),
        ("Back care part 0", None, None),
        ("How To Strengthen Your Back", None, None),
    ],
)
def test_series_detection(title, series, part):
    assert detect_series(title) == (series, part)


@pytest.mark.parametrize(
    "text, slug",
    [
        (
            "The importance of exercise for low back pain part 4",
            "the-importance-of-exercise-for-low-back-pain-part-4",
        ),
        ("Don’t Panic: Spasms & You", "dont-panic-spasms-you"),
        ("Café stretches (Part 2)", "cafe-stretches-part-2"),
        ("  --  ", ""),
        ("x" * 60 + " " + "y" * 60, "x" * 60),
    ],
)
def test_slugify(text, slug):
    assert slugify(text) == slug


# ----------------------------------------------------------- front matter
def article_file(tmp_path: Path, front: str, body: str = "Body text.\n") -> Path:
    path = tmp_path / "my-article.md"
    path.write_text(f"---\n{front}---\n\n{body}", encoding="utf-8")
    return path


def test_dump_and_load_round_trip(tmp_path):
    article = Article(
        slug="my-article",
        title="Title: with a colon",
        body_md="## A heading\n\nSome text.",
        source="x.txt",
        date=dt.date(2019, 7, 16),
        category="Back Pain Guide",
        series="my-series",
        part=3,
        ctas=[{"kind": "webinar", "text": "Save my seat"}],
        words=5,
        subject="Week three",
        preheader="Short and kind",
        offset_days=14,
    )
    path = tmp_path / "my-article.md"
    path.write_text(dump_article(article), encoding="utf-8")
    loaded = load_article(path)
    article.path = path
    assert loaded == article


def test_minimal_front_matter_loads(tmp_path):
    a = load_article(article_file(tmp_path, "title: Just a title\ndate: '2020-01-31'\n"))
    assert (a.slug, a.title, a.date, a.part, a.ctas, a.body_md) == (
        "my-article",
        "Just a title",
        dt.date(2020, 1, 31),
        None,
        [],
        "Body text.",
    )


@pytest.mark.parametrize(
    "front, message",
    [
        ("title: T\nx: 1\n", r"my-article\.md: unknown front matter key 'x'"),
        ("title: T\npart: four\n", r"my-article\.md: front matter 'part' must be an integer"),
        ("title: T\npart: true\n", r"front matter 'part' must be an integer"),
        ("title: T\npart: 0\n", r"front matter 'part' must be at least 1"),
        ("title: T\nwords: 1.5\n", r"front matter 'words' must be an integer"),
        ("title: T\ndate: July 2019\n", r"front matter 'date' must be a date written YYYY-MM-DD"),
        ("title: T\nseries: Not A Slug\n", r"front matter 'series' must be a slug"),
        ("title: T\nctas: [{kind: banner, text: Hi}]\n", r"front matter 'ctas' must be a list"),
        ("title: T\nctas: webinar\n", r"front matter 'ctas' must be a list"),
        ("title: [1, 2]\n", r"front matter 'title' must be a non-empty string"),
        ("date: 2020-01-01\n", r"my-article\.md: front matter is missing 'title'"),
        ("title: T\nbad: [unclosed\n", r"my-article\.md:3: front matter is not valid YAML"),
        ("- just\n- a list\n", r"front matter must be 'key: value' lines"),
    ],
)
def test_front_matter_errors(tmp_path, front, message):
    with pytest.raises(InputError, match=message):
        load_article(article_file(tmp_path, front))


def test_missing_or_unclosed_delimiters(tmp_path):
    path = tmp_path / "a.md"
    path.write_text("title: T\n\nBody\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"a\.md:1: missing front matter"):
        load_article(path)
    path.write_text("---\ntitle: T\n\nBody\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"a\.md:1: the front matter is never closed"):
        load_article(path)


# ------------------------------------------------------------------ rules
def test_shipped_rules_load():
    rules = load_rules()
    assert {r.kind for r in rules.ctas} == {"webinar", "appointment", "programme", "newsletter"}


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda d: d["line"].append({"name": "x", "patterns": ["(unclosed"]}),
            r"\[line \d+\] 'patterns' is not a valid",
        ),
        (
            lambda d: d["cta"].append({"kind": "popup", "text": "x", "patterns": []}),
            r"kind 'popup' is not one of",
        ),
        (
            lambda d: d["header"].update(title_max_word=3),
            r"\[header\] has unknown key 'title_max_word'",
        ),
        (
            lambda d: d["block"][0].update(max_lines="8"),
            r"\[block 1\] 'max_lines' has the wrong type",
        ),
        (lambda d: d["series"].update(pattern="part (\\d+)"), r"needs a named group"),
    ],
)
def test_broken_rules_are_reported(change, message):
    data = _rules_data()
    change(data)
    with pytest.raises(FunnelError, match=message):
        rules_from_dict(data)


def test_rules_file_that_is_not_toml(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text("[text\n", encoding="utf-8")
    with pytest.raises(FunnelError, match=r"rules\.toml: cannot read the cleaning rules"):
        load_rules(path)


# -------------------------------------------------------------------- CLI
def invoke(tmp_path: Path, *args: str):
    return CliRunner().invoke(
        main, ["content", "import", *args], obj=App(settings_override=make_settings(tmp_path))
    )


def test_cli_import_writes_to_default_dir(tmp_path, monkeypatch):
    page = write(tmp_path / "page.txt", PAGE.encode())
    monkeypatch.chdir(tmp_path)
    res = invoke(tmp_path, "page.txt")
    assert res.exit_code == 0, res.output
    target = tmp_path / "content" / "articles" / "sitting-well-at-a-desk-part-2.md"
    assert load_article(target).part == 2
    assert page.read_bytes() == PAGE.encode()  # the input is never touched
    assert "wrote content/articles/sitting-well-at-a-desk-part-2.md" in res.output
    assert "series sitting-well-at-a-desk part 2, ctas: appointment, newsletter" in res.output


def test_cli_dry_run_lists_removed_lines_and_writes_nothing(tmp_path):
    page = write(tmp_path / "page.txt", PAGE.encode())
    out = tmp_path / "out"
    res = invoke(tmp_path, str(page), "--out", str(out), "--dry-run")
    assert res.exit_code == 0, res.output
    assert not out.exists()
    assert "  title:    Sitting Well At A Desk, Part 2" in res.output
    assert "  series:   sitting-well-at-a-desk (part 2)" in res.output
    assert "    24 remove [placeholder text] Lorem ipsum dolor sit amet." in res.output
    assert "     7 keep   Raise the screen" in res.output
    assert "dry run: 1 file(s) checked, nothing written" in res.output


def test_cli_bad_file_is_one_line_error_and_writes_nothing(tmp_path):
    good = write(tmp_path / "good.txt", PAGE.encode())
    bad = write(tmp_path / "bad.txt", b"")
    out = tmp_path / "out"
    res = invoke(tmp_path, str(good), str(bad), "--out", str(out))
    assert res.exit_code == 1
    assert res.output.strip() == f"Error: {bad}: the file is empty (no text, or whitespace only)"
    assert not out.exists()


def test_cli_help_has_an_example():
    res = CliRunner().invoke(main, ["content", "import", "--help"])
    assert res.exit_code == 0
    assert "funnel content import page-1.txt page-2.txt --dry-run" in res.output
