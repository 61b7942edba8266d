"""The send loop's one-deep pipeline: row N+1 is built while row N is on the wire.

What must not change with it: outcomes land in row order, a row handed to the
wire thread whose answer was not taken stays in 'sending' (uncertain next
run), a row only built goes back untouched, and no thread outlives send_due.
"""

from __future__ import annotations

import threading

import pytest

from campaigns import kinds, sender
from campaigns.content import Content


def wire_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("funnel-wire")]


def test_outcomes_in_row_order_and_no_thread_left(db, settings, clock, smtp_server, mailings):
    ids = mailings.many(9)
    smtp_server.rcpt_replies["r4@example.com"] = "550 5.1.1 no such user"
    smtp_server.rcpt_replies["r6@example.com"] = "451 4.3.0 try later"

    summary = sender.send_due(db, settings.replace(batch_size=4), clock)

    assert (summary.sent, summary.failed, summary.retry) == (7, 1, 1)
    status = {i: mailings.row(rid)["status"] for i, rid in enumerate(ids)}
    assert status == {**dict.fromkeys(range(9), "sent"), 4: "failed", 6: "retry"}
    got = [m.message["To"] for m in smtp_server.messages]
    assert got == [f"Reader {i} <r{i}@example.com>" for i in range(9) if i not in (4, 6)]
    assert not wire_threads()


def test_an_interrupt_leaves_the_row_on_the_wire_uncertain(db, settings, clock, smtp_server,
                                                           mailings):  # fmt: skip
    """Ctrl-C while building row 2: row 0 is answered, row 1 was handed to the wire
    thread (its answer not taken), rows 2-4 were never handed over."""
    ids = mailings.many(5)
    plain = kinds.BUILDERS["test_bulk"]

    def build(db, settings, row, sub, now):
        if row.to_addr == "r2@example.com":
            raise KeyboardInterrupt
        return plain(db, settings, row, sub, now)

    kinds.BUILDERS["test_bulk"] = build
    with pytest.raises(KeyboardInterrupt):
        sender.send_due(db, settings, clock)
    assert not wire_threads()  # the send in flight finished before send_due returned
    rows = [mailings.row(rid) for rid in ids]
    assert [r["status"] for r in rows] == ["sent", "sending", "queued", "queued", "queued"]
    assert [r["attempts"] for r in rows[2:]] == [0, 0, 0]  # given back untouched

    kinds.BUILDERS["test_bulk"] = plain
    clock.advance(hours=1)  # past the lease: the next run finds row 1 uncertain
    summary = sender.send_due(db, settings, clock)
    assert summary.recovered == 1 and summary.sent == 4
    rows = [mailings.row(rid) for rid in ids]
    assert {r["status"] for r in rows} == {"sent"} and rows[1]["uncertain"] == 1
    ids_seen = [m.message["Message-ID"] for m in smtp_server.messages]
    assert len(ids_seen) == 6 and len(set(ids_seen)) == 5  # only row 1 twice, same Message-ID


def test_a_build_failure_between_two_sends_keeps_row_order(db, settings, clock, smtp_server,
                                                           mailings):  # fmt: skip
    ids = mailings.many(4)
    plain = kinds.BUILDERS["test_bulk"]

    def build(db, settings, row, sub, now):
        if row.to_addr == "r1@example.com":
            return Content(kind="nope", subject="x", body_md="x")  # no such template
        return plain(db, settings, row, sub, now)

    kinds.BUILDERS["test_bulk"] = build
    summary = sender.send_due(db, settings, clock)
    assert summary.sent == 3
    assert [mailings.row(rid)["status"] for rid in ids][0::2] == ["sent", "sent"]
    assert mailings.row(ids[1])["status"] != "sent"
    assert mailings.row(ids[3])["status"] == "sent"


def test_the_switch_interval_is_short_while_a_wire_thread_runs_and_restored_after(
    db, settings, clock, smtp_server, mailings, monkeypatch
):
    import sys

    from campaigns.smtp import RelayPool

    seen = []
    real = RelayPool.send

    def send(self, *args):
        seen.append(sys.getswitchinterval())
        return real(self, *args)

    monkeypatch.setattr(RelayPool, "send", send)
    before = sys.getswitchinterval()
    mailings.many(3)
    assert sender.send_due(db, settings, clock).sent == 3
    assert seen == [min(before, sender._Wire.SWITCH_INTERVAL)] * 3
    assert sys.getswitchinterval() == before and not wire_threads()
