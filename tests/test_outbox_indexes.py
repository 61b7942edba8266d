"""The outbox's indexes after migration 0031, and the plans of the queries that lost one.

Every outbox insert writes each index whose WHERE the row meets, so the set is
kept small (the queueing rate at 1M readers, issue 15): ``outbox_due`` is gone
(``outbox_claim`` serves the due_at ranges through ``outbox.DUE_PRIORITIES``)
and ``outbox_campaign`` only holds rows of a campaign.  The queries are taken
as SQLite ran them (trace callback, values bound) and each plan must seek an
index, never SCAN the outbox.
"""

from __future__ import annotations

import json
import os
import re
from datetime import timedelta

import pytest
from conftest import sql_trace

from campaigns import enrollment, holds
from funnel import outbox
from funnel.db import connect, iso, transaction
from funnel.settings import test_settings


@pytest.fixture
def big(tmp_path, clock):
    """3,000 readers, 30,000 outbox rows: mostly sent, some queued at three priorities,
    some of a campaign, some held for a configuration error."""
    settings = test_settings(tmp_path, frequency_cap=2)
    db = connect(settings.db, migrate=True)
    now = clock()
    past, later = iso(now - timedelta(days=2)), iso(now + timedelta(days=2))
    seq = "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < {}) "
    with transaction(db):
        db.execute(
            seq.format(3000) + "INSERT INTO subscribers (id, email, email_hash, status, timezone, "
            "created_at, updated_at) SELECT i, 'r' || i || '@example.com', 'h' || i, 'active', "
            "'Europe/London', ?, ? FROM seq",
            (past, past),
        )
        db.execute(
            "INSERT INTO campaigns (id, kind, template, subject, status, created_at, updated_at) "
            "VALUES (1, 'broadcast', 'newsletter', 'Hello', 'sending', ?, ?)",
            (past, past),
        )
        db.execute(
            seq.format(30000) + "INSERT INTO outbox (dedupe_key, kind, subscriber_id, campaign_id, "
            "ref, to_addr, message_id, priority, status, due_at, created_at, updated_at, sent_at, "
            "held_config) SELECT 'k' || i, CASE WHEN i % 3 THEN 'series' ELSE 'broadcast' END, "
            "1 + i % 3000, CASE WHEN i % 3 THEN NULL ELSE 1 END, 'series:s:' || (i % 5), "
            "'r@example.com', '<' || i || '@x>', 10 * (1 + i % 3), "
            "CASE WHEN i % 10 = 0 THEN 'queued' ELSE 'sent' END, "
            "CASE WHEN i % 20 = 0 THEN ? ELSE ? END, ?, ?, "
            "CASE WHEN i % 10 = 0 THEN NULL ELSE ? END, CASE WHEN i % 70 = 0 THEN 'f' END FROM seq",
            (later, past, past, past, past),
        )
    yield db, settings, now
    db.close()


def _traced(db, fn) -> list[str]:
    with sql_trace(db) as statements:
        fn()
    return [s for s in statements if re.search(r"\bFROM outbox\b", s) and s.lstrip().startswith("SELECT")]


def _plan(db, sql: str) -> str:
    return " | ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN " + sql).fetchall())


def _assert_no_outbox_scan(plan: str) -> None:
    scans = [p for p in plan.split(" | ") if re.match(r"SCAN (outbox|o|o2)\b", p.strip())]
    assert not scans, plan


def test_outbox_due_is_gone_and_outbox_campaign_is_partial(big):
    db, _settings, _now = big
    names = {r[1]: r[2] for r in db.execute("PRAGMA index_list(outbox)")}
    assert "outbox_due" not in names
    partial = {
        name: sql for name, sql in db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'outbox'"
        ) if sql
    }  # fmt: skip
    assert "WHERE campaign_id IS NOT NULL" in partial["outbox_campaign"]


@pytest.mark.parametrize("analyzed", [False, True])
def test_due_range_queries_seek_the_claim_index(big, analyzed):
    db, settings, now = big
    if analyzed:
        db.execute("ANALYZE")
    later = now + timedelta(hours=1)
    for fn in (
        lambda: outbox.due_count(db, later),
        lambda: enrollment.defer_held(db, settings, later),
    ):
        statements = _traced(db, fn)
        assert statements
        for sql in statements:
            plan = _plan(db, sql)
            _assert_no_outbox_scan(plan)
            if "due_at <=" in sql and "priority IN" in sql:
                assert "outbox_claim (priority=? AND due_at<?)" in plan, plan


def test_due_count_and_defer_held_agree_with_a_plain_reading(big):
    """The priority walk finds every unsent row's priority: same counts as without it."""
    db, settings, now = big
    later = now + timedelta(hours=1)
    with transaction(db):  # an odd priority nobody configured
        db.execute("UPDATE outbox SET priority = -7 WHERE id % 100 = 0")
    plain = db.execute(
        "SELECT COUNT(*) FROM outbox NOT INDEXED WHERE status IN ('queued', 'retry') "
        "AND due_at <= ? AND held_config IS NULL",
        (iso(later),),
    ).fetchone()[0]
    assert plain > 0 and outbox.due_count(db, later) == plain
    held, params = holds.held_sql(settings.frequency_cap, later, row="o")
    expected = db.execute(
        f"SELECT COUNT(*) FROM outbox o NOT INDEXED WHERE o.status IN ('queued', 'retry') "
        f"AND o.due_at <= ? AND {held}",
        (iso(later), *params),
    ).fetchone()[0]
    assert expected > 0
    moved = 0
    while step := enrollment.defer_held(db, settings, later, limit=400):
        moved += step
    assert moved == expected


def test_campaign_queries_still_use_the_partial_campaign_index(big):
    db, _settings, _now = big
    for sql in (
        "SELECT status, COUNT(*) FROM outbox WHERE campaign_id = 1 GROUP BY status",
        "SELECT 1 FROM outbox WHERE campaign_id = 1 AND status IN ('queued', 'retry')",
        "SELECT k.link FROM clicks k JOIN outbox o ON o.id = k.outbox_id WHERE o.campaign_id = 1",
        "SELECT c.id, (SELECT COUNT(*) FROM outbox o WHERE o.campaign_id = c.id) FROM campaigns c",
    ):
        plan = _plan(db, sql)
        assert "outbox_campaign" in plan, plan
        _assert_no_outbox_scan(plan)


def test_message_ids_lead_with_the_queueing_second_and_stay_unique(big):
    db, settings, now = big
    rows = [{"dedupe_key": f"m{i}", "kind": "series", "subscriber_id": 1, "to_addr": "r@example.com",
             "due_at": now} for i in range(2000)]  # fmt: skip
    with transaction(db):
        assert outbox.enqueue_many(db, settings, rows, now) == 2000
        one = outbox.enqueue(db, settings, dedupe_key="one", kind="confirm", subscriber_id=1,
                             to_addr="r@example.com", due_at=now, now=now)  # fmt: skip
    ids = [r[0] for r in db.execute("SELECT message_id FROM outbox WHERE dedupe_key LIKE 'm%' "
                                    "OR id = ?", (one,))]  # fmt: skip
    assert len(ids) == len(set(ids)) == 2001
    prefix = f"<{int(now.timestamp()):x}."
    domain = settings.sender_domain
    assert all(re.fullmatch(re.escape(prefix) + r"[0-9a-f]{8}\.[0-9a-f]{20}\.funnel@" + re.escape(domain) + ">", m)
               for m in ids), ids[:3]  # fmt: skip
    # One process's rows of one second come in ascending order (the sequence after
    # the second), so the UNIQUE index takes them at one end of one narrow range;
    # the sequence starts at random and wraps at 2**32, hence the rotation.
    seqs = [int(m.split(".")[1], 16) for m in ids]
    start = seqs.index(min(seqs))
    assert seqs[start:] + seqs[:start] == sorted(seqs)
    assert len({(b - a) % 2**32 for a, b in zip(seqs, seqs[1:], strict=False)}) == 1  # consecutive


def test_a_forked_child_starts_its_own_message_id_sequence():
    """A sender the worker forks must not walk the parent's sequence in step with
    it (the two would then insert into the same pages of the index)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, outbox._mint_message_id("x.example", "1").split(".")[1].encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    theirs = os.read(read, 64).decode()
    os.close(read)
    ours = outbox._mint_message_id("x.example", "1").split(".")[1]
    assert len(theirs) == len(ours) == 8 and theirs != ours


def test_enqueue_many_stores_each_payload_as_json_dumps_would(big):
    """Payloads are encoded once per distinct value: equal-looking values of other
    types (1, 1.0, True) and unhashable ones still get their own text."""
    db, settings, now = big
    payloads = [{"series": "s", "step": "a", "part": 1}, {"series": "s", "step": "a", "part": True},
                {"series": "s", "step": "a", "part": 1.0}, {"series": "s", "step": "a", "part": 1},
                {"part": 1, "series": "s", "step": "a"}, {"links": ["x", "y"]}, {"t": (1, 2)},
                {"nested": {"a": 1}}, {}, None]  # fmt: skip
    rows = [{"dedupe_key": f"p{i}", "kind": "series", "subscriber_id": 1, "to_addr": "r@example.com",
             "due_at": now, "data": data} for i, data in enumerate(payloads)]  # fmt: skip
    with transaction(db):
        outbox.enqueue_many(db, settings, rows, now)
    stored = dict(db.execute("SELECT dedupe_key, data FROM outbox WHERE dedupe_key LIKE 'p%'"))
    for i, data in enumerate(payloads):
        assert stored[f"p{i}"] == (json.dumps(data) if data else None), (i, stored[f"p{i}"])
