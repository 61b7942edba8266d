"""The admin dashboard's "Clicks": human clicks on tracked links, not scanners' or offer events."""

from __future__ import annotations

import random
from datetime import timedelta

from conftest import sql_trace

from campaigns import dashboard
from funnel.db import iso, log_event, transaction


def test_dashboard_counts_human_clicks_from_the_clicks_table(db, clock):
    now = clock()
    with transaction(db):
        db.execute(
            "INSERT INTO subscribers (id, email, email_hash, status, created_at, updated_at) "
            "VALUES (1, 'p1@example.com', 'h1', 'active', ?, ?)", (iso(now), iso(now)),
        )  # fmt: skip
        db.execute(
            "INSERT INTO outbox (id, dedupe_key, kind, subscriber_id, ref, to_addr, message_id, "
            "status, due_at, created_at, updated_at, sent_at) VALUES (1, 'k1', 'broadcast', 1, "
            "'campaign:1', 'p1@example.com', '<m1@x>', 'sent', ?, ?, ?, ?)", (iso(now),) * 4,
        )  # fmt: skip
        clicks = [
            (0, 2, "human"), (1, 3, "human"), (1, 4, "repeat"), (2, 5, "scanner"),  # this week
            (2, 12, "human"),  # this month
            (3, 45, "human"),  # before that
        ]
        for index, days_ago, verdict in clicks:
            db.execute(
                "INSERT INTO clicks (outbox_id, link_index, link, at, verdict) VALUES (1, ?, ?, ?, ?)",
                (index, f"https://x/{index}", iso(now - timedelta(days=days_ago)), verdict),
            )
        log_event(db, "clicked_offer", now - timedelta(days=1), 1, "webinar:spine-health")
    rows = dict(dashboard.activity(db, now))
    assert rows["Clicks"] == {7: 2, 30: 3}
    assert "Offer clicks" not in rows


def _plans(db, fn) -> list[tuple[str, str]]:
    """(statement, plan) for each SELECT ``fn`` runs, as SQLite ran it (values bound)."""
    with sql_trace(db) as ran:
        fn()
    return [(sql, " | ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN " + sql)))
            for sql in ran if sql.lstrip().startswith("SELECT")]


def test_the_dashboard_reads_indexes_only(db, clock):
    """Activity and outbox health seek indexes: at 5M outbox rows and 10M events a
    pass over either table took seconds on every dashboard load."""
    plans = _plans(db, lambda: (dashboard.activity(db, clock()), dashboard.outbox_health(db, clock())))
    assert len(plans) == len(dashboard.ACTIVITY) + 2
    for sql, plan in plans:
        # No pass over a table; a pass over outbox_claim reads only the waiting rows.
        scans = [step for step in plan.split(" | ") if step.startswith("SCAN ")
                 and not step.startswith("SCAN (subquery") and "USING INDEX outbox_claim" not in step]
        assert not scans, (sql, plan)
    used = " ".join(plan for _sql, plan in plans)
    for index in ("events_kind_at_reader", "clicks_verdict_at", "outbox_claim", "outbox_failed"):
        assert index in used, (index, used)


def test_outbox_health_counts_what_a_pass_over_every_row_counts(db, clock):
    now = clock()
    rng = random.Random(7)
    with transaction(db):
        for i in range(400):
            status = rng.choice(["queued", "retry", "failed", "sent", "sending", "cancelled"])
            age = rng.choice([1, 29, 31, 90])
            db.execute(
                "INSERT INTO outbox (dedupe_key, kind, to_addr, message_id, status, due_at, "
                "created_at, updated_at, relay, held_config, last_error) "
                "VALUES (?, 'broadcast', 'r@example.com', ?, ?, ?, ?, ?, ?, ?, ?)",
                (f"k{i}", f"<m{i}@x>", status, iso(now), iso(now), iso(now - timedelta(days=age)),
                 rng.choice([None, "main", "backup"]), rng.choice([None, None, "f1"]),
                 rng.choice([None, "550 no", "parked: the sender crashed while sending this message 3 times"])),
            )  # fmt: skip
    since = iso(now - timedelta(days=30))
    plain = db.execute(
        "SELECT COALESCE(relay, 'not tried yet'), "
        "SUM(status = 'queued' AND held_config IS NULL), SUM(status = 'queued' AND held_config IS NOT NULL), "
        "SUM(status = 'retry'), "
        "SUM(status = 'failed' AND updated_at >= ? AND COALESCE(last_error, '') NOT LIKE 'parked:%'), "
        "SUM(status = 'failed' AND updated_at >= ? AND last_error LIKE 'parked:%') "
        "FROM outbox NOT INDEXED WHERE status IN ('queued', 'retry') OR (status = 'failed' AND updated_at >= ?) "
        "GROUP BY 1 ORDER BY 1",
        (since, since, since),
    ).fetchall()
    got = [(h.relay, h.queued, h.held, h.retrying, h.failed, h.parked) for h in dashboard.outbox_health(db, now)]
    assert got == [tuple(int(v or 0) if i else v for i, v in enumerate(r)) for r in plain]
    assert sum(h.failed + h.parked for h in dashboard.outbox_health(db, now)) > 0
