"""A batch's readers read ahead in bulk, and still exact: a change committed while the
batch is built reaches the messages built after it (campaigns/sender.py, lifecycle.read_ahead)."""

from __future__ import annotations

import pytest
from conftest import sql_trace
from test_broadcasts import add_active

from campaigns import broadcasts, sender
from campaigns.smtp import Relay
from funnel.db import connect, one_state, transaction
from funnel.errors import NotFound
from subscribers import lifecycle


def _broadcast(db, settings, clock, n: int) -> list[int]:
    ids = [add_active(db, f"r{i}@example.com") for i in range(n)]
    cid = broadcasts.create(db, settings, clock(), subject="Hi", body_md="Hello, {{ first_name }}.")
    broadcasts.schedule_campaign(db, settings, cid, clock(), send_now=True)
    assert broadcasts.queue(db, settings, cid, clock()) == n
    return ids


def test_an_unsubscribe_committed_mid_batch_stops_the_messages_built_after_it(
    db, settings, clock, smtp_server
):
    ids = _broadcast(db, settings, clock, 5)
    other = connect(settings.db)

    class UnsubscribesOnFirstSend(Relay):
        def send(self, envelope_from, recipient, data):
            if self.sent == 0:  # while message 1 is on the wire, someone else commits
                lifecycle.unsubscribe(other, ids[3], clock())
                with transaction(other):
                    other.execute(
                        "UPDATE subscriptions SET status = 'unsubscribed' "
                        "WHERE subscriber_id = ? AND stream = 'broadcasts'",
                        (ids[4],),
                    )
            return super().send(envelope_from, recipient, data)

    relay = UnsubscribesOnFirstSend(settings.relays[0])
    summary = sender.send_due(db, settings, clock, relay=relay)
    relay.close()
    other.close()

    assert summary.claimed == 5 and summary.sent == 3  # one batch: read ahead once
    got = sorted(r for m in smtp_server.messages for r in m.rcpt_tos)
    assert got == ["r0@example.com", "r1@example.com", "r2@example.com"]
    status = dict(db.execute("SELECT subscriber_id, status FROM outbox").fetchall())
    assert (status[ids[3]], status[ids[4]]) == ("cancelled", "cancelled")
    reasons = dict(db.execute("SELECT subscriber_id, last_error FROM outbox").fetchall())
    assert "unsubscribed" in reasons[ids[3]] and "not subscribed to broadcasts" in reasons[ids[4]]


def test_a_batch_reads_its_readers_in_two_queries_not_two_per_message(
    db, settings, clock, smtp_server
):
    _broadcast(db, settings, clock, 6)
    with sql_trace(db) as statements:
        assert sender.send_due(db, settings, clock).sent == 6
    per_reader = [s for s in statements if "FROM subscribers WHERE id = " in s]
    per_subscription = [s for s in statements if "FROM subscriptions WHERE subscriber_id = " in s]
    ahead = [s for s in statements if "FROM subscribers WHERE id IN (SELECT value FROM json_each" in s]
    assert (per_reader, per_subscription, len(ahead)) == ([], [], 1)
    # One state check per message (PRAGMA data_version), not one per read.
    assert sum(s == "PRAGMA data_version" for s in statements) <= 6 + 3
    assert len(smtp_server.messages) == 6


def test_read_ahead_answers_like_the_single_reads(db, settings, clock):
    a = add_active(db, "a@example.com")
    b = add_active(db, "b@example.com", streams=("webinars",))
    lifecycle.read_ahead(db, [(a, "broadcasts"), (b, "broadcasts"), (987654, "broadcasts")])
    with one_state(db):
        assert lifecycle.current(db, a) == lifecycle.get(db, a)
        assert lifecycle.subscription(db, a, "broadcasts") == ("subscribed", None)
        assert lifecycle.subscription(db, b, "broadcasts") is None  # not subscribed to it
        assert lifecycle.subscription(db, b, "webinars") == ("subscribed", None)  # not read ahead
        with pytest.raises(NotFound, match="subscriber 987654 does not exist"):
            lifecycle.current(db, 987654)
        # A write on this connection inside the block is seen by the next read.
        db.execute("UPDATE subscribers SET name = 'Renamed' WHERE id = ?", (a,))
        assert lifecycle.current(db, a).name == "Renamed"
