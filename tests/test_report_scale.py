"""The report's fast reading (issue 15: < 2 s over 10M events) gives what the old one gave.

The old reading is kept here, and only here: one Python row per distinct
(reader, ref) for the series parts, DISTINCT readers per kind read through
(kind, at), and the click table's per-message subqueries.  On a randomized
event log, outbox, click and open set, both must give the same report: the
same steps and counts, the same percentages (the containment rule), the same
click rates and notes, for all time and for windows.  All time reads the
reader sets from reader_bits (migration 0032), a window from the events; the
tests below also check reader_bits against the events through inserts,
deletes, updates and erased readers, and the bit sets against frozensets.
"""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta

import pytest
from conftest import reader_bits, reader_bits_from_events

from campaigns import report
from funnel.db import iso, transaction
from funnel.localtime import local_to_utc

START = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)
SLUG = "importance-of-exercise"
COURSE = "28-day-programme"
KINDS = ("subscribed", "confirmed", "invited", "registered", "attended", "clicked_offer", "unsubscribed")
SENT_REFS = (
    *(f"series:{SLUG}:{k}" for k in ("01-therapy-before-fitness", "02-tight-psoas-sleepy-glutes",
                                     "03-anything", "4-more", "no-number")),
    *(f"series:{COURSE}:day-{d:02d}" for d in (1, 7, 14, 28)),
    "series:other:1-first", "series:other:2-second", "Series:other:3-case", "webinar:spine-health:confirm",
    "campaign:1",
)  # fmt: skip
TRACKED = ("series", "broadcast", "webinar_invite", "webinar_reminder", "webinar_followup")


# ----------------------------------------------------------------- the old reading
def old_people(db, kind, lo, hi):
    return frozenset(sid for (sid,) in db.execute(
        "SELECT DISTINCT subscriber_id FROM events INDEXED BY events_kind_at_reader WHERE kind = ? "
        "AND at >= ? AND at < ? AND subscriber_id IS NOT NULL", (kind, lo, hi)))


def old_steps(db, settings, lo, hi):
    """(label, people) per step and the notes, as compute() read them before issue 15."""
    steps = [("Signed up", old_people(db, "subscribed", lo, hi)),
             ("Confirmed", old_people(db, "confirmed", lo, hi))]
    known = {(s, k): p for s, k, p in db.execute(
        "SELECT DISTINCT series, step_key, part FROM series_deliveries WHERE part IS NOT NULL")}
    content = report._series_info(settings)
    people, notes = {}, []
    for sid, ref in db.execute(
        "SELECT DISTINCT subscriber_id, ref FROM events INDEXED BY events_kind_at_reader "
        "WHERE kind = 'sent' AND ref LIKE 'series:%' AND at >= ? AND at < ? AND subscriber_id IS NOT NULL",
        (lo, hi),
    ):
        _, slug, key = (ref.split(":", 2) + ["", ""])[:3]
        part = known.get((slug, key)) or content.get(slug, ("", {}))[1].get(key)
        if part is None and (m := re.match(r"^(\d+)", key)):
            part = int(m.group(1))
        if part is None:
            notes.append(f"could not tell which part {ref!r} is")
            continue
        people.setdefault((slug, part), set()).add(sid)
    for slug in sorted({s for s, _ in people} - {COURSE}):
        title = content.get(slug, (slug, {}))[0] or slug
        for part in range(1, max(p for s, p in people if s == slug) + 1):
            steps.append((f"{title}: part {part}", frozenset(people.get((slug, part), ()))))
    clickers = frozenset(sid for (sid,) in db.execute(
        "SELECT DISTINCT o.subscriber_id FROM clicks c JOIN outbox o ON o.id = c.outbox_id "
        "WHERE c.verdict = 'human' AND o.sent_at >= ? AND o.sent_at < ? AND o.subscriber_id IS NOT NULL",
        (lo, hi)))
    steps += [("Clicked a link in an email", clickers)]
    steps += [(label, old_people(db, kind, lo, hi)) for label, kind in (
        ("Invited to a webinar", "invited"), ("Registered", "registered"), ("Attended", "attended"),
        ("Clicked the offer", "clicked_offer"))]
    title, parts = content.get(COURSE, ("", {}))
    last = max(parts.values(), default=0) or max((p for s, p in people if s == COURSE), default=0)
    started = frozenset(sid for (sid,) in db.execute(
        "SELECT DISTINCT subscriber_id FROM events INDEXED BY events_kind_at_reader WHERE kind = 'enrolled' "
        "AND ref = ? AND at >= ? AND at < ? AND subscriber_id IS NOT NULL", (f"series:{COURSE}", lo, hi)))
    if last and (started or any(s == COURSE for s, _ in people)):
        title = title or COURSE
        steps.append((f"Started: {title}", started))
        for day in (*(d for d in report.COURSE_MILESTONES if d < last), last):
            steps.append((f"{title}: day {day}", frozenset(people.get((COURSE, day), ()))))
        requesters = frozenset(sid for (sid,) in db.execute(
            "SELECT DISTINCT s.id FROM appointments a JOIN subscribers s ON s.email = a.email COLLATE NOCASE "
            "WHERE a.created_at >= ? AND a.created_at < ?", (lo, hi)))
        steps.append((f"{title}: requested an appointment", started & requesters))
    return steps, sorted(set(notes))


def old_click_rows(db, lo, hi):
    """(kind, ref, subject, sent, clicked, filtered, opened, apple) with the per-message subqueries."""
    return db.execute(
        f"""SELECT o.kind, o.ref, c.subject, COUNT(*),
               SUM(EXISTS (SELECT 1 FROM clicks k WHERE k.outbox_id = o.id AND k.verdict = 'human')),
               SUM((SELECT COUNT(*) FROM clicks k WHERE k.outbox_id = o.id AND k.verdict = 'scanner')),
               SUM(EXISTS (SELECT 1 FROM opens p WHERE p.outbox_id = o.id)),
               SUM(EXISTS (SELECT 1 FROM opens p WHERE p.outbox_id = o.id)
                   AND NOT EXISTS (SELECT 1 FROM opens p WHERE p.outbox_id = o.id AND p.apple = 0))
           FROM outbox o LEFT JOIN campaigns c ON c.id = o.campaign_id
           WHERE o.status = 'sent' AND o.sent_at >= ? AND o.sent_at < ?
             AND o.kind IN ({",".join("?" * len(TRACKED))})
           GROUP BY o.kind, o.ref ORDER BY o.kind, o.ref""",
        (lo, hi, *TRACKED),
    ).fetchall()


def old_rows(steps):
    """The old containment rule, on the old frozensets: (label, count, of stage, of signups)."""
    out, signups = [], steps[0][1]
    for i, (label, people) in enumerate(steps):
        of_stage = of_signups = None
        if i:
            base = next((b for b in reversed(steps[:i]) if people <= b[1]), None)
            if base is not None and base[1]:
                of_stage = 100.0 * len(people) / len(base[1])
            if signups:
                of_signups = 100.0 * len(people & signups) / len(signups)
        out.append((label, len(people), of_stage, of_signups))
    return out


# ----------------------------------------------------------------- a random world
def seed(db, rng: random.Random, readers: int = 150) -> None:
    at = lambda: iso(START + timedelta(hours=rng.randrange(0, 24 * 60)))  # noqa: E731
    with transaction(db):
        for sid in range(1, readers + 1):
            db.execute("INSERT INTO subscribers (id, email, email_hash, status, created_at, updated_at) "
                       "VALUES (?, ?, ?, 'active', ?, ?)", (sid, f"r{sid}@example.com", f"h{sid}", at(), at()))
        db.execute("INSERT INTO campaigns (id, kind, template, subject, created_at, updated_at) "
                   "VALUES (1, 'broadcast', 'broadcast', 'Spring news', ?, ?)", (at(), at()))
        events = []
        for sid in range(1, readers + 1):
            # Nested habits so that some steps contain others, and some do not.
            depth = rng.randrange(0, 8)
            for kind in KINDS[:depth]:
                for _ in range(rng.randrange(1, 3)):
                    events.append((at(), kind, sid, rng.choice(("webinar:spine-health", "webinar:neck", None))))
            for ref in rng.sample(SENT_REFS, rng.randrange(0, len(SENT_REFS))):
                events += [(at(), "sent", sid, ref)] * rng.randrange(1, 3)
            if rng.random() < 0.4:
                events.append((at(), "enrolled", sid, f"series:{COURSE}"))
        events += [(at(), rng.choice(KINDS), None, None) for _ in range(20)]  # erased readers
        db.conn.executemany("INSERT INTO events (at, kind, subscriber_id, ref) VALUES (?, ?, ?, ?)", events)
        db.conn.executemany(
            "INSERT INTO series_deliveries (subscriber_id, series, step_key, part, at) VALUES (?, ?, ?, ?, ?)",
            [(sid, SLUG, "no-number", 9, at()) for sid in range(1, readers + 1, 7)]
            + [(sid, "other", "1-first", 1, at()) for sid in range(2, readers + 1, 5)],
        )
        outbox, n = [], 0
        for sid in range(1, readers + 1):
            for kind, ref in rng.sample([("series", f"series:{SLUG}:03-anything"), ("broadcast", "campaign:1"),
                                         ("webinar_invite", "webinar:spine-health"),
                                         ("webinar_reminder", "webinar:spine-health"), ("confirm", None),
                                         ("series", f"series:{COURSE}:day-07")], 3):
                n += 1
                status = rng.choice(("sent", "sent", "sent", "queued", "failed"))
                outbox.append((n, f"k{n}", kind, sid, 1 if kind == "broadcast" else None, ref,
                               f"r{sid}@example.com", f"<{n}@x>", status, at(), at(), at(),
                               at() if status == "sent" else None))
        db.conn.executemany(
            "INSERT INTO outbox (id, dedupe_key, kind, subscriber_id, campaign_id, ref, to_addr, message_id, "
            "status, due_at, created_at, updated_at, sent_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            outbox)
        clicks, opens = [], []
        for oid in rng.sample(range(1, n + 1), n // 3):
            for index in range(rng.randrange(1, 3)):
                verdict = rng.choice(("human", "scanner", "scanner"))
                clicks.append((oid, index if verdict == "human" else rng.randrange(100), f"https://x/{index}",
                               at(), verdict))
        for oid in rng.sample(range(1, n + 1), n // 3):
            opens += [(oid, at(), rng.choice((0, 1, 1))) for _ in range(rng.randrange(1, 3))]
        db.conn.executemany("INSERT INTO clicks (outbox_id, link_index, link, at, verdict) VALUES (?, ?, ?, ?, ?)",
                            clicks)
        db.conn.executemany("INSERT INTO opens (outbox_id, at, apple) VALUES (?, ?, ?)", opens)
        for i in range(1, 15):
            db.execute(
                "INSERT INTO appointments (name, email, contact_method, consent_text, created_at, updated_at, "
                "booked_at) VALUES ('A', ?, 'email', 'ok', ?, ?, ?)",
                (f"r{rng.randrange(1, readers + 1)}@example.com", at(), at(), at() if i % 3 else None))


@pytest.mark.parametrize("seed_value", [1, 2, 3])
@pytest.mark.parametrize("window", [(None, None), ("2026-10-10", "2026-11-10"), ("2026-10-20", None)])
def test_fast_reading_gives_the_old_report(db, settings, seed_value, window):
    seed(db, random.Random(seed_value))
    since, until = window
    rep = report.compute(db, settings, since=since, until=until)
    tz = settings.zone
    lo = iso(local_to_utc(datetime.fromisoformat(since).date(), 0, tz)) if since else ""
    hi = iso(local_to_utc(datetime.fromisoformat(until).date() + timedelta(days=1), 0, tz)) if until else "9999"
    steps, notes = old_steps(db, settings, lo, hi)
    requested, booked = report.appointments.request_ids(db, lo, hi)
    steps += [("Requested an appointment", frozenset(("request", i) for i in requested)),
              ("Booked", frozenset(("request", i) for i in booked))]
    assert [(s.label, s.count, a, b) for s, a, b in rep.rows()] == old_rows(steps)
    assert [n for n in rep.notes if n.startswith("could not tell")] == notes
    assert notes  # the randomized refs include one with no part
    old = old_click_rows(db, lo, hi)
    assert old  # the window holds sent messages
    parts = {(s, k): p for s, k, p in db.execute(
        "SELECT DISTINCT series, step_key, part FROM series_deliveries WHERE part IS NOT NULL")}
    for slug, (_title, keys) in report._series_info(settings).items():
        for key, part in keys.items():
            parts.setdefault((slug, key), part)
    expected = report._in_order([
        report.ClickRate(*report._email_label(kind, ref, subject, parts), sent, clicked, filtered, opened, apple)
        for kind, ref, subject, sent, clicked, filtered, opened, apple in old])
    assert [(r.group, r.label, r.sent, r.clicked, r.filtered, r.opened, r.apple) for r in rep.click_rates] == [
        (r.group, r.label, r.sent, r.clicked, r.filtered, r.opened, r.apple) for r in expected]
    assert any(r.clicked for r in rep.click_rates) and any(r.apple for r in rep.click_rates)


def test_ids_reads_group_concat_as_the_rows_would(db):
    """The group_concat fast path gives the same set as reading the rows one by one."""
    values = "WITH v(i) AS (VALUES (5), (1), (123456789), (5), (42), (NULL))"
    (text,) = db.execute(f"{values} SELECT group_concat(i) FROM v").fetchone()
    rows = db.execute(f"{values} SELECT i FROM v WHERE i IS NOT NULL").fetchall()
    assert report._ids(text) == report.EventLog(db, "", "9999").ids(i for (i,) in rows)
    assert report._ids(text) == {"1", "5", "42", "123456789"}
    assert report._ids(None) == frozenset()


def test_the_report_reads_its_indexes(db, settings):
    """All time: the readers per kind come from events_kind_ref_reader in order (no
    temporary b-tree), the messages sent from outbox_sent_kind_ref alone."""
    plan = lambda sql, *p: " | ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN " + sql, p))  # noqa: E731
    readers = plan(report.READERS_SQL.format(where=""), "sent", "x")
    assert "events_kind_ref_reader" in readers and "TEMP B-TREE" not in readers
    bits = plan("SELECT word, bits FROM reader_bits WHERE kind = ? AND ref = ? ORDER BY word", "sent", "x")
    assert bits == "SEARCH reader_bits USING PRIMARY KEY (kind=? AND ref=?)"
    sent = plan(report.SENT_SQL.format(scope="o.status = 'sent' AND o.sent_at IS NOT NULL"), "series", "x")
    assert "COVERING INDEX outbox_sent_kind_ref (kind=? AND ref=?)" in sent
    # With the statistics ANALYZE wrote for scale.py's database, a window seeks (kind, ref)
    # instead of skip-scanning every (kind, ref) for the sent_at range.
    db.execute("ANALYZE")
    db.execute("DELETE FROM sqlite_stat1 WHERE tbl = 'outbox'")
    db.conn.executemany("INSERT INTO sqlite_stat1 VALUES ('outbox', ?, ?)", [
        ("outbox_sent_kind_ref", "500000 250000 41667 41667 41667 41667"), ("outbox_sent_at", "500000 5 5"),
        ("outbox_ref", "500000 83334 83334"), ("outbox_subscriber", "500000 5 5")])
    db.execute("ANALYZE sqlite_schema")  # reload them
    windowed = {column: plan(report.SENT_SQL.format(scope="o.status = 'sent' AND o.sent_at IS NOT NULL"
                                                    + report._window(column, "a", "b")[0]), "a", "b", "series", "x")
                for column in ("o.sent_at", "+o.sent_at")}
    assert "ANY(kind)" in windowed["o.sent_at"]
    assert windowed["+o.sent_at"] == "SEARCH o USING COVERING INDEX outbox_sent_kind_ref (kind=? AND ref=?)"


# ----------------------------------------------------------------- reader_bits (migration 0032)
def test_readers_answer_as_frozensets_do():
    """Readers (an int's bits) gives what Report.rows asks of a frozenset: len, <=, &, |."""
    rng = random.Random(7)
    for _ in range(300):
        top = rng.choice((3, 64, 130, 5000))
        a, b = ({rng.randrange(top) for _ in range(rng.randrange(0, 40))} for _ in range(2))
        if rng.random() < 0.3:
            b |= a  # contained
        ra, rb = report.Readers.of(a), report.Readers.of(b)
        assert (len(ra), ra <= rb, rb <= ra, bool(ra)) == (len(a), a <= b, b <= a, bool(a))
        assert ((ra & rb).bits, (ra | rb).bits) == (report.Readers.of(a & b).bits, report.Readers.of(a | b).bits)
        requests = report.Readers.of(b, "request")  # another space: shares nothing with subscribers
        as_tuples = frozenset(("request", i) for i in b)
        assert (requests <= ra, len(ra & requests), ra <= requests) == (as_tuples <= a, 0, not a)
    assert len(report.Readers.of([0, 63, 64, 2**20])) == 4


def _read_from_events(db, settings, monkeypatch):
    """The all-time report with its sets read from the events, as a window's are."""
    monkeypatch.setattr(report, "_sets", lambda db, lo, hi: report.EventLog(db, lo, hi))
    return report.compute(db, settings)


def test_reader_bits_follow_the_events_and_give_the_same_report(db, settings, monkeypatch):
    """The triggers keep reader_bits equal to the migration's backfill query over the
    events, through inserts, deletes, updates and erased readers; and the all-time
    report read from it is the one read from the events, text and all."""
    rng = random.Random(11)
    seed(db, rng, readers=300)
    db.execute("INSERT INTO events (at, kind, subscriber_id, ref) VALUES ('2026-10-02', 'sent', 299, 'campaign:1')")
    assert reader_bits(db) == reader_bits_from_events(db) and len(reader_bits(db)) > 20
    assert {w for _k, _r, w, _b in reader_bits(db)} == {0, 1, 2, 3, 4}  # ids 1..300: five 64-reader words
    with transaction(db):
        ids = [i for (i,) in db.execute("SELECT id FROM events WHERE subscriber_id IS NOT NULL")]
        for eid in rng.sample(ids, 200):
            db.execute("DELETE FROM events WHERE id = ?", (eid,))
        for eid in rng.sample([i for i in ids if db.execute("SELECT 1 FROM events WHERE id = ?", (i,)).fetchone()],
                              100):
            db.execute("UPDATE events SET subscriber_id = ?, kind = ?, ref = ? WHERE id = ?",
                       (rng.choice((None, rng.randrange(1, 301))), rng.choice(KINDS + ("sent", "enrolled")),
                        rng.choice(SENT_REFS + (None, f"series:{COURSE}")), eid))
        db.execute("UPDATE events SET data = '{}' WHERE subscriber_id = 5")  # not a reader, kind or ref change
        db.execute("DELETE FROM outbox WHERE subscriber_id IN (7, 64, 65)")
        db.execute("DELETE FROM series_deliveries WHERE subscriber_id IN (7, 64, 65)")
        db.execute("DELETE FROM subscribers WHERE id IN (7, 64, 65)")  # their events: SET NULL
    assert reader_bits(db) == reader_bits_from_events(db)
    assert not [row for row in reader_bits(db) if row[2] == 1 and row[3] & 3]  # 64 and 65 are gone
    fast = report.compute(db, settings)
    assert isinstance(fast.steps[0].people, report.Readers)
    slow = _read_from_events(db, settings, monkeypatch)
    assert isinstance(slow.steps[0].people, frozenset)
    assert report.render_text(fast) == report.render_text(slow)
    assert [(s.label, s.count, a, b) for s, a, b in fast.rows()] == [(s.label, s.count, a, b) for s, a, b in slow.rows()]
    of_stage = [a for _s, a, _b in fast.rows()[1:]]
    assert None in of_stage and any(a is not None for a in of_stage)  # some contained, some not


def test_a_negative_reader_id_sends_the_report_to_the_events(db, settings):
    """SQLite never assigns one, but a stored negative id has no bit: the report reads the events."""
    with transaction(db):
        db.execute("INSERT INTO subscribers (id, email, email_hash, status, created_at, updated_at) "
                   "VALUES (-3, 'n@example.com', 'hn', 'active', '2026-10-02', '2026-10-02')")
        db.execute("INSERT INTO events (at, kind, subscriber_id) VALUES ('2026-10-02', 'subscribed', -3)")
    assert reader_bits(db) == reader_bits_from_events(db) == [("subscribed", "", -1, 2**61)]
    rep = report.compute(db, settings)
    assert rep.steps[0].count == 1 and rep.steps[0].people == frozenset({"-3"})


def test_widening_the_event_kinds_keeps_the_reader_bits_triggers(db, clock):
    """A later migration that adds an event kind rebuilds ``events``; the triggers come along."""
    from funnel import db as schema

    sql = db.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()[0]
    keep = [r[0] for r in db.execute("SELECT sql FROM sqlite_master WHERE tbl_name = 'events' "
                                     "AND type IN ('index', 'trigger') AND sql IS NOT NULL")]
    assert sum(s.startswith("CREATE TRIGGER reader_bits") for s in keep) == 3
    with transaction(db):  # an events table without the 'admin' kind, with its indexes and triggers
        db.execute("ALTER TABLE events RENAME TO events_before")
        db.execute(sql.replace(", 'admin'", ""))
        db.execute("INSERT INTO events SELECT * FROM events_before")
        db.execute("DROP TABLE events_before")
        for statement in keep:
            db.execute(statement)
        schema._widen_event_kinds(db)
    after = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'events'")}
    assert {"reader_bits_insert", "reader_bits_delete", "reader_bits_update"} <= after
    with transaction(db):
        db.execute("INSERT INTO subscribers (id, email, email_hash, status, created_at, updated_at) "
                   "VALUES (3, 'a@example.com', 'h', 'active', '2026-10-02', '2026-10-02')")
        schema.log_event(db, "confirmed", clock(), 3)
    assert reader_bits(db) == [("confirmed", "", 0, 8)]


def test_the_migration_fills_reader_bits_from_the_events_already_there(settings, monkeypatch):
    """An upgraded database: migration 0032 backfills reader_bits from the existing events."""
    import sqlite_utils

    from funnel.db import connect, migrations

    raw = sqlite_utils.Database(settings.db)
    migrations.apply(raw, stop_before="0032_reader_bits")
    seed(raw, random.Random(5))
    raw.close()
    db = connect(settings.db, migrate=True)
    assert reader_bits(db) == reader_bits_from_events(db) and len(reader_bits(db)) > 20
    before = report.render_text(report.compute(db, settings))
    with transaction(db):
        db.execute("DELETE FROM reader_bits")
    assert report.render_text(_read_from_events(db, settings, monkeypatch)) == before
