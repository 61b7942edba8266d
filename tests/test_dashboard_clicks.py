"""The admin dashboard's "Clicks": human clicks on tracked links, not scanners' or offer events."""

from __future__ import annotations

from datetime import timedelta

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


def test_the_click_count_reads_an_index(db):
    plan = " ".join(str(r) for r in db.execute("EXPLAIN QUERY PLAN " + dashboard.CLICKS[1], ("a", "b")))
    assert "clicks_verdict_at" in plan and "SCAN" not in plan, plan


def test_sends_count_mail_to_readers_not_the_admins_test_sends(db, settings, clock, smtp_server):
    from campaigns import broadcasts
    from campaigns.sender import send_due
    from campaigns.worker import tick
    from subscribers import optin

    sid = optin.signup(db, settings, "alex@example.com", clock(), name="Alex").subscriber_id
    optin.activate_imported(db, settings, sid, clock(), "test fixture")
    cid = broadcasts.create(db, settings, clock(), subject="Winter hours", body_md="Open on Saturdays.")
    broadcasts.test_send(db, settings, cid, "manager@backinmotion-physio.co.uk", clock())
    broadcasts.schedule_campaign(db, settings, cid, clock(), send_now=True)
    tick(db, settings, clock())
    send_due(db, settings, clock)
    assert smtp_server.to("manager@backinmotion-physio.co.uk") and smtp_server.to("alex@example.com")
    to_reader = len(smtp_server.to("alex@example.com"))  # the broadcast and series part 1
    assert to_reader == 2
    assert dict(dashboard.activity(db, clock()))["Sends"] == {7: to_reader, 30: to_reader}
