"""Series enrollment and the scheduler: confirm -> part 1 on the next tick, later parts on the
series' slot in the reader's zone, holds (cap, webinar, pause), unsubscribe, and
editing a live series without ever re-sending a step."""

from __future__ import annotations

import json
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

import cli
from campaigns import enrollment, holds, schedule
from campaigns.enrollment import next_step_index, schedule_series
from campaigns.sender import send_due
from campaigns.series import find_series
from funnel import outbox
from funnel.db import iso, parse_iso
from funnel.errors import FunnelError
from subscribers import lifecycle, optin, tokens

SLUG = "importance-of-exercise"
NEW_YORK = ZoneInfo("America/New_York")


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def next_weekday_at(after: datetime, weekday: int, hour: int, tz: ZoneInfo) -> datetime:
    """The first ``hour:00`` in ``tz`` on ``weekday`` (0 = Monday) strictly after ``after``."""
    local = after.astimezone(tz)
    day = local.date() + timedelta(days=(weekday - local.weekday()) % 7)
    slot = datetime.combine(day, time(hour), tzinfo=tz)
    return slot if slot > after else datetime.combine(day + timedelta(days=7), time(hour), tzinfo=tz)


def confirmed(db, settings, email, now, tz=None) -> int:
    """Sign up and click the confirm link, as a reader does; then the worker's next tick
    (at the same instant) enrols them and queues part 1 if it is due."""
    r = optin.signup(db, settings, email, now, timezone=tz)
    sub = lifecycle.get(db, r.subscriber_id)
    optin.confirm(db, settings, tokens.confirm_token(settings, sub.id, sub.confirm_nonce, now), now)
    schedule_series(db, settings, now)
    return sub.id


def write_series(
    root: Path,
    slug: str,
    steps: list[tuple[str, int]],
    *,
    send_day="tuesday",
    send_hour=9,
    cadence="weekly",
) -> Path:
    """A small series: steps are (key, part); each subject is 'Subject <key>'."""
    folder = root / "series" / slug
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.md"):
        old.unlink()
    for key, part in steps:
        (folder / f"{key}.md").write_text(
            f"---\ntitle: Title {key}\npart: {part}\nsubject: Subject {key}\n---\n"
            f"Body of {key}. Move gently and often.\n",
            encoding="utf-8",
        )
    names = ", ".join(f'"{k}.md"' for k, _ in steps)
    day = f'send_day = "{send_day}"\n' if send_day else ""
    (folder / "series.toml").write_text(
        f'title = "Demo {slug}"\ncadence = "{cadence}"\n{day}send_hour = {send_hour}\n'
        f"steps = [{names}]\n",
        encoding="utf-8",
    )
    return folder


@pytest.fixture
def demo(tmp_path, settings):
    """Settings whose content folder holds the series 'demo' with steps a, b, c, d."""
    content = tmp_path / "content"
    write_series(content, "demo", [("a", 1), ("b", 2), ("c", 3), ("d", 4)])
    return settings.replace(content_dir=str(content), enroll_series=("demo",))


def sent_keys(db, sid, slug="demo") -> list[str]:
    return [
        r[0]
        for r in db.execute(
            "SELECT step_key FROM series_deliveries WHERE subscriber_id = ? AND series = ? "
            "ORDER BY at, rowid",
            (sid, slug),
        )
    ]


def enrollment_row(db, sid, slug="demo") -> dict:
    return next(
        db.query("SELECT * FROM enrollments WHERE subscriber_id = ? AND series = ?", (sid, slug))
    )


# ----------------------------------------------------------------- the rule
@pytest.mark.parametrize(
    "keys, received, expected",
    [
        (["a", "b", "c"], [], "a"),
        (["a", "b", "c"], ["a"], "b"),
        (["a", "b", "c"], ["a", "b", "c"], None),
        (["a", "x", "b", "c"], ["a", "b"], "c"),  # inserted behind the reader: skipped
        (["a", "b", "x", "c"], ["a", "b"], "x"),  # inserted ahead: sent next
        (["a", "c"], ["a", "b"], "c"),  # their last step was removed: continue after a
        (["b", "a", "c"], ["a", "b"], "c"),  # reordered: nothing twice
        (["a", "c", "b"], ["a", "b"], None),  # c now sits before b, which they had last
        (["b", "x", "a", "c"], ["a", "b"], "x"),  # after b (last received), skipping a
        (["x", "y"], ["a", "b"], "x"),  # everything replaced
    ],
)
def test_next_step_rule(keys, received, expected):
    index = next_step_index(keys, received)
    assert (keys[index] if index is not None else None) == expected
    if index is not None:
        assert keys[index] not in received


# ----------------------------------------------------------------- confirm -> part 1 on the next tick
def test_confirm_queues_part_1_and_it_is_delivered(db, settings, clock, smtp_server):
    series = find_series(settings.content_path, SLUG)
    clock.set(utc(2026, 11, 21, 15, 0))  # Saturday 10:00 in New York
    sid = confirmed(db, settings, "sam@example.com", clock(), tz="America/New_York")

    row = db.execute(
        "SELECT kind, stream, ref, dedupe_key, priority, due_at, expires_at FROM outbox "
        "WHERE kind = 'series'"
    ).fetchone()
    key = series.steps[0].key
    assert row == (
        "series",
        f"series:{SLUG}",
        f"series:{SLUG}:{key}",
        f"series:{SLUG}:{key}:{sid}",
        outbox.PRIORITY_SERIES,
        iso(clock()),
        iso(clock() + timedelta(hours=settings.newsletter_expiry_hours)),
    )
    summary = send_due(db, settings, clock)
    assert summary.sent == 1  # part 1; the confirmation itself is skipped (already active)
    (msg,) = [m for m in smtp_server.to("sam@example.com")]
    parsed = msg.message
    assert parsed["Subject"] == series.steps[0].subject
    assert parsed["List-Unsubscribe"].startswith(f"<{settings.base_url}/u/")
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "Part 1" in msg.part("plain")

    # Part 2: the series' send day and hour in New York, as step_due_times says.
    expected = schedule.step_due_times(series, clock(), NEW_YORK)[1]
    assert expected.astimezone(NEW_YORK).strftime("%a %H:%M") == "Tue 09:00"
    e = enrollment_row(db, sid, SLUG)
    assert parse_iso(e["next_due_at"]) == expected and e["next_step"] == 1
    clock.set(expected - timedelta(minutes=1))
    assert schedule_series(db, settings, clock()) == 0
    clock.set(expected)
    assert schedule_series(db, settings, clock()) == 1
    send_due(db, settings, clock)
    subjects = [m.message["Subject"] for m in smtp_server.to("sam@example.com")]
    assert subjects == [series.steps[0].subject, series.steps[1].subject]
    assert sent_keys(db, sid, SLUG) == [series.steps[0].key, series.steps[1].key]


def test_part_1_waits_for_the_end_of_quiet_hours(db, demo, clock):
    clock.set(utc(2026, 11, 21, 4, 0))  # 23:00 in New York
    confirmed(db, demo, "night@example.com", clock(), tz="America/New_York")
    assert db.execute("SELECT COUNT(*) FROM outbox WHERE kind = 'series'").fetchone()[0] == 0
    clock.set(utc(2026, 11, 21, 13, 0))  # 08:00 in New York
    assert schedule_series(db, demo, clock()) == 1


def test_confirm_with_a_broken_series_still_confirms(db, demo, clock, tmp_path):
    (Path(demo.content_dir) / "series" / "demo" / "series.toml").write_text("title = 3\n")
    sid = confirmed(db, demo, "x@example.com", clock())
    assert lifecycle.get(db, sid).status == "active"
    assert enrollment_row(db, sid)["status"] == "active"
    assert schedule_series(db, demo, clock()) == 0  # reported, not raised
    report = enrollment.TickReport()
    schedule_series(db, demo, clock(), report=report)
    assert report.problems and "series demo" in report.problems[0]


def test_confirm_does_not_enrol_in_a_series_with_gaps(db, demo, clock):
    """Scheduling a gapped series needs --allow-gaps, which confirming can't give."""
    from campaigns import worker

    write_series(Path(demo.content_dir), "demo", [("c", 3), ("d", 4)])  # parts 1-2 missing
    sid = confirmed(db, demo, "x@example.com", clock())
    assert lifecycle.get(db, sid).status == "active"
    assert db.execute("SELECT COUNT(*) FROM enrollments").fetchone()[0] == 0
    problems = worker.tick(db, demo, clock())["problems"]
    assert any("parts 1-2 missing" in p and "--allow-gaps" in p for p in problems), problems


def test_changing_zone_moves_the_next_step_to_the_new_zones_slot(db, demo, clock):
    from subscribers.preferences import update_preferences

    clock.set(utc(2026, 11, 21, 10, 0))
    sid = confirmed(db, demo, "mover@example.com", clock(), tz="Europe/London")
    assert parse_iso(enrollment_row(db, sid)["next_due_at"]) == utc(2026, 12, 1, 9, 0)
    update_preferences(db, demo, sid, {"name": "", "timezone": "Asia/Tokyo", "streams": [
        "broadcasts", "webinars", "series:demo"], "pause_weeks": "keep"}, clock())
    schedule_series(db, demo, clock())
    # Tuesday 09:00 in Tokyo is Tuesday 00:00 UTC, nine hours before London's slot.
    assert parse_iso(enrollment_row(db, sid)["next_due_at"]) == utc(2026, 12, 1, 0, 0)


def test_cli_send_runs_the_scheduler_first(cli_env, demo, clock, smtp_server, monkeypatch, db):
    monkeypatch.setenv("FUNNEL_CONTENT_DIR", demo.content_dir)
    monkeypatch.setenv("FUNNEL_ENROLL_SERIES", "demo")
    monkeypatch.setattr(cli.App, "now", lambda self: clock())
    clock.set(utc(2026, 11, 21, 10, 0))
    confirmed(db, demo, "cron@example.com", clock())
    db.execute("DELETE FROM outbox")  # as if part 1 had gone already
    clock.set(utc(2026, 12, 1, 9, 0))
    r = CliRunner().invoke(cli.main, ["send", "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert r.output.startswith("1 sent")
    assert [m.message["Subject"] for m in smtp_server.messages] == ["Subject b"]


# ----------------------------------------------------------------- unsubscribe / pause
def test_unsubscribing_stops_the_series(db, demo, clock):
    a = confirmed(db, demo, "a@example.com", clock())
    b = confirmed(db, demo, "b@example.com", clock())
    lifecycle.unsubscribe(db, a, clock())  # everything
    lifecycle.set_subscription(db, b, "series:demo", "unsubscribed", clock())  # only the series
    cancelled = db.execute(
        "SELECT COUNT(*) FROM outbox WHERE kind = 'series' AND status = 'cancelled'"
    ).fetchone()[0]
    assert cancelled == 2
    clock.advance(days=30)
    assert schedule_series(db, demo, clock()) == 0
    assert enrollment_row(db, a)["status"] == "stopped"
    assert enrollment_row(db, b)["status"] == "stopped"
    assert (
        db.execute(
            "SELECT COUNT(*) FROM outbox WHERE kind = 'series' AND status = 'queued'"
        ).fetchone()[0]
        == 0
    )
    # Turning the series back on (preferences page) resumes after a, never re-sending it.
    clock.advance(minutes=1)
    lifecycle.set_subscription(db, b, "series:demo", "subscribed", clock())
    # Long overdue, b moves to the next regular slot (no burst of catch-up mail).
    assert schedule_series(db, demo, clock()) == 0
    slot = parse_iso(enrollment_row(db, b)["next_due_at"])
    assert slot == next_weekday_at(clock(), 1, 9, demo.zone) and slot > clock()  # Tuesday 09:00
    clock.set(slot)
    assert schedule_series(db, demo, clock()) == 1
    assert sent_keys(db, b) == ["a", "b"]
    assert enrollment_row(db, a)["status"] == "stopped"
    # Enrolling explicitly (a fresh opt-in does this) resumes a stopped enrollment too.
    db.execute("UPDATE enrollments SET status = 'stopped' WHERE subscriber_id = ?", (b,))
    series = enrollment.load(demo, "demo")
    assert enrollment.enroll(db, demo, b, "demo", clock(), series=series) == "resumed"
    assert enrollment.enroll(db, demo, b, "demo", clock(), series=series) == "already"


def test_paused_subscription_is_skipped_until_the_pause_ends(db, demo, clock):
    clock.set(utc(2026, 11, 21, 10, 0))
    sid = confirmed(db, demo, "p@example.com", clock())
    until = utc(2026, 12, 10, 0, 0)
    lifecycle.set_subscription(db, sid, "series:demo", "paused", clock(), paused_until=until)
    clock.set(utc(2026, 12, 1, 9, 0))  # Tuesday 09:00 London: b would be due
    assert schedule_series(db, demo, clock()) == 0
    resume = parse_iso(enrollment_row(db, sid)["next_due_at"])
    assert resume == utc(2026, 12, 15, 9, 0)  # first Tuesday slot after the pause
    clock.set(resume)
    assert schedule_series(db, demo, clock()) == 1
    assert sent_keys(db, sid) == ["a", "b"]


# ----------------------------------------------------------------- cap and webinar hold
def _sent(db, settings, sid, kind, at, key):
    db.execute(
        "INSERT INTO outbox (dedupe_key, kind, subscriber_id, stream, to_addr, message_id, "
        "priority, status, due_at, created_at, updated_at, sent_at) "
        "VALUES (?, ?, ?, 'broadcasts', 'x@example.com', ?, 30, 'sent', ?, ?, ?, ?)",
        (key, kind, sid, f"<{key}@x>", iso(at), iso(at), iso(at), iso(at)),
    )


def test_series_step_yields_to_the_frequency_cap(db, demo, clock):
    clock.set(utc(2026, 11, 21, 10, 0))
    sid = confirmed(db, demo, "cap@example.com", clock())
    tuesday = utc(2026, 12, 1, 9, 0)
    # A broadcast and a webinar invitation already went out that morning;
    # a webinar reminder (transactional) doesn't count.
    _sent(db, demo, sid, "broadcast", tuesday - timedelta(hours=2), "b1")
    _sent(db, demo, sid, "webinar_invite", tuesday - timedelta(hours=1), "w1")
    _sent(db, demo, sid, "webinar_reminder", tuesday - timedelta(minutes=5), "r1")
    clock.set(tuesday)
    assert schedule_series(db, demo, clock()) == 0
    later = parse_iso(enrollment_row(db, sid)["next_due_at"])
    # The window frees 24 h after the broadcast (07:00 Wed); the next 09:00 slot is later.
    assert later == utc(2026, 12, 2, 9, 0)
    clock.set(later)
    assert schedule_series(db, demo, clock()) == 1
    assert sent_keys(db, sid) == ["a", "b"]
    # The rhythm is kept: c is due the Tuesday after, not a week after the postponed b.
    assert parse_iso(enrollment_row(db, sid)["next_due_at"]) == utc(2026, 12, 8, 9, 0)


def test_broadcasts_also_wait_when_the_reader_is_at_the_cap(db, demo, clock, smtp_server):
    """No reader gets more than N emails in 24 h: a third broadcast waits in the queue."""
    clock.set(utc(2026, 11, 21, 10, 0))
    sid = confirmed(db, demo, "busy@example.com", clock())
    send_due(db, demo, clock)  # part a counts too
    smtp_server.clear()
    from campaigns import broadcasts

    _sent(db, demo, sid, "broadcast", clock() - timedelta(hours=1), "b1")
    cid = broadcasts.create(db, demo, clock(), subject="News", segment="all", body_md="Hello.")
    outbox.enqueue(
        db, demo, dedupe_key="b2", kind="broadcast", subscriber_id=sid, to_addr="busy@example.com",
        due_at=clock(), now=clock(), stream="broadcasts", priority=outbox.PRIORITY_BROADCAST,
        campaign_id=cid,
    )  # fmt: skip
    assert send_due(db, demo, clock).claimed == 0
    assert db.execute("SELECT status FROM outbox WHERE dedupe_key = 'b2'").fetchone()[0] == "queued"
    # 24 h after part a the window has room again, and the broadcast goes.
    clock.advance(hours=24, minutes=1)
    send_due(db, demo, clock)
    assert db.execute("SELECT status FROM outbox WHERE dedupe_key = 'b2'").fetchone()[0] == "sent"


def test_cap_is_enforced_at_send_time_broadcast_goes_series_waits(db, demo, clock, smtp_server):
    clock.set(utc(2026, 11, 21, 10, 0))
    sid = confirmed(db, demo, "both@example.com", clock())
    send_due(db, demo, clock)  # part a
    smtp_server.clear()
    tuesday = utc(2026, 12, 1, 9, 0)
    _sent(db, demo, sid, "webinar_invite", tuesday - timedelta(hours=3), "w1")
    clock.set(tuesday)
    assert schedule_series(db, demo, clock()) == 1  # b queued: only one capped mail so far
    # ...and a broadcast row becomes due at the same moment.
    outbox.enqueue(
        db,
        demo,
        dedupe_key="campaign:9:1",
        kind="broadcast",
        subscriber_id=sid,
        to_addr="both@example.com",
        due_at=tuesday,
        now=tuesday,
        stream="broadcasts",
        priority=outbox.PRIORITY_BROADCAST,
    )
    where, params = holds.claim_filter(demo, clock())
    token, rows = outbox.claim(db, clock(), 10, where=where, params=params)
    assert [r.kind for r in rows] == ["broadcast"]  # the series step waits
    outbox.release(db, token, [r.id for r in rows], clock())
    # The tick gives the waiting step a new slot, never dropping it.
    assert enrollment.defer_held(db, demo, clock()) == 1
    due, expires, status = db.execute(
        "SELECT due_at, expires_at, status FROM outbox WHERE kind = 'series' AND ref LIKE '%:b'"
    ).fetchone()
    assert status == "queued" and parse_iso(due) > tuesday
    assert parse_iso(expires) > parse_iso(due)


def test_series_held_in_the_24_hours_before_a_webinar(db, demo, clock):
    clock.set(utc(2026, 11, 21, 10, 0))
    sid = confirmed(db, demo, "w@example.com", clock())
    tuesday = utc(2026, 12, 1, 9, 0)
    starts = tuesday + timedelta(hours=9)  # 18:00 the same day
    wid = db.execute(
        "INSERT INTO webinars (slug, title, starts_at, timezone, duration_minutes, join_url, "
        "created_at, updated_at) VALUES ('spine-health', 'Spine', ?, 'Europe/London', 60, "
        "'https://meet.example/x', ?, ?)",
        (iso(starts), iso(clock()), iso(clock())),
    ).lastrowid
    db.execute(
        "INSERT INTO registrations (webinar_id, subscriber_id, status, registered_at, updated_at) "
        "VALUES (?, ?, 'registered', ?, ?)",
        (wid, sid, iso(clock()), iso(clock())),
    )
    clock.set(tuesday)
    assert holds.hold_until(db, demo, sid, clock())[0] == "webinar"
    assert schedule_series(db, demo, clock()) == 0
    after = parse_iso(enrollment_row(db, sid)["next_due_at"])
    assert after == utc(2026, 12, 2, 9, 0)  # the next 09:00 after the webinar ends
    clock.set(after)
    assert schedule_series(db, demo, clock()) == 1


# ----------------------------------------------------------------- editing a live series
def test_live_edits_never_resend_and_wait_for_apply(
    db, demo, clock, cli_env, monkeypatch, smtp_server
):
    folder = Path(demo.content_dir) / "series" / "demo"
    clock.set(utc(2026, 11, 21, 10, 0))
    early = confirmed(db, demo, "early@example.com", clock())
    send_due(db, demo, clock)
    clock.set(utc(2026, 12, 1, 9, 0))
    schedule_series(db, demo, clock())  # early: a, b
    late = confirmed(db, demo, "late@example.com", clock())  # late: a
    send_due(db, demo, clock)
    assert sent_keys(db, early) == ["a", "b"] and sent_keys(db, late) == ["a"]

    # Insert x between a and b, move d before c, remove nothing yet.
    write_series(folder.parent.parent, "demo", [("a", 1), ("x", 2), ("b", 3), ("d", 4), ("c", 5)])
    monkeypatch.setenv("FUNNEL_CONTENT_DIR", demo.content_dir)
    monkeypatch.setenv("FUNNEL_ENROLL_SERIES", "demo")
    r = CliRunner().invoke(cli.main, ["series", "diff", "demo"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    steps_table, table = r.output.split("enrolled reader(s):")
    lines = {line.split()[0]: line.split()[1:] for line in steps_table.splitlines()[1:-1]}
    assert lines["x"][:2] == ["new", "->"]
    assert lines["a"][0] == "unchanged" and lines["b"][0] == "unchanged"
    assert "moved" in (lines["c"][0], lines["d"][0])
    # Next steps: early would get c now, d after; late would get b now, x after.
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[2:] if line.strip()}
    assert "2 enrolled reader(s)" in r.output
    assert rows["x"] == ["0", "1"] and rows["b"] == ["1", "0"]
    assert rows["c"] == ["1", "0"] and rows["d"] == ["0", "1"]

    # Not applied yet: the series is held.
    clock.set(utc(2026, 12, 8, 9, 0))
    report = enrollment.TickReport()
    assert schedule_series(db, demo, clock(), report=report) == 0
    assert report.held_series == ["demo"]

    r = CliRunner().invoke(cli.main, ["series", "apply", "demo"], catch_exceptions=False)
    assert "version 2 applied" in r.output
    assert schedule_series(db, demo, clock()) == 2
    send_due(db, demo, clock)
    assert sent_keys(db, early) == ["a", "b", "d"]
    assert sent_keys(db, late) == ["a", "x"]

    # Remove d and c; add e.  early has d, so continues after it with e.
    write_series(folder.parent.parent, "demo", [("a", 1), ("x", 2), ("b", 3), ("e", 4)])
    enrollment.apply_version(db, enrollment.load(demo, "demo"), clock())
    for _ in range(6):
        clock.advance(days=7)
        schedule_series(db, demo, clock())
        send_due(db, demo, clock)
    assert sent_keys(db, early) == ["a", "b", "d", "e"]
    assert sent_keys(db, late) == ["a", "x", "b", "e"]
    for sid in (early, late):
        assert len(set(sent_keys(db, sid))) == len(sent_keys(db, sid))
        keys = [
            r[0]
            for r in db.execute(
                "SELECT ref FROM outbox WHERE subscriber_id = ? AND kind = 'series'", (sid,)
            )
        ]
        assert len(keys) == len(set(keys))
        assert enrollment_row(db, sid)["status"] == "completed"
    subjects = [m.message["Subject"] for m in smtp_server.to("late@example.com")]
    assert subjects == ["Subject a", "Subject x", "Subject b", "Subject e"]


def test_step_removed_after_queueing_is_not_sent(db, demo, clock, smtp_server):
    sid = confirmed(db, demo, "r@example.com", clock())
    folder = Path(demo.content_dir) / "series" / "demo"
    write_series(folder.parent.parent, "demo", [("b", 2), ("c", 3)])
    summary = send_due(db, demo, clock)
    assert summary.sent == 0
    status, error = db.execute(
        "SELECT status, last_error FROM outbox WHERE subscriber_id = ? AND kind = 'series'", (sid,)
    ).fetchone()
    assert status == "cancelled" and "step a was removed" in error
    assert smtp_server.messages == []


def test_series_diff_never_applied(db, demo, cli_env, monkeypatch):
    monkeypatch.setenv("FUNNEL_CONTENT_DIR", demo.content_dir)
    r = CliRunner().invoke(cli.main, ["series", "diff", "demo"], catch_exceptions=False)
    assert "never applied" in r.output
    assert [line.split()[1] for line in r.output.splitlines()[2:6]] == ["new"] * 4


# ----------------------------------------------------------------- series enroll
def test_series_enroll_existing_subscribers(db, demo, clock, cli_env, monkeypatch):
    monkeypatch.setenv("FUNNEL_CONTENT_DIR", demo.content_dir)
    other = demo.replace(enroll_series=())
    ids = [confirmed(db, other, f"r{i}@example.com", clock(), tz="Europe/London") for i in range(3)]
    confirmed(db, other, "ny@example.com", clock(), tz="America/New_York")
    lifecycle.unsubscribe(db, ids[2], clock())

    def enroll(*args):
        return CliRunner().invoke(
            cli.main, ["series", "enroll", "demo", *args], catch_exceptions=False
        )

    r = enroll("--where", "tz=Europe/London")
    assert r.exit_code == 0, r.output
    assert "2 enrolled, 0 resumed, 0 already enrolled, 1 skipped" in r.output
    r = enroll("--where", "tz=Europe/London")
    assert "0 enrolled, 0 resumed, 2 already enrolled, 1 skipped" in r.output
    r = enroll("--where", "colour=blue")
    assert r.exit_code == 1 and "unknown key 'colour'" in r.output
    # The next tick queues their first step.
    assert schedule_series(db, demo, clock()) == 2


def test_series_enroll_refuses_gaps(db, demo, clock, cli_env, monkeypatch):
    write_series(Path(demo.content_dir), "gappy", [("a", 1), ("c", 3)])
    monkeypatch.setenv("FUNNEL_CONTENT_DIR", demo.content_dir)
    r = CliRunner().invoke(cli.main, ["series", "enroll", "gappy", "--segment", "all"])
    assert r.exit_code == 1 and "part 2 missing" in r.output and "--allow-gaps" in r.output
    r = CliRunner().invoke(
        cli.main, ["series", "enroll", "gappy", "--segment", "all", "--allow-gaps"]
    )
    assert r.exit_code == 0, r.output
    with pytest.raises(FunnelError, match="--segment"):
        enrollment.enroll_segment(db, demo, "gappy", clock(), allow_gaps=True)


def test_series_builder_renders_the_step(db, demo, clock):
    sid = confirmed(db, demo, "b@example.com", clock())
    from campaigns import messages

    token, rows = outbox.claim(db, clock(), 10, where=" AND kind = 'series'")
    (row,) = rows
    assert row.data == {"series": "demo", "step": "a", "part": 1}
    msg = messages.build(db, demo, row, clock())
    assert b"Subject: Subject a" in msg.data
    assert json.loads(json.dumps(row.data))["step"] == "a"
    assert sid
