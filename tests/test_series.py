"""Series content: the bundled series, strict loading, building from articles, preview."""

from __future__ import annotations

import email
import email.policy
import re
import shutil
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.articles import Article, dump_article
from campaigns.preview import preview_steps
from campaigns.series import (
    BuildResult,
    build_series,
    check_gaps,
    find_series,
    format_ranges,
    list_series,
    load_series,
    paragraphs,
    resolve_step,
    split_body,
)
from cli import App, main
from funnel.errors import FunnelError, InputError, NotFound
from funnel.settings import test_settings

REPO = Path(__file__).resolve().parents[1]
CONTENT = REPO / "content"
BUNDLED = CONTENT / "series" / "importance-of-exercise"
SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"


# ----------------------------------------------------------------- the bundled series


def test_bundled_series_loads_in_order_and_ends_with_the_webinar():
    series = find_series(CONTENT, "importance-of-exercise")
    assert series.title == "The importance of exercise for low back pain"
    assert (series.cadence_days, series.send_day, series.send_hour) == (7, 1, 9)  # Tue 09:00
    assert series.stream == "series:importance-of-exercise"
    assert series.gaps == []
    assert len(series.steps) >= 6
    assert [s.part for s in series.steps] == list(range(1, len(series.steps) + 1))
    assert series.steps[0].key == "01-therapy-before-fitness"
    for step in series.steps:
        assert 250 <= step.words <= 600, (step.key, step.words)
        assert step.subject and step.preheader
        assert "{{" not in step.body_md  # bodies are content, never template source
    assert {"kind": "webinar", "text": "Reserve my spot"} in series.steps[-1].ctas
    # The webinar is chosen when each email is built: the content names none, and
    # reads well when no webinar is open and the CTA is left out.
    for step in series.steps:
        assert "webinar" not in (step.body_md + step.preheader + step.subject).lower(), step.key
    assert all(c["kind"] != "webinar" for s in series.steps[:-1] for c in s.ctas)


@pytest.mark.parametrize(
    ("part", "must_mention"),
    [
        (1, ["therapeutic", "imbalance"]),
        (2, ["psoas", "glutes", "sitting"]),
        (3, ["abdominals", "spasm", "supermans"]),
        (4, ["60 seconds", "bridge", "hamstrings"]),
        (5, ["thoracic", "morning and evening", "pain-free", "sit"]),
        (6, ["compound", "low", "resistance", "deep tissue"]),
    ],
)
def test_each_bundled_part_covers_its_topic(part, must_mention):
    step = find_series(CONTENT, "importance-of-exercise").steps[part - 1]
    for phrase in must_mention:
        assert phrase.lower() in step.body_md.lower(), (step.key, phrase)


def _words(text: str) -> list[str]:
    text = text.lower().replace("’", "'").replace("‘", "'")
    return re.findall(r"[a-z0-9']+", text)


def test_no_seed_sentence_is_copied_into_the_bundled_series():
    if not SEEDS.is_dir():
        pytest.skip(f"the clinic's seed articles are not at {SEEDS}")
    run = 8
    seed_runs: set[tuple[str, ...]] = set()
    for seed in sorted(SEEDS.glob("*")):
        words = _words(seed.read_text(encoding="utf-8", errors="replace"))
        seed_runs.update(tuple(words[i : i + run]) for i in range(len(words) - run + 1))
    assert len(seed_runs) > 1000  # the seeds were really read
    for step in find_series(CONTENT, "importance-of-exercise").steps:
        words = _words(step.path.read_text(encoding="utf-8"))
        copied = [
            " ".join(words[i : i + run])
            for i in range(len(words) - run + 1)
            if tuple(words[i : i + run]) in seed_runs
        ]
        assert copied == [], f"{step.key} copies seed text: {copied[:3]}"


def test_bundled_webinar_is_sensible():
    data = tomllib.loads((CONTENT / "webinars" / "spine-health.toml").read_text())
    assert data["slug"] == "spine-health"
    assert data["title"] == "Spine Health Webinar"
    assert data["timezone"] == "Europe/London"
    assert data["start"] == "thursday 18:00"  # a standing weekly slot: never goes stale
    assert data["duration"] == 60 and data["capacity"] == 100
    assert data["join_url"].startswith("https://")
    assert data["offer"] == "appointment"
    assert data["reminders"] == [1440, 60, 10]
    assert len(data["description"].split()) >= 20 and data["host"]


# ----------------------------------------------------------------- strict loading

SERIES_TOML = """\
title = "Demo"
cadence = "weekly"
send_day = "tuesday"
send_hour = 9
steps = ["01-a.md", "02-b.md"]
"""

STEP_A = """\
---
title: First
part: 1
subject: First subject
preheader: First preheader
ctas:
  - kind: appointment
    text: Book
---
Hello from the first step.
"""

STEP_B = """\
---
title: Second
part: 2
subject: Second subject
preheader: Second preheader
offset_days: 3
---
Hello from the second step.
"""


@pytest.fixture
def demo(tmp_path) -> Path:
    folder = tmp_path / "series" / "demo"
    folder.mkdir(parents=True)
    (folder / "series.toml").write_text(SERIES_TOML)
    (folder / "01-a.md").write_text(STEP_A)
    (folder / "02-b.md").write_text(STEP_B)
    return folder


def test_small_series_loads_with_defaults(demo):
    series = load_series(demo)
    assert series.slug == "demo" and series.stream == "series:demo"
    assert series.description == ""
    assert [s.key for s in series.steps] == ["01-a", "02-b"]
    assert series.steps[0].ctas == [{"kind": "appointment", "text": "Book"}]
    assert series.steps[1].offset_days == 3
    assert series.steps[1].words == 5
    assert series.steps[0].body_md == "Hello from the first step.\n"
    assert [s.slug for s in list_series(demo.parent.parent)] == ["demo"]
    assert resolve_step(series, "2").key == "02-b"
    assert resolve_step(series, "01-a").part == 1
    with pytest.raises(NotFound, match="there is no step 3"):
        resolve_step(series, "3")


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


# fmt: off
@pytest.mark.parametrize(
    ("file", "old", "new", "message"),
    [
        ("series.toml", 'cadence = "weekly"', 'colour = "red"', r"series\.toml:2: 'colour' is not a known key"),
        ("series.toml", "send_hour = 9", 'send_hour = "nine"', r"series\.toml:4: 'send_hour' must be an hour"),
        ("series.toml", "send_hour = 9", "send_hour = 24", r"series\.toml:4: 'send_hour' must be an hour"),
        ("series.toml", 'send_day = "tuesday"', 'send_day = "funday"', r"series\.toml:3: 'send_day' must be a weekday"),
        ("series.toml", 'cadence = "weekly"', 'cadence = "sometimes"', r"series\.toml:2: 'cadence' 'sometimes' is not understood"),
        ("series.toml", 'cadence = "weekly"', "cadence = 7", r"series\.toml:2: 'cadence' must be a string"),
        ("series.toml", 'title = "Demo"', 'title = ["Demo"]', r"series\.toml:1: 'title' must be a string"),
        ("series.toml", 'title = "Demo"\n', "", r"series\.toml: 'title' is missing"),
        ("series.toml", '"02-b.md"]', '"02-b.md", "03-c.md"]', r"series\.toml:5: 'steps' lists '03-c\.md' but .*03-c\.md does not exist"),
        ("series.toml", 'steps = ["01-a.md", "02-b.md"]', 'steps = ["02-b.md", "01-a.md"]', r"'steps' lists '01-a\.md' \(part 1\) after 02-b\.md \(part 2\)"),
        ("series.toml", 'title = "Demo"', 'title = "Demo', r"series\.toml: not valid TOML"),
        ("02-b.md", "part: 2", "part: 1", r"02-b\.md: front matter 'part' 1 is also used by 01-a\.md"),
        ("02-b.md", "part: 2", "part: two", r"02-b\.md:3: front matter 'part' must be a positive integer"),
        ("02-b.md", "offset_days: 3", "offset_days: -1", r"02-b\.md:6: front matter 'offset_days' must be a whole number"),
        ("02-b.md", "offset_days: 3", "colour: red", r"02-b\.md:6: front matter 'colour' is not a known key"),
        ("02-b.md", "subject: Second subject\n", "", r"02-b\.md: front matter 'subject' is missing"),
        ("02-b.md", "subject: Second subject", "subject: [1, 2]", r"02-b\.md:4: front matter 'subject' must be a non-empty string"),
        ("01-a.md", "kind: appointment", "kind: coupon", r"01-a\.md:6: front matter 'ctas' item 1 has unknown kind 'coupon'"),
        ("01-a.md", "    text: Book\n", "", r"01-a\.md:6: front matter 'ctas' item 1 needs a non-empty 'text'"),
        ("01-a.md", "title: First", "title: [unclosed", r"01-a\.md:\d+: front matter is not valid YAML"),
        ("01-a.md", "---\ntitle", "title", r"01-a\.md:1: front matter missing"),
    ],
)
# fmt: on
def test_bad_input_names_file_and_field(demo, file, old, new, message):
    _edit(demo / file, old, new)
    with pytest.raises(InputError, match=message):
        load_series(demo)


def test_unknown_series_lists_the_known_ones(demo):
    with pytest.raises(NotFound, match=r"series 'nope' not found in .*; known series: demo"):
        find_series(demo.parent.parent, "nope")


def test_gaps_block_scheduling_unless_allowed(demo):
    (demo / "01-a.md").unlink()
    _edit(demo / "series.toml", '"01-a.md", ', "")
    _edit(demo / "02-b.md", "part: 2", "part: 4")
    series = load_series(demo)
    assert series.gaps == [1, 2, 3]
    with pytest.raises(FunnelError) as err:
        check_gaps(series, allow_gaps=False)
    assert str(err.value) == (
        "series demo: parts 1-3 missing; pass --allow-gaps to schedule it anyway"
    )
    check_gaps(series, allow_gaps=True)  # allowed: returns without raising
    assert check_gaps(load_series(BUNDLED), allow_gaps=False) is None


def test_format_ranges():
    assert format_ranges([8, 1, 2, 3, 5, 7]) == "1-3, 5, 7-8"
    assert format_ranges([4]) == "4"


# ----------------------------------------------------------------- building


def write_article(folder: Path, slug: str, part: int | None, body: str, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    article = Article(
        slug=slug,
        title=f"Back basics part {part}" if part else "Back basics",
        body_md=body,
        series="back-basics",
        part=part,
        **extra,
    )
    path = folder / f"{slug}.md"
    path.write_text(dump_article(article))
    return path


def _load(paths):
    from campaigns.articles import load_article

    return [load_article(p) for p in paths]


def test_build_orders_by_part_and_reports_gaps(tmp_path):
    arts = tmp_path / "articles"
    paths = [
        write_article(arts, "part-6", 6, "Sixth article body text here."),
        write_article(arts, "part-4", 4, "Fourth article body. It has two sentences."),
        write_article(
            arts,
            "part-5",
            5,
            "Fifth article body.",
            ctas=[{"kind": "webinar", "text": "Join the webinar"}],
            subject="My own subject",
        ),
    ]
    result = build_series("back-basics", _load(paths), tmp_path / "series", send_day="Tuesday")
    assert isinstance(result, BuildResult)
    series = result.series
    assert [s.key for s in series.steps] == ["01-part-4", "02-part-5", "03-part-6"]
    assert [s.part for s in series.steps] == [4, 5, 6]  # the articles' own part numbers
    assert series.title == "Back basics"
    assert series.send_day == 1
    assert series.steps[0].subject == "Back basics part 4"
    assert series.steps[0].preheader == "Fourth article body."
    assert series.steps[1].subject == "My own subject"
    assert series.steps[1].ctas == [{"kind": "webinar", "text": "Join the webinar"}]
    assert result.gaps == [1, 2, 3] and series.gaps == [1, 2, 3]
    assert "parts 1-3 missing" in result.warning
    toml = (tmp_path / "series" / "back-basics" / "series.toml").read_text()
    assert "gaps = [1, 2, 3]" in toml
    with pytest.raises(FunnelError, match="parts 1-3 missing; pass --allow-gaps"):
        check_gaps(series, allow_gaps=False)


def test_build_refuses_duplicates_and_existing_folders(tmp_path):
    arts = tmp_path / "articles"
    one = write_article(arts, "a", 1, "First body.")
    dup = write_article(arts, "b", 1, "Another first body.")
    with pytest.raises(InputError, match=r"b\.md: front matter 'part' 1 is also used by .*a\.md"):
        build_series("x", _load([one, dup]), tmp_path / "series")
    assert not (tmp_path / "series" / "x").exists()  # nothing half-written
    nopart = write_article(arts, "c", None, "No part.")
    with pytest.raises(InputError, match=r"c\.md: front matter 'part' is missing"):
        build_series("x", _load([one, nopart]), tmp_path / "series")
    alone = build_series("alone", _load([nopart]), tmp_path / "other")  # a lone article is part 1
    assert [s.key for s in alone.series.steps] == ["01-c"] and alone.gaps == []

    build_series("x", _load([one]), tmp_path / "series")
    with pytest.raises(InputError, match=r"x already exists; pass --force"):
        build_series("x", _load([one]), tmp_path / "series")
    two = write_article(arts, "d", 2, "Second body.")
    again = build_series("x", _load([one, two]), tmp_path / "series", force=True)
    assert [s.key for s in again.series.steps] == ["01-a", "02-d"]
    assert sorted(p.name for p in (tmp_path / "series").iterdir()) == ["x"]  # no staging left


def _long_body(sections: int = 6, paras: int = 6, words: int = 80) -> str:
    blocks = []
    n = 0
    for s in range(sections):
        blocks.append(f"## Section {s}")
        for _ in range(paras):
            n += 1
            blocks.append(" ".join(f"w{n}x{i}" for i in range(words)) + ".")
    return "\n\n".join(blocks) + "\n"


def _strip_teasers(parts: list[str]) -> list[str]:
    out = []
    for i, part in enumerate(parts):
        blocks = paragraphs(part)
        if i + 1 < len(parts):
            assert re.fullmatch(r"\*Next week: .+\*", blocks[-1]), blocks[-1]
            blocks = blocks[:-1]
        out.extend(blocks)
    return out


def test_long_article_split_loses_nothing():
    body = _long_body()  # 36 paragraphs of 80 words + headings: ~2,900 words
    parts = split_body(body)
    assert len(parts) == 3
    assert _strip_teasers(parts) == paragraphs(body)
    for i, part in enumerate(parts):
        words = len(part.split())
        assert 700 <= words <= 1300, words
        if i:  # a part never ends on a heading; the next part starts with one
            assert paragraphs(part)[0].startswith("## Section")
    # The teaser names what comes next.
    assert paragraphs(parts[0])[-1] == f"*Next week: {paragraphs(parts[1])[0][3:]}*"
    assert split_body("Short.\n") == ["Short.\n"]


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 700), min_size=1, max_size=25),
    limit=st.integers(200, 1500),
)
def test_split_property_nothing_dropped(sizes, limit):
    body = "\n\n".join(" ".join(f"p{n}w{i}" for i in range(size)) for n, size in enumerate(sizes))
    parts = split_body(body, max_words=limit)
    assert _strip_teasers(parts) == paragraphs(body)


def test_build_splits_long_articles_into_consecutive_steps(tmp_path):
    arts = tmp_path / "articles"
    paths = [
        write_article(arts, "part-1", 1, "A short first part."),
        write_article(
            arts, "part-2", 2, _long_body(), ctas=[{"kind": "appointment", "text": "Book"}]
        ),
        write_article(arts, "part-3", 3, "A short last part."),
    ]
    result = build_series("long", _load(paths), tmp_path / "series")
    keys = [s.key for s in result.series.steps]
    assert keys == ["01-part-1", "02-part-2-1", "03-part-2-2", "04-part-2-3", "05-part-3"]
    assert [s.part for s in result.series.steps] == [1, 2, 3, 4, 5]
    assert result.split == {str(paths[1]): 3}
    assert result.gaps == [] and result.warning is None
    middle = result.series.steps[1:4]
    assert [s.subject for s in middle] == [f"Back basics part 2 ({i}/3)" for i in (1, 2, 3)]
    assert [bool(s.ctas) for s in middle] == [False, False, True]  # CTA after the last piece
    assert _strip_teasers([s.body_md for s in middle]) == paragraphs(_long_body())


# ----------------------------------------------------------------- CLI


@pytest.fixture
def cli(tmp_path):
    content = tmp_path / "content"
    shutil.copytree(CONTENT / "series", content / "series")
    s = test_settings(tmp_path, content_dir=str(content))
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, list(args), obj=App(settings_override=s))

    invoke.content = content
    return invoke


def test_cli_series_list_and_show(cli):
    result = cli("series", "list")
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if ln.startswith("importance-of-exercise"))
    assert re.search(r"low back pain\s+6\s+weekly \(Tue 09:00\)\s+series:importance-of-exercise", line)

    result = cli("series", "show", "importance-of-exercise")
    assert result.exit_code == 0, result.output
    rows = [ln.split() for ln in result.output.splitlines() if re.match(r"\d\s", ln)]
    assert [(r[0], r[1], r[3]) for r in rows] == [
        ("1", "1", "now"),
        *[(str(i), str(i), "+7d") for i in range(2, 7)],
    ]
    assert rows[3][2] == "04-psoas-stretch-and-bridge"

    result = cli("series", "show", "nope")
    assert result.exit_code == 1
    assert "series 'nope' not found" in result.output


def test_cli_series_show_timeline_across_dst(cli):
    # Saturday before London's spring switch: part 2 lands on Tue 31 March, BST.
    result = cli(
        "series", "show", "importance-of-exercise",
        "--timeline", "--tz", "Europe/London", "--start", "2026-03-21 10:00",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.output
    assert "confirms Sat 2026-03-21 10:00 GMT" in out
    assert re.search(r"^1\s+1\s+Sat 2026-03-21 10:00 GMT\s+2026-03-21 10:00 UTC\s+Your back", out, re.M)
    assert re.search(r"^2\s+2\s+Tue 2026-03-31 09:00 BST\s+2026-03-31 08:00 UTC", out, re.M)
    assert re.search(r"^6\s+6\s+Tue 2026-04-28 09:00 BST\s+2026-04-28 08:00 UTC", out, re.M)

    # Same moment, New York reader: 06:00 local is quiet, so part 1 waits for 08:00.
    result = cli(
        "series", "show", "importance-of-exercise",
        "--timeline", "--tz", "America/New_York", "--start", "2026-03-21 06:00",
    )  # fmt: skip
    assert re.search(r"^1\s+1\s+Sat 2026-03-21 08:00 EDT\s+2026-03-21 12:00 UTC", result.output, re.M)

    bad = cli("series", "show", "importance-of-exercise", "--timeline", "--tz", "Mars/Olympus")
    assert bad.exit_code == 1 and "--tz: unknown time zone 'Mars/Olympus'" in bad.output
    bad = cli("series", "show", "importance-of-exercise", "--timeline", "--start", "soon")
    assert bad.exit_code == 1 and "--start: 'soon' is not a time" in bad.output


def test_cli_series_build_warns_about_gaps(cli, tmp_path):
    arts = tmp_path / "articles"
    paths = [str(write_article(arts, f"part-{p}", p, f"Body {p}.")) for p in (4, 5)]
    result = cli("series", "build", "back-basics", *paths, "--send-day", "tuesday")
    assert result.exit_code == 0, result.output
    assert "parts 1-3 missing" in result.stderr
    assert f"wrote {cli.content / 'series' / 'back-basics'} (2 steps)" in result.stdout
    listed = cli("series", "list").output
    assert "[parts 1-3 missing]" in listed


# ----------------------------------------------------------------- preview


def test_preview_writes_html_text_eml_and_width_page(tmp_path, clock):
    s = test_settings(tmp_path)
    series = load_series(BUNDLED)
    out = tmp_path / "out"
    results = preview_steps(s, series, [series.steps[-1]], out, clock())
    [r] = results
    stem = "importance-of-exercise-06-strength-that-lasts"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}{ext}" for ext in (".html", ".txt", ".eml", ".preview.html")
    )
    assert r.subject == series.steps[-1].subject
    assert r.words == series.steps[-1].words and 1 < r.html_kb < 102

    html = (out / f"{stem}.html").read_text()
    assert "Spine Health Webinar" in html  # a sample open webinar for the webinar CTA
    assert s.url("/w/sample-webinar?t=sample-token").replace("&", "&amp;") in html
    text = (out / f"{stem}.txt").read_text()
    assert "Train movements, not muscles" in text and s.postal_address in text

    msg = email.message_from_bytes((out / f"{stem}.eml").read_bytes(), policy=email.policy.default)
    assert msg["Subject"] == series.steps[-1].subject
    assert msg["To"].addresses[0].addr_spec == "alex@example.com"
    assert msg["From"].addresses[0].addr_spec == s.from_addr
    assert msg["Date"].datetime == clock()
    assert re.fullmatch(r"<[^@]+@" + re.escape(s.sender_domain) + ">", msg["Message-ID"])
    assert "series.importance-of-exercise" in msg["List-Id"]
    assert s.url("/u/") in msg["List-Unsubscribe"] and "mailto:" in msg["List-Unsubscribe"]
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg.get_content_type() == "multipart/alternative"
    plain = msg.get_body(("plain",)).get_content()
    assert "Train movements, not muscles" in plain
    # The MIME part carries the same HTML (with CRLF line ends, as on the wire).
    assert msg.get_body(("html",)).get_content().replace("\r\n", "\n").strip() == html.strip()

    page = (out / f"{stem}.preview.html").read_text()
    assert page.count("<iframe") == 2
    assert 'width="375"' in page and 'width="800"' in page
    assert "srcdoc=\"&lt;!doctype html&gt;" in page.lower().replace("&#x27;", "'")


def test_cli_preview_one_step_and_all(cli, tmp_path):
    out = tmp_path / "pv"
    result = cli("preview", "importance-of-exercise", "4", "--to", str(out))
    assert result.exit_code == 0, result.output
    assert "subject:   Two exercises to rebalance your hips" in result.output
    assert re.search(r"04-psoas-stretch-and-bridge: \d+\.\d KB HTML, \d+ words", result.output)
    assert len(list(out.iterdir())) == 4

    result = cli("preview", "--all", "--to", str(out))
    assert result.exit_code == 0, result.output
    assert "wrote 136 files" in result.output  # 4 per step: 6 weekly parts, 28 course days
    assert len(list(out.glob("*.eml"))) == 34

    bad = cli("preview", "importance-of-exercise", "99", "--to", str(out))
    assert bad.exit_code == 1 and "there is no step 99" in bad.output
    bad = cli("preview", "importance-of-exercise", "--to", str(out))
    assert bad.exit_code == 2 and "give SERIES and STEP, or --all" in bad.output


def test_local_content_folder_does_not_hide_the_bundled_series(tmp_path, monkeypatch):
    """After `funnel content import` creates ./content/, the bundled series is still found."""
    from campaigns.series import find_series, list_series
    from funnel.settings import test_settings

    monkeypatch.chdir(tmp_path)
    (tmp_path / "content" / "articles").mkdir(parents=True)
    s = test_settings(tmp_path)
    assert s.content_path == tmp_path / "content"
    assert find_series(s.content_paths, "importance-of-exercise").title.startswith("The importance")
    # A local series of the same name wins over the bundled one.
    bundled = find_series(s.content_paths, "importance-of-exercise")
    local = tmp_path / "content" / "series" / "importance-of-exercise"
    local.mkdir(parents=True)
    (local / "series.toml").write_text(
        (bundled.path / "series.toml").read_text().replace(bundled.title, "Our own version")
    )
    for step in bundled.steps:
        (local / step.path.name).write_text(step.path.read_text())
    assert find_series(s.content_paths, "importance-of-exercise").title == "Our own version"
    assert [x.slug for x in list_series(s.content_paths)].count("importance-of-exercise") == 1
