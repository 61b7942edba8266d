"""The set-based scheduler and enrolment against the reader-by-reader path they replaced.

``schedule_series`` and ``enroll_segment`` decide a chunk of readers at a time
(a few queries per chunk, one executemany per table).  The rules must not
change, so this module keeps the old per-reader implementation, ONLY here, as
the reference, builds seeded random populations (zones, invalid zones, steps
received in odd orders, statuses, pauses, unsubscribes, holds from the cap and
webinars, queue rows already there, quiet-hour edges, a daily course yielding
to a weekly series, a held series) in one database, copies it, runs the old
path on one copy and the new one on the other over several ticks, and
compares every row they write: outbox (all but the random Message-ID),
series_deliveries, enrollments, events and subscriptions.
"""

from __future__ import annotations

import random
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from campaigns import enrollment, holds, schedule
from campaigns.enrollment import (
    EnrollReport,
    TickReport,
    _late_after,
    _nominal_due,
    _usable,
    enroll_segment,
    is_applied,
    load,
    next_step_index,
    reconcile,
    schedule_series,
)
from campaigns.series import check_gaps
from funnel import outbox
from funnel.db import connect, iso, log_event, parse_iso, transaction
from funnel.errors import FunnelError
from funnel.localtime import local_to_utc
from subscribers import lifecycle, segments


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


# ================================================================= the reference
# The per-reader scheduler and enrolment as they were before the set-based
# path, kept here only to check that path against.
def _ref_set(db, sid, slug, now, **fields):
    fields["updated_at"] = iso(now)
    sets = ", ".join(f"{k} = ?" for k in fields)
    db.execute(
        f"UPDATE enrollments SET {sets} WHERE subscriber_id = ? AND series = ?",
        (*fields.values(), sid, slug),
    )


def _ref_gate(db, settings, series, sid, now):
    slug = series.slug
    e = db.execute(
        "SELECT enrolled_at, last_due_at FROM enrollments WHERE subscriber_id = ? AND series = ?",
        (sid, slug),
    ).fetchone()
    sub = db.execute(
        "SELECT status, email, timezone FROM subscribers WHERE id = ?", (sid,)
    ).fetchone()
    if e is None or sub is None:
        return "stopped", e, sub, None
    if sub[0] != "active" or not sub[1]:
        _ref_set(db, sid, slug, now, status="stopped", next_due_at=None)
        return "stopped", e, sub, None
    stream = db.execute(
        "SELECT status, paused_until FROM subscriptions WHERE subscriber_id = ? AND stream = ?",
        (sid, series.stream),
    ).fetchone()
    if stream is None or stream[0] == "unsubscribed":
        _ref_set(db, sid, slug, now, status="stopped", next_due_at=None)
        return "stopped", e, sub, None
    tz = settings.zone_for(sub[2])
    if stream[0] == "paused":
        until = parse_iso(stream[1])
        if until is None or until > now:
            resume = (
                now + timedelta(days=1)
                if until is None
                else schedule.next_slot(until, tz, series.send_day, series.send_hour)
            )
            _ref_set(db, sid, slug, now, next_due_at=iso(resume))
            return "paused", e, sub, tz
    return None, e, sub, tz


def _ref_step_due(settings, series, e, received_rows, index, tz, now):
    if received_rows:
        previous = parse_iso(e[1]) or parse_iso(received_rows[-1][1])
    else:
        previous = parse_iso(e[0])
    due = _nominal_due(settings, series, index, previous, tz, first=not received_rows)
    if now - due > _late_after(series):
        due = schedule.next_slot(
            now - timedelta(microseconds=1), tz, series.send_day, series.send_hour
        )
    return due


def _ref_queue_step(db, settings, series, sid, addr, index, received, due, tz, now):
    slug = series.slug
    keys = [s.key for s in series.steps]
    step = series.steps[index]
    ref = f"series:{slug}:{step.key}"
    row_id = outbox.enqueue(
        db, settings, dedupe_key=f"{ref}:{sid}", kind="series", subscriber_id=sid,
        to_addr=addr, due_at=now, now=now, stream=series.stream, ref=ref,
        priority=outbox.PRIORITY_SERIES,
        expires_at=now + timedelta(hours=settings.newsletter_expiry_hours),
        data={"series": slug, "step": step.key, "part": step.part},
    )  # fmt: skip
    db.execute(
        "INSERT OR IGNORE INTO series_deliveries (subscriber_id, series, step_key, part, "
        "outbox_id, at) VALUES (?, ?, ?, ?, ?, ?)",
        (sid, slug, step.key, step.part, row_id, iso(now)),
    )
    following = next_step_index(keys, [*received, step.key])
    anchor = max(due, now) if series.cadence_days == 1 else due
    last = {"last_due_at": iso(anchor), "last_step_key": step.key}
    if following is None:
        _ref_set(db, sid, slug, now, status="completed", next_due_at=None, next_step=len(keys),
                 **last)  # fmt: skip
        log_event(db, "completed", now, sid, f"series:{slug}")
    else:
        next_due = _nominal_due(settings, series, following, anchor, tz, first=False)
        _ref_set(db, sid, slug, now, next_due_at=iso(next_due), next_step=following, **last)


def _ref_weekly_due_today(db, settings, series, sid, tz, now):
    if series.cadence_days != 1 or settings.frequency_cap <= 0:
        return 0
    end_of_day = local_to_utc(now.astimezone(tz).date() + timedelta(days=1), 0, tz)
    count = 0
    for slug, stream in db.execute(
        "SELECT e.series, ss.stream FROM enrollments e JOIN subscriptions ss "
        "ON ss.subscriber_id = e.subscriber_id AND ss.stream = 'series:' || e.series "
        "AND ss.status = 'subscribed' WHERE e.subscriber_id = ? AND e.series != ? "
        "AND e.status = 'active' AND e.next_due_at < ?",
        (sid, series.slug, iso(end_of_day)),
    ).fetchall():
        try:
            other = load(settings, slug)
        except FunnelError:
            continue
        if other.cadence_days > 1 and other.stream == stream:
            count += 1
    return count


def _ref_process(db, settings, series, sid, now):
    slug = series.slug
    outcome, e, sub, tz = _ref_gate(db, settings, series, sid, now)
    if outcome is not None:
        return outcome
    received_rows = db.execute(
        "SELECT step_key, at FROM series_deliveries WHERE subscriber_id = ? AND series = ? "
        "ORDER BY at, rowid",
        (sid, slug),
    ).fetchall()
    received = [r[0] for r in received_rows]
    index = next_step_index([s.key for s in series.steps], received)
    if index is None:
        _ref_set(db, sid, slug, now, status="completed", next_due_at=None)
        return "completed"
    due = _ref_step_due(settings, series, e, received_rows, index, tz, now)
    if due > now:
        _ref_set(db, sid, slug, now, next_due_at=iso(due), next_step=index)
        return "waiting"
    reserved = _ref_weekly_due_today(db, settings, series, sid, tz, now)
    hold = holds.hold_until(db, settings, sid, now, reserved=reserved)
    if hold is not None:
        later = schedule.postponed_due(hold[0], hold[1], now, tz, series.send_hour,
                                       settings.quiet_start_hour, settings.quiet_end_hour)
        _ref_set(db, sid, slug, now, next_due_at=iso(later), next_step=index)
        return "postponed"
    _ref_queue_step(db, settings, series, sid, sub[1], index, received, due, tz, now)
    return "queued"


def ref_schedule_series(db, settings, now, *, batch=500, report=None):
    report = report if report is not None else TickReport()
    done = reconcile(db, settings, now)
    report.enrolled += done.enrolled
    report.resumed += done.resumed
    usable = {}
    cursor = ("", 0, "")
    while True:
        with transaction(db):
            rows = db.execute(
                "SELECT next_due_at, subscriber_id, series FROM enrollments "
                "WHERE status = 'active' AND next_due_at <= ? "
                "AND (next_due_at, subscriber_id, series) > (?, ?, ?) "
                "ORDER BY next_due_at, subscriber_id, series LIMIT ?",
                (iso(now), *cursor, batch),
            ).fetchall()
            for _due, sid, slug in rows:
                if slug not in usable:
                    usable[slug] = _usable(db, settings, slug, now, report)
                series = usable[slug]
                if series is None:
                    continue
                outcome = _ref_process(db, settings, series, sid, now)
                if outcome == "queued":
                    report.queued += 1
                elif outcome in ("postponed", "stopped", "completed"):
                    setattr(report, outcome, getattr(report, outcome) + 1)
        if len(rows) < batch:
            return report.queued
        cursor = tuple(rows[-1])


def ref_enroll(db, settings, subscriber_id, slug, now, *, series=None, materialise=True):
    stream = series.stream if series is not None else f"series:{slug}"
    with transaction(db):
        row = db.execute(
            "SELECT status, timezone FROM subscribers WHERE id = ?", (subscriber_id,)
        ).fetchone()
        if row is None or row[0] != "active":
            return "skipped"
        tz = settings.zone_for(row[1])
        sub_row = db.execute(
            "SELECT status FROM subscriptions WHERE subscriber_id = ? AND stream = ?",
            (subscriber_id, stream),
        ).fetchone()
        if sub_row is not None and sub_row[0] == "unsubscribed":
            return "skipped"
        if sub_row is None:
            lifecycle.set_subscription(db, subscriber_id, stream, "subscribed", now)
        due = now if series is None else _nominal_due(settings, series, 0, now, tz, first=True)
        existing = db.execute(
            "SELECT status FROM enrollments WHERE subscriber_id = ? AND series = ?",
            (subscriber_id, slug),
        ).fetchone()
        if existing is None:
            db.execute(
                "INSERT INTO enrollments (subscriber_id, series, status, enrolled_at, next_step, "
                "next_due_at, updated_at) VALUES (?, ?, 'active', ?, 0, ?, ?)",
                (subscriber_id, slug, iso(now), iso(due), iso(now)),
            )
            outcome = "enrolled"
        elif existing[0] == "stopped":
            db.execute(
                "UPDATE enrollments SET status = 'active', next_due_at = ?, updated_at = ? "
                "WHERE subscriber_id = ? AND series = ?",
                (iso(now), iso(now), subscriber_id, slug),
            )
            outcome = "resumed"
        else:
            return "already"
        log_event(db, "enrolled", now, subscriber_id, f"series:{slug}")
        if materialise and series is not None and is_applied(db, series, now):
            _ref_process(db, settings, series, subscriber_id, now)
    return outcome


def ref_enroll_segment(db, settings, slug, now, *, segment=None, where=(), batch=500):
    series = load(settings, slug)
    check_gaps(series, False)
    is_applied(db, series, now)
    report = EnrollReport()
    for rows in segments.iter_members(db, settings, segment, batch, where=where, now=now):
        with transaction(db):
            for sid, _email in rows:
                outcome = ref_enroll(db, settings, sid, slug, now, series=series, materialise=False)
                setattr(report, outcome, getattr(report, outcome) + 1)
    return report


# ================================================================= populations
ZONES = ("America/New_York", "Europe/London", "Asia/Tokyo", "Australia/Sydney",
         "America/Los_Angeles", "Asia/Kolkata", None, "Not/AZone")  # fmt: skip
#: Times at which zones sit on quiet-hour edges (08:00 / 21:00 local somewhere),
#: on and around daylight-saving switches.
STARTS = (
    utc(2026, 11, 24, 13, 0),  # 08:00 New York, 13:00 London, 22:00 Tokyo
    utc(2026, 11, 24, 21, 0),  # 21:00 London, 08:00 Sydney
    utc(2026, 3, 8, 6, 59),  # New York springs forward at 07:00 UTC
    utc(2026, 10, 25, 0, 30),  # London falls back at 01:00 UTC
    utc(2026, 12, 1, 8, 59, 59),  # a second before 09:00 London on a Tuesday
)
TICKS = (timedelta(0), timedelta(hours=1), timedelta(hours=11), timedelta(days=1, hours=2),
         timedelta(days=3), timedelta(days=7, minutes=1), timedelta(days=20))  # fmt: skip


def write_series(root: Path, slug: str, keys: list[str], *, cadence="weekly", send_day="tuesday",
                 send_hour=9) -> None:  # fmt: skip
    folder = root / "series" / slug
    folder.mkdir(parents=True, exist_ok=True)
    for part, key in enumerate(keys, start=1):
        (folder / f"{key}.md").write_text(
            f"---\ntitle: Title {key}\npart: {part}\nsubject: Subject {key}\n---\nBody {key}.\n",
            encoding="utf-8",
        )
    day = f'send_day = "{send_day}"\n' if send_day else ""
    names = ", ".join(f'"{k}.md"' for k in keys)
    (folder / "series.toml").write_text(
        f'title = "Demo {slug}"\ncadence = "{cadence}"\n{day}send_hour = {send_hour}\n'
        f"steps = [{names}]\n",
        encoding="utf-8",
    )


SERIES = {"demo": ["a", "b", "c", "d"], "course": ["d1", "d2", "d3"], "news": ["n1", "n2"],
          "edited": ["x", "y", "z"]}  # fmt: skip


def make_settings(base, tmp_path: Path, rng: random.Random):
    content = tmp_path / "content"
    write_series(content, "demo", SERIES["demo"])
    write_series(content, "course", SERIES["course"], cadence="daily", send_day=None, send_hour=8)
    write_series(content, "news", SERIES["news"], send_day=None, send_hour=10)
    write_series(content, "edited", SERIES["edited"], send_day="friday", send_hour=12)
    return base.replace(
        content_dir=str(content),
        enroll_series=rng.choice([(), ("demo",), ("demo", "course")]),
        frequency_cap=rng.choice([0, 1, 2, 3]),
        newsletter_expiry_hours=rng.choice([0, 6, 96]),
    )


def populate(db, settings, rng: random.Random, now: datetime, n: int) -> None:
    """n readers with random zones, statuses, streams, enrollments, parts and mail."""
    enrollment.apply_version(db, load(settings, "demo"), now - timedelta(days=60))
    enrollment.apply_version(db, load(settings, "course"), now - timedelta(days=60))
    edited = load(settings, "edited")  # applied with one step fewer: held
    enrollment.apply_version(db, replace(edited, steps=edited.steps[:2]), now - timedelta(days=60))
    stamp = iso(now - timedelta(days=90))
    with transaction(db):
        wid = db.execute(
            "INSERT INTO webinars (slug, title, starts_at, timezone, duration_minutes, join_url, "
            "created_at, updated_at) VALUES ('w', 'W', ?, 'UTC', 60, 'https://x.example/j', ?, ?)",
            (iso(now + timedelta(hours=rng.choice([-2, 3, 20, 30]))), stamp, stamp),
        ).lastrowid
        for sid in range(1, n + 1):
            _reader(db, rng, now, sid, wid, stamp)


def _when(rng: random.Random, now: datetime, days: float) -> str:
    return iso(now + timedelta(seconds=rng.randint(int(-days * 86400), int(days * 86400))))


def _reader(db, rng: random.Random, now: datetime, sid: int, wid: int, stamp: str) -> None:
    status = rng.choice(["active"] * 12 + ["unsubscribed", "bounced", "pending"])
    db.execute(
        "INSERT INTO subscribers (id, email, email_hash, timezone, status, created_at, "
        "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (sid, "" if sid == 2 else f"r{sid}@example.com", f"h{sid}", rng.choice(ZONES), status,
         stamp, stamp),  # fmt: skip
    )
    for slug, keys in SERIES.items():
        state = rng.choice(["subscribed"] * 8 + ["paused", "unsubscribed", None])
        if state is not None:
            until = None
            if state == "paused":  # open-ended, any time, or exactly when a tick runs
                until = rng.choice([None, _when(rng, now, 3), iso(now + rng.choice(TICKS))])
            db.execute(
                "INSERT INTO subscriptions (subscriber_id, stream, status, paused_until, "
                "updated_at) VALUES (?, ?, ?, ?, ?)",
                (sid, f"series:{slug}", state, until, stamp),
            )
        if rng.random() < 0.2:
            continue
        got = rng.sample([*keys, "gone"], rng.choice([0, 0, 1, 2, 3]))
        times = sorted(_when(rng, now - timedelta(days=15), 14) for _ in got)
        for key, at in zip(got, times, strict=True):
            db.execute(
                "INSERT INTO series_deliveries (subscriber_id, series, step_key, part, at) "
                "VALUES (?, ?, ?, 1, ?)",
                (sid, slug, key, at),
            )
        e_status = rng.choice(["active"] * 8 + ["completed", "stopped"])
        due = _when(rng, now - timedelta(days=2), 3) if rng.random() < 0.8 else _when(rng, now, 9)
        db.execute(
            "INSERT INTO enrollments (subscriber_id, series, status, enrolled_at, next_step, "
            "next_due_at, last_due_at, updated_at) VALUES (?, ?, ?, ?, 0, ?, ?, ?)",
            (sid, slug, e_status, rng.choice([times[0] if times else stamp, _when(rng, now, 9)]),
             None if e_status != "active" else due,
             rng.choice([None, times[-1] if times else None, _when(rng, now, 10)]), stamp),
        )  # fmt: skip
    _mail(db, rng, now, sid, wid, stamp)


def _mail(db, rng: random.Random, now: datetime, sid: int, wid: int, stamp: str) -> None:
    """Mail that weighs on the cap, rows already queued for a step, a webinar seat."""
    for i in range(rng.choice([0, 0, 0, 1, 2])):
        kind = rng.choice(["broadcast", "series", "confirm", "webinar_invite"])
        status = rng.choice(["sent", "sent", "queued", "sending", "retry", "failed"])
        sent = _when(rng, now - timedelta(hours=20), 6) if status == "sent" else None
        db.execute(
            "INSERT INTO outbox (dedupe_key, kind, subscriber_id, to_addr, message_id, status, "
            "due_at, expires_at, created_at, updated_at, sent_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, "
            "?, ?, ?)",
            (f"old:{sid}:{i}", kind, sid, f"r{sid}@example.com", f"<{sid}.{i}@x>", status,
             _when(rng, now, 1), rng.choice([None, _when(rng, now, 2)]), stamp, stamp, sent),
        )  # fmt: skip
    if rng.random() < 0.3:  # a step's row already in the outbox (dedupe keeps it single)
        slug = rng.choice(["demo", "course"])
        key = rng.choice([SERIES[slug][0], rng.choice(SERIES[slug])])
        db.execute(
            "INSERT INTO outbox (dedupe_key, kind, subscriber_id, to_addr, message_id, status, "
            "due_at, created_at, updated_at) VALUES (?, 'series', ?, ?, ?, 'queued', ?, ?, ?)",
            (f"series:{slug}:{key}:{sid}", sid, f"r{sid}@example.com", f"<{sid}.d@x>", stamp,
             stamp, stamp),
        )  # fmt: skip
    if rng.random() < 0.2:
        db.execute(
            "INSERT INTO registrations (webinar_id, subscriber_id, status, registered_at, "
            "updated_at) VALUES (?, ?, 'registered', ?, ?)",
            (wid, sid, stamp, stamp),
        )


def copy_db(db, path: Path):
    target = sqlite3.connect(path)
    db.conn.backup(target)
    target.close()
    return connect(path, migrate=True)


def state(db) -> dict[str, list[tuple]]:
    """Everything the scheduler and enrolment write, the random Message-ID left out."""
    cols = [r[1] for r in db.execute("PRAGMA table_info(outbox)") if r[1] != "message_id"]
    return {
        "outbox": db.execute(f"SELECT {', '.join(cols)} FROM outbox ORDER BY id").fetchall(),
        "series_deliveries": db.execute(
            "SELECT rowid, * FROM series_deliveries ORDER BY rowid"
        ).fetchall(),
        "enrollments": db.execute(
            "SELECT * FROM enrollments ORDER BY subscriber_id, series"
        ).fetchall(),
        "events": db.execute("SELECT * FROM events ORDER BY id").fetchall(),
        "subscriptions": db.execute(
            "SELECT * FROM subscriptions ORDER BY subscriber_id, stream"
        ).fetchall(),
        "enrollment_queue": db.execute("SELECT * FROM enrollment_queue ORDER BY 1").fetchall(),
        # The report's reader sets, which the events triggers keep (migration 0032).
        "reader_bits": db.execute("SELECT * FROM reader_bits WHERE bits != 0 ORDER BY 1, 2, 3").fetchall(),
    }


def assert_same(old, new) -> None:
    a, b = state(old), state(new)
    for table in a:
        assert a[table] == b[table], table


def send_some(db, now: datetime, rng_seed: int) -> None:
    """The sender's part between ticks (identically on both copies): some due rows go."""
    with transaction(db):
        db.execute(
            "UPDATE outbox SET status = 'sent', sent_at = ?, updated_at = ? "
            "WHERE status IN ('queued', 'retry') AND due_at <= ? AND (id + ?) % 3 != 0",
            (iso(now), iso(now), iso(now), rng_seed),
        )


# ================================================================= the checks
def crowd(db, cfg, now: datetime) -> None:
    """Every reader active, on every stream, each enrollment due: several steps of one
    reader fall in one chunk, where queueing one must count towards the cap for the next."""
    with transaction(db):
        db.execute("UPDATE subscribers SET status = 'active'")
        db.execute("UPDATE subscriptions SET status = 'subscribed', paused_until = NULL")
        db.execute(
            "UPDATE enrollments SET status = 'active', next_due_at = ? WHERE series != 'edited'",
            (iso(now - timedelta(hours=1)),),
        )
        db.execute("DELETE FROM outbox WHERE dedupe_key LIKE 'old:%' AND subscriber_id % 2 = 0")
        # Some readers' part a is in the outbox already (queued, not recorded): queueing it
        # again adds no row, so it must not count twice before their news step.
        db.execute("DELETE FROM outbox WHERE subscriber_id % 7 = 3")
        db.execute("DELETE FROM registrations WHERE subscriber_id % 7 = 3")
        db.execute(
            "DELETE FROM series_deliveries WHERE subscriber_id % 7 = 3 AND series IN ('demo', 'news')"
        )
        for slug in ("demo", "news"):
            db.execute(
                "INSERT OR REPLACE INTO subscriptions (subscriber_id, stream, status, updated_at) "
                "SELECT id, ?, 'subscribed', ? FROM subscribers WHERE id % 7 = 3",
                (f"series:{slug}", iso(now)),
            )
            db.execute(
                "INSERT OR REPLACE INTO enrollments (subscriber_id, series, status, enrolled_at, "
                "next_due_at, updated_at) SELECT id, ?, 'active', ?, ?, ? FROM subscribers "
                "WHERE id % 7 = 3",
                (slug, *[iso(now - timedelta(hours=1))] * 3),
            )
        db.execute(
            "UPDATE enrollments SET status = 'completed', next_due_at = NULL "
            "WHERE subscriber_id % 7 = 3 AND series = 'course'"
        )
        db.execute(
            "INSERT INTO outbox (dedupe_key, kind, subscriber_id, to_addr, message_id, status, "
            "due_at, created_at, updated_at) SELECT 'series:demo:a:' || id, 'series', id, "
            "'r' || id || '@example.com', '<pre.' || id || '@x>', 'queued', ?, ?, ? "
            "FROM subscribers WHERE id % 7 = 3",
            (iso(now), iso(now), iso(now)),
        )


@pytest.mark.parametrize("seed, crowded", [(s, False) for s in range(12)] + [(s, True) for s in range(4)])
def test_scheduler_matches_the_per_reader_path(tmp_path, settings, seed, crowded):
    rng = random.Random(seed)
    start = STARTS[seed % len(STARTS)]
    cfg = make_settings(settings, tmp_path, rng)
    if crowded:
        cfg = cfg.replace(frequency_cap=1 + seed % 2, newsletter_expiry_hours=96)
    old = connect(cfg.db, migrate=True)
    populate(old, cfg, rng, start, n=120)
    if crowded:
        crowd(old, cfg, start)
    new = copy_db(old, tmp_path / "new.db")
    assert_same(old, new)
    batch = rng.choice([3, 50, 5000, 5000])
    for tick in TICKS:
        now = start + tick
        old_report, new_report = TickReport(), TickReport()
        queued_old = ref_schedule_series(old, cfg, now, report=old_report)
        queued_new = schedule_series(new, cfg, now, batch=batch, report=new_report)
        assert (queued_new, new_report) == (queued_old, old_report)
        assert_same(old, new)
        send_some(old, now, seed)
        send_some(new, now, seed)
    # The populations exercise what they are meant to.
    kinds = {r[0] for r in new.execute("SELECT last_error FROM outbox")}
    assert new.execute("SELECT COUNT(*) FROM series_deliveries WHERE outbox_id IS NOT NULL"
                       ).fetchone()[0] > 0 and kinds is not None  # fmt: skip


def test_the_populations_cover_every_outcome(tmp_path, settings):
    """Across the seeds above every outcome of the rules happens (checked on a few)."""
    seen = TickReport()
    for seed in range(6):
        rng = random.Random(seed)
        folder = tmp_path / str(seed)
        folder.mkdir()
        cfg = make_settings(settings.replace(db=str(folder / "f.db")), folder, rng)
        cfg = cfg.replace(frequency_cap=1)  # the cap bites: postponements happen
        db = connect(cfg.db, migrate=True)
        populate(db, cfg, rng, STARTS[seed % len(STARTS)], n=70)
        for tick in TICKS[:3]:
            schedule_series(db, cfg, STARTS[seed % len(STARTS)] + tick, report=seen)
        db.close()
    assert seen.queued and seen.postponed and seen.stopped and seen.completed
    assert "edited" in seen.held_series


@pytest.mark.parametrize("seed", range(6))
def test_enrolment_matches_the_per_reader_path(tmp_path, settings, seed):
    rng = random.Random(100 + seed)
    now = STARTS[seed % len(STARTS)]
    cfg = make_settings(settings, tmp_path, rng)
    old = connect(cfg.db, migrate=True)
    populate(old, cfg, rng, now, n=80)
    new = copy_db(old, tmp_path / "new.db")
    for slug in ("demo", "course", "news"):
        where = rng.choice([["status=active"], ["signed_up<2030-01-01"], ["tz=Asia/Tokyo"]])
        batch = rng.choice([1, 4, 500])
        before = ref_enroll_segment(old, cfg, slug, now, where=where, batch=batch)
        after = enroll_segment(new, cfg, slug, now, where=where, batch=rng.choice([1, 9, 5000]))
        assert after == before
        assert_same(old, new)
    # One reader at a time, with the first step queued at once (the course's start button).
    course = load(cfg, "course")
    for sid in rng.sample(range(1, 81), 15):
        assert enrollment.enroll(new, cfg, sid, "course", now, series=course) == ref_enroll(
            old, cfg, sid, "course", now, series=course
        )
        assert_same(old, new)


def test_enrolment_counts_at_least_one_of_each(tmp_path, settings):
    rng = random.Random(7)
    now = STARTS[0]
    cfg = make_settings(settings, tmp_path, rng)
    db = connect(cfg.db, migrate=True)
    populate(db, cfg, rng, now, n=80)
    with transaction(db):
        db.execute("UPDATE enrollments SET status = 'stopped' WHERE subscriber_id % 5 = 0")
        db.execute("DELETE FROM enrollments WHERE subscriber_id % 5 = 1")
    report = enroll_segment(db, cfg, "demo", now, where=["signed_up<2030-01-01"], batch=7)
    assert report.enrolled and report.resumed and report.already and report.skipped
