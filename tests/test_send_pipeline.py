"""The send loop's pipeline: row N+2 is built while rows N and N+1 are with the wire thread.

What must not change with it: outcomes land in row order, a row handed to the
wire thread whose answer was not taken stays in 'sending' (uncertain next
run), a row only built goes back untouched, a row handed over after the batch
was stopped is not sent, and no thread outlives send_due.
"""

from __future__ import annotations

import threading
from collections import Counter

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


def test_an_interrupt_leaves_the_rows_on_the_wire_uncertain(db, settings, clock, smtp_server,
                                                            mailings):  # fmt: skip
    """Ctrl-C while building row 3: row 0 is answered, rows 1 and 2 were handed to the
    wire thread (their answers not taken), rows 3-5 were never handed over."""
    assert sender.PIPELINE_DEPTH == 2
    ids = mailings.many(6)
    plain = kinds.BUILDERS["test_bulk"]

    def build(db, settings, row, sub, now):
        if row.to_addr == "r3@example.com":
            raise KeyboardInterrupt
        return plain(db, settings, row, sub, now)

    kinds.BUILDERS["test_bulk"] = build
    with pytest.raises(KeyboardInterrupt):
        sender.send_due(db, settings, clock)
    assert not wire_threads()  # the sends in flight finished before send_due returned
    rows = [mailings.row(rid) for rid in ids]
    assert [r["status"] for r in rows] == ["sent", "sending", "sending", "queued", "queued",
                                           "queued"]  # fmt: skip
    assert [r["attempts"] for r in rows[3:]] == [0, 0, 0]  # given back untouched

    kinds.BUILDERS["test_bulk"] = plain
    clock.advance(hours=1)  # past the lease: the next run finds rows 1 and 2 uncertain
    summary = sender.send_due(db, settings, clock)
    assert summary.recovered == 2 and summary.sent == 5
    rows = [mailings.row(rid) for rid in ids]
    assert {r["status"] for r in rows} == {"sent"}
    assert [r["uncertain"] for r in rows] == [0, 1, 1, 0, 0, 0]
    seen = Counter(m.message["Message-ID"] for m in smtp_server.messages)
    assert len(seen) == 6 and sorted(seen.values()) == [1, 1, 1, 1, 2, 2]  # rows 1 and 2 twice
    assert seen[rows[1]["message_id"]] == seen[rows[2]["message_id"]] == 2


def test_rows_queued_behind_a_stop_go_back_unsent(db, settings, clock, smtp_server, mailings):
    """The relay reaches its hourly limit with row 1: row 2 was already with the wire
    thread, and the pool refuses it unsent; it stays queued, untouched."""
    ids = mailings.many(5)
    limited = settings.replace(smtp_urls=(smtp_server.url + "?hourly=2",))

    summary = sender.send_due(db, limited, clock)

    assert summary.sent == 2 and "hourly limit" in summary.blocked
    rows = [mailings.row(rid) for rid in ids]
    assert [r["status"] for r in rows] == ["sent", "sent", "queued", "queued", "queued"]
    assert [r["attempts"] for r in rows[2:]] == [0, 0, 0]
    assert len(smtp_server.messages) == 2


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
