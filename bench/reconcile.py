"""What the enrollment reconciling pass costs at scale.

    .venv/bin/python bench/reconcile.py [--rows 200000] [--enrollments 1000000] [--idle-runs 50]

In one fresh database:

1. a pre-confirmed `import_csv` of ROWS readers (the triggers of migration 0013
   note each one in `enrollment_queue`);
2. the first `reconcile` after it, which enrols them all;
3. filler enrollments (finished, in other series) up to ENROLLMENTS in total,
   and every reader's part 1 marked as already queued far in the future, so
   nothing is due;
4. IDLE_RUNS passes with nothing new and nothing due: `reconcile` alone,
   `schedule_series` (reconcile + the due scan) and the worker's whole `tick`;
   the median and the worst are printed;
5. for comparison, the plain anti-join over every series subscription that a
   pass without the queue would run each time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from campaigns.enrollment import reconcile, schedule_series  # noqa: E402
from campaigns.worker import tick  # noqa: E402
from funnel.db import connect, iso, transaction  # noqa: E402
from funnel.settings import test_settings  # noqa: E402
from subscribers.io import import_csv  # noqa: E402


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def cpu_timed(fn) -> tuple[float, float]:
    """(wall, CPU of this process) seconds: on a shared machine the two differ."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:.2f} ms, worst {max(values) * 1000:.2f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--enrollments", type=int, default=1_000_000)
    ap.add_argument("--idle-runs", type=int, default=50)
    args = ap.parse_args()
    # One fixed instant for the whole run: 12:00 UTC is daytime in London.
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    with tempfile.TemporaryDirectory() as tmp:
        settings = test_settings(tmp)
        csv_path = Path(tmp) / "people.csv"
        with csv_path.open("w", encoding="utf-8") as fh:
            fh.write("email,name,timezone\n")
            for i in range(args.rows):
                fh.write(f"reader{i}@example{i % 97}.com,Reader {i},Europe/London\n")
        db = connect(settings.db, migrate=True)

        t_import, c_import = cpu_timed(lambda: import_csv(
            db, settings, csv_path, now, pre_confirmed=True, consent_note="bench"))  # fmt: skip
        queued = db.execute("SELECT COUNT(*) FROM enrollment_queue").fetchone()[0]
        enrolled = 0

        def first() -> None:
            nonlocal enrolled
            enrolled = reconcile(db, settings, now).enrolled

        t_first, c_first = cpu_timed(first)

        filler = max(0, args.enrollments - enrolled)
        far = iso(now + timedelta(days=365))
        with transaction(db):
            db.execute(
                "UPDATE enrollments SET next_due_at = ? WHERE status = 'active'", (far,)
            )
            per_series = max(1, args.rows)
            db.conn.executemany(
                "INSERT INTO enrollments (subscriber_id, series, status, enrolled_at, next_step, "
                "updated_at) VALUES (?, ?, 'completed', ?, 0, ?)",
                (
                    (1 + i % per_series, f"old-series-{i // per_series}", iso(now), iso(now))
                    for i in range(filler)
                ),
            )
        total = db.execute("SELECT COUNT(*) FROM enrollments").fetchone()[0]

        idle_reconcile = [timed(lambda: reconcile(db, settings, now)) for _ in range(args.idle_runs)]
        idle_schedule = [
            timed(lambda: schedule_series(db, settings, now)) for _ in range(args.idle_runs)
        ]
        idle_tick = [timed(lambda: tick(db, settings, now)) for _ in range(args.idle_runs)]
        slug = settings.enroll_series[0]
        naive = [
            timed(
                lambda: db.execute(
                    "SELECT COUNT(*) FROM subscriptions ss "
                    "JOIN subscribers s ON s.id = ss.subscriber_id AND s.status = 'active' "
                    "WHERE ss.stream = ? AND ss.status != 'unsubscribed' "
                    "AND NOT EXISTS (SELECT 1 FROM enrollments e WHERE "
                    "e.subscriber_id = ss.subscriber_id AND e.series = ?)",
                    (f"series:{slug}", slug),
                ).fetchone()
            )
            for _ in range(5)
        ]
        print(f"import {args.rows:,} pre-confirmed rows: {t_import:.2f} s (CPU {c_import:.2f} s) "
              f"({queued:,} readers queued for enrollment)")
        print(f"first reconcile: {enrolled:,} enrolled in {t_first:.2f} s (CPU {c_first:.2f} s, "
              f"{enrolled / c_first:,.0f} readers per CPU second)")
        print(f"{total:,} enrollments, nothing new, nothing due ({args.idle_runs} runs each):")
        print(f"  reconcile alone:              {ms(idle_reconcile)}")
        print(f"  schedule_series (+ due scan): {ms(idle_schedule)}")
        print(f"  worker tick (everything):     {ms(idle_tick)}")
        print(f"  for comparison, a full anti-join with no queue: {ms(naive)}")
        db.close()


if __name__ == "__main__":
    main()
