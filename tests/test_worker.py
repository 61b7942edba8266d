"""The worker loop, the scheduler tick, and two senders racing on one database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from campaigns import broadcasts
from campaigns.sender import send_due
from campaigns.worker import run_worker, tick
from funnel import outbox
from funnel.db import connect, iso
from subscribers import lifecycle, optin, tokens

REPO = Path(__file__).resolve().parents[1]


def add_active(db, email) -> int:
    now = iso(datetime(2026, 1, 1, tzinfo=UTC))
    sid = db.execute(
        "INSERT INTO subscribers (email, email_hash, status, created_at, updated_at) "
        "VALUES (?, ?, 'active', ?, ?)",
        (email, lifecycle.email_hash(email), now, now),
    ).lastrowid
    db.execute(
        "INSERT INTO subscriptions (subscriber_id, stream, status, updated_at) "
        "VALUES (?, 'broadcasts', 'subscribed', ?)",
        (sid, now),
    )
    return sid


def test_tick_queues_due_campaigns_and_finishes_them(db, settings, clock, smtp_server):
    for i in range(3):
        add_active(db, f"r{i}@example.com")
    cid = broadcasts.create(db, settings, clock(), subject="News", body_md="Hello.")
    at = (clock() + timedelta(hours=2)).astimezone(settings.zone)  # in the clinic's zone
    broadcasts.schedule_campaign(db, settings, cid, clock(), at=f"{at:%Y-%m-%d %H:%M}")
    assert tick(db, settings, clock())["campaigns_queued"] == 0
    clock.set(at)
    t = tick(db, settings, clock())
    assert (t["campaigns_queued"], t["broadcast_rows"]) == (1, 3)
    assert broadcasts.get(db, cid).status == "sending"
    assert send_due(db, settings, clock).sent == 3
    assert tick(db, settings, clock())["campaigns_finished"] == 1
    assert broadcasts.get(db, cid).status == "finished"


def test_run_worker_sends_part_1_and_stops_on_the_event(db, settings, clock, smtp_server):
    r = optin.signup(db, settings, "w@example.com", clock(), timezone="Europe/London")
    sub = lifecycle.get(db, r.subscriber_id)
    optin.confirm(
        db, settings, tokens.confirm_token(settings, sub.id, sub.confirm_nonce, clock()), clock()
    )
    stop = threading.Event()
    summaries = []

    def on_summary(ticked, summary):
        summaries.append((ticked, summary))
        if summary.sent:
            stop.set()

    thread = threading.Thread(
        target=run_worker,
        args=(settings, stop),
        kwargs={"clock": clock, "interval": 0.05, "on_summary": on_summary},
    )
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert stop.is_set()
    (msg,) = smtp_server.to("w@example.com")
    assert msg.message["Subject"].startswith("Your back and exercise")
    assert summaries[-1][1].sent == 1 and "series_queued" in summaries[-1][0]


def test_worker_ticks_and_sending_batches_stamp_the_heartbeat(db, settings, clock, smtp_server):
    from funnel import health

    assert health.last_beat(db, "worker") is None
    stop = threading.Event()
    run_worker(settings, stop, clock=clock, interval=0.01, on_summary=lambda t, s: stop.set())
    assert health.last_beat(db, "worker") == clock()
    # A long send keeps it fresh: send_due alone (no tick) stamps it on each
    # claimed batch, with the clock the sender was given.
    optin.signup(db, settings, "hb@example.com", clock(), timezone="Europe/London")
    clock.advance(minutes=5)
    assert send_due(db, settings, clock).sent == 1
    assert health.last_beat(db, "worker") == clock()


def test_two_senders_in_two_threads_never_send_a_row_twice(settings, clock, smtp_server):
    s = settings.replace(batch_size=5)
    db = connect(s.db, migrate=True)
    for i in range(60):
        add_active(db, f"r{i}@example.com")
    cid = broadcasts.create(db, s, clock(), subject="Race", body_md="Hello.")
    broadcasts.schedule_campaign(db, s, cid, clock(), send_now=True)
    broadcasts.queue(db, s, cid, clock())
    db.close()
    results, errors = [], []
    barrier = threading.Barrier(2)

    def work():
        conn = connect(s.db)
        try:
            barrier.wait()
            results.append(send_due(conn, s, clock))
        except Exception as exc:  # pragma: no cover - surfaced below
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    ids = Counter(m.message["Message-ID"] for m in smtp_server.messages)
    assert len(ids) == 60 and set(ids.values()) == {1}
    assert sum(r.sent for r in results) == 60
    db = connect(s.db)
    stored = {r[0] for r in db.execute("SELECT message_id FROM outbox WHERE status = 'sent'")}
    assert stored == set(ids)


def test_cap_holds_at_send_time_when_two_senders_race(settings, clock, smtp_server):
    """A broadcast and a series step due together: only the broadcast goes."""
    s = settings.replace(batch_size=1, frequency_cap=1)
    db = connect(s.db, migrate=True)
    sid = add_active(db, "one@example.com")
    now = clock()
    outbox.enqueue(
        db,
        s,
        dedupe_key="series:x:a:1",
        kind="series",
        subscriber_id=sid,
        to_addr="one@example.com",
        due_at=now,
        now=now,
        stream="series:x",
        ref="series:x:a",
        data={"series": "x", "step": "a"},
    )
    outbox.enqueue(
        db,
        s,
        dedupe_key="b:1",
        kind="broadcast",
        subscriber_id=sid,
        to_addr="one@example.com",
        due_at=now,
        now=now,
        stream="broadcasts",
        priority=outbox.PRIORITY_BROADCAST,
        campaign_id=None,
    )
    from campaigns import holds

    where, params = holds.claim_filter(s, now)
    _, first = outbox.claim(db, now, 1, where=where, params=params)
    _, second = outbox.claim(db, now, 1, where=where, params=params)
    assert [r.kind for r in first] == ["broadcast"] and second == []  # in flight counts too


def test_funnel_worker_runs_until_sigterm(cli_env, settings, smtp_server):
    env = {**os.environ, **cli_env}
    add = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "subscribers", "add", "sig@example.com"],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert add.returncode == 0, add.stderr
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "cli.py"), "worker", "--interval", "0.2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 30
        while not smtp_server.to("sig@example.com") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert smtp_server.to("sig@example.com"), "the worker sent nothing"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "worker started" in err and "worker stopped after" in err
    assert "1 sent" in out
