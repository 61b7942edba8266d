"""The database at clinic-chain size: 1M subscribers, and what the hot queries cost there.

    .venv/bin/python bench/scale.py [--scale 1.0] [--keep PATH] [--json]

Builds, in SQL (recursive CTEs, one transaction per table), a database with
SCALE x 1,000,000 subscribers in 20 time zones, each on the broadcasts stream
and in the bundled series at a mixed step (with the parts already received in
``series_deliveries``), 5 outbox rows and 10 events per subscriber.  Then it
measures, in this one run:

* a worker tick with nothing new due (target <= 50 ms);
* the claim query picking 1,000 due rows among the outbox (target <= 5 ms);
* queueing part 1 for half of the readers at once (those outside their local quiet
  hours get a row, the others are re-timed; target >= 20k rows/s);
* ``segments.count`` of a series-progress segment (target < 1 s);
* ``funnel report``: ``report.compute`` over all the events and its text table
  (target < 2 s);
* the admin console's person search, ``subscribers.people.search`` (what
  /admin/people/ runs): the slowest median of an address prefix, a name
  prefix, one letter and the first page (target < 100 ms);
* enrolling every reader in the series afresh, ``enrollment.enroll_segment``
  with the segment ``all`` (what ``funnel series enroll SLUG --segment all``
  runs; target <= 30 s at 1M);
* a SCALE x 1M-row CSV import (``subscribers.io.import_csv``, pending, with
  its confirmations) against ``sqlite-utils insert --csv`` of the same file,
  in this run (bench/import.py; target <= 2x);
* the database size per subscriber;

and prints ``EXPLAIN QUERY PLAN`` for the queries, flagging a full-table SCAN.
The last line is one JSON object with the figures (``make bench`` collects it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from campaigns import enrollment, report  # noqa: E402
from campaigns.worker import tick  # noqa: E402
from funnel.db import connect, iso, transaction  # noqa: E402
from funnel.settings import test_settings  # noqa: E402
from subscribers import segments  # noqa: E402
from subscribers.people import Filters, search  # noqa: E402

import_bench = importlib.import_module("import")  # bench/import.py ("import" is a keyword)

SLUG = "importance-of-exercise"
ZONES = (
    "Europe/London", "Europe/Dublin", "Europe/Paris", "Europe/Berlin", "Europe/Madrid",
    "Europe/Rome", "Europe/Athens", "Europe/Helsinki", "America/New_York", "America/Chicago",
    "America/Denver", "America/Los_Angeles", "America/Toronto", "America/Sao_Paulo",
    "Asia/Tokyo", "Asia/Singapore", "Asia/Kolkata", "Australia/Sydney", "Pacific/Auckland",
    "Africa/Johannesburg",
)  # fmt: skip
EVENT_MIX = ("sent", "sent", "sent", "sent", "subscribed", "confirmed", "enrolled",
             "clicked_offer", "unsubscribed", "registered")  # fmt: skip


def seq(n: int) -> str:
    return f"WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < {n}) "


def build(db, n: int, now: datetime, keys: list[str]) -> dict[str, float]:
    """Fill the tables (*keys*: the series' step keys); returns seconds per table."""
    stamp, past = iso(now), iso(now - timedelta(days=30))
    far = iso(now + timedelta(days=365))
    zones = " UNION ALL ".join(f"SELECT {k}, '{z}'" for k, z in enumerate(ZONES))
    parts = " UNION ALL ".join(f"SELECT {i + 1}, '{k}'" for i, k in enumerate(keys))
    kinds = " UNION ALL ".join(f"SELECT {k}, '{x}'" for k, x in enumerate(EVENT_MIX))
    steps = {
        "subscribers": (
            f"{seq(n)}, zones(k, name) AS ({zones}) "
            "INSERT INTO subscribers (id, email, email_hash, name, timezone, status, created_at, "
            "updated_at, confirmed_at) SELECT i, 'reader' || i || '@example' || (i % 97) || '.com', "
            "printf('%064d', i), 'Reader ' || i, zones.name, 'active', ?, ?, ? "
            "FROM seq JOIN zones ON zones.k = i % 20",
            (past, past, past),
        ),
        "subscriptions": (
            f"{seq(n)} INSERT INTO subscriptions (subscriber_id, stream, status, updated_at) "
            f"SELECT i, 'broadcasts', 'subscribed', ? FROM seq UNION ALL "
            f"SELECT i, 'series:{SLUG}', 'subscribed', ? FROM seq",
            (past, past),
        ),
        "enrollments": (
            f"{seq(n)} INSERT INTO enrollments (subscriber_id, series, status, enrolled_at, "
            "next_step, next_due_at, updated_at) SELECT i, ?, "
            "CASE WHEN i % 7 = 6 THEN 'completed' ELSE 'active' END, ?, i % 6, "
            "CASE WHEN i % 7 = 6 THEN NULL ELSE ? END, ? FROM seq",
            (SLUG, past, far, past),
        ),
        "series_deliveries": (
            f"WITH parts(p, key) AS ({parts}) INSERT INTO series_deliveries (subscriber_id, "
            "series, step_key, part, at) SELECT e.subscriber_id, e.series, parts.key, p, ? "
            "FROM enrollments e JOIN parts ON p <= e.next_step",
            (past,),
        ),
        "outbox": (
            f"{seq(5 * n)} INSERT INTO outbox (id, dedupe_key, kind, subscriber_id, stream, ref, "
            "to_addr, message_id, status, due_at, attempts, created_at, updated_at, sent_at) "
            "SELECT i, 'scale:' || i, CASE WHEN i % 5 = 0 THEN 'broadcast' ELSE 'series' END, "
            f"1 + i % {n}, 'broadcasts', 'series:{SLUG}:' || (i % 6), "
            f"'reader' || (1 + i % {n}) || '@example.com', '<' || i || '.scale@clinic.example>', "
            "'sent', ?, 1, ?, ?, ? FROM seq",
            (past, past, past, past),
        ),
        "events": (
            f"{seq(10 * n)}, kinds(k, name) AS ({kinds}) "
            "INSERT INTO events (at, kind, subscriber_id, ref) "
            f"SELECT strftime('%Y-%m-%dT%H:%M:%S', ?, '-' || (i % 60) || ' days'), kinds.name, "
            f"1 + i % {n}, 'series:{SLUG}:' || (i % 6) FROM seq JOIN kinds ON kinds.k = i % 10",
            (stamp,),
        ),
    }
    took = {}
    # The build's own page cache (the measurements run with the connection's usual one):
    # 10M events go into three indexes in no useful order.
    (cache,) = db.execute("PRAGMA cache_size").fetchone()
    db.execute("PRAGMA cache_size = -1048576")
    for table, (sql, params) in steps.items():
        t0 = time.perf_counter()
        with transaction(db):
            db.execute(sql, params)
        took[table] = time.perf_counter() - t0
    db.execute(f"PRAGMA cache_size = {cache}")
    db.execute("PRAGMA shrink_memory")
    with transaction(db):
        db.execute("DELETE FROM enrollment_queue")  # the triggers noted every insert
    db.execute("ANALYZE")
    return took


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def plan(db, sql: str, params=()) -> list[str]:
    return [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()]


CLAIM_SQL = (
    "SELECT id FROM outbox WHERE status IN ('queued', 'retry') AND due_at <= ? "
    "ORDER BY priority, due_at, id LIMIT 1000"
)
SENT_SCOPE = "o.status = 'sent' AND o.sent_at IS NOT NULL"  # all time
SEARCH_SQL = (  # the text search of subscribers.people.search, for its plan
    "SELECT s.id FROM subscribers s WHERE ((s.email COLLATE NOCASE >= ? AND s.email COLLATE NOCASE < ?) "
    "OR (s.name COLLATE NOCASE >= ? AND s.name COLLATE NOCASE < ?)) ORDER BY s.id DESC LIMIT 51"
)


def measure(db, settings, n: int, now: datetime) -> dict:
    out: dict = {}
    series = enrollment.load(settings, SLUG)
    enrollment.apply_version(db, series, now)
    tick(db, settings, now)  # warm: the first tick loads the series files
    out["idle_tick_ms"] = median_ms(lambda: tick(db, settings, now), 10)

    # 1,000 due rows among the outbox.
    with transaction(db):
        db.execute(
            "UPDATE outbox SET status = 'queued', sent_at = NULL WHERE id IN "
            "(SELECT id FROM outbox ORDER BY id DESC LIMIT 1000)"
        )
    stamp = iso(now)
    out["due_query_ms"] = median_ms(lambda: db.execute(CLAIM_SQL, (stamp,)).fetchall(), 10)
    out["plans"] = {"claim": plan(db, CLAIM_SQL, (stamp,))}
    with transaction(db):
        db.execute("UPDATE outbox SET status = 'sent', sent_at = ? WHERE status = 'queued'", (stamp,))

    where = [f"series:{SLUG}>=3"]
    t0 = time.perf_counter()
    out["segment_members"] = segments.count(db, settings, None, where=where, now=now)
    out["segment_count_s"] = time.perf_counter() - t0
    sql, params = segments._scoped(settings, None, where, now, None)
    out["plans"]["segment"] = plan(
        db, f"SELECT COUNT(*) FROM subscribers s WHERE s.email IS NOT NULL AND ({sql})", params
    )

    t0 = time.perf_counter()
    report.render_text(report.compute(db, settings, now=now))  # what `funnel report` does
    out["report_s"] = time.perf_counter() - t0
    out["plans"]["report (readers of a step)"] = plan(db, report.READERS_SQL.format(where=""), ("sent", "x"))
    out["plans"]["report (messages sent)"] = plan(db, report.SENT_SQL.format(scope=SENT_SCOPE), ("series", "x"))

    searches = {}
    # (A one-letter search is bench/admin_search.py's: here every reader's address and
    # name start with "r", so it would time a search that matches everybody.)
    for label, q in (("address prefix", f"reader{n // 2}"), ("name prefix", f"Reader {n // 3}"),
                     ("prefix nobody has", "xq"), ("first page", "")):
        searches[label] = median_ms(lambda q=q: search(db, settings, Filters(q=q), now), 5)
    out["search_ms"] = max(searches.values())
    out["search_cases_ms"] = {k: round(v, 2) for k, v in searches.items()}
    term = f"reader{n // 2}"
    out["plans"]["search"] = plan(db, SEARCH_SQL, (term, term + "\U0010ffff", term, term + "\U0010ffff"))

    # Half of the readers enrolled a minute ago, their part 1 due at once (it goes out
    # right after enrolment, outside the reader's local quiet hours): the queueing rate.
    just = iso(now - timedelta(minutes=1))
    with transaction(db):
        db.execute(
            "DELETE FROM series_deliveries WHERE subscriber_id % 2 = 0 AND series = ?", (SLUG,)
        )
        db.execute(
            "UPDATE enrollments SET status = 'active', next_step = 0, enrolled_at = ?, "
            "next_due_at = ? WHERE subscriber_id % 2 = 0",
            (just, just),
        )
    due = db.execute(
        "SELECT COUNT(*) FROM enrollments WHERE status = 'active' AND next_due_at <= ?", (stamp,)
    ).fetchone()[0]
    t0 = time.perf_counter()
    ticked = enrollment.TickReport()
    queued = enrollment.schedule_series(db, settings, now, report=ticked)
    took = time.perf_counter() - t0
    out["queue_due"], out["queued"], out["queue_s"] = due, queued, took
    out["queue_postponed"] = ticked.postponed
    out["queue_rows_per_s"] = queued / took if took else 0.0
    out["queue_processed_per_s"] = due / took if took else 0.0

    # Every reader enrolled afresh: `funnel series enroll SLUG --segment all`.
    with transaction(db):
        db.execute("DELETE FROM enrollments WHERE series = ?", (SLUG,))
        db.execute("DELETE FROM enrollment_queue")
    t0 = time.perf_counter()
    enrolled = enrollment.enroll_segment(db, settings, SLUG, now, segment="all")
    out["enrol_s"] = time.perf_counter() - t0
    out["enrolled"] = enrolled.enrolled
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 = 1M subscribers")
    ap.add_argument("--keep", type=Path, help="build the database here and keep it")
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    args = ap.parse_args()
    n = int(1_000_000 * args.scale)
    # Noon UTC on a weekday: outside the quiet hours in most of the zones.
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="funnel-bench-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        settings = test_settings(folder)
        db = connect(settings.db, migrate=True)
        t0 = time.perf_counter()
        keys = [step.key for step in enrollment.load(settings, SLUG).steps]
        took = build(db, n, now, keys)
        built = time.perf_counter() - t0
        size = os.path.getsize(settings.db)
        print(f"built {n:,} subscribers, {5 * n:,} outbox rows, {10 * n:,} events in "
              f"{built:.0f} s (" + ", ".join(f"{k} {v:.1f} s" for k, v in took.items()) + ")")
        print(f"database {size / 2**20:,.0f} MB = {size / n:,.0f} bytes per subscriber")
        m = measure(db, settings, n, now)
        db.close()
        if args.keep is None:  # its gigabytes are not left to the import's disk and cache
            shutil.rmtree(folder, ignore_errors=True)
        imported = import_bench.run(n)  # its own fresh database and CSV file
        m.update({"import_rows": n, "import_s": imported["import_s"], "import_cpu_s": imported["import_cpu_s"],
                  "sqlite_utils_s": imported["sqlite_utils_s"], "import_ratio": imported["ratio"]})
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)

    def target(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print(f"idle tick: {m['idle_tick_ms']:.1f} ms median (target <= 50 ms: "
          f"{target(m['idle_tick_ms'] <= 50)})")
    print(f"due query, 1,000 rows of {5 * n:,}: {m['due_query_ms']:.2f} ms (target <= 5 ms: "
          f"{target(m['due_query_ms'] <= 5)})")
    print(f"queueing: {m['queued']:,} series steps queued of {m['queue_due']:,} due in "
          f"{m['queue_s']:.1f} s = {m['queue_rows_per_s']:,.0f} rows/s (target >= 20,000: "
          f"{target(m['queue_rows_per_s'] >= 20_000)}); {m['queue_processed_per_s']:,.0f} due "
          f"enrollments handled per second, the rest re-timed to their local send hour or "
          f"postponed ({m['queue_postponed']:,})")
    print(f"segments count series:{SLUG}>=3: {m['segment_members']:,} in "
          f"{m['segment_count_s']:.2f} s (target < 1 s: {target(m['segment_count_s'] < 1)})")
    print(f"report (compute + text) over {10 * n:,} events: {m['report_s']:.2f} s (target < 2 s: "
          f"{target(m['report_s'] < 2)})")
    print(f"person search (people.search, slowest median of {', '.join(m['search_cases_ms'])}): "
          f"{m['search_ms']:.1f} ms (target < 100 ms: {target(m['search_ms'] < 100)})")
    print(f"enrol every reader (enroll_segment, segment all): {m['enrolled']:,} in {m['enrol_s']:.1f} s "
          f"(target <= 30 s at 1M, {30 * args.scale:.1f} s at this scale: "
          f"{target(m['enrol_s'] <= 30 * args.scale)})")
    print(f"import {m['import_rows']:,} CSV rows (pending, confirmations queued): {m['import_s']:.1f} s, "
          f"{m['import_cpu_s']:.1f} s CPU; sqlite-utils insert --csv, same file: {m['sqlite_utils_s']:.1f} s; "
          f"ratio {m['import_ratio']:.2f}x (target <= 2x: {target(m['import_ratio'] <= 2)})")
    print("EXPLAIN QUERY PLAN:")
    for name, lines in m.pop("plans").items():
        scans = [x for x in lines if x.startswith("SCAN") and "USING" not in x and "(subquery" not in x]
        print(f"  {name}: " + " | ".join(lines) + ("   <- full scan" if scans else ""))
    if args.json:
        print(json.dumps({"bench": "scale", "subscribers": n, "bytes_per_subscriber": size / n,
                          **{k: round(v, 3) if isinstance(v, float) else v
                             for k, v in m.items()}}))  # fmt: skip


if __name__ == "__main__":
    main()
