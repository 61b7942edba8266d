"""Segments: every key, composition, OR, bound parameters, and one-sentence errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

import cli
from funnel.db import iso
from funnel.errors import InputError, NotFound
from subscribers import lifecycle, segments
from subscribers.segments import compile_segment, count, iter_members

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


@pytest.fixture
def settings(offline_settings):
    """No mail goes out here: skip starting an SMTP server for every case."""
    return offline_settings


def add(db, email, *, status="active", tz=None, source="web", created=T0, streams=("broadcasts",)):
    sid = db.execute(
        "INSERT INTO subscribers (email, email_hash, timezone, source, status, created_at, "
        "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (email, lifecycle.email_hash(email), tz, source, status, iso(created), iso(created)),
    ).lastrowid
    for stream in streams:
        db.execute(
            "INSERT INTO subscriptions (subscriber_id, stream, status, updated_at) "
            "VALUES (?, ?, 'subscribed', ?)",
            (sid, stream, iso(created)),
        )
    return sid


@pytest.fixture
def people(db):
    return make_people(db)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One read-only database for the many key cases (setup dominates their cost)."""
    from funnel.db import connect
    from funnel.settings import test_settings

    tmp = tmp_path_factory.mktemp("segments")
    s = test_settings(tmp, smtp_urls=("smtp://127.0.0.1:9?timeout=1",))
    database = connect(s.db, migrate=True)
    p = make_people(database)
    yield database, s, p
    database.close()


def make_people(db):
    p = {
        "ann": add(db, "ann@example.com", tz="Europe/London", source="clinic-desk"),
        "bob": add(
            db,
            "bob@example.com",
            tz="America/New_York",
            created=datetime(2025, 6, 1, 12, tzinfo=UTC),
        ),
        "cat": add(db, "cat@example.com", streams=("webinars",)),  # no tz: clinic default
        "dan": add(db, "dan@example.com", status="unsubscribed", streams=()),
        "eve": add(db, "eve@example.com", status="pending"),
    }
    for sid, parts in ((p["ann"], 4), (p["bob"], 2)):
        for part in range(1, parts + 1):
            db.execute(
                "INSERT INTO series_deliveries (subscriber_id, series, step_key, part, at) "
                "VALUES (?, 'importance-of-exercise', ?, ?, ?)",
                (sid, f"step-{part}", part, iso(T0)),
            )
    wid = db.execute(
        "INSERT INTO webinars (slug, title, starts_at, timezone, join_url, created_at, updated_at) "
        "VALUES ('spine-health', 'Spine', ?, 'Europe/London', 'https://x.example', ?, ?)",
        (iso(T0 + timedelta(days=7)), iso(T0), iso(T0)),
    ).lastrowid
    for sid, state in ((p["ann"], "registered"), (p["bob"], "attended")):
        db.execute(
            "INSERT INTO registrations (webinar_id, subscriber_id, status, registered_at, "
            "updated_at) VALUES (?, ?, ?, ?, ?)",
            (wid, sid, state, iso(T0), iso(T0)),
        )
    return p


def members(db, settings, *exprs, segment=None, **kw):
    ids = set()
    for batch in iter_members(db, settings, segment if segment else list(exprs), batch=2, **kw):
        assert len(batch) <= 2
        ids |= {sid for sid, _email in batch}
    return ids


@pytest.mark.parametrize(
    "exprs, expected",
    [
        (["status=active"], {"ann", "bob", "cat"}),
        (["status!=active"], {"dan", "eve"}),
        (["stream=broadcasts"], {"ann", "bob", "eve"}),
        (["stream!=broadcasts"], {"cat", "dan"}),
        (["source=clinic-desk"], {"ann"}),
        (["source!=clinic-desk", "status=active"], {"bob", "cat"}),
        (["signed_up>=2026-01-01"], {"ann", "cat", "dan", "eve"}),
        (["signed_up<2026-01-01"], {"bob"}),
        (["signed_up=2025-06-01"], {"bob"}),
        (["signed_up>2026-11-21"], set()),
        (["series:importance-of-exercise>=3"], {"ann"}),
        (["series:importance-of-exercise>=2"], {"ann", "bob"}),
        (["series:importance-of-exercise=0"], {"cat", "dan", "eve"}),
        (["series:importance-of-exercise<3", "status=active"], {"bob", "cat"}),
        (["tz=Europe/London"], {"cat", "dan", "eve", "ann"}),  # unknown zone = clinic's
        (["tz=America/New_York"], {"bob"}),
        (["tz!=Europe/London"], {"bob"}),
        (["webinar:spine-health=registered"], {"ann"}),
        (["webinar:spine-health!=registered", "status=active"], {"bob", "cat"}),
        (["webinar:spine-health=any"], {"ann", "bob"}),
        (["webinar:other=registered"], set()),
        (["tz=America/New_York|source=clinic-desk"], {"ann", "bob"}),
        (["segment:all"], {"ann", "bob"}),
        (["segment:all", "series:importance-of-exercise>=3"], {"ann"}),
    ],
)
def test_every_key(shared, exprs, expected):
    db, settings, people = shared
    ids = {people[n] for n in expected}
    assert members(db, settings, *exprs, now=T0) == ids
    assert count(db, settings, exprs, now=T0) == len(ids)


def test_builtin_all_and_pauses(db, settings, people):
    assert members(db, settings, segment="all", now=T0) == {people["ann"], people["bob"]}
    db.execute(
        "UPDATE subscriptions SET status = 'paused', paused_until = ? WHERE subscriber_id = ?",
        (iso(T0 + timedelta(days=3)), people["ann"]),
    )
    assert members(db, settings, segment="all", now=T0) == {people["bob"]}
    later = T0 + timedelta(days=4)  # the pause has ended
    assert members(db, settings, segment="all", now=later) == {people["ann"], people["bob"]}


def test_stream_scope_limits_any_segment_to_mailable_people(db, settings, people):
    got = members(db, settings, "signed_up>=2026-01-01", now=T0, stream="broadcasts")
    assert got == {people["ann"]}  # eve is pending, dan unsubscribed, cat not on broadcasts


def test_values_are_bound_parameters(db, settings, people):
    evil = "x' OR 1=1 --"
    for expr in (f"source={evil}", f"status!=active|source={evil}"):
        sql, params = compile_segment(settings, [expr])
        assert evil not in sql and evil in params
    assert members(db, settings, f"source={evil}") == set()
    # The != form of it matches everyone with a different source, not everyone.
    assert len(members(db, settings, f"source!={evil}")) == 5
    with pytest.raises(InputError):
        compile_segment(settings, [f"tz={evil}"])
    assert db.execute("SELECT COUNT(*) FROM subscribers").fetchone()[0] == 5


@pytest.mark.parametrize(
    "expr, message",
    [
        (
            "colour=blue",
            "--where 'colour=blue': unknown key 'colour'; keys are status, stream, "
            "source, signed_up, series:<slug>, tz, webinar:<slug>",
        ),
        ("series>=3", "unknown key 'series'"),
        ("status>active", "operator '>' does not apply to 'status'; use = !="),
        ("status", "missing operator after 'status'"),
        ("status=", "missing value after status="),
        ("status=happy", "unknown status 'happy'"),
        ("signed_up>=yesterday", "'yesterday' is not a date like 2026-01-31"),
        ("series:importance-of-exercise>=three", "must be a part number"),
        ("series:no-such-series>=3", "unknown series 'no-such-series' (known: 28-day-programme, importance-of-exercise"),
        ("tz=Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
        ("webinar:spine-health=maybe", "unknown registration state 'maybe'"),
        ("webinar:spine-health>registered", "operator '>' does not apply"),
        ("tz=Europe/London|", "empty alternative"),
        ("=x", "not an expression"),
    ],
)
def test_bad_expressions_name_the_expression(settings, expr, message):
    with pytest.raises(InputError) as info:
        compile_segment(settings, [expr])
    text = str(info.value)
    assert message in text and "\n" not in text
    assert text.startswith(f"--where {expr!r}")


def test_named_segments_from_toml_compose(db, settings, people, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "segments.toml").write_text(
        "[segments.engaged]\n"
        'description = "Half-way through the series"\n'
        'where = ["series:importance-of-exercise>=3", "status=active"]\n'
        "\n[segments.engaged-londoners]\n"
        'where = ["segment:engaged", "tz=Europe/London"]\n'
    )
    assert members(db, settings, segment="engaged") == {people["ann"]}
    assert members(db, settings, segment="engaged-londoners") == {people["ann"]}
    names = [s["name"] for s in segments.listing(db, settings, T0)]
    assert names == ["all", "engaged", "engaged-londoners"]
    with pytest.raises(NotFound, match="no segment named 'nope'; known segments: all, engaged"):
        compile_segment(settings, "nope")


@pytest.mark.parametrize(
    "toml, message",
    [
        ('[segments.loop]\nwhere = ["segment:loop"]\n', "refers to itself (loop -> loop)"),
        (
            '[segments.a]\nwhere = ["segment:b"]\n[segments.b]\nwhere = ["segment:a"]\n',
            "refers to itself (a -> b -> a)",
        ),
        (
            '[segments.all]\nwhere = ["status=active"]\n',
            "segments.toml:1: segment 'all' is built in",
        ),
        (
            "[segments.x]\nwhere = []\n",
            "segments.toml:1: segments.x.where must be a non-empty list",
        ),
        ('[segments.x]\nwhere = ["status=active"]\ncolour = 1\n', "unknown key 'colour'"),
        (
            '\n\n[segments.bad]\nwhere = ["colour=red"]\n',
            "segments.toml:3: segments.bad 'colour=red': unknown key 'colour'",
        ),
        ("[segments.x\n", "not valid TOML"),
    ],
)
def test_bad_segment_files(db, settings, tmp_path, monkeypatch, toml, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "segments.toml").write_text(toml)
    name = "loop" if "loop" in toml else "a" if "segments.a]" in toml else "bad"
    with pytest.raises(InputError) as info:
        compile_segment(settings, name)
    assert message in str(info.value)


def test_cli_count_and_list(cli_env, db, people, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    r = runner.invoke(cli.main, ["segments", "count", "all"], catch_exceptions=False)
    assert r.exit_code == 0 and r.output.strip() == "2"
    r = runner.invoke(
        cli.main, ["segments", "count", "all", "--where", "series:importance-of-exercise>=3"]
    )
    assert r.output.strip() == "1"
    r = runner.invoke(
        cli.main,
        [
            "segments",
            "count",
            "--where",
            "status=active",
            "--where",
            "tz=America/New_York|tz=Europe/London",
        ],
    )
    assert r.output.strip() == "3"
    r = runner.invoke(cli.main, ["segments", "count", "--where", "colour=blue"])
    assert r.exit_code == 1
    assert "Error: --where 'colour=blue': unknown key 'colour'; keys are" in r.output
    r = runner.invoke(cli.main, ["segments", "list"], catch_exceptions=False)
    assert r.output.splitlines()[1].split()[:2] == ["all", "2"]
